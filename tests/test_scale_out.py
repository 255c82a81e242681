"""Scale-out: the library in every process of ``fork_processes`` and of ``reuse_port`` servers.

The tests run ``examples/scale_out.py`` in a subprocess, as a user would. They download
from it concurrently in both styles and check every body's SHA-256. The
``X-Served-By-Pid`` header shows that several processes served. Then they stop it with
SIGTERM and check that every process it started is gone.

The pre-fork trap: a ``ThreadPoolExecutor`` whose threads were started before ``fork()``
has no threads in the child, and work submitted there never runs. The tests check that a
request then fails at once with a 500 and a log that says why, instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable

import pytest
from helpers import TIMEOUT, fetch, payload, sha256

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scale_out.py"
PROCESSES = 2
STYLES = ("/push", "/generator")
FILE_SIZE = 1024 * 1024
DOWNLOADS_PER_STYLE = 16
CLIENTS = 8
#: Rounds of downloads at most before giving up on seeing every process serve. In fork mode
#: the process that accepts first wins, so it is not certain: measured here, the least busy of
#: two processes served at least 7 of the 32 downloads of a round in each of 30 runs.
MAX_ROUNDS = 4

_SERVING = re.compile(r"^serving http://127\.0\.0\.1:(\d+)/")
_READY = re.compile(r"^process (\d+) ready$")
_LOG_ERROR = re.compile(r" (ERROR|CRITICAL) |^Traceback ")

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() (Unix)")
needs_reuse_port = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")),
    reason="needs SO_REUSEPORT that spreads connections among the processes (Linux)",
)


class _Lines:
    """The lines a subprocess writes to one pipe, read in a thread; every wait times out."""

    def __init__(self, pipe: IO[str], name: str) -> None:
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._eof = False
        self._thread = threading.Thread(target=self._read, args=(pipe,), name=name, daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        with pipe:
            for line in pipe:  # until every process holding the pipe has closed it
                with self._cond:
                    self._lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for m in map(pattern.search, self._lines) if m is not None]

    def wait_for(
        self, pattern: re.Pattern[str], count: int = 1, timeout: float = TIMEOUT
    ) -> list[re.Match[str]]:
        """The first ``count`` lines that match; AssertionError on timeout or end of file."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._matches(pattern)) >= count or self._eof, timeout)
            matches = self._matches(pattern)
            if len(matches) < count:
                raise AssertionError(
                    f"expected {count} line(s) matching {pattern.pattern!r}, got "
                    f"{len(matches)}; output so far:\n{self.text()}"
                )
            return matches[:count]

    def matching(self, pattern: re.Pattern[str]) -> list[str]:
        with self._cond:
            return [m.string for m in self._matches(pattern)]

    def text(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_eof(self, timeout: float = TIMEOUT) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self._thread.name} still open: a process still holds it")


class ScaleOut:
    """``examples/scale_out.py`` in a subprocess, with the pids of the processes it runs."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = _Lines(self.proc.stdout, "example-stdout")
        self.stderr = _Lines(self.proc.stderr, "example-stderr")
        #: every server process that said it was ready
        self.pids: set[int] = set()
        self.port = 0

    def wait_ready(self, processes: int) -> None:
        self.port = int(self.stdout.wait_for(_SERVING)[0].group(1))
        self.pids |= {int(m.group(1)) for m in self.stdout.wait_for(_READY, processes)}
        assert len(self.pids) == processes, self.stdout.text()

    def children(self) -> set[int] | None:
        """The parent's child processes as Linux lists them; None where it does not."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return {int(pid) for pid in path.read_text().split()}
        except OSError:
            return None

    def stop(self) -> int:
        """SIGTERM to the parent only; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT)

    def close(self) -> None:
        """After a failed test: kill, by pid, whatever of ours still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for pid in still_running(self.pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def still_running(pids: Iterable[int]) -> list[int]:
    """The pids that still exist (a zombie, exited but not reaped, counts as existing)."""
    running = []
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:  # exists, though not ours
            pass
        running.append(pid)
    return running


@pytest.fixture
def served_file(tmp_path: Path) -> tuple[Path, str]:
    """A 1 MiB file of random bytes, and its SHA-256."""
    data = payload(FILE_SIZE, seed=2024)
    path = tmp_path / "served.bin"
    path.write_bytes(data)
    return path, sha256(data)


@pytest.fixture
def scale_out() -> Iterator[Callable[..., ScaleOut]]:
    """Start the example with these arguments and wait for its processes; killed at teardown."""
    started: list[ScaleOut] = []

    def start(*args: str, processes: int = PROCESSES) -> ScaleOut:
        example = ScaleOut("--processes", str(processes), *args)
        started.append(example)
        example.wait_ready(processes)
        return example

    yield start
    for example in started:
        example.close()


def download_round(port: int, expected_sha256: str) -> set[int]:
    """Download every style ``DOWNLOADS_PER_STYLE`` times, ``CLIENTS`` at once; check bodies.

    Returns the pids of the processes that served.
    """
    paths = [path for path in STYLES for _ in range(DOWNLOADS_PER_STYLE)]
    with ThreadPoolExecutor(CLIENTS, thread_name_prefix="client") as clients:
        responses = list(clients.map(lambda path: fetch(port, path), paths))
    served: set[int] = set()
    for path, response in zip(paths, responses):
        assert response.status == 200, (path, response.head)
        assert response.complete, path
        assert len(response.body) == FILE_SIZE, path
        assert sha256(response.body) == expected_sha256, path
        pid = response.header("X-Served-By-Pid")
        assert pid is not None, path
        served.add(int(pid))
    return served


def serve_downloads_and_stop(example: ScaleOut, expected_sha256: str) -> None:
    """Several processes serve whole bodies; SIGTERM to the parent ends all of them, cleanly."""
    children = example.children()
    if children is not None:  # the ready lines name every child, and only children
        assert children == example.pids
    served: set[int] = set()
    for _ in range(MAX_ROUNDS):
        served |= download_round(example.port, expected_sha256)
        if len(served) == PROCESSES:
            break
    assert served <= example.pids, "a response came from a process that never said ready"
    assert len(served) == PROCESSES, f"only {served} served, of {example.pids}"

    assert example.stop() == 0, example.stderr.text()
    # The parent exits only after it has reaped every child: none may be left, not even
    # a zombie.
    assert still_running(example.pids) == [], example.stderr.text()
    example.stdout.wait_eof()
    example.stderr.wait_eof()
    assert example.stderr.matching(_LOG_ERROR) == [], example.stderr.text()


@needs_fork
def test_fork_processes_children_share_the_sockets(
    scale_out: Callable[..., ScaleOut], served_file: tuple[Path, str]
) -> None:
    """bind_sockets, fork_processes, then an executor per child: both styles byte-exact."""
    path, digest = served_file
    example = scale_out("--mode", "fork", "--file", str(path))
    serve_downloads_and_stop(example, digest)


@needs_reuse_port
def test_reuse_port_independent_processes(
    scale_out: Callable[..., ScaleOut], served_file: tuple[Path, str]
) -> None:
    """Processes that each bind the port with reuse_port=True: both styles byte-exact."""
    path, digest = served_file
    example = scale_out("--mode", "reuse-port", "--file", str(path))
    serve_downloads_and_stop(example, digest)


@needs_fork
def test_fork_a_restarted_child_stops_with_the_parent(
    scale_out: Callable[..., ScaleOut], served_file: tuple[Path, str]
) -> None:
    """fork_processes restarts a killed child; SIGTERM to the parent still ends them all."""
    path, digest = served_file
    example = scale_out("--mode", "fork", "--file", str(path))
    victim = min(example.pids)
    os.kill(victim, signal.SIGKILL)
    example.stderr.wait_for(re.compile(rf"\(pid {victim}\) killed by signal 9, restarting$"))
    ready = {int(m.group(1)) for m in example.stdout.wait_for(_READY, PROCESSES + 1)}
    assert victim in ready and len(ready) == PROCESSES + 1  # one new process
    example.pids |= ready
    for style in STYLES:
        response = fetch(example.port, style)
        assert response.status == 200 and sha256(response.body) == digest
    assert example.stop() == 0, example.stderr.text()
    assert still_running(example.pids) == [], example.stderr.text()
    example.stderr.wait_eof()
    assert len(example.stderr.matching(re.compile("restarting$"))) == 1, example.stderr.text()


@needs_fork
def test_executor_started_before_the_fork_gives_a_500_not_a_hang(
    scale_out: Callable[..., ScaleOut], served_file: tuple[Path, str]
) -> None:
    """The children share a pool whose threads were started before the fork: a clear error."""
    path, _ = served_file
    example = scale_out("--mode", "fork", "--file", str(path), "--executor-before-fork")
    # The pool's threads were all started before the fork: without the check, every request
    # would wait for ever (here: until the client's timeout) for threads that do not exist.
    paths = [style for style in STYLES for _ in range(4)]
    with ThreadPoolExecutor(len(paths), thread_name_prefix="client") as clients:
        responses = list(clients.map(lambda style: fetch(example.port, style), paths))
    assert [r.status for r in responses] == [500] * len(paths)
    for method in ("PushDownload.get()", "GeneratorDownload.get()"):
        example.stderr.wait_for(
            re.compile(
                rf"^RuntimeError: {re.escape(method)}: self\.executor is a ThreadPoolExecutor "
                r"whose worker threads were started in another process, before a fork .*"
                r"Create the executor after fork_processes\(\)"
            )
        )
    assert example.stop() == 0, example.stderr.text()
    assert still_running(example.pids) == [], example.stderr.text()


#: Forks after starting a pool's thread; the child serves one request of a handler that runs
#: on the IOLoop's default executor: the inherited pool, or one the child creates.
_DEFAULT_EXECUTOR_SCRIPT = """
import asyncio, logging, os, sys, traceback
from concurrent.futures import ThreadPoolExecutor
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from tornado_safestream import SafeStreamMixin, stream_on_executor

class Hello(SafeStreamMixin, RequestHandler):
    @stream_on_executor  # no executor attribute: the IOLoop's default executor
    def get(self):
        self.write(f"hello from {os.getpid()}")

async def serve_one(pool):
    asyncio.get_running_loop().set_default_executor(pool)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([("/", Hello)]))
    server.add_sockets(sockets)
    # A numeric host: asyncio resolves nothing in the default executor (Tornado's
    # AsyncHTTPClient would, and hang there too).
    reader, writer = await asyncio.open_connection("127.0.0.1", sockets[0].getsockname()[1])
    writer.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
    response = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT)
    head, _, body = response.partition(b"\\r\\n\\r\\n")
    print(head.split()[1].decode(), body.decode(), flush=True)
    writer.close()
    server.stop()

logging.basicConfig()
inherited = ThreadPoolExecutor(2)
inherited.submit(os.getpid).result()  # starts a worker thread, in this process only
pid = os.fork()
if pid == 0:
    try:
        pool = inherited if sys.argv[1] == "inherited" else ThreadPoolExecutor(2)
        asyncio.run(serve_one(pool))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
os.waitpid(pid, 0)
"""


@needs_fork
@pytest.mark.parametrize("pool", ["inherited", "created-after-fork"])
def test_default_executor_in_a_forked_child(pool: str) -> None:
    """The check covers the IOLoop's default executor too, and spares a pool made after fork."""
    script = _DEFAULT_EXECUTOR_SCRIPT.replace("REQUEST_TIMEOUT", str(TIMEOUT / 2))
    result = subprocess.run(
        [sys.executable, "-c", script, pool], capture_output=True, text=True, timeout=TIMEOUT
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    if pool == "inherited":
        assert result.stdout.startswith("500 "), output
        assert re.search(
            r"^RuntimeError: Hello\.get\(\): the IOLoop's default executor is a "
            r"ThreadPoolExecutor whose worker threads were started in another process",
            result.stderr,
            re.MULTILINE,
        ), output
    else:
        assert re.fullmatch(r"200 hello from \d+\n", result.stdout), output
        assert "RuntimeError" not in result.stderr, output
