"""
``stalled``: a thousand streams (of 2 MiB) whose clients read the headers and then stop
reading, an executor of 4 threads: the server's RSS growth (peak, from its ``/stats``), the
median latency of a fresh ``/ping`` and of a fresh 64 KiB download meanwhile; then every
stalled client reads to the end, and every body must be complete and byte-exact (SHA-256).
The runner, the servers and the clients raise their soft open-files limit to the hard one.
Targets: RSS growth <= the library's process-wide cap (from ``/stats``, 0 if it reports none)
+ 48 MiB, a fresh download under 50 ms (median; generator style: push serves as many streams
at a time as it has threads, by design) and every stream byte-exact, for both styles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import CLIENTS, Bench, DataFile, Server, last_json, read_line
from benchmarks.machine import CpuTimes, raise_open_files_limit, steal_since
from benchmarks.plan import STALLED_VARIANTS, KiB, MiB, Variant
from benchmarks.report import Target, fmt, section
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import median

__all__ = ("SCENARIO",)


def run(bench: Bench) -> None:
    variants = bench.variants(STALLED_VARIANTS)
    if not variants:
        return
    plan = bench.plan
    data = bench.files["stalled"]
    wanted = 2 * plan.stalled_streams + 256  # a socket each side, a file each in the server
    soft, hard = raise_open_files_limit(wanted)
    bench.server_info["open_files_limit"] = soft
    if soft < wanted:
        bench.notes.append(
            f"stalled: the open-files limit is {soft} (hard {hard}), under the {wanted} that "
            f"{plan.stalled_streams} streams need: some streams will fail to connect or open."
        )
    print(
        f"\nstalled: {plan.stalled_streams} streams of {size(data.size)} that "
        f"stop reading after the headers, {plan.stall_threads} threads",
        flush=True,
    )
    rounds = min(bench.options.rounds, plan.stalled_rounds)
    for round_ in range(rounds):
        for variant in bench.order(variants, round_):
            one = once(bench, variant, data)
            bench.record("stalled", variant.label, one)
            bench.say(
                "stalled",
                variant.label,
                f"{round_ + 1}/{rounds}",
                f"headers {one['headers']}/{one['streams']}  /ping {fmt(one['ping_ms'], 1)} "
                f"ms  small {fmt(one['small_ms'], 1)} ms"
                + (f"  {one['small_timeouts']} timed out" if one["small_timeouts"] else "")
                + f"  RSS +{fmt(one['rss_growth'] / MiB, 0)} MiB"
                + f" (kept +{fmt(one['rss_kept'] / MiB, 0)} MiB)"
                + f"  byte-exact {one['exact']}/{one['streams']} in {fmt(one['drain_s'], 1)} s",
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
            "rss_growth_max": max(r["rss_growth"] for r in items),
            "rss_kept": median([r["rss_kept"] for r in items]),
            "memory_cap": items[0]["memory_cap"],
            "bytes_held": median([r["bytes_held"] for r in items]),
            "exact_min": min(r["exact"] for r in items),
            "drain_s": median([r["drain_s"] for r in items]),
            "outcomes": items[-1]["read_statuses"],
        }


def once(bench: Bench, variant: Variant, data: DataFile) -> dict[str, Any]:
    plan = bench.plan
    server = Server(bench, variant, data, 64 * KiB, plan.stall_threads)
    stall: subprocess.Popen[bytes] | None = None
    try:
        server.warm_up()
        before = server.stats(reset_peak=True)
        bench.note_server(before)
        cmd = [sys.executable, str(CLIENTS), "stall", "--port", str(server.port)]
        cmd += ["--streams", str(plan.stalled_streams), "--header-timeout", "5"]
        cmd += ["--hold", "300", "--read-timeout", str(plan.stalled_read_timeout)]
        cmd += ["--expect-size", str(data.size), "--expect-sha256", data.sha256]
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
        # every stalled client reads to the end: every body must be complete and byte-exact
        assert stall.stdin is not None
        stall.stdin.write(b"read\n")
        out, _ = stall.communicate(timeout=plan.stalled_read_timeout + 30)
        read = last_json(out)["read"]
        after = _settled(server, plan.settle_seconds)
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
        "rss_kept": max(after["vm_rss"] - before["vm_rss"], 0),
        "memory_cap": during.get("memory_cap"),
        "bytes_held": during.get("bytes_held"),
        "library_stats": during.get("library_stats"),
        "os_threads": during["os_threads"],
        "open_files_limit": during.get("open_files_limit"),
        "read_statuses": read["statuses"],
        "exact": read["statuses"].get("ok", 0),
        "drain_s": read["seconds"],
        "steal": steal,
        "server_errors": during["errors_logged"] - before["errors_logged"],
    }


def _settled(server: Server, settle: float) -> dict[str, Any]:
    """
    The server's figures *settle* seconds after its last stream ended (as its library
    counts them, when it does; at most 10 s of waiting for that): what memory it kept.
    """
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        library = server.stats().get("library_stats") or {}
        if not library.get("streams"):
            break
        time.sleep(0.05)
    time.sleep(settle)
    return server.stats()


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    return section(
        bench,
        "stalled",
        f"**stalled clients**: {plan.stalled_streams} streams of {size(plan.stalled_size)} whose "
        f"clients stop reading after the headers, {plan.stall_threads} threads; a fresh request "
        f"gives up after {plan.fresh_timeout * 1000:.0f} ms and counts as that; then every "
        "client reads to the end (byte-exact: size and SHA-256 right, worst round); RSS kept "
        f"after: the growth still resident {plan.settle_seconds:g} s after the last stream ended",
        [
            ("headers within 5 s", lambda v: f"{fmt(v['headers'])}/{v['streams']}"),
            ("fresh /ping ms", lambda v: fmt(v["ping_ms"], 1)),
            ("fresh 64 KiB ms", lambda v: fmt(v["small_ms"], 1)),
            ("64 KiB timed out", lambda v: f"{v['small_timeouts']}/{v['small_tries']}"),
            ("RSS growth MiB", lambda v: fmt(v["rss_growth"] / MiB, 0)),
            ("RSS kept after MiB", lambda v: fmt(v["rss_kept"] / MiB, 0)),
            ("cap MiB", lambda v: _mib(v["memory_cap"])),
            ("held MiB", lambda v: _mib(v["bytes_held"])),
            ("byte-exact", lambda v: f"{v['exact_min']}/{v['streams']}"),
            ("read to the end s", lambda v: fmt(v["drain_s"], 1)),
        ],
    )


def _mib(value: int | None) -> str:
    return "-" if value is None else fmt(value / MiB, 0)


def targets(bench: Bench) -> list[Target]:
    plan = bench.plan
    found = []
    for label in ("push", "generator"):
        v = bench.summary.get("stalled", {}).get(label)
        if v is None:
            continue
        cap = v["memory_cap"]
        limit = (cap or 0) + plan.stalled_allowance
        because = "cap" if cap is not None else "no cap reported: 0"
        found.append(
            Target(
                "stalled: RSS growth",
                label,
                f"{v['rss_growth'] / MiB:.0f} MiB",
                f"<= {limit / MiB:.0f} MiB ({because} + {plan.stalled_allowance // MiB} MiB)",
                v["rss_growth"] <= limit,
            )
        )
        if label == "generator":
            for key, what in (("ping_ms", "/ping"), ("small_ms", "64 KiB download")):
                value = v[key]
                if value is not None:
                    found.append(
                        Target(
                            f"stalled: fresh {what}, median",
                            label,
                            f"{value:.1f} ms",
                            f"< {plan.fresh_target_ms:g} ms",
                            value < plan.fresh_target_ms,
                        )
                    )
        n = v["streams"]
        found.append(
            Target(
                "stalled: streams byte-exact once read",
                label,
                f"{v['exact_min']}/{n}",
                f"{n}/{n}",
                v["exact_min"] >= n,
            )
        )
    return found


def notes(bench: Bench) -> list[str]:
    lines = []
    for label, v in bench.summary.get("stalled", {}).items():
        bad = {k: n for k, n in v["outcomes"].items() if k != "ok"}
        if bad:
            text = ", ".join(f"{n} {k}" for k, n in sorted(bad.items()))
            lines.append(f"stalled/{label}: streams not byte-exact once read: {text}.")
    return lines


SCENARIO = Scenario(
    "stalled",
    run,
    tables,
    targets,
    files=lambda bench: {"stalled": bench.plan.stalled_size},
    client="Python sockets",
    notes=notes,
)
