"""
The producers: the thread-pool side of a stream, one class per style.

Both feed the same `.Channel`. A `PushProducer` runs the handler's method once, in one
executor thread, and its ``self.write()``/``self.flush()`` calls go to the channel (blocking
while the budget is used up). A `GeneratorProducer` pulls the generator in executor tasks,
one at a time, until the budget is used up, then *parks*: it gives the thread back, and the
consumer resumes it (a new task) once the budget frees or the stream closes.

Each task runs in the request's `contextvars.Context`, so context variables set on the loop
before the method was called are visible in the producer, as with `asyncio.to_thread`. A
context can be entered by one thread at a time: a generator parks only after its task has
left the context, so the task that resumes it can enter it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import inspect
import threading
from collections.abc import Generator
from typing import Callable

from ._channel import Channel, Put, producing
from ._chunks import to_bytes
from ._sendfile import FileRange

__all__ = ("GeneratorProducer", "PushProducer", "Submit")

#: Runs a task in the stream's executor (called on the loop thread; may raise if the
#: executor is shut down).
Submit = Callable[[Callable[[], None]], None]


def _check_thread(channel: Channel) -> None:
    if threading.get_ident() == channel.loop_thread:
        raise RuntimeError(
            f"{channel.where}(): the executor ran the method on the IOLoop thread; "
            "@stream_on_executor needs an executor with threads of its own, such as a "
            "concurrent.futures.ThreadPoolExecutor"
        )


class PushProducer:
    """Runs a plain method whose ``write``/``flush`` calls feed the channel."""

    def __init__(
        self,
        channel: Channel,
        body: Callable[[], object],
        context: contextvars.Context,
        submit: Submit,
    ) -> None:
        self._channel = channel
        self._body = body
        self._context = context
        self._submit = submit

    def start(self) -> None:
        self._submit(self._task)

    def resume(self) -> None:
        """A push producer blocks instead of parking: nothing to resume."""

    def _task(self) -> None:
        # Runs in an executor thread.
        try:
            _check_thread(self._channel)
            producing.channel = self._channel
            try:
                result = self._context.run(self._body)
            finally:
                producing.channel = None
            if result is not None and not isinstance(result, concurrent.futures.Future):
                raise TypeError(
                    f"{self._channel.where}() returned a {type(result).__qualname__} object; a "
                    "push-style method returns None (to stream from an iterable, make the "
                    "method a generator that yields the chunks)"
                )
        except BaseException as error:  # handed to the loop, which raises it again
            self._channel.end(error)
        else:
            self._channel.end(None)


class GeneratorProducer:
    """Pulls a generator's chunks into the channel, a bounded read-ahead at a time."""

    def __init__(
        self,
        channel: Channel,
        generator: Generator[object, None, None],
        context: contextvars.Context,
        submit: Submit,
        *,
        first_chunk_only: bool,
    ) -> None:
        self._channel = channel
        self._generator = generator
        self._context = context
        self._submit = submit
        self._first_chunk_only = first_chunk_only  # HEAD: the body is discarded anyway

    def start(self) -> None:
        self._submit(self._task)

    def resume(self) -> None:
        """Called on the loop when the budget freed up or the stream closed."""
        self._submit(self._task)

    def _task(self) -> None:
        # Runs in an executor thread. One task at a time per stream: a new one is only
        # submitted for a parked producer, and the channel parks it under its lock after
        # this one is done with the generator and the context.
        try:
            _check_thread(self._channel)
        except RuntimeError as error:
            self._channel.end(error)
            return
        producing.channel = self._channel
        try:
            while self._context.run(self._pull) and not self._channel.park():
                pass  # the budget freed up before we could park: pull on in this thread
        finally:
            producing.channel = None

    def _pull(self) -> bool:
        """Pull until the budget is full (return ``True``) or the stream is over (``False``)."""
        channel = self._channel
        if channel.closed:
            self._close(None)
            return False
        where = channel.where
        while True:
            try:
                # No local for the generator: a traceback that keeps this frame must not
                # keep the generator alive (see _close).
                chunk = next(self._generator)
            except StopIteration:
                channel.end(None)
                return False
            except BaseException as error:
                channel.end(error)
                return False
            try:
                if type(chunk) is FileRange:  # sent without reading it (see _sendfile)
                    state = channel.put_range(chunk)
                else:
                    state = channel.put(to_bytes(chunk, where))
            except BaseException as error:  # a bad chunk, or a yield after finish()
                self._close(error)
                return False
            del chunk  # the generator may reuse it: the channel has its own copy
            if state is Put.CLOSED or self._first_chunk_only:
                self._close(None)
                return False
            if state is Put.FULL:
                return True

    def _close(self, error: BaseException | None) -> None:
        """Close the generator here, in the executor: its ``finally`` blocks run off the loop."""
        try:
            self._generator.close()
        except BaseException as close_error:
            if error is None:
                error = close_error
            if inspect.getgeneratorstate(self._generator) == inspect.GEN_SUSPENDED:
                # It yielded at the GeneratorExit ("generator ignored GeneratorExit"): it is
                # still suspended, and Python closes it again once it is collected. Let go of
                # it now, so that this happens here, in the executor, and not on whichever
                # thread (the IOLoop's) drops the last reference to it, whenever that is.
                # Python's own close() at collection would raise the same RuntimeError again
                # and print it ("Exception ignored in"): the error would be reported twice.
                # Stop it now with an exception its `except GeneratorExit` does not catch.
                with contextlib.suppress(_Abandoned, Exception):
                    self._generator.throw(_Abandoned())
                self._generator = _exhausted()
                if error is close_error:
                    error = RuntimeError(
                        f"{self._channel.where}() yielded while being closed: a generator "
                        "method must let GeneratorExit through at its yield (raised there "
                        "when the client left or the response ended), not yield again"
                    )
                    error.__cause__ = close_error
        self._channel.end(error)


class _Abandoned(BaseException):
    """Thrown into a generator that ignored GeneratorExit, to end it where it yielded."""


def _exhausted() -> Generator[object, None, None]:
    """A generator with nothing left: what a producer holds once it let go of the method's."""
    return
    yield
