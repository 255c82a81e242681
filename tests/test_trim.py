"""Memory the streams let go of goes back to the system (glibc's ``malloc_trim``)."""

from __future__ import annotations

import sys
import threading
import weakref
from concurrent.futures import Executor

import pytest
from helpers import TIMEOUT, ExecutorFactory, LogRecorder, RawConnection, ServerFactory, payload
from helpers import sha256 as sha256_of
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream._core._memory import MemoryCap, Reservation, memory_cap
from tornado_safestream._core._trim import EVERY_SECONDS, TRIM_BYTES, Trimmer, trimmer

MiB = 1024 * 1024


class Calls:
    """A ``malloc_trim`` stand-in: records the calls and the threads they ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.threads.append(threading.get_ident())
        return 1


class Stream:
    def granted(self, nbytes: int) -> None:
        raise AssertionError("no stream waits under these caps")


class TestWhenTheCapAsks:
    def test_a_drop_to_half_by_enough_trims_once_off_the_calling_thread(self) -> None:
        calls = Calls()
        trim = Trimmer(calls)
        cap = MemoryCap(None, trim)
        cap.reserve(Stream(), 0, 2 * TRIM_BYTES)
        cap.release(TRIM_BYTES // 2)  # down by a quarter: not yet
        cap.release(TRIM_BYTES // 2)  # down to half, by TRIM_BYTES: trim
        assert trim.wait_for(1, TIMEOUT)
        assert len(calls.threads) == 1
        assert calls.threads[0] != threading.get_ident()

    def test_a_small_drop_does_not_trim(self) -> None:
        calls = Calls()
        trim = Trimmer(calls)
        cap = MemoryCap(None, trim)
        cap.reserve(Stream(), 0, TRIM_BYTES // 2)
        cap.release(TRIM_BYTES // 2)  # all of it, but less than TRIM_BYTES
        cap.reserve(Stream(), 0, 4 * TRIM_BYTES)
        cap.release(TRIM_BYTES)  # by TRIM_BYTES, but three quarters still held
        assert repr(trim) == "<Trimmer available=True scheduled=False trims=0>"
        assert calls.threads == []

    def test_a_stream_that_leaves_counts_as_a_drop(self) -> None:
        calls = Calls()
        trim = Trimmer(calls)
        cap = MemoryCap(None, trim)
        stream = Stream()
        cap.join()
        reservation = Reservation()
        reservation.nbytes = cap.reserve(stream, 0, 2 * TRIM_BYTES)
        cap.leave(weakref.ref(stream), reservation)
        assert trim.wait_for(1, TIMEOUT)

    def test_drops_close_together_trim_at_most_once_a_while(self) -> None:
        calls = Calls()
        trim = Trimmer(calls)
        cap = MemoryCap(None, trim)
        for _ in range(5):  # five drops at once: one trim scheduled
            cap.reserve(Stream(), 0, 2 * TRIM_BYTES)
            cap.release(2 * TRIM_BYTES)
        assert trim.wait_for(1, TIMEOUT)
        cap.reserve(Stream(), 0, 2 * TRIM_BYTES)
        cap.release(2 * TRIM_BYTES)  # another drop, just after the trim: the next waits
        assert trim.wait_for(2, TIMEOUT + EVERY_SECONDS)
        assert len(calls.threads) == 2

    def test_without_malloc_trim_nothing_is_scheduled(self) -> None:
        trim = Trimmer(None)
        cap = MemoryCap(None, trim)
        cap.reserve(Stream(), 0, 2 * TRIM_BYTES)
        cap.release(2 * TRIM_BYTES)
        assert repr(trim) == "<Trimmer available=False scheduled=False trims=0>"
        assert not trim.wait_for(1, 0.01)

    def test_a_forked_child_forgets_a_trim_its_parent_scheduled(self) -> None:
        release = threading.Event()
        trim = Trimmer(lambda pad: int(release.wait(TIMEOUT)))
        cap = MemoryCap(None, trim)
        cap.reserve(Stream(), 0, 2 * TRIM_BYTES)
        cap.release(2 * TRIM_BYTES)
        assert "scheduled=True" in repr(trim)
        trim.forget_after_fork()  # what os.register_at_fork has the child do
        assert "scheduled=False" in repr(trim)
        release.set()


@pytest.mark.skipif(not trimmer().available, reason="the C library has no malloc_trim (glibc only)")
def test_the_process_trims_once_a_burst_of_streams_ends(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    """Eight push streams hold 8 MiB each behind stalled clients (the cap's default 256
    MiB is far away); once their clients read everything, the process gives memory back."""
    assert sys.platform.startswith("linux")
    body = payload(8 * MiB, 3)
    pool = make_executor(8)
    srv = server([("/push", _Push, dict(executor=pool, body=body))], sndbuf=64 * 1024)
    before = trimmer().count
    clients = [RawConnection(srv.port, rcvbuf=64 * 1024) for _ in range(8)]
    try:
        heads = []
        for conn in clients:
            conn.send_request("GET", "/push")
            heads.append(conn.read_head())
        # Each stream reserved its max_buffer_bytes at its first write, held behind its client.
        assert memory_cap().stats().held >= 2 * TRIM_BYTES
        for conn, head in zip(clients, heads):
            assert sha256_of(conn.body_reader(head).response().body) == sha256_of(body)
    finally:
        for conn in clients:
            conn.close()
    assert trimmer().wait_for(before + 1, TIMEOUT), trimmer()
    assert logs.errors() == []


class _Push(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, body: bytes) -> None:
        self.executor = executor
        self.body = body

    @stream_on_executor(max_buffer_bytes=8 * MiB)
    def get(self) -> None:
        for start in range(0, len(self.body), MiB):
            self.write(self.body[start : start + MiB])
            self.flush()  # the budget counts it until the socket has it
