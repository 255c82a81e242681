"""A stream's figures, for ``on_finish``, the access log and operators."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ("StreamStats",)


class StreamStats(NamedTuple):
    """
    What one stream did: ``handler.stream_stats`` (`.SafeStreamMixin.stream_stats`).

    ``producer_blocked`` large and ``client_waited`` small: the client is slow (the producer
    waited for it). The other way round: the producer is slow (a query, a disk), and the
    client waited for it.
    """

    #: Body bytes the producer handed to the response (before compression or chunk framing).
    bytes_sent: int
    #: Seconds the producer waited for the client: blocked (push) or parked (generator)
    #: because its read-ahead was full or the process-wide memory cap was reached.
    producer_blocked: float
    #: Seconds the response waited for the producer, with nothing new to send (including
    #: the time to the first chunk).
    client_waited: float
    #: The most bytes the stream held at once: produced, not yet handed to the socket.
    peak_bytes: int
    #: The stream's read-ahead window at the end (at most ``max_buffer_bytes``): what a client
    #: as fast as this one may have waiting for it.
    window: int
    #: Seconds from the start of the stream to the end of the producer.
    duration: float

    def __str__(self) -> str:
        """A compact form for a log line."""
        return (
            f"sent={self.bytes_sent}B blocked={self.producer_blocked:.3f}s "
            f"waited={self.client_waited:.3f}s peak={self.peak_bytes}B window={self.window}B "
            f"duration={self.duration:.3f}s"
        )
