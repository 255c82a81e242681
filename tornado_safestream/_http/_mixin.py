"""
`SafeStreamMixin`: response methods called from a handler's producer thread go to the loop.

Also `DecoratedMethod`, the base of what the decorators make of a handler method: a
descriptor that checks the class it is defined in has the mixin it needs.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import sys
import threading
import types
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, TypeVar, cast

from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from .._core._calls import FLUSHING_METHODS, RESPONSE_METHODS
from .._core._channel import Channel, producing
from .._core._output import Output
from .._core._words import check_mixin_first
from .._websocket._handler import SafeWebSocketMixin

if TYPE_CHECKING:
    from asyncio import Future

    from .._core._consumer import Consumer
    from .._core._inbound import Inbound
    from .._core._stats import StreamStats

    _HandlerBase = RequestHandler
else:
    _HandlerBase = object

__all__ = ("DecoratedMethod", "SafeStreamMixin")

_O = TypeVar("_O")


def _producer_channel(handler: SafeStreamMixin, method: str) -> Channel | None:
    """
    The channel to forward ``handler.method()`` to, or ``None`` to call Tornado's own.

    Forwarded: calls made by ``handler``'s own producer, in the executor thread running it.
    (Not a callback it scheduled on the loop, nor a thread it started: those are not the
    producer's thread, and get Tornado's method, or `.WrongThreadError` in assertion mode.)

    :raises RuntimeError: for a ``write`` or a flushing call on the loop thread while a
        stream is running, other than the stream's own: it would race the stream.
    """
    channel = producing.channel
    if channel is not None and channel.handler is handler:
        return channel
    # `_safestream_consumer` is written only on the loop. Another thread may read a stale
    # value here: that only decides whether it gets Tornado's method (and assertion mode's
    # WrongThreadError) now or later; it never reads the consumer's loop-owned state.
    consumer = handler._safestream_consumer
    if (
        consumer is not None
        and method in _RACING_METHODS
        and threading.get_ident() == consumer.loop_thread  # immutable; then on the loop
        and not consumer.calling
    ):
        raise RuntimeError(
            f"{type(handler).__qualname__}.{method}() was called on the IOLoop while "
            f"{consumer.where}() streams this response; call it from that method (in the "
            "executor), or after it returned"
        )
    return None


#: Loop-side calls that would race a running stream.
_RACING_METHODS = FLUSHING_METHODS | {"write"}


class SafeStreamMixin(_HandlerBase):
    """
    Makes a `~tornado.web.RequestHandler` safe to stream from a thread pool.

    List it before the handler base, and decorate the methods that produce the response
    with `.stream_on_executor`::

        class Download(SafeStreamMixin, RequestHandler):
            executor = ThreadPoolExecutor(8)

            @stream_on_executor
            def get(self, name: str) -> None:
                with open(path_for(name), "rb") as f:
                    while chunk := f.read(65536):
                        self.write(chunk)
                        self.flush()

    While such a method runs, its calls of the response methods (``write``, ``flush``,
    ``finish``, ``set_status``, ``set_header``, ``add_header``, ``clear_header``, ``clear``,
    ``set_cookie``, ``clear_cookie``, ``send_error``, ``redirect``) are carried out on the
    IOLoop thread, in order. Everywhere else they are Tornado's own.

    .. warning::

       In a producer thread, ``flush()`` and ``finish()`` return a
       `concurrent.futures.Future` (``.result()`` blocks until the bytes are written to
       the socket), not an `asyncio.Future`. Both are typed as Tornado's, for the loop,
       where they are awaited; worker code that uses the future calls
       `flush_from_worker`, typed as a `concurrent.futures.Future`.
    """

    # Loop-owned: the figures of the handler's last stream, once it ended.
    _safestream_stats: StreamStats | None = None
    # Loop-owned: the consumer of the stream this handler is running, if any.
    _safestream_consumer: Consumer | None = None
    # Loop-owned: the library's output path once it took the response's output over (see
    # _output), and whether Tornado's finish() is running (its flush carries the last chunk).
    _safestream_output: Output | None = None
    _safestream_finishing = False
    # Loop-owned: the request body's inbound channel (`.receive_on_executor`), once a chunk came.
    _safestream_inbound: Inbound[bytes] | None = None
    # Per class, set at its creation: its data_received is a `.receive_on_executor` method.
    _safestream_receives = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_mixin_first(cls, SafeStreamMixin, RequestHandler)
        receiver = inspect.getattr_static(cls, "data_received", None)
        cls._safestream_receives = bool(getattr(receiver, "_safestream_receiver", False))
        messages = inspect.getattr_static(cls, "on_message", None)
        if getattr(messages, "_safestream_message_receiver", False) and not issubclass(
            cls, SafeWebSocketMixin
        ):
            # (On Python 3.12+ the decorator's __set_name__ said so already.)
            raise TypeError(
                f"@receive_on_executor method {cls.__qualname__}.on_message() needs the "
                f"SafeWebSocketMixin: Tornado calls on_message of WebSocket handlers only; "
                f"declare class {cls.__name__}(SafeWebSocketMixin, WebSocketHandler)"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if self._safestream_receives and not getattr(type(self), "_stream_request_body", False):
            # Tornado's (private) flag, set by @stream_request_body after the class was
            # created: without it, Tornado reads the whole body into memory and never calls
            # data_received.
            cls = type(self)
            raise TypeError(
                f"{cls.__qualname__}.data_received() is a @receive_on_executor method, but "
                f"{cls.__qualname__} is not decorated with @tornado.web.stream_request_body, "
                "so Tornado would buffer the whole body and never call it; add "
                f"@stream_request_body above class {cls.__name__}"
            )
        super().__init__(*args, **kwargs)

    def on_receive_aborted(self, error: BaseException) -> None:
        """
        Called in the executor when a request body received with `.receive_on_executor` will
        not be complete: a ``data_received`` call raised (``error`` is its exception), or the
        client left (``error`` is a `~tornado.iostream.StreamClosedError`). It runs once,
        after the last ``data_received`` call returned, never beside one, and the verb method
        will not run: override it to close and delete what ``data_received`` started (a
        partial file). It is not called for a body that was received whole. Exceptions it
        raises are logged.

        .. versionadded:: 0.2
        """

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        channel = _producer_channel(self, "write")
        if channel is None:
            return super().write(chunk)
        if isinstance(chunk, bytes):
            channel.write(chunk if type(chunk) is bytes else bytes(chunk))
        elif isinstance(chunk, str):
            channel.write(chunk.encode("utf-8"))
        elif isinstance(chunk, dict):
            channel.call("write", (chunk,), {})  # sets Content-Type: on the loop, in order
        else:
            raise TypeError(
                f"{type(self).__qualname__}.write() only accepts bytes, str and dict objects, "
                f"not {type(chunk).__qualname__}"
            )

    def flush(self, include_footers: bool = False) -> Future[None]:
        """
        Tornado's `~tornado.web.RequestHandler.flush`; from the worker, carried out on the
        IOLoop.

        Typed as Tornado's, for the loop, where it is awaited. In the worker thread of a
        `.stream_on_executor` method it returns a `concurrent.futures.Future` instead (see
        the class's warning): there, call `flush_from_worker`, which is typed as such.
        """
        channel = _producer_channel(self, "flush")
        if channel is None:
            return self._safestream_flush(include_footers)
        return cast("Future[None]", self._safestream_worker_flush(channel, include_footers))

    def flush_from_worker(self, include_footers: bool = False) -> concurrent.futures.Future[None]:
        """
        ``flush()``, for the worker thread of a `.stream_on_executor` method, typed as what it
        returns there: a `concurrent.futures.Future` done once the bytes written so far are
        handed to the socket (``.result(timeout=5)`` waits for it), failed with
        `~tornado.iostream.StreamClosedError` if the client went away first. Like
        ``flush()``, it blocks while the client is more than ``max_buffer_bytes`` behind.

        :raises RuntimeError: if called from any other thread (on the IOLoop, ``await
            self.flush()``).

        .. versionadded:: 0.2
        """
        channel = _producer_channel(self, "flush")
        if channel is None:
            raise RuntimeError(
                f"{type(self).__qualname__}.flush_from_worker() was called outside the worker "
                "thread of a @stream_on_executor method of this handler; there, call it from "
                "that method, and on the IOLoop use `await self.flush()`"
            )
        return self._safestream_worker_flush(channel, include_footers)

    def _safestream_worker_flush(
        self, channel: Channel, include_footers: bool
    ) -> concurrent.futures.Future[None]:
        if include_footers:
            return channel.call("flush", (include_footers,), {})  # type: ignore[no-any-return]
        return channel.flush()

    def _safestream_flush(self, include_footers: bool = False) -> Future[None]:
        """Tornado's flush(), or the library's output path once it took the output over."""
        output = self._safestream_output
        if output is not None and threading.get_ident() == output.loop_thread:
            return output.flush(self, last=include_footers and self._safestream_finishing)
        # Tornado's, also from a wrong thread: a race, as it is without the library, which
        # assertion mode reports as such (at RequestHandler.flush()).
        return super().flush(include_footers)

    def _safestream_finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        """Tornado's finish(), letting `_safestream_flush` know that it is the last flush."""
        self._safestream_finishing = True
        try:
            return super().finish(chunk)
        finally:
            self._safestream_finishing = False

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        """
        Tornado's `~tornado.web.RequestHandler.finish`; from the worker, carried out on the
        IOLoop.

        Typed as Tornado's, for the loop. In the worker thread of a `.stream_on_executor`
        method it returns a `concurrent.futures.Future` (see the class's warning).
        """
        channel = _producer_channel(self, "finish")
        if channel is None:
            return self._safestream_finish(chunk)
        return channel.call("finish", () if chunk is None else (chunk,), {})  # type: ignore[no-any-return]

    @property
    def stream_stats(self) -> StreamStats | None:
        """
        The figures of the stream this handler runs or ran (`.StreamStats`), ``None`` before
        a `.stream_on_executor` method was called: readable in ``on_finish`` and in the
        application's ``log_function``. Read it on the IOLoop thread.

        .. versionadded:: 0.2
        """
        consumer = self._safestream_consumer
        if consumer is not None:
            return consumer.stats()
        return self._safestream_stats

    def on_connection_close(self) -> None:
        consumer = self._safestream_consumer
        if consumer is not None:
            consumer.client_gone()
        inbound = self._safestream_inbound
        if inbound is not None:
            inbound.abort(StreamClosedError())
        super().on_connection_close()


def _forwarding(name: str) -> Callable[..., Any]:
    def method(self: SafeStreamMixin, *args: Any, **kwargs: Any) -> Any:
        channel = _producer_channel(self, name)
        if channel is None:
            return getattr(super(SafeStreamMixin, self), name)(*args, **kwargs)
        return channel.call(name, args, kwargs)

    original: Callable[..., Any] | None = getattr(RequestHandler, name, None)
    method.__name__ = name
    method.__qualname__ = f"SafeStreamMixin.{name}"
    method.__doc__ = original.__doc__ if original is not None else None
    return method


# The other response methods keep Tornado's signatures for type checkers (inherited above)
# and forward at run time.
for _name in RESPONSE_METHODS:
    if _name not in SafeStreamMixin.__dict__:
        setattr(SafeStreamMixin, _name, _forwarding(_name))
del _name


class DecoratedMethod(Generic[_O]):
    """
    A handler method as a decorator made it: a descriptor, so it can check its class.

    A subclass names its decorator (`DECORATOR`) and the mixin the handler class needs
    (`MIXIN`), says what is wrong with a class that lacks it (`_misplaced`), and carries out
    the call (``__call__``, with the handler first). It wraps the method as
    `functools.wraps` does, and is bound to a handler as a method is.
    """

    #: The decorator's name, as the repr shows it: ``"stream_on_executor"``.
    DECORATOR: ClassVar[str]
    #: The mixin a `~tornado.web.RequestHandler` class needs to have the method.
    MIXIN: ClassVar[type]
    #: The call, with the handler first: each subclass defines it.
    __call__: Callable[..., Any]

    def __init__(self, method: Callable[..., Any], options: _O) -> None:
        functools.update_wrapper(self, method)
        self._method = method
        self._options = options

    def __repr__(self) -> str:
        return f"<@{self.DECORATOR} {self._kind()} {self._method.__qualname__}>"

    def _kind(self) -> str:
        """What the repr calls the method."""
        return "method"

    def _misplaced(self, owner: type, name: str) -> str:
        """The error message for the method ``name`` of ``owner``, a class without `MIXIN`."""
        raise NotImplementedError

    def __set_name__(self, owner: type, name: str) -> None:
        # Python < 3.12 would wrap the TypeError in a RuntimeError: there, it is checked
        # later (each subclass's _misplaced says where).
        if (
            sys.version_info >= (3, 12)
            and issubclass(owner, RequestHandler)
            and not issubclass(owner, self.MIXIN)
        ):
            raise TypeError(self._misplaced(owner, name))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self, instance)
