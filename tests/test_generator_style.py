"""Generator style end to end: yielded chunks arrive byte-exact, as soon as they are yielded."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Union

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    RawConnection,
    Recorder,
    ServerFactory,
    fetch,
    payload,
    sha256,
    split,
)
from tornado.ioloop import IOLoop
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
SIZE = 256 * KiB + 3
CHUNK = 1000
TEXT = "héllo wörld ✓ 日本語 🎉 ünïcödé\n" * 2000

Chunk = Union[bytes, bytearray, memoryview, str]


class Kinds(SafeStreamMixin, RequestHandler):
    """``?kind=`` picks what is yielded; a small max_buffer_bytes makes read-ahead overlap reuse."""

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=4 * KiB)
    def get(self) -> Iterator[Chunk]:
        kind = self.get_argument("kind")
        data = payload(SIZE, 11)
        if kind == "bytes":
            yield from split(data, CHUNK)
        elif kind == "bytearray-reused":
            buf = bytearray(CHUNK)
            for piece in split(data, CHUNK):
                buf[:] = piece
                yield buf
                buf[:] = b"\xff" * len(buf)  # mutated after the yield: must not show
        elif kind == "memoryview":
            view = memoryview(data)
            for start in range(0, len(data), CHUNK):
                yield view[start : start + CHUNK]
        elif kind == "memoryview-reused":
            buf = bytearray(CHUNK)
            for piece in split(data, CHUNK):
                buf[: len(piece)] = piece
                yield memoryview(buf)[: len(piece)]
                buf[:] = b"\xff" * len(buf)
        elif kind == "str":
            for start in range(0, len(TEXT), 777):
                yield TEXT[start : start + 777]
        elif kind == "mixed":
            yield b"a"
            yield bytearray(b"b")
            yield memoryview(b"c")
            yield "d\u00e9"
        else:
            raise AssertionError(kind)


class Empty(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield from ()


class FirstThenBlock(SafeStreamMixin, RequestHandler):
    """Yields one chunk, then blocks in ``next()`` until the test releases it."""

    def initialize(self, executor: Executor, release: threading.Event, rec: Recorder) -> None:
        self.executor = executor
        self.release = release
        self.rec = rec

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield b"first chunk"
        self.rec.add("released", self.release.wait(TIMEOUT))
        yield b" second chunk"


class Endless(SafeStreamMixin, RequestHandler):
    """Yields until the client leaves (bounded), recording where its exit and ``finally`` ran."""

    def initialize(
        self, executor: Executor, rec: Recorder, gate: threading.Event | None = None
    ) -> None:
        self.executor = executor
        self.rec = rec
        self.gate = gate

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> Iterator[bytes]:
        chunk = payload(8 * KiB, 1)
        try:
            for i in range(20_000):
                if i == 1 and self.gate is not None:
                    # a slow next(): the client leaves while the library is inside it
                    self.rec.add("in_next")
                    self.rec.add("gate", self.gate.wait(TIMEOUT))
                try:
                    yield chunk
                except GeneratorExit:
                    self.rec.add("generator_exit", threading.get_ident())
                    raise
            self.rec.add("ran_to_the_end")
        finally:
            self.rec.add("finally", threading.get_ident())

    def on_connection_close(self) -> None:
        self.rec.add("on_connection_close", threading.get_ident())
        super().on_connection_close()


class OneAtATime(SafeStreamMixin, RequestHandler):
    """Records, under a lock, which thread runs each generator step and whether two overlap."""

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec
        self.lock = threading.Lock()
        self.active = 0

    def enter(self) -> None:
        with self.lock:
            self.active += 1
            if self.active > 1:
                self.rec.add("overlap")
        self.rec.add("step", threading.get_ident())

    def leave(self) -> None:
        with self.lock:
            self.active -= 1

    @stream_on_executor(max_buffer_bytes=2 * KiB)
    def get(self) -> Iterator[bytes]:
        self.enter()
        for piece in split(payload(SIZE, 12), 500):
            self.leave()
            yield piece
            self.enter()
        self.leave()


class TinyChunks(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield from split(payload(1024 * KiB, int(self.get_argument("seed"))), 64)


PARK_CHUNK = 2 * KiB
PARK_SIZE = 256 * KiB
#: Loop iterations a chunk gives the IOLoop to send it and react (a handful are enough).
LOOP_ROUND_TRIPS = 20


class ParkEveryChunk(SafeStreamMixin, RequestHandler):
    """Every chunk fills the read-ahead: the generator parks, and is resumed, after each yield."""

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=PARK_CHUNK)
    def get(self) -> Iterator[bytes]:
        yield from split(payload(PARK_SIZE, int(self.get_argument("seed"))), PARK_CHUNK)


class NotifiesWhenDropped(bytes):
    """A chunk that calls ``on_drop`` when its last reference goes (CPython: at once)."""

    on_drop: Callable[[], None] | None = None

    def __del__(self) -> None:
        if self.on_drop is not None:
            self.on_drop()


class LoopCatchesUpBeforeThePullTaskEnds(SafeStreamMixin, RequestHandler):
    """Holds the pull task where a resume used to get lost, until the loop had its go.

    Each chunk fills the read-ahead. The library drops the yielded object in the pull task,
    after queuing its copy and before the task lets go of the request's context; from there
    the chunk lets the loop send it (and resume the producer, if the library thinks it
    parked already), then waits until the executor's other thread ran whatever the loop
    submitted meanwhile. The executor must have exactly two threads.
    """

    def initialize(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.io_loop = IOLoop.current()

    def let_the_loop_catch_up(self) -> None:
        for _ in range(LOOP_ROUND_TRIPS):
            ran = threading.Event()
            self.io_loop.add_callback(ran.set)
            if not ran.wait(TIMEOUT):
                return
        # this task holds one of the two threads: the probe runs on the other one, after
        # what is queued before it
        concurrent.futures.wait([self.executor.submit(int)], timeout=TIMEOUT)

    def chunk(self, piece: bytes) -> NotifiesWhenDropped:
        chunk = NotifiesWhenDropped(piece)
        chunk.on_drop = self.let_the_loop_catch_up
        return chunk

    @stream_on_executor(max_buffer_bytes=PARK_CHUNK)
    def get(self) -> Iterator[bytes]:
        for piece in split(payload(32 * PARK_CHUNK, 13), PARK_CHUNK):
            yield self.chunk(piece)  # not kept here: the library holds the only reference


def test_resume_while_the_pull_task_is_still_in_the_request_context(
    server: ServerFactory, make_executor: ExecutorFactory
) -> None:
    # Regression: a generator was marked parked as soon as put() found the budget full, so
    # the loop could submit the resume while the parking task was still inside the request's
    # contextvars.Context. The resume task then failed to enter it (RuntimeError, lost in the
    # executor's future), and the stream hung for ever. This makes that interleaving certain.
    pool = make_executor(2, "test-worker")
    srv = server([("/", LoopCatchesUpBeforeThePullTaskEnds, dict(executor=pool))])
    response = fetch(srv.port, "/")
    assert response.complete
    assert sha256(response.body) == sha256(payload(32 * PARK_CHUNK, 13))


@pytest.mark.usefixtures("fast_thread_switching")
def test_park_resume_stress_every_download_completes(
    server: ServerFactory, executor: Executor, make_executor: ExecutorFactory
) -> None:
    # The same lost resume, as it happened by itself: 8 concurrent streams parking after
    # every 2 KiB chunk (128 parks each) hung in every run before the fix.
    srv = server([("/", ParkEveryChunk, dict(executor=executor))])
    clients = make_executor(8, "client")
    futures = [clients.submit(fetch, srv.port, f"/?seed={seed}") for seed in range(8)]
    for seed, future in enumerate(futures):
        try:
            response = future.result(timeout=3 * TIMEOUT)
        except OSError as exc:  # the socket timed out: the stream stopped
            raise AssertionError(f"download {seed} never completed (a lost resume?)") from exc
        assert response.complete, f"download {seed} ended early"
        assert sha256(response.body) == sha256(payload(PARK_SIZE, seed)), (
            f"download {seed} corrupted"
        )


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_stress_many_tiny_chunks(
    server: ServerFactory, executor: Executor, make_executor: ExecutorFactory
) -> None:
    srv = server([("/", TinyChunks, dict(executor=executor))])
    clients = make_executor(4, "client")
    futures = [clients.submit(fetch, srv.port, f"/?seed={seed}") for seed in range(4)]
    for seed, future in enumerate(futures):
        response = future.result(timeout=3 * TIMEOUT)
        assert response.complete
        assert sha256(response.body) == sha256(payload(1024 * KiB, seed)), (
            f"download {seed} corrupted"
        )


@pytest.mark.parametrize("kind", ["bytes", "bytearray-reused", "memoryview", "memoryview-reused"])
def test_binary_chunk_types(server: ServerFactory, executor: Executor, kind: str) -> None:
    srv = server([("/", Kinds, dict(executor=executor))])
    response = fetch(srv.port, f"/?kind={kind}", rcvbuf=8 * KiB, recv_size=KiB)
    assert response.status == 200
    assert response.complete
    assert len(response.body) == SIZE
    assert sha256(response.body) == sha256(payload(SIZE, 11))


def test_str_is_sent_as_utf8(server: ServerFactory, executor: Executor) -> None:
    srv = server([("/", Kinds, dict(executor=executor))])
    response = fetch(srv.port, "/?kind=str")
    assert response.complete
    assert response.body == TEXT.encode("utf-8")


def test_mixed_chunk_types(server: ServerFactory, executor: Executor) -> None:
    srv = server([("/", Kinds, dict(executor=executor))])
    response = fetch(srv.port, "/?kind=mixed")
    assert response.complete
    assert response.body == "abcd\u00e9".encode()


def test_empty_generator_gives_an_empty_200(server: ServerFactory, executor: Executor) -> None:
    srv = server([("/", Empty, dict(executor=executor))])
    response = fetch(srv.port, "/")
    assert response.status == 200
    assert response.complete
    assert response.body == b""


def test_each_chunk_is_handed_on_when_yielded(server: ServerFactory, executor: Executor) -> None:
    release, rec = threading.Event(), Recorder()
    srv = server([("/", FirstThenBlock, dict(executor=executor, release=release, rec=rec))])
    try:
        with RawConnection(srv.port, timeout=5) as conn:
            conn.send_request("GET", "/")
            head = conn.read_head()
            reader = conn.body_reader(head)
            # the generator is now blocked in next(): the first chunk must already be here
            assert reader.read_exactly(len(b"first chunk")) == b"first chunk"
            assert not rec.has("released")
            release.set()
            assert reader.read_all() == b" second chunk"
            assert reader.complete
    finally:
        release.set()
    assert rec.wait_for("released") is True


def test_client_gone_closes_the_generator_in_a_worker(
    server: ServerFactory, executor: Executor, logs: LogRecorder
) -> None:
    rec = Recorder()
    srv = server([("/", Endless, dict(executor=executor, rec=rec))], sndbuf=16 * KiB)
    with RawConnection(srv.port, rcvbuf=8 * KiB) as conn:
        conn.send_request("GET", "/")
        reader = conn.body_reader(conn.read_head())
        reader.read_exactly(32 * KiB)
    finally_thread = rec.wait_for("finally")
    assert not rec.has("ran_to_the_end")
    assert rec.has("generator_exit"), "the generator was not closed at its yield"
    assert finally_thread != srv.loop_thread_ident, (
        "the generator's finally ran on the IOLoop thread"
    )
    assert finally_thread in {
        t.ident for t in threading.enumerate() if t.name.startswith("test-worker")
    }
    rec.wait_for("on_connection_close")
    srv.stop()
    assert logs.errors() == []


def test_generator_closed_after_the_next_in_progress(
    server: ServerFactory, executor: Executor, logs: LogRecorder
) -> None:
    rec, gate = Recorder(), threading.Event()
    srv = server([("/", Endless, dict(executor=executor, rec=rec, gate=gate))])
    try:
        with RawConnection(srv.port) as conn:
            conn.send_request("GET", "/")
            reader = conn.body_reader(conn.read_head())
            reader.read_exactly(8 * KiB)
            rec.wait_for("in_next")
        rec.wait_for("on_connection_close")
        assert not rec.has("finally"), "the generator was closed while next() was still running"
    finally:
        gate.set()
    exit_thread = rec.wait_for("generator_exit")
    assert rec.wait_for("finally") == exit_thread
    assert exit_thread != srv.loop_thread_ident
    srv.stop()
    assert logs.errors() == [], "closing the generator logged an error (closed while executing?)"


def test_one_thread_at_a_time_pulls_a_generator(
    server: ServerFactory, executor: Executor, logs: LogRecorder
) -> None:
    rec = Recorder()
    srv = server([("/", OneAtATime, dict(executor=executor, rec=rec))], sndbuf=16 * KiB)
    response = fetch(srv.port, "/", rcvbuf=4 * KiB, recv_size=KiB, pace=0.0002)
    assert response.complete
    assert sha256(response.body) == sha256(payload(SIZE, 12))
    assert not rec.has("overlap")
    steps = set(rec.values("step"))
    assert srv.loop_thread_ident not in steps, "the generator was pulled on the IOLoop thread"
    assert steps <= {t.ident for t in threading.enumerate() if t.name.startswith("test-worker")}
    srv.stop()
    assert logs.errors() == []
