"""
Read-ahead that fits the client: how many bytes of a stream may wait for its client.

A stream's *window* is the most its producer may have produced and not yet handed to the
socket. ``max_buffer_bytes`` is its ceiling, not the size every stream fills: a fast client
gets a window that keeps its socket full, a slow one only what it takes in `HORIZON`
seconds (at least `MIN_WINDOW`), so that a thousand slow clients do not each hold a
megabyte.

The consumer reports every flush (`ReadAhead.observe`): how many bytes, how long the socket
took to take them, and whether it took them all at once. A socket that takes a flush at once
is not what limits the stream: the window doubles, at most once every `GROW_SECONDS`, and
never beyond what the client's average rate since the stream started (counted over at least
`RAMP_SECONDS`) takes in `HORIZON` seconds, so that the kernel's socket buffers filling in
the first milliseconds of a slow client, or of one that then stops reading, do not pass for
a fast client. Where the kernel tells how many bytes wait in the socket's send queue (Linux),
those do not count as taken by the client, and a queue of a window or more (the kernel
already buffers more for this client than its window would) shrinks the window to what the
client takes on average (a slow client, or one that stopped reading). A socket that makes a
flush wait tells the client's rate: the window becomes what the client takes in `HORIZON`
seconds.

.. warning::

   Loop-owned: only the consumer, on the IOLoop thread, uses a `ReadAhead`.
"""

from __future__ import annotations

__all__ = ("GROW_SECONDS", "HORIZON", "MIN_WINDOW", "RAMP_SECONDS", "START_WINDOW", "ReadAhead")

#: The smallest window: one typical chunk.
MIN_WINDOW = 64 * 1024
#: A new stream's window, before anything is known about its client.
START_WINDOW = 128 * 1024
#: Seconds of the client's measured rate that a stream may hold for it.
HORIZON = 0.05
#: The window doubles at most once in this many seconds.
GROW_SECONDS = 0.005
#: While a stream is younger than this, its average rate is counted over this long.
RAMP_SECONDS = 0.25


class ReadAhead:
    """The adaptive window of one stream. See the module docstring."""

    __slots__ = ("_grown_at", "_sent", "_started", "ceiling", "window")

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.window = min(START_WINDOW, ceiling)
        self._grown_at = float("-inf")
        self._started: float | None = None  # the first flush's start
        self._sent = 0  # bytes of every flush observed

    def __repr__(self) -> str:
        return f"<ReadAhead window={self.window}/{self.ceiling}>"

    def observe(
        self, nbytes: int, seconds: float, kept_up: bool, now: float, queued: int | None = None
    ) -> int:
        """
        A flush of ``nbytes`` was handed to the socket ``seconds`` after it was made.

        :param kept_up: the socket took the whole flush at once (the client is not what
            limits the stream).
        :param now: ``time.monotonic()``.
        :param queued: the bytes the kernel holds in the socket's send queue, if known: they
            are not counted as taken by the client, and when they are a window or more, the
            window shrinks to what the client takes on average in `HORIZON` seconds.
        :return: the new window.
        """
        if self._started is None:
            self._started = now - seconds
        self._sent += nbytes
        # What the client's side took since the start (what the kernel still queues is not),
        # counted over at least RAMP_SECONDS.
        delivered = self._sent - (queued or 0)
        average = max(delivered, 0) / max(now - self._started, RAMP_SECONDS)
        if kept_up:
            if self.window < self.ceiling and now - self._grown_at >= GROW_SECONDS:
                self.window = min(
                    self.ceiling, self.window * 2, max(self.window, int(average * HORIZON))
                )
                self._grown_at = now
        elif nbytes >= MIN_WINDOW // 4 and seconds > 0:
            rate = nbytes / seconds
            self.window = min(self.ceiling, max(MIN_WINDOW, int(rate * HORIZON)))
        if queued is not None and queued >= self.window:
            # The kernel buffers a window or more for this client already: what the client
            # takes on average is all the window needs.
            self.window = min(self.window, max(MIN_WINDOW, int(average * HORIZON)))
        return self.window
