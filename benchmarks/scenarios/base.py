"""What every scenario module provides (`Scenario`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from benchmarks.harness import Bench
from benchmarks.report import Target

__all__ = ("Scenario",)


@dataclass(frozen=True)
class Scenario:
    """One scenario: how it runs, its tables in the report, and its targets."""

    name: str
    #: measures every chosen variant, recording in ``bench.runs`` and ``bench.summary``
    run: Callable[[Bench], None]
    #: the report's markdown lines for it (empty if it did not run)
    tables: Callable[[Bench], list[str]]
    #: its targets, each PASS or MISS (only those it measured)
    targets: Callable[[Bench], list[Target]]
    #: name -> size of the data files it needs
    files: Callable[[Bench], dict[str, int]]
    #: the clients it uses, for the report's header
    client: str = ""
    #: notes for the report once the tables are out
    notes: Callable[[Bench], Sequence[str]] = field(default=lambda bench: ())
