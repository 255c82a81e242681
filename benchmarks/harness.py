"""
The benchmark run's state (`Bench`), its server processes (`Server`) and every process it
starts (`Processes`, which stops them all, also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.plan import SEED, MiB, Plan, Variant

__all__ = (
    "CLIENTS",
    "HOST",
    "SERVERS",
    "Bench",
    "DataFile",
    "Processes",
    "Server",
    "last_json",
    "read_line",
)

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers.py"
CLIENTS = HERE / "clients.py"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class DataFile:
    """A file of seeded random bytes that the servers serve."""

    path: Path
    size: int
    sha256: str


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


def read_line(stream: IO[bytes] | None, deadline: float) -> bytes:
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


def last_json(output: bytes) -> dict[str, Any]:
    """The JSON object on the last non-empty line of a client's output."""
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


@dataclass
class Bench:
    """One benchmark run: its options, plan, data files, and the figures measured so far."""

    options: argparse.Namespace
    plan: Plan
    tmp: Path
    processes: Processes = field(default_factory=Processes)
    files: dict[str, DataFile] = field(default_factory=dict)
    #: scenario -> variant label -> one dict per measurement
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    #: scenario -> variant label -> the figures the report shows
    summary: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    server_info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    server_count: int = 0

    def make_files(self, wanted: dict[str, int]) -> None:
        """Write a file of seeded random bytes for each name -> size (one per size)."""
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
        """The *candidates* chosen with ``--variants``."""
        chosen: list[str] = self.options.variants
        return [v for v in candidates if v.label in chosen]

    def record(self, scenario: str, label: str, run: dict[str, Any]) -> None:
        self.runs.setdefault(scenario, {}).setdefault(label, []).append(run)

    def say(self, scenario: str, label: str, run: int | str, text: str) -> None:
        """One line of progress; *run* is a round (0-based) or a ready-made "n/N"."""
        if isinstance(run, int):
            run = f"{run + 1}/{self.options.rounds}"
        print(f"  {scenario:<10} {label:<17} {run:>5}  {text}", flush=True)

    def order(self, variants: Sequence[Variant], round_: int) -> list[Variant]:
        """The round's order: A B C, then B C A, ... (every variant in every position)."""
        shift = round_ % len(variants)
        return list(variants[shift:]) + list(variants[:shift])

    def note_server(self, stats: dict[str, Any]) -> None:
        """Keep the versions and settings a server reports, for the report's header."""
        for key in ("python", "python_implementation", "tornado", "tornado_safestream"):
            self.server_info.setdefault(key, stats.get(key))
        for key in ("library_default_max_buffer_bytes", "max_buffer_bytes"):
            if stats.get(key) is not None:
                self.server_info.setdefault(key, stats[key])

    def client_log(self) -> IO[bytes]:
        """The file the clients' standard error goes to (open it in a ``with``)."""
        return open(self.tmp / "clients.log", "ab")


class Server:
    """One ``servers.py`` process, started at once; its port is known when this returns."""

    def __init__(
        self,
        bench: Bench,
        variant: Variant,
        data: DataFile,
        chunk: int,
        threads: int,
        extra: Sequence[str] = (),
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
            *extra,
        ]
        if bench.options.max_buffer_bytes is not None:
            cmd += ["--max-buffer-bytes", str(bench.options.max_buffer_bytes)]
        if bench.options.chunked:
            cmd.append("--chunked")
        for value in bench.options.server_option:
            cmd += ["--option", value]
        for value in bench.options.app_setting:
            cmd += ["--app-setting", value]
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

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

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
        """The server's ``/stats`` (CPU time, RSS, threads, errors logged, versions)."""
        stats = json.loads(self.get("/stats?reset_peak=1" if reset_peak else "/stats"))
        assert isinstance(stats, dict)
        return stats

    def stats_within(self, timeout: float) -> dict[str, Any]:
        """``/stats``, or `OSError` (a timeout) if the server's loop does not answer in time."""
        stats = json.loads(self.get("/stats", timeout=timeout))
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
