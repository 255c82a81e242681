"""
``ws-stalled``: a WebSocket client that never reads (a 4 KiB receive buffer) while a worker
thread sends it 1 KiB messages for 10 s, as fast as it may: the server's RSS growth
(``VmRSS``, sampled every second from ``/proc/PID/status``, which needs nothing from the
server's loop, and the peak ``VmHWM``), the messages the thread got rid of and the bytes the
library holds queued for the connection (from ``/stats``, when its loop answers in time).
``ws-mixin`` (`SafeWebSocketMixin`, default settings: ``slow_client="wait"``, 256 KiB)
blocks the thread once ``max_buffer_bytes`` are queued; ``ws-callback``
(``IOLoop.add_callback(handler.write_message, ...)``) queues everything, and its memory grows
as long as the thread sends. A fresh server per run, stopped before its client.
Targets: the mixin's RSS growth <= ``max_buffer_bytes`` + 4 MiB (interpreter noise) and its
queue <= ``max_buffer_bytes`` at every sample; ``add_callback``'s RSS still growing in the
second half of the run, beyond that limit (the contrast the scenario is there to show).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import CLIENTS, Bench, Server, read_line
from benchmarks.machine import CpuTimes, steal_since
from benchmarks.plan import WS_VARIANTS, KiB, MiB, Variant
from benchmarks.report import Target, fmt, section
from benchmarks.scenarios.base import Scenario
from benchmarks.stats import median

__all__ = ("SCENARIO",)

#: at most this many rounds (10 s a run)
ROUNDS = 2
#: a /stats that takes longer is given up (the RSS is read from /proc in any case)
STATS_TIMEOUT = 1.0
#: the library's default max_buffer_bytes for a WebSocket, if the server does not say
DEFAULT_CAP = 256 * KiB


def _status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (bytes) of process *pid*, from ``/proc``."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return found


def _websocket(server: Server) -> dict[str, Any]:
    """The server's ``websocket`` figures, or nothing if its loop does not answer in time."""
    try:
        found = server.stats_within(STATS_TIMEOUT).get("websocket")
    except (OSError, RuntimeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _sent(figures: Path) -> int | None:
    """The messages the server's thread sent, from its figures file (4 updates a second)."""
    try:
        found = json.loads(figures.read_text("ascii")).get("sent")
    except (OSError, ValueError):
        return None
    return found if isinstance(found, int) else None


def once(bench: Bench, variant: Variant) -> dict[str, Any]:
    plan = bench.plan
    # named as the server's log will be (Server counts the servers started)
    figures = bench.tmp / f"server-{bench.server_count + 1:03d}-{variant.label}.figures.json"
    server = Server(
        bench,
        variant,
        bench.files["probe"],
        64 * KiB,
        plan.stall_threads,
        extra=["--figures-file", str(figures)],
    )
    client: subprocess.Popen[bytes] | None = None
    samples: list[dict[str, Any]] = []
    try:
        server.warm_up()
        before = server.stats(reset_peak=True)
        bench.note_server(before)
        cmd = [sys.executable, str(CLIENTS), "ws", "--port", str(server.port), "--mode", "stall"]
        cmd += ["--size", str(plan.ws_stall_message_size), "--rcvbuf", "4096"]
        cmd += ["--hold", str(plan.ws_stall_seconds + 120)]
        with bench.client_log() as log:
            client = bench.processes.start(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        if read_line(client.stdout, time.monotonic() + 30.0).strip() != b"STALLED":
            raise RuntimeError("the WebSocket client did not stall")
        cpu_before = CpuTimes.now()
        start = time.monotonic()
        for second in range(1, int(plan.ws_stall_seconds) + 1):
            delay = start + second - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the sampling's pace, not a synchronisation
            rss = _status(server.process.pid)["VmRSS"]
            at = time.monotonic() - start
            ws = _websocket(server)
            queued = ws.get("buffered_bytes") or []
            samples.append(
                {
                    "at": at,
                    "rss_growth": rss - before["vm_rss"],
                    "sent": _sent(figures),
                    "stats": bool(ws),
                    "queued": max(queued) if queued else None,
                }
            )
        steal = steal_since(cpu_before)
        status = _status(server.process.pid)
        ws = _websocket(server)
    finally:
        server.stop()  # first: a client gone would fail every queued add_callback write
        if client is not None:
            bench.processes.stop(client)
    peak = status["VmHWM"] - (before["vm_rss"] if before["peak_reset"] else before["vm_hwm"])
    half = samples[len(samples) // 2 - 1] if len(samples) >= 2 else samples[-1]
    queued = [s["queued"] for s in samples if s["queued"] is not None]
    return {
        "samples": samples,
        "rss_growth": max(samples[-1]["rss_growth"], 0),
        "rss_growth_half": max(half["rss_growth"], 0),
        "half_at": half["at"],
        "end_at": samples[-1]["at"],
        "peak_growth": max(peak, 0),
        "sent": samples[-1]["sent"],
        "queued_max": max(queued) if queued else None,
        "max_buffer_bytes": ws.get("max_buffer_bytes"),
        "thread_errors": ws.get("errors"),
        "stats_missed": sum(not s["stats"] for s in samples),
        "steal": steal,
    }


def run(bench: Bench) -> None:
    variants = bench.variants(WS_VARIANTS)
    if not variants:
        return
    plan = bench.plan
    print(
        f"\nws-stalled: a WebSocket client that never reads, a thread sending "
        f"{plan.ws_stall_message_size} B messages for {plan.ws_stall_seconds:g} s",
        flush=True,
    )
    rounds = min(bench.options.rounds, ROUNDS)
    for round_ in range(rounds):
        for variant in bench.order(variants, round_):
            one = once(bench, variant)
            bench.record("ws-stalled", variant.label, one)
            bench.say(
                "ws-stalled",
                variant.label,
                f"{round_ + 1}/{rounds}",
                f"RSS +{fmt(one['rss_growth_half'] / MiB, 1)} MiB at "
                f"{one['half_at']:.0f} s, +{fmt(one['rss_growth'] / MiB, 1)} MiB at "
                f"{one['end_at']:.0f} s (peak +{fmt(one['peak_growth'] / MiB, 1)})  "
                f"{fmt(one['sent'])} messages sent  queued max "
                + ("-" if one["queued_max"] is None else f"{one['queued_max'] / KiB:.0f} KiB"),
            )
    summary = bench.summary.setdefault("ws-stalled", {})
    for label, items in bench.runs.get("ws-stalled", {}).items():
        queued = [r["queued_max"] for r in items if r["queued_max"] is not None]
        summary[label] = {
            "rss_growth": median([r["rss_growth"] for r in items]),
            "rss_growth_half": median([r["rss_growth_half"] for r in items]),
            "peak_growth": median([r["peak_growth"] for r in items]),
            "peak_growth_max": max(r["peak_growth"] for r in items),
            "half_at": median([r["half_at"] for r in items]),
            "end_at": median([r["end_at"] for r in items]),
            "sent": median([r["sent"] for r in items]),
            "queued_max": max(queued) if queued else None,
            "max_buffer_bytes": items[0]["max_buffer_bytes"],
            "stats_missed": sum(r["stats_missed"] for r in items),
            "runs": len(items),
        }


def _mib(value: float | None) -> str:
    return "-" if value is None else fmt(value / MiB, 1)


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    return section(
        bench,
        "ws-stalled",
        f"**ws-stalled**: a WebSocket client that never reads (4 KiB receive buffer), a "
        f"worker thread sending {plan.ws_stall_message_size} B messages for "
        f"{plan.ws_stall_seconds:g} s; server RSS sampled every second (medians of "
        f"{min(bench.options.rounds, ROUNDS)} runs, a fresh server each)",
        [
            ("RSS growth MiB, half-way", lambda v: _mib(v["rss_growth_half"])),
            ("RSS growth MiB, at the end", lambda v: _mib(v["rss_growth"])),
            ("peak MiB", lambda v: _mib(v["peak_growth"])),
            ("messages sent", lambda v: fmt(v["sent"])),
            (
                "library queue max KiB",
                lambda v: "-" if v["queued_max"] is None else fmt(v["queued_max"] / KiB),
            ),
        ],
    )


def _limit(bench: Bench, v: dict[str, Any]) -> int:
    cap = v.get("max_buffer_bytes")
    return (cap if isinstance(cap, int) else DEFAULT_CAP) + bench.plan.ws_stall_allowance


def targets(bench: Bench) -> list[Target]:
    found: list[Target] = []
    summary = bench.summary.get("ws-stalled", {})
    mixin = summary.get("ws-mixin")
    if mixin is not None:
        limit = _limit(bench, mixin)
        cap = mixin.get("max_buffer_bytes") or DEFAULT_CAP
        found.append(
            Target(
                "ws-stalled: peak RSS growth (worst run)",
                "ws-mixin",
                f"{mixin['peak_growth_max'] / MiB:.1f} MiB",
                f"<= {limit / MiB:g} MiB (cap + {bench.plan.ws_stall_allowance // MiB} MiB)",
                mixin["peak_growth_max"] <= limit,
            )
        )
        queued = mixin["queued_max"]
        if queued is not None:
            found.append(
                Target(
                    "ws-stalled: bytes queued (every sample)",
                    "ws-mixin",
                    f"{queued / KiB:.0f} KiB",
                    f"<= {cap / KiB:.0f} KiB",
                    queued <= cap,
                )
            )
    callback = summary.get("ws-callback")
    if callback is not None:
        limit = _limit(bench, mixin or {})
        growing = callback["rss_growth"] > callback["rss_growth_half"] > limit
        found.append(
            Target(
                "ws-stalled: add_callback grows without bound",
                "ws-callback",
                f"+{callback['rss_growth_half'] / MiB:.0f} MiB at "
                f"{callback['half_at']:.0f} s, +{callback['rss_growth'] / MiB:.0f} MiB at "
                f"{callback['end_at']:.0f} s",
                f"still growing, > {limit / MiB:g} MiB",
                growing,
            )
        )
    return found


def notes(bench: Bench) -> list[str]:
    lines = []
    for label, v in bench.summary.get("ws-stalled", {}).items():
        if v["stats_missed"]:
            lines.append(
                f"ws-stalled/{label}: the server's loop did not answer /stats within "
                f"{STATS_TIMEOUT:g} s for "
                f"{v['stats_missed']} of its samples (busy with what was queued for the "
                "stalled client); its RSS was read from /proc all the same."
            )
    return lines


SCENARIO = Scenario(
    "ws-stalled",
    run,
    tables,
    targets,
    files=lambda bench: {},
    client="Python raw-socket WebSocket client",
    notes=notes,
)
