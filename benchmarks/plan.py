"""
What a benchmark run measures: the server variants, the scenarios' sizes (`FULL`, `QUICK`)
and the units the figures are given in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = (
    "ALL_LABELS",
    "FULL",
    "MB",
    "QUICK",
    "SEED",
    "SLOW_VARIANTS",
    "STALLED_VARIANTS",
    "THROUGHPUT_VARIANTS",
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
SLOW_VARIANTS = _variants("static", "executor", "push", "generator")
STALLED_VARIANTS = _variants(
    "static", "executor", "push", "generator", "push+assert", "generator+assert"
)
ALL_LABELS = tuple(v.label for v in THROUGHPUT_VARIANTS)


@dataclass(frozen=True)
class Plan:
    """Sizes of one kind of run."""

    name: str
    big_size: int = 128 * MiB
    big_chunk: int = 64 * KiB
    #: interleaved passes per round: the short runs get more, to take their noise out
    passes: tuple[tuple[str, int], ...] = (("big", 5), ("small", 2), ("concurrent", 3))
    small_size: int = 16 * MiB
    small_chunk: int = 1 * KiB
    concurrent_clients: int = 16
    concurrent_size: int = 16 * MiB
    concurrent_processes: int = 4
    slow_clients: int = 40
    slow_rate: int = 256 * KiB  # bytes per second, each
    slow_seconds: float = 8.0
    slow_size: int = 64 * MiB
    slow_served: int = 256 * KiB  # a client that received this much was served
    ping_interval: float = 0.05
    stalled_streams: int = 200
    stalled_probes: int = 10
    stall_threads: int = 4  # executor threads in the slow and stalled scenarios
    probe_size: int = 64 * KiB  # the "fresh small download"
    fresh_timeout: float = 1.0  # a fresh request in the stalled scenario gives up after this
    rss_allowance: int = 16 * MiB  # slow target: clients x max_buffer_bytes + this

    def passes_of(self, scenario: str) -> int:
        """Interleaved passes a round for *scenario* (1 unless `passes` says otherwise)."""
        return dict(self.passes).get(scenario, 1)


FULL = Plan("full")
QUICK = Plan(
    "quick",
    big_size=32 * MiB,
    small_size=4 * MiB,
    concurrent_clients=8,
    concurrent_size=4 * MiB,
    concurrent_processes=2,
    slow_clients=10,
    slow_seconds=3.0,
    slow_size=16 * MiB,
    stalled_streams=50,
    stalled_probes=5,
    passes=(("big", 2), ("small", 1), ("concurrent", 1)),
)
