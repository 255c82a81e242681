"""
``upload``: one large ``PUT`` to a file, three ways, and a ``/ping`` on the same server
meanwhile: ``data_received`` writing each chunk on the loop (``/upload/loop``),
``await run_in_executor(pool, f.write, chunk)`` per chunk (``/upload/executor``), and
`tornado_safestream.receive_on_executor` (``/upload/receive``). The client sends the body
from a 1 MiB buffer over one connection (no Python work per byte) while another thread of the
runner sends ``GET /ping`` on a keep-alive connection every 5 ms; MB/s is the body's size
over the time from its first byte sent to the response, and the ping figures are the
latencies of the pings sent during the upload. Targets: MB/s >= 1.0x the on-loop writer and
>= 1.3x the per-chunk executor; /ping p99 <= 1/5 of the on-loop writer's.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from benchmarks.harness import Bench, Server
from benchmarks.plan import MB, MiB, Variant
from benchmarks.report import Target, fmt, markdown_table, ratio_figure
from benchmarks.scenarios.base import Scenario
from benchmarks.scenarios.throughput import size
from benchmarks.stats import median, percentile, ratio

__all__ = ("SCENARIO",)

HOST = "127.0.0.1"
STYLES = ("loop", "executor", "receive")
#: How long one upload or one ping may take before the run gives up.
TIMEOUT = 600.0


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: ``(status, body)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed before the response head")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed inside the response body")
        body += more
    return status, body[:length]


def _pinger(port: int, interval: float, stop: threading.Event, out: list[float]) -> None:
    with socket.create_connection((HOST, port), TIMEOUT) as sock:
        request = f"GET /ping HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        while not stop.wait(interval):
            started = time.perf_counter()
            sock.sendall(request)
            status, _ = _read_response(sock)
            if status != 200:
                raise RuntimeError(f"/ping answered {status}")
            out.append(time.perf_counter() - started)


def _upload(port: int, style: str, total: int, interval: float) -> dict[str, Any]:
    pings: list[float] = []
    stop = threading.Event()
    pinger = threading.Thread(
        target=_pinger, args=(port, interval, stop, pings), name="upload-ping", daemon=True
    )
    block = memoryview(bytes(range(256)) * (MiB // 256))
    pinger.start()
    try:
        with socket.create_connection((HOST, port), TIMEOUT) as sock:
            head = (
                f"PUT /upload/{style} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {total}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            sock.sendall(head)
            left = total
            while left:
                piece = block[: min(left, len(block))]
                sock.sendall(piece)
                left -= len(piece)
            status, body = _read_response(sock)
            elapsed = time.perf_counter() - started
    finally:
        stop.set()
        pinger.join(TIMEOUT)
    if status != 200 or str(total).encode() not in body:
        raise RuntimeError(f"/upload/{style}: {status} {body[:200]!r}")
    return {
        "mbps": total / elapsed / MB,
        "seconds": elapsed,
        "pings": len(pings),
        "ping_p50_ms": None if not pings else 1000 * (median(pings) or 0.0),
        "ping_p99_ms": None if not pings else 1000 * (percentile(pings, 99) or 0.0),
        "ping_max_ms": None if not pings else 1000 * max(pings),
    }


def run(bench: Bench) -> None:
    plan = bench.plan
    total = plan.upload_size
    print(f"\nupload: one PUT of {size(total)} to a file, per style, /ping every 5 ms", flush=True)
    # Any variant serves the upload routes; the executor's 4 threads serve the two that use it.
    server = Server(bench, Variant("push"), bench.files["probe"], 64 * 1024, 4)
    try:
        server.warm_up()
        for style in STYLES:
            result = _upload(server.port, style, total, plan.upload_ping_interval)
            bench.record("upload", style, result)
            bench.summary.setdefault("upload", {})[style] = result
            bench.say(
                "upload",
                style,
                1,
                f"{result['mbps']:,.0f} MB/s in {result['seconds']:.2f} s; /ping p50 "
                f"{fmt(result['ping_p50_ms'], 2)} ms, p99 {fmt(result['ping_p99_ms'], 2)} ms, "
                f"max {fmt(result['ping_max_ms'], 2)} ms over {result['pings']} pings",
            )
    finally:
        server.stop()


def tables(bench: Bench) -> list[str]:
    summary = bench.summary.get("upload", {})
    if not summary:
        return []
    rows = [
        [
            style,
            fmt(v["mbps"]),
            fmt(v["seconds"], 2),
            fmt(v["ping_p50_ms"], 2),
            fmt(v["ping_p99_ms"], 2),
            fmt(v["ping_max_ms"], 2),
            str(v["pings"]),
        ]
        for style, v in summary.items()
    ]
    lines = [
        "",
        f"**upload**: one PUT of {size(bench.plan.upload_size)} to a file per style (one run "
        "each), /ping every 5 ms on the same server meanwhile",
        "",
    ]
    return lines + markdown_table(
        ["style", "MB/s", "s", "/ping p50 ms", "p99 ms", "max ms", "pings"], rows
    )


def targets(bench: Bench) -> list[Target]:
    summary = bench.summary.get("upload", {})
    ours, loop, executor = (summary.get(s) for s in ("receive", "loop", "executor"))
    if ours is None:
        return []
    found = []
    for other, name, limit in (
        (loop, "on-loop writer", 1.0),
        (executor, "per-chunk executor", 1.3),
    ):
        r = None if other is None else ratio(ours["mbps"], other["mbps"])
        if r is not None:
            found.append(
                Target(
                    f"upload: MB/s vs the {name}",
                    "receive",
                    f"{ours['mbps']:,.0f} MB/s, {ratio_figure(r, limit)}",
                    f">= {limit:.1f}x",
                    r >= limit,
                )
            )
    if loop is not None and ours["ping_p99_ms"] is not None and loop["ping_p99_ms"]:
        r = ours["ping_p99_ms"] / loop["ping_p99_ms"]
        found.append(
            Target(
                "upload: /ping p99 vs the on-loop writer's",
                "receive",
                f"{ours['ping_p99_ms']:.2f} ms vs {loop['ping_p99_ms']:.2f} ms, {r:.2f}x",
                "<= 0.20x",
                r <= 0.2,
            )
        )
    return found


SCENARIO = Scenario(
    "upload",
    run,
    tables,
    targets,
    files=lambda bench: {},
    client="Python sockets (one PUT, a keep-alive /ping)",
)
