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
import enum
import inspect
import threading
import time
from collections.abc import Generator
from typing import Callable

from ._channel import Channel, producing
from ._chunks import to_bytes
from ._lanes import OWN_TASK_SECONDS, SLICE_SECONDS, Lane, Pacing
from ._ops import Put
from ._sendfile import FileRange
from ._words import a_type

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
                    f"{self._channel.where}() returned {a_type(result)}; a "
                    "push-style method returns None (to stream from an iterable, make the "
                    "method a generator that yields the chunks)"
                )
        except BaseException as error:  # handed to the loop, which raises it again
            self._channel.end(error)
        else:
            self._channel.end(None)


class _Pulled(enum.Enum):
    FULL = "full"  #: the budget is used up: park
    OVER = "over"  #: the stream is over (ended, closed, or failed)
    SLICE = "slice"  #: the lane's slice is used up: let the next producer run


class GeneratorProducer:
    """
    Pulls a generator's chunks into the channel, a bounded read-ahead at a time.

    Its first pull runs in an executor task of its own. After that, a producer that
    computes is resumed in its executor's `.Lane`, a slice at a time, and one that waits
    (a query, a slow disk) in a task of its own, as at first (`.Pacing` tells which).
    With ``keep_thread``, the first task keeps its thread until the generator is closed:
    it waits there for room instead of parking.
    """

    def __init__(
        self,
        channel: Channel,
        generator: Generator[object, None, None],
        context: contextvars.Context,
        submit: Submit,
        *,
        first_chunk_only: bool,
        lane: Lane | None = None,
        keep_thread: bool = False,
    ) -> None:
        self._channel = channel
        self._generator = generator
        self._context = context
        self._submit = submit
        self._first_chunk_only = first_chunk_only  # HEAD: the body is discarded anyway
        self._lane = lane
        self._keep_thread = keep_thread
        self._pacing = Pacing()

    def start(self) -> None:
        self._submit(self._task)

    def resume(self) -> None:
        """Called on the loop when the budget freed up or the stream closed."""
        if self._lane is not None and self._pacing.computes:
            self._lane.add(self._slice, self._submit)
        else:
            self._submit(self._task)

    def _task(self) -> None:
        # Runs in an executor thread. One task (or lane slice) at a time per stream: a new
        # one is only started for a parked producer, and the channel parks it under its lock
        # after this one is done with the generator and the context.
        try:
            _check_thread(self._channel)
        except RuntimeError as error:
            self._channel.end(error)
            return
        channel = self._channel
        producing.channel = channel
        try:
            while True:
                deadline = None if self._lane is None else time.monotonic() + OWN_TASK_SECONDS
                pulled = self._pull_timed(deadline, in_lane=False)
                if pulled is _Pulled.OVER:
                    return
                if pulled is _Pulled.FULL:
                    if self._keep_thread:
                        channel.wait_for_room()  # then a closed stream closes the generator
                        continue
                    if channel.park():
                        return
                # The budget freed up before we could park, or the task ran for a while: a
                # producer that computes goes on in the lane, one that waits in this thread.
                if self._pacing.computes and channel.call_soon(self._to_lane):
                    return
        finally:
            producing.channel = None

    def _to_lane(self) -> None:
        # On the loop thread: the task that called this let go of the generator.
        assert self._lane is not None
        try:
            self._lane.add(self._slice, self._submit)
        except Exception as error:  # the executor was shut down
            self._channel.end(error)

    def _slice(self) -> bool:
        """One slice in a lane's runner; ``True``: queue another one."""
        channel = self._channel
        producing.channel = channel
        try:
            pulled = self._pull_timed(time.monotonic() + SLICE_SECONDS, in_lane=True)
        finally:
            producing.channel = None
        if pulled is _Pulled.FULL:
            if channel.park():
                return False
        elif pulled is _Pulled.OVER:
            return False
        # Room again, or the slice is over: one that computes takes its next turn in the
        # lane; one that waits (a query) leaves it, for a task of its own.
        return self._pacing.computes or not channel.call_soon(self._to_own_task)

    def _to_own_task(self) -> None:
        # On the loop thread: the slice that called this let go of the generator.
        try:
            self._submit(self._task)
        except Exception as error:  # the executor was shut down
            self._channel.end(error)

    def _pull_timed(self, deadline: float | None, in_lane: bool) -> _Pulled:
        self._pacing.start()
        try:
            return self._context.run(self._pull, deadline)
        finally:
            self._pacing.stop(in_lane)

    def _pull(self, deadline: float | None) -> _Pulled:
        """Pull until the budget is full, the stream is over or ``deadline`` passed."""
        channel = self._channel
        if channel.closed:
            self._close(None)
            return _Pulled.OVER
        where = channel.where
        while True:
            try:
                # No local for the generator: a traceback that keeps this frame must not
                # keep the generator alive (see _close).
                chunk = next(self._generator)
            except StopIteration:
                channel.end(None)
                return _Pulled.OVER
            except BaseException as error:
                channel.end(error)
                return _Pulled.OVER
            try:
                if type(chunk) is FileRange:  # sent without reading it (see _sendfile)
                    state = channel.put_range(chunk)
                else:
                    state = channel.put(to_bytes(chunk, where))
            except BaseException as error:  # a bad chunk, or a yield after finish()
                self._close(error)
                return _Pulled.OVER
            del chunk  # the generator may reuse it: the channel has its own copy
            if state is Put.CLOSED or self._first_chunk_only:
                self._close(None)
                return _Pulled.OVER
            if state is Put.FULL:
                return _Pulled.FULL
            if deadline is not None and time.monotonic() >= deadline:
                return _Pulled.SLICE

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
