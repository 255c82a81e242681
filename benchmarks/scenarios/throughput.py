"""
What the throughput scenarios (big, small, concurrent) share: servers started once per
variant, measured in interleaved passes, summarised as median MB/s and server CPU per GiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from benchmarks.harness import Bench, DataFile, Server
from benchmarks.machine import CpuTimes, steal_since
from benchmarks.plan import MB, GiB, MiB, Variant
from benchmarks.report import Cell, Target, fmt, get, ratio_figure
from benchmarks.stats import median, quartiles, ratio

__all__ = (
    "assertion_targets",
    "bad_downloads",
    "columns",
    "measure",
    "size",
    "summarise",
)

#: One measurement: (bench, server, data) -> a run's figures ("bytes", "seconds", ...).
Measure = Callable[[Bench, Server, DataFile], dict[str, Any]]


def measure(
    bench: Bench,
    scenario: str,
    variants: Sequence[Variant],
    data: DataFile,
    chunk: int,
    threads: int,
    one: Measure,
    *,
    key: str | None = None,
    extra: Sequence[str] = (),
    passes: int | None = None,
) -> None:
    """
    Start a server per variant, then measure them in interleaved passes (``one`` per run),
    recording each run under *key* (default: the scenario) and summarising at the end.
    """
    if not variants:
        return
    key = key or scenario
    servers: dict[str, Server] = {}
    try:
        for variant in variants:
            server = Server(bench, variant, data, chunk, threads, extra)
            servers[variant.label] = server
            server.warm_up()
            bench.note_server(server.stats())
        if passes is None:
            passes = bench.options.rounds * bench.plan.passes_of(scenario)
        for round_ in range(passes):
            for variant in bench.order(variants, round_):
                server = servers[variant.label]
                before = server.stats()
                cpu_before = CpuTimes.now()
                run = one(bench, server, data)
                run["steal"] = steal_since(cpu_before)
                after = server.stats()
                run["server_cpu"] = after["cpu"] - before["cpu"]
                run["server_errors"] = after["errors_logged"] - before["errors_logged"]
                run["mbps"] = run["bytes"] / run["seconds"] / MB if run["seconds"] else None
                run["cpu_per_gib"] = (
                    run["server_cpu"] / (run["bytes"] / GiB) if run["bytes"] else None
                )
                run["client_cpu_percent"] = (
                    100.0 * run["client_cpu"] / run["wall"] if run["wall"] else None
                )
                bench.record(key, variant.label, run)
                bad = f"  {run['bad']} bad" if run.get("bad") else ""
                if run.get("status", "ok") != "ok":
                    bad += f"  {run['status']}"
                bench.say(
                    key,
                    variant.label,
                    f"{round_ + 1}/{passes}",
                    f"{fmt(run['mbps']):>6} MB/s  server {fmt(run['cpu_per_gib'], 2)} "
                    f"CPU s/GiB  client CPU {fmt(run['client_cpu_percent'])}%{bad}",
                )
    finally:
        for server in servers.values():
            server.stop()
    summarise(bench, key)


def summarise(bench: Bench, key: str) -> None:
    runs = bench.runs.get(key, {})
    summary = bench.summary.setdefault(key, {})
    for label, items in runs.items():
        outcomes: dict[str, int] = {}
        for r in items:
            for status, count in r.get("statuses", {r["status"]: 1}).items():
                outcomes[status] = outcomes.get(status, 0) + count
        summary[label] = {
            "outcomes": outcomes,
            "mbps": median([r["mbps"] for r in items]),
            "mbps_iqr": quartiles([r["mbps"] for r in items]),
            "cpu_per_gib": median([r["cpu_per_gib"] for r in items]),
            "client_cpu_percent": median([r["client_cpu_percent"] for r in items]),
            "bad": sum(r.get("bad", 0) + (r.get("status", "ok") != "ok") for r in items),
            "runs": len(items) * (items[0].get("downloads", 1) if items else 1),
            "server_errors": sum(r["server_errors"] for r in items),
        }


def iqr(v: dict[str, Any]) -> str:
    q = v["mbps_iqr"]
    return "-" if q is None else f"{fmt(q[0])}-{fmt(q[1])}"


def runs(v: dict[str, Any]) -> str:
    return f"{v['bad']}/{v['runs']}"


def client_cpu(v: dict[str, Any]) -> str:
    return fmt(v["client_cpu_percent"], 0, "%")


def columns() -> dict[str, Cell]:
    """The cells the throughput tables pick from."""
    return {
        "MB/s": lambda v: fmt(v["mbps"]),
        "IQR": iqr,
        "bad": runs,
        "client CPU": client_cpu,
    }


def bad_downloads(bench: Bench, key: str) -> list[str]:
    """A line for each variant some of whose downloads came out bad."""
    lines = []
    for label, v in bench.summary.get(key, {}).items():
        if v["bad"]:
            outcomes = ", ".join(
                f"{count} {status}"
                for status, count in sorted(v["outcomes"].items())
                if status != "ok"
            )
            lines += ["", f"{key}/{label}: {v['bad']} of {v['runs']} downloads bad ({outcomes})."]
    return lines


def size(n: int) -> str:
    """16 MiB, 64 KiB, 1024 B."""
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def assertion_targets(bench: Bench, key: str) -> list[Target]:
    """Assertion mode on vs off, MB/s: >= 0.97x."""
    targets = []
    for label in ("push", "generator"):
        r = ratio(get(bench, key, f"{label}+assert", "mbps"), get(bench, key, label, "mbps"))
        if r is not None:
            targets.append(
                Target(
                    f"{key}: assertion mode on/off",
                    label,
                    ratio_figure(r, 0.97),
                    ">= 0.97x",
                    r >= 0.97,
                )
            )
    return targets
