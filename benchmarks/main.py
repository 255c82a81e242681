"""The benchmark run from start to end: checks, data files, scenarios, report, results."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import Bench
from benchmarks.machine import (
    CURL,
    git_revision,
    library_fingerprint,
    machine,
    machine_busy,
    tool_version,
)
from benchmarks.options import parse_options
from benchmarks.plan import FULL, QUICK, MiB
from benchmarks.report import fmt_busy, targets_json, targets_table, write_results
from benchmarks.scenarios import SCENARIOS, Scenario
from benchmarks.stats import median

__all__ = ("main",)

#: Above this share of its CPUs busy before or after the run, the machine is not quiet.
QUIET = 0.10
#: Above this share of CPU time stolen by the hypervisor during a measurement: noisy figures.
STEAL_NOISY = 0.05


def _check_environment() -> str | None:
    probe = "import tornado, tornado_safestream"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "import failed"
    return None


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: through the clean-up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _header(
    bench: Bench, command: str, when: datetime.datetime, host: dict[str, Any], clients: str
) -> list[str]:
    options, plan = bench.options, bench.plan
    info = bench.server_info
    mbb = info.get("max_buffer_bytes")
    passes = ", ".join(
        f"{name}: {n} passes a round"
        for name, n in plan.passes
        if n > 1 and name in options.scenarios
    )
    passes = f" ({passes})" if passes else ""
    return [
        "### tornado-safestream benchmarks",
        "",
        f"`{command}` on {when:%Y-%m-%d %H:%M} UTC, git {host['git']}",
        "",
        f"Machine: {host['nproc']} CPUs ({host['cpu']}), "
        + (f"{host['memory_gib']:.0f} GiB, " if host["memory_gib"] else "")
        + f"Linux {host['kernel']}; CPUs busy with other work: "
        f"{fmt_busy(host['busy_before'])} before the run, {fmt_busy(host['busy_after'])} "
        f"after; CPU steal during the measurements: median {fmt_busy(host['steal_median'])}, "
        f"max {fmt_busy(host['steal_max'])}. Servers: {info.get('python_implementation')} "
        f"{info.get('python')}, Tornado {info.get('tornado')}, tornado-safestream "
        f"{info.get('tornado_safestream')}, max_buffer_bytes "
        + ("-" if mbb is None else f"{mbb} ({mbb / MiB:g} MiB)")
        + f". Clients: {clients}.",
        "",
        f"Plan: {plan.name}, {options.rounds} round{'s' if options.rounds != 1 else ''} of "
        f"interleaved runs{passes}; figures are medians over the runs, ratios are between medians; "
        "MB = 10^6 bytes. "
        + (
            "Handlers send chunked bodies (--chunked)."
            if options.chunked
            else "Every file handler sets Content-Length (broken: chunked, as in the demo)."
        ),
    ]


def _clients(bench: Bench, chosen: Sequence[Scenario], curl: str | None) -> str:
    """Which client each scenario used, for the header."""
    by_client: dict[str, list[str]] = {}
    for scenario in chosen:
        client = scenario.client
        if client == "curl":
            client = "Python sockets" if bench.options.python_client else (curl or "curl")
        by_client.setdefault(client, []).append(scenario.name)
    return "; ".join(f"{client} ({', '.join(names)})" for client, names in by_client.items())


def main(argv: Sequence[str] | None = None) -> int:
    parsed = parse_options(argv)
    if isinstance(parsed, str):
        print(parsed)
        return 2
    options = parsed
    plan = QUICK if options.quick else FULL
    if options.chunk is not None:
        plan = replace(plan, big_chunk=options.chunk)
    if not sys.platform.startswith("linux"):
        print("the benchmark reads /proc: it runs on Linux only")
        return 2
    problem = _check_environment()
    if problem:
        print(f"{sys.executable} cannot import tornado and tornado_safestream ({problem}):")
        print("run `python3 run.py bench`, which sets up its environment (nox session bench)")
        return 2
    curl = tool_version(CURL)
    if curl is None and not options.python_client:
        print(f"{CURL} not found: using the Python client for big/small")
        options.python_client = True
    chosen = [SCENARIOS[name] for name in options.scenarios]

    command = os.environ.get("SAFESTREAM_BENCH_COMMAND") or " ".join(
        ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc)
    host = machine()
    print(f"$ {command}")
    host["busy_before"] = machine_busy()
    print(
        f"{host['nproc']} CPUs ({host['cpu']}), {fmt_busy(host['busy_before'])} busy before "
        f"the run, {plan.name} plan, {options.rounds} round{'s' if options.rounds != 1 else ''}",
        flush=True,
    )
    if (host["busy_before"] or 0) > QUIET:
        print(
            f"WARNING: the machine is not quiet ({fmt_busy(host['busy_before'])} of its CPUs "
            "busy): the figures may be disturbed"
        )
    tmp = Path(tempfile.mkdtemp(prefix="safestream-bench-"))
    bench = Bench(options, plan, tmp)
    code = 0
    try:
        with _terminate_as_interrupt():
            print(f"data files in {tmp} ...", flush=True)
            wanted = {"probe": plan.probe_size}
            for scenario in chosen:
                wanted.update(scenario.files(bench))
            bench.make_files(wanted)
            for scenario in chosen:
                scenario.run(bench)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers and clients")
        code = 130
    except Exception as e:
        print(f"\nFAILED: {type(e).__name__}: {e}")
        code = 1
    finally:
        bench.processes.stop_all()
        if options.keep_temp or code == 1:
            print(f"data files and server logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    runtime = time.monotonic() - started
    if code:
        return code

    host["loadavg_after"] = os.getloadavg()
    host["git_after"] = git_revision()
    host["library_after"] = library_fingerprint()
    if host["library_after"] != host["library"]:
        bench.notes.append(
            f"tornado_safestream/ changed during the run (git {host['git']} before, "
            f"{host['git_after']} after): servers started at different times may have run "
            "different code."
        )
    steals = [
        run["steal"]
        for scenario_runs in bench.runs.values()
        for items in scenario_runs.values()
        for run in items
        if run.get("steal") is not None
    ]
    host["steal_median"] = median(steals)
    host["steal_max"] = max(steals) if steals else None
    if (host["steal_max"] or 0) > STEAL_NOISY:
        bench.notes.append(
            f"the hypervisor took up to {fmt_busy(host['steal_max'])} of the CPUs' time during "
            f"a measurement (median {fmt_busy(host['steal_median'])}): on a shared host, single"
            " runs vary by tens of percent; see each figure's IQR (interquartile range of its "
            "runs) before reading much into a ratio near its limit."
        )
    host["busy_after"] = machine_busy()
    for when_, key in (("before", "busy_before"), ("after", "busy_after")):
        if (host[key] or 0) > QUIET:
            bench.notes.append(
                f"the machine was not quiet {when_} the run ({fmt_busy(host[key])} of its CPUs "
                "busy with other work): figures may be disturbed."
            )
    if plan is QUICK:
        bench.notes.append(
            "quick run: smaller sizes and one round; the targets are set for the full run."
        )
    for key in ("big", "small"):
        for label, values in bench.summary.get(key, {}).items():
            if (values.get("client_cpu_percent") or 0) > 80:
                bench.notes.append(
                    f"{key}/{label}: the client used {values['client_cpu_percent']:.0f}% "
                    "of a core: it may be the bottleneck."
                )

    lines = _header(bench, command, when, host, _clients(bench, chosen, curl))
    targets = []
    for scenario in chosen:
        lines += scenario.tables(bench)
        targets += scenario.targets(bench)
    lines += targets_table(targets)
    for scenario in chosen:
        scenario_notes = list(scenario.notes(bench))
        if scenario_notes:
            lines += ["", *scenario_notes]
    if bench.notes:
        lines += [""] + [f"Note: {note}" for note in bench.notes]
    lines += ["", f"Runtime {runtime:.0f} s."]
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="")
    results = {
        "command": command,
        "date": when.isoformat(),
        "machine": host,
        "servers": bench.server_info,
        "plan": asdict(plan),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "summary": bench.summary,
        "targets": targets_json(targets),
        "runs": bench.runs,
        "notes": bench.notes,
        "runtime_seconds": runtime,
    }
    write_results(options.output, text, results)
    print(f"(written to {options.output / 'latest.md'} and latest.json)")
    return 0
