"""Read-ahead that fits the client: a slow client is only read ahead for a little, a fast one
for up to ``max_buffer_bytes``, and the window follows a client that speeds up and slows down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Executor

from helpers import (
    ExecutorFactory,
    LogRecorder,
    Progress,
    RawConnection,
    Recorder,
    ServerFactory,
    ServerThread,
    payload,
    sha256,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream._core._readahead import (
    GROW_SECONDS,
    HORIZON,
    MIN_WINDOW,
    RAMP_SECONDS,
    START_WINDOW,
    ReadAhead,
)

KiB = 1024
MiB = 1024 * KiB
CEILING = 4 * MiB
CHUNK = 16 * KiB
BODY = payload(24 * MiB, 11)


class TestReadAheadAlone:
    def test_starts_small_and_doubles_at_most_once_per_grow_interval(self) -> None:
        ahead = ReadAhead(CEILING)
        assert ahead.window == START_WINDOW
        big = 64 * MiB  # a fast client: its rate does not hold the window back
        assert ahead.observe(big, 0.0001, kept_up=True, now=10.0) == 2 * START_WINDOW
        assert ahead.observe(big, 0.0001, kept_up=True, now=10.0 + GROW_SECONDS / 2) == (
            2 * START_WINDOW
        )
        assert ahead.observe(big, 0.0001, kept_up=True, now=10.0 + GROW_SECONDS) == (
            4 * START_WINDOW
        )

    def test_the_kernel_buffers_filling_at_first_do_not_pass_for_a_fast_client(self) -> None:
        ahead = ReadAhead(CEILING)
        now = 10.0
        for _ in range(6):  # 1.5 MiB taken at once in 30 ms, then the client is slow
            now += GROW_SECONDS
            ahead.observe(256 * KiB, 0.0001, kept_up=True, now=now)
        # What an average over RAMP_SECONDS allows: 1.5 MiB / 0.25 s * HORIZON.
        assert ahead.window == max(START_WINDOW, int(1.5 * MiB / RAMP_SECONDS * HORIZON))
        assert ahead.window < CEILING // 4

    def test_a_slow_client_gets_what_it_takes_in_the_horizon_at_least_the_minimum(self) -> None:
        ahead = ReadAhead(CEILING)
        # 64 KiB took 0.25 s: 256 KiB/s, far less than MIN_WINDOW per HORIZON.
        assert ahead.observe(64 * KiB, 0.25, kept_up=False, now=1.0) == MIN_WINDOW
        # 1 MiB in 10 ms: 100 MiB/s.
        rate = MiB / 0.01
        assert ahead.observe(MiB, 0.01, kept_up=False, now=2.0) == min(CEILING, int(rate * HORIZON))

    def test_follows_a_client_that_slows_down_and_speeds_up(self) -> None:
        ahead = ReadAhead(CEILING)
        now = 0.0
        for _ in range(8):  # fast
            now += GROW_SECONDS
            ahead.observe(64 * MiB, 0.0001, kept_up=True, now=now)
        assert ahead.window == CEILING
        ahead.observe(64 * KiB, 0.5, kept_up=False, now=now + 1)  # slow
        assert ahead.window == MIN_WINDOW
        for _ in range(8):  # fast again
            now += 1
            ahead.observe(64 * MiB, 0.0001, kept_up=True, now=now)
        assert ahead.window == CEILING

    def test_what_the_kernel_queues_does_not_count_as_taken(self) -> None:
        slow = ReadAhead(CEILING)
        # 4 MiB taken at once, all of it still in the kernel's send queue: the client itself
        # took nothing, so the window does not grow, and shrinks to the minimum.
        for step in range(8):
            slow.observe(512 * KiB, 0.0001, kept_up=True, now=1.0 + step, queued=4 * MiB)
        assert slow.window == MIN_WINDOW
        fast = ReadAhead(CEILING)
        # The same 4 MiB queued, for a client that took 64 MiB a flush: the kernel's queue
        # is nothing next to what it takes, and the window grows.
        for step in range(8):
            fast.observe(64 * MiB, 0.0001, kept_up=True, now=1.0 + step / 100, queued=4 * MiB)
        assert fast.window == CEILING

    def test_repr_shows_the_window(self) -> None:
        assert repr(ReadAhead(CEILING)) == f"<ReadAhead window={START_WINDOW}/{CEILING}>"


STREAM_CEILING = MiB


class Generator(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder, progress: Progress) -> None:
        self.executor = executor
        self.rec = rec
        self.progress = progress

    @stream_on_executor(max_buffer_bytes=STREAM_CEILING)
    def get(self) -> Iterator[bytes]:
        self.rec.add("handler", self)
        for start in range(0, len(BODY), CHUNK):
            self.progress.add(CHUNK)
            yield BODY[start : start + CHUNK]


def _window(srv: ServerThread, handler: object) -> int:
    assert isinstance(handler, Generator)
    stats = srv.run_on_loop(lambda: handler.stream_stats)
    assert stats is not None
    return stats.window  # type: ignore[attr-defined, no-any-return]


def test_the_read_ahead_follows_a_client_that_slows_down_and_speeds_up(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    pool = make_executor(2)
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", Generator, dict(executor=pool, rec=rec, progress=progress))], sndbuf=16 * KiB
    )
    received = bytearray()
    with RawConnection(srv.port, rcvbuf=16 * KiB, recv_size=4 * KiB) as conn:
        conn.send_request("GET", "/")
        reader = conn.body_reader(conn.read_head())
        handler = rec.wait_for("handler")

        def read(nbytes: int, slow: bool) -> None:
            goal = len(received) + nbytes
            while len(received) < goal:
                data = reader.read(4 * KiB if slow else MiB)
                assert data, "the body ended early"
                received.extend(data)
                if slow:
                    time.sleep(0.002)  # a slow client's pace: about 2 MB/s at most

        def read_ahead() -> int:
            return progress.value - len(received)

        read(4 * MiB, slow=False)  # fast: the window grows
        # Slow: once what was read ahead for the fast client is drained (the window can only
        # be learnt from flushes that complete), it shrinks to what the client takes.
        read(2 * MiB, slow=True)
        slow_window = _window(srv, handler)
        slow_ahead = read_ahead()
        read(12 * MiB, slow=False)  # fast again: it grows back
        fast_window = _window(srv, handler)
        received.extend(reader.read_all())
    assert sha256(bytes(received)) == sha256(BODY)
    assert slow_window < STREAM_CEILING // 4, slow_window
    # What the producer had made ahead of a slow client: its window, a chunk, and what the
    # socket buffers on both sides hold (16 KiB asked for each; Linux doubles it).
    assert slow_ahead <= slow_window + CHUNK + 4 * 32 * KiB, (slow_ahead, slow_window)
    assert fast_window > slow_window, (fast_window, slow_window)
    assert logs.errors() == []
