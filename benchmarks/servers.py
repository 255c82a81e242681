"""
One benchmark server variant per process, on 127.0.0.1.

``python benchmarks/servers.py VARIANT --port 0 --file PATH --chunk N --executor-threads N``
serves ``--file`` at ``/file`` in ``--chunk``-byte chunks, the way VARIANT does it, and prints
its port on a line of its own (``--port-file`` also writes it to a file). Variants:

``static``
    Tornado's `~tornado.web.StaticFileHandler` (reads on the loop, 64 KiB chunks whatever
    ``--chunk`` says). Its Etag is normally the SHA-512 of the whole file, computed once on
    the loop; Tornado 6.6 refuses that for files over 64 MiB (it logs an error and sends no
    Etag), so the subclass here versions the file from its size and mtime instead, as nginx
    does: an Etag is still sent, and no request hashes the file.
``loop``
    Reads the file on the loop, ``write`` + ``await flush()`` per chunk.
``executor``
    Per chunk, ``await IOLoop.current().run_in_executor(pool, f.read, n)``, then ``write`` +
    ``await flush()`` on the loop: the usual correct thread-pool handler.
``broken``
    The demo's pattern: ``@run_on_executor`` + ``self.write(chunk)`` +
    ``io_loop.add_callback(self.flush)`` from the worker. Races; corrupts downloads.
``push`` / ``generator``
    `tornado_safestream`'s two styles (``@stream_on_executor`` with the default
    ``max_buffer_bytes`` unless ``--max-buffer-bytes`` is given).
``safe-static``
    `tornado_safestream.SafeStaticFileHandler` with its default settings (the IOLoop's
    default executor, its own ``max_buffer_bytes``; ``--executor-threads`` and
    ``--max-buffer-bytes`` do not apply), versioned by size and mtime as ``static`` is, in
    the executor: the same files, headers and Etag as ``static``. ``sendfile`` where the
    connection allows it.
``ws-mixin`` / ``ws-callback``
    ``/ws``, a WebSocket on which a worker thread sends, when the client asks for it
    (``flood N SIZE``: N binary messages of SIZE bytes, as fast as it can; ``stall SIZE``:
    messages of SIZE bytes until the connection closes). ``ws-mixin``: a
    `tornado_safestream.SafeWebSocketMixin` handler (default settings), the thread calls
    ``write_message``; ``ws-callback``: a plain ``WebSocketHandler``, the thread calls
    ``IOLoop.add_callback(handler.write_message, message, True)``, the pattern Tornado's
    maintainers recommend. Message ``i`` is ``i`` in 8 ASCII digits, then dots. ``/stats``
    has the thread's figures under ``websocket``; ``--figures-file PATH`` also has a thread of
    its own write them (JSON) to PATH every 0.25 s, for when the loop is too busy to answer.
    ``/file`` is served as ``static`` does.

``loop``, ``executor``, ``push`` and ``generator`` set ``Content-Length`` from the file's
size, as `StaticFileHandler` does, so that all of them send the same bytes on the wire
(``--chunked`` leaves it out: chunked transfer encoding, as for a body of unknown length);
``broken`` is the demo's code and never sets it. ``--assert`` turns on assertion mode
(`tornado_safestream.enable_thread_assertions`) before the server starts.

Every variant also serves ``/ping`` (a 4-byte body written on the loop), ``/small`` (the
``--small-file``, through the same variant, if given) and ``/stats``: JSON with the process's
CPU time (``getrusage(RUSAGE_SELF)``), its current and peak RSS (``VmRSS``/``VmHWM`` from
``/proc/self/status``; ``/stats?reset_peak=1`` resets the peak first, by writing 5 to
``/proc/self/clear_refs``), its threads and the warnings and errors it logged.

``/sleep?seconds=0.001&n=200`` measures what ``time.sleep(seconds)`` really takes in this
process (in a thread of its own). ``/stats`` also has the library's process-wide figures
(``library_stats``: `tornado_safestream.memory.memory_stats`; ``bytes_held`` and
``memory_cap`` from them). ``--static-dir DIR`` (``static``, ``safe-static``) also serves
every file of DIR at ``/dir/NAME``.

``/upload/loop``, ``/upload/executor`` and ``/upload/receive`` (``PUT``) write the request
body to a file in ``--upload-dir`` (deleted once answered): ``data_received`` writing on the
loop, ``await run_in_executor(pool, f.write, chunk)`` per chunk, and
`tornado_safestream.receive_on_executor`.

``--producer-sleep SECONDS`` makes executor, push and generator sleep that long before
reading each chunk of ``/file``, in the worker, as a producer waiting on a database would.
``--option NAME=JSON`` passes a keyword argument to ``stream_on_executor`` (push,
generator), ``--app-setting NAME=JSON`` an `~tornado.web.Application` setting: new options
of the library can be measured as they appear. The server raises its soft open-files limit
to the hard one (a socket and a file per stream).

The server exits at once (``os._exit``) on SIGTERM or SIGINT, when its parent process goes
away (``--exit-with-parent``) or after ``--max-lifetime`` seconds. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import os
import platform
import resource
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import tornado
from tornado.concurrent import run_on_executor
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, StaticFileHandler, stream_request_body
from tornado.websocket import WebSocketClosedError, WebSocketHandler

import tornado_safestream
from tornado_safestream import (
    SafeStaticFileHandler,
    SafeStreamMixin,
    SafeWebSocketMixin,
    enable_thread_assertions,
    receive_on_executor,
    stream_on_executor,
)

HOST = "127.0.0.1"
VARIANTS = (
    "static",
    "safe-static",
    "loop",
    "executor",
    "broken",
    "push",
    "generator",
    "ws-mixin",
    "ws-callback",
)
STATIC_VARIANTS = ("static", "safe-static", "ws-mixin", "ws-callback")


@dataclass(frozen=True)
class FileConfig:
    """What one route serves, and how."""

    path: str
    chunk: int
    executor: Executor
    content_length: bool
    #: seconds the producer sleeps after reading each chunk (0: none), as a database would
    producer_sleep: float = 0.0


def _read(f: BinaryIO, config: FileConfig) -> bytes:
    """The next chunk, after `FileConfig.producer_sleep` (in a worker thread, never the loop)."""
    if config.producer_sleep:
        time.sleep(config.producer_sleep)
    return f.read(config.chunk)


def _set_length(handler: RequestHandler, config: FileConfig, fileno: int) -> None:
    handler.set_header("Content-Type", "application/octet-stream")
    if config.content_length:
        handler.set_header("Content-Length", os.fstat(fileno).st_size)


# -- the variants ------------------------------------------------------------------------


class _OneFile:
    """Serves one file (``default_filename``), versioned by its size and mtime."""

    default_filename: str | None

    def parse_url_path(self, url_path: str) -> str:
        return self.default_filename or url_path

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        # Tornado's default hashes the whole file on the loop (and gives up over 64 MiB);
        # SafeStaticFileHandler calls this in the executor.
        stat = os.stat(abspath)
        return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


class StaticDownload(_OneFile, StaticFileHandler):
    """`StaticFileHandler` for one file, versioned by size and mtime."""


class SafeStaticDownload(_OneFile, SafeStaticFileHandler):
    """`SafeStaticFileHandler` (default settings) for one file, versioned as `StaticDownload`."""


class LoopDownload(RequestHandler):
    """Reads on the loop; ``write`` + ``await flush()`` per chunk."""

    def initialize(self, config: FileConfig) -> None:
        self.config = config

    async def get(self) -> None:
        config = self.config
        with open(config.path, "rb") as f:
            _set_length(self, config, f.fileno())
            while True:
                chunk = f.read(config.chunk)
                if not chunk:
                    break
                self.write(chunk)
                try:
                    await self.flush()
                except StreamClosedError:
                    return


class ExecutorDownload(RequestHandler):
    """Each chunk read with ``run_in_executor``; ``write`` + ``await flush()`` on the loop."""

    def initialize(self, config: FileConfig) -> None:
        self.config = config

    async def get(self) -> None:
        config = self.config
        loop = IOLoop.current()
        with open(config.path, "rb") as f:
            _set_length(self, config, f.fileno())
            while True:
                chunk = await loop.run_in_executor(config.executor, _read, f, config)
                if not chunk:
                    break
                self.write(chunk)
                try:
                    await self.flush()
                except StreamClosedError:
                    return


class BrokenDownload(RequestHandler):
    """The demo's broken pattern: writes from a worker thread. Do not copy this."""

    executor: Executor

    def initialize(self, config: FileConfig) -> None:
        self.config = config
        self.executor = config.executor  # used by @run_on_executor

    def prepare(self) -> None:
        self.io_loop = IOLoop.current()

    @run_on_executor
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        with open(self.config.path, "rb") as f:
            while True:
                chunk = f.read(self.config.chunk)
                if not chunk:
                    break
                self.write(chunk)  # touches the handler from a worker thread: races
                self.io_loop.add_callback(self.flush)


def library_handlers(
    max_buffer_bytes: int | None, options: dict[str, Any]
) -> dict[str, type[RequestHandler]]:
    """
    The push- and generator-style handlers, decorated with *max_buffer_bytes* (or the
    library's default) and any further keyword *options* of `stream_on_executor`.
    """
    kwargs = dict(options)
    if max_buffer_bytes is not None:
        kwargs["max_buffer_bytes"] = max_buffer_bytes
    decorate = stream_on_executor(**kwargs)

    class PushDownload(SafeStreamMixin, RequestHandler):
        executor: Executor

        def initialize(self, config: FileConfig) -> None:
            self.config = config
            self.executor = config.executor

        @decorate
        def get(self) -> None:
            config = self.config
            with open(config.path, "rb") as f:
                _set_length(self, config, f.fileno())
                while True:
                    chunk = _read(f, config)
                    if not chunk:
                        break
                    self.write(chunk)
                    self.flush()

    class GeneratorDownload(SafeStreamMixin, RequestHandler):
        executor: Executor

        def initialize(self, config: FileConfig) -> None:
            self.config = config
            self.executor = config.executor

        @decorate
        def get(self) -> Iterator[bytes]:
            config = self.config
            with open(config.path, "rb") as f:
                _set_length(self, config, f.fileno())
                while True:
                    chunk = _read(f, config)
                    if not chunk:
                        break
                    yield chunk

    return {"push": PushDownload, "generator": GeneratorDownload}


def default_max_buffer_bytes() -> int | None:
    """The library's default ``max_buffer_bytes``, read from the decorator's signature."""
    try:
        default = inspect.signature(stream_on_executor).parameters["max_buffer_bytes"].default
    except (KeyError, TypeError, ValueError):
        return None
    return default if isinstance(default, int) else None


# -- WebSockets: a worker thread sends ----------------------------------------------------


def ws_message(i: int, size: int) -> bytes:
    """Message *i* of the WebSocket scenarios: *i* in 8 ASCII digits, then dots (*size* bytes)."""
    head = b"%08d" % i
    return head[:size] + b"." * (size - len(head))


class WsFigures:
    """What the sending threads did, for ``/stats`` (guarded by ``lock``: threads and loop)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0  # messages handed to write_message / add_callback, all threads
        self.threads = 0  # sending threads running
        self.errors: list[str] = []
        self.handlers: list[WebSocketHandler] = []  # read on the loop only (buffered_bytes)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            figures: dict[str, Any] = {
                "sent": self.sent,
                "threads": self.threads,
                "errors": list(self.errors[:5]),
            }
        buffered = [getattr(h, "buffered_bytes", None) for h in self.handlers]
        figures["buffered_bytes"] = [b for b in buffered if b is not None]
        mbb = [getattr(h, "max_buffer_bytes", None) for h in self.handlers]
        figures["max_buffer_bytes"] = next((m for m in mbb if isinstance(m, int)), None)
        return figures


WS = WsFigures()


def write_figures(path: str) -> None:
    """Every 0.25 s, the sending threads' figures to *path* (JSON, replaced whole)."""
    while True:
        with WS.lock:
            figures = {"sent": WS.sent, "threads": WS.threads, "at": time.monotonic()}
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="ascii") as f:
            json.dump(figures, f)
        os.replace(temporary, path)
        time.sleep(0.25)


class WsSender:
    """The ``/ws`` protocol of both WebSocket variants; `send` is how each one sends."""

    def open_sender(self) -> None:
        # set on the loop (open) before the sending thread starts, which orders the two
        self.stopping = threading.Event()  # set on the loop by on_close, read by the thread

    def command(self, handler: WebSocketHandler, message: str | bytes) -> None:
        words = (message.decode() if isinstance(message, bytes) else message).split()
        if words and words[0] == "flood" and len(words) == 3:
            count, size = int(words[1]), int(words[2])
        elif words and words[0] == "stall" and len(words) == 2:
            count, size = -1, int(words[1])
        else:
            handler.close(1003, "expected 'flood N SIZE' or 'stall SIZE'")
            return
        WS.handlers.append(handler)
        threading.Thread(
            target=self._produce, args=(count, size), name="bench-ws-sender", daemon=True
        ).start()

    def _produce(self, count: int, size: int) -> None:
        """In the sending thread: *count* messages (-1: until closed), numbered from 0."""
        with WS.lock:
            WS.threads += 1
        i = 0
        try:
            while (count < 0 or i < count) and not self.stopping.is_set():
                self.send(ws_message(i, size))
                i += 1
                with WS.lock:  # a fraction of a microsecond, the same for both variants
                    WS.sent += 1
        except WebSocketClosedError:
            pass
        except Exception as e:  # reported in /stats
            with WS.lock:
                WS.errors.append(f"{type(e).__name__}: {e}")
        finally:
            with WS.lock:
                WS.threads -= 1

    def send(self, message: bytes) -> None:
        raise NotImplementedError


class WsMixin(SafeWebSocketMixin, WsSender, WebSocketHandler):
    """`SafeWebSocketMixin` with its default settings: the thread calls ``write_message``."""

    def open(self) -> None:
        self.open_sender()

    def on_message(self, message: str | bytes) -> None:
        self.command(self, message)

    def on_close(self) -> None:
        self.stopping.set()

    def send(self, message: bytes) -> None:
        self.write_message(message, binary=True)  # a Future; "wait" blocks while full


class WsCallback(WsSender, WebSocketHandler):
    """A plain ``WebSocketHandler``: the thread calls ``IOLoop.add_callback(write_message)``."""

    def open(self) -> None:
        self.open_sender()
        self.loop = IOLoop.current()

    def on_message(self, message: str | bytes) -> None:
        self.command(self, message)

    def on_close(self) -> None:
        self.stopping.set()

    def send(self, message: bytes) -> None:
        self.loop.add_callback(self._write, message)

    def _write(self, message: bytes) -> None:
        # on the loop; a connection closed meanwhile is not an error here
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(message, True)


# -- /ping and /stats ----------------------------------------------------------------------


class Ping(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(b"pong")


# -- /upload/<style>: a request body to a file ----------------------------------------------

#: Largest upload the servers accept (Tornado's default is 100 MB).
MAX_UPLOAD = 64 * 1024**3


class _UploadBase(RequestHandler):
    """The body goes to a new file in ``directory``, deleted once the response is sent."""

    def initialize(self, directory: str, executor: Executor) -> None:
        self.directory = directory
        self.executor = executor
        self.path = os.path.join(directory, f"upload-{id(self)}-{time.monotonic_ns()}.bin")
        self.file: BinaryIO | None = None
        self.size = 0

    def _done(self) -> None:
        self.write({"size": self.size})

    def on_finish(self) -> None:
        if self.file is not None:
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@stream_request_body
class LoopUpload(_UploadBase):
    """``data_received`` writes each chunk to the file on the loop."""

    def data_received(self, chunk: bytes) -> None:
        if self.file is None:
            self.file = open(self.path, "wb")  # noqa: SIM115 (closed in on_finish)
        self.file.write(chunk)
        self.size += len(chunk)

    def put(self) -> None:
        self._done()


@stream_request_body
class ExecutorUpload(_UploadBase):
    """``await run_in_executor(pool, f.write, chunk)`` per chunk: the usual correct handler."""

    async def data_received(self, chunk: bytes) -> None:
        loop = IOLoop.current()
        if self.file is None:
            self.file = await loop.run_in_executor(self.executor, open, self.path, "wb")
        file = self.file
        assert file is not None
        await loop.run_in_executor(self.executor, file.write, chunk)
        self.size += len(chunk)

    def put(self) -> None:
        self._done()


@stream_request_body
class ReceiveUpload(SafeStreamMixin, _UploadBase):
    """`tornado_safestream.receive_on_executor`: each chunk written in the executor."""

    @receive_on_executor
    def data_received(self, chunk: bytes) -> None:
        if self.file is None:
            self.file = open(self.path, "wb")  # noqa: SIM115 (closed in on_finish)
        self.file.write(chunk)
        self.size += len(chunk)

    def put(self) -> None:
        self._done()


UPLOADS: dict[str, type[RequestHandler]] = {
    "loop": LoopUpload,
    "executor": ExecutorUpload,
    "receive": ReceiveUpload,
}


class SleepProbe(RequestHandler):
    """
    ``/sleep?seconds=0.001&n=200``: how long ``time.sleep(seconds)`` really takes in this
    process, measured *n* times in a thread of its own (not the loop, not the server's pool).
    """

    async def get(self) -> None:
        seconds = float(self.get_argument("seconds", "0.001"))
        n = min(max(int(self.get_argument("n", "200")), 1), 10_000)

        def measure() -> list[float]:
            lengths = []
            for _ in range(n):
                start = time.perf_counter()
                time.sleep(seconds)
                lengths.append(time.perf_counter() - start)
            return lengths

        with ThreadPoolExecutor(1, thread_name_prefix="bench-sleep-probe") as pool:
            lengths = await IOLoop.current().run_in_executor(pool, measure)
        body = {
            "seconds": seconds,
            "n": n,
            "mean": statistics.fmean(lengths),
            "median": statistics.median(lengths),
            "min": min(lengths),
            "max": max(lengths),
        }
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body).encode())


def library_stats() -> dict[str, Any] | None:
    """The library's process-wide figures (`tornado_safestream.memory`), if it has them."""
    try:
        from tornado_safestream.memory import memory_stats
    except ImportError:  # a version before the memory cap
        return None
    return memory_stats()._asdict()


class LogCounter(logging.Handler):
    """Counts the warnings and errors logged, and keeps the first few for /stats."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            try:
                self.samples.append(f"{record.levelname} {record.name}: {record.getMessage()}")
            except Exception:  # a bad format string: keep counting
                self.samples.append(f"{record.levelname} {record.name}: {record.msg!r}")


def _proc_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` and ``Threads`` from ``/proc/self/status`` (bytes, count)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0]) * 1024
                elif name == "Threads":
                    found[name] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return found


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class ServerInfo:
    variant: str
    assertions: bool
    max_buffer_bytes: int | None  # what push/generator use; None for the other variants
    content_length: bool
    chunk: int
    executor_threads: int
    started: float
    log: LogCounter
    library_options: dict[str, Any]


class Stats(RequestHandler):
    def initialize(self, info: ServerInfo) -> None:
        self.info = info

    def get(self) -> None:
        reset = self.get_argument("reset_peak", "") not in ("", "0")
        peak_reset = _reset_peak_rss() if reset else False
        usage = resource.getrusage(resource.RUSAGE_SELF)
        status = _proc_status()
        info = self.info
        body: dict[str, Any] = {
            "pid": os.getpid(),
            "variant": info.variant,
            "assertions": info.assertions,
            "max_buffer_bytes": info.max_buffer_bytes,
            "library_default_max_buffer_bytes": default_max_buffer_bytes(),
            "content_length": info.content_length,
            "chunk": info.chunk,
            "executor_threads": info.executor_threads,
            "cpu_user": usage.ru_utime,
            "cpu_system": usage.ru_stime,
            "cpu": usage.ru_utime + usage.ru_stime,
            "ru_maxrss_bytes": usage.ru_maxrss * 1024,  # since the start: cannot be reset
            "vm_rss": status.get("VmRSS"),
            "vm_hwm": status.get("VmHWM"),
            "peak_reset": peak_reset,
            "os_threads": status.get("Threads"),
            "python_threads": threading.active_count(),
            "errors_logged": info.log.count,
            "error_samples": info.log.samples,
            "uptime": time.monotonic() - info.started,
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "tornado": tornado.version,
            "tornado_safestream": tornado_safestream.__version__,
            "library_options": info.library_options,
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }
        if info.variant.startswith("ws-"):
            body["websocket"] = WS.snapshot()
        found = library_stats()
        if found is not None:
            body["library_stats"] = found
            body["bytes_held"] = found["held"]
            body["memory_cap"] = found["limit"]
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(body, default=str).encode())


# -- the server ----------------------------------------------------------------------------


def make_app(args: argparse.Namespace, info: ServerInfo, executor: Executor) -> Application:
    variant: str = args.variant
    routes: list[tuple[str, type[RequestHandler], dict[str, Any]]] = [
        (r"/ping", Ping, {}),
        (r"/stats", Stats, {"info": info}),
    ]
    files = [("/file", str(args.file))]
    if args.small_file:
        files.append(("/small", str(args.small_file)))
    classes: dict[str, type[RequestHandler]] = {
        "loop": LoopDownload,
        "executor": ExecutorDownload,
        "broken": BrokenDownload,
        **library_handlers(args.max_buffer_bytes, dict(args.option)),
    }
    static_class = SafeStaticDownload if variant == "safe-static" else StaticDownload
    for url, path in files:
        if variant in STATIC_VARIANTS:
            directory, name = os.path.split(os.path.abspath(path))
            # "()" captures the empty string, which parse_url_path maps to the file's name
            routes.append((url + "()", static_class, {"path": directory, "default_filename": name}))
        else:
            sleep = args.producer_sleep if url == "/file" else 0.0
            config = FileConfig(path, args.chunk, executor, not args.chunked, sleep)
            routes.append((url, classes[variant], {"config": config}))
    if args.static_dir and variant in STATIC_VARIANTS:
        routes.append((r"/dir/(.+)", static_class, {"path": os.path.abspath(args.static_dir)}))
    if variant == "ws-mixin":
        routes.append((r"/ws", WsMixin, {}))
    elif variant == "ws-callback":
        routes.append((r"/ws", WsCallback, {}))
    routes.append((r"/sleep", SleepProbe, {}))
    upload_dir = args.upload_dir or os.path.dirname(os.path.abspath(args.file))
    for style, handler in UPLOADS.items():
        routes.append(
            (f"/upload/{style}", handler, {"directory": upload_dir, "executor": executor})
        )
    # No access log: the same for every variant, and not what is measured.
    return Application(routes, log_function=lambda handler: None, **dict(args.app_setting))


def _exit_now(code: int = 0) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def serve(args: argparse.Namespace) -> None:
    log = LogCounter()
    logging.getLogger().addHandler(log)
    variant: str = args.variant
    library = variant in ("push", "generator")
    mbb: int | None = args.max_buffer_bytes
    info = ServerInfo(
        variant=variant,
        assertions=bool(args.assert_mode),
        max_buffer_bytes=(mbb if mbb is not None else default_max_buffer_bytes())
        if library
        else None,
        content_length=not args.chunked and variant != "broken",
        chunk=args.chunk,
        executor_threads=args.executor_threads,
        started=time.monotonic(),
        log=log,
        library_options={**dict(args.option), **dict(args.app_setting)},
    )
    executor = ThreadPoolExecutor(args.executor_threads, thread_name_prefix=f"bench-{variant}")
    app = make_app(args, info, executor)
    sockets = bind_sockets(args.port, HOST, backlog=1024)
    server = HTTPServer(app, max_body_size=MAX_UPLOAD)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]

    parent = os.getppid()
    deadline = time.monotonic() + args.max_lifetime

    def watchdog() -> None:
        if args.exit_with_parent and os.getppid() != parent:
            logging.warning("parent process gone: exiting")
            _exit_now(1)
        if time.monotonic() > deadline:
            logging.warning("--max-lifetime reached: exiting")
            _exit_now(1)

    PeriodicCallback(watchdog, 1000).start()
    if args.figures_file:
        threading.Thread(
            target=write_figures, args=(args.figures_file,), name="bench-figures", daemon=True
        ).start()

    if args.port_file:
        temporary = f"{args.port_file}.tmp"
        with open(temporary, "w", encoding="ascii") as f:
            f.write(f"{port}\n")
        os.replace(temporary, args.port_file)
    print(port, flush=True)
    await asyncio.Event().wait()  # until a signal or the watchdog ends the process


def _name_value(text: str) -> tuple[str, Any]:
    """``NAME=JSON`` (``NAME=word``: the string) as (name, value)."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--port", type=int, default=0, help="0 (default) picks a free port")
    parser.add_argument("--port-file", help="also write the port to this file")
    parser.add_argument("--file", required=True, help="the file served at /file")
    parser.add_argument("--small-file", help="a file served at /small, through the same variant")
    parser.add_argument("--static-dir", help="static, safe-static: serve its files at /dir/NAME")
    parser.add_argument("--figures-file", help="ws-*: write the sender's figures there, 4 a second")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="chunk size in bytes")
    parser.add_argument("--executor-threads", type=int, default=4, help="thread pool size")
    parser.add_argument(
        "--max-buffer-bytes",
        type=int,
        default=None,
        help="max_buffer_bytes of push/generator (default: the library's)",
    )
    parser.add_argument(
        "--chunked",
        action="store_true",
        help="do not set Content-Length (loop/executor/push/generator): chunked encoding",
    )
    parser.add_argument(
        "--upload-dir",
        help="where /upload/<style> writes request bodies (default: --file's directory)",
    )
    parser.add_argument(
        "--producer-sleep",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="executor/push/generator: sleep this long per chunk of /file (a blocking producer)",
    )
    parser.add_argument(
        "--option",
        action="append",
        type=_name_value,
        default=[],
        metavar="NAME=JSON",
        help="a keyword argument of stream_on_executor for push/generator (repeat for more)",
    )
    parser.add_argument(
        "--app-setting",
        action="append",
        type=_name_value,
        default=[],
        metavar="NAME=JSON",
        help="an Application setting (repeat for more)",
    )
    parser.add_argument(
        "--assert", dest="assert_mode", action="store_true", help="turn on assertion mode"
    )
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when the parent process goes away"
    )
    parser.add_argument(
        "--max-lifetime", type=float, default=3600.0, help="exit after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.executor_threads < 1:
        parser.error("--chunk and --executor-threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: _exit_now(0))
    # a socket and a file per stream: the thousand-stream scenarios need more than 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    if args.assert_mode:
        enable_thread_assertions()
    try:
        asyncio.run(serve(args))
    except BaseException:
        traceback.print_exc()
    _exit_now(1)  # serve() only returns by failing; worker threads must not keep us alive


if __name__ == "__main__":
    main()
