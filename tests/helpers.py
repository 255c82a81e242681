"""Shared test helpers: a real server in a thread, a raw-socket HTTP/1.1 client, payloads.

Every blocking wait here has a timeout and every loop is bounded, so a broken
implementation fails a test instead of hanging the run. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import struct
import threading
import time
import traceback
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (
    Callable,
    Protocol,
)

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets

#: Upper bound for any single blocking wait in the suite (seconds).
TIMEOUT = 10.0

#: ``(pattern, handler class, initialize() kwargs)``
Route = tuple[str, type[tornado.web.RequestHandler], dict[str, object]]


# --------------------------------------------------------------------------- payloads


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (incompressible)."""
    return random.Random(seed).randbytes(size)


def text_payload(size: int, seed: int = 0) -> bytes:
    """Deterministic compressible ASCII bytes (for gzip tests)."""
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
    return bytes(out[:size])


def split(data: bytes, chunk_size: int) -> Iterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- thread-safe records


class Recorder:
    """A thread-safe log of named events, with waits that time out.

    Handlers (on the loop or in workers) call `add`; the test thread waits with
    `wait_for` and inspects `values`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[tuple[str, object]] = []

    def add(self, name: str, value: object = None) -> None:
        with self._cond:
            self._events.append((name, value))
            self._cond.notify_all()

    def has(self, name: str) -> bool:
        with self._cond:
            return any(n == name for n, _ in self._events)

    def values(self, name: str) -> list[object]:
        with self._cond:
            return [v for n, v in self._events if n == name]

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self._events]

    def wait_for(self, name: str, timeout: float = TIMEOUT) -> object:
        """Return the first value recorded under ``name``; AssertionError on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(n == name for n, _ in self._events), timeout)
            if not ok:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {name!r}; recorded: {self._events!r}"
                )
            return next(v for n, v in self._events if n == name)

    def __repr__(self) -> str:
        return f"<Recorder {self._events!r}>"


class Progress:
    """A producer's byte counter that the test thread can watch."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value = 0
        self.finished = False

    def add(self, n: int) -> None:
        with self._cond:
            self._value += n
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    @property
    def value(self) -> int:
        with self._cond:
            return self._value

    def wait_at_least(self, n: int, timeout: float = TIMEOUT) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self._value >= n or self.finished, timeout):
                raise AssertionError(
                    f"producer reached only {self._value} of {n} bytes in {timeout}s"
                )
            return self._value

    def wait_stable(self, quiet: float = 0.3, timeout: float = TIMEOUT) -> int:
        """Wait until the producer stops advancing and return its count.

        There is no event for "the producer is blocked inside the library", so
        this is the one documented settle in the suite: the count is stable
        once a whole ``quiet`` period passes without the producer notifying.
        Each quiet wait ends early on progress, and the whole wait is bounded
        by ``timeout`` (AssertionError if it never settles).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                before = self._value
                if self.finished:
                    return before
                self._cond.wait(quiet)
                if self._value == before:
                    return before
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"producer never stopped advancing ({self._value} bytes after {timeout}s)"
                    )


class LogRecorder(logging.Handler):
    """Collects log records from every thread (attached to the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._cond = threading.Condition()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def errors(self, *, include_access: bool = False) -> list[logging.LogRecord]:
        """ERROR and worse. ``tornado.access`` logs every 5xx at ERROR; left out unless asked."""
        with self._cond:
            return [
                r
                for r in self.records
                if r.levelno >= logging.ERROR and (include_access or r.name != "tornado.access")
            ]

    def wait_for_errors(self, count: int = 1, timeout: float = TIMEOUT) -> list[logging.LogRecord]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.errors()) >= count, timeout):
                raise AssertionError(
                    f"expected {count} ERROR record(s) in {timeout}s, got {self.errors()!r}"
                )
        return self.errors()

    def wait_for_record(
        self, predicate: Callable[[logging.LogRecord], bool], timeout: float = TIMEOUT
    ) -> logging.LogRecord:
        """The first record (from any thread, any level) that ``predicate`` accepts."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(predicate(r) for r in self.records), timeout):
                raise AssertionError(f"no matching log record in {timeout}s; got {self.records!r}")
            return next(r for r in self.records if predicate(r))

    def __enter__(self) -> LogRecorder:
        root = logging.getLogger()
        self._old_level = root.level
        root.addHandler(self)
        # keep the root at WARNING or more verbose: ERROR/WARNING must reach us
        if root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._old_level)


def record_text(record: logging.LogRecord) -> str:
    """The message of a log record plus its formatted exception, if any."""
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info))
    return text


# --------------------------------------------------------------------------- server in a thread


class _HTTPServer(HTTPServer):
    accepted: list[socket.socket]
    sndbuf: int | None
    rcvbuf: int | None

    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        sock = stream.socket
        if self.sndbuf is not None:
            # a fixed SO_SNDBUF also turns off Linux's send-buffer autotuning (up to 4 MiB here)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        if self.rcvbuf is not None:
            # likewise for the receive buffer (autotuned up to tcp_rmem's maximum otherwise)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.accepted.append(sock)
        super().handle_stream(stream, address)


class ServerThread:
    """A Tornado `HTTPServer` on 127.0.0.1:<ephemeral> with its own IOLoop in its own thread.

    The test (main) thread stays free to use blocking clients.
    """

    def __init__(
        self,
        app: tornado.web.Application,
        *,
        default_executor: Executor | None = None,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self._app = app
        self._default_executor = default_executor
        self._sndbuf = sndbuf
        self._rcvbuf = rcvbuf
        #: the server side of every accepted connection, in order
        self.accepted: list[socket.socket] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._asyncio_loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopped = False
        self.io_loop: IOLoop | None = None
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="test-server-loop", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def loop_thread_ident(self) -> int | None:
        return self.thread.ident

    def start(self) -> None:
        self.thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("server thread did not become ready")
        if self._error is not None:
            raise AssertionError("server thread failed to start") from self._error

    def _run(self) -> None:
        asyncio_loop = asyncio.new_event_loop()
        self._asyncio_loop = asyncio_loop
        try:
            asyncio_loop.run_until_complete(self._main())
            # Let whatever the test left behind (streams, pull tasks) see cancellation.
            leftovers = [t for t in asyncio.all_tasks(asyncio_loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                asyncio_loop.run_until_complete(asyncio.wait(leftovers, timeout=TIMEOUT))
            asyncio_loop.run_until_complete(asyncio_loop.shutdown_asyncgens())
        except BaseException as exc:  # reported by start()/stop() in the test thread
            self._error = exc
        finally:
            self._ready.set()
            if self.io_loop is not None:
                self.io_loop.close()
            else:
                asyncio_loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self.io_loop = IOLoop.current()
        if self._default_executor is not None:
            self.io_loop.set_default_executor(self._default_executor)
        sockets = bind_sockets(0, "127.0.0.1")
        server = _HTTPServer(self._app)
        server.accepted = self.accepted
        server.sndbuf = self._sndbuf
        server.rcvbuf = self._rcvbuf
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), TIMEOUT)

    def stop(self) -> None:
        """Stop serving, close all connections, stop the loop and join the thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        loop, stop_event = self._asyncio_loop, self._stop_event
        if loop is not None and stop_event is not None and self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            raise AssertionError("server thread did not stop in time")
        if self._error is not None:
            raise AssertionError("server thread failed") from self._error

    def run_on_loop(self, fn: Callable[[], object], timeout: float = TIMEOUT) -> object:
        """Run ``fn`` on the server's loop thread and return its result."""
        loop = self._asyncio_loop
        assert loop is not None
        done = threading.Event()
        box: list[object] = []

        def call() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        loop.call_soon_threadsafe(call)
        if not done.wait(timeout):
            raise AssertionError("loop did not run the callback in time")
        return box[0] if box else None


class ExecutorFactory(Protocol):
    """The ``make_executor`` fixture."""

    def __call__(self, max_workers: int = ..., name: str = ...) -> ThreadPoolExecutor: ...


class ServerFactory(Protocol):
    """The ``server`` fixture: start a `ServerThread` for these routes and application settings."""

    def __call__(
        self,
        routes: Sequence[Route],
        *,
        default_executor: Executor | None = ...,
        sndbuf: int | None = ...,
        rcvbuf: int | None = ...,
        **settings: object,
    ) -> ServerThread: ...


def make_app(routes: Sequence[Route], **settings: object) -> tornado.web.Application:
    handlers = [tornado.web.url(p, h, dict(kw)) for p, h, kw in routes]
    return tornado.web.Application(handlers, None, None, **settings)


# --------------------------------------------------------------------------- raw HTTP/1.1 client


@dataclass
class Head:
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Response:
    head: Head
    body: bytes
    #: the body ended properly (final zero chunk / whole Content-Length / no body expected)
    complete: bool
    #: how the body was framed: "chunked", "length", "close" or "none"
    framing: str
    raw_body: bytes = field(repr=False, default=b"")

    @property
    def status(self) -> int:
        return self.head.status

    def header(self, name: str) -> str | None:
        return self.head.get(name)


class ConnectionClosed(Exception):
    pass


class RawConnection:
    """A blocking HTTP/1.1 client on one socket: GET/HEAD, chunked and Content-Length bodies.

    Knobs: ``recv_size`` (bytes per ``recv``), ``rcvbuf`` (SO_RCVBUF, set before
    connecting), ``timeout`` (every socket operation). Several requests may be
    made in turn on one connection (keep-alive). A "stalled reader" is simply
    `send_request` + `read_head` and then not reading.
    """

    def __init__(
        self,
        port: int,
        *,
        rcvbuf: int | None = None,
        recv_size: int = 65536,
        timeout: float = TIMEOUT,
    ) -> None:
        self.port = port
        self.recv_size = recv_size
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buf = bytearray()
        self._eof = False
        #: bytes taken out of the kernel so far (head and body, all requests)
        self.bytes_received = 0

    @property
    def rcvbuf(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def close(self, *, reset: bool = False) -> None:
        """Close; ``reset=True`` sends an RST (SO_LINGER 0) instead of a FIN."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level

    def _fill(self, size: int | None = None) -> bool:
        """One recv into the buffer; False at EOF (or reset)."""
        if self._eof:
            return False
        try:
            data = self.sock.recv(size or self.recv_size)
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self._eof = True
            return False
        self.bytes_received += len(data)
        self._buf += data
        return True

    def _read_line(self) -> bytes:
        for _ in range(1_000_000):
            idx = self._buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 2]
                return line
            if len(self._buf) > 65536:
                raise AssertionError("HTTP line too long")
            if not self._fill():
                raise ConnectionClosed("connection closed inside a line")
        raise AssertionError("unbounded line read")

    def _take(self, max_size: int) -> bytes:
        """Up to ``max_size`` buffered-or-received bytes; b"" at EOF."""
        if not self._buf and not self._fill():
            return b""
        data = bytes(self._buf[:max_size])
        del self._buf[:max_size]
        return data

    # -- requests

    def send_request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def read_head(self) -> Head:
        status_line = self._read_line().decode("latin-1")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise AssertionError(f"bad status line {status_line!r}")
        code, _, reason = rest.partition(" ")
        headers: list[tuple[str, str]] = []
        for _ in range(1000):
            line = self._read_line().decode("latin-1")
            if not line:
                return Head(int(code), reason, headers)
            key, _, value = line.partition(":")
            headers.append((key.strip(), value.strip()))
        raise AssertionError("too many header lines")

    def body_reader(self, head: Head, method: str = "GET") -> BodyReader:
        return BodyReader(self, head, method)

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        decode_gzip: bool = True,
        pace: float | None = None,
    ) -> Response:
        self.send_request(method, path, headers, body)
        head = self.read_head()
        return self.body_reader(head, method).response(decode_gzip=decode_gzip, pace=pace)


class BodyReader:
    """Incremental body decoder. `read` returns decoded body bytes as they arrive."""

    def __init__(self, conn: RawConnection, head: Head, method: str) -> None:
        self.conn = conn
        self.head = head
        self.complete = False
        self.finished = False
        self._chunk_left = 0
        self._length_left = 0
        te = (head.get("Transfer-Encoding") or "").lower()
        cl = head.get("Content-Length")
        if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
            self.framing = "none"
            self.complete = self.finished = True
        elif "chunked" in te:
            self.framing = "chunked"
        elif cl is not None:
            self.framing = "length"
            self._length_left = int(cl)
            if self._length_left == 0:
                self.complete = self.finished = True
        else:
            self.framing = "close"

    def _end(self, complete: bool) -> bytes:
        self.complete = complete
        self.finished = True
        return b""

    def read(self, max_size: int = 1 << 20) -> bytes:
        """Next decoded bytes (at least one unless finished); b"" once the body ended or broke."""
        if self.finished:
            return b""
        conn = self.conn
        try:
            if self.framing == "length":
                data = conn._take(min(max_size, self._length_left))
                if not data:
                    return self._end(False)
                self._length_left -= len(data)
                if self._length_left == 0:
                    self.complete = self.finished = True
                return data
            if self.framing == "close":
                data = conn._take(max_size)
                if not data:
                    return self._end(True)
                return data
            # chunked
            for _ in range(1000):
                if self._chunk_left == 0:
                    size_line = conn._read_line().split(b";", 1)[0].strip()
                    size = int(size_line, 16)
                    if size == 0:
                        for _ in range(1000):  # trailers
                            if not conn._read_line():
                                break
                        self.complete = self.finished = True
                        return b""
                    self._chunk_left = size
                data = conn._take(min(max_size, self._chunk_left))
                if not data:
                    return self._end(False)
                self._chunk_left -= len(data)
                if self._chunk_left == 0 and conn._read_line() != b"":
                    raise AssertionError("chunk not followed by CRLF")
                return data
            raise AssertionError("unbounded chunk loop")
        except ConnectionClosed:
            return self._end(False)

    def read_exactly(self, n: int) -> bytes:
        out = bytearray()
        for _ in range(n + 1):
            if len(out) >= n:
                break
            data = self.read(n - len(out))
            if not data:
                raise AssertionError(
                    f"body ended after {len(out)} of {n} bytes (complete={self.complete})"
                )
            out += data
        return bytes(out)

    def read_all(self, pace: float | None = None, limit: int = 1 << 30) -> bytes:
        """Read to the end of the body (bounded by ``limit``); ``pace`` sleeps between reads."""
        out = bytearray()
        while len(out) <= limit:
            data = self.read()
            if not data:
                return bytes(out)
            out += data
            if pace:
                time.sleep(min(pace, 0.01))  # a paced slow reader, bounded per step
        raise AssertionError(f"body exceeds {limit} bytes")

    def response(self, *, decode_gzip: bool = True, pace: float | None = None) -> Response:
        raw = self.read_all(pace=pace)
        body = raw
        if decode_gzip and (self.head.get("Content-Encoding") or "").lower() == "gzip" and raw:
            body = gunzip(raw)
        return Response(self.head, body, self.complete, self.framing, raw)


def gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    rcvbuf: int | None = None,
    recv_size: int = 65536,
    pace: float | None = None,
    pause: Pause | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    """One request on a fresh connection; the knobs are those of `RawConnection`.

    With ``pause``, the client reads the head, sets ``pause.headers_read`` and
    reads nothing more until ``pause.resume`` is set (a stalled reader).
    """
    with RawConnection(port, rcvbuf=rcvbuf, recv_size=recv_size, timeout=timeout) as conn:
        conn.send_request(method, path, headers, body)
        head = conn.read_head()
        if pause is not None:
            pause.headers_read.set()
            if not pause.resume.wait(timeout):
                raise AssertionError("stalled reader was never resumed")
        return conn.body_reader(head, method).response(pace=pace)


@dataclass
class Pause:
    headers_read: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)


def sndbuf(sock: socket.socket) -> int:
    """SO_SNDBUF as the kernel reports it (Linux doubles the requested size, or autotunes it)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def thread_name(ident: int | None) -> str:
    for t in threading.enumerate():
        if t.ident == ident:
            return t.name
    return f"<gone {ident}>"
