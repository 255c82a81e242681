"""Hostile and stuck clients: silent, dripping, pipelining, half-closing. Both styles.

Scenarios that test_disconnect.py (a client that leaves) and test_backpressure.py (a
stalled reader, checked alone) do not cover: what the rest of the server sees while a
client never reads, what ``stall_timeout`` counts as progress, several requests on one
connection at once, and a client that shuts down its write side.

The bound on the bytes a producer runs ahead of a client is the one of test_backpressure.py:
max_buffer_bytes + one chunk + server SO_SNDBUF + client SO_RCVBUF + what the client read +
one loopback TCP segment.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    BodyReader,
    ConnectionClosed,
    ExecutorFactory,
    LogRecorder,
    Progress,
    RawConnection,
    Recorder,
    Route,
    ServerFactory,
    fetch,
    payload,
    record_text,
    sha256,
    sndbuf,
    split,
)
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * KiB
SEED = 5
SIZE = 4 * MiB  # far more than any test reads: a stream only ends when it is cut
CHUNK = 8 * KiB
MAX_BUFFER = 32 * KiB
SERVER_SNDBUF = 16 * KiB
CLIENT_RCVBUF = 8 * KiB
SEGMENT_SLACK = 64 * KiB
#: stall_timeout of the handlers that have one (seconds without progress).
STALL = 0.5
FRESH_SIZE = 64 * KiB + 3

BODY = payload(SIZE, SEED)
STYLES = ["push", "generator"]


def is_stall_warning(record: logging.LogRecord) -> bool:
    return record.levelno == logging.WARNING and "stall_timeout" in record.getMessage()


class Stream(SafeStreamMixin, RequestHandler):
    """Streams ``BODY[:size]`` in CHUNK pieces and records what becomes of its producer.

    ``returned`` is recorded once the producer is done, by the ``finally`` of the push
    method or of the generator, with the name of the thread it ran in. The first piece is
    FIRST bytes long.
    """

    FIRST = CHUNK

    def initialize(
        self, executor: Executor, rec: Recorder, progress: Progress, size: int = SIZE
    ) -> None:
        self.executor = executor
        self.rec = rec
        self.progress = progress
        self.size = size

    def on_connection_close(self) -> None:
        try:
            super().on_connection_close()
        finally:  # after the library has let the producer go: a test may check on it now
            self.rec.add("on_connection_close")

    def pieces(self) -> Iterator[bytes]:
        yield BODY[: min(self.FIRST, self.size)]
        yield from split(BODY[self.FIRST : self.size], CHUNK)

    def push(self) -> None:
        try:
            for piece in self.pieces():
                self.progress.add(len(piece))  # before the write: the chunk in hand counts
                self.write(piece)
                self.flush()
            self.rec.add("ran_to_the_end")
        except StreamClosedError as exc:
            self.rec.add("stream_closed_error", exc)
        finally:
            self.rec.add("returned", threading.current_thread().name)

    def chunks(self) -> Iterator[bytes]:
        try:
            for piece in self.pieces():
                self.progress.add(len(piece))
                yield piece
            self.rec.add("ran_to_the_end")
        except GeneratorExit:
            self.rec.add("generator_exit")
            raise
        finally:
            self.rec.add("returned", threading.current_thread().name)


class PushStream(Stream):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> None:
        self.push()


class PushStreamWithStallTimeout(Stream):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER, stall_timeout=STALL)
    def get(self) -> None:
        self.push()


class GeneratorStream(Stream):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> Iterator[bytes]:
        yield from self.chunks()


class GeneratorStreamWithStallTimeout(Stream):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER, stall_timeout=STALL)
    def get(self) -> Iterator[bytes]:
        yield from self.chunks()


#: stall_timeout of the handlers a dripping client reads from.
DRIP_STALL = 0.6
#: Their first flush: far more than a dripping client reads, so a single flush is in
#: progress all along and only progress within it can keep the stream alive.
DRIP_FLUSH = 512 * KiB


class PushStreamForADrip(Stream):
    FIRST = DRIP_FLUSH

    @stream_on_executor(max_buffer_bytes=2 * DRIP_FLUSH, stall_timeout=DRIP_STALL)
    def get(self) -> None:
        self.push()


class GeneratorStreamForADrip(Stream):
    FIRST = DRIP_FLUSH

    @stream_on_executor(max_buffer_bytes=2 * DRIP_FLUSH, stall_timeout=DRIP_STALL)
    def get(self) -> Iterator[bytes]:
        yield from self.chunks()


DRIP_HANDLERS: dict[str, type[Stream]] = {
    "push": PushStreamForADrip,
    "generator": GeneratorStreamForADrip,
}

HANDLERS: dict[tuple[str, bool], type[Stream]] = {
    ("push", False): PushStream,
    ("push", True): PushStreamWithStallTimeout,
    ("generator", False): GeneratorStream,
    ("generator", True): GeneratorStreamWithStallTimeout,
}


def assert_idle(pool: ThreadPoolExecutor, threads: int) -> None:
    """All ``threads`` of the pool run a probe at the same time: no thread is left busy."""
    barrier = threading.Barrier(threads, timeout=TIMEOUT)
    probes = [pool.submit(barrier.wait) for _ in range(threads)]
    for probe in probes:
        probe.result(timeout=TIMEOUT)


def allowed_ahead(server_sndbuf: int, conn: RawConnection) -> int:
    return MAX_BUFFER + CHUNK + server_sndbuf + conn.rcvbuf + conn.bytes_received + SEGMENT_SLACK


def assert_released(rec: Recorder, style: str, pool: ThreadPoolExecutor) -> None:
    """The producer heard that the stream is over, ran its cleanup once, in the executor."""
    rec.wait_for("returned")
    if style == "push":
        assert isinstance(rec.wait_for("stream_closed_error"), StreamClosedError)
    else:
        assert rec.has("generator_exit"), "the generator was not closed at its yield"
    threads = rec.values("returned")
    assert len(threads) == 1, f"cleanup ran {len(threads)} times"
    assert str(threads[0]).startswith("hostile"), f"cleanup ran in thread {threads[0]}"
    assert not rec.has("ran_to_the_end")
    assert_idle(pool, 2)


# --------------------------------------------------------------------------- never reads


@pytest.mark.parametrize("stall_timeout", [False, True], ids=["no-stall-timeout", "stall-timeout"])
@pytest.mark.parametrize("style", STYLES)
def test_client_that_never_reads_is_contained(
    server: ServerFactory,
    make_executor: ExecutorFactory,
    logs: LogRecorder,
    style: str,
    stall_timeout: bool,
) -> None:
    """A client that sends its request and never reads again costs the server little.

    The producer is held back within the budget plus the kernel's buffers; a fresh request
    on another connection, streamed by the same two-thread executor, completes meanwhile.
    With ``stall_timeout`` the stream is then aborted on its own: the producer sees
    StreamClosedError (push) or GeneratorExit (generator), in the executor, once, and a
    WARNING says why, with no ERROR. Without it, closing the client releases it all.
    """
    pool = make_executor(2, "hostile")
    rec, progress = Recorder(), Progress()
    fresh_rec = Recorder()
    handler = HANDLERS[(style, stall_timeout)]
    fresh = HANDLERS[(style, False)]
    srv = server(
        [
            ("/stream", handler, dict(executor=pool, rec=rec, progress=progress)),
            (
                "/fresh",
                fresh,
                dict(executor=pool, rec=fresh_rec, progress=Progress(), size=FRESH_SIZE),
            ),
        ],
        sndbuf=SERVER_SNDBUF,
    )
    with RawConnection(srv.port, rcvbuf=CLIENT_RCVBUF, recv_size=KiB) as conn:
        conn.send_request("GET", "/stream")
        head = conn.read_head()  # and nothing more
        assert head.status == 200
        server_sndbuf = sndbuf(srv.accepted[0])  # while the server's socket is open

        other = fetch(srv.port, "/fresh")
        assert other.complete, "a request on another connection was not answered"
        assert sha256(other.body) == sha256(BODY[:FRESH_SIZE])
        fresh_rec.wait_for("ran_to_the_end")

        if stall_timeout:
            warning = logs.wait_for_record(is_stall_warning)
            assert f"{handler.__name__}.get" in record_text(warning), record_text(warning)
            assert_released(rec, style, pool)
            response = conn.body_reader(head).response()  # what the kernel holds, then EOF
            assert not response.complete, "an aborted stream ended as if complete"
            assert response.body == BODY[: len(response.body)], "the client got wrong bytes"
        else:
            progress.wait_stable()
            assert not rec.has("returned"), "the stream ended although the client is there"
        produced = progress.value
        limit = allowed_ahead(server_sndbuf, conn)
        assert produced <= limit, f"producer ran {produced} bytes ahead, allowed {limit}"
    if not stall_timeout:
        assert_released(rec, style, pool)
        assert not any(is_stall_warning(r) for r in logs.records)
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]
    assert len([r for r in logs.records if is_stall_warning(r)]) == int(stall_timeout)


# --------------------------------------------------------------------------- slow drip


def drip(readers: list[BodyReader], step: int, pace: float, total: int) -> list[bytes]:
    """Read ``step`` bytes from each reader every ``pace`` seconds, ``total`` bytes each."""
    got = [bytearray() for _ in readers]
    for _ in range(total):  # bounded: each round reads at least one byte from each
        if all(len(g) >= total for g in got):
            break
        for reader, buf in zip(readers, got):
            if len(buf) >= total:
                continue
            data = reader.read(min(step, total - len(buf)))
            assert data, f"the body ended after {len(buf)} bytes (complete={reader.complete})"
            buf += data
        time.sleep(pace)
    return [bytes(g) for g in got]


#: The dripping client reads DRIP_STEP bytes at a time from the kernel (recv_size), every
#: DRIP_PACE s, with the smallest receive buffer Linux allows (about 2.3 KB), from a server
#: socket with a small send buffer. The server's socket takes more bytes (progress, as the
#: server sees it) only when the client's kernel reopens its TCP window and enough of the
#: server's send buffer is acknowledged for it to be writable again: here about every
#: 0.15 s (measured), a quarter of DRIP_STALL.
DRIP_RCVBUF = 1
DRIP_SERVER_SNDBUF = 4 * KiB
DRIP_STEP = 128
DRIP_PACE = 0.005
#: About 1.8 s of dripping: three DRIP_STALLs.
DRIP_TOTAL = 36 * KiB


def test_slow_drip_is_not_aborted_while_it_makes_progress(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    """``stall_timeout`` counts the time without progress, not the time the stream takes.

    Two clients (one per style) read 128 bytes every 5 ms, for three stall_timeouts, from
    a stream whose first flush (DRIP_FLUSH) lasts all that time. The server sees their
    progress every few KB (see DRIP_STEP), well within stall_timeout, and must not abort
    them. What they read is the start of the body, byte for byte; closing them releases
    the producers.
    """
    pool = make_executor(2, "hostile")
    recs = {style: Recorder() for style in STYLES}
    srv = server(
        [
            (
                f"/{style}",
                DRIP_HANDLERS[style],
                dict(executor=pool, rec=rec, progress=Progress()),
            )
            for style, rec in recs.items()
        ],
        sndbuf=DRIP_SERVER_SNDBUF,
    )
    conns = [RawConnection(srv.port, rcvbuf=DRIP_RCVBUF, recv_size=DRIP_STEP) for _ in STYLES]
    try:
        readers = []
        for style, conn in zip(STYLES, conns):
            conn.send_request("GET", f"/{style}")
            readers.append(conn.body_reader(conn.read_head()))
        started = time.monotonic()
        got = drip(readers, DRIP_STEP, DRIP_PACE, DRIP_TOTAL)
        dripped_for = time.monotonic() - started
        for style, data in zip(STYLES, got):
            assert data == BODY[:DRIP_TOTAL], f"{style}: the client got wrong bytes"
            assert not recs[style].has("returned"), (
                f"{style}: a client that read on all along was aborted"
            )
        assert not any(is_stall_warning(r) for r in logs.records)
        # The premise: the drip lasted long enough that a timer not reset by progress fired.
        assert dripped_for > 2 * DRIP_STALL, f"the drip lasted only {dripped_for:.2f} s"
    finally:
        for conn in conns:
            conn.close()
    for style, rec in recs.items():
        assert_released(rec, style, pool)
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]


def test_drip_finer_than_the_tcp_window_looks_stalled(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    """Progress is what the server's socket takes: a client reading 1 byte per 20 ms from
    a full receive buffer frees no TCP window for the server for a long time (Linux
    reopens it only once about half the buffer, or a segment, is free), so
    ``stall_timeout`` aborts it although it reads on. The abort is clean: a WARNING, no
    ERROR, the producer released once in the executor, and the client gets the start of
    the body, byte for byte, then an incomplete end.
    """
    pool = make_executor(2, "hostile")
    recs = {style: Recorder() for style in STYLES}
    srv = server(
        [
            (
                f"/{style}",
                HANDLERS[(style, True)],
                dict(executor=pool, rec=rec, progress=Progress()),
            )
            for style, rec in recs.items()
        ],
        sndbuf=SERVER_SNDBUF,
    )
    # recv_size=1: each byte comes out of the kernel's receive buffer when it is read
    conns = [RawConnection(srv.port, rcvbuf=CLIENT_RCVBUF, recv_size=1) for _ in STYLES]
    try:
        readers = []
        for style, conn in zip(STYLES, conns):
            conn.send_request("GET", f"/{style}")
            readers.append(conn.body_reader(conn.read_head()))
        got = [bytearray() for _ in STYLES]
        deadline = time.monotonic() + TIMEOUT
        while not all(rec.has("returned") for rec in recs.values()):
            assert time.monotonic() < deadline, "stall_timeout never aborted the drip"
            for reader, buf in zip(readers, got):
                data = reader.read(1)
                assert data, "the body ended before the server gave up on the client"
                buf += data
            time.sleep(0.02)
        for style, reader, buf in zip(STYLES, readers, got):
            assert bytes(buf) == BODY[: len(buf)], f"{style}: the client got wrong bytes"
            reader.conn.recv_size = 65536
            rest = reader.read_all()
            assert not reader.complete, f"{style}: an aborted stream ended as if complete"
            whole = bytes(buf) + rest
            assert whole == BODY[: len(whole)], f"{style}: the client got wrong bytes"
    finally:
        for conn in conns:
            conn.close()
    for style, rec in recs.items():
        assert_released(rec, style, pool)
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]
    warnings = [r for r in logs.records if is_stall_warning(r)]
    assert len(warnings) == 2, [record_text(r) for r in warnings]


# --------------------------------------------------------------------------- pipelining


PIPELINED_SIZES = {1: 300 * KiB + 1, 2: 200 * KiB + 7, 3: 1000}
#: The first response stops here until the client has sent the next two requests.
PIPELINE_PAUSE_AT = 64 * KiB


class Pipelined(SafeStreamMixin, RequestHandler):
    """``payload(size, seed)`` for ``?seed=`` 1, 2 or 3; ``?length=1`` sets Content-Length.

    With ``?pause=1`` the body stops at PIPELINE_PAUSE_AT until ``sent_more`` is set.
    """

    def initialize(self, executor: Executor, rec: Recorder, sent_more: threading.Event) -> None:
        self.executor = executor
        self.rec = rec
        self.sent_more = sent_more

    def prepare(self) -> None:
        self.rec.add("start", int(self.get_argument("seed")))

    def on_finish(self) -> None:
        seed = int(self.get_argument("seed"))
        self.rec.add("finish", seed)
        if seed == 3:
            self.rec.add("all_finished")

    def pieces(self) -> Iterator[bytes]:
        seed = int(self.get_argument("seed"))
        data = payload(PIPELINED_SIZES[seed], seed)
        if self.get_argument("length") == "1":
            self.set_header("Content-Length", str(len(data)))
        for start in range(0, len(data), 5000):
            if start == PIPELINE_PAUSE_AT and self.get_argument("pause") == "1":
                assert self.sent_more.wait(TIMEOUT), "the client never sent the next requests"
            yield data[start : start + 5000]


class PipelinedPush(Pipelined):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> None:
        for piece in self.pieces():
            self.write(piece)
            self.flush()


class PipelinedGenerator(Pipelined):
    @stream_on_executor(max_buffer_bytes=MAX_BUFFER)
    def get(self) -> Iterator[bytes]:
        yield from self.pieces()


def pipelined_request(port: int, style: str, seed: int, length: str, pause: str) -> bytes:
    path = f"/{style}?seed={seed}&length={length}&pause={pause}"
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("latin-1")


@pytest.mark.parametrize("when", ["all-at-once", "mid-stream"])
@pytest.mark.parametrize("length", ["0", "1"], ids=["chunked", "content-length"])
@pytest.mark.parametrize("style", STYLES)
def test_pipelined_requests_get_whole_responses_in_order(
    server: ServerFactory,
    executor: Executor,
    logs: LogRecorder,
    style: str,
    length: str,
    when: str,
) -> None:
    """Three requests on one keep-alive connection, the next two sent before the first
    response is over: all at once with the first, or while the first streams (its producer
    waits until they are sent). Every response arrives whole, byte-exact, in order.

    Tornado serves them one after the other: HTTP1ServerConnection._server_request_loop
    reads the next request only once the previous response is finished (its
    HTTP1Connection awaits ``_finish_future`` first); the requests wait meanwhile in the
    socket or the IOStream's read buffer. So the second request starts after the first
    finishes, and so on.
    """
    rec, sent_more = Recorder(), threading.Event()
    handler = PipelinedPush if style == "push" else PipelinedGenerator
    kwargs = dict(executor=executor, rec=rec, sent_more=sent_more)
    srv = server([(f"/{style}", handler, kwargs)], sndbuf=SERVER_SNDBUF)
    pause = "1" if when == "mid-stream" else "0"
    with RawConnection(srv.port, rcvbuf=CLIENT_RCVBUF) as conn:
        first = pipelined_request(srv.port, style, 1, length, pause)
        rest = b"".join(pipelined_request(srv.port, style, s, length, "0") for s in (2, 3))
        if when == "all-at-once":
            conn.sock.sendall(first + rest)
            sent_more.set()
            head = conn.read_head()
            reader = conn.body_reader(head)
            body = reader.read_exactly(PIPELINE_PAUSE_AT)
        else:
            conn.sock.sendall(first)
            head = conn.read_head()
            reader = conn.body_reader(head)
            body = reader.read_exactly(PIPELINE_PAUSE_AT)  # the producer now waits
            assert not rec.has("finish")
            conn.sock.sendall(rest)
            sent_more.set()
        responses = [(head, body + reader.read_all(), reader.complete, reader.framing)]
        for _ in (2, 3):
            head = conn.read_head()
            reader = conn.body_reader(head)
            responses.append((head, reader.read_all(), reader.complete, reader.framing))
    framing = "length" if length == "1" else "chunked"
    for seed, (head, data, complete, how) in zip((1, 2, 3), responses):
        assert head.status == 200
        assert (head.get("Connection") or "").lower() != "close"
        assert how == framing, f"response {seed} framed as {how}"
        assert complete, f"response {seed} was cut short"
        assert sha256(data) == sha256(payload(PIPELINED_SIZES[seed], seed)), seed
    rec.wait_for("all_finished")  # on_finish may run just after the last byte went out
    names = [n for n in rec.names() if n in ("start", "finish")]
    assert names == ["start", "finish"] * 3, f"requests overlapped: {rec!r}"
    assert rec.values("start") == rec.values("finish") == [1, 2, 3]
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]


# --------------------------------------------------------------------------- half-close
#
# What Tornado does (6.3 and 6.6 alike) when the client shuts down its write side: once
# the request is read, HTTP1Connection._read_message sets a close callback on the stream
# while the response is produced ("self.stream.set_close_callback(self._on_connection_close)"
# before "await self._finish_future"); with a close callback set, an idle IOStream (nothing
# being read or written, nothing in its read buffer) listens for reads to notice a close
# (BaseIOStream._maybe_add_error_listener); and BaseIOStream._read_to_buffer treats a read
# of 0 bytes, the client's FIN, as the end of the connection ("elif bytes_read == 0:
# self.close()"). So a half-close is a disconnect: as soon as the stream is idle, before
# the first flush or between two, Tornado closes the connection and the response is cut,
# exactly as if the client had left. Only a response complete before that arrives whole.
# The handler's on_connection_close runs from the next loop iteration
# (BaseIOStream._signal_closed: "self.io_loop.add_callback(cb)"), unless the response is
# finished by then: a flush that failed on the closed stream can end a stream first, and
# a finished request has dropped its close callback (HTTP1Connection._clear_callbacks).

HALF_CLOSE_FIRST = 16 * KiB


class HalfClosed(SafeStreamMixin, RequestHandler):
    """``?size=`` bytes of BODY; ``?wait=1``: after the first HALF_CLOSE_FIRST bytes are on
    the socket, the producer waits for on_connection_close before it goes on."""

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    def on_connection_close(self) -> None:
        try:
            super().on_connection_close()
        finally:  # after the library has let the producer go: a test may check on it now
            self.rec.add("on_connection_close")

    def on_finish(self) -> None:
        # The request is over: after the producer ended, whichever way the stream went.
        self.rec.add("on_finish")

    def wait_for_close(self) -> None:
        try:
            self.rec.wait_for("on_connection_close", timeout=TIMEOUT / 2)
        except AssertionError as exc:
            self.rec.add("never_closed", exc)


class HalfClosedPush(HalfClosed):
    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> None:
        data = BODY[: int(self.get_argument("size"))]
        try:
            if self.get_argument("wait") == "1":
                self.write(data[:HALF_CLOSE_FIRST])
                flushed = self.flush()
                assert isinstance(flushed, Future)
                flushed.result(timeout=TIMEOUT)
                self.wait_for_close()
                data = data[HALF_CLOSE_FIRST:]
            for piece in split(data, 16 * KiB):
                self.write(piece)
                self.flush()
            self.rec.add("ran_to_the_end")
        except StreamClosedError as exc:
            self.rec.add("stream_closed_error", exc)
        finally:
            self.rec.add("returned", threading.current_thread().name)


class HalfClosedGenerator(HalfClosed):
    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        data = BODY[: int(self.get_argument("size"))]
        self.rec.add("started")
        try:
            if self.get_argument("wait") == "1":
                yield data[:HALF_CLOSE_FIRST]
                self.wait_for_close()  # in next(): the first chunk went out long before
                data = data[HALF_CLOSE_FIRST:]
            yield from split(data, 16 * KiB)
            self.rec.add("ran_to_the_end")
        except GeneratorExit:
            self.rec.add("generator_exit")
            raise
        finally:
            self.rec.add("returned", threading.current_thread().name)


def half_close_routes(pool: Executor, rec: Recorder) -> list[Route]:
    kwargs: dict[str, object] = dict(executor=pool, rec=rec)
    return [("/push", HalfClosedPush, kwargs), ("/generator", HalfClosedGenerator, kwargs)]


def read_what_comes(conn: RawConnection) -> tuple[bytes, bool]:
    """The body bytes the server sends, and whether the body ended properly."""
    try:
        head = conn.read_head()
    except ConnectionClosed:
        return b"", False  # closed before the status line
    assert head.status == 200
    reader = conn.body_reader(head)
    return reader.read_all(), reader.complete


def assert_cut_cleanly(rec: Recorder, style: str, pool: ThreadPoolExecutor) -> None:
    """The stream was aborted as for a client that left: producer released, once, quietly."""
    rec.wait_for("on_finish")  # the client may see the close before the handler even runs
    if style == "push":  # the method always runs, and learns of the close at a write
        assert isinstance(rec.wait_for("stream_closed_error"), StreamClosedError)
    assert_idle(pool, 2)  # so the producer task, if any, is over
    assert not rec.has("ran_to_the_end"), "the producer never heard the client was gone"
    returned = rec.values("returned")
    if style == "push":
        assert len(returned) == 1
    else:
        # A generator closed before its first next() runs no code at all; one that started
        # is closed at its yield, and its finally runs once.
        assert len(returned) == len(rec.values("started")) <= 1, rec
        assert rec.has("generator_exit") == bool(returned), rec
    for name in returned:
        assert str(name).startswith("hostile"), f"cleanup ran in thread {name}"


@pytest.mark.parametrize("style", STYLES)
def test_half_close_mid_body_is_a_disconnect(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, style: str
) -> None:
    """The client reads the start of the body, then shuts down its write side and reads on.

    Tornado takes the FIN for a disconnect (see above): on_connection_close runs while the
    producer waits, its next write raises StreamClosedError (push) or its generator is
    closed at the yield, once, in the executor; the client gets exactly the bytes sent
    before, then an incomplete end; no ERROR is logged.
    """
    pool = make_executor(2, "hostile")
    rec = Recorder()
    srv = server(half_close_routes(pool, rec))
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", f"/{style}?size={SIZE}&wait=1")
        reader = conn.body_reader(conn.read_head())
        first = reader.read_exactly(HALF_CLOSE_FIRST)
        conn.sock.shutdown(socket.SHUT_WR)
        rest = reader.read_all()
        complete = reader.complete
    assert not rec.has("never_closed"), "Tornado did not take the half-close for a disconnect"
    rec.wait_for("on_connection_close")
    assert_cut_cleanly(rec, style, pool)
    assert len(rec.values("returned")) == 1
    assert first == BODY[:HALF_CLOSE_FIRST]
    assert rest == b"", "bytes were sent after on_connection_close"
    assert not complete
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]


@pytest.mark.parametrize("style", STYLES)
def test_half_close_right_after_the_request_cuts_a_long_body(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, style: str
) -> None:
    """Shut down at once after sending the request, a client gets no whole long body.

    Tornado sees the FIN within a loop iteration or two of reading the request, long
    before a body of 4 MiB streamed with a 64 KiB budget could be sent: the stream is cut
    as for a client that left (what arrives, if anything, is a correct prefix), the push
    worker sees StreamClosedError, a generator that had started is closed once in the
    executor, and no ERROR is logged.
    """
    pool = make_executor(2, "hostile")
    rec = Recorder()
    srv = server(half_close_routes(pool, rec))
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", f"/{style}?size={SIZE}&wait=0")
        conn.sock.shutdown(socket.SHUT_WR)
        body, complete = read_what_comes(conn)
    assert not complete, "a 4 MiB body was sent whole to a half-closed client"
    assert body == BODY[: len(body)], "the client got wrong bytes"
    assert_cut_cleanly(rec, style, pool)
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]


@pytest.mark.parametrize("style", STYLES)
def test_half_close_right_after_the_request_short_body_is_whole_or_cut(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, style: str
) -> None:
    """A 100-byte body races Tornado's noticing the FIN: either it is sent whole and
    correct first, or the stream is cut as for a client that left (as above). Both are
    clean: no ERROR, nothing left busy, the generator's cleanup run at most once.
    """
    pool = make_executor(2, "hostile")
    rec = Recorder()
    srv = server(half_close_routes(pool, rec))
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", f"/{style}?size=100&wait=0")
        conn.sock.shutdown(socket.SHUT_WR)
        body, complete = read_what_comes(conn)
    rec.wait_for("on_finish")  # the client may see the close before the handler even runs
    if complete:
        assert body == BODY[:100]
        assert rec.wait_for("ran_to_the_end") is None
        assert len(rec.values("returned")) == 1
        assert_idle(pool, 2)
    else:
        assert body == BODY[: len(body)], "the client got wrong bytes"
        assert_idle(pool, 2)
        # The producer may have run to the end before it could hear of the close.
        assert len(rec.values("returned")) == (1 if style == "push" else len(rec.values("started")))
    srv.stop()
    assert logs.errors() == [], [record_text(r) for r in logs.errors()]
