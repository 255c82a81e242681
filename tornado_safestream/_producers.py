"""
The producers: the thread-pool side of a stream, one class per style.

Both feed the same `.Channel`. A `PushProducer` runs the handler's method once, in one
executor thread, and its ``self.write()``/``self.flush()`` calls go to the channel (blocking
while the budget is used up). A `GeneratorProducer` pulls the generator in executor tasks,
one at a time, until the budget is used up, then *parks*: it gives the thread back, and the
consumer resumes it (a new task) once the budget frees or the stream closes.

Each task runs in the request's `contextvars.Context`, so context variables set on the loop
before the method was called are visible in the producer, as with `asyncio.to_thread`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Generator
from typing import Callable

from ._channel import Channel, Put
from ._chunks import to_bytes

__all__ = ("GeneratorProducer", "PushProducer", "Submit")

#: Runs a function in the stream's executor and context (called on the loop thread).
Submit = Callable[[Callable[[], None]], None]


class PushProducer:
    """Runs a plain method whose ``write``/``flush`` calls feed the channel."""

    def __init__(self, channel: Channel, body: Callable[[], object], submit: Submit) -> None:
        self._channel = channel
        self._body = body
        self._submit = submit

    def start(self) -> None:
        self._submit(self._run)

    def resume(self) -> None:
        """A push producer blocks instead of parking: nothing to resume."""

    def _run(self) -> None:
        # Runs in an executor thread.
        try:
            result = self._body()
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
        submit: Submit,
        *,
        first_chunk_only: bool,
    ) -> None:
        self._channel = channel
        self._generator = generator
        self._submit = submit
        self._first_chunk_only = first_chunk_only  # HEAD: the body is discarded anyway
        # Owned by the pull task that runs: the channel's park/resume handshake (under its
        # lock) lets one run at a time, and the executor's queue orders them.
        self._done = False

    def start(self) -> None:
        self._submit(self._pull)

    def resume(self) -> None:
        """Called on the loop when the budget freed up or the stream closed."""
        self._submit(self._pull)

    def _pull(self) -> None:
        # Runs in an executor thread, one at a time per stream.
        if self._done:
            return
        channel = self._channel
        if channel.closed:
            self._close(None)
            return
        generator = self._generator
        where = channel.where
        while True:
            try:
                chunk = next(generator)
            except StopIteration:
                self._end(None)
                return
            except BaseException as error:
                self._end(error)
                return
            try:
                state = channel.put(to_bytes(chunk, where))
            except BaseException as error:  # a bad chunk, or a yield after finish()
                self._close(error)
                return
            del chunk  # the generator may reuse it: we keep our own copy
            if state is Put.CLOSED or self._first_chunk_only:
                self._close(None)
                return
            if state is Put.FULL:
                return  # parked: the consumer resumes us

    def _close(self, error: BaseException | None) -> None:
        """Close the generator here, in the executor: its ``finally`` blocks run off the loop."""
        try:
            self._generator.close()
        except BaseException as close_error:
            if error is None:
                error = close_error
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        self._done = True
        self._channel.end(error)
