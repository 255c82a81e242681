"""Lanes: generator producers that compute share few threads; those that wait run in parallel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Recorder,
    ServerFactory,
    fetch,
    payload,
    sha256,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, _lanes, stream_on_executor
from tornado_safestream._lanes import Lane

KiB = 1024
CHUNK = 16 * KiB
BODY = payload(2 * 1024 * KiB, 9)
STREAMS = 4
CURL = "/usr/bin/curl"


class WaitsTogether(SafeStreamMixin, RequestHandler):
    """Each stream, well after it parked and was resumed, waits for the others at a barrier:
    it gets through only if all of them run at the same time, in threads of their own."""

    def initialize(self, executor: Executor, barrier: threading.Barrier, rec: Recorder) -> None:
        self.executor = executor
        self.barrier = barrier
        self.rec = rec

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        for index, start in enumerate(range(0, len(BODY), CHUNK)):
            if index == 40:  # 640 KiB in: parked and resumed several times by now
                self.rec.add("barrier", self.barrier.wait(TIMEOUT))
            yield BODY[start : start + CHUNK]


class Overlap:
    """How many generators are between two yields at once, at each chunk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self.seen: list[int] = []

    def __enter__(self) -> None:
        with self._lock:
            self._active += 1
            self.seen.append(self._active)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._active -= 1


class Computes(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, overlap: Overlap) -> None:
        self.executor = executor
        self.overlap = overlap

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        for start in range(0, len(BODY), CHUNK):
            with self.overlap:
                chunk = BODY[start : start + CHUNK]
                sum(chunk[:4096])  # a little work for the interpreter,
                time.sleep(0)  # and a system call, as a read from the page cache is
            yield chunk


def _download_all(port: int, path: str, n: int) -> list[str]:
    with ThreadPoolExecutor(n) as clients:
        futures = [clients.submit(fetch, port, path, rcvbuf=16 * KiB) for _ in range(n)]
        return [sha256(future.result(TIMEOUT).body) for future in futures]


def test_producers_that_wait_run_in_parallel_up_to_the_executor_size(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    rec = Recorder()
    barrier = threading.Barrier(STREAMS)
    pool = make_executor(STREAMS)
    srv = server(
        [("/", WaitsTogether, dict(executor=pool, barrier=barrier, rec=rec))], sndbuf=16 * KiB
    )
    assert _download_all(srv.port, "/", STREAMS) == [sha256(BODY)] * STREAMS
    arrivals = [value for value in rec.values("barrier") if isinstance(value, int)]
    assert sorted(arrivals) == list(range(STREAMS))  # nobody timed out
    assert logs.errors() == []


def _curl_all(port: int, path: str, n: int, directory: Path) -> list[str]:
    """Download with curl, n at once: clients outside the server's process (in-process
    client threads would compete with its producers for the interpreter)."""
    files = [directory / f"body{i}" for i in range(n)]
    clients = [
        subprocess.Popen(
            [
                CURL,
                "-s",
                "-o",
                str(file),
                "--max-time",
                str(TIMEOUT),
                f"http://127.0.0.1:{port}{path}",
            ]
        )
        for file in files
    ]
    for client in clients:
        assert client.wait(TIMEOUT * 2) == 0
    return [sha256(file.read_bytes()) for file in files]


@pytest.mark.skipif(not os.path.exists(CURL), reason="needs curl")
def test_producers_that_compute_take_turns_in_a_lane(
    server: ServerFactory,
    make_executor: ExecutorFactory,
    logs: LogRecorder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a busy machine a 2 ms slice can take over STUCK_SECONDS of wall-clock time, and the
    # watch would then start a second runner: that rescue is another test's subject.
    monkeypatch.setattr(_lanes, "STUCK_SECONDS", TIMEOUT)
    overlap = Overlap()
    pool = make_executor(8)
    srv = server([("/", Computes, dict(executor=pool, overlap=overlap))], sndbuf=16 * KiB)
    assert _curl_all(srv.port, "/", 8, tmp_path) == [sha256(BODY)] * 8
    # Eight streams on eight threads: without the lane, each would run in a thread of its
    # own whenever its client took some bytes, and they would overlap at every system call.
    # In the lane they take turns: past their first pulls, they rarely overlap.
    later = overlap.seen[len(overlap.seen) // 4 :]
    overlapping = sum(1 for active in later if active > 1)
    assert overlapping < len(later) // 4, (overlapping, len(later))
    assert logs.errors() == []


class TestTheLaneAlone:
    def test_runs_work_in_order_with_one_runner_and_requeues_what_wants_more(self) -> None:
        lane = Lane(width=1)
        done: list[str] = []
        ran = threading.Event()
        turns = {"a": 2, "b": 1}

        def work(name: str) -> bool:
            done.append(name)
            turns[name] -= 1
            if not any(turns.values()):
                ran.set()
            return turns[name] > 0

        async def main() -> None:  # add() is called on a loop, as producers do
            with ThreadPoolExecutor(2) as pool:

                def submit(task: Callable[[], None]) -> None:
                    pool.submit(task)

                gate = threading.Event()
                lane.add(lambda: gate.wait(TIMEOUT) and False, submit)  # hold the runner
                lane.add(lambda: work("a"), submit)
                lane.add(lambda: work("b"), submit)
                assert "runners=1" in repr(lane)
                gate.set()
                assert ran.wait(TIMEOUT)

        asyncio.run(main())
        assert done == ["a", "b", "a"]  # a's second slice went behind b

    def test_a_refused_submit_leaves_nothing_queued(self) -> None:
        lane = Lane(width=1)

        def refuse(task: object) -> None:
            raise RuntimeError("cannot schedule new futures after shutdown")

        with pytest.raises(RuntimeError, match="after shutdown"):
            lane.add(lambda: False, refuse)
        assert repr(lane) == "<Lane ready=0 runners=0 width=1>"
