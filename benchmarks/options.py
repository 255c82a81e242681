"""The benchmark's command line (``python3 run.py bench --help``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from benchmarks.plan import ALL_LABELS
from benchmarks.scenarios import SCENARIOS

__all__ = ("RESULTS", "parse_options")

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py bench" if os.environ.get("SAFESTREAM_BENCH_COMMAND") else None,
        description="Benchmark tornado-safestream's styles against Tornado's own handlers.",
        epilog=f"scenarios: {', '.join(SCENARIOS)}; variants: {', '.join(ALL_LABELS)}. "
        "Results: benchmarks/results/latest.json and latest.md.",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, smaller sizes")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)"
    )
    parser.add_argument(
        "--variants", default=",".join(ALL_LABELS), help="comma-separated (default: all)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=8,
        help="executor threads in big/small/concurrent (default 8; slow/stalled use 4)",
    )
    parser.add_argument("--max-buffer-bytes", type=int, help="push/generator (default: library's)")
    parser.add_argument(
        "--chunked",
        action="store_true",
        help="handlers do not set Content-Length (chunked encoding; static always sets it)",
    )
    parser.add_argument(
        "--python-client", action="store_true", help="the Python client instead of curl"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where latest.json/.md go")
    parser.add_argument("--keep-temp", action="store_true", help="keep the data files and logs")
    return parser


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace | str:
    """The options, checked (lists split at commas), or what is wrong with them."""
    options = _parser().parse_args(argv)
    if options.rounds is None:
        options.rounds = 1 if options.quick else 3
    options.scenarios = [s for s in options.scenarios.split(",") if s]
    options.variants = [v for v in options.variants.split(",") if v]
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    unknown += [v for v in options.variants if v not in ALL_LABELS]
    if unknown:
        return f"unknown scenarios or variants: {', '.join(unknown)}"
    if options.rounds < 1:
        return "--rounds >= 1"
    return options
