"""
The channel: one ordered, byte-budgeted pipe from a producer thread to the IOLoop.

A stream has one channel. Its producer face (`Channel.write`, `Channel.flush`,
`Channel.put`, `Channel.call`, `Channel.end`) is called from executor threads; its loop
face (`Channel.take`, `Channel.wait`, `Channel.sent`, `Channel.close`,
`Channel.mark_finished`, `Channel.detach`) only from the IOLoop thread, by the consumer.

What goes through it, in the order the producer made it:

- ``bytes``: a ``write``. Joined with its neighbours on the loop, never one loop wake-up each.
- `FLUSH`: a ``flush()`` the producer asked for before a call or the end.
- `Call`: any other response method; the producer waits for its result.
- `End`: the producer is done (with its exception, if it raised).
- `Item`: something a consumer other than the response's carries out (a WebSocket message,
  see `._websocket`), queued with `Channel.offer`, which never lets it exceed the budget.

The budget: ``pending`` counts the bytes the producer wrote that are not yet handed to the
socket. A push producer blocks while it is over ``max_buffer_bytes``; a generator producer
stops once it reaches it and *parks* (`Channel.park`, after giving its thread and context
back), and the consumer resumes it as the budget frees or the stream closes.

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
import enum
import threading
import time
from typing import Any, Union

from tornado.iostream import StreamClosedError

from ._waiting import POLL_SECONDS, ProducerFuture

__all__ = ("FLUSH", "Call", "Channel", "End", "Item", "Offer", "Op", "Put", "producing")


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: A flush the producer asked for, placed before a `Call` or the `End` it must precede.
FLUSH = _Marker("FLUSH")


class Call:
    """A response method call, carried out on the loop; ``future`` gets its outcome."""

    __slots__ = ("args", "future", "kwargs", "name")

    def __init__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def __repr__(self) -> str:
        return f"<Call {self.name}()>"


class End:
    """The producer is done; ``error`` is what it raised, if anything."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"<End error={self.error!r}>"


class Item:
    """
    Base of what a consumer other than the response's carries out (`Channel.offer`).

    ``nbytes`` count against the budget from `Channel.offer` until the consumer's
    `Channel.sent`. Immutable once offered: the same item may be offered to many channels.
    """

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


Op = Union[bytes, Call, End, _Marker, Item]


class Offer(enum.Enum):
    """The outcome of `Channel.offer`."""

    QUEUED = "queued"  #: queued; the consumer is awake and will see it
    WAKE = "wake"  #: queued; the consumer is idle: wake it (`Channel.wake_soon`, or `wake`)
    FULL = "full"  #: not queued: it does not fit in the budget (in time)


class Put(enum.Enum):
    """What a generator producer should do after `Channel.put`."""

    MORE = "more"  #: pull the next chunk
    FULL = "full"  #: the budget is used up: stop pulling, then `Channel.park`
    CLOSED = "closed"  #: the stream is closed: close the generator


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

        self._lock = threading.Lock()
        # The producer waits here for budget; notified by `sent` and `close`.
        self._budget = threading.Condition(self._lock)
        # --- guarded by _lock ---
        self._ops: list[Op] = []
        self._pending = 0  # written by the producer, not yet handed to the socket
        self._flush_requested = False  # a flush() or a yield since the last take()
        self._flush_future: concurrent.futures.Future[None] | None = None
        self._consumer_idle = False  # the consumer waits for a wake-up
        self._parked = False  # a generator producer gave its thread back, full
        self._closed: StreamClosedError | None = None
        self._finished = False  # the handler was finished (write() must raise)
        self._detached = False  # the consumer is gone: calls can no longer be served
        # --- loop-owned ---
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Channel {self.where} pending={self._pending}/{self.max_buffer_bytes} "
                f"ops={len(self._ops)} closed={self._closed is not None} "
                f"finished={self._finished} parked={self._parked}>"
            )

    # ------------------------------------------------------------------ producer face

    def write(self, data: bytes) -> None:
        """Queue ``data``; block while more than the budget is pending."""
        with self._lock:
            self._raise_if_unwritable("write")
            self._ops.append(data)
            self._pending += len(data)
            wake = self._consumer_idle
            self._consumer_idle = False
            over = self._pending > self.max_buffer_bytes
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
            wake = self._consumer_idle
            self._consumer_idle = False
            over = self._pending > self.max_buffer_bytes
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
            self._pending += len(data)
            self._flush_requested = True
            wake = self._consumer_idle
            self._consumer_idle = False
            full = self._pending >= self.max_buffer_bytes
        if wake:
            self._wake_consumer()
        return Put.FULL if full else Put.MORE

    def park(self) -> bool:
        """
        After `Put.FULL`, once the producer's task let go of its thread's context.

        :return: ``True`` if parked (the consumer will resume the producer); ``False`` if the
            producer must go on at once: the budget freed up meanwhile, or the stream closed
            (its loop included).
        """
        with self._lock:
            self._note_closed_loop()
            if self._closed is not None or self._pending < self.max_buffer_bytes:
                return False
            self._parked = True
            return True

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Have the loop call the handler's method ``name``; return or raise its outcome."""
        call = Call(name, args, kwargs)
        with self._lock:
            if self._detached:
                raise StreamClosedError()
            self._order_flush()
            self._ops.append(call)
            wake = self._consumer_idle
            self._consumer_idle = False
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
            wake = self._consumer_idle
            self._consumer_idle = False
        if wake:
            # If the loop is gone, so is everyone who would care.
            with contextlib.suppress(StreamClosedError):
                self._wake_consumer()

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
        nbytes = item.nbytes
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._raise_if_closed()
                pending = self._pending
                if force or not nbytes or not pending or pending + nbytes <= self.max_buffer_bytes:
                    break
                if not wait:
                    return Offer.FULL
                left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return Offer.FULL
                self._budget.wait(min(left, POLL_SECONDS))  # then: is the loop closed?
            self._ops.append(item)
            self._pending += nbytes
            wake = self._consumer_idle
            self._consumer_idle = False
        return Offer.WAKE if wake else Offer.QUEUED

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

    def _wait_for_budget(self) -> None:
        with self._lock:
            while self._pending > self.max_buffer_bytes and self._closed is None:
                if not self._budget.wait(POLL_SECONDS) and self._loop.is_closed():
                    self._closed = StreamClosedError()
            self._raise_if_closed()

    def _wake_consumer(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self.wake)
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

    def sent(self, nbytes: int) -> bool:
        """
        ``nbytes`` left the budget (handed to the socket, or dropped).

        :return: whether a parked producer must be resumed now.
        """
        with self._lock:
            self._pending -= nbytes
            if self._pending <= self.max_buffer_bytes:
                self._budget.notify_all()
            if self._parked and self._pending < self.max_buffer_bytes:
                self._parked = False
                return True
        return False

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
            self._parked = False
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
            self._detached = True
            if self._closed is None:
                self._closed = StreamClosedError()
            self._budget.notify_all()
            ops = self._ops
            self._ops = []
            future = self._flush_future
            self._flush_future = None
        for op in ops:
            if isinstance(op, Call):
                op.future.set_exception(StreamClosedError())
        if future is not None:
            future.set_exception(StreamClosedError())
