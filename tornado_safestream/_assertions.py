"""
Assertion mode: Tornado's single-thread objects check who calls them.

While it is enabled, the methods in the patch table below are replaced, on their classes,
by guards that compare the calling thread with the thread that runs the object's IOLoop,
and raise `WrongThreadError` in the caller, before the object is touched, on a mismatch.
Disabled, Tornado's own functions are back on the classes: no cost at all.

An object whose IOLoop is not running is not checked (nobody can race it), and neither is
`~tornado.ioloop.IOLoop.add_callback`, Tornado's one thread-safe entry point. Calls that a
`.SafeStreamMixin` handler forwards from its producer, and a `.SafeWebSocketMixin`
handler's sends from other threads, never reach Tornado's methods: they are carried out on
the loop.

Every violation is also recorded (the newest `_RECORD_SIZE`), so that a test can fail even
where the code under test swallowed the exception.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import linecache
import os
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable, NamedTuple

import tornado

from ._core._calls import RESPONSE_METHODS
from ._errors import WrongThreadError

__all__ = (
    "add_listener",
    "disable_thread_assertions",
    "enable_thread_assertions",
    "enabled",
    "hold",
    "recorded_since",
    "release",
    "remove_listener",
    "thread_assertions",
    "violation_count",
)

_STREAM_METHODS = (
    "read_until",
    "read_until_regex",
    "read_bytes",
    "read_into",
    "read_until_close",
    "write",
    "close",
    "set_close_callback",
    "set_nodelay",
    "start_tls",
)
_CONNECTION_METHODS = ("write_headers", "write", "finish", "detach", "set_close_callback")
#: What Tornado documents as not thread-safe (``add_callback`` is the exception).
_IOLOOP_METHODS = (
    "add_handler",
    "update_handler",
    "remove_handler",
    "call_at",
    "call_later",
    "add_timeout",
    "remove_timeout",
    "add_future",
    "spawn_callback",
)
#: WebSocketHandler's sending methods (after the upgrade it has no response methods left).
_WEBSOCKET_HANDLER_METHODS = ("write_message", "close", "ping")
#: What writes to the connection in the protocol (``_write_frame``: every frame, pongs too).
_WEBSOCKET_PROTOCOL_METHODS = ("write_message", "write_ping", "close", "_write_frame")
_WEBSOCKET_CLIENT_METHODS = ("write_message", "read_message", "close", "ping")
_RECORD_SIZE = 256

_running_loop = asyncio._get_running_loop  # no exception when there is none
_OURS = (
    os.path.dirname(os.path.abspath(tornado.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)

LoopOf = Callable[[Any], "asyncio.AbstractEventLoop | None"]


class _Target(NamedTuple):
    cls: type
    name: str
    label: Callable[[object], str]  #: the class name to show, given the object
    loop_of: LoopOf  #: the object's asyncio loop, if it can be told


# The object's asyncio loop, or None where it can't be told (a detached connection, a
# handler without a request): such objects are not checked.


def _stream_loop(stream: Any) -> asyncio.AbstractEventLoop | None:
    try:
        return stream.io_loop.asyncio_loop  # type: ignore[no-any-return]
    except AttributeError:
        return None


def _connection_loop(connection: Any) -> asyncio.AbstractEventLoop | None:
    try:
        return connection.stream.io_loop.asyncio_loop  # type: ignore[no-any-return]
    except AttributeError:
        return None


def _handler_loop(handler: Any) -> asyncio.AbstractEventLoop | None:
    try:
        return handler.request.connection.stream.io_loop.asyncio_loop  # type: ignore[no-any-return]
    except AttributeError:
        return None


def _websocket_handler_loop(handler: Any) -> asyncio.AbstractEventLoop | None:
    # After the upgrade the request's connection is detached: the stream is the protocol's.
    try:
        return handler.ws_connection.stream.io_loop.asyncio_loop  # type: ignore[no-any-return]
    except AttributeError:
        return _handler_loop(handler)


def _websocket_client_loop(client: Any) -> asyncio.AbstractEventLoop | None:
    try:
        return client.io_loop.asyncio_loop  # type: ignore[no-any-return]
    except AttributeError:
        return None


def _ioloop_loop(io_loop: Any) -> asyncio.AbstractEventLoop | None:
    try:
        return io_loop.asyncio_loop  # type: ignore[no-any-return]
    except AttributeError:
        return None


def _wrong_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is running, in a thread other than this one."""
    try:
        # asyncio's own loops: the thread they run in, or None when not running.
        owner = loop._thread_id  # type: ignore[attr-defined]
    except AttributeError:  # another loop implementation: ask asyncio instead
        return loop is not _running_loop() and loop.is_running()
    return owner is not None and owner != threading.get_ident()


def _targets() -> list[_Target]:
    from tornado import http1connection, ioloop, iostream, web, websocket
    from tornado.platform import asyncio as tornado_asyncio

    def fixed(name: str) -> Callable[[object], str]:
        return lambda _: name

    def own_class(obj: object) -> str:
        return type(obj).__name__

    targets: list[_Target] = []

    def add(classes: list[type], names: tuple[str, ...], label: Any, loop_of: LoopOf) -> None:
        for cls in classes:
            for name in names:
                if name in cls.__dict__:
                    targets.append(_Target(cls, name, label, loop_of))

    streams = [
        cls
        for cls in (
            iostream.BaseIOStream,
            iostream.IOStream,
            getattr(iostream, "SSLIOStream", None),
            getattr(iostream, "PipeIOStream", None),
        )
        if cls is not None
    ]
    add(streams, _STREAM_METHODS, own_class, _stream_loop)
    add(
        [http1connection.HTTP1Connection],
        _CONNECTION_METHODS,
        fixed("HTTP1Connection"),
        _connection_loop,
    )
    add([web.RequestHandler], RESPONSE_METHODS, fixed("RequestHandler"), _handler_loop)
    add(
        [websocket.WebSocketHandler],
        _WEBSOCKET_HANDLER_METHODS,
        fixed("WebSocketHandler"),
        _websocket_handler_loop,
    )
    add(
        [websocket.WebSocketProtocol13],
        _WEBSOCKET_PROTOCOL_METHODS,
        own_class,
        _connection_loop,  # a protocol has a ``stream`` too (None before the upgrade)
    )
    add(
        [websocket.WebSocketClientConnection],
        _WEBSOCKET_CLIENT_METHODS,
        fixed("WebSocketClientConnection"),
        _websocket_client_loop,
    )
    add(
        [ioloop.IOLoop, tornado_asyncio.BaseAsyncIOLoop],
        _IOLOOP_METHODS,
        fixed("IOLoop"),
        _ioloop_loop,
    )
    return targets


def _guard(target: _Target, original: Callable[..., Any]) -> Callable[..., Any]:
    name = target.name
    label = target.label
    loop_of = target.loop_of

    @functools.wraps(original)
    def guarded(self: object, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # pytest: show the caller's line, not this frame
        if _checking:
            loop = loop_of(self)
            if loop is not None and _wrong_thread(loop):
                _violation(f"{label(self)}.{name}()", loop)
        return original(self, *args, **kwargs)

    return guarded


def _violation(method: str, loop: asyncio.AbstractEventLoop) -> None:
    __tracebackhide__ = True
    filename, lineno, source_line = _call_site(sys._getframe(2))
    error = WrongThreadError(
        method,
        threading.current_thread().name,
        _thread_name(getattr(loop, "_thread_id", None)),
        filename,
        lineno,
        source_line,
    )
    # The record keeps a copy without the traceback, which would keep every frame alive.
    _record.add(WrongThreadError(*error._facts()))  # type: ignore[arg-type]
    raise error


def _call_site(frame: FrameType | None) -> tuple[str | None, int | None, str]:
    """
    The user's line: the first frame outside Tornado and this package.

    (A Tornado method handed to ``executor.submit`` as it is has no frame of the user's on
    its thread: the call site is then the executor's own line.)
    """
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_OURS):
            lineno = frame.f_lineno
            return filename, lineno, linecache.getline(filename, lineno).strip()
        frame = frame.f_back
    return None, None, ""


def _thread_name(ident: int | None) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return "<the IOLoop's thread>"


class _Record:
    """The newest violations, numbered; read by the pytest plugin."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        # --- guarded by _lock ---
        self._errors: collections.deque[tuple[int, WrongThreadError]] = collections.deque(
            maxlen=size
        )
        self._count = 0
        self._listeners: list[Callable[[WrongThreadError], None]] = []

    def add(self, error: WrongThreadError) -> None:
        with self._lock:
            self._count += 1
            self._errors.append((self._count, error))
            listeners = list(self._listeners)
        for listener in listeners:
            listener(error)

    def count(self) -> int:
        with self._lock:
            return self._count

    def since(self, mark: int) -> list[WrongThreadError]:
        with self._lock:
            return [error for number, error in self._errors if number > mark]

    def add_listener(self, listener: Callable[[WrongThreadError], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[WrongThreadError], None]) -> None:
        with self._lock:
            self._listeners.remove(listener)


_record = _Record(_RECORD_SIZE)
violation_count = _record.count
recorded_since = _record.since
add_listener = _record.add_listener
remove_listener = _record.remove_listener

_state_lock = threading.Lock()
# --- guarded by _state_lock ---
_installed: list[tuple[type, str, object, object]] = []  # (class, name, original, guard)
_explicit = False  # enable_thread_assertions() was called (and not undone)
_holds = 0  # thread_assertions() blocks (and the pytest plugin) that want it on
# Written under _state_lock, read by the guards without it: a stale read during a switch
# only checks, or skips, one call more.
_checking = False


def _update() -> None:
    # Warning! Call with _state_lock held. Install or remove the guards to match the state.
    global _checking
    wanted = _explicit or _holds > 0
    if wanted and not _installed:
        for target in _targets():
            original = target.cls.__dict__[target.name]
            guard = _guard(target, original)
            _installed.append((target.cls, target.name, original, guard))
            setattr(target.cls, target.name, guard)
        _checking = True
    elif not wanted and _installed:
        _checking = False
        while _installed:
            cls, name, saved, ours = _installed.pop()
            if cls.__dict__.get(name) is ours:  # else someone patched over us: theirs stays
                setattr(cls, name, saved)


def enable_thread_assertions() -> None:
    """
    Turn assertion mode on for the whole process; idempotent, callable from any thread.

    From now on, using a Tornado handler, connection, stream or (most) IOLoop methods from a
    thread other than their IOLoop's raises `WrongThreadError`.
    """
    global _explicit
    with _state_lock:
        _explicit = True
        _update()


def disable_thread_assertions() -> None:
    """
    Turn assertion mode off, now, for the whole process: Tornado's own methods are back.

    Idempotent, callable from any thread; `thread_assertions` blocks still running do not
    turn it on again when they end.
    """
    global _explicit, _holds
    with _state_lock:
        _explicit = False
        _holds = 0
        _update()


def hold() -> None:
    """Want assertion mode on until the matching `release`."""
    global _holds
    with _state_lock:
        _holds += 1
        _update()


def release() -> None:
    global _holds
    with _state_lock:
        _holds = max(0, _holds - 1)  # disable_thread_assertions() may have cleared it
        _update()


def enabled() -> bool:
    """Whether assertion mode is on."""
    with _state_lock:
        return bool(_installed)


@contextlib.contextmanager
def thread_assertions() -> Iterator[None]:
    """
    Assertion mode on inside the ``with`` block; the previous state is restored after.

    Blocks may nest, and run in several threads at once: the mode stays on until the last
    one ends, or for good if `enable_thread_assertions` was called.
    """
    hold()
    try:
        yield
    finally:
        release()
