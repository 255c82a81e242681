"""
Waking a loop's consumers from producer threads: one loop wake-up for many streams.

``loop.call_soon_threadsafe()`` writes to the loop's self-pipe, a system call, and the loop
then reads it: per chunk of every stream, that adds up. A producer that finds its consumer
idle asks the loop's `Waker` instead: the first request since the loop last ran it schedules
one callback; the others only join its list, and that one callback wakes them all.

.. warning::

   Every attribute of `Waker` under "guarded by ``_lock``" is read and written with
   ``_lock`` held; `Waker.wake` is called from any thread, `Waker._run` on the loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Callable

__all__ = ("Waker", "waker_for")


class Waker:
    """One loop's coalesced wake-ups. See the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry's value must not keep its key, the loop, alive.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        # --- guarded by _lock ---
        self._due: list[Callable[[], None]] = []
        self._scheduled = False

    def __repr__(self) -> str:
        with self._lock:
            return f"<Waker due={len(self._due)} scheduled={self._scheduled}>"

    def wake(self, callback: Callable[[], None]) -> None:
        """
        Have the loop call ``callback`` soon (any thread).

        :raises RuntimeError: if the loop is closed.
        """
        with self._lock:
            self._due.append(callback)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop = self._loop()
            if loop is None:
                raise RuntimeError("Event loop is closed")
            loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # closed: nothing will run; the next caller is told so too
            with self._lock:
                self._scheduled = False
                self._due.clear()
            raise

    def _run(self) -> None:
        with self._lock:
            due = self._due
            self._due = []
            self._scheduled = False
        for callback in due:
            callback()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Waker] = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


def waker_for(loop: asyncio.AbstractEventLoop) -> Waker:
    """The loop's waker (it keeps only a weak reference from the registry to the loop)."""
    with _wakers_lock:
        waker = _wakers.get(loop)
        if waker is None:
            waker = _wakers[loop] = Waker(loop)
        return waker
