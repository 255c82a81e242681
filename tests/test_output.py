"""
The library's output path after the first flush: flushes of many sizes, framed or not.

A flush hands the stream big chunks as they are and joins runs of small ones into pieces;
chunked bodies are framed by the library. Whatever the mix, the body arrives byte-exact,
with the framing the response announced.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from concurrent.futures import Executor

import pytest
from helpers import TIMEOUT, RawConnection, ServerFactory, payload, sha256
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream._output import PIECE_BYTES

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
