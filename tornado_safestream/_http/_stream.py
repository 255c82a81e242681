"""
One stream, from the call of a `@stream_on_executor` method to the finished response.

`run_stream` runs on the IOLoop: it picks the executor, wires a producer and the consumer
to a new channel, waits for the producer to end, and concludes the response:

- the producer returned: the response is finished, unless it already was;
- it raised before the headers were written: the error goes to Tornado's normal path
  (``log_exception``, ``write_error``, status 500 or the `~tornado.web.HTTPError`'s);
- it raised after: the error is logged once and the connection is closed with no proper end
  of body, so a client never takes a truncated body for a whole one;
- the client left: the producer's `~tornado.iostream.StreamClosedError` is not an error.

Before anything runs, it refuses a `~concurrent.futures.ThreadPoolExecutor` inherited
through a ``fork()`` (`tornado.process.fork_processes`) after its threads were started:
such a pool believes it has workers that do not exist in this process, and the request
would hang for ever. The `RuntimeError` goes to Tornado's error path (a 500, logged).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread
import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from tornado.iostream import StreamClosedError
from tornado.log import app_log
from tornado.web import HTTPError, RequestHandler

from .._core._channel import Channel
from .._core._consumer import Consumer, ignore_outcome
from .._core._executors import offload as offload_to
from .._core._executors import submit as submit_to
from .._core._lanes import Lane, lane_for
from .._core._producers import GeneratorProducer, PushProducer
from .._core._words import a_type
from ._mixin import SafeStreamMixin

__all__ = ("Options", "run_stream")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Options:
    """The decorator's options, validated."""

    executor: str
    max_buffer_bytes: int
    stall_timeout: float | None
    keep_thread: bool = False


async def run_stream(
    handler: object,
    method: Callable[..., Any],
    is_generator: bool,
    options: Options,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Stream the response of ``method(handler, *args, **kwargs)``. Runs on the IOLoop."""
    where = method.__qualname__
    if not isinstance(handler, SafeStreamMixin) or not isinstance(handler, RequestHandler):
        raise TypeError(
            f"@stream_on_executor method {where}() was called on a "
            f"{type(handler).__qualname__} object, which is not a SafeStreamMixin request "
            f"handler; declare class {type(handler).__name__}(SafeStreamMixin, RequestHandler)"
        )
    if handler._safestream_consumer is not None:
        raise RuntimeError(
            f"{where}(): this response is already being streamed by another "
            "@stream_on_executor method; await one before calling the next"
        )
    executor = _find_executor(handler, options.executor, where)
    loop = asyncio.get_running_loop()
    if executor is not None:
        _refuse_inherited_pool(executor, f"self.{options.executor}", where)
    else:  # asyncio's (private) attribute; an executor is only created there once used
        _refuse_inherited_pool(
            getattr(loop, "_default_executor", None), "the IOLoop's default executor", where
        )
    channel = Channel(loop, handler, where, options.max_buffer_bytes)
    context = contextvars.copy_context()

    def submit(task: Callable[[], None]) -> None:
        # Not through loop.run_in_executor(): see _executors.
        submit_to(loop, executor, task, _log_task_error)

    producer: PushProducer | GeneratorProducer
    if is_generator:
        producer = GeneratorProducer(
            channel,
            method(handler, *args, **kwargs),  # runs no code of the method yet
            context,
            submit,
            first_chunk_only=handler.request.method == "HEAD",
            lane=None if options.keep_thread else _lane(loop, executor),
            keep_thread=options.keep_thread,
        )
    else:
        producer = PushProducer(channel, lambda: method(handler, *args, **kwargs), context, submit)

    def offload(fn: Callable[[], _T]) -> asyncio.Future[_T]:
        return offload_to(loop, executor, fn)

    consumer = Consumer(
        channel,
        handler,
        super(SafeStreamMixin, handler),
        producer.resume,
        options.stall_timeout,
        offload=offload,
    )
    try:
        producer.start()
    except BaseException:
        channel.detach()
        raise
    handler._safestream_consumer = consumer
    try:
        error = await consumer.run()
    except BaseException as exc:  # cancelled: let the producer go
        handler._safestream_consumer = None
        handler._safestream_stats = consumer.stats()
        consumer.client_gone()
        if (
            handler._headers_written
            and not handler._finished
            # Closed, not cancelled: collected after its loop was closed under it. Tornado's
            # objects can do nothing any more (a close() raises "Event loop is closed").
            and not isinstance(exc, GeneratorExit)
            and not loop.is_closed()
        ):
            # Never passed off as whole: Tornado's answer to a cancelled handler,
            # send_error(500), would finish() it, ending a chunked body properly.
            _cut(handler)
        raise
    finally:
        handler._safestream_consumer = None
    handler._safestream_stats = consumer.stats()
    await _conclude(handler, consumer, error)


def _lane(loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor | None) -> Lane:
    """The lane of the stream's executor (for the IOLoop's default executor: one per loop)."""
    return lane_for(loop if executor is None else executor, executor)


def _log_task_error(future: concurrent.futures.Future[object]) -> None:
    # A producer task hands every error of the method to the loop; one that escapes is ours.
    if not future.cancelled() and future.exception() is not None:
        app_log.error("tornado_safestream: a producer task failed", exc_info=future.exception())


def _find_executor(handler: object, name: str, where: str) -> concurrent.futures.Executor | None:
    executor = getattr(handler, name, None)
    if executor is None or isinstance(executor, concurrent.futures.Executor):
        return executor
    raise TypeError(
        f"{where}(): self.{name} is {a_type(executor)}, not a "
        "concurrent.futures.Executor (or None, for the IOLoop's default executor)"
    )


def _refuse_inherited_pool(executor: object, what: str, where: str) -> None:
    """Raise if ``executor`` is a thread pool whose threads were started before a fork."""
    if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return
    # CPython's private state, read with defaults: after fork(), the child's copy of the
    # pool still lists the parent's worker threads (and counts them as idle), but
    # Thread.is_alive() is False for every thread but the one that forked, and no new
    # worker is started while the listed ones look idle: submit() would queue work that
    # nothing runs. Once per request: a set of at most max_workers threads.
    threads = getattr(executor, "_threads", None)
    if not threads or all(thread.is_alive() for thread in tuple(threads)):
        return
    if (
        getattr(executor, "_shutdown", False)
        or getattr(executor, "_broken", False)
        or getattr(concurrent.futures.thread, "_shutdown", False)  # the interpreter's exit
    ):
        return  # its workers ended here: submit() raises its own error
    raise RuntimeError(
        f"{where}(): {what} is a ThreadPoolExecutor whose worker threads were started in "
        "another process, before a fork (tornado.process.fork_processes(), os.fork()); they "
        "do not exist in this process, so work submitted to it would never run. Create the "
        "executor after fork_processes(), in the process that uses it: for instance on first "
        "use, or in each child's startup code"
    )


async def _conclude(
    handler: RequestHandler, consumer: Consumer, error: BaseException | None
) -> None:
    if error is not None and not isinstance(error, Exception):
        raise error  # KeyboardInterrupt, SystemExit, ...: not ours to swallow
    if isinstance(error, StreamClosedError) and consumer.aborted:
        error = None  # the client left, and the producer heard of it: not an error
    failure = error if error is not None else consumer.failure
    if failure is None:
        if not handler._finished:
            await _finish(handler, consumer)
        return
    if not handler._headers_written and not consumer.aborted:
        raise failure  # nothing was sent: Tornado's own error path (log, write_error)
    _log_once(handler, failure)
    if not handler._finished:  # a finished response is whole: keep the connection
        _cut(handler)


async def _finish(handler: RequestHandler, consumer: Consumer) -> None:
    try:
        sent = handler.finish()
    except Exception as error:
        if not handler._headers_written or consumer.aborted:
            raise
        # For instance fewer bytes than the Content-Length the handler set.
        _log_once(handler, error)
        _cut(handler)
        return
    with contextlib.suppress(StreamClosedError):  # the client left during the last bytes
        await consumer.sent(sent)


def _log_once(handler: RequestHandler, error: BaseException) -> None:
    """Log an error raised after the headers were sent: one record, whatever its type."""
    if isinstance(error, HTTPError):
        # log_exception would log nothing for an HTTPError without a log_message.
        app_log.warning(
            "%s raised %s after the response headers were sent: response cut short, %s",
            handler._request_summary(),
            error,
            handler.request,
        )
    else:
        handler.log_exception(type(error), error, error.__traceback__)


def _cut(handler: RequestHandler) -> None:
    """End the response without a proper end of body: close the connection, then finish."""
    close = getattr(handler.request.connection, "close", None)
    if close is not None:
        close()
    if not handler._finished:
        try:
            sent = handler.finish()  # on a closed connection: on_finish and the access log
        except Exception:
            return
        sent.add_done_callback(ignore_outcome)
