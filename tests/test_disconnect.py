"""The client goes away mid-stream: the worker hears of it, nothing stays busy or logs an error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Progress,
    RawConnection,
    Recorder,
    ServerFactory,
    payload,
)
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * 1024


class Gone(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder, progress: Progress) -> None:
        self.executor = executor
        self.rec = rec
        self.progress = progress

    def on_connection_close(self) -> None:
        self.rec.add("on_connection_close")
        super().on_connection_close()


class PushUntilGone(Gone):
    """Writes (``?flush=1``: and flushes) until the client leaves; catches StreamClosedError."""

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> None:
        flush_each = self.get_argument("flush") == "1"
        chunk = payload(8 * KiB, 2)
        call = ""
        try:
            for _ in range(50_000):
                call = "write"
                self.write(chunk)
                if flush_each:
                    call = "flush"
                    self.flush()
                self.progress.add(len(chunk))
            self.rec.add("ran_to_the_end")
        except StreamClosedError as exc:
            self.rec.add("closed_error", exc)
            self.rec.add("raised_by", call)
        finally:
            self.rec.add("worker_done")


class PushLetsItPropagate(Gone):
    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> None:
        chunk = payload(8 * KiB, 2)
        try:
            for _ in range(50_000):
                self.write(chunk)
                self.flush()
                self.progress.add(len(chunk))
        finally:
            self.rec.add("worker_done")


class FlushFutureFails(Gone):
    """Flushes more than the kernel can take, then waits on the flush future."""

    @stream_on_executor(max_buffer_bytes=8 * MiB)
    def get(self) -> None:
        for _ in range(48):
            self.write(payload(64 * KiB, 3))
        future = self.flush()
        assert isinstance(future, Future)
        self.rec.add("done_before_close", future.done())
        self.rec.add("flushed")
        try:
            self.rec.add("flush_exception", future.exception(timeout=TIMEOUT))
            try:
                self.write(b"more")
                self.flush()
            except StreamClosedError as exc:
                self.rec.add("next_call_error", exc)
        finally:
            self.rec.add("worker_done")


class GeneratorUntilGone(Gone):
    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> Iterator[bytes]:
        chunk = payload(8 * KiB, 2)
        try:
            for _ in range(50_000):
                self.progress.add(len(chunk))
                yield chunk
            self.rec.add("ran_to_the_end")
        finally:
            self.rec.add("worker_done", threading.current_thread().name)


class PushStallTimeout(Gone):
    @stream_on_executor(max_buffer_bytes=16 * KiB, stall_timeout=0.5)
    def get(self) -> None:
        chunk = payload(8 * KiB, 2)
        try:
            for _ in range(50_000):
                self.write(chunk)
                self.flush()
                self.progress.add(len(chunk))
            self.rec.add("ran_to_the_end")
        except StreamClosedError as exc:
            self.rec.add("closed_error", exc)
        finally:
            self.rec.add("worker_done")


class GeneratorStallTimeout(Gone):
    @stream_on_executor(max_buffer_bytes=16 * KiB, stall_timeout=0.5)
    def get(self) -> Iterator[bytes]:
        chunk = payload(8 * KiB, 2)
        try:
            for _ in range(50_000):
                self.progress.add(len(chunk))
                yield chunk
            self.rec.add("ran_to_the_end")
        except GeneratorExit:
            self.rec.add("closed_error", "GeneratorExit")
            raise
        finally:
            self.rec.add("worker_done")


def assert_idle(pool: ThreadPoolExecutor) -> None:
    """The single-thread executor runs a probe task promptly, so no worker is left busy."""
    probe = pool.submit(threading.get_ident)
    probe.result(timeout=TIMEOUT)


def stall_then_leave(port: int, path: str, progress: Progress, how: str) -> None:
    with RawConnection(port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
        conn.send_request("GET", path)
        reader = conn.body_reader(conn.read_head())
        if how == "stalled-reset":
            progress.wait_stable()  # the worker is now blocked on the slow client
            conn.close(reset=True)
        else:
            reader.read_exactly(64 * KiB)  # reading, then a plain close mid-body


@pytest.mark.parametrize("how", ["stalled-reset", "reading-close"])
@pytest.mark.parametrize("flush", ["1", "0"], ids=["write+flush", "write-only"])
def test_push_worker_gets_stream_closed_error(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, how: str, flush: str
) -> None:
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", PushUntilGone, dict(executor=pool, rec=rec, progress=progress))], sndbuf=16 * KiB
    )
    stall_then_leave(srv.port, f"/?flush={flush}", progress, how)
    error = rec.wait_for("closed_error")
    assert isinstance(error, StreamClosedError)
    assert rec.wait_for("raised_by") in ("write", "flush")
    assert not rec.has("ran_to_the_end")
    rec.wait_for("worker_done")
    rec.wait_for("on_connection_close")
    assert_idle(pool)
    srv.stop()
    assert logs.errors() == [], "a plain disconnect was logged as an error"


def test_uncaught_stream_closed_error_leaves_no_thread_busy(
    server: ServerFactory, make_executor: ExecutorFactory
) -> None:
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", PushLetsItPropagate, dict(executor=pool, rec=rec, progress=progress))],
        sndbuf=16 * KiB,
    )
    stall_then_leave(srv.port, "/", progress, "stalled-reset")
    rec.wait_for("worker_done")
    rec.wait_for("on_connection_close")
    assert_idle(pool)


def test_pending_flush_future_fails_when_the_client_leaves(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    pool = make_executor(1, "single")
    rec = Recorder()
    srv = server(
        [("/", FlushFutureFails, dict(executor=pool, rec=rec, progress=Progress()))],
        sndbuf=16 * KiB,
    )
    with RawConnection(srv.port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
        conn.send_request("GET", "/")
        conn.read_head()
        rec.wait_for("flushed")
        conn.close(reset=True)
    assert rec.wait_for("done_before_close") is False, (
        "3 MiB flushed to a stalled client was reported written"
    )
    assert isinstance(rec.wait_for("flush_exception"), StreamClosedError)
    assert isinstance(rec.wait_for("next_call_error"), StreamClosedError)
    rec.wait_for("worker_done")
    rec.wait_for("on_connection_close")
    assert_idle(pool)
    srv.stop()
    assert logs.errors() == []


@pytest.mark.parametrize("how", ["stalled-reset", "reading-close"])
def test_generator_closed_and_thread_released(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, how: str
) -> None:
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", GeneratorUntilGone, dict(executor=pool, rec=rec, progress=progress))],
        sndbuf=16 * KiB,
    )
    stall_then_leave(srv.port, "/", progress, how)
    finally_thread = rec.wait_for("worker_done")
    assert isinstance(finally_thread, str) and finally_thread.startswith("single")
    assert not rec.has("ran_to_the_end")
    rec.wait_for("on_connection_close")
    assert_idle(pool)
    srv.stop()
    assert logs.errors() == []


@pytest.mark.parametrize(
    "handler", [PushStallTimeout, GeneratorStallTimeout], ids=["push", "generator"]
)
def test_stall_timeout_aborts_a_stream_that_makes_no_progress(
    server: ServerFactory, make_executor: ExecutorFactory, handler: type[Gone]
) -> None:
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server([("/", handler, dict(executor=pool, rec=rec, progress=progress))], sndbuf=16 * KiB)
    with RawConnection(srv.port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
        conn.send_request("GET", "/")
        head = conn.read_head()  # and stall: after 0.5 s without progress the stream is aborted
        rec.wait_for("closed_error")
        rec.wait_for("worker_done")
        assert not rec.has("ran_to_the_end")
        response = conn.body_reader(head).response()
    assert not response.complete, "an aborted stream ended as if complete"
    assert_idle(pool)
