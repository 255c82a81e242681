"""
The runner's side of the clients: one download with ``curl``, with the Python client, and
many at once with the Python clients (``clients.py``), each returning one measurement.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import CLIENTS, Bench, DataFile, Server, last_json, read_line
from benchmarks.machine import CURL

__all__ = ("python_concurrent", "single_download")


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


def python_concurrent(
    bench: Bench, server: Server, data: DataFile, clients: int, processes: int
) -> dict[str, Any]:
    """
    *clients* downloads at once from Python clients in *processes* processes; each body is
    kept in memory and its SHA-256 checked once every client is done.
    """
    processes = max(min(processes, clients), 1)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    timeout = 120.0
    started: list[subprocess.Popen[bytes]] = []
    try:
        with bench.client_log() as log:
            for share in shares:
                cmd = [sys.executable, str(CLIENTS), "fetch", "--port", str(server.port)]
                cmd += ["--downloads", str(share), "--threads", str(share), "--wait-go"]
                cmd += ["--hash-after"]
                cmd += ["--expect-size", str(data.size), "--expect-sha256", data.sha256]
                cmd += ["--timeout", f"{timeout:.0f}"]
                started.append(
                    bench.processes.start(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                    )
                )
        deadline = time.monotonic() + 30.0
        for process in started:
            if read_line(process.stdout, deadline).strip() != b"READY":
                raise RuntimeError("a client process did not get ready")
        start = time.monotonic()
        for process in started:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        # every body is hashed, once all the clients are done (not to compete with them)
        deadline = time.monotonic() + timeout + 15
        for process in started:
            if read_line(process.stdout, deadline).strip() != b"DONE":
                raise RuntimeError("a client process did not finish its downloads")
        for process in started:
            assert process.stdin is not None
            process.stdin.write(b"hash\n")
        results = []
        for process in started:
            out, _ = process.communicate(timeout=60)
            results.append(last_json(out))
    finally:
        for process in started:
            bench.processes.stop(process)
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
