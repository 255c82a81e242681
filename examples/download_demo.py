"""Download the same file through three Tornado handlers and check every byte.

Run it with ``python examples/download_demo.py`` (``--quick`` for a 4 MiB run).

The demo writes a file of random (seeded) bytes to a temporary directory and
serves it from a Tornado ``HTTPServer`` on 127.0.0.1, through three handlers
that all stream it from a small thread pool in 64 KiB chunks:

``broken``
    The classic pattern: a ``@run_on_executor`` method that calls
    ``self.write(chunk)`` in the worker thread and schedules ``self.flush``
    with ``IOLoop.add_callback``. ``RequestHandler`` is not thread-safe, so the
    worker and the IOLoop race on the handler's write buffer: downloads come
    out short or scrambled, a different SHA-256 each time.
``push``
    The same code with ``SafeStreamMixin`` and ``@stream_on_executor``: the
    worker calls ``self.write(chunk)`` and ``self.flush()``, the library
    carries them out on the IOLoop thread, in order, and blocks the worker
    while the client is behind.
``generator``
    ``@stream_on_executor`` on a generator that yields the chunks: the library
    pulls it in the executor, a bounded read-ahead at a time.

Each variant is downloaded ``--rounds`` times by ``--clients`` concurrent
clients on real sockets: fast readers, and one slow reader with a tiny
receive buffer that stalls and trickles, so that the server really waits
for the client. Every body is checked against the file's SHA-256, and a
table shows the result. The exit status is 1 if ``push`` or ``generator``
ever delivered a wrong or short body, 0 otherwise (``broken`` going wrong is
the expected outcome: it is what the library fixes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from tornado.concurrent import run_on_executor
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

HOST = "127.0.0.1"
CHUNK_SIZE = 64 * 1024
SERVER_THREADS = 4
SEED = 20240601

VARIANTS = ("broken", "push", "generator")
SAFE_VARIANTS = ("push", "generator")

# Slow reader: receive buffer and recv() size of a client on a bad link.
SLOW_RCVBUF = 8 * 1024
SLOW_RECV_SIZE = 4 * 1024
SLOW_INITIAL_STALL = 0.3  # seconds without reading after the response headers
FAST_RECV_SIZE = 256 * 1024
IDLE_TIMEOUT = 10.0  # seconds without a byte from the server: the download failed


# --------------------------------------------------------------------------
# The three handlers
# --------------------------------------------------------------------------


class BrokenDownload(RequestHandler):
    """What people write, and what corrupts downloads: do not copy this."""

    executor: Executor

    def initialize(self, path: str, executor: Executor) -> None:
        self.path = path
        self.executor = executor  # used by @run_on_executor

    def prepare(self) -> None:
        # IOLoop.current() only works on the loop thread, so grab it here.
        self.io_loop = IOLoop.current()

    @run_on_executor
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                self.write(chunk)  # touches the handler from a worker thread: races
                self.io_loop.add_callback(self.flush)


class PushDownload(SafeStreamMixin, RequestHandler):
    """The same code, made safe by the mixin and the decorator."""

    executor: Executor

    def initialize(self, path: str, executor: Executor) -> None:
        self.path = path
        self.executor = executor  # used by @stream_on_executor

    @stream_on_executor
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                self.write(chunk)
                self.flush()  # blocks this worker only while the client is behind


class GeneratorDownload(SafeStreamMixin, RequestHandler):
    """Generator style: yield the chunks, the library sends them."""

    executor: Executor

    def initialize(self, path: str, executor: Executor) -> None:
        self.path = path
        self.executor = executor

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        self.set_header("Content-Type", "application/octet-stream")
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                yield chunk


def make_app(path: str, executor: Executor) -> Application:
    args = {"path": path, "executor": executor}
    return Application(
        [
            (r"/broken", BrokenDownload, args),
            (r"/push", PushDownload, args),
            (r"/generator", GeneratorDownload, args),
        ]
    )


# --------------------------------------------------------------------------
# The server, on its own thread with its own IOLoop
# --------------------------------------------------------------------------


class DemoServer:
    """An ``HTTPServer`` on 127.0.0.1, run by an IOLoop on a background thread."""

    def __init__(self, app: Application) -> None:
        self._app = app
        self._thread = threading.Thread(target=self._run, name="demo-server", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the demo server did not start")
        if self._error is not None:
            raise RuntimeError("the demo server did not start") from self._error

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server and its loop; return False if the thread is still running."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sockets = bind_sockets(0, HOST)
        self.port = sockets[0].getsockname()[1]
        server = HTTPServer(self._app)
        server.add_sockets(sockets)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.close_all_connections(), 5.0)


# --------------------------------------------------------------------------
# The clients: HTTP/1.1 over raw sockets, so that the slow one sets its pace
# --------------------------------------------------------------------------


class DownloadError(Exception):
    """The response was not a complete 200 response."""


class _Reader:
    """A buffered reader over a socket, with a deadline and an optional pace."""

    def __init__(
        self,
        sock: socket.socket,
        recv_size: int,
        deadline: float,
        pace: Callable[[int], None] | None = None,
    ) -> None:
        self._sock = sock
        self._recv_size = recv_size
        self._deadline = deadline
        self._pace = pace
        self._buf = bytearray()
        self.received = 0

    def _fill(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("download deadline passed")
        self._sock.settimeout(min(remaining, IDLE_TIMEOUT))
        data = self._sock.recv(self._recv_size)
        if not data:
            raise EOFError("connection closed by the server")
        self._buf += data
        self.received += len(data)
        if self._pace is not None:
            self._pace(self.received)

    def readline(self, limit: int = 64 * 1024) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > limit:
                raise DownloadError("line too long")
            self._fill()

    def read_exact(self, n: int, sink: Callable[[bytes], None]) -> None:
        while n > 0:
            if not self._buf:
                self._fill()
            piece = bytes(self._buf[:n])
            del self._buf[: len(piece)]
            sink(piece)
            n -= len(piece)

    def read_to_close(self, sink: Callable[[bytes], None]) -> None:
        while True:
            if self._buf:
                sink(bytes(self._buf))
                self._buf.clear()
            try:
                self._fill()
            except EOFError:
                return


@dataclass
class Download:
    """The outcome of one download."""

    variant: str
    slow: bool
    #: "ok"; "wrong" (SHA-256 differs), "short" (complete response, too few bytes),
    #: "cut off" (connection closed mid-body), "error" or "timeout"
    status: str = "error"
    detail: str = ""
    nbytes: int = 0
    seconds: float = 0.0


def download(
    port: int,
    variant: str,
    expected: tuple[int, str],
    slow: bool,
    timeout: float,
    slow_seconds: float,
) -> Download:
    """GET ``/<variant>``, hash the body and compare it with ``expected`` (size, SHA-256)."""
    size, sha256 = expected
    result = Download(variant, slow)
    digest = hashlib.sha256()
    start = time.monotonic()
    deadline = start + timeout

    def sink(data: bytes) -> None:
        digest.update(data)
        result.nbytes += len(data)

    def pace(received: int) -> None:
        # Stall at first, then trickle, so that the whole body takes about slow_seconds.
        due = start + SLOW_INITIAL_STALL + slow_seconds * received / max(size, 1)
        ahead = min(due, deadline) - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if slow:
                # Set before connect() so that the TCP window is small from the start.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            sock.settimeout(min(timeout, IDLE_TIMEOUT))
            sock.connect((HOST, port))
            request = f"GET /{variant} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode("ascii"))
            reader = _Reader(
                sock,
                SLOW_RECV_SIZE if slow else FAST_RECV_SIZE,
                deadline,
                pace if slow else None,
            )
            _read_response(reader, sink)
    except (TimeoutError, socket.timeout):
        result.status, result.detail = "timeout", f"no complete body after {result.nbytes} bytes"
    except EOFError:
        result.status, result.detail = "cut off", f"connection closed after {result.nbytes} bytes"
    except (OSError, DownloadError, ValueError) as e:
        result.status, result.detail = "error", f"{type(e).__name__}: {e}"
    else:
        if result.nbytes != size:
            # A well-formed response with a body of the wrong size: passed off as complete.
            result.status, result.detail = "short", f"complete response, {result.nbytes} bytes"
        elif digest.hexdigest() != sha256:
            result.status, result.detail = "wrong", "SHA-256 differs"
        else:
            result.status = "ok"
    result.seconds = time.monotonic() - start
    return result


def _read_response(reader: _Reader, sink: Callable[[bytes], None]) -> None:
    status_line = reader.readline().decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        raise DownloadError(f"unexpected status line {status_line!r}")
    headers: dict[str, str] = {}
    while line := reader.readline():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        # Each chunk: "<hex size>[;ext]\r\n<data>\r\n"; the last one has size 0.
        while True:
            chunk_size = int(reader.readline().split(b";", 1)[0], 16)
            if chunk_size == 0:
                while reader.readline():  # trailers, then the empty line
                    pass
                return
            reader.read_exact(chunk_size, sink)
            if reader.readline():
                raise DownloadError("chunk not followed by CRLF")
    elif "content-length" in headers:
        reader.read_exact(int(headers["content-length"]), sink)
    else:
        reader.read_to_close(sink)


# --------------------------------------------------------------------------
# The run: rounds of concurrent downloads per variant, then the table
# --------------------------------------------------------------------------


class _ServerLog(logging.Handler):
    """Counts the server's warnings and errors per variant (the one running)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.WARNING)
        self.variant = ""
        self.records: dict[str, list[logging.LogRecord]] = {v: [] for v in VARIANTS}
        self._verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        self.records.setdefault(self.variant, []).append(record)
        if self._verbose:
            print(f"[server log, {self.variant}] {self.format(record)}", file=sys.stderr)


@dataclass
class VariantResult:
    variant: str
    downloads: list[Download] = field(default_factory=list)
    fast_bytes: int = 0
    fast_seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(d.status == "ok" for d in self.downloads)

    @property
    def bad(self) -> list[Download]:
        return [d for d in self.downloads if d.status != "ok"]

    @property
    def mb_per_s(self) -> float:
        return self.fast_bytes / 1e6 / self.fast_seconds if self.fast_seconds else 0.0


class Options(NamedTuple):
    size_mb: int
    rounds: int
    clients: int
    timeout: float
    verbose: bool


def run_variant(port: int, variant: str, expected: tuple[int, str], opts: Options) -> VariantResult:
    result = VariantResult(variant)
    slow_seconds = min(3.0, max(0.5, opts.size_mb / 16))
    n_slow = slow_readers(opts.clients)
    with ThreadPoolExecutor(opts.clients, thread_name_prefix=f"client-{variant}") as clients:
        for round_no in range(opts.rounds):
            time.monotonic()
            futures = [
                clients.submit(
                    download, port, variant, expected, i < n_slow, opts.timeout, slow_seconds
                )
                for i in range(opts.clients)
            ]
            # Every download has its own deadline; this wait is only a backstop.
            done = [f.result(timeout=opts.timeout + 5) for f in futures]
            fast = [d for d in done if not d.slow]
            result.fast_bytes += sum(d.nbytes for d in fast)
            result.fast_seconds += max((d.seconds for d in fast), default=0.0)
            result.downloads += done
            if opts.verbose:
                for d in done:
                    kind = "slow" if d.slow else "fast"
                    print(
                        f"  {variant} round {round_no + 1} {kind}: {d.status} "
                        f"{d.nbytes} bytes in {d.seconds:.2f} s {d.detail}",
                        file=sys.stderr,
                    )
        time.sleep(0.2)  # let late callbacks of this variant log under its name
    return result


def slow_readers(clients: int) -> int:
    """How many of ``clients`` concurrent downloads are slow: a quarter, at least one."""
    return max(1, clients // 4)


def print_table(results: Sequence[VariantResult], log: _ServerLog) -> None:
    header = ("variant", "downloads", "SHA-256 OK", "failed/wrong", "MB/s", "server errors")
    rows = [header] + [
        (
            r.variant,
            str(len(r.downloads)),
            str(r.ok),
            str(len(r.bad)),
            f"{r.mb_per_s:.0f}",
            str(len(log.records.get(r.variant, []))),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    print("\n".join(lines))
    print("(MB/s: aggregate of the concurrent fast readers; the slow reader is paced on purpose)")


def _describe_failures(result: VariantResult) -> str:
    kinds: dict[str, int] = {}
    for d in result.bad:
        kinds[d.status] = kinds.get(d.status, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


def shutdown_executor(executor: ThreadPoolExecutor, timeout: float = 10.0) -> bool:
    """Shut ``executor`` down; return False if its threads are still busy after ``timeout``."""
    waiter = threading.Thread(
        target=executor.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
    )
    waiter.start()
    waiter.join(timeout)
    return not waiter.is_alive()


def write_payload(path: str, size: int) -> str:
    """Write ``size`` seeded random bytes to ``path``; return their SHA-256."""
    rng = random.Random(SEED)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, 1 << 20))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=32, help="file size in MiB (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (default 3)")
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent downloads per round (default 4)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per download (default 30)"
    )
    parser.add_argument("--quick", action="store_true", help="4 MiB, 1 round (for tests)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every download")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.size_mb, ns.rounds = 4, 1
    if ns.size_mb < 1 or ns.rounds < 1 or ns.clients < 2 or ns.timeout <= 0:
        parser.error("--size-mb and --rounds must be >= 1, --clients >= 2, --timeout > 0")
    return Options(ns.size_mb, ns.rounds, ns.clients, ns.timeout, ns.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    log = _ServerLog(opts.verbose)
    logging.getLogger("tornado").addHandler(log)
    logging.getLogger("tornado").propagate = False
    logging.getLogger("tornado").setLevel(logging.WARNING)
    size = opts.size_mb * 1024 * 1024
    started = time.monotonic()
    stuck = False

    with tempfile.TemporaryDirectory(prefix="safestream-demo-") as tmp:
        path = os.path.join(tmp, "payload.bin")
        expected = (size, write_payload(path, size))
        executor = ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="server-worker")
        server = DemoServer(make_app(path, executor))
        server.start()
        print(
            f"Serving a {opts.size_mb} MiB file on http://{HOST}:{server.port}/ "
            f"({SERVER_THREADS} worker threads); {opts.rounds} round(s) of {opts.clients} "
            f"concurrent downloads per variant ({slow_readers(opts.clients)} slow)."
        )
        results: list[VariantResult] = []
        try:
            for variant in VARIANTS:
                log.variant = variant
                t0 = time.monotonic()
                results.append(run_variant(server.port, variant, expected, opts))
                print(f"  {variant}: done in {time.monotonic() - t0:.1f} s", flush=True)
        finally:
            if not server.stop():
                print("warning: the server thread did not stop in time", file=sys.stderr)
            if not shutdown_executor(executor):
                # A worker still busy with a download whose client is done: a bug.
                print("FAIL: a server worker thread is still busy after the run", file=sys.stderr)
                stuck = True

    print()
    print_table(results, log)
    broken = next(r for r in results if r.variant == "broken")
    if broken.bad:
        print(
            f"broken: {_describe_failures(broken)} of {len(broken.downloads)} downloads, "
            "as expected: writing from a worker thread corrupts the stream."
        )
    else:
        print(
            "broken: every download came out right this time; the race is still there "
            "(try a larger --size-mb or more --clients)."
        )
    failed = False
    for r in results:
        if r.variant in SAFE_VARIANTS and r.bad:
            failed = True
            print(f"FAIL {r.variant}: {_describe_failures(r)}", file=sys.stderr)
            for d in r.bad:
                kind = "slow" if d.slow else "fast"
                print(f"  {kind} reader: {d.status}: {d.detail}", file=sys.stderr)
        if r.variant in SAFE_VARIANTS and log.records.get(r.variant):
            print(f"warning: the server logged errors during {r.variant}:", file=sys.stderr)
            for record in log.records[r.variant][:5]:
                print("  " + log.format(record).replace("\n", "\n  "), file=sys.stderr)
    print(f"total time {time.monotonic() - started:.1f} s", flush=True)
    if stuck:
        # The interpreter would wait for the stuck worker for ever at exit: don't.
        sys.stderr.flush()
        os._exit(1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
