"""
``concurrent``: 16 clients x 16 MiB at once (Python clients in 4 processes): aggregate MB/s,
ratio to static, bodies that came out wrong. Each body is received straight into memory and
its SHA-256 checked once every client is done, so that hashing takes no CPU from the run.
"""

from __future__ import annotations

from typing import Any

from benchmarks.drivers import python_concurrent
from benchmarks.harness import Bench, DataFile, Server
from benchmarks.plan import THROUGHPUT_VARIANTS
from benchmarks.report import Target, fmt, ratio_targets, section
from benchmarks.scenarios import throughput
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import ratio

__all__ = ("SCENARIO",)


def run(bench: Bench) -> None:
    plan = bench.plan
    data = bench.files["concurrent"]
    variants = bench.variants(THROUGHPUT_VARIANTS)
    if variants:
        print(f"\nconcurrent: {size(data.size)}, {size(plan.big_chunk)} chunks", flush=True)

    def one(bench: Bench, server: Server, data: DataFile) -> dict[str, Any]:
        return python_concurrent(
            bench, server, data, plan.concurrent_clients, plan.concurrent_processes
        )

    throughput.measure(
        bench, "concurrent", variants, data, plan.big_chunk, bench.options.threads, one
    )


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    cells = throughput.columns()
    static = bench.summary.get("concurrent", {}).get("static", {})
    return section(
        bench,
        "concurrent",
        f"**concurrent**: {plan.concurrent_clients} clients x {size(plan.concurrent_size)}"
        f" at once, the SHA-256 of every body checked ({plan.concurrent_processes} "
        f"client processes), {bench.options.threads} threads",
        [
            ("aggregate MB/s", cells["MB/s"]),
            ("IQR", cells["IQR"]),
            ("vs static", lambda v: fmt(ratio(v["mbps"], static.get("mbps")), 2, "x")),
            ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 2)),
            ("wrong bodies", cells["bad"]),
            ("client CPU", cells["client CPU"]),
        ],
    ) + throughput.bad_downloads(bench, "concurrent")


def targets(bench: Bench) -> list[Target]:
    found = ratio_targets(
        bench, "concurrent: MB/s vs static", "concurrent", "mbps", "static", 1.0, None
    )
    for label in ("push", "generator"):
        v = bench.summary.get("concurrent", {}).get(label)
        if v is not None:
            found.append(
                Target(
                    "concurrent: wrong bodies",
                    label,
                    f"{v['bad']} of {v['runs']}",
                    "0",
                    v["bad"] == 0,
                )
            )
    return found + throughput.assertion_targets(bench, "concurrent")


SCENARIO = Scenario(
    "concurrent",
    run,
    tables,
    targets,
    files=lambda bench: {"concurrent": bench.plan.concurrent_size},
    client="Python sockets + hashlib",
)
