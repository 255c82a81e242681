"""A slow client holds the producer back: bounded buffering, no thread held by a stalled generator.

The bound checked is the one API.md promises, plus the kernel's socket buffers:
bytes produced <= max_buffer_bytes + one chunk + server SO_SNDBUF + client SO_RCVBUF
+ what the client already read + one loopback TCP segment (``SEGMENT_SLACK``: Linux may
queue one segment past SO_SNDBUF). The server's SO_SNDBUF is fixed (16 KiB), which also
turns off Linux's send-buffer autotuning: left on, it lets the kernel absorb up to 4 MiB
on loopback and a body small enough for a fast suite would prove nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    Pause,
    Progress,
    RawConnection,
    Recorder,
    ServerFactory,
    ServerThread,
    fetch,
    payload,
    sha256,
    sndbuf,
    split,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * 1024
MAX_BUFFER = 32 * KiB
CHUNK = 8 * KiB
SIZE = 2 * MiB
SERVER_SNDBUF = 16 * KiB
CLIENT_RCVBUF = 8 * KiB
SEGMENT_SLACK = 64 * KiB


class Producer(SafeStreamMixin, RequestHandler):
    def initialize(
        self, executor: Executor, size: int, progress: Progress, rec: Recorder, single: bool = True
    ) -> None:
        self.executor = executor
        self.size = size
        self.progress = progress
        self.rec = rec
        self.single = single

    def pieces(self) -> Iterator[bytes]:
        return split(payload(self.size, int(self.get_argument("seed", "0"))), CHUNK)

    def done(self) -> None:
        if self.single:
            self.progress.finish()
        self.rec.add("returned")


class PushFlushing(Producer):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> None:
        for piece in self.pieces():
            self.write(piece)
            self.flush()
            self.progress.add(len(piece))
        self.done()


class PushWriteOnly(Producer):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> None:
        for piece in self.pieces():
            self.write(piece)
            self.progress.add(len(piece))
        self.done()


class Generator(Producer):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> Iterator[bytes]:
        for piece in self.pieces():
            self.progress.add(len(piece))  # counted before the yield: the chunk in hand counts
            yield piece
        self.done()


class PushDefaultBuffer(Producer):
    @stream_on_executor
    def get(self) -> None:
        for piece in self.pieces():
            self.write(piece)
            self.flush()
            self.progress.add(len(piece))
        self.done()


class Ping(RequestHandler):
    def get(self) -> None:
        self.write("pong")


def allowed_ahead(srv: ServerThread, conn: RawConnection) -> int:
    return (
        MAX_BUFFER
        + CHUNK
        + sndbuf(srv.accepted[-1])
        + conn.rcvbuf
        + conn.bytes_received
        + SEGMENT_SLACK
    )


@pytest.mark.parametrize(
    "handler",
    [PushFlushing, PushWriteOnly, Generator],
    ids=["push", "push-write-only", "generator"],
)
def test_stalled_reader_holds_the_producer_back(
    server: ServerFactory, executor: Executor, handler: type[Producer]
) -> None:
    progress, rec = Progress(), Recorder()
    srv = server(
        [("/", handler, dict(executor=executor, size=SIZE, progress=progress, rec=rec))],
        sndbuf=SERVER_SNDBUF,
    )
    with RawConnection(srv.port, rcvbuf=CLIENT_RCVBUF, recv_size=KiB) as conn:
        conn.send_request("GET", "/?seed=7")
        head = conn.read_head()  # then read nothing: a stalled reader
        assert head.status == 200
        produced = progress.wait_stable()
        limit = allowed_ahead(srv, conn)
        assert not progress.finished, "the producer ran to the end against a stalled reader"
        assert produced <= limit, f"producer ran {produced} bytes ahead, allowed {limit}"
        # reading again, the whole body arrives byte-exact
        response = conn.body_reader(head).response()
    assert response.complete
    assert len(response.body) == SIZE
    assert sha256(response.body) == sha256(payload(SIZE, 7))
    rec.wait_for("returned")


def test_default_max_buffer_bytes_is_at_most_4_mib(
    server: ServerFactory, executor: Executor
) -> None:
    size = 8 * MiB
    progress, rec = Progress(), Recorder()
    kwargs: dict[str, object] = dict(executor=executor, size=size, progress=progress, rec=rec)
    srv = server([("/", PushDefaultBuffer, kwargs)], sndbuf=SERVER_SNDBUF)
    with RawConnection(srv.port, rcvbuf=CLIENT_RCVBUF) as conn:
        conn.send_request("GET", "/?seed=8")
        head = conn.read_head()
        produced = progress.wait_stable()
        limit = allowed_ahead(srv, conn) - MAX_BUFFER + 4 * MiB
        assert not progress.finished
        assert produced <= limit, f"producer ran {produced} bytes ahead with the default buffer"
        response = conn.body_reader(head).response()
    assert response.complete
    assert sha256(response.body) == sha256(payload(size, 8))


def test_sixteen_stalled_generators_do_not_starve_a_two_thread_executor(
    server: ServerFactory, make_executor: ExecutorFactory
) -> None:
    size = 512 * KiB
    pool = make_executor(2, "two-threads")
    progress, rec = Progress(), Recorder()
    kwargs: dict[str, object] = dict(
        executor=pool, size=size, progress=progress, rec=rec, single=False
    )
    srv = server([("/gen", Generator, kwargs), ("/ping", Ping, {})], sndbuf=SERVER_SNDBUF)
    stalled = [RawConnection(srv.port, rcvbuf=CLIENT_RCVBUF, recv_size=KiB) for _ in range(16)]
    try:
        for seed, conn in enumerate(stalled):
            conn.send_request("GET", f"/gen?seed={seed}")
        heads = []
        for seed, conn in enumerate(stalled):
            try:
                heads.append(conn.read_head())
            except OSError as exc:
                raise AssertionError(
                    f"stalled stream {seed} never started: threads held by the others?"
                ) from exc
        produced = progress.wait_stable()
        assert produced < 16 * size

        # a seventeenth request, to a plain handler and to a generator on the same 2 threads
        start = time.monotonic()
        ping = fetch(srv.port, "/ping", timeout=TIMEOUT)
        assert ping.status == 200 and ping.body == b"pong"
        assert time.monotonic() - start < TIMEOUT
        start = time.monotonic()
        extra = fetch(srv.port, "/gen?seed=99", timeout=TIMEOUT)
        assert extra.complete and sha256(extra.body) == sha256(payload(size, 99))
        assert time.monotonic() - start < TIMEOUT, "a generator stream waited behind stalled ones"

        # and the sixteen complete byte-exact once they read again
        for seed, (conn, head) in enumerate(zip(stalled, heads)):
            response = conn.body_reader(head).response()
            assert response.complete, seed
            assert sha256(response.body) == sha256(payload(size, seed)), f"stream {seed} corrupted"
    finally:
        for conn in stalled:
            conn.close()


class WritesPastAFlushInFlight(SafeStreamMixin, RequestHandler):
    """A flush in flight, then a write without flush that goes over the budget."""

    def initialize(self, executor: Executor, progress: Progress) -> None:
        self.executor = executor
        self.progress = progress

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> None:
        self.write(b"a" * (64 * KiB - 1))
        self.flush()  # in flight: the client is not reading yet
        # Until the loop carried that flush out (its headers are then written), so that the
        # next write comes in a batch of its own. A bounded poll: the loop sets no event.
        for _ in range(int(TIMEOUT / 0.001)):
            if self._headers_written:
                break
            time.sleep(0.001)
        self.progress.add(1)
        self.write(b"b" * (64 * KiB - 1))  # over the budget: waits until half of it is sent
        self.progress.add(1)
        self.write(b"c" * 10)


def test_a_write_waiting_for_budget_has_its_unflushed_bytes_sent(
    server: ServerFactory, make_executor: ExecutorFactory
) -> None:
    # Regression: the producer waited until half its budget was sent while the bytes it had
    # written since the last flush, under max_buffer_bytes, were never flushed: a hang.
    progress = Progress()
    srv = server(
        [("/", WritesPastAFlushInFlight, dict(executor=make_executor(1), progress=progress))],
        sndbuf=16 * KiB,
    )
    pause = Pause()

    def resume_once_the_producer_waits() -> None:
        if pause.headers_read.wait(TIMEOUT):
            progress.wait_at_least(1)
            progress.wait_stable()
        pause.resume.set()

    waiter = threading.Thread(target=resume_once_the_producer_waits)
    waiter.start()
    try:
        response = fetch(srv.port, "/", rcvbuf=4 * KiB, pause=pause)
    finally:
        pause.resume.set()
        waiter.join(TIMEOUT)
    assert response.complete
    assert response.body == b"a" * (64 * KiB - 1) + b"b" * (64 * KiB - 1) + b"c" * 10
