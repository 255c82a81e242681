"""
Draw the chart of a benchmark run, for the documentation's benchmarks page.

``python3 benchmarks/chart.py [RESULTS.json] [--output DIR]`` reads the JSON that
``python3 run.py bench`` writes (``benchmarks/results/latest.json`` by default) and writes
into ``DIR`` (``docs/_static/benchmarks`` by default):

- ``benchmarks.png``: one panel per scenario of the run: throughput (MB/s, medians with
  their interquartile range) or the server's RSS growth (MiB), each variant a bar, the
  library's variants in colour and the references in grey;
- ``run.md``: the run's own report (``latest.md`` beside the JSON: the command, date, git
  commit and machine, then every table), for the page to include.

Needs matplotlib (``pip install -e '.[chart]'``); nothing else of the benchmarks does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
DEFAULT_OUTPUT = ROOT / "docs" / "_static" / "benchmarks"

#: The variants that are the library; the others are references to compare with.
LIBRARY = ("push", "generator", "push+assert", "generator+assert", "safe-static", "ws-mixin")
LIBRARY_COLOUR = "#2a7ab0"
REFERENCE_COLOUR = "#9a9a9a"
BROKEN_COLOUR = "#c0504d"
MIB = 1024 * 1024


@dataclass
class Bar:
    variant: str
    value: float
    low: float | None = None  # interquartile range, where the run has one
    high: float | None = None


@dataclass
class Panel:
    title: str
    unit: str
    bars: list[Bar]
    lower_is_better: bool = False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _throughput(summary: dict[str, Any]) -> list[Bar]:
    bars = []
    for variant, figures in summary.items():
        mbps = _number(figures.get("mbps"))
        if mbps is None:
            continue
        iqr = figures.get("mbps_iqr")
        low = high = None
        if isinstance(iqr, list) and len(iqr) == 2:
            low, high = _number(iqr[0]), _number(iqr[1])
        bars.append(Bar(variant, mbps, low, high))
    return bars


def _rss(summary: dict[str, Any]) -> list[Bar]:
    bars = []
    for variant, figures in summary.items():
        growth = _number(figures.get("rss_growth"))
        if growth is not None:
            bars.append(Bar(variant, growth / MIB))
    return bars


def _field(summary: dict[str, Any], name: str, scale: float = 1.0) -> list[Bar]:
    bars = []
    for variant, figures in summary.items():
        value = _number(figures.get(name))
        if value is not None:
            bars.append(Bar(variant, value / scale))
    return bars


def _largest(keys: list[str], pattern: str) -> list[str]:
    """The keys matching ``pattern`` (with a ``(?P<threads>\\d+)`` group), most threads only."""
    matches = [(key, re.fullmatch(pattern, key)) for key in keys]
    found = [(key, int(m["threads"])) for key, m in matches if m is not None]
    if not found:
        return []
    most = max(threads for _, threads in found)
    return [key for key, threads in found if threads == most]


def panels(results: dict[str, Any]) -> list[Panel]:
    """The panels to draw, in the order of the benchmarks page."""
    summary: dict[str, Any] = results.get("summary", {})
    plan: dict[str, Any] = results.get("plan", {})
    keys = list(summary)
    out: list[Panel] = []
    if "big" in summary:
        size = plan.get("big_size", 0) // MIB
        out.append(Panel(f"big: one client, {size} MiB", "MB/s", _throughput(summary["big"])))
    if "small" in summary:
        chunk = plan.get("small_chunk", 0)
        out.append(
            Panel(f"small: {chunk} B chunks, one client", "MB/s", _throughput(summary["small"]))
        )
    for key in _largest(keys, r"concurrent/curl/(?P<clients>\d+)c/(?P<threads>\d+)t"):
        clients, threads = re.findall(r"\d+", key)[:2]
        out.append(
            Panel(
                f"concurrent: {clients} clients, {threads} threads",
                "MB/s (all clients)",
                _throughput(summary[key]),
            )
        )
    for key in _largest(keys, r"blocking/(?P<threads>\d+)t"):
        threads = re.findall(r"\d+", key)[0]
        out.append(
            Panel(
                f"blocking producer: {threads} threads",
                "MB/s (all clients)",
                _throughput(summary[key]),
            )
        )
    if "slow" in summary:
        clients = plan.get("slow_clients", "")
        out.append(
            Panel(
                f"slow: {clients} slow clients",
                "server RSS growth, MiB",
                _rss(summary["slow"]),
                lower_is_better=True,
            )
        )
    if "stalled" in summary:
        streams = plan.get("stalled_streams", "")
        out.append(
            Panel(
                f"stalled: {streams} streams not read",
                "server RSS growth, MiB",
                _rss(summary["stalled"]),
                lower_is_better=True,
            )
        )
    if "cold" in summary:
        out.append(
            Panel(
                "cold files: /ping p99 meanwhile",
                "ms",
                _field(summary["cold"], "ping_p99"),
                lower_is_better=True,
            )
        )
    if "ws-rate" in summary:
        out.append(
            Panel(
                "ws-rate: 100 B messages from a thread",
                "thousand messages/s",
                _field(summary["ws-rate"], "rate", 1000.0),
            )
        )
    if "ws-stalled" in summary:
        out.append(
            Panel(
                "ws-stalled: a WebSocket client that never reads",
                "server RSS growth, MiB",
                _field(summary["ws-stalled"], "rss_growth", MIB),
                lower_is_better=True,
            )
        )
    return [panel for panel in out if panel.bars]


def describe(results: dict[str, Any]) -> str:
    """One line: which run this is."""
    machine = results.get("machine", {})
    servers = results.get("servers", {})
    when = results.get("date", "")
    with contextlib.suppress(ValueError):
        when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"`{results.get('command', '?')}` on {when}, git {machine.get('git', '?')}; "
        f"{machine.get('nproc', '?')} CPUs ({machine.get('cpu', '?')}), "
        f"Python {servers.get('python', '?')}, Tornado {servers.get('tornado', '?')}"
    )


def draw(drawn: list[Panel], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = (len(drawn) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(11, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(drawn) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, drawn):
        names = [bar.variant for bar in panel.bars]
        values = [bar.value for bar in panel.bars]
        colours = [
            LIBRARY_COLOUR
            if bar.variant in LIBRARY
            else BROKEN_COLOUR
            if bar.variant == "broken"
            else REFERENCE_COLOUR
            for bar in panel.bars
        ]
        errors = [
            [bar.value - bar.low if bar.low is not None else 0.0 for bar in panel.bars],
            [bar.high - bar.value if bar.high is not None else 0.0 for bar in panel.bars],
        ]
        positions = list(range(len(names)))
        ax.barh(positions, values, color=colours, xerr=errors, capsize=2, ecolor="#444444")
        ax.set_yticks(positions, names, fontsize=8)
        ax.invert_yaxis()
        better = "lower is better" if panel.lower_is_better else "higher is better"
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(f"{panel.unit} ({better})", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for position, bar in zip(positions, panel.bars):
            value = bar.value
            ax.annotate(
                f"{value:,.0f}" if value >= 10 else f"{value:.1f}",
                (max(value, bar.high or 0.0), position),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.margins(x=0.18)
    figure.suptitle(title.replace("; ", "\n", 1), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chart a benchmark run for the docs.")
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results}: no such file; run `python3 run.py bench` first", file=sys.stderr)
        return 2
    results = json.loads(args.results.read_text(encoding="utf-8"))
    drawn = panels(results)
    if not drawn:
        print(f"{args.results}: no scenario to chart", file=sys.stderr)
        return 2
    line = describe(results)
    draw(drawn, line.replace("`", ""), args.output / "benchmarks.png")
    tables = args.results.with_suffix(".md")
    if tables.exists():  # it starts with the same facts: command, date, commit, machine
        text = tables.read_text(encoding="utf-8")
        # The run's own title is the page's.
        text = text.split("\n", 1)[1].lstrip("\n") if text.startswith("#") else text
    else:
        text = f"{line}\n"
    (args.output / "run.md").write_text(text, encoding="utf-8")
    print(f"wrote {args.output / 'benchmarks.png'} and {args.output / 'run.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
