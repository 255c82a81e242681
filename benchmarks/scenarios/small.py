"""
``small``: one client downloads 16 MiB produced as 1 KiB chunks: ratios to the loop-native
handler and to the per-chunk ``run_in_executor`` handler (static: its own 64 KiB chunks).
"""

from __future__ import annotations

from benchmarks.drivers import single_download
from benchmarks.harness import Bench
from benchmarks.plan import THROUGHPUT_VARIANTS
from benchmarks.report import Target, fmt, ratio_targets, section
from benchmarks.scenarios import throughput
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import ratio

__all__ = ("SCENARIO",)


def run(bench: Bench) -> None:
    data = bench.files["small"]
    variants = bench.variants(THROUGHPUT_VARIANTS)
    if variants:
        print(f"\nsmall: {size(data.size)}, {bench.plan.small_chunk} B chunks", flush=True)
    throughput.measure(
        bench,
        "small",
        variants,
        data,
        bench.plan.small_chunk,
        max(bench.options.threads),
        single_download,
    )


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    cells = throughput.columns()
    summary = bench.summary.get("small", {})
    loop = summary.get("loop", {}).get("mbps")
    executor = summary.get("executor", {}).get("mbps")
    client = "Python" if bench.options.python_client else "curl"
    return section(
        bench,
        "small",
        f"**small chunks**: 1 client ({client}), {size(plan.small_size)} in "
        f"{plan.small_chunk} B chunks (static: its own 64 KiB chunks)",
        [
            ("MB/s", cells["MB/s"]),
            ("IQR", cells["IQR"]),
            ("vs loop", lambda v: fmt(ratio(v["mbps"], loop), 2, "x")),
            ("vs executor", lambda v: fmt(ratio(v["mbps"], executor), 2, "x")),
            ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 1)),
            ("bad", cells["bad"]),
            ("client CPU", cells["client CPU"]),
        ],
    ) + throughput.bad_downloads(bench, "small")


def targets(bench: Bench) -> list[Target]:
    return [
        *ratio_targets(bench, "small: MB/s vs loop", "small", "mbps", "loop", 1.0, None),
        *ratio_targets(bench, "small: MB/s vs executor", "small", "mbps", "executor", 5.0, None),
        *throughput.assertion_targets(bench, "small"),
    ]


SCENARIO = Scenario(
    "small",
    run,
    tables,
    targets,
    files=lambda bench: {"small": bench.plan.small_size},
    client="curl",
)
