"""Faults in the producer: the client gets a coherent response, the error one log record.

Each case checks, beside the response: the error is logged exactly once, at ERROR, naming
the handler (its class, or its method's frame in the traceback); the executor's one thread
is free again; a generator's ``finally`` ran exactly once, in the executor. Exceptions that
are not errors to handle (`KeyboardInterrupt`, `SystemExit`) must leave the IOLoop the way
they leave it from any coroutine: ``IOLoop.start()`` raises them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import re
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    ConnectionClosed,
    ExecutorFactory,
    LogRecorder,
    RawConnection,
    Recorder,
    Response,
    ServerFactory,
    ServerThread,
    make_app,
    payload,
    record_text,
    sha256,
    split,
)
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
PREFIX = payload(40 * KiB, 21)
CHUNK = payload(8 * KiB, 22)
#: Worker threads' name prefix: a ``finally`` that ran elsewhere ran on the wrong thread.
WORKER = "fault-worker"


# --------------------------------------------------------------------------- handlers


class Base(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.rec.add("write_error", status_code)
        self.finish(f"custom error {status_code}")

    def on_connection_close(self) -> None:
        self.rec.add("on_connection_close")
        super().on_connection_close()

    def ran_finally(self) -> None:
        self.rec.add("finally", threading.current_thread().name)

    def flushed_prefix(self) -> None:
        """Write PREFIX and wait until it is on the socket: the client must get all of it."""
        self.write(PREFIX)
        future = self.flush()
        assert isinstance(future, Future)
        future.result(timeout=TIMEOUT)


class GeneratorRaises(Base):
    """Raises before its first chunk (``?when=before``) or after it (``?when=after``)."""

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        try:
            if self.get_argument("when") == "after":
                yield PREFIX
            raise ValueError("generator-boom")
        finally:
            self.ran_finally()


class GeneratorClosingRaises(Base):
    """
    Streams until the client leaves; being closed, it misbehaves as ``?how=`` says.

    ``finally``: raises in its ``finally``. ``except``: turns the `GeneratorExit` into
    another exception. ``yield``: yields once more after the `GeneratorExit` (Python's
    ``close()`` then raises "generator ignored GeneratorExit"); the next `GeneratorExit`,
    from whoever closes it next, goes through.
    """

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> Iterator[bytes]:
        how = self.get_argument("how")
        try:
            for _ in range(10_000):
                try:
                    yield CHUNK
                except GeneratorExit:
                    self.rec.add("generator_exit", threading.current_thread().name)
                    if how == "except":
                        raise ValueError("raised-instead-of-generator-exit") from None
                    if how == "yield":
                        try:
                            yield b"yielded after close"
                        except GeneratorExit:
                            self.rec.add("generator_exit", threading.current_thread().name)
                            raise
                    raise
            self.rec.add("ran_to_the_end")
        finally:
            self.ran_finally()
            if how == "finally":
                raise ValueError("raised-in-finally-while-closing")


class NeverLetsGo(Base):
    """A generator that yields again at every GeneratorExit."""

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> Iterator[bytes]:
        try:
            for _ in range(10_000):
                try:
                    yield CHUNK
                except GeneratorExit:
                    self.rec.add("generator_exit", threading.current_thread().name)
        finally:
            self.rec.add("ended", threading.current_thread().name)


class PushCleanupRaises(Base):
    """Push style: writes until the client leaves, then its cleanup raises."""

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> None:
        try:
            for _ in range(10_000):
                self.write(CHUNK)
                self.flush()
            self.rec.add("ran_to_the_end")
        except StreamClosedError as exc:
            self.rec.add("worker_error", exc)
            raise
        finally:
            self.rec.add("worker_done")
            raise ValueError("raised-in-cleanup-after-the-client-left")


class FinallyRaisesAtTheEnd(Base):
    """Yields the whole body, then its ``finally`` raises on the way out."""

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        try:
            yield from split(PREFIX, 1000)
        finally:
            self.ran_finally()
            raise ValueError("raised-in-finally-at-the-end")


class OnConnectionCloseRaises(Base):
    """``on_connection_close`` raises after calling the mixin's (``?order=after-super``) or
    instead of it (``?order=before-super``); ``?style=`` picks push or generator."""

    def on_connection_close(self) -> None:
        self.rec.add("raising_on_connection_close")
        if self.get_argument("order") == "after-super":
            super().on_connection_close()
        raise ValueError("raised-in-on-connection-close")

    async def get(self) -> None:
        if self.get_argument("style") == "push":
            await self.push()
        else:
            await self.generator()

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def push(self) -> None:
        try:
            for _ in range(10_000):
                self.write(CHUNK)
                self.flush()
            self.rec.add("ran_to_the_end")
        except BaseException as exc:
            self.rec.add("worker_error", exc)
            raise
        finally:
            self.rec.add("worker_done", threading.current_thread().name)

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def generator(self) -> Iterator[bytes]:
        try:
            for _ in range(10_000):
                yield CHUNK
            self.rec.add("ran_to_the_end")
        finally:
            self.ran_finally()


class PushFinishThenWrite(Base):
    """Finishes the response in the worker, then writes on as if it had not."""

    @stream_on_executor
    def get(self) -> None:
        self.flushed_prefix()
        self.finish(b"the end")
        self.write(b"too late")
        self.rec.add("wrote_after_finish")


class GeneratorFinishThenYield(Base):
    """Finishes the response in the generator, then yields on as if it had not."""

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        try:
            yield PREFIX
            self.finish(b"the end")
            yield b"too late"
            self.rec.add("yielded_after_finish")
        finally:
            self.ran_finally()


class Ok(RequestHandler):
    def get(self) -> None:
        self.write(b"ok")


FATAL: dict[str, type[BaseException]] = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
}


class Fatal(Base):
    """Raises ``?exc=`` (KeyboardInterrupt or SystemExit) in the worker, ``?when=``: before
    the first byte, after it, or (generator) in ``finally`` once the client left."""

    def fatal(self) -> BaseException:
        error = FATAL[self.get_argument("exc")](f"raised in {type(self).__name__}")
        self.rec.add("raised", error)
        return error

    async def get(self) -> None:
        if self.get_argument("style") == "push":
            await self.push()
        else:
            await self.generator()

    @stream_on_executor
    def push(self) -> None:
        if self.get_argument("when") == "after":
            self.flushed_prefix()
        raise self.fatal()

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def generator(self) -> Iterator[bytes]:
        when = self.get_argument("when")
        try:
            if when == "after":
                yield PREFIX
            if when == "closing":
                for _ in range(10_000):
                    yield CHUNK
                self.rec.add("ran_to_the_end")
            else:
                raise self.fatal()
        finally:
            self.ran_finally()
            if when == "closing":
                raise self.fatal()


# --------------------------------------------------------------------------- checks


def serve(
    server: ServerFactory, make_executor: ExecutorFactory, **handlers: type[RequestHandler]
) -> tuple[ServerThread, ThreadPoolExecutor, Recorder]:
    """One route per handler (``/<name>``), all on one single-thread executor."""
    pool = make_executor(1, WORKER)
    rec = Recorder()
    kwargs: dict[str, object] = dict(executor=pool, rec=rec)
    routes = [(f"/{name}", handler, kwargs) for name, handler in handlers.items()]
    routes.append(("/ok", Ok, {}))
    return server(routes, sndbuf=16 * KiB), pool, rec


def assert_worker_free(pool: ThreadPoolExecutor) -> None:
    """The executor's only thread runs a probe: no worker was left busy."""
    try:
        pool.submit(threading.get_ident).result(timeout=TIMEOUT)
    except concurrent.futures.TimeoutError as exc:
        raise AssertionError("the executor's thread is still busy") from exc


def assert_finally_ran_once_in_the_executor(rec: Recorder) -> None:
    threads = rec.values("finally")
    assert len(threads) == 1, f"the generator's finally ran {len(threads)} times: {threads}"
    assert isinstance(threads[0], str) and threads[0].startswith(WORKER), (
        f"the generator's finally ran in thread {threads[0]!r}, not in the executor"
    )


def names_handler(text: str, handler: type[RequestHandler], method: str) -> bool:
    """The handler's class, or a frame of its method in this file's traceback lines."""
    frame = rf'File "{re.escape(__file__)}", line \d+, in {method}\b'
    return handler.__name__ in text or re.search(frame, text) is not None


def logged_once(
    srv: ServerThread,
    logs: LogRecorder,
    marker: str,
    handler: type[RequestHandler],
    method: str = "get",
) -> logging.LogRecord:
    """Exactly one WARNING-or-worse record (tornado.access's 5xx line aside): at ERROR, about
    ``marker``, naming the handler. Stops the server first: nothing more can be logged."""
    logs.wait_for_errors(1)
    srv.stop()
    records = [
        r for r in logs.records if r.levelno >= logging.WARNING and r.name != "tornado.access"
    ]
    texts = [record_text(r) for r in records]
    assert len(records) == 1, f"{len(records)} records: {texts}"
    assert records[0].levelno == logging.ERROR, texts[0]
    assert marker in texts[0], texts[0]
    assert names_handler(texts[0], handler, method), f"the log does not name {handler}: {texts[0]}"
    return records[0]


def read_some_then_leave(port: int, path: str) -> None:
    """Read the head and 32 KiB of the body, then close with data unread (an RST)."""
    with RawConnection(port, rcvbuf=8 * KiB) as conn:
        conn.send_request("GET", path)
        head = conn.read_head()
        assert head.status == 200
        conn.body_reader(head).read_exactly(32 * KiB)


# --------------------------------------------------------------------------- raising


class TestRaising:
    """Push-style raising before and after the first byte is test_midstream_errors's; here the
    generator's side: where its ``finally`` runs, and the exact bytes before the cut."""

    def test_before_the_first_chunk_gives_the_error_page(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        srv, pool, rec = serve(server, make_executor, gen=GeneratorRaises)
        with RawConnection(srv.port) as conn:
            response = conn.request("GET", "/gen?when=before")
        assert response.status == 500
        assert response.complete
        assert response.body == b"custom error 500"
        assert rec.wait_for("write_error") == 500
        assert_worker_free(pool)
        logged_once(srv, logs, "generator-boom", GeneratorRaises)
        assert_finally_ran_once_in_the_executor(rec)

    def test_after_the_first_chunk_cuts_the_body_after_its_bytes(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        srv, pool, rec = serve(server, make_executor, gen=GeneratorRaises)
        with RawConnection(srv.port) as conn:
            response = conn.request("GET", "/gen?when=after")
        assert response.status == 200
        assert response.framing == "chunked"
        assert not response.complete, "a body cut short by an error was passed off as complete"
        assert sha256(response.body) == sha256(PREFIX), "the chunk yielded before the error"
        assert not rec.has("write_error")
        assert_worker_free(pool)
        logged_once(srv, logs, "generator-boom", GeneratorRaises)
        assert_finally_ran_once_in_the_executor(rec)

    def test_finally_raising_after_the_last_chunk_cuts_the_body(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        srv, pool, rec = serve(server, make_executor, end=FinallyRaisesAtTheEnd)
        with RawConnection(srv.port) as conn:
            response = conn.request("GET", "/end")
        assert response.status == 200
        assert not response.complete, "the response was ended as if the generator had"
        assert sha256(response.body) == sha256(PREFIX)
        assert_worker_free(pool)
        logged_once(srv, logs, "raised-in-finally-at-the-end", FinallyRaisesAtTheEnd)
        assert_finally_ran_once_in_the_executor(rec)


# --------------------------------------------------------------------------- closing


class TestClosedGeneratorMisbehaves:
    """The client leaves, the library closes the generator, and the generator raises."""

    @pytest.mark.parametrize(
        ("how", "marker"),
        [
            ("finally", "raised-in-finally-while-closing"),
            ("except", "raised-instead-of-generator-exit"),
        ],
    )
    def test_error_while_being_closed_is_logged_once(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        logs: LogRecorder,
        how: str,
        marker: str,
    ) -> None:
        srv, pool, rec = serve(server, make_executor, closing=GeneratorClosingRaises)
        read_some_then_leave(srv.port, f"/closing?how={how}")
        rec.wait_for("on_connection_close")
        assert rec.wait_for("generator_exit") == rec.wait_for("finally")
        assert_worker_free(pool)
        logged_once(srv, logs, marker, GeneratorClosingRaises)
        assert_finally_ran_once_in_the_executor(rec)
        assert not rec.has("ran_to_the_end")

    def test_yield_after_close_is_logged_clearly_and_does_not_spin(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        srv, pool, rec = serve(server, make_executor, closing=GeneratorClosingRaises)
        read_some_then_leave(srv.port, "/closing?how=yield")
        rec.wait_for("on_connection_close")
        rec.wait_for("generator_exit")
        assert_worker_free(pool)
        record = logged_once(srv, logs, "GeneratorExit", GeneratorClosingRaises)
        assert "yield" in record_text(record), record_text(record)
        # Closed once by the library; at most once more for its finally to run.
        exits = rec.values("generator_exit")
        assert 1 <= len(exits) <= 2, exits
        assert all(isinstance(name, str) and name.startswith(WORKER) for name in exits), exits
        assert_finally_ran_once_in_the_executor(rec)

    def test_a_generator_that_never_lets_go_is_ended_and_reported_once(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        # Regression: a generator that yields at every GeneratorExit was logged by the
        # library, then reported again by Python ("Exception ignored") when it was collected.
        unraisable: list[str] = []
        previous = sys.unraisablehook
        sys.unraisablehook = lambda info: unraisable.append(f"{info.exc_value!r} {info.object!r}")
        try:
            srv, pool, rec = serve(server, make_executor, stubborn=NeverLetsGo)
            read_some_then_leave(srv.port, "/stubborn")
            rec.wait_for("ended")  # where it yielded, in the executor
            assert_worker_free(pool)
            logged_once(srv, logs, "GeneratorExit", NeverLetsGo)
            gc.collect()
        finally:
            sys.unraisablehook = previous
        assert unraisable == []
        assert all(str(name).startswith(WORKER) for name in rec.values("generator_exit")), rec

    def test_push_cleanup_raising_after_the_client_left_is_logged_once(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        srv, pool, rec = serve(server, make_executor, push=PushCleanupRaises)
        read_some_then_leave(srv.port, "/push")
        assert isinstance(rec.wait_for("worker_error"), StreamClosedError)
        rec.wait_for("worker_done")
        assert_worker_free(pool)
        logged_once(srv, logs, "raised-in-cleanup-after-the-client-left", PushCleanupRaises)


# --------------------------------------------------------------------------- on_connection_close


@pytest.mark.parametrize("order", ["after-super", "before-super"])
@pytest.mark.parametrize("style", ["push", "generator"])
def test_on_connection_close_raising_still_stops_the_stream(
    server: ServerFactory,
    make_executor: ExecutorFactory,
    logs: LogRecorder,
    style: str,
    order: str,
) -> None:
    srv, pool, rec = serve(server, make_executor, occ=OnConnectionCloseRaises)
    read_some_then_leave(srv.port, f"/occ?style={style}&order={order}")
    rec.wait_for("raising_on_connection_close")
    if style == "push":
        assert isinstance(rec.wait_for("worker_error"), StreamClosedError)
        rec.wait_for("worker_done")
    else:
        rec.wait_for("finally")
    assert not rec.has("ran_to_the_end")
    assert_worker_free(pool)
    assert fetch_ok(srv), "the server stopped serving"
    logged_once(
        srv, logs, "raised-in-on-connection-close", OnConnectionCloseRaises, "on_connection_close"
    )
    if style == "generator":
        assert_finally_ran_once_in_the_executor(rec)
    assert len(rec.values("raising_on_connection_close")) == 1
    # Behind the override, the mixin's ran only if the override called it.
    assert rec.has("on_connection_close") is (order == "after-super")


def fetch_ok(srv: ServerThread) -> bool:
    with RawConnection(srv.port) as conn:
        response = conn.request("GET", "/ok")
    return response.status == 200 and response.complete and response.body == b"ok"


# --------------------------------------------------------------------------- finish, then write


@pytest.mark.parametrize(
    "handler", [PushFinishThenWrite, GeneratorFinishThenYield], ids=["push", "generator"]
)
def test_writing_after_finish_is_an_error_and_the_response_stays_whole(
    server: ServerFactory,
    make_executor: ExecutorFactory,
    logs: LogRecorder,
    handler: type[RequestHandler],
) -> None:
    srv, pool, rec = serve(server, make_executor, finish=handler)
    with RawConnection(srv.port) as conn:
        first = conn.request("GET", "/finish")
        assert first.status == 200
        assert first.complete
        assert sha256(first.body) == sha256(PREFIX + b"the end")
        logs.wait_for_errors(1)
        second = conn.request("GET", "/ok")  # a whole response keeps its connection
        assert second.complete and second.body == b"ok"
    assert_worker_free(pool)
    record = logged_once(srv, logs, "finish", handler)
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError, record_text(record)
    assert re.search(r"\bwrite\(\) after finish\(\)", record_text(record)), record_text(record)
    assert not rec.has("wrote_after_finish") and not rec.has("yielded_after_finish")
    if handler is GeneratorFinishThenYield:
        assert_finally_ran_once_in_the_executor(rec)


# --------------------------------------------------------------------------- KeyboardInterrupt


class LoopThread:
    """
    An HTTPServer on 127.0.0.1 whose ``IOLoop.start()`` runs in a thread of its own.

    It keeps what ``start()`` raised (``raised``) instead of letting it kill the thread, then
    runs the loop once more to close the server and its connections, as an application's
    ``finally`` would. That run may meet the same exception again, from callbacks queued
    when the loop stopped (Tornado's ``f.result()`` on the handler's task): kept as well.
    """

    def __init__(self, app: Application) -> None:
        self._app = app
        self._server: HTTPServer | None = None
        self._ready = threading.Event()
        self.port = 0
        #: what IOLoop.start() raised, then what the closing run raised, in order
        self.raised: list[BaseException] = []
        self.stopped_normally = False
        self.thread = threading.Thread(target=self._run, name="fault-loop", daemon=True)
        self.io_loop: IOLoop | None = None

    def __enter__(self) -> LoopThread:
        self.thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("the server's loop did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        io_loop = self.io_loop
        if self.thread.is_alive() and io_loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                io_loop.add_callback(io_loop.stop)
        self.join()

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            raise AssertionError("the server's loop thread did not end")

    def _listen(self) -> None:
        sockets = bind_sockets(0, "127.0.0.1")
        self._server = HTTPServer(self._app)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()

    async def _close(self) -> None:
        assert self._server is not None
        self._server.stop()
        await asyncio.wait_for(self._server.close_all_connections(), TIMEOUT)

    def _run(self) -> None:
        io_loop = self.io_loop = IOLoop(make_current=False)
        asyncio_loop: asyncio.AbstractEventLoop = io_loop.asyncio_loop
        try:
            io_loop.add_callback(self._listen)
            try:
                io_loop.start()
                self.stopped_normally = True
            except BaseException as exc:
                self.raised.append(exc)
            if self._server is None:
                return
            closing = asyncio_loop.create_task(self._close())
            for _ in range(10):
                try:
                    asyncio_loop.run_until_complete(closing)
                    break
                except BaseException as exc:
                    self.raised.append(exc)
            leftovers = [t for t in asyncio.all_tasks(asyncio_loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                asyncio_loop.run_until_complete(asyncio.wait(leftovers, timeout=TIMEOUT))
        finally:
            self._ready.set()
            io_loop.close()


def request_until_closed(port: int, path: str) -> Response | None:
    """The response as far as it came before the server went away; None without a head."""
    with RawConnection(port) as conn:
        conn.send_request("GET", path)
        try:
            head = conn.read_head()
        except ConnectionClosed:
            return None
        return conn.body_reader(head).response()


@pytest.mark.parametrize("exc", ["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize(
    ("style", "when"),
    [
        ("push", "before"),
        ("push", "after"),
        ("generator", "before"),
        ("generator", "after"),
        ("generator", "closing"),
    ],
)
def test_keyboard_interrupt_and_system_exit_stop_the_loop(
    make_executor: ExecutorFactory, logs: LogRecorder, exc: str, style: str, when: str
) -> None:
    pool = make_executor(1, WORKER)
    rec = Recorder()
    app = make_app([("/fatal", Fatal, dict(executor=pool, rec=rec))])
    path = f"/fatal?exc={exc}&style={style}&when={when}"
    with LoopThread(app) as srv:
        if when == "closing":
            read_some_then_leave(srv.port, path)
            srv.join()
        else:
            response = request_until_closed(srv.port, path)
            srv.join()
            if when == "before":
                assert response is None, "an error page was sent: the exception was handled"
            else:
                assert response is not None and response.status == 200
                assert not response.complete
                assert sha256(response.body) == sha256(PREFIX)
    raised = rec.wait_for("raised")
    assert not srv.stopped_normally, "the loop went on after the worker's exception"
    assert srv.raised, "IOLoop.start() did not raise"
    assert srv.raised[0] is raised, f"IOLoop.start() raised {srv.raised[0]!r}, not {raised!r}"
    assert all(error is raised for error in srv.raised), srv.raised
    assert_worker_free(pool)
    if style == "generator":
        assert_finally_ran_once_in_the_executor(rec)
    assert not rec.has("write_error")
    records = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert records == [], [record_text(r) for r in records]
