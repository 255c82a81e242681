"""
Benchmark tornado-safestream against Tornado's own ways of streaming a file (issue 4).

Run it with ``python3 run.py bench`` from the repository root (it sets up ``.venvs/bench``),
or ``python benchmarks/run.py`` with a Python that has Tornado and the package installed.
``--quick`` is a smoke run (one round, smaller sizes) of under a minute; the full run takes
four to five minutes on a 2-core machine.

Each server variant (``benchmarks/servers.py``) runs as a process of its own on 127.0.0.1,
and the variants are measured in turns (A B C, B C A, ...) for ``--rounds`` rounds (big,
small and concurrent take 5, 2 and 3 such passes a round); the tables give the median of
the runs, their interquartile range, and ratios to references measured in the same run.
The CPU time the hypervisor steals during each measurement is recorded too (``/proc/stat``):
on a shared host it is what makes single runs vary.

big
    One client (``curl -o /dev/null``), 128 MiB file, 64 KiB chunks: MB/s, ratio to
    `StaticFileHandler`, the server's CPU seconds per GiB sent (from its ``/stats``).
small
    16 MiB produced as 1 KiB chunks: ratios to the loop-native handler and to the per-chunk
    ``run_in_executor`` handler.
concurrent
    16 clients x 16 MiB at once (Python clients in 4 processes): aggregate MB/s, ratio to
    static, bodies that came out wrong. Each body is received straight into memory and its
    SHA-256 checked once every client is done, so that hashing takes no CPU from the run.
slow
    40 clients reading at 256 KiB/s for 8 s from a 64 MiB file, executor of 4 threads: the
    server's peak RSS growth, clients that received at least 256 KiB, and the p50/p99
    latency of ``/ping`` (fresh connections, 20 a second) during the load.
stalled
    200 streams whose clients read the headers and then stop reading, executor of 4
    threads: median latency of a fresh ``/ping`` and of a fresh 64 KiB download.

``+assert`` variants run with assertion mode on. Results go to
``benchmarks/results/latest.json`` and ``latest.md``; the markdown is printed at the end,
with each target of the issue marked PASS or MISS. Linux only (``/proc``), 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = HERE / "servers.py"
CLIENTS = HERE / "clients.py"
RESULTS = HERE / "results"
HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1e6
SEED = 20240601
CURL = "/usr/bin/curl"
#: Above this share of its CPUs busy before or after the run, the machine is not quiet.
QUIET = 0.10
#: Above this share of CPU time stolen by the hypervisor during a measurement: noisy figures.
STEAL_NOISY = 0.05

#: One cell of a report table, from a variant's summary.
Cell = Callable[[dict[str, Any]], str]


# -- what is run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    style: str  # the servers.py variant
    assertions: bool = False

    @property
    def label(self) -> str:
        return f"{self.style}+assert" if self.assertions else self.style


def _variants(*labels: str) -> tuple[Variant, ...]:
    return tuple(Variant(label.split("+")[0], label.endswith("+assert")) for label in labels)


THROUGHPUT_VARIANTS = _variants(
    "static",
    "loop",
    "executor",
    "broken",
    "push",
    "generator",
    "push+assert",
    "generator+assert",
)
SLOW_VARIANTS = _variants("static", "executor", "push", "generator")
STALLED_VARIANTS = _variants(
    "static", "executor", "push", "generator", "push+assert", "generator+assert"
)
ALL_LABELS = tuple(v.label for v in THROUGHPUT_VARIANTS)
SCENARIOS = ("big", "small", "concurrent", "slow", "stalled")


@dataclass(frozen=True)
class Plan:
    """Sizes of one kind of run."""

    name: str
    big_size: int = 128 * MiB
    big_chunk: int = 64 * KiB
    #: interleaved passes per round: the short runs get more, to take their noise out
    passes: tuple[tuple[str, int], ...] = (("big", 5), ("small", 2), ("concurrent", 3))
    small_size: int = 16 * MiB
    small_chunk: int = 1 * KiB
    concurrent_clients: int = 16
    concurrent_size: int = 16 * MiB
    concurrent_processes: int = 4
    slow_clients: int = 40
    slow_rate: int = 256 * KiB  # bytes per second, each
    slow_seconds: float = 8.0
    slow_size: int = 64 * MiB
    slow_served: int = 256 * KiB  # a client that received this much was served
    ping_interval: float = 0.05
    stalled_streams: int = 200
    stalled_probes: int = 10
    stall_threads: int = 4  # executor threads in the slow and stalled scenarios
    probe_size: int = 64 * KiB  # the "fresh small download"
    fresh_timeout: float = 1.0  # a fresh request in the stalled scenario gives up after this
    rss_allowance: int = 16 * MiB  # slow target: clients x max_buffer_bytes + this


FULL = Plan("full")
QUICK = Plan(
    "quick",
    big_size=32 * MiB,
    small_size=4 * MiB,
    concurrent_clients=8,
    concurrent_size=4 * MiB,
    concurrent_processes=2,
    slow_clients=10,
    slow_seconds=3.0,
    slow_size=16 * MiB,
    stalled_streams=50,
    stalled_probes=5,
    passes=(("big", 2), ("small", 1), ("concurrent", 1)),
)


@dataclass(frozen=True)
class DataFile:
    path: Path
    size: int
    sha256: str


# -- processes -------------------------------------------------------------------------------


class Processes:
    """Every process the run starts, so that each is stopped, also on Ctrl-C or an error."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # a session of its own: Ctrl-C reaches the runner only, which then stops them in order
        process = subprocess.Popen(list(cmd), start_new_session=True, bufsize=0, **kwargs)
        self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        if process in self._started:
            self._started.remove(process)

    def stop_all(self) -> None:
        for process in list(self._started):
            try:
                self.stop(process)
            except (OSError, subprocess.TimeoutExpired) as e:
                print(f"could not stop process {process.pid}: {e}", file=sys.stderr)


def _read_line(stream: IO[bytes] | None, deadline: float) -> bytes:
    """One line from an unbuffered pipe, by *deadline*."""
    assert stream is not None
    fd = stream.fileno()
    line = bytearray()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete line in time (got {bytes(line)!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            byte = os.read(fd, 1)
            if not byte:
                raise EOFError(f"the process closed its output (got {bytes(line)!r})")
            line += byte
    return bytes(line)


def _last_json(output: bytes) -> dict[str, Any]:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("a client printed nothing")
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """One ``servers.py`` process."""

    def __init__(
        self,
        bench: Bench,
        variant: Variant,
        data: DataFile,
        chunk: int,
        threads: int,
    ) -> None:
        self.variant = variant
        bench.server_count += 1
        name = f"server-{bench.server_count:03d}-{variant.label}"
        self.log = bench.tmp / f"{name}.log"
        port_file = bench.tmp / f"{name}.port"
        cmd = [
            sys.executable,
            str(SERVERS),
            variant.style,
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--file",
            str(data.path),
            "--small-file",
            str(bench.files["probe"].path),
            "--chunk",
            str(chunk),
            "--executor-threads",
            str(threads),
            "--exit-with-parent",
            "--max-lifetime",
            "3600",
        ]
        if bench.options.max_buffer_bytes is not None:
            cmd += ["--max-buffer-bytes", str(bench.options.max_buffer_bytes)]
        if bench.options.chunked:
            cmd.append("--chunked")
        if variant.assertions:
            cmd.append("--assert")
        self._processes = bench.processes
        with open(self.log, "wb") as log:
            self.process = bench.processes.start(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30.0
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"server {variant.label} did not start; its log:\n{_tail(self.log)}"
                )
            time.sleep(0.02)
        self.port = int(port_file.read_text("ascii"))

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path} on {self.variant.label}: {response.status}")
            return body
        finally:
            connection.close()

    def stats(self, reset_peak: bool = False) -> dict[str, Any]:
        stats = json.loads(self.get("/stats?reset_peak=1" if reset_peak else "/stats"))
        assert isinstance(stats, dict)
        return stats

    def warm_up(self) -> None:
        for _ in range(2):
            self.get("/ping")
            self.get("/small")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self._processes.stop(self.process)


# -- statistics and formatting ------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def quartiles(values: Sequence[float | None]) -> tuple[float, float] | None:
    """The first and third quartiles (None for fewer than 2 values)."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    q1, _, q3 = statistics.quantiles(present, n=4, method="inclusive")
    return q1, q3


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100.0 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def fmt_busy(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}%"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in rows
    ]


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    variant: str
    figure: str
    limit: str
    passed: bool


@dataclass
class Bench:
    options: argparse.Namespace
    plan: Plan
    tmp: Path
    processes: Processes = field(default_factory=Processes)
    files: dict[str, DataFile] = field(default_factory=dict)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    summary: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    server_info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    server_count: int = 0

    # -- set-up

    def make_files(self) -> None:
        plan = self.plan
        wanted = {
            "big": plan.big_size,
            "small": plan.small_size,
            "concurrent": plan.concurrent_size,
            "slow": plan.slow_size,
            "probe": plan.probe_size,
        }
        rng = random.Random(SEED)
        made: dict[int, DataFile] = {}
        for name, size in wanted.items():
            if size in made:  # the same size: the same file
                self.files[name] = made[size]
                continue
            path = self.tmp / f"{name}-{size}.bin"
            digest = hashlib.sha256()
            with open(path, "wb") as f:
                left = size
                while left:
                    piece = rng.getrandbits(8 * min(left, 4 * MiB)).to_bytes(
                        min(left, 4 * MiB), "little"
                    )
                    f.write(piece)
                    digest.update(piece)
                    left -= len(piece)
            made[size] = self.files[name] = DataFile(path, size, digest.hexdigest())

    def variants(self, candidates: Sequence[Variant]) -> list[Variant]:
        chosen: list[str] = self.options.variants
        return [v for v in candidates if v.label in chosen]

    def record(self, scenario: str, label: str, run: dict[str, Any]) -> None:
        self.runs.setdefault(scenario, {}).setdefault(label, []).append(run)

    def say(self, scenario: str, label: str, run: int | str, text: str) -> None:
        if isinstance(run, int):
            run = f"{run + 1}/{self.options.rounds}"
        print(f"  {scenario:<10} {label:<17} {run:>5}  {text}", flush=True)

    def order(self, variants: Sequence[Variant], round_: int) -> list[Variant]:
        """The round's order: A B C, then B C A, ... (every variant in every position)."""
        shift = round_ % len(variants)
        return list(variants[shift:]) + list(variants[:shift])

    def note_server(self, stats: dict[str, Any]) -> None:
        for key in ("python", "python_implementation", "tornado", "tornado_safestream"):
            self.server_info.setdefault(key, stats.get(key))
        if stats.get("library_default_max_buffer_bytes") is not None:
            self.server_info.setdefault(
                "library_default_max_buffer_bytes", stats["library_default_max_buffer_bytes"]
            )
        if stats.get("max_buffer_bytes") is not None:
            self.server_info.setdefault("max_buffer_bytes", stats["max_buffer_bytes"])

    # -- one download with curl (or the Python client)

    def single_download(self, server: Server, data: DataFile) -> dict[str, Any]:
        expect = data.size
        max_time = 120.0
        if self.options.python_client:
            return self._python_single(server, expect, max_time)
        url = f"http://{HOST}:{server.port}/file"
        cmd = [CURL, "-s", "-o", "/dev/null", "--max-time", f"{max_time:.0f}"]
        # a transfer slower than 1 KB/s for 5 s is given up: broken may never finish
        cmd += ["--speed-limit", "1000", "--speed-time", "5"]
        cmd += ["-w", "%{http_code} %{size_download} %{time_total}", url]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, timeout=max_time + 10, check=False)
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        try:
            code, size, seconds = done.stdout.decode("ascii", "replace").split()
            int(size), float(seconds)
        except ValueError:
            code, size, seconds = "?", "0", "0"
        status = "ok"
        if done.returncode != 0:
            status = f"curl exit {done.returncode}"
        elif code != "200":
            status = f"status {code}"
        elif int(size) != expect:
            status = "short"
        return {
            "status": status,
            "bytes": int(size),
            "seconds": float(seconds),
            "wall": wall,
            "client_cpu": client_cpu,
        }

    def _python_single(self, server: Server, expect: int, max_time: float) -> dict[str, Any]:
        cmd = [sys.executable, str(CLIENTS), "fetch", "--port", str(server.port)]
        cmd += ["--expect-size", str(expect), "--timeout", f"{max_time:.0f}"]
        done = subprocess.run(cmd, capture_output=True, timeout=max_time + 15, check=False)
        result = _last_json(done.stdout)
        download = result["downloads"][0]
        return {
            "status": download["status"],
            "bytes": download["nbytes"],
            "seconds": download["end"] - download["start"],
            "wall": result["end"] - result["start"],
            "client_cpu": result["cpu"],  # from its start to its end: no interpreter start-up
        }

    # -- scenarios

    def throughput(self, scenario: str, data: DataFile, chunk: int) -> None:
        variants = self.variants(THROUGHPUT_VARIANTS)
        if not variants:
            return
        print(f"\n{scenario}: {data.size // MiB} MiB, {chunk} B chunks", flush=True)
        servers: dict[str, Server] = {}
        try:
            for variant in variants:
                server = Server(self, variant, data, chunk, self.options.threads)
                servers[variant.label] = server
                server.warm_up()
                self.note_server(server.stats())
            passes = self.options.rounds * dict(self.plan.passes).get(scenario, 1)
            for round_ in range(passes):
                for variant in self.order(variants, round_):
                    server = servers[variant.label]
                    before = server.stats()
                    cpu_before = CpuTimes.now()
                    if scenario == "concurrent":
                        run = self.concurrent_download(server, data)
                    else:
                        run = self.single_download(server, data)
                    run["steal"] = steal_since(cpu_before)
                    after = server.stats()
                    run["server_cpu"] = after["cpu"] - before["cpu"]
                    run["server_errors"] = after["errors_logged"] - before["errors_logged"]
                    run["mbps"] = run["bytes"] / run["seconds"] / MB if run["seconds"] else None
                    run["cpu_per_gib"] = (
                        run["server_cpu"] / (run["bytes"] / GiB) if run["bytes"] else None
                    )
                    run["client_cpu_percent"] = 100.0 * run["client_cpu"] / run["wall"]
                    self.record(scenario, variant.label, run)
                    bad = f"  {run['bad']} bad" if run.get("bad") else ""
                    if run.get("status", "ok") != "ok":
                        bad += f"  {run['status']}"
                    self.say(
                        scenario,
                        variant.label,
                        f"{round_ + 1}/{passes}",
                        f"{fmt(run['mbps']):>6} MB/s  server {fmt(run['cpu_per_gib'], 2)} "
                        f"CPU s/GiB  client CPU {run['client_cpu_percent']:.0f}%{bad}",
                    )
        finally:
            for server in servers.values():
                server.stop()
        self.summarise_throughput(scenario)

    def concurrent_download(self, server: Server, data: DataFile) -> dict[str, Any]:
        plan = self.plan
        clients = plan.concurrent_clients
        processes = max(min(plan.concurrent_processes, clients), 1)
        shares = [clients // processes + (i < clients % processes) for i in range(processes)]
        timeout = 120.0
        started: list[subprocess.Popen[bytes]] = []
        try:
            with open(self.tmp / "clients.log", "ab") as log:
                for share in shares:
                    cmd = [sys.executable, str(CLIENTS), "fetch", "--port", str(server.port)]
                    cmd += ["--downloads", str(share), "--threads", str(share), "--wait-go"]
                    cmd += ["--hash-after"]
                    cmd += ["--expect-size", str(data.size), "--expect-sha256", data.sha256]
                    cmd += ["--timeout", f"{timeout:.0f}"]
                    started.append(
                        self.processes.start(
                            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                        )
                    )
            deadline = time.monotonic() + 30.0
            for process in started:
                if _read_line(process.stdout, deadline).strip() != b"READY":
                    raise RuntimeError("a client process did not get ready")
            start = time.monotonic()
            for process in started:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
            # every body is hashed, once all the clients are done (not to compete with them)
            deadline = time.monotonic() + timeout + 15
            for process in started:
                if _read_line(process.stdout, deadline).strip() != b"DONE":
                    raise RuntimeError("a client process did not finish its downloads")
            for process in started:
                assert process.stdin is not None
                process.stdin.write(b"hash\n")
            results = []
            for process in started:
                out, _ = process.communicate(timeout=60)
                results.append(_last_json(out))
        finally:
            for process in started:
                self.processes.stop(process)
        downloads = [d for result in results for d in result["downloads"]]
        end = max(result["end"] for result in results)
        statuses: dict[str, int] = {}
        for d in downloads:
            statuses[d["status"]] = statuses.get(d["status"], 0) + 1
        ok = statuses.get("ok", 0)
        return {
            "status": "ok",
            "bytes": sum(d["nbytes"] for d in downloads),
            "seconds": end - start,
            "wall": end - start,
            "client_cpu": sum(result["cpu"] for result in results),
            "downloads": len(downloads),
            "ok": ok,
            "bad": len(downloads) - ok,
            "statuses": statuses,
            "details": sorted({d["detail"] for d in downloads if d["status"] != "ok"})[:5],
        }

    def summarise_throughput(self, scenario: str) -> None:
        runs = self.runs.get(scenario, {})
        summary = self.summary.setdefault(scenario, {})
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

    def slow(self) -> None:
        variants = self.variants(SLOW_VARIANTS)
        if not variants:
            return
        plan = self.plan
        data = self.files["slow"]
        print(
            f"\nslow: {plan.slow_clients} clients at {plan.slow_rate // KiB} KiB/s for "
            f"{plan.slow_seconds:.0f} s, {data.size // MiB} MiB file, "
            f"{plan.stall_threads} threads",
            flush=True,
        )
        for round_ in range(self.options.rounds):
            for variant in self.order(variants, round_):
                run = self.slow_once(variant, data)
                self.record("slow", variant.label, run)
                self.say(
                    "slow",
                    variant.label,
                    round_,
                    f"RSS +{fmt(run['rss_growth'] / MiB, 1)} MiB  served "
                    f"{run['served']}/{run['clients']}  /ping p50 {fmt(run['ping_p50'], 1)} "
                    f"p99 {fmt(run['ping_p99'], 1)} ms"
                    + (f"  {run['ping_failures']} pings failed" if run["ping_failures"] else ""),
                )
        summary = self.summary.setdefault("slow", {})
        for label, items in self.runs.get("slow", {}).items():
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

    def slow_once(self, variant: Variant, data: DataFile) -> dict[str, Any]:
        plan = self.plan
        server = Server(self, variant, data, 64 * KiB, plan.stall_threads)
        started: list[subprocess.Popen[bytes]] = []
        try:
            server.warm_up()
            before = server.stats(reset_peak=True)
            self.note_server(before)
            client_timeout = plan.slow_seconds + 30.0
            slow_cmd = [sys.executable, str(CLIENTS), "slow", "--port", str(server.port)]
            slow_cmd += ["--clients", str(plan.slow_clients), "--rate", str(plan.slow_rate)]
            slow_cmd += ["--duration", str(plan.slow_seconds), "--wait-go"]
            ping_cmd = [sys.executable, str(CLIENTS), "probe", "--port", str(server.port)]
            ping_cmd += ["--path", "/ping", "--interval", str(plan.ping_interval)]
            ping_cmd += ["--duration", str(plan.slow_seconds), "--wait-go"]
            ping_cmd += ["--request-timeout", "2"]
            with open(self.tmp / "clients.log", "ab") as log:
                for cmd in (slow_cmd, ping_cmd):
                    started.append(
                        self.processes.start(
                            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                        )
                    )
            deadline = time.monotonic() + 30.0
            for process in started:
                if _read_line(process.stdout, deadline).strip() != b"READY":
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
                self.processes.stop(process)
            server.stop()
        clients = _last_json(slow_out)["clients"]
        ping = _last_json(ping_out)["paths"]["/ping"]
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

    def stalled(self) -> None:
        variants = self.variants(STALLED_VARIANTS)
        if not variants:
            return
        plan = self.plan
        data = self.files["slow"]
        print(
            f"\nstalled: {plan.stalled_streams} streams of a {data.size // MiB} MiB file that "
            f"stop reading after the headers, {plan.stall_threads} threads",
            flush=True,
        )
        for round_ in range(self.options.rounds):
            for variant in self.order(variants, round_):
                run = self.stalled_once(variant, data)
                self.record("stalled", variant.label, run)
                self.say(
                    "stalled",
                    variant.label,
                    round_,
                    f"headers {run['headers']}/{run['streams']}  /ping {fmt(run['ping_ms'], 1)} "
                    f"ms  small {fmt(run['small_ms'], 1)} ms"
                    + (f"  {run['small_timeouts']} timed out" if run["small_timeouts"] else "")
                    + f"  RSS +{fmt(run['rss_growth'] / MiB, 0)} MiB"
                    + f"  recovered in {fmt(run['recovery_s'], 2, ' s')}",
                )
        summary = self.summary.setdefault("stalled", {})
        for label, items in self.runs.get("stalled", {}).items():
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

    def stalled_once(self, variant: Variant, data: DataFile) -> dict[str, Any]:
        plan = self.plan
        server = Server(self, variant, data, 64 * KiB, plan.stall_threads)
        stall: subprocess.Popen[bytes] | None = None
        recovery: float | None = None
        try:
            server.warm_up()
            before = server.stats(reset_peak=True)
            self.note_server(before)
            cmd = [sys.executable, str(CLIENTS), "stall", "--port", str(server.port)]
            cmd += ["--streams", str(plan.stalled_streams), "--header-timeout", "5"]
            cmd += ["--hold", "120"]
            with open(self.tmp / "clients.log", "ab") as log:
                stall = self.processes.start(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                )
            ready = json.loads(_read_line(stall.stdout, time.monotonic() + 60.0))
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
            probe = _last_json(done.stdout)["paths"]
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
                self.processes.stop(stall)
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

    # -- targets and the report

    def targets(self) -> list[Target]:
        """The issue's targets that this run's scenarios measured, each PASS or MISS."""
        targets: list[Target] = []
        plan = self.plan
        safe = ("push", "generator")

        def get(scenario: str, label: str, key: str) -> Any:
            return self.summary.get(scenario, {}).get(label, {}).get(key)

        def vs(
            what: str, scenario: str, key: str, ref: str, low: float | None, high: float | None
        ) -> None:
            for label in safe:
                value = get(scenario, label, key)
                r = ratio(value, get(scenario, ref, key))
                if r is None:
                    continue
                limit = low if low is not None else high
                # three decimals where two would hide which side of the limit it is on
                figure = f"{r:.3f}x" if limit is not None and round(r, 2) == limit else f"{r:.2f}x"
                if key == "cpu_per_gib":
                    figure = f"{value:.2f} s/GiB, {figure}"
                elif key == "ping_p99":
                    figure = f"{value:.1f} ms, {figure}"
                if low is not None:
                    targets.append(Target(what, label, figure, f">= {low:.1f}x", r >= low))
                elif high is not None:
                    targets.append(Target(what, label, figure, f"<= {high:.1f}x", r <= high))

        vs("big: MB/s vs static", "big", "mbps", "static", 1.0, None)
        vs("big: server CPU/GiB vs static", "big", "cpu_per_gib", "static", None, 1.2)
        vs("small: MB/s vs loop", "small", "mbps", "loop", 1.0, None)
        vs("small: MB/s vs executor", "small", "mbps", "executor", 5.0, None)
        vs("concurrent: MB/s vs static", "concurrent", "mbps", "static", 1.0, None)
        for label in safe:
            bad = get("concurrent", label, "bad")
            if bad is not None:
                total = get("concurrent", label, "runs")
                targets.append(
                    Target("concurrent: wrong bodies", label, f"{bad} of {total}", "0", bad == 0)
                )
        for label in safe:
            growth = get("slow", label, "rss_growth")
            mbb = get("slow", label, "max_buffer_bytes")
            if growth is not None and mbb is not None:
                limit = plan.slow_clients * mbb + plan.rss_allowance
                text = (
                    f"<= {limit / MiB:.0f} MiB ({plan.slow_clients} x {mbb / MiB:g} MiB"
                    f" + {plan.rss_allowance // MiB} MiB)"
                )
                targets.append(
                    Target(
                        "slow: peak RSS growth",
                        label,
                        f"{growth / MiB:.1f} MiB",
                        text,
                        growth <= limit,
                    )
                )
        for label in safe:
            served = get("slow", label, "served_min")
            if served is not None:
                n = plan.slow_clients
                targets.append(
                    Target(
                        "slow: clients served (worst round)",
                        label,
                        f"{served}/{n}",
                        f"{n}/{n}",
                        served >= n,
                    )
                )
        vs("slow: /ping p99 vs static", "slow", "ping_p99", "static", None, 2.0)
        for key, what in (("ping_ms", "/ping"), ("small_ms", "64 KiB download")):
            value = get("stalled", "generator", key)
            if value is not None:
                targets.append(
                    Target(
                        f"stalled: fresh {what}, median",
                        "generator",
                        f"{value:.1f} ms",
                        "<= 50 ms",
                        value <= 50,
                    )
                )
        for scenario in ("big", "small", "concurrent"):
            for label in safe:
                r = ratio(get(scenario, f"{label}+assert", "mbps"), get(scenario, label, "mbps"))
                if r is not None:
                    figure = f"{r:.3f}x" if round(r, 2) == 0.97 else f"{r:.2f}x"
                    targets.append(
                        Target(
                            f"{scenario}: assertion mode on/off",
                            label,
                            figure,
                            ">= 0.97x",
                            r >= 0.97,
                        )
                    )
        return targets

    def report(self, header: list[str], runtime: float) -> str:
        s = self.summary
        lines = list(header)
        plan = self.plan

        def get(scenario: str, label: str, key: str) -> Any:
            return s.get(scenario, {}).get(label, {}).get(key)

        def versus(scenario: str, key: str, ref: str) -> Cell:
            return lambda v: fmt_ratio(ratio(v[key], get(scenario, ref, key)))

        def mib(key: str, digits: int) -> Cell:
            return lambda v: fmt(None if v[key] is None else v[key] / MiB, digits)

        def section(scenario: str, title: str, columns: Sequence[tuple[str, Cell]]) -> None:
            if scenario not in s:
                return
            rows = [[label] + [cell(v) for _, cell in columns] for label, v in s[scenario].items()]
            lines.extend(["", title, ""])
            lines.extend(markdown_table(["variant"] + [name for name, _ in columns], rows))

        def iqr(v: dict[str, Any]) -> str:
            q = v["mbps_iqr"]
            return "-" if q is None else f"{fmt(q[0])}-{fmt(q[1])}"

        def runs(v: dict[str, Any]) -> str:
            return f"{v['bad']}/{v['runs']}"

        def client_cpu(v: dict[str, Any]) -> str:
            return fmt(v["client_cpu_percent"], 0, "%")

        def slow_limit(v: dict[str, Any]) -> str:
            mbb = v["max_buffer_bytes"]
            return "-" if mbb is None else fmt((v["clients"] * mbb + plan.rss_allowance) / MiB)

        client = "curl" if not self.options.python_client else "Python"
        section(
            "big",
            f"**big**: 1 client ({client}), {plan.big_size // MiB} MiB, "
            f"{plan.big_chunk // KiB} KiB chunks, {self.options.threads} threads (the body's "
            "size is checked; its SHA-256 in the concurrent scenario)",
            [
                ("MB/s", lambda v: fmt(v["mbps"])),
                ("IQR", iqr),
                ("vs static", versus("big", "mbps", "static")),
                ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 2)),
                ("vs static", versus("big", "cpu_per_gib", "static")),
                ("bad", runs),
                ("client CPU", client_cpu),
            ],
        )
        section(
            "small",
            f"**small chunks**: 1 client ({client}), {plan.small_size // MiB} MiB in "
            f"{plan.small_chunk} B chunks (static: its own 64 KiB chunks)",
            [
                ("MB/s", lambda v: fmt(v["mbps"])),
                ("IQR", iqr),
                ("vs loop", versus("small", "mbps", "loop")),
                ("vs executor", versus("small", "mbps", "executor")),
                ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 1)),
                ("bad", runs),
                ("client CPU", client_cpu),
            ],
        )
        section(
            "concurrent",
            f"**concurrent**: {plan.concurrent_clients} clients x {plan.concurrent_size // MiB}"
            f" MiB at once, the SHA-256 of every body checked ({plan.concurrent_processes} "
            f"client processes), {self.options.threads} threads",
            [
                ("aggregate MB/s", lambda v: fmt(v["mbps"])),
                ("IQR", iqr),
                ("vs static", versus("concurrent", "mbps", "static")),
                ("server CPU s/GiB", lambda v: fmt(v["cpu_per_gib"], 2)),
                ("wrong bodies", runs),
                ("client CPU", client_cpu),
            ],
        )
        section(
            "slow",
            f"**slow clients**: {plan.slow_clients} clients reading at {plan.slow_rate // KiB}"
            f" KiB/s for {plan.slow_seconds:g} s, {plan.slow_size // MiB} MiB file, "
            f"{plan.stall_threads} threads; /ping every {plan.ping_interval * 1000:.0f} ms on a "
            "fresh connection meanwhile; served: received >= "
            f"{plan.slow_served // KiB} KiB (worst round)",
            [
                ("peak RSS growth MiB", mib("rss_growth", 1)),
                ("limit MiB", slow_limit),
                ("served", lambda v: f"{v['served_min']}/{v['clients']}"),
                ("MB/s sent", lambda v: fmt(v["mbps"], 1)),
                ("/ping p50 ms", lambda v: fmt(v["ping_p50"], 1)),
                ("/ping p99 ms", lambda v: fmt(v["ping_p99"], 1)),
                ("p99 vs static", versus("slow", "ping_p99", "static")),
            ],
        )
        section(
            "stalled",
            f"**stalled clients**: {plan.stalled_streams} streams whose clients stop reading "
            f"after the headers, {plan.stall_threads} threads; a fresh request gives up after "
            f"{plan.fresh_timeout * 1000:.0f} ms and counts as that",
            [
                ("streams with headers", lambda v: f"{fmt(v['headers'])}/{v['streams']}"),
                ("fresh /ping ms", lambda v: fmt(v["ping_ms"], 1)),
                ("fresh 64 KiB ms", lambda v: fmt(v["small_ms"], 1)),
                ("64 KiB timed out", lambda v: f"{v['small_timeouts']}/{v['small_tries']}"),
                ("RSS growth MiB", mib("rss_growth", 0)),
                ("recovery s", lambda v: fmt(v["recovery_s"], 2)),
            ],
        )
        for scenario in ("big", "small", "concurrent"):
            for label, v in s.get(scenario, {}).items():
                if v["bad"]:
                    outcomes = ", ".join(
                        f"{count} {status}"
                        for status, count in sorted(v["outcomes"].items())
                        if status != "ok"
                    )
                    lines += [
                        "",
                        f"{scenario}/{label}: {v['bad']} of {v['runs']} downloads "
                        f"bad ({outcomes}).",
                    ]
        targets = self.targets()
        if targets:
            lines += ["", "**targets** (issue 4)", ""]
            lines += markdown_table(
                ["target", "variant", "figure", "limit", ""],
                [
                    [t.what, t.variant, t.figure, t.limit, "PASS" if t.passed else "MISS"]
                    for t in targets
                ],
            )
            passed = sum(t.passed for t in targets)
            lines += ["", f"{passed} of {len(targets)} targets PASS."]
        if any(label.startswith("push") for k in ("slow", "stalled") for label in s.get(k, {})):
            lines += [
                "",
                "push holds an executor thread for each stream while its client is behind (by "
                f"design): with {plan.stall_threads} threads, {plan.stall_threads} slow or "
                "stalled clients at a time are served, and the other requests wait for a thread.",
            ]
        if self.notes:
            lines += [""] + [f"Note: {note}" for note in self.notes]
        lines += ["", f"Runtime {runtime:.0f} s."]
        return "\n".join(lines) + "\n"


# -- the machine ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class CpuTimes:
    """All CPUs' jiffies from ``/proc/stat``: busy (not idle nor iowait), steal, total."""

    busy: int
    steal: int
    total: int

    @classmethod
    def now(cls) -> CpuTimes | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        steal = fields[7] if len(fields) > 7 else 0
        return cls(sum(fields) - idle, steal, sum(fields))

    def share_since(self, earlier: CpuTimes | None, what: str) -> float | None:
        """The share of the CPUs' time since *earlier* that was *what* ("busy", "steal")."""
        if earlier is None or self.total <= earlier.total:
            return None
        return float(getattr(self, what) - getattr(earlier, what)) / (self.total - earlier.total)


def machine_busy(seconds: float = 1.0) -> float | None:
    """The share of all CPUs that was busy over the next *seconds* (0 to 1)."""
    before = CpuTimes.now()
    time.sleep(seconds)
    after = CpuTimes.now()
    return after.share_since(before, "busy") if after is not None else None


def steal_since(before: CpuTimes | None) -> float | None:
    """The share of the CPUs' time since *before* that the hypervisor gave to others."""
    after = CpuTimes.now()
    return after.share_since(before, "steal") if after is not None else None


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tornado_safestream"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not rev:
        return "unknown"
    return f"{rev} (tornado_safestream/ modified)" if dirty else rev


def library_fingerprint() -> str:
    """A hash of the package's source files: the code the servers run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "tornado_safestream").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()[:12]


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "runner_python": platform.python_version(),
        "git": _git_revision(),
        "library": library_fingerprint(),
    }


def _curl_version() -> str | None:
    if not os.access(CURL, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [CURL, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return " ".join(out.split()[:2]) or None


# -- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py bench" if os.environ.get("SAFESTREAM_BENCH_COMMAND") else None,
        description="Benchmark tornado-safestream's styles against Tornado's own handlers.",
        epilog=f"scenarios: {', '.join(SCENARIOS)}; variants: {', '.join(ALL_LABELS)}. "
        "Results: benchmarks/results/latest.json and latest.md.",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, smaller sizes")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)"
    )
    parser.add_argument(
        "--variants", default=",".join(ALL_LABELS), help="comma-separated (default: all)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=8,
        help="executor threads in big/small/concurrent (default 8; slow/stalled use 4)",
    )
    parser.add_argument("--max-buffer-bytes", type=int, help="push/generator (default: library's)")
    parser.add_argument(
        "--chunked",
        action="store_true",
        help="handlers do not set Content-Length (chunked encoding; static always sets it)",
    )
    parser.add_argument(
        "--python-client", action="store_true", help="the Python client instead of curl"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where latest.json/.md go")
    parser.add_argument("--keep-temp", action="store_true", help="keep the data files and logs")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    plan = QUICK if options.quick else FULL
    if options.rounds is None:
        options.rounds = 1 if options.quick else 3
    options.scenarios = [s for s in options.scenarios.split(",") if s]
    options.variants = [v for v in options.variants.split(",") if v]
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    unknown += [v for v in options.variants if v not in ALL_LABELS]
    if unknown or options.rounds < 1:
        print(
            f"unknown scenarios or variants: {', '.join(unknown)}" if unknown else "--rounds >= 1"
        )
        return 2
    if not sys.platform.startswith("linux"):
        print("the benchmark reads /proc: it runs on Linux only")
        return 2
    problem = _check_environment()
    if problem:
        print(f"{sys.executable} cannot import tornado and tornado_safestream ({problem}):")
        print("run `python3 run.py bench`, which sets up .venvs/bench")
        return 2
    curl = _curl_version()
    if curl is None and not options.python_client:
        print(f"{CURL} not found: using the Python client for big/small")
        options.python_client = True

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
            bench.make_files()
            for scenario in options.scenarios:
                if scenario == "big":
                    bench.throughput("big", bench.files["big"], plan.big_chunk)
                elif scenario == "small":
                    bench.throughput("small", bench.files["small"], plan.small_chunk)
                elif scenario == "concurrent":
                    bench.throughput("concurrent", bench.files["concurrent"], plan.big_chunk)
                elif scenario == "slow":
                    bench.slow()
                elif scenario == "stalled":
                    bench.stalled()
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
    host["git_after"] = _git_revision()
    host["library_after"] = library_fingerprint()
    if host["library_after"] != host["library"]:
        bench.notes.append(
            f"tornado_safestream/ changed during the run (git {host['git']} before, "
            f"{host['git_after']} after): servers started at different times may have run "
            "different code."
        )
    steals = [
        run["steal"]
        for scenario in bench.runs.values()
        for items in scenario.values()
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
    info = bench.server_info
    mbb = info.get("max_buffer_bytes")
    passes = ", ".join(
        f"{name}: {n} passes a round"
        for name, n in plan.passes
        if n > 1 and name in options.scenarios
    )
    passes = f" ({passes})" if passes else ""
    header = [
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
        + f". Client: {curl if not options.python_client else 'Python sockets'} "
        f"(big, small), Python sockets + hashlib (concurrent, slow, stalled).",
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
    if plan is QUICK:
        bench.notes.append(
            "quick run: smaller sizes and one round; the targets are set for the full run."
        )
    for scenario in ("big", "small"):
        for label, values in bench.summary.get(scenario, {}).items():
            if (values.get("client_cpu_percent") or 0) > 80:
                bench.notes.append(
                    f"{scenario}/{label}: the client used {values['client_cpu_percent']:.0f}% "
                    "of a core: it may be the bottleneck."
                )
    text = bench.report(header, runtime)
    print("\n" + text, end="")
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / "latest.md").write_text(text, "utf-8")
    results = {
        "command": command,
        "date": when.isoformat(),
        "machine": host,
        "servers": info,
        "plan": asdict(plan),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "summary": bench.summary,
        "targets": [asdict(t) for t in bench.targets()],
        "runs": bench.runs,
        "notes": bench.notes,
        "runtime_seconds": runtime,
    }
    (options.output / "latest.json").write_text(json.dumps(results, indent=1) + "\n", "utf-8")
    print(f"(written to {options.output / 'latest.md'} and latest.json)")
    return 0


if __name__ == "__main__":
    if sys.version_info < (3, 9):  # noqa: UP036 (a clear message on an old python3)
        sys.exit("the benchmark needs Python 3.9 or newer")
    sys.exit(main())
