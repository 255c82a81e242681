"""`stream_on_executor`: run a handler method in a thread pool and stream what it produces."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, cast, overload

from ._mixin import DecoratedMethod, SafeStreamMixin
from ._stream import Options, run_stream

_H = TypeVar("_H", bound=SafeStreamMixin)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator

    from typing_extensions import Concatenate, ParamSpec, TypeAlias

    from .._core._chunks import Chunk

    _P = ParamSpec("_P")
    #: A push-style body (returns None) or a generator-style one (yields chunks).
    _Body: TypeAlias = Callable[Concatenate[_H, _P], Optional[Iterator[Chunk]]]
    #: What Tornado (or an ``async def`` handler method) awaits.
    _Streamer: TypeAlias = Callable[Concatenate[_H, _P], Awaitable[None]]

__all__ = ("DEFAULT_MAX_BUFFER_BYTES", "stream_on_executor")

#: Bytes a stream may have produced but not yet handed to the socket.
DEFAULT_MAX_BUFFER_BYTES = 1024 * 1024


class _StreamOnExecutor:
    """The decorator with its options bound: ``stream_on_executor(max_buffer_bytes=...)``."""

    __slots__ = ("_options",)

    def __init__(self, options: Options) -> None:
        self._options = options

    def __repr__(self) -> str:
        options = self._options
        return (
            f"stream_on_executor(executor={options.executor!r}, "
            f"max_buffer_bytes={options.max_buffer_bytes}, "
            f"stall_timeout={options.stall_timeout}, keep_thread={options.keep_thread})"
        )

    def __call__(self, method: _Body[_H, _P], /) -> _Streamer[_H, _P]:
        if not inspect.isfunction(method):
            raise TypeError(
                f"@stream_on_executor decorates a handler method (a def or generator def in a "
                f"SafeStreamMixin handler class), not {method!r}"
            )
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            raise TypeError(
                f"@stream_on_executor on {method.__qualname__}(): the method is async, so it "
                "runs on the IOLoop already; make it a plain def (push style) or a generator "
                "def (generator style) to run it in the executor"
            )
        return cast("_Streamer[_H, _P]", _StreamMethod(method, self._options))


class _StreamMethod(DecoratedMethod[Options]):
    """The decorated method: a descriptor, so it can check the class it is defined in."""

    DECORATOR = "stream_on_executor"
    MIXIN = SafeStreamMixin

    def __init__(self, method: Callable[..., Any], options: Options) -> None:
        super().__init__(method, options)
        self._is_generator = inspect.isgeneratorfunction(method)

    def _kind(self) -> str:
        return f"{'generator' if self._is_generator else 'push'}-style method"

    def _misplaced(self, owner: type, name: str) -> str:
        # Before 3.12, the same check fails the first request (500, and the TypeError logged).
        return (
            f"@stream_on_executor method {owner.__qualname__}.{name}() needs the "
            f"SafeStreamMixin: declare class {owner.__name__}(SafeStreamMixin, "
            f"{', '.join(base.__name__ for base in owner.__bases__)})"
        )

    def __call__(self, handler: object, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, None]:
        return run_stream(handler, self._method, self._is_generator, self._options, args, kwargs)


@overload
def stream_on_executor(method: _Body[_H, _P], /) -> _Streamer[_H, _P]: ...


@overload
def stream_on_executor(
    *,
    executor: str = ...,
    max_buffer_bytes: int = ...,
    stall_timeout: float | None = ...,
    keep_thread: bool = ...,
) -> _StreamOnExecutor: ...


def stream_on_executor(
    method: _Body[_H, _P] | None = None,
    /,
    *,
    executor: str = "executor",
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    stall_timeout: float | None = None,
    keep_thread: bool = False,
) -> _Streamer[_H, _P] | _StreamOnExecutor:
    """
    Run a `.SafeStreamMixin` handler method in an executor and stream what it produces.

    Use it bare (``@stream_on_executor``) or with options
    (``@stream_on_executor(max_buffer_bytes=256 * 1024)``). The decorated method becomes
    awaitable: Tornado awaits it as ``get``/``post``/..., or an ``async def`` method
    awaits it. When it returns, the response is finished unless it already was.

    *Push style*: a plain method that calls ``self.write()``/``self.flush()``. Those calls,
    and the other response methods, are carried out on the IOLoop thread, in order.
    ``flush()`` returns a `concurrent.futures.Future` done once the bytes are written to
    the socket. ``write()`` and ``flush()`` block while more than ``max_buffer_bytes`` are
    pending, and pending bytes are flushed on their own once there are that many.

    *Generator style*: a generator method that yields ``bytes``, ``bytearray``,
    ``memoryview`` or ``str`` (sent as UTF-8). Each chunk is sent as it is yielded. The
    generator is pulled in the executor a read-ahead at a time (at most
    ``max_buffer_bytes``, less for a slow client), and no thread is held while the client
    catches up: the generator may be resumed on another executor thread than the one it
    parked on (never on two at once), unless ``keep_thread`` is set.

    If the client goes away, the producer's next ``write``/``flush`` raises
    `~tornado.iostream.StreamClosedError`, or the generator is closed (in the executor).

    :param executor: name of the handler attribute that holds the
        `concurrent.futures.Executor` (the `~tornado.concurrent.run_on_executor`
        convention); without such an attribute, or if it is ``None``, the IOLoop's
        default executor.
    :param max_buffer_bytes: bytes produced but not yet handed to the socket, at most
        (plus one chunk).
    :param stall_timeout: seconds the client may take no bytes at all before the stream is
        aborted (the producer then sees `~tornado.iostream.StreamClosedError`); ``None``,
        the default, waits for ever.
    :param keep_thread: generator style: run the generator on one executor thread from its
        first ``next()`` to its ``close()`` (its ``finally`` included), for thread-affine
        resources (a `sqlite3` connection, Django's ORM, anything in a `threading.local`).
        Such a stream holds its thread while its client is slow, as push style does.
    :raises TypeError: if the options are of the wrong type, or the decorated object is
        not a plain or generator function.
    :raises ValueError: if ``max_buffer_bytes`` or ``stall_timeout`` is not positive.

    .. versionchanged:: 0.2
       Added ``keep_thread``. A generator's read-ahead now adapts to its client, with
       ``max_buffer_bytes`` as its ceiling. Previously, every generator stream read ahead
       ``max_buffer_bytes``.
    """
    if method is not None and not callable(method):
        raise TypeError(
            f"@stream_on_executor decorates a handler method, not {method!r}; options are "
            "keyword-only: @stream_on_executor(executor=..., max_buffer_bytes=...)"
        )
    decorator = _StreamOnExecutor(_options(executor, max_buffer_bytes, stall_timeout, keep_thread))
    return decorator if method is None else decorator(method)


def _options(
    executor: object, max_buffer_bytes: object, stall_timeout: object, keep_thread: object
) -> Options:
    if not isinstance(executor, str) or not executor.isidentifier():
        raise TypeError(
            "stream_on_executor(executor=...) takes the name of the handler attribute that "
            f"holds the executor, such as 'executor'; got {executor!r}"
        )
    if not isinstance(max_buffer_bytes, int) or isinstance(max_buffer_bytes, bool):
        raise TypeError(
            f"stream_on_executor(max_buffer_bytes=...) takes an int, not {max_buffer_bytes!r}"
        )
    if max_buffer_bytes <= 0:
        raise ValueError(
            f"stream_on_executor(max_buffer_bytes=...) must be positive, not {max_buffer_bytes}"
        )
    if stall_timeout is not None:
        if not isinstance(stall_timeout, numbers.Real) or isinstance(stall_timeout, bool):
            raise TypeError(
                "stream_on_executor(stall_timeout=...) takes seconds (a number) or None, "
                f"not {stall_timeout!r}"
            )
        stall_timeout = float(stall_timeout)
        if not stall_timeout > 0:
            raise ValueError(
                f"stream_on_executor(stall_timeout=...) must be positive, not {stall_timeout}"
            )
    if not isinstance(keep_thread, bool):
        raise TypeError(
            f"stream_on_executor(keep_thread=...) takes True or False, not {keep_thread!r}"
        )
    return Options(executor, max_buffer_bytes, stall_timeout, keep_thread)
