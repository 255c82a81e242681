"""The process-wide memory cap: what all streams hold, first come first served, no deadlock."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    RawConnection,
    ServerFactory,
    fetch,
    payload,
    sha256,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream._core._memory import MemoryCap, memory_cap
from tornado_safestream.memory import (
    DEFAULT_MEMORY_CAP,
    MemoryStats,
    memory_stats,
    set_memory_cap,
)

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
BODY = payload(MiB, 7)


@pytest.fixture
def cap() -> Iterator[None]:
    """The test sets the process's cap; it is put back afterwards.

    Streams left behind by earlier tests (loops closed under parked producers) give their
    bytes back once collected: collect them first, so that the figures start from zero.
    """
    gc.collect()
    before = memory_stats().limit
    try:
        yield
    finally:
        set_memory_cap(before)


class Grants:
    """A stream as the cap sees it: records what it was granted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[int] = []

    def granted(self, nbytes: int) -> None:
        self.got.append(nbytes)

    def __repr__(self) -> str:
        return self.name


class TestTheCapAlone:
    def test_refused_streams_are_granted_first_come_first_served(self) -> None:
        cap = MemoryCap(100)
        a, b, c = Grants("a"), Grants("b"), Grants("c")
        assert cap.reserve(a, 0, 100) == 100
        assert cap.reserve(b, 0, 50) == 0  # queued
        assert cap.reserve(c, 0, 10) == 0  # queued behind b
        cap.release(30)
        assert (b.got, c.got) == ([30], [])  # b first, in part, and still first in line
        cap.release(30)
        assert (b.got, c.got) == ([30, 20], [10])
        assert cap.stats() == MemoryStats(held=100, limit=100, streams=0, waiting=0, peak=100)

    def test_a_newcomer_does_not_overtake_the_queue(self) -> None:
        cap = MemoryCap(100)
        a, b, c = Grants("a"), Grants("b"), Grants("c")
        assert cap.reserve(a, 0, 90) == 90
        assert cap.reserve(b, 0, 50) == 10  # what is free, and queued for the rest
        assert cap.reserve(c, 0, 10) == 0  # queued behind b
        cap.release(20)
        assert (b.got, c.got) == ([20], [])  # b still wants 20: c waits
        assert cap.stats().waiting == 2

    def test_forced_bytes_pass_the_cap_and_hold_back_the_rest(self) -> None:
        cap = MemoryCap(100)
        a, b = Grants("a"), Grants("b")
        assert cap.reserve(a, 150, 0) == 150  # a chunk that exists already
        assert cap.reserve(b, 64, 100) == 64  # what b holds, not more
        assert cap.stats().held == 214
        cap.release(150)  # 64 held: 36 free, granted to b, first in line
        assert b.got == [36]
        cap.release(64)
        assert b.got == [36, 64]  # the rest of what it asked for

    def test_no_limit_grants_everything(self) -> None:
        cap = MemoryCap(None)
        a = Grants("a")
        assert cap.reserve(a, 10, 10**12) == 10 + 10**12
        assert cap.stats().waiting == 0

    def test_a_larger_limit_grants_the_queue(self) -> None:
        cap = MemoryCap(10)
        a, b = Grants("a"), Grants("b")
        cap.reserve(a, 0, 10)
        cap.reserve(b, 0, 40)
        cap.set_limit(100)
        assert b.got == [40]

    def test_repr_shows_the_state(self) -> None:
        cap = MemoryCap(100)
        cap.join()
        cap.reserve(Grants("a"), 0, 60)
        assert repr(cap) == "<MemoryCap held=60/100 streams=1 waiting=0 peak=60>"


class TestSetMemoryCap:
    def test_default_is_on(self) -> None:
        assert DEFAULT_MEMORY_CAP > 0
        assert memory_stats().limit == DEFAULT_MEMORY_CAP

    @pytest.mark.parametrize("bad", ["1MiB", 1.5, True])
    def test_refuses_what_is_not_a_number_of_bytes(self, bad: object) -> None:
        with pytest.raises(TypeError, match=r"^set_memory_cap\(\) takes a number of bytes or None"):
            set_memory_cap(bad)  # type: ignore[arg-type]

    def test_refuses_a_cap_that_is_not_positive(self) -> None:
        with pytest.raises(ValueError, match=r"^set_memory_cap\(\) takes a positive number"):
            set_memory_cap(0)


class _Handler(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor


class Generator(_Handler):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        for start in range(0, len(BODY), CHUNK):
            yield BODY[start : start + CHUNK]


class PushWriteOnly(_Handler):
    """Writes without flushing, below max_buffer_bytes: under a small cap, it still goes out."""

    @stream_on_executor
    def get(self) -> None:
        for start in range(0, len(BODY), 16 * KiB):
            self.write(BODY[start : start + 16 * KiB])


def _download_all(port: int, paths: list[str], rcvbuf: int | None = None) -> list[str]:
    """Download every path at once, each in a thread of its own; their SHA-256s, in order."""
    with ThreadPoolExecutor(len(paths)) as clients:
        futures = [clients.submit(fetch, port, path, rcvbuf=rcvbuf) for path in paths]
        return [sha256(future.result(TIMEOUT).body) for future in futures]


def test_streams_complete_under_a_cap_smaller_than_one_chunk(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, cap: None
) -> None:
    pool = make_executor(8)
    srv = server(
        [("/gen", Generator, dict(executor=pool)), ("/push", PushWriteOnly, dict(executor=pool))]
    )
    set_memory_cap(KiB)
    hashes = _download_all(srv.port, ["/gen"] * 8 + ["/push"] * 4, rcvbuf=32 * KiB)
    assert hashes == [sha256(BODY)] * 12
    stats = memory_stats()
    assert (stats.held, stats.streams, stats.waiting) == (0, 0, 0)
    assert logs.errors() == []


def test_every_stream_waiting_on_the_cap_does_not_deadlock_and_the_bound_holds(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, cap: None
) -> None:
    pool = make_executor(4)
    srv = server([("/gen", Generator, dict(executor=pool))], sndbuf=16 * KiB)
    limit = 4 * CHUNK  # far less than 16 streams' read-ahead: they all wait in turns
    set_memory_cap(limit)
    memory_cap().reset_peak()
    hashes = _download_all(srv.port, ["/gen"] * 16, rcvbuf=16 * KiB)
    assert hashes == [sha256(BODY)] * 16
    stats = memory_stats()
    # The documented bound: the cap, plus one chunk per stream that held nothing else.
    assert stats.peak <= limit + 16 * CHUNK, stats
    assert (stats.held, stats.streams, stats.waiting) == (0, 0, 0)
    assert logs.errors() == []


def test_a_stalled_client_holds_its_share_and_fresh_streams_still_go_through(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, cap: None
) -> None:
    """Streams stalled with the whole cap: a new stream still makes progress, a chunk at a
    time, and the stalled ones complete byte-exact once their clients read again."""
    pool = make_executor(4)
    srv = server([("/gen", Generator, dict(executor=pool))], sndbuf=16 * KiB)
    set_memory_cap(2 * CHUNK)
    stalled = [RawConnection(srv.port, rcvbuf=8 * KiB) for _ in range(3)]
    try:
        heads = []
        for conn in stalled:
            conn.send_request("GET", "/gen")
            heads.append(conn.read_head())
        poll = threading.Event()
        for _ in range(int(TIMEOUT / 0.01)):  # until the stalled streams hold the cap
            if memory_stats().held >= 2 * CHUNK:
                break
            poll.wait(0.01)
        assert memory_stats().held >= 2 * CHUNK, memory_stats()
        assert sha256(fetch(srv.port, "/gen").body) == sha256(BODY)
        for conn, head in zip(stalled, heads):
            assert sha256(conn.body_reader(head).response().body) == sha256(BODY)
    finally:
        for conn in stalled:
            conn.close()
    assert logs.errors() == []
