"""
The process-wide memory cap: all streams of a process share a budget of bytes.

Each stream reserves bytes here for what its producer may have produced and not yet handed
to the socket (its read-ahead window), and gives them back as its client drains them or when
it ends. While the cap is reached, a stream gets no more than it holds: its producer waits
(push style) or parks (generator style) until bytes come back, and the streams that were
refused are granted, first come first served, before anyone else gets more (`MemoryCap`
keeps them in a queue), so that no stream starves behind faster ones.

Nothing deadlocks when every stream waits: a stream that holds nothing may always produce
one chunk (*forced* bytes, counted but never refused), so it makes progress, and every byte
held is on its way to a client, which frees it. The price is that the cap can be exceeded by
at most one chunk for each stream that holds nothing else.

A stream talks to the cap a batch at a time, not per chunk: it reserves its whole window at
once and keeps it while it streams (giving back what it does not use only when the window
shrinks, or when other streams are waiting).

When what the streams hold drops to half of its high-water mark or less, by `.TRIM_BYTES`
or more, the cap has freed memory given back to the system (`._trim`).

.. warning::

   Every attribute of `MemoryCap` under "guarded by ``_lock``" is read and written with
   ``_lock`` held. A channel may call the cap while holding its own lock (lock order: a
   channel's lock, then the cap's); the cap never calls a channel while holding its lock:
   grants are delivered after it let go.
"""

from __future__ import annotations

import collections
import threading
import weakref
from typing import NamedTuple, Protocol

from ._trim import TRIM_BYTES, Trimmer, trimmer

__all__ = (
    "DEFAULT_MEMORY_CAP",
    "Account",
    "MemoryCap",
    "MemoryStats",
    "Reservation",
    "Reserver",
    "memory_cap",
)

#: The default cap (256 MiB): see the documentation's "Operating it" page.
DEFAULT_MEMORY_CAP = 256 * 1024 * 1024


class MemoryStats(NamedTuple):
    """The process-wide figures of the streams' memory (`.memory_stats`)."""

    #: Bytes the streams reserve now: what they hold, plus read-ahead they may fill.
    held: int
    #: The cap, in bytes, or ``None`` if there is none.
    limit: int | None
    #: Streams running now (responses, static files, WebSocket queues, request bodies).
    streams: int
    #: Streams waiting for bytes to come back under the cap.
    waiting: int
    #: The highest ``held`` since the process started.
    peak: int


class Reserver(Protocol):
    """What the cap needs of a stream: a way to hand it bytes it waited for."""

    def granted(self, nbytes: int) -> None:
        """``nbytes`` more are reserved for this stream (called with no lock of the cap's held)."""


class Reservation:
    """What one stream reserved; guarded by the stream's lock while the stream lives."""

    __slots__ = ("nbytes",)

    def __init__(self) -> None:
        self.nbytes = 0


class MemoryCap:
    """The shared budget. See the module docstring. Thread-safe."""

    def __init__(self, limit: int | None, trim: Trimmer | None = None) -> None:
        self._trimmer = trim  # gives freed memory back to the system (see _trim)
        self._lock = threading.Lock()
        # --- guarded by _lock ---
        self._limit = limit
        self._held = 0
        self._peak = 0
        self._high = 0  # the most held since memory was last given back
        self._streams = 0
        # Streams refused bytes, first come first served: weak references, so that a stream
        # left behind (its loop closed under it) can be collected, and give its bytes back.
        self._waiters: collections.OrderedDict[weakref.ref[Reserver], int] = (
            collections.OrderedDict()
        )

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<MemoryCap held={stats.held}/{stats.limit} streams={stats.streams} "
            f"waiting={stats.waiting} peak={stats.peak}>"
        )

    def stats(self) -> MemoryStats:
        with self._lock:
            return MemoryStats(
                self._held, self._limit, self._streams, len(self._waiters), self._peak
            )

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._held

    def set_limit(self, limit: int | None) -> None:
        with self._lock:
            self._limit = limit
            grants = self._grant()
        _deliver(grants)

    @property
    def contended(self) -> bool:
        """Streams are waiting. Read without the lock: a hint, a stale answer is harmless."""
        return bool(self._waiters)

    def join(self) -> None:
        """A stream starts."""
        with self._lock:
            self._streams += 1

    def reserve(self, stream: Reserver, force: int, want: int) -> int:
        """
        Reserve ``force`` bytes whatever the cap, and up to ``want`` more if the cap allows.

        A stream that gets less than ``want`` is queued, and granted the rest (up to what is
        free by then) before anyone else gets more, through ``stream.granted()``.

        :return: the bytes reserved now (at least ``force``).
        """
        key = weakref.ref(stream)
        with self._lock:
            self._held += force
            got = want
            if self._limit is not None and want > 0:
                ahead = bool(self._waiters) and next(iter(self._waiters)) != key
                got = 0 if ahead else max(0, min(want, self._limit - self._held))
                if got < want:
                    self._waiters[key] = want - got
                else:
                    self._waiters.pop(key, None)
            self._held += got
            self._note_held()
        return force + got

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes``: the streams waiting are granted what is free, in order."""
        with self._lock:
            self._held -= nbytes
            grants = self._grant()
            trim = self._trim_due()
        _deliver(grants)
        if trim is not None:
            trim.request()

    def leave(self, stream: weakref.ref[Reserver], reservation: Reservation) -> None:
        """
        A stream ends (or was collected), giving back what it reserved.

        Called once per stream, with no lock of the stream's held (its `weakref.finalize`).
        """
        with self._lock:
            self._streams -= 1
            self._waiters.pop(stream, None)
            self._held -= reservation.nbytes
            reservation.nbytes = 0
            grants = self._grant()
            trim = self._trim_due()
        _deliver(grants)
        if trim is not None:
            trim.request()

    def _grant(self) -> list[tuple[Reserver, int]]:
        # Warning! Call with _lock held. First come, first served: the head of the queue is
        # granted what it asked for (or all that is free), then the next, while bytes are free.
        grants: list[tuple[Reserver, int]] = []
        while self._waiters:
            free = (
                next(iter(self._waiters.values()))
                if self._limit is None
                else self._limit - self._held
            )
            if free <= 0:
                break
            key, want = next(iter(self._waiters.items()))
            stream = key()
            if stream is None:  # collected: its finalizer gives its bytes back
                del self._waiters[key]
                continue
            got = min(want, free)
            self._held += got
            if got < want:
                self._waiters[key] = want - got
            else:
                del self._waiters[key]
            grants.append((stream, got))
            if got < want:
                break
        self._note_held()
        return grants

    def _note_held(self) -> None:
        # Warning! Call with _lock held, after ``_held`` grew.
        if self._held > self._peak:
            self._peak = self._held
        if self._held > self._high:
            self._high = self._held

    def _trim_due(self) -> Trimmer | None:
        """
        The trimmer to ask, if what the streams hold dropped enough since its high-water
        mark for freed memory to be given back to the system (the mark then starts again
        from here): to half of it or less, and by `TRIM_BYTES` or more.

        Warning! Call with _lock held.
        """
        trim = self._trimmer
        if trim is None or not trim.available:
            return None
        if self._high - self._held < TRIM_BYTES or self._held > self._high // 2:
            return None
        self._high = self._held
        return trim


class Account:
    """
    One stream's side of the cap: what it reserved, and whether it waits in the cap's queue.

    The budget arithmetic every face of the engine shares (responses and request bodies
    alike): a stream reserves its limit once per window, not per chunk; bytes it already
    holds are reserved whatever the cap (*forced*: they exist); it may go on once it holds
    at most half of what it may hold. Outbound, the producer is a worker thread and the
    bytes leave through the socket; inbound, the producer is the IOLoop (Tornado reading a
    request body) and the bytes leave through the worker that consumes them.

    .. warning::

       Not thread-safe on its own: every method is called with the owning stream's lock
       held (lock order: the stream's lock, then the cap's).
    """

    __slots__ = ("_cap", "queued", "reservation")

    def __init__(self, cap: MemoryCap) -> None:
        self._cap = cap
        self.reservation = Reservation()
        self.queued = False  # waiting in the cap's queue for a grant

    @property
    def nbytes(self) -> int:
        return self.reservation.nbytes

    def room(self, stream: Reserver, pending: int, limit: int) -> int:
        """
        How many more bytes the stream may add to its ``pending`` (negative: it must wait).

        Reserves under the cap what the stream holds and, unless it already waits in the
        cap's queue, up to ``limit``: once per window, not per chunk. What the cap does not
        cover of what the stream already holds is reserved all the same (*forced*: the bytes
        exist), and the producer must wait.
        """
        reservation = self.reservation
        need = pending - reservation.nbytes
        want = 0 if self.queued else limit - max(pending, reservation.nbytes)
        if need <= 0 and want <= 0:
            return min(limit, reservation.nbytes) - pending
        ask = max(need, 0) + max(want, 0)
        got = self._cap.reserve(stream, 0, ask)
        reservation.nbytes += got
        self.queued = got < ask
        short = pending - reservation.nbytes
        if short > 0:
            reservation.nbytes += self._cap.reserve(stream, short, 0)
            return -1
        return min(limit, reservation.nbytes) - pending

    def may_go_on(self, pending: int, limit: int, half: bool = True) -> bool:
        """
        Whether a stopped producer may go on: once half of its limit drained (``half``), or
        once it is under its limit; or everything, if the cap allows it nothing more than
        it holds.
        """
        allowed = min(limit, self.reservation.nbytes)
        if half:
            return pending <= allowed // 2 or pending == 0
        return pending < allowed or pending == 0

    def settle(self, pending: int, limit: int, idle: bool = False) -> int:
        """
        After bytes drained: keep the reservation up to ``limit`` while streaming, or only
        ``pending`` when other streams wait for bytes, so that they get their turn, and when
        the stream is ``idle`` (nothing held or queued: an idle WebSocket, a producer slower
        than its client), so that idle streams hold nothing.

        :return: the bytes to give back to the cap (`MemoryCap.release`, once the stream's
            lock is let go).
        """
        keep = pending if idle or self._cap.contended else max(pending, limit)
        release = self.reservation.nbytes - keep
        if release <= 0:
            return 0
        self.reservation.nbytes = keep
        return release

    def reserve_more(self, stream: Reserver, pending: int, nbytes: int, force: bool) -> bool:
        """
        Reserve what ``nbytes`` more than ``pending`` need, for an item that must fit whole
        (a WebSocket message); whether the cap allowed it. ``force``: whatever the cap.
        """
        need = pending + nbytes - self.reservation.nbytes
        if need <= 0:
            return True
        if force:
            self.reservation.nbytes += self._cap.reserve(stream, need, 0)
            return True
        got = self._cap.reserve(stream, 0, need)
        self.reservation.nbytes += got
        self.queued = got < need
        return not self.queued

    def granted(self, nbytes: int) -> None:
        """The cap granted ``nbytes`` this stream waited for."""
        self.reservation.nbytes += nbytes
        self.queued = False


def _deliver(grants: list[tuple[Reserver, int]]) -> None:
    for stream, nbytes in grants:
        stream.granted(nbytes)


_cap = MemoryCap(DEFAULT_MEMORY_CAP, trimmer())


def memory_cap() -> MemoryCap:
    """The process's cap (one for every IOLoop and thread of the process)."""
    return _cap
