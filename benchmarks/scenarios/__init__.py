"""
The benchmark's scenarios, one module each, in the order a full run measures them.

Each module has a ``SCENARIO`` (`~benchmarks.scenarios.base.Scenario`): how it runs, its
tables, its targets and the data files it needs.
"""

from __future__ import annotations

from benchmarks.scenarios import (
    big,
    blocking,
    cold,
    concurrent,
    slow,
    small,
    stalled,
    upload,
    ws_rate,
    ws_stalled,
)
from benchmarks.scenarios.base import Scenario

__all__ = ("SCENARIOS", "Scenario")

#: name -> scenario, in the order a run measures them
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        big.SCENARIO,
        small.SCENARIO,
        concurrent.SCENARIO,
        blocking.SCENARIO,
        slow.SCENARIO,
        stalled.SCENARIO,
        upload.SCENARIO,
        cold.SCENARIO,
        ws_rate.SCENARIO,
        ws_stalled.SCENARIO,
    )
}
