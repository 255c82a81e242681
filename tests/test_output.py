"""
The library's output path after the first flush: flushes of many sizes, framed or not.

A flush hands the stream big chunks as they are and joins runs of small ones into pieces;
chunked bodies are framed by the library. Whatever the mix, the body arrives byte-exact,
with the framing the response announced.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    RawConnection,
    ServerFactory,
    payload,
    record_text,
    sha256,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream._core._output import PIECE_BYTES

KiB = 1024
MiB = 1024 * 1024

#: Chunk sizes around the piece size, with runs of small ones in between; one flush at the
#: end of each group, so that a flush carries several pieces.
GROUPS = [
    [1, 2, 3],
    [PIECE_BYTES - 1, 1, PIECE_BYTES, PIECE_BYTES + 1],
    [64 * KiB] * 40,
    [7] * 1000 + [2 * PIECE_BYTES] + [5] * 300,
    [0, 300 * KiB, 0, 900 * KiB, 100 * KiB],
]
SIZES = [size for group in GROUPS for size in group]
TOTAL = sum(SIZES)
#: Big enough for a flush of several pieces, small enough that the first flush (Tornado's,
#: with the headers) comes early in a generator's body.
BUDGET = 2 * PIECE_BYTES


def pieces(seed: int) -> Iterator[tuple[bytes, bool]]:
    """``(chunk, last_of_its_group)`` cut from ``payload(TOTAL, seed)``."""
    data = payload(TOTAL, seed)
    at = 0
    for group in GROUPS:
        for i, size in enumerate(group):
            yield data[at : at + size], i == len(group) - 1
            at += size


class Push(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=BUDGET)
    def get(self) -> None:
        if self.get_argument("length") == "1":
            self.set_header("Content-Length", str(TOTAL))
        for chunk, last in pieces(int(self.get_argument("seed"))):
            self.write(chunk)
            if last:  # the first group's flush writes the headers; the others, the library
                sent = self.flush()
                assert isinstance(sent, concurrent.futures.Future)  # in the worker
                sent.result(TIMEOUT)


class Generator(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=BUDGET)
    def get(self) -> Iterator[bytes]:
        if self.get_argument("length") == "1":
            self.set_header("Content-Length", str(TOTAL))
        for chunk, _ in pieces(int(self.get_argument("seed"))):
            yield chunk


@pytest.mark.parametrize("length", ["0", "1"], ids=["chunked", "content-length"])
@pytest.mark.parametrize("style", ["push", "generator"])
def test_flushes_of_every_shape_arrive_byte_exact(
    server: ServerFactory, executor: Executor, style: str, length: str
) -> None:
    srv = server(
        [("/push", Push, {"executor": executor}), ("/generator", Generator, {"executor": executor})]
    )
    with RawConnection(srv.port, rcvbuf=64 * KiB) as conn:
        # A small receive buffer and a slow start: the flushes queue up behind the socket.
        conn.send_request("GET", f"/{style}?seed=5&length={length}")
        head = conn.read_head()
        response = conn.body_reader(head).response()
    assert response.status == 200
    assert response.complete
    assert response.framing == ("length" if length == "1" else "chunked")
    assert len(response.body) == TOTAL
    assert sha256(response.body) == sha256(payload(TOTAL, 5))


class OverrunMidFlush(SafeStreamMixin, RequestHandler):
    """Sets a Content-Length of 1 MiB + 1, sends 1 byte, then flushes 2 MiB at once."""

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=8 * MiB)
    def get(self) -> None:
        self.set_header("Content-Length", str(MiB + 1))
        self.write(b"x")
        sent = self.flush()  # the headers: the library's output path from here on
        assert isinstance(sent, concurrent.futures.Future)  # in the worker
        sent.result(TIMEOUT)
        self.write(b"a" * MiB)  # its first piece would fill the body exactly
        self.write(b"b" * MiB)
        self.flush()


def test_a_flush_over_the_content_length_sends_none_of_it(
    server: ServerFactory, executor: Executor, logs: LogRecorder
) -> None:
    # Regression: the pieces of a flush went out one by one until one overran the
    # Content-Length, so a first piece that filled the body exactly made the response look
    # complete. As with Tornado's flush(), none of such a flush is sent.
    srv = server([("/", OverrunMidFlush, {"executor": executor})])
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", "/")
        head = conn.read_head()
        response = conn.body_reader(head).response()
    assert response.body == b"x"
    assert not response.complete, "a response cut short looked complete"
    [error] = logs.wait_for_errors(1)
    assert "Content-Length" in record_text(error), record_text(error)


class Counter:
    """Counts events across threads; `wait_for` blocks until a count is reached."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def add(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._count >= count, timeout):
                raise AssertionError(f"{self._count} of {count} after {timeout} s")


class ManyPieces(SafeStreamMixin, RequestHandler):
    """Flushes of 3 MiB (three pieces each), until the client leaves."""

    def initialize(self, executor: Executor, finished: Counter) -> None:
        self.executor = executor
        self.finished = finished

    @stream_on_executor(max_buffer_bytes=4 * MiB)
    def get(self) -> None:
        chunk = payload(256 * KiB, 9)
        for _ in range(400):
            for _ in range(12):
                self.write(chunk)
            self.flush()

    def on_finish(self) -> None:
        self.finished.add()


def test_clients_resetting_in_the_middle_of_a_flush_log_nothing(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    # Regression: when an RST closed the stream between two pieces of one flush, writing the
    # next piece made Tornado resolve a write future twice: asyncio logged InvalidStateError.
    clients, downloads = 12, 15
    finished = Counter()
    pool = make_executor(clients + 4, "pieces")
    srv = server([("/", ManyPieces, {"executor": pool, "finished": finished})], sndbuf=256 * KiB)
    rng = random.Random(7)
    # How long each download reads before its reset (pacing, not synchronisation).
    reads = [[rng.uniform(0.01, 0.15) for _ in range(downloads)] for _ in range(clients)]

    def client(plan: list[float]) -> None:
        for seconds in plan:  # read for a while, then reset the connection mid-transfer
            with RawConnection(srv.port, rcvbuf=128 * KiB) as conn:
                conn.send_request("GET", "/")
                conn.read_head()
                until = time.monotonic() + seconds
                while time.monotonic() < until:
                    conn.sock.recv(64 * KiB)
                conn.close(reset=True)

    threads = [threading.Thread(target=client, args=(plan,)) for plan in reads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
        assert not thread.is_alive(), "a client did not finish"
    finished.wait_for(clients * downloads)
    assert logs.errors() == []
