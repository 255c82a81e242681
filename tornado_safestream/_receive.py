"""
`receive_on_executor`: a request body consumed in a thread pool, in order, with backpressure.

How it fits Tornado (the same on 6.3 and 6.6):

- ``HTTP1Connection._read_fixed_body`` / ``_read_chunked_body`` call the handler's
  ``data_received(chunk)`` for each chunk read, and ``await`` what it returns when that is not
  ``None`` (6.6 in ``_deliver_body``, 6.3 inline), before reading the socket again. The
  decorated ``data_received`` queues the chunk for the worker (`._inbound.Inbound`) and
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
import types
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast, overload

from tornado.concurrent import future_set_result_unless_cancelled
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from ._executors import submit as submit_to
from ._inbound import Inbound
from ._mixin import SafeStreamMixin
from ._stream import _find_executor, _log_task_error, _refuse_inherited_pool

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from typing_extensions import TypeAlias

_H = TypeVar("_H", bound=SafeStreamMixin)

if TYPE_CHECKING:
    #: The decorated method: ``data_received(self, chunk: bytes) -> None``, in the executor.
    _Receiver: TypeAlias = Callable[[_H, bytes], None]
    #: What Tornado calls (and awaits, when it is not ``None``).
    _Received: TypeAlias = Callable[[_H, bytes], "Awaitable[None] | None"]

__all__ = ("DEFAULT_RECEIVE_BUFFER_BYTES", "receive_on_executor")

#: Bytes of a request body that may wait for the worker before Tornado stops reading.
DEFAULT_RECEIVE_BUFFER_BYTES = 1024 * 1024

#: The methods the decorator knows how to run, and what each needs.
_REQUEST_BODY = "data_received"
_WEBSOCKET = "on_message"


class _Options:
    __slots__ = ("executor", "max_buffer_bytes")

    def __init__(self, executor: str, max_buffer_bytes: int) -> None:
        self.executor = executor
        self.max_buffer_bytes = max_buffer_bytes


class _ReceiveOnExecutor:
    """The decorator with its options bound: ``receive_on_executor(max_buffer_bytes=...)``."""

    __slots__ = ("_options",)

    def __init__(self, options: _Options) -> None:
        self._options = options

    def __repr__(self) -> str:
        return (
            f"receive_on_executor(executor={self._options.executor!r}, "
            f"max_buffer_bytes={self._options.max_buffer_bytes})"
        )

    def __call__(self, method: _Receiver[_H], /) -> _Received[_H]:
        if not inspect.isfunction(method):
            raise TypeError(
                "@receive_on_executor decorates the data_received method of a "
                f"@stream_request_body SafeStreamMixin handler class, not {method!r}"
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
                "plain def, called once per chunk"
            )
        if method.__name__ == _WEBSOCKET:
            # The WebSocket face (SafeWebSocketMixin) is not part of this version.
            raise TypeError(
                f"@receive_on_executor on {where}(): on_message needs SafeWebSocketMixin "
                "(class Handler(SafeWebSocketMixin, WebSocketHandler)), which this version of "
                "tornado_safestream does not provide; until then, decorate data_received of "
                "a @stream_request_body SafeStreamMixin handler only"
            )
        if method.__name__ != _REQUEST_BODY:
            raise TypeError(
                f"@receive_on_executor on {where}(): it decorates data_received (of a "
                "@stream_request_body SafeStreamMixin handler), which Tornado calls with each "
                f"chunk of the request body; {method.__name__}() is not called that way. Name "
                "the method data_received, or call your helper from it"
            )
        return cast("_Received[_H]", _ReceiveMethod(method, self._options))


class _ReceiveMethod:
    """The decorated ``data_received``: a descriptor, so it can check its class."""

    #: Tells `.SafeStreamMixin` that the class receives its body in the executor.
    _safestream_receiver = True

    def __init__(self, method: Callable[..., Any], options: _Options) -> None:
        functools.update_wrapper(self, method)
        self._method = method
        self._options = options

    def __repr__(self) -> str:
        return f"<@receive_on_executor method {self._method.__qualname__}>"

    def __set_name__(self, owner: type, name: str) -> None:
        # Python < 3.12 would wrap the TypeError in a RuntimeError: there, the mixin's
        # __init_subclass__ and the first request check it instead.
        if (
            sys.version_info >= (3, 12)
            and issubclass(owner, RequestHandler)
            and not issubclass(owner, SafeStreamMixin)
        ):
            raise TypeError(_no_mixin(owner, name))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self, instance)

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
    executor = _find_executor(handler, options.executor, where)
    loop = asyncio.get_running_loop()
    if executor is not None:
        _refuse_inherited_pool(executor, f"self.{options.executor}", where)
    else:  # asyncio's (private) attribute; an executor is only created there once used
        _refuse_inherited_pool(
            getattr(loop, "_default_executor", None), "the IOLoop's default executor", where
        )

    def submit(task: Callable[[], None]) -> None:
        submit_to(loop, executor, task, _log_task_error)  # not run_in_executor: see _executors

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


@overload
def receive_on_executor(method: _Receiver[_H], /) -> _Received[_H]: ...


@overload
def receive_on_executor(
    *, executor: str = ..., max_buffer_bytes: int = ...
) -> _ReceiveOnExecutor: ...


def receive_on_executor(
    method: _Receiver[_H] | None = None,
    /,
    *,
    executor: str = "executor",
    max_buffer_bytes: int = DEFAULT_RECEIVE_BUFFER_BYTES,
) -> _Received[_H] | _ReceiveOnExecutor:
    """
    Run each ``data_received`` call of a request body in an executor, in order, with
    backpressure to the client.

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

    :param executor: name of the handler attribute that holds the
        `concurrent.futures.Executor`; without such an attribute, or if it is ``None``, the
        IOLoop's default executor.
    :param max_buffer_bytes: bytes of the body waiting for the worker, at most, before
        Tornado stops reading (plus one chunk Tornado read, 64 KiB by default).
    :raises TypeError: if the options are of the wrong type, or the decorated object is not
        a plain function named ``data_received`` (at decoration); if the class is not a
        `.SafeStreamMixin` handler (at class creation on Python 3.12+, else at the first
        request), or not `~tornado.web.stream_request_body` (at the first request, logged).
    :raises ValueError: if ``max_buffer_bytes`` is not positive.

    .. versionadded:: 0.2
    """
    if method is not None and not callable(method):
        raise TypeError(
            f"@receive_on_executor decorates data_received, not {method!r}; options are "
            "keyword-only: @receive_on_executor(executor=..., max_buffer_bytes=...)"
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
    decorator = _ReceiveOnExecutor(_Options(executor, max_buffer_bytes))
    return decorator if method is None else decorator(method)
