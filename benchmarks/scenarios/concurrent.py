"""
``concurrent``: 16 and 64 clients x 16 MiB at once, with clients that are not the bottleneck:
``curl --parallel`` in 2 processes, each body written to memory (``/dev/shm``) and its SHA-256
checked after the timing. Aggregate MB/s and the server's CPU seconds per GiB, against
`StaticFileHandler` in the same run, with executors of each ``--threads`` size; the client's
CPU is shown so that one can see it was not the bottleneck. ``wrk`` (when installed) measures
the same servers again: the same figures from an independent harness. Targets: push and
generator >= 1.0x static's MB/s at <= 1.0x its CPU per GiB; `SafeStaticFileHandler`
(``safe-static``, its default executor whatever ``--threads`` says) >= 1.2x static's MB/s
with 16 clients, >= 1.0x with more, at <= 1.0x its CPU per GiB; no wrong body.
"""

from __future__ import annotations

from typing import Any

from benchmarks.drivers import curl_parallel, wrk_run
from benchmarks.harness import Bench, DataFile, Server
from benchmarks.machine import WRK, tool_version
from benchmarks.plan import CONCURRENT_VARIANTS
from benchmarks.report import Target, fmt, markdown_table, no_wrong_bodies, ratio_figure
from benchmarks.scenarios import throughput
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import ratio

__all__ = ("SCENARIO",)


def _key(clients: int, threads: int, harness: str = "curl") -> str:
    return f"concurrent/{harness}/{clients}c/{threads}t"


def run(bench: Bench) -> None:
    plan = bench.plan
    data = bench.files["concurrent"]
    variants = bench.variants(CONCURRENT_VARIANTS)
    if not variants:
        return
    wrk = None if bench.options.no_wrk else tool_version(WRK)
    bench.server_info.setdefault("wrk", wrk)
    for threads in bench.options.threads:
        for clients in plan.concurrent_clients:
            print(
                f"\nconcurrent: {clients} clients x {size(data.size)}, {threads} threads",
                flush=True,
            )

            def fetch(
                bench: Bench, server: Server, data: DataFile, clients: int = clients
            ) -> dict[str, Any]:
                return curl_parallel(bench, server, data, clients, plan.concurrent_curls)

            throughput.measure(
                bench,
                "concurrent",
                variants,
                data,
                plan.big_chunk,
                threads,
                fetch,
                key=_key(clients, threads),
            )
            if wrk is None:
                continue

            def cross_check(
                bench: Bench, server: Server, data: DataFile, clients: int = clients
            ) -> dict[str, Any]:
                return wrk_run(bench, server, clients, plan.wrk_seconds)

            throughput.measure(
                bench,
                "concurrent",
                variants,
                data,
                plan.big_chunk,
                threads,
                cross_check,
                key=_key(clients, threads, "wrk"),
                passes=1,
            )


def _keys(bench: Bench, harness: str) -> list[tuple[int, int, str]]:
    return [
        (clients, threads, _key(clients, threads, harness))
        for threads in bench.options.threads
        for clients in bench.plan.concurrent_clients
        if _key(clients, threads, harness) in bench.summary
    ]


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    rows: list[list[str]] = []
    for clients, threads, key in _keys(bench, "curl"):
        summary = bench.summary[key]
        wrk = bench.summary.get(_key(clients, threads, "wrk"), {})
        static, wrk_static = summary.get("static", {}), wrk.get("static", {})
        for label, v in summary.items():
            w = wrk.get(label, {})
            rows.append(
                [
                    f"{clients} x {threads}t",
                    label,
                    fmt(v["mbps"]),
                    throughput.iqr(v),
                    fmt(ratio(v["mbps"], static.get("mbps")), 2, "x"),
                    fmt(v["cpu_per_gib"], 2),
                    fmt(ratio(v["cpu_per_gib"], static.get("cpu_per_gib")), 2, "x"),
                    throughput.runs(v),
                    throughput.client_cpu(v),
                    fmt(w.get("mbps")),
                    fmt(ratio(w.get("mbps"), wrk_static.get("mbps")), 2, "x"),
                    fmt(w.get("cpu_per_gib"), 2),
                    fmt(ratio(w.get("cpu_per_gib"), wrk_static.get("cpu_per_gib")), 2, "x"),
                ]
            )
    if not rows:
        return []
    wrk_name = bench.server_info.get("wrk")
    lines = [
        "",
        f"**concurrent**: clients x {size(plan.concurrent_size)} at once, read in "
        f"{size(plan.big_chunk)} chunks by push and generator, with executors of "
        f"{', '.join(str(t) for t in bench.options.threads)} threads; curl --parallel in "
        f"{plan.concurrent_curls} processes writing to memory, the SHA-256 of every body checked "
        "after the timing; client CPU in % of one core. "
        + (
            f"wrk ({wrk_name}, one {plan.wrk_seconds:g} s run per variant, keep-alive, bodies not "
            "checked): "
            "the same servers measured by an independent harness."
            if wrk_name
            else "wrk not installed (apt-get install wrk): no cross-check."
        ),
        "",
    ]
    lines += markdown_table(
        [
            "clients",
            "variant",
            "MB/s",
            "IQR",
            "vs static",
            "server CPU s/GiB",
            "vs static",
            "wrong bodies",
            "client CPU",
            "wrk MB/s",
            "vs static",
            "wrk CPU s/GiB",
            "vs static",
        ],
        rows,
    )
    for _, _, key in _keys(bench, "curl") + _keys(bench, "wrk"):
        lines += throughput.bad_downloads(bench, key)
    return lines


def targets(bench: Bench) -> list[Target]:
    found = []
    for clients, threads, key in _keys(bench, "curl"):
        summary = bench.summary[key]
        static = summary.get("static", {})
        where = f"concurrent {clients} x {threads}t"
        for label in ("push", "generator", "safe-static"):
            v = summary.get(label)
            if v is None:
                continue
            low = 1.2 if label == "safe-static" and clients <= 16 else 1.0
            r = ratio(v["mbps"], static.get("mbps"))
            if r is not None:
                found.append(
                    Target(
                        f"{where}: MB/s vs static",
                        label,
                        ratio_figure(r, low),
                        f">= {low:.2f}x",
                        r >= low,
                    )
                )
            r = ratio(v["cpu_per_gib"], static.get("cpu_per_gib"))
            if r is not None:
                found.append(
                    Target(
                        f"{where}: CPU/GiB vs static",
                        label,
                        f"{v['cpu_per_gib']:.2f} s/GiB, {ratio_figure(r, 1.0)}",
                        "<= 1.00x",
                        r <= 1.0,
                    )
                )
            found.append(no_wrong_bodies(where, label, v))
    return found


SCENARIO = Scenario(
    "concurrent",
    run,
    tables,
    targets,
    files=lambda bench: {"concurrent": bench.plan.concurrent_size},
    client="curl --parallel (+ wrk)",
)
