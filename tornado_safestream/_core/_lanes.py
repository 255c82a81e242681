"""
Lanes: where generator producers that compute run, so that many streams don't fight the loop.

A generator producer whose ``next()`` mostly keeps the interpreter busy (reading a file from
the page cache, formatting rows) gains nothing from running beside others in more threads:
with the GIL only one of them runs at a time, and every extra thread adds hand-offs of the
interpreter that the IOLoop's thread then waits behind. So such producers share a *lane*: a
queue served by as few executor threads as there are processors that can run Python at
once (one with the GIL, the executor's size without it). The loop adds a producer to the
queue (one lock round trip, no thread woken when a runner is already at work), and a runner
pulls each producer in turn for a short slice, first come first served.

A producer that mostly waits (a database cursor, a network file system, ``time.sleep``)
is not put in a lane: it gets an executor task of its own, as before, so that such producers
wait in parallel, up to the executor's size. Which is which is measured (`Pacing`): the
thread's CPU time against the wall-clock time of each pull. And if the runners are stuck in
one slice each (producers that started to wait), a watch on the loop starts another runner for
the queue behind them, at most every `STUCK_SECONDS`.

.. warning::

   Every attribute of `Lane` under "guarded by ``_lock``" is read and written with ``_lock``
   held. A producer is in a lane's queue, or run by one runner, or parked in its channel,
   never two of these at once: its state passes from thread to thread through those locks.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import sys
import threading
import time
import weakref
from typing import Callable

__all__ = ("OWN_TASK_SECONDS", "SLICE_SECONDS", "Lane", "Pacing", "lane_for")

#: How long a runner pulls one producer before it takes the next one in the queue.
SLICE_SECONDS = 0.002
#: How long a producer's task of its own pulls before one that computes goes to the lane.
OWN_TASK_SECONDS = 0.01
#: How long a runner with nothing to do waits for more before it gives its thread back.
LINGER_SECONDS = 0.005
#: A runner busy with one slice for longer than this is stuck (its producer blocks): the
#: next producer added gets a runner of its own.
STUCK_SECONDS = 0.02
#: A producer whose thread ran for less than this share of a pull's time mostly waits.
_WAITS_BELOW = 0.25
#: Pulls shorter than this say nothing of the producer.
_MEASURABLE_SECONDS = 0.0005
#: A producer out of the lanes tries one again after this many pulls of its own.
_RETRY_LANE_EVERY = 8

#: Runs a callable in an executor thread (on the loop thread; may raise if shut down).
Submit = Callable[[Callable[[], None]], None]
#: One slice of a producer: returns whether it wants another slice.
Slice = Callable[[], bool]


def _parallel_threads(executor: concurrent.futures.Executor | None) -> int:
    """How many threads can run Python at once: 1 with the GIL, else the executor's size."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is None or is_gil_enabled():
        return 1
    return max(1, getattr(executor, "_max_workers", 1))


class Pacing:
    """
    Whether a producer computes (CPU-bound) or waits, from its pulls.

    A pull's thread CPU time against its wall-clock time tells, but only in a lane: in a
    task of its own, beside many other threads, a producer also waits for the interpreter
    (the GIL), and would look as if it waited for I/O. So a producer goes to the lane after
    its first pull, leaves it when a slice there shows that it waits, and tries the lane
    again every few resumes (or when a pull of its own shows that it computes).

    Owned by whichever thread runs the producer; the loop reads `computes` only after the
    producer parked, which the channel's lock orders after the last write.
    """

    __slots__ = ("_cpu", "_own_pulls", "_wall", "computes")

    def __init__(self) -> None:
        self.computes = True
        self._own_pulls = 0
        self._cpu = 0.0
        self._wall = 0.0

    def start(self) -> None:
        self._cpu = time.thread_time()
        self._wall = time.monotonic()

    def stop(self, in_lane: bool) -> None:
        wall = time.monotonic() - self._wall
        if wall < _MEASURABLE_SECONDS:
            return  # too short to say anything
        computes = time.thread_time() - self._cpu >= _WAITS_BELOW * wall
        if in_lane:
            self.computes = computes
        else:
            self._own_pulls += 1
            self.computes = computes or self._own_pulls % _RETRY_LANE_EVERY == 0


class Lane:
    """A queue of producer slices and the runners that serve it. See the module docstring."""

    def __init__(self, width: int) -> None:
        self._width = width
        self._lock = threading.Lock()
        # A runner with nothing to do lingers here a moment for more: `add` wakes it instead of
        # starting a new executor task.
        self._more = threading.Condition(self._lock)
        # --- guarded by _lock ---
        self._ready: collections.deque[Slice] = collections.deque()
        self._runners = 0
        self._lingering = 0
        self._busy_since: dict[int, float] = {}  # runner thread -> start of its slice
        self._watching = False  # a timer will look for stuck runners

    def __repr__(self) -> str:
        with self._lock:
            return f"<Lane ready={len(self._ready)} runners={self._runners} width={self._width}>"

    def add(self, work: Slice, submit: Submit) -> None:
        """
        Queue ``work``; start a runner with ``submit`` if none is free.

        :param submit: runs a callable in the lane's executor (it is called on the loop
            thread, and may raise if the executor was shut down).
        """
        with self._lock:
            self._ready.append(work)
            if self._lingering:
                self._more.notify()
                start = False
            else:
                start = self._runners < self._width or self._all_stuck()
            if start:
                self._runners += 1
            watch = not start and not self._watching
            self._watching = self._watching or watch
        if start:
            try:
                submit(self._run)
            except BaseException:
                with self._lock:
                    self._runners -= 1
                    self._ready.remove(work)
                raise
        elif watch:
            # The runners are busy: if they stay in one slice (producers that started to
            # wait), the queue must not wait behind them.
            asyncio.get_running_loop().call_later(STUCK_SECONDS, self._watch, submit)

    def _watch(self, submit: Submit) -> None:
        # On the loop thread, STUCK_SECONDS after work was queued behind busy runners.
        with self._lock:
            start = bool(self._ready) and self._all_stuck()
            if start:
                self._runners += 1
            # Watch on while work is queued: the new runner takes one item, and may get stuck.
            self._watching = len(self._ready) > int(start)
            watch = self._watching
        if start:
            try:
                submit(self._run)
            except Exception:  # shut down: the busy runners take the queue when they are done
                with self._lock:
                    self._runners -= 1
        if watch:
            asyncio.get_running_loop().call_later(STUCK_SECONDS, self._watch, submit)

    def _all_stuck(self) -> bool:
        # Warning! Call with _lock held.
        if len(self._busy_since) < self._runners:
            return False  # a runner is between slices: it will take this one
        now = time.monotonic()
        return all(now - since > STUCK_SECONDS for since in self._busy_since.values())

    def _run(self) -> None:
        # Runs in an executor thread until the queue is empty.
        me = threading.get_ident()
        while True:
            with self._lock:
                if not self._ready:
                    self._lingering += 1
                    self._more.wait(LINGER_SECONDS)
                    self._lingering -= 1
                if not self._ready:
                    self._runners -= 1
                    self._busy_since.pop(me, None)
                    return
                work = self._ready.popleft()
                self._busy_since[me] = time.monotonic()
            again = work()
            with self._lock:
                self._busy_since.pop(me, None)
                if again:
                    self._ready.append(work)


_executor_lanes: weakref.WeakKeyDictionary[object, Lane] = weakref.WeakKeyDictionary()
_lanes_lock = threading.Lock()


def lane_for(key: object, executor: concurrent.futures.Executor | None) -> Lane:
    """The lane of an executor (``key``: the executor, or the loop for its default one)."""
    with _lanes_lock:
        lane = _executor_lanes.get(key)
        if lane is None:  # (it keeps no reference to its key: the key can be collected)
            lane = _executor_lanes[key] = Lane(_parallel_threads(executor))
        return lane
