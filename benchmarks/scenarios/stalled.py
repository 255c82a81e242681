"""
``stalled``: 200 streams whose clients read the headers and then stop reading, an executor of
4 threads: median latency of a fresh ``/ping`` and of a fresh 64 KiB download, RSS growth.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import CLIENTS, Bench, DataFile, Server, last_json, read_line
from benchmarks.machine import CpuTimes, steal_since
from benchmarks.plan import STALLED_VARIANTS, KiB, MiB, Variant
from benchmarks.report import Target, fmt, get, section
from benchmarks.scenarios.base import Scenario
from benchmarks.stats import median

__all__ = ("SCENARIO",)


def run(bench: Bench) -> None:
    variants = bench.variants(STALLED_VARIANTS)
    if not variants:
        return
    plan = bench.plan
    data = bench.files["slow"]
    print(
        f"\nstalled: {plan.stalled_streams} streams of a {data.size // MiB} MiB file that "
        f"stop reading after the headers, {plan.stall_threads} threads",
        flush=True,
    )
    for round_ in range(bench.options.rounds):
        for variant in bench.order(variants, round_):
            one = once(bench, variant, data)
            bench.record("stalled", variant.label, one)
            bench.say(
                "stalled",
                variant.label,
                round_,
                f"headers {one['headers']}/{one['streams']}  /ping {fmt(one['ping_ms'], 1)} "
                f"ms  small {fmt(one['small_ms'], 1)} ms"
                + (f"  {one['small_timeouts']} timed out" if one["small_timeouts"] else "")
                + f"  RSS +{fmt(one['rss_growth'] / MiB, 0)} MiB"
                + f"  recovered in {fmt(one['recovery_s'], 2, ' s')}",
            )
    summary = bench.summary.setdefault("stalled", {})
    for label, items in bench.runs.get("stalled", {}).items():
        summary[label] = {
            "headers": median([r["headers"] for r in items]),
            "streams": plan.stalled_streams,
            "ping_ms": median([r["ping_ms"] for r in items]),
            "small_ms": median([r["small_ms"] for r in items]),
            "ping_timeouts": sum(r["ping_timeouts"] for r in items),
            "small_timeouts": sum(r["small_timeouts"] for r in items),
            "small_tries": sum(r["small_tries"] for r in items),
            "rss_growth": median([r["rss_growth"] for r in items]),
            "recovery_s": median([r["recovery_s"] for r in items]),
        }


def once(bench: Bench, variant: Variant, data: DataFile) -> dict[str, Any]:
    plan = bench.plan
    server = Server(bench, variant, data, 64 * KiB, plan.stall_threads)
    stall: subprocess.Popen[bytes] | None = None
    recovery: float | None = None
    try:
        server.warm_up()
        before = server.stats(reset_peak=True)
        bench.note_server(before)
        cmd = [sys.executable, str(CLIENTS), "stall", "--port", str(server.port)]
        cmd += ["--streams", str(plan.stalled_streams), "--header-timeout", "5"]
        cmd += ["--hold", "120"]
        with bench.client_log() as log:
            stall = bench.processes.start(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        ready = json.loads(read_line(stall.stdout, time.monotonic() + 60.0))
        time.sleep(1.0)  # let the server fill what it buffers for the stalled clients
        timeout = plan.fresh_timeout
        cpu_before = CpuTimes.now()
        cmd = [sys.executable, str(CLIENTS), "probe", "--port", str(server.port)]
        cmd += ["--path", "/ping", "--path", "/small", "--count", str(plan.stalled_probes)]
        cmd += ["--interval", "0.05", "--request-timeout", str(timeout)]
        cmd += ["--give-up-after", "3"]
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=plan.stalled_probes * 2 * (timeout + 0.2) + 30,
            check=False,
        )
        probe = last_json(done.stdout)["paths"]
        steal = steal_since(cpu_before)
        during = server.stats()
        # let the stalled clients go: how long until a fresh download works again?
        assert stall.stdin is not None
        stall.stdin.write(b"stop\n")
        stall.communicate(timeout=15)
        released = time.monotonic()
        while time.monotonic() - released < 10.0:
            try:
                server.get("/small", timeout=1.0)
            except (OSError, RuntimeError):
                continue
            recovery = time.monotonic() - released
            break
    finally:
        if stall is not None:
            bench.processes.stop(stall)
        server.stop()

    def latencies(path: str) -> list[float]:
        record = probe[path]
        return list(record["latencies_ms"]) + [timeout * 1000.0] * (
            record["timeouts"] + record["skipped"]
        )

    return {
        "streams": ready["streams"],
        "connected": ready["connected"],
        "headers": ready["headers"],
        "statuses": ready["statuses"],
        "ping_ms": median(latencies("/ping")),
        "small_ms": median(latencies("/small")),
        "ping_timeouts": probe["/ping"]["timeouts"] + probe["/ping"]["skipped"],
        "small_timeouts": probe["/small"]["timeouts"] + probe["/small"]["skipped"],
        "small_tries": len(latencies("/small")),
        "ping_all_ms": probe["/ping"]["latencies_ms"],
        "small_all_ms": probe["/small"]["latencies_ms"],
        "rss_growth": max(during["vm_hwm"] - before["vm_rss"], 0),
        "os_threads": during["os_threads"],
        "recovery_s": recovery,
        "steal": steal,
        "server_errors": during["errors_logged"] - before["errors_logged"],
    }


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    return section(
        bench,
        "stalled",
        f"**stalled clients**: {plan.stalled_streams} streams whose clients stop reading "
        f"after the headers, {plan.stall_threads} threads; a fresh request gives up after "
        f"{plan.fresh_timeout * 1000:.0f} ms and counts as that",
        [
            ("streams with headers", lambda v: f"{fmt(v['headers'])}/{v['streams']}"),
            ("fresh /ping ms", lambda v: fmt(v["ping_ms"], 1)),
            ("fresh 64 KiB ms", lambda v: fmt(v["small_ms"], 1)),
            ("64 KiB timed out", lambda v: f"{v['small_timeouts']}/{v['small_tries']}"),
            ("RSS growth MiB", lambda v: fmt(v["rss_growth"] / MiB, 0)),
            ("recovery s", lambda v: fmt(v["recovery_s"], 2)),
        ],
    )


def targets(bench: Bench) -> list[Target]:
    found = []
    for key, what in (("ping_ms", "/ping"), ("small_ms", "64 KiB download")):
        value = get(bench, "stalled", "generator", key)
        if value is not None:
            found.append(
                Target(
                    f"stalled: fresh {what}, median",
                    "generator",
                    f"{value:.1f} ms",
                    "<= 50 ms",
                    value <= 50,
                )
            )
    return found


SCENARIO = Scenario(
    "stalled",
    run,
    tables,
    targets,
    files=lambda bench: {"slow": bench.plan.slow_size},
    client="Python sockets",
)
