"""
``ws-rate``: a worker thread sends 100,000 binary messages of 100 B on one WebSocket, as
fast as it can, to a client that reads as fast as it can: messages per second, from the
client's request to the last byte. ``ws-mixin``: the thread calls
`SafeWebSocketMixin.write_message` (default settings); ``ws-callback``: the thread calls
``IOLoop.add_callback(handler.write_message, message, True)`` on a plain
``WebSocketHandler``. A fresh server process per run. The client (``clients.py ws``, a
process of its own) reads the raw socket into a buffer and hashes what arrives; after the
timing it compares that with the SHA-256 of the frames expected, so every message arrived
once, in order, byte for byte, for next to no CPU during the run. Target: the mixin's
messages/s >= 3x ``add_callback``'s.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from benchmarks.harness import CLIENTS, Bench, Server, last_json
from benchmarks.machine import CpuTimes, steal_since
from benchmarks.plan import WS_VARIANTS, KiB, Variant
from benchmarks.report import Target, fmt, ratio_targets, section
from benchmarks.scenarios.base import Scenario
from benchmarks.stats import median, quartiles, ratio

__all__ = ("SCENARIO",)


def once(bench: Bench, variant: Variant) -> dict[str, Any]:
    plan = bench.plan
    server = Server(bench, variant, bench.files["probe"], 64 * KiB, plan.stall_threads)
    try:
        server.warm_up()
        before = server.stats()
        bench.note_server(before)
        cmd = [sys.executable, str(CLIENTS), "ws", "--port", str(server.port)]
        cmd += ["--messages", str(plan.ws_messages), "--size", str(plan.ws_message_size)]
        cmd += ["--timeout", "120"]
        cpu_before = CpuTimes.now()
        with bench.client_log() as log:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, timeout=180, check=False)
        steal = steal_since(cpu_before)
        after = server.stats()
    finally:
        server.stop()
    result = last_json(done.stdout)
    seconds = result["seconds"]
    figures = after.get("websocket", {})
    return {
        "status": result["status"],
        "messages": result["messages"],
        "bytes": result["bytes"],
        "seconds": seconds,
        "rate": result["messages"] / seconds if result["status"] == "ok" and seconds else None,
        "client_cpu_percent": 100.0 * result["cpu"] / seconds if seconds else None,
        "server_cpu": after["cpu"] - before["cpu"],
        "server_cpu_per_100k": (after["cpu"] - before["cpu"]) * 100_000 / result["messages"],
        "server_sent": figures.get("sent"),
        "server_thread_errors": figures.get("errors"),
        "server_errors": after["errors_logged"] - before["errors_logged"],
        "steal": steal,
    }


def run(bench: Bench) -> None:
    variants = bench.variants(WS_VARIANTS)
    if not variants:
        return
    plan = bench.plan
    print(
        f"\nws-rate: {plan.ws_messages:,} messages of {plan.ws_message_size} B from a worker "
        "thread to one WebSocket client",
        flush=True,
    )
    for round_ in range(bench.options.rounds):
        for variant in bench.order(variants, round_):
            one = once(bench, variant)
            bench.record("ws-rate", variant.label, one)
            bench.say(
                "ws-rate",
                variant.label,
                round_,
                f"{fmt(one['rate'])} messages/s  {one['status']}  server CPU "
                f"{fmt(one['server_cpu_per_100k'], 2)} s/100k  client CPU "
                f"{fmt(one['client_cpu_percent'])}%",
            )
    summary = bench.summary.setdefault("ws-rate", {})
    for label, items in bench.runs.get("ws-rate", {}).items():
        summary[label] = {
            "rate": median([r["rate"] for r in items]),
            "rate_iqr": quartiles([r["rate"] for r in items]),
            "ok": sum(r["status"] == "ok" for r in items),
            "runs": len(items),
            "statuses": sorted({r["status"] for r in items}),
            "server_cpu_per_100k": median([r["server_cpu_per_100k"] for r in items]),
            "client_cpu_percent": median([r["client_cpu_percent"] for r in items]),
            "server_errors": sum(r["server_errors"] for r in items),
        }


def _iqr(v: dict[str, Any]) -> str:
    q = v["rate_iqr"]
    return "-" if q is None else f"{fmt(q[0])}-{fmt(q[1])}"


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    callback = bench.summary.get("ws-rate", {}).get("ws-callback", {}).get("rate")
    return section(
        bench,
        "ws-rate",
        f"**ws-rate**: {plan.ws_messages:,} binary messages of {plan.ws_message_size} B from "
        "a worker thread to one WebSocket client (raw socket, its own process); every "
        "message checked once, in order (SHA-256 of the frames, after the timing); a fresh "
        "server per run",
        [
            ("messages/s", lambda v: fmt(v["rate"])),
            ("IQR", _iqr),
            ("vs add_callback", lambda v: fmt(ratio(v["rate"], callback), 2, "x")),
            ("all in order", lambda v: f"{v['ok']}/{v['runs']}"),
            ("server CPU s/100k", lambda v: fmt(v["server_cpu_per_100k"], 2)),
            ("client CPU", lambda v: fmt(v["client_cpu_percent"], 0, "%")),
        ],
    )


def targets(bench: Bench) -> list[Target]:
    found = ratio_targets(
        bench,
        "ws-rate: messages/s vs add_callback",
        "ws-rate",
        "rate",
        "ws-callback",
        bench.plan.ws_rate_target,
        None,
        labels=("ws-mixin",),
        unit=lambda v: f"{v:,.0f}/s",
    )
    v = bench.summary.get("ws-rate", {}).get("ws-mixin")
    if v is not None:
        found.append(
            Target(
                "ws-rate: every message once, in order",
                "ws-mixin",
                f"{v['ok']}/{v['runs']} runs",
                f"{v['runs']}/{v['runs']}",
                v["ok"] >= v["runs"],
            )
        )
    return found


SCENARIO = Scenario(
    "ws-rate",
    run,
    tables,
    targets,
    files=lambda bench: {},
    client="Python raw-socket WebSocket client",
)
