"""
``blocking``: 16 clients at once download from a producer that blocks, as a database cursor
would: the handler sleeps 1 ms before reading each 64 KiB chunk, in its worker thread
(servers.py ``--producer-sleep``). The executor's threads can produce at most threads x
64 KiB per sleep in parallel; the target is 0.9x of that, with the sleep's length measured
inside the server process (``/sleep``, 200 sleeps in a thread of its own, before the runs).
Clients: ``curl --parallel``, bodies hashed after the timing.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.drivers import curl_parallel
from benchmarks.harness import Bench, DataFile, Server
from benchmarks.plan import BLOCKING_VARIANTS, MB
from benchmarks.report import Target, fmt, markdown_table, no_wrong_bodies, ratio_figure
from benchmarks.scenarios import throughput
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import median, ratio

__all__ = ("SCENARIO",)


def _key(threads: int) -> str:
    return f"blocking/{threads}t"


def run(bench: Bench) -> None:
    plan = bench.plan
    data = bench.files["blocking"]
    variants = bench.variants(BLOCKING_VARIANTS)
    if not variants:
        return
    sleeps: dict[int, float] = {}  # server port -> its time.sleep's mean length

    for threads in bench.options.threads:
        print(
            f"\nblocking: {plan.blocking_clients} clients x {size(data.size)}, "
            f"{plan.blocking_sleep * 1000:g} ms sleep per {size(plan.blocking_chunk)} chunk, "
            f"{threads} threads",
            flush=True,
        )

        def fetch(bench: Bench, server: Server, data: DataFile) -> dict[str, Any]:
            if server.port not in sleeps:  # once per server, before its first run
                sleeps[server.port] = _sleep_length(server, plan.blocking_sleep)
            return curl_parallel(bench, server, data, plan.blocking_clients, plan.concurrent_curls)

        throughput.measure(
            bench,
            "blocking",
            variants,
            data,
            plan.blocking_chunk,
            threads,
            fetch,
            key=_key(threads),
            extra=["--producer-sleep", str(plan.blocking_sleep)],
        )
    sleep = median(list(sleeps.values()))
    bench.server_info["sleep_measured"] = sleep
    bench.server_info["sleeps_measured"] = sorted(sleeps.values())
    for threads in bench.options.threads:
        ceiling = None if not sleep else threads * plan.blocking_chunk / sleep / MB
        for v in bench.summary.get(_key(threads), {}).values():
            v["ceiling_mbps"] = ceiling


def _sleep_length(server: Server, seconds: float) -> float:
    """The mean length of ``time.sleep(seconds)`` in the server's process."""
    found = json.loads(server.get(f"/sleep?seconds={seconds}&n=200", timeout=30.0))
    mean = found["mean"]
    assert isinstance(mean, float)
    return mean


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    rows = []
    for threads in bench.options.threads:
        for label, v in bench.summary.get(_key(threads), {}).items():
            rows.append(
                [
                    f"{threads}",
                    label,
                    fmt(v["mbps"]),
                    throughput.iqr(v),
                    fmt(v.get("ceiling_mbps")),
                    fmt(ratio(v["mbps"], v.get("ceiling_mbps")), 2, "x"),
                    fmt(v["cpu_per_gib"], 2),
                    throughput.runs(v),
                ]
            )
    if not rows:
        return []
    sleep = bench.server_info.get("sleep_measured")
    lines = [
        "",
        f"**blocking producer**: {plan.blocking_clients} clients x {size(plan.blocking_size)} "
        f"at once (curl --parallel), the producer sleeps {plan.blocking_sleep * 1000:g} ms "
        f"before each {size(plan.blocking_chunk)} chunk; time.sleep({plan.blocking_sleep:g}) "
        f"measured in the servers: {fmt(None if sleep is None else sleep * 1000, 3)} ms (median "
        "over the servers of the mean of 200 sleeps); ceiling = threads x chunk / sleep",
        "",
    ]
    lines += markdown_table(
        ["threads", "variant", "MB/s", "IQR", "ceiling MB/s", "of ceiling", "CPU s/GiB", "bad"],
        rows,
    )
    for threads in bench.options.threads:
        lines += throughput.bad_downloads(bench, _key(threads))
    return lines


def targets(bench: Bench) -> list[Target]:
    limit = bench.plan.blocking_target
    found = []
    for threads in bench.options.threads:
        summary = bench.summary.get(_key(threads), {})
        for label in ("push", "generator"):
            v = summary.get(label)
            if v is None:
                continue
            r = ratio(v["mbps"], v.get("ceiling_mbps"))
            if r is not None:
                found.append(
                    Target(
                        f"blocking {threads}t: MB/s vs threads x chunk / sleep",
                        label,
                        f"{v['mbps']:,.0f} MB/s, {ratio_figure(r, limit)}",
                        f">= {limit:.2f}x",
                        r >= limit,
                    )
                )
            found.append(no_wrong_bodies(f"blocking {threads}t", label, v))
    return found


SCENARIO = Scenario(
    "blocking",
    run,
    tables,
    targets,
    files=lambda bench: {"blocking": bench.plan.blocking_size},
    client="curl --parallel",
)
