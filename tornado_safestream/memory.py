"""
What the streams of this process hold, and the cap on it.

Every stream of the process (responses streamed with `.stream_on_executor`, and the other
faces built on the same engine) reserves the bytes it may hold (produced, not yet handed to
the socket) under one process-wide cap, on by default (`DEFAULT_MEMORY_CAP`). While the cap
is reached, producers wait (push style) or park (generator style) until other streams'
clients drain, first come first served. A stream that holds nothing may always produce one
chunk, so the cap never deadlocks, and may be exceeded by at most one chunk per such stream.

For an operator: `memory_stats` gives the process's figures, and each handler's
``stream_stats`` (`StreamStats`) tells, after its stream, whether its client or its producer
was the slow one.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_MEMORY_CAP",
    "MemoryStats",
    "StreamStats",
    "memory_stats",
    "set_memory_cap",
)

import numbers

from ._core._memory import DEFAULT_MEMORY_CAP as DEFAULT_MEMORY_CAP
from ._core._memory import MemoryStats as MemoryStats
from ._core._memory import memory_cap
from ._core._stats import StreamStats as StreamStats

# Named after this module, where users import them from (reprs, pickles, the docs).
MemoryStats.__module__ = StreamStats.__module__ = __name__


def memory_stats() -> MemoryStats:
    """
    The process-wide figures now: bytes held by the streams, the cap, streams running and
    waiting, and the peak. Thread-safe.
    """
    return memory_cap().stats()


def set_memory_cap(limit: int | None) -> None:
    """
    Set the cap on the bytes all streams of the process may hold at once.

    Takes effect at once, for the streams running too: streams waiting are granted what a
    larger cap frees; under a smaller one, streams hold no more than they already do until
    enough drained. Thread-safe.

    :param limit: bytes, or ``None`` for no cap. The default is `DEFAULT_MEMORY_CAP`.
    :raises TypeError: if ``limit`` is not an int or ``None``.
    :raises ValueError: if ``limit`` is not positive.
    """
    if limit is not None:
        if not isinstance(limit, numbers.Integral) or isinstance(limit, bool):
            raise TypeError(f"set_memory_cap() takes a number of bytes or None, not {limit!r}")
        if limit <= 0:
            raise ValueError(f"set_memory_cap() takes a positive number of bytes, not {limit}")
        limit = int(limit)
    memory_cap().set_limit(limit)
