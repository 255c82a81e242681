"""
`receive_on_executor`: a request body consumed in a thread pool, in order, with backpressure.

How it fits Tornado (the same on 6.3 and 6.6):

- ``HTTP1Connection._read_fixed_body`` / ``_read_chunked_body`` call the handler's
  ``data_received(chunk)`` for each chunk read, and ``await`` what it returns when that is not
  ``None`` (6.6 in ``_deliver_body``, 6.3 inline), before reading the socket again. The
  decorated ``data_received`` queues the chunk for the worker (`.._core._inbound.Inbound`) and
  returns ``None`` while at most ``max_buffer_bytes`` are queued, so Tornado reads on; beyond
  that it returns a future done once the worker consumed half of it: Tornado stops reading,
  and TCP slows the client. (Both versions call ``data_received`` only while the response is
  not finished: after an error response, the rest of the body is not handed to it.)
- ``RequestHandler._execute`` awaits ``self.request._body_future`` and then calls the verb
  method; Tornado resolves that future (``_HandlerDelegate.finish``) as soon as it read the
  whole body, which, with chunks still queued for the worker, would be too early. So at the
  first chunk the request's ``_body_future`` (a private attribute, the one this module relies
  on) is replaced by a future of ours: Tornado resolves or fails ours, and the one
  ``_execute`` awaits is resolved only once the worker consumed every chunk. A worker's
  exception is set on it, so ``_execute`` answers through Tornado's own error path
  (``log_exception``, ``write_error``; an `~tornado.web.HTTPError` keeps its status), and a
  client that leaves fails it with `~tornado.iostream.StreamClosedError`, for which
  ``_execute`` returns without calling the verb method.

WebSocket messages (``on_message`` of a `.SafeWebSocketMixin` handler), the same on 6.3
and 6.6:

- ``WebSocketProtocol13._receive_frame`` hands each whole message to ``_handle_message``,
  which calls the handler's ``on_message`` (through ``_run_callback``) and returns what it
  returned when that is not ``None``; ``_receive_frame`` awaits it before the frame loop
  reads the next frame (pings, pongs and close frames included). The decorated
  ``on_message`` queues the message for the worker and returns ``None`` while the queue is
  within its budget (bytes and messages), so Tornado reads on and answers pings, and
  notices pongs; beyond it, a future done once the worker handled half of it.
- The future never fails (Tornado would log it and drop the connection without a close
  frame): a call's exception is logged here, once (``handler.log_exception``, as Tornado
  logs an ``on_message`` exception), and the connection is closed with code 1011, after
  the replies the calls queued before it. The connection's close (``on_connection_close``)
  drops what is queued.

.. warning::

   Everything here runs on the IOLoop thread, except the decorated method and the abort
   hook (``on_receive_aborted``), which run in the executor.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
from typing import TYPE_CHECKING, Any, Callable, TypeVar, Union, cast, overload

from tornado.concurrent import future_set_result_unless_cancelled
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from .._core._executors import submit as submit_to
from .._core._inbound import Inbound, Submit
from .._websocket._handler import SafeWebSocketMixin
from ._mixin import DecoratedMethod, SafeStreamMixin
from ._stream import _find_executor, _log_task_error, _refuse_inherited_pool

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from typing_extensions import TypeAlias

_H = TypeVar("_H", bound=Union[SafeStreamMixin, SafeWebSocketMixin])
_M = TypeVar("_M")

if TYPE_CHECKING:
    #: The decorated method, in the executor: ``data_received(self, chunk: bytes) -> None``,
    #: or ``on_message(self, message: str | bytes) -> None``.
    _Receiver: TypeAlias = Callable[[_H, _M], None]
    #: What Tornado calls (and awaits, when it is not ``None``).
    _Received: TypeAlias = Callable[[_H, _M], "Awaitable[None] | None"]

__all__ = (
    "DEFAULT_RECEIVE_BUFFER_BYTES",
    "DEFAULT_RECEIVE_MESSAGES",
    "receive_on_executor",
)

#: Bytes of a request body (or of WebSocket messages) that may wait for the worker before
#: Tornado stops reading.
DEFAULT_RECEIVE_BUFFER_BYTES = 1024 * 1024

#: WebSocket messages that may wait for the worker (the one it handles included) before
#: Tornado stops reading.
DEFAULT_RECEIVE_MESSAGES = 256

#: The close code for a connection whose ``on_message`` raised (RFC 6455 7.4.1).
INTERNAL_ERROR = 1011

#: The methods the decorator knows how to run, and what each needs.
_REQUEST_BODY = "data_received"
_WEBSOCKET = "on_message"


class _Options:
    __slots__ = ("executor", "max_buffer_bytes", "max_queued_messages")

    def __init__(
        self, executor: str, max_buffer_bytes: int, max_queued_messages: int | None
    ) -> None:
        self.executor = executor
        self.max_buffer_bytes = max_buffer_bytes
        self.max_queued_messages = max_queued_messages  # None: not given


class _ReceiveOnExecutor:
    """The decorator with its options bound: ``receive_on_executor(max_buffer_bytes=...)``."""

    __slots__ = ("_options",)

    def __init__(self, options: _Options) -> None:
        self._options = options

    def __repr__(self) -> str:
        options = self._options
        messages = (
            ""
            if options.max_queued_messages is None
            else f", max_queued_messages={options.max_queued_messages}"
        )
        return (
            f"receive_on_executor(executor={options.executor!r}, "
            f"max_buffer_bytes={options.max_buffer_bytes}{messages})"
        )

    def __call__(self, method: _Receiver[_H, _M], /) -> _Received[_H, _M]:
        if not inspect.isfunction(method):
            raise TypeError(
                "@receive_on_executor decorates the data_received method of a "
                "@stream_request_body SafeStreamMixin handler class, or the on_message method "
                f"of a SafeWebSocketMixin handler class, not {method!r}"
            )
        where = method.__qualname__
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            raise TypeError(
                f"@receive_on_executor on {where}(): the method is async, so it runs on the "
                "IOLoop already; make it a plain def to run each call in the executor"
            )
        if inspect.isgeneratorfunction(method):
            raise TypeError(
                f"@receive_on_executor on {where}(): the method is a generator; make it a "
                "plain def, called once per chunk or message"
            )
        if method.__name__ == _WEBSOCKET:
            return cast("_Received[_H, _M]", _MessageMethod(method, self._options))
        if method.__name__ != _REQUEST_BODY:
            raise TypeError(
                f"@receive_on_executor on {where}(): it decorates data_received (of a "
                "@stream_request_body SafeStreamMixin handler), which Tornado calls with each "
                "chunk of the request body, or on_message (of a SafeWebSocketMixin handler), "
                f"which it calls with each WebSocket message; {method.__name__}() is not "
                "called that way. Name the method data_received or on_message, or call your "
                "helper from it"
            )
        if self._options.max_queued_messages is not None:
            raise TypeError(
                f"@receive_on_executor on {where}(): max_queued_messages bounds the WebSocket "
                "messages queued for on_message; a request body is bounded in bytes only "
                "(max_buffer_bytes): leave max_queued_messages out"
            )
        return cast("_Received[_H, _M]", _ReceiveMethod(method, self._options))


class _ReceiveMethod(DecoratedMethod[_Options]):
    """The decorated ``data_received``: a descriptor, so it can check its class."""

    DECORATOR = "receive_on_executor"
    MIXIN = SafeStreamMixin

    #: Tells `.SafeStreamMixin` that the class receives its body in the executor.
    _safestream_receiver = True

    def _misplaced(self, owner: type, name: str) -> str:
        # Before 3.12, SafeStreamMixin's __init_subclass__ and the first request check it.
        return _no_mixin(owner, name)

    def __call__(self, handler: object, chunk: bytes, /) -> asyncio.Future[None] | None:
        if not isinstance(handler, SafeStreamMixin) or not isinstance(handler, RequestHandler):
            raise TypeError(_no_mixin(type(handler), self._method.__name__))
        return _receive(handler, self._method, self._options, chunk)


def _no_mixin(owner: type, name: str) -> str:
    bases = ", ".join(base.__name__ for base in owner.__bases__)
    return (
        f"@receive_on_executor method {owner.__qualname__}.{name}() needs the SafeStreamMixin: "
        f"declare @stream_request_body class {owner.__name__}(SafeStreamMixin, {bases})"
    )


def _receive(
    handler: SafeStreamMixin,
    method: Callable[..., Any],
    options: _Options,
    chunk: bytes,
) -> asyncio.Future[None] | None:
    """Queue one chunk for the worker (on the IOLoop)."""
    inbound = handler._safestream_inbound
    if inbound is None:
        if handler._finished:  # answered already (Tornado stops calling data_received then)
            return None
        inbound = handler._safestream_inbound = _start(handler, method, options)
    return inbound.put(chunk if type(chunk) is bytes else bytes(chunk), len(chunk))


def _start(
    handler: SafeStreamMixin, method: Callable[..., Any], options: _Options
) -> Inbound[bytes]:
    """Set up the request's inbound channel, at its first chunk."""
    where = method.__qualname__
    request_handler = cast(RequestHandler, handler)
    loop = asyncio.get_running_loop()
    submit = _submitter(handler, options, where, loop)

    request = request_handler.request
    # Tornado's private HTTPServerRequest._body_future (6.3 and 6.6): what _execute awaits
    # before the verb method (it awaits it already: data_received is only called once
    # prepare() is done). Tornado gets ours instead; its own is resolved once the worker is
    # done with every chunk.
    body_done: asyncio.Future[None] = request._body_future
    tornado_side: asyncio.Future[None] = loop.create_future()
    request._body_future = tornado_side

    def on_drained() -> None:
        future_set_result_unless_cancelled(body_done, None)

    def on_failed(error: BaseException) -> None:
        if not body_done.done():
            body_done.set_exception(error)  # _execute: Tornado's error path

    def aborted(reason: BaseException) -> None:
        handler.on_receive_aborted(reason)

    inbound: Inbound[bytes] = Inbound(
        loop,
        where,
        options.max_buffer_bytes,
        consume=functools.partial(method, handler),
        aborted=aborted,
        on_drained=on_drained,
        on_failed=on_failed,
        submit=submit,
        context=contextvars.copy_context(),
    )

    def body_read(future: asyncio.Future[None]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is None and not future.cancelled():
            inbound.body_complete()
            return
        # The client left (RequestHandler.on_connection_close fails it): no verb method.
        inbound.abort(error if error is not None else StreamClosedError())
        if not body_done.done():
            body_done.set_exception(StreamClosedError())
            body_done.exception()  # retrieved: _execute may be gone already

    tornado_side.add_done_callback(body_read)
    return inbound


def _submitter(
    handler: object, options: _Options, where: str, loop: asyncio.AbstractEventLoop
) -> Submit:
    """How the stream's tasks reach its executor (on the loop, at the stream's start)."""
    executor = _find_executor(handler, options.executor, where)
    if executor is not None:
        _refuse_inherited_pool(executor, f"self.{options.executor}", where)
    else:  # asyncio's (private) attribute; an executor is only created there once used
        _refuse_inherited_pool(
            getattr(loop, "_default_executor", None), "the IOLoop's default executor", where
        )

    def submit(task: Callable[[], None]) -> None:
        submit_to(loop, executor, task, _log_task_error)  # not run_in_executor: see _executors

    return submit


# ----------------------------------------------------------------------- WebSocket messages


class _MessageMethod(DecoratedMethod[_Options]):
    """The decorated ``on_message``: a descriptor, so it can check its class."""

    DECORATOR = "receive_on_executor"
    MIXIN = SafeWebSocketMixin

    #: Tells the mixins that the class receives its messages in the executor.
    _safestream_message_receiver = True

    def __init__(self, method: Callable[..., Any], options: _Options) -> None:
        super().__init__(method, options)
        self._max_messages = (
            DEFAULT_RECEIVE_MESSAGES
            if options.max_queued_messages is None
            else options.max_queued_messages
        )

    def _misplaced(self, owner: type, name: str) -> str:
        # Before 3.12, SafeStreamMixin's __init_subclass__ or the first message checks it.
        return _no_websocket_mixin(owner, name)

    def __call__(self, handler: object, message: str | bytes, /) -> asyncio.Future[None] | None:
        # On the loop thread: Tornado's frame loop, once per whole message.
        if not isinstance(handler, SafeWebSocketMixin) or not isinstance(handler, WebSocketHandler):
            raise TypeError(_no_websocket_mixin(type(handler), self._method.__name__))
        inbound = handler._safestream_inbound
        if inbound is None:
            if handler._safestream_receive_closed:
                return None  # closed already: no more calls
            inbound = handler._safestream_inbound = self._start(handler)
        # What the message holds in memory (its bytes or characters, and the object's
        # header): an empty message is not free, and bytes and str count alike.
        return inbound.put(message, sys.getsizeof(message))

    def _start(self, handler: SafeWebSocketMixin) -> Inbound[str | bytes]:
        """Set up the connection's inbound channel, at its first message."""
        method, options = self._method, self._options
        where = method.__qualname__
        loop = asyncio.get_running_loop()
        submit = _submitter(handler, options, where, loop)
        websocket = cast(WebSocketHandler, handler)

        def on_failed(error: BaseException) -> None:
            # On the loop thread, once: the call that raised was the last one.
            protocol = websocket.ws_connection
            closing = protocol is None or protocol.is_closing()
            if closing and isinstance(error, WebSocketClosedError):
                return  # a reply to a connection that is closing: no error of the handler's
            websocket.log_exception(type(error), error, error.__traceback__)
            if not closing:  # after the replies the calls queued before it
                handler._safestream_close_in_order(INTERNAL_ERROR, "internal error")

        def on_drained() -> None:  # never called: a connection's messages have no end
            pass

        return Inbound(
            loop,
            where,
            options.max_buffer_bytes,
            consume=functools.partial(method, handler),
            aborted=_ignore,
            on_drained=on_drained,
            on_failed=on_failed,
            submit=submit,
            context=contextvars.copy_context(),
            max_items=self._max_messages,
        )


def _ignore(reason: BaseException) -> None:
    # A WebSocket's calls have no abort hook: on_close is the place to clean up.
    pass


def _no_websocket_mixin(owner: type, name: str) -> str:
    if issubclass(owner, WebSocketHandler):
        bases = ", ".join(base.__name__ for base in owner.__bases__)
    else:  # Tornado calls on_message of WebSocket handlers only
        bases = "WebSocketHandler"
    return (
        f"@receive_on_executor method {owner.__qualname__}.{name}() needs the "
        f"SafeWebSocketMixin: declare class {owner.__name__}(SafeWebSocketMixin, {bases})"
    )


@overload
def receive_on_executor(method: _Receiver[_H, _M], /) -> _Received[_H, _M]: ...


@overload
def receive_on_executor(
    *, executor: str = ..., max_buffer_bytes: int = ..., max_queued_messages: int | None = ...
) -> _ReceiveOnExecutor: ...


def receive_on_executor(
    method: _Receiver[_H, _M] | None = None,
    /,
    *,
    executor: str = "executor",
    max_buffer_bytes: int = DEFAULT_RECEIVE_BUFFER_BYTES,
    max_queued_messages: int | None = None,
) -> _Received[_H, _M] | _ReceiveOnExecutor:
    """
    Run each ``data_received`` call of a request body, or each ``on_message`` call of a
    WebSocket connection, in an executor, in order, with backpressure to the client.

    Decorate ``data_received`` of a `~tornado.web.stream_request_body`
    `.SafeStreamMixin` handler, bare (``@receive_on_executor``) or with options
    (``@receive_on_executor(max_buffer_bytes=4 * 1024 * 1024)``)::

        @stream_request_body
        class Upload(SafeStreamMixin, RequestHandler):
            executor = ThreadPoolExecutor(4)

            @receive_on_executor
            def data_received(self, chunk: bytes) -> None:
                if self.file is None:
                    self.file = open(self.partial_path, "wb")  # opened off the loop too
                self.file.write(chunk)

            def on_receive_aborted(self, error: BaseException) -> None:
                ...  # in the executor: close and delete the partial file

            @stream_on_executor
            def put(self) -> None:
                ...  # in the executor, after every data_received call returned

    Each call runs in the executor, one at a time per request, in the order the chunks
    arrived. Tornado reads on while at most ``max_buffer_bytes`` wait for the worker, and
    stops reading the socket beyond that until half of it was consumed; the bytes waiting
    count under the process-wide memory cap (`tornado_safestream.memory`). The verb method
    (``post``, ``put``, ...: a plain or ``async def``, or a `.stream_on_executor` method)
    runs only after every call returned.

    An exception in a call answers the request through Tornado's error path at once
    (``write_error``; an `~tornado.web.HTTPError`'s status, anything else 500, logged):
    no further call runs, the rest of the body is not read (the connection is closed after
    the error response) and the verb method does not run. A client that leaves: what is
    queued is dropped, no further call runs, and the verb method does not run. In both
    cases the handler's ``on_receive_aborted(error)`` then runs in the executor, once, after
    the last call returned: the place to delete a partial file.

    The calls are not response code: the response methods (``write``, ``set_header``, ...)
    are not forwarded from them (assertion mode reports such a call as `.WrongThreadError`);
    raise `~tornado.web.HTTPError` to answer early, or respond from the verb method.

    On ``on_message`` of a `.SafeWebSocketMixin` handler::

        class Echo(SafeWebSocketMixin, WebSocketHandler):
            executor = ThreadPoolExecutor(4)

            @receive_on_executor(max_queued_messages=64)
            def on_message(self, message: str | bytes) -> None:
                self.write_message(slow_answer(message))  # from the worker: safe

    Each message's call runs in the executor, one at a time per connection, in the order
    the messages arrived. Tornado reads on, and so answers pings and sees pongs, while fewer
    than ``max_queued_messages`` messages and at most ``max_buffer_bytes`` (what the
    messages hold in memory, `sys.getsizeof`) wait for the worker, the one it handles
    included; beyond either, it stops reading the socket until half of both were handled.
    An exception in a call is logged once (``log_exception``, as Tornado logs an
    ``on_message`` exception) and closes the connection with code 1011; no further call
    runs. When the connection closes, the messages still queued are dropped; the call in
    progress, if any, runs to its end (``on_close`` may run meanwhile). ``write_message``,
    ``ping`` and ``close`` are the mixin's, safe from the worker.

    :param executor: name of the handler attribute that holds the
        `concurrent.futures.Executor`; without such an attribute, or if it is ``None``, the
        IOLoop's default executor.
    :param max_buffer_bytes: bytes of the body (or of the messages) waiting for the worker,
        at most, before Tornado stops reading (plus one chunk Tornado read, 64 KiB by
        default, or one message).
    :param max_queued_messages: ``on_message`` only: messages waiting for the worker, at
        most, before Tornado stops reading (default ``DEFAULT_RECEIVE_MESSAGES``, 256).
    :raises TypeError: if the options are of the wrong type, ``max_queued_messages`` is
        given for ``data_received``, or the decorated object is not a plain function named
        ``data_received`` or ``on_message`` (at decoration); if the class is not a
        `.SafeStreamMixin` handler (``data_received``) or a `.SafeWebSocketMixin` handler
        (``on_message``) (at class creation on Python 3.12+, else at the first request or
        message, logged), or not `~tornado.web.stream_request_body` (at the first request,
        logged).
    :raises ValueError: if ``max_buffer_bytes`` or ``max_queued_messages`` is not positive.

    .. versionadded:: 0.2
    """
    if method is not None and not callable(method):
        raise TypeError(
            f"@receive_on_executor decorates data_received or on_message, not {method!r}; "
            "options are keyword-only: @receive_on_executor(executor=..., max_buffer_bytes=...)"
        )
    if not isinstance(executor, str) or not executor.isidentifier():
        raise TypeError(
            "receive_on_executor(executor=...) takes the name of the handler attribute that "
            f"holds the executor, such as 'executor'; got {executor!r}"
        )
    if not isinstance(max_buffer_bytes, int) or isinstance(max_buffer_bytes, bool):
        raise TypeError(
            f"receive_on_executor(max_buffer_bytes=...) takes an int, not {max_buffer_bytes!r}"
        )
    if max_buffer_bytes <= 0:
        raise ValueError(
            f"receive_on_executor(max_buffer_bytes=...) must be positive, not {max_buffer_bytes}"
        )
    if max_queued_messages is not None:
        if not isinstance(max_queued_messages, int) or isinstance(max_queued_messages, bool):
            raise TypeError(
                "receive_on_executor(max_queued_messages=...) takes an int, not "
                f"{max_queued_messages!r}"
            )
        if max_queued_messages <= 0:
            raise ValueError(
                "receive_on_executor(max_queued_messages=...) must be positive, not "
                f"{max_queued_messages}"
            )
    decorator = _ReceiveOnExecutor(_Options(executor, max_buffer_bytes, max_queued_messages))
    return decorator if method is None else decorator(method)
