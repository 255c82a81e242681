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
        default="4,8",
        help="executor sizes, comma-separated (default 4,8): concurrent and blocking run with "
        "each, big and small with the largest; slow and stalled use 4",
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a keyword argument of stream_on_executor for push/generator (repeatable)",
    )
    parser.add_argument(
        "--app-setting",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a tornado.web.Application setting for every server (repeatable)",
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="skip the wrk cross-check of the concurrent scenario"
    )
    parser.add_argument("--max-buffer-bytes", type=int, help="push/generator (default: library's)")
    parser.add_argument(
        "--chunk",
        type=int,
        help="bytes per read in the big and concurrent scenarios' handlers (default 65536, "
        "StaticFileHandler's own; static variants always read 64 KiB)",
    )
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
    if options.chunk is not None and options.chunk < 1:
        return f"--chunk must be at least 1 byte, not {options.chunk}"
    try:
        options.threads = sorted({int(t) for t in options.threads.split(",") if t})
    except ValueError:
        return f"--threads: comma-separated numbers, not {options.threads!r}"
    if not options.threads or min(options.threads) < 1:
        return "--threads: at least one executor size, each >= 1"
    for value in options.server_option + options.app_setting:
        if "=" not in value:
            return f"NAME=VALUE expected, not {value!r}"
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    unknown += [v for v in options.variants if v not in ALL_LABELS]
    if unknown:
        return f"unknown scenarios or variants: {', '.join(unknown)}"
    if options.rounds < 1:
        return "--rounds >= 1"
    return options
