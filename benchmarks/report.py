"""
The benchmark's report: number formatting, markdown tables, the targets (each PASS or MISS)
and the results files (``latest.md``, ``latest.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.harness import Bench
from benchmarks.stats import ratio

__all__ = (
    "Cell",
    "Target",
    "fmt",
    "fmt_busy",
    "fmt_ratio",
    "get",
    "markdown_table",
    "no_wrong_bodies",
    "ratio_figure",
    "ratio_targets",
    "section",
    "write_results",
)

#: One cell of a report table, from a variant's summary.
Cell = Callable[[dict[str, Any]], str]

SAFE = ("push", "generator")


@dataclass
class Target:
    """One target of the benchmark, and whether this run met it."""

    what: str
    variant: str
    figure: str
    limit: str
    passed: bool


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def fmt_busy(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}%"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in rows
    ]


def get(bench: Bench, scenario: str, label: str, key: str) -> Any:
    """A figure of the summary, ``None`` where it was not measured."""
    return bench.summary.get(scenario, {}).get(label, {}).get(key)


def section(
    bench: Bench,
    scenario: str,
    title: str,
    columns: Sequence[tuple[str, Cell]],
    first: str = "variant",
) -> list[str]:
    """A scenario's table: a row per variant of its summary, the columns given."""
    if scenario not in bench.summary:
        return []
    rows = [
        [label] + [cell(v) for _, cell in columns] for label, v in bench.summary[scenario].items()
    ]
    return ["", title, "", *markdown_table([first] + [name for name, _ in columns], rows)]


def ratio_figure(r: float, limit: float | None) -> str:
    # three decimals where two would hide which side of the limit it is on
    return f"{r:.3f}x" if limit is not None and round(r, 2) == limit else f"{r:.2f}x"


def no_wrong_bodies(where: str, label: str, figures: dict[str, Any]) -> Target:
    """The target that none of a variant's ``runs`` downloads was ``bad`` (short or wrong)."""
    bad = figures["bad"]
    return Target(f"{where}: wrong bodies", label, f"{bad} of {figures['runs']}", "0", bad == 0)


def ratio_targets(
    bench: Bench,
    what: str,
    scenario: str,
    key: str,
    ref: str,
    low: float | None,
    high: float | None,
    labels: Sequence[str] = SAFE,
    unit: Callable[[float], str] | None = None,
) -> list[Target]:
    """For each of *labels*: its *key* over *ref*'s, >= *low* or <= *high*."""
    targets = []
    for label in labels:
        value = get(bench, scenario, label, key)
        r = ratio(value, get(bench, scenario, ref, key))
        if r is None:
            continue
        limit = low if low is not None else high
        figure = ratio_figure(r, limit)
        if unit is not None:
            figure = f"{unit(value)}, {figure}"
        if low is not None:
            targets.append(Target(what, label, figure, f">= {low:.2f}x", r >= low))
        elif high is not None:
            targets.append(Target(what, label, figure, f"<= {high:.2f}x", r <= high))
    return targets


def targets_table(targets: Sequence[Target]) -> list[str]:
    if not targets:
        return []
    lines = ["", "**targets**", ""]
    lines += markdown_table(
        ["target", "variant", "figure", "limit", ""],
        [[t.what, t.variant, t.figure, t.limit, "PASS" if t.passed else "MISS"] for t in targets],
    )
    passed = sum(t.passed for t in targets)
    lines += ["", f"{passed} of {len(targets)} targets PASS."]
    return lines


def write_results(output: Path, text: str, results: dict[str, Any]) -> None:
    """``latest.md`` (the report) and ``latest.json`` (every figure) in *output*."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "latest.md").write_text(text, "utf-8")
    (output / "latest.json").write_text(json.dumps(results, indent=1) + "\n", "utf-8")


def targets_json(targets: Sequence[Target]) -> list[dict[str, Any]]:
    return [asdict(t) for t in targets]
