"""
The runner's side of the clients, each returning one measurement: one download with ``curl``
or the Python client, many at once with ``curl --parallel`` (bodies hashed afterwards), and ``wrk``
for an independent cross-check. The Python clients are ``clients.py``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import CLIENTS, Bench, DataFile, Server, last_json
from benchmarks.machine import CURL, WRK

__all__ = (
    "curl_parallel",
    "single_download",
    "wrk_run",
)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def single_download(bench: Bench, server: Server, data: DataFile) -> dict[str, Any]:
    """One client downloads ``/file``: ``curl -o /dev/null``, or the Python client."""
    expect = data.size
    max_time = 120.0
    if bench.options.python_client:
        return _python_single(server, expect, max_time)
    cmd = [CURL, "-s", "-o", "/dev/null", "--max-time", f"{max_time:.0f}"]
    # a transfer slower than 1 KB/s for 5 s is given up: broken may never finish
    cmd += ["--speed-limit", "1000", "--speed-time", "5"]
    cmd += ["-w", "%{http_code} %{size_download} %{time_total}", f"{server.url}/file"]
    cpu_before = _children_cpu()
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, timeout=max_time + 10, check=False)
    wall = time.monotonic() - start
    client_cpu = _children_cpu() - cpu_before
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


def _python_single(server: Server, expect: int, max_time: float) -> dict[str, Any]:
    cmd = [sys.executable, str(CLIENTS), "fetch", "--port", str(server.port)]
    cmd += ["--expect-size", str(expect), "--timeout", f"{max_time:.0f}"]
    done = subprocess.run(cmd, capture_output=True, timeout=max_time + 15, check=False)
    result = last_json(done.stdout)
    download = result["downloads"][0]
    return {
        "status": download["status"],
        "bytes": download["nbytes"],
        "seconds": download["end"] - download["start"],
        "wall": result["end"] - result["start"],
        "client_cpu": result["cpu"],  # from its start to its end: no interpreter start-up
    }


def _shm_dir(bench: Bench) -> Path:
    """A fresh directory in memory (``/dev/shm``) for downloaded bodies, else in the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="safestream-bench-bodies-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="bodies-", dir=bench.tmp))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return digest.hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            digest.update(mapped)  # hashlib releases the GIL: two threads hash two bodies
    return digest.hexdigest()


def curl_parallel(
    bench: Bench,
    server: Server,
    data: DataFile,
    clients: int,
    processes: int,
    path: str = "/file",
    max_time: float = 120.0,
) -> dict[str, Any]:
    """
    *clients* downloads at once with ``curl --parallel`` in *processes* processes, each body
    written to a file in memory (``/dev/shm``); once every transfer is done, the SHA-256 of
    every body is checked (not timed). The processes start, read their transfers from their
    standard input and are timed from the moment it is written: no process start-up counts.
    """
    processes = max(min(processes, clients), 1)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    bodies = _shm_dir(bench)
    started: list[subprocess.Popen[bytes]] = []
    configs: list[bytes] = []
    outputs: list[bytes] = []
    n = 0
    try:
        for share in shares:
            lines = ['write-out = "%{http_code} %{size_download} %{filename_effective}\\n"']
            for _ in range(share):
                lines += [f'url = "{server.url}{path}"', f'output = "{bodies}/{n:04d}"']
                n += 1
            configs.append(("\n".join(lines) + "\n").encode())
        cpu_before = _children_cpu()
        with bench.client_log() as log:
            for share in shares:
                cmd = [CURL, "-s", "--parallel", "--parallel-immediate"]
                cmd += ["--parallel-max", str(share), "--max-time", f"{max_time:.0f}", "-K", "-"]
                started.append(
                    bench.processes.start(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                    )
                )
        # curl reads its whole config before it starts a transfer: the time it takes to
        # start up is spent waiting for it (a pause, not a synchronisation: only the timing
        # would suffer if a process were slower to start)
        time.sleep(0.3)
        start = time.monotonic()
        for process, config in zip(started, configs):
            assert process.stdin is not None
            process.stdin.write(config)
            process.stdin.close()
        for process in started:
            assert process.stdout is not None
            outputs.append(process.stdout.read())  # to its end: curl stops by --max-time
            process.wait(15)
        end = time.monotonic()
        client_cpu = _children_cpu() - cpu_before
        codes = [process.returncode for process in started]
        # the bodies' SHA-256, after the timing
        files = sorted(bodies.iterdir())
        with ThreadPoolExecutor(2) as pool:
            digests = dict(zip(files, pool.map(_sha256_file, files)))
    finally:
        for process in started:
            bench.processes.stop(process)
        shutil.rmtree(bodies, ignore_errors=True)
    # one line per transfer, in the order they ended: code, size, file
    transfers: dict[str, tuple[str, int]] = {}
    for out in outputs:
        for line in out.decode("utf-8", "replace").splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1].isdigit():
                transfers[fields[2]] = (fields[0], int(fields[1]))
    statuses: dict[str, int] = {}
    received = 0
    for i in range(clients):
        body = bodies / f"{i:04d}"
        code, size = transfers.get(str(body), ("?", 0))
        received += size
        if code != "200":
            status = f"status {code}"
        elif size != data.size:
            status = "short"
        elif digests.get(body) != data.sha256:
            status = "wrong"
        else:
            status = "ok"
        statuses[status] = statuses.get(status, 0) + 1
    ok = statuses.get("ok", 0)
    return {
        "status": "ok" if not any(codes) else f"curl exit {max(codes)}",
        "bytes": received,
        "seconds": end - start,
        "wall": end - start,
        "client_cpu": client_cpu,
        "downloads": clients,
        "ok": ok,
        "bad": clients - ok,
        "statuses": statuses,
    }


#: wrk's report, as one line of JSON (its Lua ``done`` hook).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"bytes": %d, "duration_us": %d, "requests": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}\\n',
    summary.bytes, summary.duration, summary.requests, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


def wrk_run(
    bench: Bench, server: Server, connections: int, seconds: float, threads: int = 2
) -> dict[str, Any]:
    """``wrk``: *connections* keep-alive connections download ``/file`` for *seconds*."""
    script = bench.tmp / "report.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT, "utf-8")
    cmd = [WRK, "-t", str(min(threads, connections)), "-c", str(connections)]
    cmd += ["-d", f"{seconds:g}s", "--timeout", "30s", "-s", str(script), f"{server.url}/file"]
    cpu_before = _children_cpu()
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, timeout=seconds + 60, check=False)
    wall = time.monotonic() - start
    client_cpu = _children_cpu() - cpu_before
    try:
        result = last_json(done.stdout)
    except (RuntimeError, ValueError):
        tail = done.stderr.decode("utf-8", "replace").strip()[-200:]
        return {
            "status": f"wrk exit {done.returncode}: {tail}",
            "bytes": 0,
            "seconds": 0.0,
            "wall": wall,
            "client_cpu": client_cpu,
        }
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "status": "ok" if done.returncode == 0 else f"wrk exit {done.returncode}",
        "bytes": result["bytes"],
        "seconds": result["duration_us"] / 1e6,
        "wall": wall,
        "client_cpu": client_cpu,
        "requests": result["requests"],
        "errors": errors,
        "bad": errors,
        "downloads": result["requests"],
    }
