"""
The inbound channel: one ordered, byte-budgeted pipe from the IOLoop to a worker thread.

The reverse of `._channel`: here the IOLoop produces (Tornado reads a request body and hands
each chunk to ``data_received``) and an executor thread consumes (the handler's decorated
method, called once per item, one call at a time, in arrival order). It is budgeted the same
way, with the same arithmetic (`._memory.Account`): ``pending`` counts the bytes queued for
the worker and not yet consumed (the item being consumed included); its limit is
``max_buffer_bytes``, and never more than the stream reserved under the process-wide memory
cap, so that every body byte waiting for a worker counts under the cap that responses share.

The loop never blocks: `Inbound.put` always queues the item (the bytes exist already) and,
once more than the limit is pending, returns a future for the reader to await: Tornado then
reads no more of the socket until the worker consumed half of the limit (hysteresis: the
reader wakes once per half of its limit, never per chunk), and TCP slows the client.
Optionally (``max_items``, for WebSocket messages) the items are bounded too: once
``max_items`` are queued or being consumed, the reader waits until half of them were.

No thread is held while nothing is queued: a *drain* task is submitted to the executor when
an item arrives and none runs; it consumes what is queued, waits `LINGER_SECONDS` for more
(so that a fast upload costs one task, not one per chunk), and ends. One task at a time, so
the calls never overlap and keep their order.

Ending:

- `Inbound.body_complete`: the reader is done; once the queue is consumed, ``on_drained``
  is called on the loop (the verb method may run).
- a call raised: the rest is dropped, no more calls run, ``on_failed(error)`` is called on the
  loop, and the abort hook runs in the worker, right after the call that raised.
- `Inbound.abort` (the client left): the queue is dropped, no more calls run, and the abort
  hook runs in the executor once the call in progress, if any, returned.

.. warning::

   Every attribute under "guarded by ``_lock``" is read and written with ``_lock`` held, from
   both sides; the ones under "loop-owned" only on the IOLoop thread. Nothing here relies on
   the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
import weakref
from typing import Callable, Generic, TypeVar

from tornado.iostream import StreamClosedError
from tornado.log import app_log

from ._memory import Account, memory_cap

__all__ = ("Inbound",)

T_Item = TypeVar("T_Item")

#: How long a drain task that emptied the queue waits for the next item before it ends (and
#: gives its thread back): short enough that a stalled client holds no thread.
LINGER_SECONDS = 0.002

#: Runs a callable in the stream's executor (on the loop thread; may raise if shut down).
Submit = Callable[[Callable[[], None]], None]


class Inbound(Generic[T_Item]):
    """
    The loop-to-worker pipe of one request body (or connection). See the module docstring.

    :param consume: the handler's method, bound: called with each item, in a worker thread.
    :param aborted: the abort hook, called once in a worker thread with the reason, when the
        items will not all be consumed (a call raised, or the client left).
    :param on_drained: called on the loop once `body_complete` was called and every item
        was consumed.
    :param on_failed: called on the loop with the exception of a call that raised.
    :param max_items: items queued or being consumed, at most, before the reader waits
        (``None``: only the bytes count).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        where: str,
        max_buffer_bytes: int,
        *,
        consume: Callable[[T_Item], object],
        aborted: Callable[[BaseException], object],
        on_drained: Callable[[], None],
        on_failed: Callable[[BaseException], None],
        submit: Submit,
        context: contextvars.Context,
        max_items: int | None = None,
    ) -> None:
        # Immutable after construction: safe to read from any thread.
        self.loop_thread = threading.get_ident()  # constructed on the loop
        self.where = where
        self.max_buffer_bytes = max_buffer_bytes
        self.max_items = max_items
        self._loop = loop
        self._consume = consume
        self._aborted = aborted
        self._on_drained = on_drained
        self._on_failed = on_failed
        self._submit = submit
        self._context = context

        self._cap = memory_cap()
        self._cap.join()

        self._lock = threading.Lock()
        # A drain task that found the queue empty lingers here a moment for the next item.
        self._arrived = threading.Condition(self._lock)
        # --- guarded by _lock ---
        self._items: collections.deque[tuple[T_Item, int]] = collections.deque()
        self._pending = 0  # bytes queued or being consumed
        self._count = 0  # items queued or being consumed
        self._peak_items = 0
        self._account = Account(self._cap)  # what is reserved under the memory cap
        self._peak = 0
        self._consumed = 0  # bytes whose call returned
        self._calls = 0  # calls that returned
        self._running = False  # a drain task is submitted or at work
        self._holding = False  # the reader waits (``_reader``) for room
        self._complete = False  # `body_complete` was called
        self._stopped: BaseException | None = None  # why no more calls run (error or abort)
        self._hooked = False  # the abort hook was started
        self._ended = False  # nothing more will happen: the reservation was given back
        # Gives the reservation back at the end, or when collected without one.
        self._leave = weakref.finalize(
            self, self._cap.leave, weakref.ref(self), self._account.reservation
        )
        # --- loop-owned ---
        self._reader: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Inbound {self.where} pending={self._pending}/{self.max_buffer_bytes} "
                f"reserved={self._account.nbytes} items={self._count}/{self.max_items} "
                f"calls={self._calls} running={self._running} holding={self._holding} "
                f"complete={self._complete} stopped={self._stopped!r}>"
            )

    # ---------------------------------------------------------------------- loop face

    def put(self, item: T_Item, nbytes: int) -> asyncio.Future[None] | None:
        """
        Queue ``item`` (``nbytes`` long) for the worker; never blocks.

        :return: ``None`` while the budget has room (the reader goes on), else a future done
            once the worker consumed half of it (or the stream stopped): the reader awaits it.
        """
        with self._lock:
            if self._stopped is not None or self._complete:
                return None  # dropped: no more calls run
            self._items.append((item, nbytes))
            self._pending += nbytes
            self._count += 1
            if self._pending > self._peak:
                self._peak = self._pending
            if self._count > self._peak_items:
                self._peak_items = self._count
            start = not self._running
            self._running = True
            self._arrived.notify()  # a lingering drain task takes it
            reader = None
            short = self._account.room(self, self._pending, self.max_buffer_bytes) < 0
            if short or (self.max_items is not None and self._count >= self.max_items):
                self._holding = True
                reader = self._reader = self._loop.create_future()
        if start:
            self._start_task()
        return reader

    def body_complete(self) -> None:
        """The reader is done: ``on_drained`` follows once everything was consumed."""
        with self._lock:
            if self._stopped is not None or self._complete:
                return
            self._complete = True
            self._arrived.notify()  # a lingering drain task ends now
            drained = not self._running
            if drained:
                self._ended = True
        if drained:
            self._leave()
            self._on_drained()

    def abort(self, reason: BaseException) -> None:
        """
        The client left (or the body will never be complete): drop what is queued, run no
        more calls, and run the abort hook once the call in progress returned.
        """
        with self._lock:
            if self._stopped is not None or (self._complete and not self._running):
                return  # already stopped, or every call returned: nothing to abort
            self._stopped = reason
            self._drop()
            self._arrived.notify()  # a lingering drain task runs the hook now
            hook_now = not self._running
            if hook_now:
                self._running = True
                self._hooked = True
            release = self._account.settle(self._pending, 0)
        if release:
            self._cap.release(release)
        self._wake_reader()
        if hook_now:
            try:
                self._submit(self._hook_task)
            except Exception:  # the executor was shut down: no thread can run the hook
                app_log.error(
                    "%s: the abort hook could not be run: the executor was shut down",
                    self.where,
                    exc_info=True,
                )
                self._end()

    @property
    def stopped(self) -> bool:
        """A call raised, or the stream was aborted."""
        with self._lock:
            return self._stopped is not None

    def _wake_reader(self) -> None:
        # On the loop thread.
        reader = self._reader
        self._reader = None
        with self._lock:
            self._holding = False
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _start_task(self) -> None:
        # On the loop thread, with _running just set.
        try:
            self._submit(self._drain)
        except Exception as error:  # shut down: nothing will consume the items
            with self._lock:
                self._running = False
            self._fail(error)

    # ---------------------------------------------------------------------- worker face

    def _drain(self) -> None:
        """Consume the queue, one call at a time, then end (no thread kept while idle)."""
        # Runs in an executor thread, one such task at a time per stream.
        if threading.get_ident() == self.loop_thread:
            self._call_on_loop(
                self._fail,
                RuntimeError(
                    f"{self.where}(): the executor ran the method on the IOLoop thread; "
                    "@receive_on_executor needs an executor with threads of its own, such as "
                    "a concurrent.futures.ThreadPoolExecutor"
                ),
            )
            return
        reason: BaseException | None
        while True:
            with self._lock:
                if self._stopped is not None:
                    hook = not self._hooked
                    self._hooked = True
                    reason = self._stopped
                    break
                if not self._items and not self._complete:
                    # Linger: with a fast worker the queue is empty between two chunks most
                    # of the time; a task per chunk would cost a thread wake-up each.
                    self._arrived.wait(LINGER_SECONDS)
                    if self._stopped is not None:
                        continue
                if not self._items:
                    self._running = False
                    drained = self._complete
                    if drained:
                        self._ended = True
                    hook = False
                    reason = None
                    break
                item, nbytes = self._items.popleft()
            try:
                self._context.run(self._consume, item)
            except BaseException as error:
                if isinstance(error, StreamClosedError):
                    # Not the client leaving (that stops the stream before any call): keep it
                    # from passing for it in Tornado's error path, which would say nothing.
                    wrapped = RuntimeError(f"{self.where}() raised StreamClosedError")
                    wrapped.__cause__ = error
                    error = wrapped
                with self._lock:
                    failed = self._stopped is None
                    if failed:
                        self._stopped = error
                        self._drop()
                    self._pending -= nbytes
                    self._count -= 1
                if failed:
                    self._call_on_loop(self._fail, error)
                continue  # then the hook, in this thread, right after the call that raised
            finally:
                del item
            with self._lock:
                self._pending -= nbytes
                self._count -= 1
                self._consumed += nbytes
                self._calls += 1
                release = self._account.settle(self._pending, self.max_buffer_bytes)
                wake = self._holding and self._may_go_on()
                if wake:
                    self._holding = False
            if release:
                self._cap.release(release)
            if wake:
                self._call_on_loop(self._wake_reader)
        if reason is not None:
            if hook:
                self._run_hook(reason)
            return
        if drained:
            self._leave()
            self._call_on_loop(self._on_drained)

    def _hook_task(self) -> None:
        # Runs in an executor thread (abort() found no drain task at work).
        with self._lock:
            reason = self._stopped
        assert reason is not None
        self._run_hook(reason)

    def _run_hook(self, reason: BaseException) -> None:
        # In a worker thread, after the last call returned; once per stream.
        try:
            self._context.run(self._aborted, reason)
        except Exception:
            app_log.error("%s: the abort hook raised", self.where, exc_info=True)
        finally:
            self._end()

    def _end(self) -> None:
        with self._lock:
            self._running = False
            self._ended = True
        self._leave()

    def _drop(self) -> None:
        # Warning! Call with _lock held. The item being consumed, if any, stays pending.
        for _, nbytes in self._items:
            self._pending -= nbytes
        self._count -= len(self._items)
        self._items.clear()

    def _fail(self, error: BaseException) -> None:
        # On the loop thread: a call raised (or no call could run).
        with self._lock:
            if self._stopped is None:
                self._stopped = error
                self._drop()
        self._on_failed(error)
        self._wake_reader()

    def _call_on_loop(self, callback: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(callback, *args)

    # ---------------------------------------------------------------------- the cap

    def granted(self, nbytes: int) -> None:
        """The memory cap reserved ``nbytes`` more for this stream (any thread)."""
        with self._lock:
            if self._ended or self._stopped is not None:
                give_back = nbytes
                wake = False
            else:
                give_back = 0
                self._account.granted(nbytes)
                wake = self._holding and self._may_go_on()
                if wake:
                    self._holding = False
        if give_back:
            self._cap.release(give_back)
        if wake:
            if threading.get_ident() == self.loop_thread:
                self._wake_reader()
            else:
                self._call_on_loop(self._wake_reader)

    def _may_go_on(self) -> bool:
        # Warning! Call with _lock held. The reader that waits may read on: once half of the
        # byte limit drained (`.Account.may_go_on`), and half of the items, if they count.
        if self.max_items is not None and self._count > self.max_items // 2:
            return False
        return self._account.may_go_on(self._pending, self.max_buffer_bytes)

    def stats(self) -> tuple[int, int, int, int]:
        """``(peak pending bytes, bytes consumed, calls that returned, peak items)``."""
        with self._lock:
            return self._peak, self._consumed, self._calls, self._peak_items
