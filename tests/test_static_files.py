"""
`SafeStaticFileHandler` beyond Tornado's own tests (tests/test_static_tornado_suite.py): no
file-system work on the loop, ``sendfile``, backpressure, clients that leave, odd files.

Real servers on 127.0.0.1 and real files in ``tmp_path``; SHA-256 of what arrives.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Pause,
    RawConnection,
    Recorder,
    ServerFactory,
    ServerThread,
    fetch,
    payload,
    sha256,
    text_payload,
)
from tornado.web import RequestHandler, StaticFileHandler

import tornado_safestream._core._sendfile as sendfile_module
from tornado_safestream import SafeStaticFileHandler
from tornado_safestream._http._static import _VERSIONS_LOCK

MIB = 1024 * 1024


def wait_until(predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` (for a state no event announces) until true; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.005)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class SendfileRecord:
    """Every ``os.sendfile`` call the library makes: (thread ident, bytes sent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[int, int]] = []

    def add(self, ident: int, sent: int) -> None:
        with self._lock:
            self.calls.append((ident, sent))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(sent for _, sent in self.calls)

    @property
    def threads(self) -> set[int]:
        with self._lock:
            return {ident for ident, _ in self.calls}


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> SendfileRecord:
    """Record the library's sendfile calls (the library's own hook, not Tornado's)."""
    real = sendfile_module._sendfile
    if real is None:
        pytest.skip("os.sendfile is not available here")
    record = SendfileRecord()

    def recording(out: int, fd: int, offset: int, count: int) -> int:
        sent = real(out, fd, offset, count)
        record.add(threading.get_ident(), sent)
        return sent

    monkeypatch.setattr(sendfile_module, "_sendfile", recording)
    return record


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "static"
    path.mkdir()
    return path


def write(path: Path, data: bytes) -> bytes:
    path.write_bytes(data)
    return data


class Ping(RequestHandler):
    def get(self) -> None:
        self.write("pong")


# --------------------------------------------------------------------------- zero copy


class TestZeroCopy:
    def test_big_file_goes_out_with_sendfile_off_the_loop(
        self, server: ServerFactory, root: Path, sendfile_calls: SendfileRecord
    ) -> None:
        data = write(root / "big.bin", payload(24 * MIB, 1))
        srv = server([(r"/s/(.*)", SafeStaticFileHandler, {"path": str(root)})])
        response = fetch(srv.port, "/s/big.bin", timeout=30)
        assert response.status == 200 and response.complete and response.framing == "length"
        assert sha256(response.body) == sha256(data)
        # A burst is recorded once sendfile() returned, which may be after the client has
        # the bytes.
        wait_until(lambda: sendfile_calls.total == len(data), "every byte sent by sendfile")
        assert srv.loop_thread_ident not in sendfile_calls.threads

    @pytest.mark.parametrize(
        ("range_header", "start", "stop"),
        [("bytes=100-1000099", 100, 1000100), ("bytes=-4096", 3 * MIB - 4096, 3 * MIB)],
    )
    def test_ranges(
        self,
        server: ServerFactory,
        root: Path,
        sendfile_calls: SendfileRecord,
        range_header: str,
        start: int,
        stop: int,
    ) -> None:
        data = write(root / "f.bin", payload(3 * MIB, 2))
        srv = server([(r"/s/(.*)", SafeStaticFileHandler, {"path": str(root)})])
        response = fetch(srv.port, "/s/f.bin", headers={"Range": range_header})
        assert response.status == 206 and response.complete
        assert response.header("Content-Range") == f"bytes {start}-{stop - 1}/{3 * MIB}"
        assert sha256(response.body) == sha256(data[start:stop])
        wait_until(lambda: sendfile_calls.total == stop - start, "the range sent by sendfile")

    def test_slow_client_every_byte_and_no_thread_held(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        root: Path,
        sendfile_calls: SendfileRecord,
    ) -> None:
        pool = make_executor(1, "static-pool")

        class OnePool(SafeStaticFileHandler):
            executor = pool

        data = write(root / "f.bin", payload(8 * MIB, 3))
        srv = server([(r"/s/(.*)", OnePool, {"path": str(root)})], sndbuf=64 * 1024)
        pause = Pause()
        result: list[Any] = []
        client = threading.Thread(
            target=lambda: result.append(
                fetch(srv.port, "/s/f.bin", pause=pause, rcvbuf=64 * 1024, timeout=30)
            )
        )
        client.start()
        assert pause.headers_read.wait(TIMEOUT)
        # The stalled client holds no thread: the one-thread pool serves another download.
        small = write(root / "small.bin", payload(256 * 1024, 4))
        other = fetch(srv.port, "/s/small.bin")
        assert other.status == 200 and sha256(other.body) == sha256(small)
        pause.resume.set()
        client.join(30)
        assert not client.is_alive()
        assert result[0].complete and sha256(result[0].body) == sha256(data)

    def test_client_leaving_mid_body_closes_everything(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        root: Path,
        sendfile_calls: SendfileRecord,
        logs: LogRecorder,
    ) -> None:
        pool = make_executor(2, "static-pool")

        class Pool(SafeStaticFileHandler):
            executor = pool

        write(root / "f.bin", payload(16 * MIB, 5))
        srv = server([(r"/s/(.*)", Pool, {"path": str(root)})], sndbuf=64 * 1024)
        baseline = open_fds()
        for _ in range(5):
            with RawConnection(srv.port, rcvbuf=64 * 1024) as conn:
                conn.send_request("GET", "/s/f.bin")
                head = conn.read_head()
                assert head.status == 200
                conn.body_reader(head).read_exactly(64 * 1024)
                conn.close(reset=True)
        wait_until(lambda: open_fds() <= baseline, f"the fd count back at {baseline}")
        wait_until(lambda: pool._work_queue.empty(), "the pool's queue empty")
        assert sendfile_calls.total < 5 * 16 * MIB
        assert not logs.errors()

    def test_head_and_gzip_are_read_not_sent_with_sendfile(
        self, server: ServerFactory, root: Path, sendfile_calls: SendfileRecord
    ) -> None:
        data = write(root / "t.txt", text_payload(2 * MIB, 6))
        srv = server(
            [(r"/s/(.*)", SafeStaticFileHandler, {"path": str(root)})], compress_response=True
        )
        head = fetch(srv.port, "/s/t.txt", method="HEAD")
        assert head.status == 200 and head.header("Content-Length") == str(len(data))
        zipped = fetch(srv.port, "/s/t.txt", headers={"Accept-Encoding": "gzip"})
        assert zipped.header("Content-Encoding") == "gzip" and zipped.complete
        assert sha256(zipped.body) == sha256(data)
        plain = fetch(srv.port, "/s/t.txt")  # the gzip transform is there, not gzipping
        assert plain.complete and sha256(plain.body) == sha256(data)
        assert sendfile_calls.total == 0

    def test_many_concurrent_downloads_are_byte_exact(
        self, server: ServerFactory, root: Path, sendfile_calls: SendfileRecord
    ) -> None:
        files = {
            f"f{i}.bin": write(root / f"f{i}.bin", payload(2 * MIB + i, 10 + i)) for i in range(8)
        }
        srv = server([(r"/s/(.*)", SafeStaticFileHandler, {"path": str(root)})])
        results: dict[str, str] = {}
        lock = threading.Lock()

        def download(name: str) -> None:
            response = fetch(srv.port, f"/s/{name}", recv_size=7919, timeout=30)
            with lock:
                results[name] = sha256(response.body) if response.complete else "incomplete"

        threads = [threading.Thread(target=download, args=(n,)) for n in files for _ in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {name: sha256(data) for name, data in files.items()}


# --------------------------------------------------------------------------- off the loop


HOOKS = (
    "validate_absolute_path",
    "get_modified_time",
    "get_content_size",
    "get_content_type",
    "get_content_version",
    "get_content",
    "compute_etag",
)


def recording_handler(recorder: Recorder, *, override_content: bool) -> type[SafeStaticFileHandler]:
    """A subclass whose file-system hooks record the thread they run on."""

    class Recording(SafeStaticFileHandler):
        def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
            recorder.add("validate_absolute_path", threading.get_ident())
            return super().validate_absolute_path(root, absolute_path)

        def get_modified_time(self) -> Any:
            recorder.add("get_modified_time", threading.get_ident())
            return super().get_modified_time()

        def get_content_size(self) -> int:
            recorder.add("get_content_size", threading.get_ident())
            return super().get_content_size()

        def get_content_type(self) -> str:
            recorder.add("get_content_type", threading.get_ident())
            return super().get_content_type()

        def compute_etag(self) -> str | None:
            recorder.add("compute_etag", threading.get_ident())
            return super().compute_etag()

        @classmethod
        def get_content_version(cls, abspath: str) -> str:
            recorder.add("get_content_version", threading.get_ident())
            return super().get_content_version(abspath)

    if override_content:

        class RecordingContent(Recording):
            @classmethod
            def get_content(
                cls, abspath: str, start: int | None = None, end: int | None = None
            ) -> Generator[bytes, None, None]:
                recorder.add("get_content", threading.get_ident())
                yield from StaticFileHandler.get_content.__func__(cls, abspath, start, end)  # type: ignore[attr-defined]

        return RecordingContent
    return Recording


def cached_version(handler: type[SafeStaticFileHandler], path: str) -> str | None:
    with _VERSIONS_LOCK:
        return handler._static_hashes.get(path)


class StaticUrl(RequestHandler):
    def get(self, path: str) -> None:
        self.write(self.static_url(path))


@pytest.mark.parametrize("override_content", [False, True], ids=["default", "overridden"])
def test_no_hook_runs_on_the_loop(
    server: ServerFactory, root: Path, override_content: bool
) -> None:
    recorder = Recorder()
    handler = recording_handler(recorder, override_content=override_content)
    handler.reset()
    data = write(root / "a.txt", text_payload(300_000, 7))
    srv = server(
        [(r"/url/(.*)", StaticUrl, {})],
        static_path=str(root),
        static_handler_class=handler,
    )
    get = fetch(srv.port, "/static/a.txt")
    assert get.status == 200 and sha256(get.body) == sha256(data)
    etag = get.header("Etag")
    assert etag
    head = fetch(srv.port, "/static/a.txt", method="HEAD")
    assert head.status == 200 and head.header("Etag") == etag
    ranged = fetch(srv.port, "/static/a.txt", headers={"Range": "bytes=10-19"})
    assert ranged.status == 206 and ranged.body == data[10:20]
    not_modified = fetch(srv.port, "/static/a.txt", headers={"If-None-Match": etag})
    assert not_modified.status == 304
    missing = fetch(srv.port, "/static/missing.txt")
    assert missing.status == 404
    # static_url() on the loop: no version before it is known, computed in the executor.
    handler.reset()
    first = fetch(srv.port, "/url/a.txt")
    assert first.body == b"/static/a.txt"
    wait_until(
        lambda: f'"{cached_version(handler, str(root / "a.txt"))}"' == etag,
        "the version computed in the executor",
    )
    second = fetch(srv.port, "/url/a.txt")
    assert second.body == b"/static/a.txt?v=" + etag.strip('"').encode()
    names = set(recorder.names())
    expected = set(HOOKS) if override_content else set(HOOKS) - {"get_content"}
    assert expected <= names, expected - names
    on_loop = [n for n in recorder.names() if srv.loop_thread_ident in recorder.values(n)]
    assert not on_loop, f"ran on the IOLoop thread: {sorted(set(on_loop))}"


def test_static_url_off_the_loop_and_warm_versions(server: ServerFactory, root: Path) -> None:
    SafeStaticFileHandler.reset()
    write(root / "a.css", b"body {}")
    (root / "sub").mkdir()
    write(root / "sub" / "b.js", b"let b;")
    settings = {"static_path": str(root)}
    # Off a loop (start-up code, a worker thread): computed there.
    version = SafeStaticFileHandler.get_version(settings, "a.css")
    assert version is not None and len(version) == 128
    SafeStaticFileHandler.reset()
    srv = server(
        [(r"/url/(.*)", StaticUrl, {})],
        static_path=str(root),
        static_handler_class=SafeStaticFileHandler,
    )
    assert fetch(srv.port, "/url/sub/b.js").body == b"/static/sub/b.js"  # not warmed yet
    SafeStaticFileHandler.reset()
    assert srv._asyncio_loop is not None
    warm = SafeStaticFileHandler.warm_versions(srv._app.settings)
    warmed = asyncio.run_coroutine_threadsafe(warm, srv._asyncio_loop).result(TIMEOUT)
    assert set(warmed) == {"a.css", "sub/b.js"}
    assert fetch(srv.port, "/url/sub/b.js").body.startswith(b"/static/sub/b.js?v=")
    assert fetch(srv.port, "/url/a.css").body == f"/static/a.css?v={version}".encode()
    SafeStaticFileHandler.reset()


# --------------------------------------------------------------------------- a slow get_content


def slow_content(base: type[StaticFileHandler], seconds: float) -> type[StaticFileHandler]:
    class Slow(base):  # type: ignore[valid-type,misc]
        chunk_ends: ClassVar[list[float]] = []

        @classmethod
        def get_content(
            cls, abspath: str, start: int | None = None, end: int | None = None
        ) -> Generator[bytes, None, None]:
            for chunk in StaticFileHandler.get_content.__func__(cls, abspath, start, end):  # type: ignore[attr-defined]
                time.sleep(seconds)  # the slow disk (or object store) being simulated
                cls.chunk_ends.append(time.monotonic())
                yield chunk

    return Slow


def pings_during_download(srv: ServerThread, path: str) -> tuple[list[tuple[float, float]], Any]:
    """Ping the server, one at a time, while a download runs; each ping's (sent, answered)."""
    result: list[Any] = []
    done = threading.Event()

    started = Pause()

    def download() -> None:
        try:
            result.append(fetch(srv.port, path, pause=started, timeout=30))
        finally:
            done.set()

    client = threading.Thread(target=download)
    client.start()
    assert started.headers_read.wait(TIMEOUT)  # the download is under way
    started.resume.set()
    pings: list[tuple[float, float]] = []
    pace = threading.Event()
    for _ in range(400):
        if done.is_set():
            break
        sent = time.monotonic()
        assert fetch(srv.port, "/ping").body == b"pong"
        pings.append((sent, time.monotonic()))
        pace.wait(0.005)
    client.join(30)
    return pings, result[0]


def test_slow_get_content_does_not_stall_the_loop(
    server: ServerFactory, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(root / "f.bin", payload(16 * 64 * 1024, 8))  # 16 chunks of 64 KiB
    figures: dict[str, str] = {}
    waited: dict[str, float] = {}
    for name, base in (
        ("SafeStaticFileHandler", SafeStaticFileHandler),
        ("StaticFileHandler", StaticFileHandler),
    ):
        handler = slow_content(base, 0.05)
        srv = server([(r"/s/(.*)", handler, {"path": str(root)}), (r"/ping", Ping, {})])
        pings, response = pings_during_download(srv, "/s/f.bin")
        assert response.complete and sha256(response.body) == sha256(data)
        ends: list[float] = handler.chunk_ends  # type: ignore[attr-defined]
        # A ping that waited for a chunk of get_content: one ended while it was in flight.
        waited[name] = sum(any(s < e < r for e in ends) for s, r in pings) / max(len(pings), 1)
        latencies = sorted(r - s for s, r in pings)
        figures[name] = (
            f"{len(pings)} pings, median {1000 * latencies[len(latencies) // 2]:.1f} ms, "
            f"max {1000 * latencies[-1]:.1f} ms, {100 * waited[name]:.0f}% waited for a chunk"
        )
        srv.stop()
    with capsys.disabled():
        for name, text in figures.items():
            print(f"\n/ping during a 50 ms-per-chunk download, {name}: {text}")
    assert waited["StaticFileHandler"] >= 0.5, figures
    assert waited["SafeStaticFileHandler"] <= 0.25, figures


# --------------------------------------------------------------------------- backpressure


def test_read_ahead_is_bounded_by_max_buffer_bytes(server: ServerFactory, root: Path) -> None:
    write(root / "f.bin", payload(8 * MIB, 9))
    progress: list[int] = []
    lock = threading.Lock()

    class Bounded(SafeStaticFileHandler):
        max_buffer_bytes = 256 * 1024

        @classmethod
        def get_content(
            cls, abspath: str, start: int | None = None, end: int | None = None
        ) -> Generator[bytes, None, None]:
            for chunk in StaticFileHandler.get_content.__func__(cls, abspath, start, end):  # type: ignore[attr-defined]
                if start is not None:  # the body's (the Etag's hash reads the whole file)
                    with lock:
                        progress.append(len(chunk))
                yield chunk

    srv = server([(r"/s/(.*)", Bounded, {"path": str(root)})], sndbuf=64 * 1024)
    with RawConnection(srv.port, rcvbuf=64 * 1024) as conn:
        conn.send_request("GET", "/s/f.bin", {"Range": "bytes=0-"})  # the whole file
        head = conn.read_head()
        assert head.status == 200

        def read_so_far() -> int:
            with lock:
                return sum(progress)

        # Nothing read by the client: the producer stops; wait until it settles.
        last = -1
        for _ in range(100):
            now = read_so_far()
            if now == last:
                break
            last = now
            threading.Event().wait(0.05)
        # Socket buffers (a few hundred KiB at most here) + the read-ahead + one chunk.
        assert read_so_far() < MIB
        body = conn.body_reader(head).read_all()
    assert len(body) == 8 * MIB


# --------------------------------------------------------------------------- odd files


class TestOddFiles:
    def serve(
        self,
        server: ServerFactory,
        root: Path,
        handler: type[StaticFileHandler] = SafeStaticFileHandler,
        **kwargs: Any,
    ) -> ServerThread:
        return server([(r"/s/(.*)", handler, {"path": str(root), **kwargs})])

    def test_fifo_socket_device_directory(
        self, server: ServerFactory, root: Path, logs: LogRecorder
    ) -> None:
        os.mkfifo(root / "fifo")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(root / "sock"))
        os.symlink("/dev/zero", root / "zero")
        (root / "dir").mkdir()
        srv = self.serve(server, root)
        try:
            for name in ("fifo", "sock", "zero", "dir", "dir/"):
                response = fetch(srv.port, f"/s/{name}")
                assert response.status == 403, name
        finally:
            listener.close()
        assert not logs.errors()

    def test_nul_and_dot_dot(self, server: ServerFactory, root: Path, logs: LogRecorder) -> None:
        write(root / "a.txt", b"a")
        srv = self.serve(server, root)
        assert fetch(srv.port, "/s/a%00.txt").status == 400
        assert fetch(srv.port, "/s/../a.txt").status == 403
        assert fetch(srv.port, "/s/%2e%2e/%2e%2e/etc/passwd").status == 403
        assert not logs.errors()

    def test_fifo_swapped_in_after_the_stat_blocks_no_worker(
        self, server: ServerFactory, make_executor: ExecutorFactory, root: Path, logs: LogRecorder
    ) -> None:
        pool = make_executor(1, "static-pool")

        class Swapping(SafeStaticFileHandler):
            executor = pool

            def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
                path = super().validate_absolute_path(root, absolute_path)
                if path is not None and path.endswith("swap"):
                    os.unlink(path)
                    os.mkfifo(path)
                return path

        write(root / "swap", b"regular, at first")
        write(root / "ok.txt", b"fine")
        srv = self.serve(server, root, Swapping)
        assert fetch(srv.port, "/s/swap").status == 403
        assert stat.S_ISFIFO(os.stat(root / "swap").st_mode)
        assert fetch(srv.port, "/s/ok.txt").body == b"fine"  # the one worker is free
        # Only the version's (its hash), logged as Tornado logs it.
        assert all("Could not open static file" in r.getMessage() for r in logs.errors())

    def test_deleted_between_stat_and_open(
        self, server: ServerFactory, root: Path, logs: LogRecorder
    ) -> None:
        class Deleting(SafeStaticFileHandler):
            def get_content_size(self) -> int:
                size = super().get_content_size()
                assert self.absolute_path is not None
                os.unlink(self.absolute_path)
                return size

        write(root / "gone.txt", b"soon gone")
        srv = self.serve(server, root, Deleting)
        assert fetch(srv.port, "/s/gone.txt").status == 404
        assert not logs.errors()

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: no EACCES to provoke")
    def test_permission_denied(self, server: ServerFactory, root: Path, logs: LogRecorder) -> None:
        path = root / "secret.txt"
        write(path, b"secret")
        path.chmod(0)
        SafeStaticFileHandler.reset()
        srv = self.serve(server, root)
        assert fetch(srv.port, "/s/secret.txt").status == 403

    @pytest.mark.parametrize("transport", ["sendfile", "read"])
    def test_growing_file_sends_exactly_content_length(
        self, server: ServerFactory, root: Path, transport: str
    ) -> None:
        data = write(root / "grow.bin", payload(3 * MIB, 11))

        class Growing(SafeStaticFileHandler):
            def get_content_size(self) -> int:
                size = super().get_content_size()
                assert self.absolute_path is not None
                with open(self.absolute_path, "ab") as f:
                    f.write(payload(MIB, 12))
                return size

        srv = server(
            [(r"/s/(.*)", Growing, {"path": str(root)})],
            compress_response=transport == "read",  # a transform: no sendfile
        )
        response = fetch(srv.port, "/s/grow.bin")
        assert response.status == 200 and response.complete
        assert response.header("Content-Length") == str(len(data))
        assert sha256(response.body) == sha256(data)

    @pytest.mark.parametrize("transport", ["sendfile", "read"])
    def test_shrinking_file_cuts_the_response(
        self, server: ServerFactory, root: Path, logs: LogRecorder, transport: str
    ) -> None:
        write(root / "shrink.bin", payload(16 * MIB, 13))
        srv = server(
            [(r"/s/(.*)", SafeStaticFileHandler, {"path": str(root)})],
            compress_response=transport == "read",
            sndbuf=64 * 1024,
        )
        pause = Pause()
        result: list[Any] = []
        client = threading.Thread(
            target=lambda: result.append(
                fetch(srv.port, "/s/shrink.bin", pause=pause, rcvbuf=64 * 1024, timeout=30)
            )
        )
        client.start()
        assert pause.headers_read.wait(TIMEOUT)
        os.truncate(root / "shrink.bin", 2 * MIB)
        pause.resume.set()
        client.join(30)
        response = result[0]
        assert response.status == 200 and response.header("Content-Length") == str(16 * MIB)
        assert not response.complete and len(response.body) < 16 * MIB
        record = logs.wait_for_record(
            lambda r: "shrank" in r.getMessage() or "shrank" in str(r.exc_info)
        )
        assert record is not None
