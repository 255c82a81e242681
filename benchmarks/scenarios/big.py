"""
``big``: one client (``curl -o /dev/null``) downloads a 128 MiB file in 64 KiB chunks: MB/s
and the server's CPU seconds per GiB sent, against `StaticFileHandler` in the same run.
Targets: push and generator >= 1.25x static's MB/s at <= 1.2x its CPU per GiB;
`SafeStaticFileHandler` (``safe-static``, ``sendfile``) >= 1.25x at <= 0.5x.
"""

from __future__ import annotations

from benchmarks.drivers import single_download
from benchmarks.harness import Bench
from benchmarks.plan import BIG_VARIANTS
from benchmarks.report import Target, fmt, ratio_targets, section
from benchmarks.scenarios import throughput
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import ratio

__all__ = ("SCENARIO",)


def run(bench: Bench) -> None:
    data = bench.files["big"]
    variants = bench.variants(BIG_VARIANTS)
    if variants:
        print(f"\nbig: {size(data.size)}, {size(bench.plan.big_chunk)} chunks", flush=True)
    throughput.measure(
        bench,
        "big",
        variants,
        data,
        bench.plan.big_chunk,
        max(bench.options.threads),
        single_download,
    )


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    cells = throughput.columns()
    static = bench.summary.get("big", {}).get("static", {})
    client = "Python" if bench.options.python_client else "curl"
    return section(
        bench,
        "big",
        f"**big**: 1 client ({client}), {size(plan.big_size)}, {size(plan.big_chunk)} chunks, "
        f"{max(bench.options.threads)} threads (the body's size is checked)",
        [
            ("MB/s", cells["MB/s"]),
            ("IQR", cells["IQR"]),
            ("vs static", lambda v: fmt(ratio(v["mbps"], static.get("mbps")), 2, "x")),
            ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 2)),
            (
                "vs static",
                lambda v: fmt(ratio(v["cpu_per_gib"], static.get("cpu_per_gib")), 2, "x"),
            ),
            ("bad", cells["bad"]),
            ("client CPU", cells["client CPU"]),
        ],
    ) + throughput.bad_downloads(bench, "big")


def targets(bench: Bench) -> list[Target]:
    return [
        *ratio_targets(bench, "big: MB/s vs static", "big", "mbps", "static", 1.25, None),
        *ratio_targets(
            bench,
            "big: server CPU/GiB vs static",
            "big",
            "cpu_per_gib",
            "static",
            None,
            1.2,
            unit=lambda v: f"{v:.2f} s/GiB",
        ),
        *throughput.assertion_targets(bench, "big"),
        *ratio_targets(
            bench,
            "big: MB/s vs static",
            "big",
            "mbps",
            "static",
            1.25,
            None,
            labels=("safe-static",),
        ),
        *ratio_targets(
            bench,
            "big: server CPU/GiB vs static",
            "big",
            "cpu_per_gib",
            "static",
            None,
            0.5,
            labels=("safe-static",),
            unit=lambda v: f"{v:.2f} s/GiB",
        ),
    ]


SCENARIO = Scenario(
    "big",
    run,
    tables,
    targets,
    files=lambda bench: {"big": bench.plan.big_size},
    client="curl",
)
