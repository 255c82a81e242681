"""The client goes away mid-stream: the worker hears of it, nothing stays busy or logs an error."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
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
    make_app,
    payload,
    record_text,
)
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

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


#: How long ``async def get`` gives its stream before giving up (asyncio.wait_for).
GIVE_UP_AFTER = 0.2


class CancelledPush(Gone):
    """Gives up on its stream after GIVE_UP_AFTER s; the worker waits on each flush's future."""

    async def get(self) -> None:
        try:
            await asyncio.wait_for(self.body(), GIVE_UP_AFTER)
        except asyncio.TimeoutError:
            self.rec.add("gave_up")

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def body(self) -> None:
        chunk = payload(64 * KiB, 2)
        try:
            for _ in range(1000):
                self.write(chunk)  # never over the budget: the wait is in result()
                flushed = self.flush()
                assert isinstance(flushed, Future)
                self.progress.add(len(chunk))
                flushed.result(timeout=TIMEOUT)
            self.rec.add("ran_to_the_end")
        except StreamClosedError as exc:
            self.rec.add("worker_error", exc)
        except Exception as exc:  # for instance the flush future never resolved
            self.rec.add("worker_error", exc)
        finally:
            self.rec.add("worker_done")


class CancelledGenerator(Gone):
    """Gives up on its stream after GIVE_UP_AFTER s, its generator parked by the full budget."""

    async def get(self) -> None:
        try:
            await asyncio.wait_for(self.body(), GIVE_UP_AFTER)
        except asyncio.TimeoutError:
            self.rec.add("gave_up")

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def body(self) -> Iterator[bytes]:
        chunk = payload(8 * KiB, 2)
        try:
            for _ in range(50_000):
                self.progress.add(len(chunk))
                yield chunk
            self.rec.add("ran_to_the_end")
        finally:
            self.rec.add("worker_done", threading.current_thread().name)


class PushStallOnTheLastFlush(Gone):
    """Writes less than max_buffer_bytes and returns: only the final flush sends the body."""

    @stream_on_executor(max_buffer_bytes=8 * MiB, stall_timeout=0.5)
    def get(self) -> None:
        for _ in range(16):
            self.write(payload(64 * KiB, 3))
        self.rec.add("returned")


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


def test_cancelled_stream_releases_a_worker_waiting_on_a_flush(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    # Regression: the flush future the consumer had taken was never resolved when the stream
    # was cancelled, so the worker waited in flush().result() for ever.
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", CancelledPush, dict(executor=pool, rec=rec, progress=progress))], sndbuf=16 * KiB
    )
    with RawConnection(srv.port, rcvbuf=8 * KiB) as conn:
        conn.send_request("GET", "/")
        conn.read_head()  # then stall: the worker waits on its first flush
        rec.wait_for("gave_up")
        rec.wait_for("worker_done")  # while the client is still connected
        error = rec.wait_for("worker_error")
        assert isinstance(error, StreamClosedError), f"the worker got {error!r}"
        assert not rec.has("ran_to_the_end")
        assert_idle(pool)
    srv.stop()
    assert logs.errors() == []


def test_cancelled_stream_closes_the_parked_generator_in_the_executor(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    # Regression: a generator parked when its stream was cancelled was never resumed to be
    # closed; it was closed, if ever, when collected, on whatever thread that was.
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", CancelledGenerator, dict(executor=pool, rec=rec, progress=progress))],
        sndbuf=16 * KiB,
    )
    with RawConnection(srv.port, rcvbuf=8 * KiB) as conn:
        conn.send_request("GET", "/")
        conn.read_head()  # then stall: the generator parks
        rec.wait_for("gave_up")
        closed_in = rec.wait_for("worker_done")  # while the client is still connected
        assert isinstance(closed_in, str) and closed_in.startswith("single"), (
            f"the generator was closed in thread {closed_in!r}, not in the executor"
        )
        assert not rec.has("ran_to_the_end")
        assert_idle(pool)
    srv.stop()
    assert logs.errors() == []


@pytest.mark.parametrize("handler", [CancelledPush, CancelledGenerator], ids=["push", "generator"])
def test_a_stream_cancelled_after_the_headers_is_cut_short_not_ended(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder, handler: type[Gone]
) -> None:
    # Regression: once `async def get` gave up on its stream (asyncio.wait_for), Tornado's
    # auto-finish, or its send_error(500) for a cancelled task, finished the response: a
    # chunked body cut short ended with its last chunk, as if whole.
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    srv = server([("/", handler, dict(executor=pool, rec=rec, progress=progress))], sndbuf=16 * KiB)
    with RawConnection(srv.port, rcvbuf=8 * KiB) as conn:
        conn.send_request("GET", "/")
        head = conn.read_head()  # then stall until the handler gives up
        rec.wait_for("gave_up")
        rec.wait_for("worker_done")
        response = conn.body_reader(head).response()
    assert head.get("Transfer-Encoding") == "chunked"
    assert not response.complete, "a cancelled stream ended as if whole"
    assert not rec.has("ran_to_the_end")
    assert_idle(pool)
    assert logs.errors() == []


def test_stall_timeout_covers_the_final_flush(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    # Regression: the flush that finishes the response, after the method returned, waited
    # for a stalled client for ever, and stall_timeout gave no sign in the log.
    pool = make_executor(1, "single")
    rec = Recorder()
    srv = server(
        [("/", PushStallOnTheLastFlush, dict(executor=pool, rec=rec, progress=Progress()))],
        sndbuf=16 * KiB,
    )
    with RawConnection(srv.port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
        conn.send_request("GET", "/")
        head = conn.read_head()  # then stall
        stalled_at = time.monotonic()
        rec.wait_for("returned")
        warning = logs.wait_for_record(
            lambda r: r.levelno == logging.WARNING and "stall_timeout" in r.getMessage()
        )
        assert time.monotonic() - stalled_at < 5.0, "aborted long after stall_timeout (0.5 s)"
        assert "PushStallOnTheLastFlush.get" in record_text(warning), record_text(warning)
        response = conn.body_reader(head).response()  # what the kernel holds, then the end
    assert not response.complete, "the server did not give up on the stalled client"
    assert len(response.body) < 16 * 64 * KiB
    assert_idle(pool)


class LoopInAThread:
    """A server on its own IOLoop, in a thread, that the app stops and closes as at shutdown.

    Unlike the ``server`` fixture's, which closes every connection first (releasing every
    stream), `close` leaves the connections open: only the closed loop can tell a producer
    that nothing will ever serve it.
    """

    def __init__(self, app: Application) -> None:
        self._app = app
        self._ready = threading.Event()
        self._asyncio_loop = asyncio.new_event_loop()
        # Tasks the closed loop never finished are destroyed with it: not worth a log record.
        self._asyncio_loop.set_exception_handler(lambda loop, context: None)
        self._stop: asyncio.Event | None = None
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="closing-loop", daemon=True)
        self.thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("loop thread did not become ready")

    def _run(self) -> None:
        io_loop: IOLoop | None = None

        async def serve() -> None:
            nonlocal io_loop
            io_loop = IOLoop.current()
            self._stop = asyncio.Event()
            sockets = bind_sockets(0, "127.0.0.1")
            server = HTTPServer(self._app)
            server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.stop()  # no more connections, but the open ones are left as they are

        try:
            self._asyncio_loop.run_until_complete(serve())
        finally:
            self._ready.set()
            if io_loop is not None:
                io_loop.close(all_fds=True)  # the connections' sockets too
            else:
                self._asyncio_loop.close()

    def close(self) -> None:
        stop = self._stop
        assert stop is not None
        self._asyncio_loop.call_soon_threadsafe(stop.set)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "loop thread did not stop"
        assert self._asyncio_loop.is_closed()


def test_worker_blocked_on_the_budget_is_released_when_the_loop_closes(
    make_executor: ExecutorFactory,
) -> None:
    # Regression: a producer blocked on the budget waited for the consumer for ever once the
    # loop was closed under it, and its thread then hung the interpreter's exit.
    pool = make_executor(1, "single")
    rec, progress = Recorder(), Progress()
    app = make_app([("/", PushUntilGone, dict(executor=pool, rec=rec, progress=progress))])
    loop = LoopInAThread(app)
    try:
        with RawConnection(loop.port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
            conn.send_request("GET", "/?flush=0")
            conn.read_head()  # then stall: the worker blocks on the budget
            progress.wait_stable()
            assert not rec.has("worker_done")
            loop.close()
            error = rec.wait_for("closed_error")
            assert isinstance(error, StreamClosedError)
            assert rec.wait_for("raised_by") == "write"
            rec.wait_for("worker_done")
            assert_idle(pool)
    finally:
        if loop.thread.is_alive():
            loop.close()
