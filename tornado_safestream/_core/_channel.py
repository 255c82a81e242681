"""
The channel: one ordered, byte-budgeted pipe from a producer thread to the IOLoop.

A stream has one channel. Its producer face (`Channel.write`, `Channel.flush`,
`Channel.put`, `Channel.call`, `Channel.end`) is called from executor threads; its loop
face (`Channel.take`, `Channel.wait`, `Channel.sent`, `Channel.close`,
`Channel.mark_finished`, `Channel.detach`) only from the IOLoop thread, by the consumer.

What goes through it, in the order the producer made it, is described in `._ops`: chunks
of bytes, flushes, calls, the end, file ranges and other consumers' items.

The budget: ``pending`` counts the bytes the producer wrote that are not yet handed to the
socket. Its limit is ``max_buffer_bytes`` for a push producer, and the stream's read-ahead
*window* for a generator producer (`._readahead`: at most ``max_buffer_bytes``, smaller for
a slow client); and never more than the stream reserved under the process-wide memory cap
(`._memory`). A push producer blocks while it is over the limit; a generator producer stops
once it reaches it and *parks* (`Channel.park`, after giving its thread and context back).
Either goes on once it is under its limit again (or once the client took all of it, for a
stream the cap holds to one chunk). (Waking a producer only once half its limit drained,
as the inbound side does, made a fast client's generator stream about a fifth slower in
interleaved measurements: the producer then refills while the socket runs low.)

The producer's waits never last for ever (see `._waiting`): they give up once the loop is
closed, and so do the futures a producer gets from ``flush()`` and ``finish()``. A parked
generator has no thread waiting: if its loop is closed under it (without closing the
connections first), it is left suspended, as asyncio leaves the loop's own coroutines.

.. warning::

   Every attribute under "guarded by ``_lock``" is read and written with ``_lock`` held,
   from both sides; the ones under "loop-owned" only on the IOLoop thread. Nothing here
   relies on the GIL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import weakref
from typing import Any, Callable

from tornado.iostream import StreamClosedError

from ._memory import Account, memory_cap
from ._ops import FLUSH, Call, End, Item, Offer, Op, Put
from ._readahead import START_WINDOW
from ._sendfile import FileRange
from ._waiting import POLL_SECONDS, ProducerFuture
from ._waker import waker_for

__all__ = ("Channel", "producing")


class _Producing(threading.local):
    """Thread-owned: the channel whose producer this thread is running, if any."""

    channel: Channel | None = None


#: Set by a producer task in its own thread, for as long as it runs the handler's code:
#: only that thread's response method calls are forwarded.
producing = _Producing()


class Channel:
    """The producer-to-loop pipe of one stream. See the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: object,
        where: str,
        max_buffer_bytes: int,
    ) -> None:
        # Immutable after construction: safe to read from any thread.
        self.loop_thread = threading.get_ident()  # constructed on the loop
        self.handler = handler
        self.where = where
        self.max_buffer_bytes = max_buffer_bytes
        self._loop = loop
        self._waker = waker_for(loop)

        self._cap = memory_cap()
        self._cap.join()

        self._lock = threading.Lock()
        # The producer waits here for budget; notified by `sent`, `granted` and `close`.
        self._budget = threading.Condition(self._lock)
        # --- guarded by _lock ---
        self._ops: list[Op] = []
        self._pending = 0  # written by the producer, not yet handed to the socket
        self._window = min(START_WINDOW, max_buffer_bytes)  # set by the consumer (`sent`)
        self._pulled = False  # a generator producer: the read-ahead window applies
        self._account = Account(self._cap)  # what is reserved under the memory cap
        self._reservation = self._account.reservation
        self._peak = 0  # the most bytes pending at once
        self._blocked = 0.0  # seconds the producer waited for room (blocked or parked)
        self._parked_at = 0.0
        self._flush_requested = False  # a flush() or a yield since the last take()
        self._flush_future: concurrent.futures.Future[None] | None = None
        self._consumer_idle = False  # the consumer waits for a wake-up
        self._parked = False  # a generator producer gave its thread back, full
        self._closed: StreamClosedError | None = None
        self._finished = False  # the handler was finished (write() must raise)
        self._detached = False  # the consumer is gone: calls can no longer be served
        # Gives the reservation back: at `detach`, or when the channel is collected without
        # one (its loop was closed under a parked producer: nothing else would ever do it).
        self._leave = weakref.finalize(self, self._cap.leave, weakref.ref(self), self._reservation)
        # --- loop-owned ---
        self._waiter: asyncio.Future[None] | None = None
        #: Resumes the parked producer; set by the consumer (called on the loop thread).
        self.on_resume: Callable[[], None] | None = None

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Channel {self.where} pending={self._pending}/{self._limit()} "
                f"reserved={self._reservation.nbytes} ops={len(self._ops)} "
                f"closed={self._closed is not None} finished={self._finished} "
                f"parked={self._parked}>"
            )

    # ------------------------------------------------------------------ producer face

    def write(self, data: bytes) -> None:
        """Queue ``data``; block while more than the budget is pending."""
        with self._lock:
            self._raise_if_unwritable("write")
            self._ops.append(data)
            self._add_pending(len(data))
            wake = self._claim_wake()
            over = self._room() < 0
        if wake:
            self._wake_consumer()
        if over:
            self._wait_for_budget()

    def flush(self) -> concurrent.futures.Future[None]:
        """Ask for what was written to be sent; block while over the budget."""
        with self._lock:
            self._raise_if_closed()
            if self._finished:
                # Tornado's flush() after finish() has nothing left to send.
                done: concurrent.futures.Future[None] = concurrent.futures.Future()
                done.set_result(None)
                return done
            self._flush_requested = True
            future = self._flush_future
            if future is None:
                future = self._flush_future = self.producer_future()
            wake = self._claim_wake()
            over = self._room() < 0
        if wake:
            self._wake_consumer()
        if over:
            self._wait_for_budget()
        return future

    def put(self, data: bytes) -> Put:
        """Queue a yielded chunk to be sent at once; never blocks."""
        with self._lock:
            if self._closed is not None:
                return Put.CLOSED
            if self._finished:
                raise RuntimeError(
                    f"Cannot write() after finish(): {self.where}() yielded a chunk after "
                    "the response was finished"
                )
            self._ops.append(data)
            self._add_pending(len(data))
            self._flush_requested = True
            self._pulled = True
            wake = self._claim_wake()
            full = self._room() <= 0
        if wake:
            self._wake_consumer()
        return Put.FULL if full else Put.MORE

    def put_range(self, piece: FileRange) -> Put:
        """
        Queue a file range (a generator yielded it); never blocks. The channel owns it from
        now on: the consumer closes it once sent, or it is closed here if it can't be queued.

        It counts as the whole budget until the consumer has sent it: the producer parks.
        """
        with self._lock:
            closed = self._closed is not None
            finished = self._finished
            if not closed and not finished:
                self._ops.append(piece)
                self._pending += self.max_buffer_bytes
                self._flush_requested = True
                wake = self._claim_wake()
        if closed or finished:
            piece.close()
            if closed:
                return Put.CLOSED
            raise RuntimeError(
                f"Cannot write() after finish(): {self.where}() yielded a file range after "
                "the response was finished"
            )
        if wake:
            self._wake_consumer()
        return Put.FULL

    def hold(self, nbytes: int) -> None:
        """
        The consumer holds ``nbytes`` more for this stream (the loop side: a file range read
        into memory, when it can't be sent from the file): counted as pending, and under
        the memory cap, until `sent`.
        """
        with self._lock:
            self._add_pending(nbytes)
            self._room()

    def park(self) -> bool:
        """
        After `Put.FULL`, once the producer's task let go of its thread's context.

        :return: ``True`` if parked (the consumer will resume the producer); ``False`` if the
            producer must go on at once: the budget freed up meanwhile, or the stream closed
            (its loop included).
        """
        with self._lock:
            self._note_closed_loop()
            if self._closed is not None or self._may_go_on():
                return False
            self._parked = True
            self._parked_at = time.monotonic()
            return True

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Have the loop call the handler's method ``name``; return or raise its outcome."""
        call = Call(name, args, kwargs)
        with self._lock:
            if self._detached:
                raise StreamClosedError()
            self._order_flush()
            self._ops.append(call)
            wake = self._claim_wake()
        if wake:
            self._wake_consumer()
        while True:
            try:
                return call.future.result(POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if self._loop.is_closed():
                    raise StreamClosedError() from None

    def end(self, error: BaseException | None) -> None:
        """The producer is done. Never blocks."""
        with self._lock:
            self._order_flush()
            self._ops.append(End(error))
            wake = self._claim_wake()
        if wake:
            # If the loop is gone, so is everyone who would care.
            with contextlib.suppress(StreamClosedError):
                self._wake_consumer()
        if self._loop.is_closed():
            self._leave()  # no consumer will ever detach: give the cap its bytes back now

    def offer(
        self, item: Item, *, wait: bool = False, timeout: float | None = None, force: bool = False
    ) -> Offer:
        """
        Queue ``item`` if it fits: if its ``nbytes`` added to the pending bytes stay within
        the budget, or nothing is pending (an item bigger than the budget goes alone), or it
        has no bytes (a control item). Unlike `write`, the budget is never exceeded.

        Never wakes the consumer: on `Offer.WAKE` the caller does, so that one wake-up can
        serve many channels of a loop.

        :param wait: block while it does not fit, up to ``timeout`` seconds (``None``: as
            long as it takes); without it, or once the time is up, return `Offer.FULL`.
        :param force: queue it even over the budget (for the loop thread, which must not
            wait).
        :raises StreamClosedError: if the stream is closed, or its loop, also while waiting.
        """
        try:
            return self._offer(item, wait, timeout, force)
        except StreamClosedError:
            if self._loop.is_closed():
                self._leave()  # no consumer will ever detach: give the cap its bytes back
            raise

    def _offer(self, item: Item, wait: bool, timeout: float | None, force: bool) -> Offer:
        nbytes = item.nbytes
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._raise_if_closed()
                pending = self._pending
                fits = (
                    force or not nbytes or not pending or pending + nbytes <= self.max_buffer_bytes
                )
                if fits and nbytes:
                    fits = self._reserve_for(nbytes, force=force or not pending)
                if fits:
                    break
                if not wait:
                    return Offer.FULL
                left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return Offer.FULL
                self._budget.wait(min(left, POLL_SECONDS))  # then: is the loop closed?
            self._ops.append(item)
            self._pending += nbytes
            wake = self._claim_wake()
        return Offer.WAKE if wake else Offer.QUEUED

    def _reserve_for(self, nbytes: int, force: bool) -> bool:
        """
        Reserve under the memory cap what ``nbytes`` more need; whether the cap allowed it.

        Warning! Call with _lock held. ``force``: reserve it whatever the cap (the item goes
        alone, or the loop thread can't wait).
        """
        return self._account.reserve_more(self, self._pending, nbytes, force)

    def wake_soon(self) -> None:
        """
        Wake the consumer, from any thread, after `Offer.WAKE`.

        :raises StreamClosedError: if the loop is closed (the channel is then closed).
        """
        self._wake_consumer()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the consumer runs on."""
        return self._loop

    @property
    def pending(self) -> int:
        """The bytes queued or being sent, not yet handed to the socket."""
        with self._lock:
            return self._pending

    def _claim_wake(self) -> bool:
        """
        Whether the caller, having queued something, must wake the consumer (it waits for a
        wake-up): once the lock is let go. Only the first caller is told so.

        Warning! Call with _lock held.
        """
        wake = self._consumer_idle
        self._consumer_idle = False
        return wake

    def _add_pending(self, nbytes: int) -> None:
        # Warning! Call with _lock held. Bytes held for the stream, until `sent`.
        self._pending += nbytes
        if self._pending > self._peak:
            self._peak = self._pending

    def _order_flush(self) -> None:
        # Warning! Call with _lock held. A flush requested before a call or the end
        # must happen before it, as it would on the loop.
        if self._flush_requested:
            self._ops.append(FLUSH)
            self._flush_requested = False

    def _raise_if_closed(self) -> None:
        # Warning! Call with _lock held.
        self._note_closed_loop()
        if self._closed is not None:
            raise StreamClosedError(real_error=self._closed.real_error)

    def _note_closed_loop(self) -> None:
        # Warning! Call with _lock held. Nothing will send what a closed loop was given.
        if self._closed is None and self._loop.is_closed():
            self._closed = StreamClosedError()
            self._budget.notify_all()

    def producer_future(self) -> ProducerFuture:
        """A future for the producer to wait on, that fails once the loop is closed."""
        return ProducerFuture(self._loop)

    def _raise_if_unwritable(self, method: str) -> None:
        # Warning! Call with _lock held.
        self._raise_if_closed()
        if self._finished:
            raise RuntimeError(f"Cannot {method}() after finish()")

    def wait_for_room(self) -> None:
        """
        After `Put.FULL`, for a producer that keeps its thread: wait here until it may go on,
        as a parked one would be resumed, or the stream closed (then `put` says so).
        """
        started = time.monotonic()
        with self._lock:
            while self._closed is None and not self._may_go_on():
                if not self._budget.wait(POLL_SECONDS) and self._loop.is_closed():
                    self._closed = StreamClosedError()
            self._blocked += time.monotonic() - started

    def _limit(self) -> int:
        # Warning! Call with _lock held.
        return self._window if self._pulled else self.max_buffer_bytes

    def _room(self) -> int:
        """
        How many more bytes the producer may add (negative: it must wait).

        Warning! Call with _lock held. Reserves under the memory cap what the stream holds
        and, unless it already waits in the cap's queue, up to its limit: once per window,
        not per chunk. What the cap does not cover of what the stream already holds is
        reserved all the same (*forced*: the bytes exist), and the producer must wait.
        """
        return self._account.room(self, self._pending, self._limit())

    def _may_go_on(self) -> bool:
        # Warning! Call with _lock held. A stopped producer goes on once under its limit, or
        # once its client took everything if the cap allows it nothing more than it holds.
        return self._account.may_go_on(self._pending, self._limit(), half=False)

    def _wait_for_budget(self) -> None:
        started = time.monotonic()
        with self._lock:
            if not self._flush_requested and self._closed is None:
                # What was written must move for room to free up: flush it now. (The consumer
                # flushes on its own only once its unflushed bytes pass max_buffer_bytes: bytes
                # the memory cap holds back below that would otherwise stay unsent for ever.)
                self._flush_requested = True
                wake = self._claim_wake()
            else:
                wake = False
        if wake:
            self._wake_consumer()
        with self._lock:
            while self._closed is None and not self._may_go_on():
                if not self._budget.wait(POLL_SECONDS) and self._loop.is_closed():
                    self._closed = StreamClosedError()
            self._blocked += time.monotonic() - started
            self._raise_if_closed()

    def call_soon(self, callback: Callable[[], None]) -> bool:
        """Have the loop call ``callback`` (from any thread); ``False`` if the loop is closed."""
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            return False
        return True

    def _wake_consumer(self) -> None:
        try:
            self._waker.wake(self.wake)
        except RuntimeError:  # the loop is closed: nobody will ever send these bytes
            with self._lock:
                if self._closed is None:
                    self._closed = StreamClosedError()
                self._budget.notify_all()
            raise StreamClosedError() from None

    # ---------------------------------------------------------------------- loop face

    def take(self) -> tuple[list[Op], bool, concurrent.futures.Future[None] | None] | None:
        """
        Take everything queued: ``(ops, flush_requested, flush_future)``.

        Returns ``None``, and marks the consumer idle, when there is nothing: the next
        producer call then wakes `wait`.
        """
        with self._lock:
            if not self._ops and not self._flush_requested:
                self._consumer_idle = True
                return None
            ops = self._ops
            self._ops = []
            flush = self._flush_requested
            self._flush_requested = False
            future = self._flush_future
            self._flush_future = None
        return ops, flush, future

    async def wait(self) -> None:
        """Wait, after `take` returned ``None``, for the producer to queue something."""
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        """Wake `wait` (on the loop thread: producers schedule it with call_soon_threadsafe)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def sent(self, nbytes: int, window: int | None = None) -> bool:
        """
        ``nbytes`` left the budget (handed to the socket, or dropped).

        :param window: the stream's new read-ahead window, if it changed.
        :return: whether a parked producer must be resumed now.
        """
        with self._lock:
            self._pending -= nbytes
            if window is not None:
                self._window = window
            # Keep the reservation up to the limit while streaming; give back what is not
            # held when other streams wait for bytes, so that they get their turn, and when
            # nothing is held or queued (an idle WebSocket, a producer slower than its client).
            idle = not self._pending and not self._ops
            release = self._account.settle(self._pending, self._limit(), idle)
            resume = self._wake_producer()
        if release > 0:
            self._cap.release(release)
        return resume

    def granted(self, nbytes: int) -> None:
        """The memory cap reserved ``nbytes`` more for this stream (any thread)."""
        with self._lock:
            if self._detached:
                give_back = nbytes
                resume = False
            else:
                give_back = 0
                self._account.granted(nbytes)
                self._budget.notify_all()  # a sender waiting in `offer`, whatever the level
                resume = self._wake_producer()
        if give_back:
            self._cap.release(give_back)
        if resume:
            self._resume_on_loop()

    def _wake_producer(self) -> bool:
        # Warning! Call with _lock held. Returns whether a parked producer must be resumed.
        if not self._may_go_on():
            return False
        self._budget.notify_all()
        if not self._parked:
            return False
        self._parked = False
        self._blocked += time.monotonic() - self._parked_at
        return True

    def _resume_on_loop(self) -> None:
        def resume() -> None:
            if self.on_resume is not None:
                self.on_resume()

        if threading.get_ident() == self.loop_thread:
            resume()
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing to resume
                self._loop.call_soon_threadsafe(resume)

    def stats(self) -> tuple[int, float, int]:
        """``(peak pending bytes, seconds the producer waited for room, window)``."""
        with self._lock:
            blocked = self._blocked
            if self._parked:
                blocked += time.monotonic() - self._parked_at
            return self._peak, blocked, self._window

    def close(self, error: StreamClosedError) -> bool:
        """
        The stream can carry no more bytes: producer writes raise ``StreamClosedError``.

        :return: whether a parked producer must be resumed (to close its generator).
        """
        with self._lock:
            if self._closed is not None:
                return False
            self._closed = error
            self._budget.notify_all()
            resume = self._parked
            if resume:
                self._parked = False
                self._blocked += time.monotonic() - self._parked_at
        return resume

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed is not None

    def mark_finished(self) -> None:
        """The handler was finished: the producer's writes raise from now on."""
        with self._lock:
            self._finished = True

    def detach(self) -> None:
        """The consumer is gone: fail what it will never serve."""
        with self._lock:
            if self._detached:
                return
            self._detached = True
            if self._closed is None:
                self._closed = StreamClosedError()
            self._budget.notify_all()
            ops = self._ops
            self._ops = []
            future = self._flush_future
            self._flush_future = None
        self._leave()
        for op in ops:
            if isinstance(op, Call):
                op.future.set_exception(StreamClosedError())
            elif isinstance(op, FileRange):
                op.close()
        if future is not None:
            future.set_exception(StreamClosedError())
