"""
What a benchmark run measures: the server variants, the scenarios' sizes (`FULL`, `QUICK`)
and the units the figures are given in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = (
    "ALL_LABELS",
    "BIG_VARIANTS",
    "BLOCKING_VARIANTS",
    "COLD_VARIANTS",
    "CONCURRENT_VARIANTS",
    "FULL",
    "MB",
    "QUICK",
    "SEED",
    "SLOW_VARIANTS",
    "STALLED_VARIANTS",
    "THROUGHPUT_VARIANTS",
    "WS_VARIANTS",
    "GiB",
    "KiB",
    "MiB",
    "Plan",
    "Variant",
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1e6
#: The data files' random bytes come from this seed: the same files in every run.
SEED = 20240601


@dataclass(frozen=True)
class Variant:
    """One way of serving a file: a ``servers.py`` variant, with assertion mode or not."""

    style: str  # the servers.py variant
    assertions: bool = False

    @property
    def label(self) -> str:
        return f"{self.style}+assert" if self.assertions else self.style


def _variants(*labels: str) -> tuple[Variant, ...]:
    return tuple(Variant(label.split("+")[0], label.endswith("+assert")) for label in labels)


THROUGHPUT_VARIANTS = _variants(
    "static",
    "loop",
    "executor",
    "broken",
    "push",
    "generator",
    "push+assert",
    "generator+assert",
)
#: big adds SafeStaticFileHandler (small does not: static variants ignore the chunk size)
BIG_VARIANTS = (*THROUGHPUT_VARIANTS, *_variants("safe-static"))
CONCURRENT_VARIANTS = _variants("static", "safe-static", "loop", "push", "generator")
BLOCKING_VARIANTS = _variants("executor", "push", "generator")
SLOW_VARIANTS = _variants("static", "safe-static", "executor", "push", "generator")
STALLED_VARIANTS = _variants("static", "push", "generator")
COLD_VARIANTS = _variants("static", "safe-static")
#: a worker thread sending on a WebSocket: SafeWebSocketMixin, and IOLoop.add_callback
WS_VARIANTS = _variants("ws-mixin", "ws-callback")
ALL_LABELS = tuple(
    dict.fromkeys(v.label for v in (*BIG_VARIANTS, *CONCURRENT_VARIANTS, *WS_VARIANTS))
)


@dataclass(frozen=True)
class Plan:
    """Sizes of one kind of run."""

    name: str
    big_size: int = 128 * MiB
    big_chunk: int = 64 * KiB
    #: interleaved passes per round: the short runs get more, to take their noise out
    passes: tuple[tuple[str, int], ...] = (("big", 5), ("small", 2))
    small_size: int = 16 * MiB
    small_chunk: int = 1 * KiB
    #: clients at once in the concurrent scenario (each count measured on its own)
    concurrent_clients: tuple[int, ...] = (16, 64)
    concurrent_size: int = 16 * MiB
    #: curl processes the concurrent clients are spread over (each runs ``--parallel``)
    concurrent_curls: int = 2
    #: how long each wrk cross-check runs
    wrk_seconds: float = 2.0
    blocking_clients: int = 16
    blocking_size: int = 16 * MiB
    blocking_chunk: int = 64 * KiB
    blocking_sleep: float = 0.001  # seconds per chunk, as a database would
    blocking_target: float = 0.9  # of what the threads can produce in parallel
    slow_clients: int = 40
    slow_rate: int = 256 * KiB  # bytes per second, each
    slow_seconds: float = 8.0
    slow_size: int = 64 * MiB
    slow_served: int = 256 * KiB  # a client that received this much was served
    slow_rss_limit: int = 16 * MiB  # the slow scenario's target for the RSS growth
    ping_interval: float = 0.05
    stalled_streams: int = 1000
    stalled_size: int = 2 * MiB
    stalled_probes: int = 10
    stalled_rounds: int = 2  # at most this many rounds of the stalled scenario
    stalled_read_timeout: float = 120.0  # for every stalled client to read to the end
    stalled_allowance: int = 48 * MiB  # stalled target: the library's cap + this
    settle_seconds: float = 1.5  # "RSS kept after": measured this long after the last stream
    stall_threads: int = 4  # executor threads in the slow and stalled scenarios
    probe_size: int = 64 * KiB  # the "fresh small download"
    fresh_timeout: float = 1.0  # a fresh request in the stalled scenario gives up after this
    fresh_target_ms: float = 50.0  # the stalled scenario's target for a fresh request
    upload_size: int = 1 * GiB  # one PUT per upload style
    upload_ping_interval: float = 0.005  # seconds between /ping requests during an upload
    #: cold: files of this size (each one byte longer than the last: a file of its own),
    #: downloaded all at once, their page cache dropped before each wave
    cold_files: int = 4
    cold_size: int = 64 * MiB
    cold_waves: int = 4  # waves of downloads a run (each file once a wave)
    cold_ping_interval: float = 0.01
    cold_ping_target: float = 0.2  # /ping p99 vs static's, at most
    #: ws-rate: this many messages of this size from a worker thread to one client
    ws_messages: int = 100_000
    ws_message_size: int = 100
    ws_rate_target: float = 3.0  # messages/s vs add_callback's, at least
    #: ws-stalled: a client that stops reading while a thread sends for this long
    ws_stall_seconds: float = 10.0
    ws_stall_message_size: int = 1 * KiB
    ws_stall_allowance: int = 4 * MiB  # RSS target: max_buffer_bytes + this

    def passes_of(self, scenario: str) -> int:
        """Interleaved passes a round for *scenario* (1 unless `passes` says otherwise)."""
        return dict(self.passes).get(scenario, 1)


FULL = Plan("full")
QUICK = Plan(
    "quick",
    big_size=32 * MiB,
    small_size=4 * MiB,
    concurrent_clients=(16,),
    concurrent_size=4 * MiB,
    wrk_seconds=1.0,
    blocking_size=2 * MiB,
    slow_clients=10,
    slow_seconds=3.0,
    slow_size=16 * MiB,
    stalled_streams=200,
    stalled_probes=5,
    upload_size=256 * MiB,
    passes=(("big", 2), ("small", 1)),
    cold_size=8 * MiB,
    cold_waves=2,
    ws_messages=20_000,
    ws_stall_seconds=2.0,
)
