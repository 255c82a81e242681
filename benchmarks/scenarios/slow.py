"""
``slow``: 40 clients reading at 256 KiB/s for 8 s from a 64 MiB file, an executor of 4
threads: the server's peak RSS growth (``VmHWM`` from its ``/stats``, the peak reset first),
the clients that received at least 256 KiB, and the p50/p99 latency of ``/ping`` (fresh
connections, 20 a second) during the load. Targets: RSS growth <= 16 MiB for both styles
and `SafeStaticFileHandler` (``safe-static``, its default executor), every client served in
generator style and by ``safe-static`` (push serves as many as it has threads, by design).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import CLIENTS, Bench, DataFile, Server, last_json, read_line
from benchmarks.machine import CpuTimes, steal_since
from benchmarks.plan import MB, SLOW_VARIANTS, KiB, MiB, Variant
from benchmarks.report import Target, fmt, get, ratio_targets, section
from benchmarks.scenarios.base import Scenario
from benchmarks.stats import median, percentile, ratio

__all__ = ("SCENARIO",)


def run(bench: Bench) -> None:
    variants = bench.variants(SLOW_VARIANTS)
    if not variants:
        return
    plan = bench.plan
    data = bench.files["slow"]
    print(
        f"\nslow: {plan.slow_clients} clients at {plan.slow_rate // KiB} KiB/s for "
        f"{plan.slow_seconds:.0f} s, {data.size // MiB} MiB file, "
        f"{plan.stall_threads} threads",
        flush=True,
    )
    for round_ in range(bench.options.rounds):
        for variant in bench.order(variants, round_):
            one = once(bench, variant, data)
            bench.record("slow", variant.label, one)
            bench.say(
                "slow",
                variant.label,
                round_,
                f"RSS +{fmt(one['rss_growth'] / MiB, 1)} MiB  served "
                f"{one['served']}/{one['clients']}  /ping p50 {fmt(one['ping_p50'], 1)} "
                f"p99 {fmt(one['ping_p99'], 1)} ms"
                + (f"  {one['ping_failures']} pings failed" if one["ping_failures"] else ""),
            )
    summary = bench.summary.setdefault("slow", {})
    for label, items in bench.runs.get("slow", {}).items():
        summary[label] = {
            "rss_growth": median([r["rss_growth"] for r in items]),
            "served": median([r["served"] for r in items]),
            "served_min": min(r["served"] for r in items),
            "clients": plan.slow_clients,
            "ping_p50": median([r["ping_p50"] for r in items]),
            "ping_p99": median([r["ping_p99"] for r in items]),
            "ping_failures": sum(r["ping_failures"] for r in items),
            "max_buffer_bytes": items[0]["max_buffer_bytes"],
            "mbps": median([r["mbps"] for r in items]),
        }


def once(bench: Bench, variant: Variant, data: DataFile) -> dict[str, Any]:
    plan = bench.plan
    server = Server(bench, variant, data, 64 * KiB, plan.stall_threads)
    started: list[subprocess.Popen[bytes]] = []
    try:
        server.warm_up()
        before = server.stats(reset_peak=True)
        bench.note_server(before)
        client_timeout = plan.slow_seconds + 30.0
        slow_cmd = [sys.executable, str(CLIENTS), "slow", "--port", str(server.port)]
        slow_cmd += ["--clients", str(plan.slow_clients), "--rate", str(plan.slow_rate)]
        slow_cmd += ["--duration", str(plan.slow_seconds), "--wait-go"]
        ping_cmd = [sys.executable, str(CLIENTS), "probe", "--port", str(server.port)]
        ping_cmd += ["--path", "/ping", "--interval", str(plan.ping_interval)]
        ping_cmd += ["--duration", str(plan.slow_seconds), "--wait-go"]
        ping_cmd += ["--request-timeout", "2"]
        with bench.client_log() as log:
            for cmd in (slow_cmd, ping_cmd):
                started.append(
                    bench.processes.start(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                    )
                )
        deadline = time.monotonic() + 30.0
        for process in started:
            if read_line(process.stdout, deadline).strip() != b"READY":
                raise RuntimeError("a client process did not get ready")
        cpu_before = CpuTimes.now()
        for process in started:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        slow_out, _ = started[0].communicate(timeout=client_timeout)
        ping_out, _ = started[1].communicate(timeout=client_timeout)
        steal = steal_since(cpu_before)
        after = server.stats()
    finally:
        for process in started:
            bench.processes.stop(process)
        server.stop()
    clients = last_json(slow_out)["clients"]
    ping = last_json(ping_out)["paths"]["/ping"]
    # a failed ping counts as the request timeout (2 s) in the percentiles
    latencies = ping["latencies_ms"] + [2000.0] * len(ping["failures"])
    peak = after["vm_hwm"] - (before["vm_rss"] if before["peak_reset"] else before["vm_hwm"])
    received = [c["body_bytes"] for c in clients]
    return {
        "clients": len(clients),
        "served": sum(r >= plan.slow_served for r in received),
        "received_min": min(received),
        "received_total": sum(received),
        "mbps": sum(received) / plan.slow_seconds / MB,
        "rss_before": before["vm_rss"],
        "rss_peak": after["vm_hwm"],
        "rss_growth": max(peak, 0),
        "peak_reset": before["peak_reset"],
        "max_buffer_bytes": after["max_buffer_bytes"],
        "ping_count": len(latencies),
        "ping_failures": len(ping["failures"]),
        "ping_p50": percentile(latencies, 50),
        "ping_p99": percentile(latencies, 99),
        "ping_max": max(latencies) if latencies else None,
        "steal": steal,
        "client_statuses": sorted({c["status"] for c in clients}),
        "server_errors": after["errors_logged"] - before["errors_logged"],
        "server_error_samples": after["error_samples"],
    }


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    static_p99 = get(bench, "slow", "static", "ping_p99")

    def mib(key: str) -> Any:
        return lambda v: fmt(None if v[key] is None else v[key] / MiB, 1)

    return section(
        bench,
        "slow",
        f"**slow clients**: {plan.slow_clients} clients reading at {plan.slow_rate // KiB}"
        f" KiB/s for {plan.slow_seconds:g} s, {plan.slow_size // MiB} MiB file, "
        f"{plan.stall_threads} threads; /ping every {plan.ping_interval * 1000:.0f} ms on a "
        "fresh connection meanwhile; served: received >= "
        f"{plan.slow_served // KiB} KiB (worst round)",
        [
            ("peak RSS growth MiB", mib("rss_growth")),
            ("served", lambda v: f"{v['served_min']}/{v['clients']}"),
            ("MB/s sent", lambda v: fmt(v["mbps"], 1)),
            ("/ping p50 ms", lambda v: fmt(v["ping_p50"], 1)),
            ("/ping p99 ms", lambda v: fmt(v["ping_p99"], 1)),
            ("p99 vs static", lambda v: fmt(ratio(v["ping_p99"], static_p99), 2, "x")),
        ],
    )


def targets(bench: Bench) -> list[Target]:
    plan = bench.plan
    found: list[Target] = []
    limit = plan.slow_rss_limit
    for label in ("push", "generator", "safe-static"):
        growth = get(bench, "slow", label, "rss_growth")
        if growth is not None:
            found.append(
                Target(
                    "slow: peak RSS growth",
                    label,
                    f"{growth / MiB:.1f} MiB",
                    f"<= {limit / MiB:g} MiB",
                    growth <= limit,
                )
            )
    # push serves as many slow clients at a time as it has threads, by design: reported only
    for label in ("generator", "safe-static"):
        served = get(bench, "slow", label, "served_min")
        if served is not None:
            n = plan.slow_clients
            found.append(
                Target(
                    "slow: clients served (worst round)",
                    label,
                    f"{served}/{n}",
                    f"{n}/{n}",
                    served >= n,
                )
            )
    found += ratio_targets(
        bench,
        "slow: /ping p99 vs static",
        "slow",
        "ping_p99",
        "static",
        None,
        2.0,
        unit=lambda v: f"{v:.1f} ms",
    )
    return found


def notes(bench: Bench) -> list[str]:
    if not any(label.startswith("push") for label in bench.summary.get("slow", {})):
        return []
    threads = bench.plan.stall_threads
    return [
        "push holds an executor thread for each stream while its client is behind (by "
        f"design): with {threads} threads, {threads} slow clients at a time are served, and "
        "the other requests wait for a thread."
    ]


SCENARIO = Scenario(
    "slow",
    run,
    tables,
    targets,
    files=lambda bench: {"slow": bench.plan.slow_size},
    client="Python sockets",
    notes=notes,
)
