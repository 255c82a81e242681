"""
Giving memory back to the operating system once the streams let go of it.

A stream's chunks are allocated by producer threads and freed on the loop. The C library's
allocator (glibc) keeps freed memory in its arenas, one per thread that allocated, for
reuse, instead of giving it back: after a burst of a thousand stalled streams, the process
would keep its peak resident size for good. So when the bytes the streams hold fall to half
of their high-water mark or less, and by `TRIM_BYTES` or more (`.MemoryCap` tells,
`Trimmer.request`), ``malloc_trim(0)`` runs once, `DELAY_SECONDS` later (the last chunks
are freed once the socket has them), in a short-lived thread of its own (it walks every
arena: not on the loop), at most once every `EVERY_SECONDS`. Where the C library has no
``malloc_trim`` (musl, macOS, Windows), nothing happens.

.. warning::

   Every attribute of `Trimmer` under "guarded by ``_lock``" is read and written with
   ``_lock`` held; `Trimmer.request` is called from any thread.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from typing import Callable

__all__ = ("DELAY_SECONDS", "EVERY_SECONDS", "TRIM_BYTES", "Trimmer", "trimmer")

#: A drop of the streams' bytes from their high-water mark worth trimming for.
TRIM_BYTES = 32 * 1024 * 1024
#: How long after the drop the trim runs.
DELAY_SECONDS = 0.2
#: The least time between two trims.
EVERY_SECONDS = 1.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim  # (glibc; ctypes lets go of the GIL in it)
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


class Trimmer:
    """Runs ``malloc_trim`` off the loop when asked, at most once a while. Thread-safe."""

    def __init__(self, trim: Callable[[int], int] | None) -> None:
        self._trim = trim
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # notified after each trim
        # --- guarded by _lock ---
        self._scheduled = False  # a thread will trim
        self._last = float("-inf")  # when the last trim started
        self._count = 0  # trims done

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Trimmer available={self._trim is not None} scheduled={self._scheduled} "
                f"trims={self._count}>"
            )

    @property
    def available(self) -> bool:
        """Whether this C library can give memory back (``malloc_trim``)."""
        return self._trim is not None

    @property
    def count(self) -> int:
        """The trims done so far."""
        with self._lock:
            return self._count

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` trims are done, up to ``timeout`` seconds; whether they are."""
        with self._done:
            return self._done.wait_for(lambda: self._count >= count, timeout)

    def request(self) -> None:
        """Have memory given back soon (any thread; never blocks on the trim itself)."""
        if self._trim is None:
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
            delay = max(DELAY_SECONDS, self._last + EVERY_SECONDS - time.monotonic())
        thread = threading.Thread(
            target=self._run, args=(delay,), name="tornado_safestream trim", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down: nothing to give back
            with self._lock:
                self._scheduled = False

    def forget_after_fork(self) -> None:
        """In a child process just forked: a trim the parent scheduled has no thread here."""
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._scheduled = False

    def _run(self, delay: float) -> None:
        # In its own thread: the delay lets the last chunks of the drop be freed first.
        time.sleep(delay)
        with self._lock:
            self._last = time.monotonic()
        try:
            assert self._trim is not None
            self._trim(0)
        finally:
            with self._lock:
                self._scheduled = False
                self._count += 1
                self._done.notify_all()


_trimmer = Trimmer(_find_malloc_trim())
if hasattr(os, "register_at_fork"):  # (not on Windows)
    os.register_at_fork(after_in_child=_trimmer.forget_after_fork)


def trimmer() -> Trimmer:
    """The process's trimmer."""
    return _trimmer
