"""Lanes: generator producers that compute share few threads; those that wait run in parallel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
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

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream._core._lanes import Lane

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
