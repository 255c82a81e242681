"""
How a producer thread waits for the loop: never for ever.

A closed loop will never serve a producer that waits for it, and a thread blocked for ever
would hang ``executor.shutdown(wait=True)`` and the interpreter's exit. So every wait of a
producer on the loop (for budget, for a call's outcome, for a flush) comes back every
`POLL_SECONDS` to check that the loop is not closed, and gives up with
`~tornado.iostream.StreamClosedError` if it is. ``loop.is_closed()`` is read without a
lock: a stale answer costs one more poll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time

from tornado.iostream import StreamClosedError

__all__ = ("POLL_SECONDS", "ProducerFuture")

#: How often a blocked producer checks that the loop is still there.
POLL_SECONDS = 0.25


class ProducerFuture(concurrent.futures.Future[None]):
    """
    A future a producer may wait on (``flush()``, ``finish()``): its ``result()`` and
    ``exception()`` raise `StreamClosedError` once the loop is closed, since nothing will
    ever resolve it then. (``concurrent.futures.wait()`` does not poll: it only sees the
    outcome once one of these did.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def result(self, timeout: float | None = None) -> None:
        self._wait(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(0)

    def cancel(self) -> bool:
        """The bytes are on their way (a running call's future): this can't be cancelled."""
        return False

    def set_result(self, result: None) -> None:
        # The loop's outcome may come after the one this future gave itself when the loop
        # closed (or a coroutine collected later): the first one stands.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            super().set_exception(exception)

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if self._loop.is_closed():  # before waiting too: no poll per future once closed
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    self.set_exception(self._closed_error())
                return
            left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return  # the caller's super() call raises TimeoutError
            concurrent.futures.wait([self], min(left, POLL_SECONDS))

    def _closed_error(self) -> BaseException:
        """What the future fails with once its loop is closed (subclasses may say otherwise)."""
        return StreamClosedError()
