"""
``cold``: files that are not in the page cache. Four files of 64 MiB are downloaded at once
(``curl --parallel``, bodies to ``/dev/null``, sizes checked), 4 waves a run; before each wave
the runner drops every file's page cache (``fsync``, then
``os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``; ``fincore`` says how much of them was
still resident afterwards). Meanwhile a probe asks for ``/ping`` on a fresh connection every
10 ms. `StaticFileHandler` reads the files on the loop, so a read that waits for the disk
stalls every other request; `SafeStaticFileHandler` reads them (or ``sendfile``\\s them) in
its executor. Target: ``/ping`` p99 (every ping of every run) <= 1/5 of ``static``'s.

On a virtual machine the "disk" may itself be cached by the host: a dropped page then comes
back at memory speed, and the loop barely waits. The table shows the download rate, so the
reader can see how cold the files really were.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import CLIENTS, Bench, DataFile, Server, last_json, read_line
from benchmarks.machine import CURL, CpuTimes, steal_since
from benchmarks.plan import COLD_VARIANTS, MB, KiB, MiB, Variant
from benchmarks.report import Target, fmt, ratio_targets, section
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import median, percentile, ratio

__all__ = ("SCENARIO",)

#: a ping that failed counts as this long (its request timeout) in the percentiles
PING_TIMEOUT = 2.0


def _names(bench: Bench) -> list[str]:
    return [f"cold-{i}" for i in range(bench.plan.cold_files)]


def files(bench: Bench) -> dict[str, int]:
    # each file one byte longer than the last: no other scenario shares it (the harness
    # makes one file per size), so dropping its cache slows no other scenario
    return {name: bench.plan.cold_size + 1 + i for i, name in enumerate(_names(bench))}


def drop_cache(paths: list[str]) -> int | None:
    """
    Drop the page cache of each file (``fsync`` first: dirty pages are not dropped); the
    bytes of them still resident afterwards, by ``fincore``, or ``None`` if it is missing.
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    done = subprocess.run(
        [fincore, "--bytes", "--noheadings", "--output", "RES", *paths],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    try:
        return sum(int(line) for line in done.stdout.split())
    except ValueError:
        return None


def wave(server: Server, data: list[DataFile]) -> dict[str, Any]:
    """Every file downloaded at once by one ``curl --parallel``; sizes checked."""
    lines = ['write-out = "%{http_code} %{size_download} %{url_effective}\\n"']
    for d in data:
        lines += [f'url = "{server.url}/dir/{d.path.name}"', 'output = "/dev/null"']
    cmd = [CURL, "-s", "--parallel", "--parallel-immediate", "--parallel-max", str(len(data))]
    cmd += ["--max-time", "120", "-K", "-"]
    start = time.monotonic()
    done = subprocess.run(
        cmd,
        input=("\n".join(lines) + "\n").encode(),
        capture_output=True,
        timeout=150,
        check=False,
    )
    seconds = time.monotonic() - start
    sizes = {f"{server.url}/dir/{d.path.name}": d.size for d in data}
    ok = received = 0
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1].isdigit():
            received += int(fields[1])
            ok += fields[0] == "200" and sizes.get(fields[2]) == int(fields[1])
    return {"seconds": seconds, "bytes": received, "ok": ok, "curl_exit": done.returncode}


def once(bench: Bench, variant: Variant, data: list[DataFile]) -> dict[str, Any]:
    plan = bench.plan
    server = Server(
        bench,
        variant,
        bench.files["probe"],
        64 * KiB,
        plan.stall_threads,
        extra=["--static-dir", str(bench.tmp)],
    )
    probe: subprocess.Popen[bytes] | None = None
    waves: list[dict[str, Any]] = []
    try:
        server.warm_up()
        before = server.stats()
        bench.note_server(before)
        cmd = [sys.executable, str(CLIENTS), "probe", "--port", str(server.port)]
        cmd += ["--path", "/ping", "--interval", str(plan.cold_ping_interval)]
        cmd += ["--duration", "600", "--until-line", "--wait-go"]
        cmd += ["--request-timeout", str(PING_TIMEOUT)]
        with bench.client_log() as log:
            probe = bench.processes.start(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        if read_line(probe.stdout, time.monotonic() + 30.0).strip() != b"READY":
            raise RuntimeError("the probe did not get ready")
        paths = [str(d.path) for d in data]
        residents = [drop_cache(paths)]
        cpu_before = CpuTimes.now()
        assert probe.stdin is not None
        probe.stdin.write(b"go\n")
        for i in range(plan.cold_waves):
            if i:
                residents.append(drop_cache(paths))
            waves.append(wave(server, data))
        probe.stdin.write(b"stop\n")
        out, _ = probe.communicate(timeout=30)
        steal = steal_since(cpu_before)
        after = server.stats()
    finally:
        if probe is not None:
            bench.processes.stop(probe)
        server.stop()
    ping = last_json(out)["paths"]["/ping"]
    latencies = ping["latencies_ms"] + [PING_TIMEOUT * 1000.0] * len(ping["failures"])
    seconds = sum(w["seconds"] for w in waves)
    received = sum(w["bytes"] for w in waves)
    known = [r for r in residents if r is not None]
    resident = max(known) if len(known) == len(residents) else None
    return {
        "waves": len(waves),
        "downloads": len(waves) * len(data),
        "ok": sum(w["ok"] for w in waves),
        "bytes": received,
        "seconds": seconds,
        "mbps": received / seconds / MB if seconds else None,
        "resident_after_drop": resident,
        "dropped_bytes": sum(d.size for d in data),
        "latencies_ms": latencies,
        "ping_failures": len(ping["failures"]),
        "ping_p50": percentile(latencies, 50),
        "ping_p99": percentile(latencies, 99),
        "ping_max": max(latencies) if latencies else None,
        "server_cpu": after["cpu"] - before["cpu"],
        "server_errors": after["errors_logged"] - before["errors_logged"],
        "steal": steal,
    }


def run(bench: Bench) -> None:
    variants = bench.variants(COLD_VARIANTS)
    if not variants:
        return
    plan = bench.plan
    data = [bench.files[name] for name in _names(bench)]
    print(
        f"\ncold: {len(data)} files of {size(plan.cold_size)} at once, their page cache "
        f"dropped before each of {plan.cold_waves} waves; /ping every "
        f"{plan.cold_ping_interval * 1000:.0f} ms",
        flush=True,
    )
    for round_ in range(bench.options.rounds):
        for variant in bench.order(variants, round_):
            one = once(bench, variant, data)
            bench.record("cold", variant.label, one)
            resident = one["resident_after_drop"]
            bench.say(
                "cold",
                variant.label,
                round_,
                f"{fmt(one['mbps'])} MB/s  {one['ok']}/{one['downloads']} ok  /ping p50 "
                f"{fmt(one['ping_p50'], 1)} p99 {fmt(one['ping_p99'], 1)} max "
                f"{fmt(one['ping_max'], 1)} ms  resident after drop "
                + ("?" if resident is None else f"{resident / MiB:.1f} MiB"),
            )
    summary = bench.summary.setdefault("cold", {})
    for label, items in bench.runs.get("cold", {}).items():
        latencies = [x for r in items for x in r["latencies_ms"]]
        residents = [r["resident_after_drop"] for r in items]
        summary[label] = {
            "mbps": median([r["mbps"] for r in items]),
            "ok": sum(r["ok"] for r in items),
            "downloads": sum(r["downloads"] for r in items),
            "pings": len(latencies),
            "ping_failures": sum(r["ping_failures"] for r in items),
            "ping_p50": percentile(latencies, 50),
            "ping_p99": percentile(latencies, 99),
            "ping_max": max(latencies) if latencies else None,
            "resident_after_drop": None if None in residents else max(residents),
            "cpu_per_gib": median(
                [r["server_cpu"] / (r["bytes"] / 2**30) if r["bytes"] else None for r in items]
            ),
            "server_errors": sum(r["server_errors"] for r in items),
        }


def tables(bench: Bench) -> list[str]:
    plan = bench.plan
    static_p99 = bench.summary.get("cold", {}).get("static", {}).get("ping_p99")
    return section(
        bench,
        "cold",
        f"**cold files**: {plan.cold_files} files of {size(plan.cold_size)} downloaded at once "
        f"(curl --parallel), their page cache dropped (posix_fadvise DONTNEED) before each of "
        f"{plan.cold_waves} waves a run; /ping on a fresh connection every "
        f"{plan.cold_ping_interval * 1000:.0f} ms meanwhile, percentiles over every ping of "
        "every run (a failed ping counts as 2 s)",
        [
            ("MB/s", lambda v: fmt(v["mbps"])),
            ("complete", lambda v: f"{v['ok']}/{v['downloads']}"),
            ("pings", lambda v: str(v["pings"])),
            ("/ping p50 ms", lambda v: fmt(v["ping_p50"], 1)),
            ("/ping p99 ms", lambda v: fmt(v["ping_p99"], 1)),
            ("p99 vs static", lambda v: fmt(ratio(v["ping_p99"], static_p99), 2, "x")),
            ("/ping max ms", lambda v: fmt(v["ping_max"], 1)),
            ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 2)),
            (
                "resident after drop MiB",
                lambda v: (
                    "?"
                    if v["resident_after_drop"] is None
                    else fmt(v["resident_after_drop"] / MiB, 1)
                ),
            ),
        ],
    )


def targets(bench: Bench) -> list[Target]:
    found = ratio_targets(
        bench,
        "cold: /ping p99 vs static",
        "cold",
        "ping_p99",
        "static",
        None,
        bench.plan.cold_ping_target,
        labels=("safe-static",),
        unit=lambda v: f"{v:.1f} ms",
    )
    v = bench.summary.get("cold", {}).get("safe-static")
    if v is not None:
        found.append(
            Target(
                "cold: downloads complete",
                "safe-static",
                f"{v['ok']}/{v['downloads']}",
                f"{v['downloads']}/{v['downloads']}",
                v["ok"] >= v["downloads"],
            )
        )
    return found


SCENARIO = Scenario(
    "cold",
    run,
    tables,
    targets,
    files=files,
    client="curl --parallel + Python sockets (/ping)",
)
