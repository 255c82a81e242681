"""Push style end to end: a worker calls ``self.write()``/``flush()``; all arrives byte-exact."""

from __future__ import annotations

import concurrent.futures
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Progress,
    RawConnection,
    Recorder,
    ServerFactory,
    fetch,
    payload,
    record_text,
    sha256,
    split,
)
from tornado.ioloop import IOLoop
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * 1024
SMALL_BUFFER = 4 * KiB


class PushPayload(SafeStreamMixin, RequestHandler):
    """Streams ``payload(size, seed)`` in ``chunk`` pieces; ``?seed=`` and ``?flush=0`` override."""

    def initialize(
        self, executor: Executor, size: int, chunk: int, rec: Recorder, progress: Progress
    ) -> None:
        self.executor = executor
        self.size = size
        self.chunk = chunk
        self.rec = rec
        self.progress = progress

    def produce(self) -> None:
        seed = int(self.get_argument("seed", "0"))
        flush_each = self.get_argument("flush", "1") == "1"
        self.set_header("Content-Type", "application/octet-stream")
        for piece in split(payload(self.size, seed), self.chunk):
            self.write(piece)
            if flush_each:
                self.flush()
            self.progress.add(len(piece))
        self.progress.finish()
        self.rec.add("returned")

    @stream_on_executor
    def get(self) -> None:
        self.produce()

    def on_finish(self) -> None:
        self.rec.add("on_finish")


class PushSmallBuffer(PushPayload):
    @stream_on_executor(max_buffer_bytes=SMALL_BUFFER)
    def get(self) -> None:
        self.produce()


def push_routes(
    executor: Executor,
    size: int,
    chunk: int,
    rec: Recorder | None = None,
    progress: Progress | None = None,
) -> list[tuple[str, type[RequestHandler], dict[str, object]]]:
    kwargs: dict[str, object] = dict(
        executor=executor,
        size=size,
        chunk=chunk,
        rec=rec or Recorder(),
        progress=progress or Progress(),
    )
    return [("/default", PushPayload, kwargs), ("/small", PushSmallBuffer, kwargs)]


CHUNK_CASES = [
    pytest.param(1, 64 * KiB, id="1B"),
    pytest.param(7, 200_003, id="7B"),
    pytest.param(KiB, MiB + 5, id="1KiB"),
    pytest.param(64 * KiB, 4 * MiB + 3, id="64KiB"),
    pytest.param(MiB, 4 * MiB + 11, id="1MiB"),
]


class TestByteExact:
    @pytest.mark.parametrize("path", ["/default", "/small"])
    @pytest.mark.parametrize(("chunk", "size"), CHUNK_CASES)
    def test_chunk_sizes(
        self, server: ServerFactory, executor: Executor, path: str, chunk: int, size: int
    ) -> None:
        srv = server(push_routes(executor, size, chunk))
        response = fetch(srv.port, path + "?seed=3")
        assert response.status == 200
        assert response.complete
        assert response.framing == "chunked"
        assert len(response.body) == size
        assert sha256(response.body) == sha256(payload(size, 3))

    def test_concurrent_clients(
        self, server: ServerFactory, executor: Executor, make_executor: ExecutorFactory
    ) -> None:
        size = MiB + 123
        srv = server(push_routes(executor, size, 16 * KiB))
        clients = make_executor(8, "client")
        futures = {
            seed: clients.submit(
                fetch, srv.port, f"/{'small' if seed % 2 else 'default'}?seed={seed}"
            )
            for seed in range(8)
        }
        for seed, future in futures.items():
            response = future.result(timeout=3 * TIMEOUT)
            assert response.complete, seed
            assert sha256(response.body) == sha256(payload(size, seed)), (
                f"client {seed} got a wrong body"
            )

    @pytest.mark.parametrize(("chunk", "size"), [(1000, 512 * KiB + 1), (100, 128 * KiB)])
    def test_slow_reader_tiny_rcvbuf(
        self, server: ServerFactory, executor: Executor, chunk: int, size: int
    ) -> None:
        # many flushes against a reader that takes 1 KiB at a time through a tiny receive buffer
        srv = server(push_routes(executor, size, chunk))
        response = fetch(srv.port, "/small?seed=5", rcvbuf=4096, recv_size=KiB, pace=0.0002)
        assert response.complete
        assert sha256(response.body) == sha256(payload(size, 5))


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_stress_many_tiny_flushes(
    server: ServerFactory, executor: Executor, make_executor: ExecutorFactory
) -> None:
    size = MiB
    srv = server(push_routes(executor, size, 64))
    clients = make_executor(4, "client")
    futures = [clients.submit(fetch, srv.port, f"/default?seed={seed}") for seed in range(4)]
    for seed, future in enumerate(futures):
        response = future.result(timeout=3 * TIMEOUT)
        assert response.complete
        assert sha256(response.body) == sha256(payload(size, seed)), f"download {seed} corrupted"


class TestWriteWithoutFlush:
    def test_write_alone_streams_and_blocks_the_producer(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        size, chunk = 2 * MiB, 4 * KiB
        rec, progress = Recorder(), Progress()
        # a fixed SO_SNDBUF: Linux autotuning would otherwise let the kernel absorb MiBs
        srv = server(push_routes(executor, size, chunk, rec, progress), sndbuf=16 * KiB)
        with RawConnection(srv.port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
            conn.send_request("GET", "/small?seed=9&flush=0")
            # the head arrives although the method never called flush() and has not returned
            head = conn.read_head()
            assert head.status == 200
            produced = progress.wait_stable()
            assert not progress.finished, "write() without flush() buffered the whole body"
            assert produced < size
            assert not rec.has("returned")
            response = conn.body_reader(head).response()
        assert response.complete
        assert sha256(response.body) == sha256(payload(size, 9))
        rec.wait_for("returned")


class RecordingHandler(SafeStreamMixin, RequestHandler):
    """A streaming handler with the test's executor and a `Recorder` for what the worker saw."""

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec


class FlushFuture(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"abc")
        future = self.flush()
        self.rec.add("type", type(future))
        assert isinstance(future, concurrent.futures.Future)
        self.rec.add("exception", future.exception(timeout=TIMEOUT))
        self.rec.add("done", future.done())
        self.write(b"def")


class FlushFromWorker(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"abc")
        future = self.flush_from_worker()  # typed concurrent.futures.Future[None]
        self.rec.add("type", type(future))
        self.rec.add("result", future.result(timeout=TIMEOUT))
        self.write(b"def")


class FlushFromWorkerOnTheLoop(RecordingHandler):
    async def get(self) -> None:
        try:
            self.flush_from_worker()
        except RuntimeError as error:
            self.rec.add("error", str(error))
        self.write(b"abc")
        await self.flush()


class FinishFuture(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"a" * 1000)
        flushed = self.flush()
        assert isinstance(flushed, concurrent.futures.Future)
        flushed.result(timeout=TIMEOUT)
        finished = self.finish(b"the end")
        assert isinstance(finished, concurrent.futures.Future)
        self.rec.add("finish_error", finished.exception(timeout=TIMEOUT))


class ResponseMethods(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.set_status(201)
        self.set_header("X-Step", "1")
        self.set_header("X-Step", "2")
        self.add_header("X-Multi", "a")
        self.add_header("X-Multi", "b")
        self.set_header("X-Gone", "x")
        self.clear_header("X-Gone")
        self.set_cookie("sid", "abc")
        self.set_cookie("old", "x")
        self.clear_cookie("old")
        self.write(b"junk")
        self.clear()  # drops the buffered body and resets headers, as in Tornado
        self.set_status(201)
        self.set_header("X-After-Clear", "yes")
        self.set_cookie("sid", "abc")
        self.write(b"hello")
        self.flush()
        self.set_header("X-Late", "ignored")  # after the first flush: no effect, no error
        self.write(" world")
        self.rec.add("returned")


class RedirectEarly(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.redirect("/elsewhere")
        self.rec.add("returned")


class RedirectLate(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"partial")
        self.flush()
        try:
            self.redirect("/elsewhere")
        except Exception as exc:
            self.rec.add("error", exc)
        self.rec.add("returned")


class WriteAfterFinish(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"x")
        self.finish()
        try:
            self.write(b"y")
        except Exception as exc:
            self.rec.add("error", exc)
        self.rec.add("returned")


class SendError(RecordingHandler):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"discarded")
        self.send_error(418)
        self.rec.add("returned")


class ReturnFinishes(RecordingHandler):
    def prepare(self) -> None:
        self.rec.add("prepare")

    @stream_on_executor
    def get(self) -> None:
        self.write(b"abc")
        self.rec.add("method")

    def on_finish(self) -> None:
        self.rec.add("on_finish")


class PostEcho(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def post(self) -> None:
        # reading the request from the worker is allowed
        name = self.get_argument("name")
        body = self.request.body
        self.write(name.encode() + b":")
        for piece in split(body, 1000):
            self.write(piece)
            self.flush()


def simple_routes(
    executor: Executor, rec: Recorder
) -> list[tuple[str, type[RequestHandler], dict[str, object]]]:
    kwargs: dict[str, object] = dict(executor=executor, rec=rec)
    return [
        ("/flush-future", FlushFuture, kwargs),
        ("/flush-from-worker", FlushFromWorker, kwargs),
        ("/flush-from-worker-on-the-loop", FlushFromWorkerOnTheLoop, kwargs),
        ("/finish-future", FinishFuture, kwargs),
        ("/methods", ResponseMethods, kwargs),
        ("/redirect-early", RedirectEarly, kwargs),
        ("/redirect-late", RedirectLate, kwargs),
        ("/write-after-finish", WriteAfterFinish, kwargs),
        ("/send-error", SendError, kwargs),
        ("/return", ReturnFinishes, kwargs),
        ("/echo", PostEcho, dict(executor=executor)),
    ]


class TestResponseMethodsFromTheWorker:
    def test_flush_returns_a_concurrent_future(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/flush-future")
        assert response.complete
        assert response.body == b"abcdef"
        flush_type = rec.wait_for("type")
        assert isinstance(flush_type, type) and issubclass(flush_type, concurrent.futures.Future)
        assert rec.wait_for("exception") is None
        assert rec.wait_for("done") is True

    def test_flush_from_worker_returns_a_concurrent_future(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/flush-from-worker")
        assert response.complete
        assert response.body == b"abcdef"
        flush_type = rec.wait_for("type")
        assert isinstance(flush_type, type) and issubclass(flush_type, concurrent.futures.Future)
        assert rec.wait_for("result") is None

    def test_flush_from_worker_on_the_loop_raises(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/flush-from-worker-on-the-loop")
        assert response.complete
        assert response.body == b"abc"
        error = rec.wait_for("error")
        assert isinstance(error, str)
        assert error.startswith(
            "FlushFromWorkerOnTheLoop.flush_from_worker() was called outside the worker thread"
        ), error
        assert "await self.flush()" in error, error

    @pytest.mark.parametrize("connection", ["keep-alive", "close"])
    def test_finish_future_succeeds_once_the_body_is_sent(
        self, server: ServerFactory, executor: Executor, connection: str
    ) -> None:
        # Regression: with "Connection: close" Tornado closes the stream as soon as the last
        # byte is written, and the worker's finish() future failed with StreamClosedError
        # although the whole body had been sent.
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/finish-future", headers={"Connection": connection})
        assert response.complete
        assert response.body == b"a" * 1000 + b"the end"
        assert rec.wait_for("finish_error") is None

    def test_header_and_cookie_methods(self, server: ServerFactory, executor: Executor) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/methods")
        assert response.status == 201
        assert response.complete
        assert response.body == b"hello world"
        assert response.header("X-Step") is None, "clear() must reset headers set before it"
        assert response.header("X-After-Clear") == "yes"
        assert response.head.get_all("X-Multi") == []
        assert response.header("X-Gone") is None
        assert response.header("X-Late") is None
        cookies = response.head.get_all("Set-Cookie")
        assert any(c.startswith("sid=abc") for c in cookies), cookies
        rec.wait_for("returned")

    def test_header_methods_in_order(self, server: ServerFactory, executor: Executor) -> None:
        class Ordered(SafeStreamMixin, RequestHandler):
            def initialize(self, executor: Executor) -> None:
                self.executor = executor

            @stream_on_executor
            def get(self) -> None:
                self.set_header("X-Step", "1")
                self.set_header("X-Step", "2")
                self.add_header("X-Multi", "a")
                self.add_header("X-Multi", "b")
                self.set_header("X-Gone", "x")
                self.clear_header("X-Gone")
                self.set_cookie("old", "x")
                self.clear_cookie("old")
                self.write(b"ok")

        srv = server([("/", Ordered, dict(executor=executor))])
        response = fetch(srv.port, "/")
        assert response.complete and response.body == b"ok"
        assert response.header("X-Step") == "2"
        assert response.head.get_all("X-Multi") == ["a", "b"]
        assert response.header("X-Gone") is None
        cookies = response.head.get_all("Set-Cookie")
        assert any(c.startswith("old=") and "expires=" in c.lower() for c in cookies), cookies

    def test_redirect_before_write(self, server: ServerFactory, executor: Executor) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/redirect-early")
        assert response.status == 302
        assert response.header("Location") == "/elsewhere"
        assert response.complete
        rec.wait_for("returned")

    def test_redirect_after_flush_raises_in_worker(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/redirect-late")
        assert response.status == 200
        assert response.body == b"partial"
        assert response.complete
        error = rec.wait_for("error")
        assert type(error) is Exception
        assert str(error) == "Cannot redirect after headers have been written"

    def test_write_after_finish_raises_in_worker(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/write-after-finish")
        assert response.complete
        assert response.body == b"x"
        error = rec.wait_for("error")
        assert type(error) is RuntimeError
        assert str(error) == "Cannot write() after finish()"

    def test_send_error_before_flush(self, server: ServerFactory, executor: Executor) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/send-error")
        assert response.status == 418
        assert b"discarded" not in response.body
        assert response.complete
        rec.wait_for("returned")

    def test_return_finishes_the_response(self, server: ServerFactory, executor: Executor) -> None:
        rec = Recorder()
        srv = server(simple_routes(executor, rec))
        response = fetch(srv.port, "/return")
        assert response.status == 200
        assert response.complete
        assert response.body == b"abc"
        # never flushed: Tornado computes Content-Length at finish, as for a loop handler
        assert response.framing == "length"
        assert response.header("Content-Length") == "3"
        rec.wait_for("on_finish")
        assert [n for n in rec.names() if n in ("prepare", "method", "on_finish")] == [
            "prepare",
            "method",
            "on_finish",
        ]

    def test_worker_reads_the_request(self, server: ServerFactory, executor: Executor) -> None:
        body = payload(50_000, 1)
        srv = server(simple_routes(executor, Recorder()))
        with RawConnection(srv.port) as conn:
            response = conn.request("POST", "/echo?name=bob", body=body)
        assert response.status == 200
        assert response.complete
        assert response.body == b"bob:" + body


class TestKeepAlive:
    def test_second_request_on_the_same_connection(
        self, server: ServerFactory, executor: ThreadPoolExecutor
    ) -> None:
        size = 256 * KiB + 1
        srv = server(push_routes(executor, size, 8 * KiB))
        with RawConnection(srv.port) as conn:
            first = conn.request("GET", "/small?seed=1")
            assert first.complete
            assert (first.header("Connection") or "").lower() != "close"
            second = conn.request("GET", "/default?seed=2")
            third = conn.request("GET", "/small?seed=3&flush=0")
        assert sha256(first.body) == sha256(payload(size, 1))
        assert second.complete and sha256(second.body) == sha256(payload(size, 2))
        assert third.complete and sha256(third.body) == sha256(payload(size, 3))


class ScheduleOnTheLoop(SafeStreamMixin, RequestHandler):
    """Legacy worker code hands a response method to the loop with ``add_callback``.

    The callback runs on the loop in a copy of the worker's context. ``?method=`` picks it.
    """

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec
        self.io_loop = IOLoop.current()

    @stream_on_executor
    def get(self) -> None:
        self.write(b"hello ")
        self.flush()
        if self.get_argument("method") == "set_header":
            self.io_loop.add_callback(self.set_header, "X-Late", "1")
        else:
            self.io_loop.add_callback(self.flush)
        ran = threading.Event()
        self.io_loop.add_callback(ran.set)  # callbacks run in order: after the one above
        self.rec.add("loop_ran_the_callback", ran.wait(TIMEOUT))
        self.write(b"world")


LOOP_CALL_SIZE = 512 * KiB


class LoopSideCall(SafeStreamMixin, RequestHandler):
    """Loop code (the test, through ``run_on_loop``) calls ``?method=`` while ``body`` streams.

    ``body`` flushes more than the socket buffers hold and waits, so a flush is in progress
    when the call comes.
    """

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    def prepare(self) -> None:
        self.rec.add("handler", self)

    async def get(self) -> None:
        await self.body()

    @stream_on_executor(max_buffer_bytes=MiB)
    def body(self) -> None:
        data = payload(LOOP_CALL_SIZE, 6)
        self.write(data[: LOOP_CALL_SIZE // 2])
        self.flush()
        self.rec.add("flushing")
        self.rec.wait_for("loop_call")
        self.write(data[LOOP_CALL_SIZE // 2 :])

    def call_from_the_loop(self) -> None:
        method = self.get_argument("method")
        error: Exception | None = None
        try:
            if method == "write":
                self.write(b"from the loop")
            elif method == "flush":
                self.flush()
            else:
                self.finish()
        except Exception as exc:
            error = exc
        self.rec.add("loop_call", error)


class TestCallsOnTheLoopDuringAStream:
    def test_set_header_scheduled_by_the_worker_runs_on_the_loop(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        # Regression: the callback inherits the worker's context, so it was forwarded to the
        # channel as if the worker had called it, and the loop waited for itself for ever.
        rec = Recorder()
        srv = server([("/", ScheduleOnTheLoop, dict(executor=executor, rec=rec))])
        response = fetch(srv.port, "/?method=set_header")
        assert rec.wait_for("loop_ran_the_callback") is True, "the IOLoop stopped responding"
        assert response.complete
        assert response.body == b"hello world"
        assert response.header("X-Late") is None  # after the first flush: no effect, as in Tornado
        srv.stop()
        assert logs.errors() == []

    def test_flush_scheduled_by_the_worker_raises_on_the_loop(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        rec = Recorder()
        srv = server([("/", ScheduleOnTheLoop, dict(executor=executor, rec=rec))])
        response = fetch(srv.port, "/?method=flush")
        assert rec.wait_for("loop_ran_the_callback") is True, "the IOLoop stopped responding"
        assert response.complete
        assert response.body == b"hello world"
        # the loop logs what its callback raised
        errors = logs.wait_for_errors(1)
        text = "\n".join(record_text(r) for r in errors)
        assert "RuntimeError" in text, text
        assert "ScheduleOnTheLoop.flush" in text and "ScheduleOnTheLoop.get" in text, text

    @pytest.mark.parametrize("method", ["write", "flush", "finish"])
    def test_loop_side_call_raises_and_the_stream_completes(
        self, server: ServerFactory, executor: Executor, method: str
    ) -> None:
        # Regression: a loop-side finish() (say, a timeout callback) replaced the connection's
        # write future under the stream's flush, which then never completed; write() and
        # flush() raced the stream's own.
        rec = Recorder()
        srv = server([("/", LoopSideCall, dict(executor=executor, rec=rec))], sndbuf=16 * KiB)
        with RawConnection(srv.port, rcvbuf=8 * KiB, recv_size=KiB) as conn:
            conn.send_request("GET", f"/?method={method}")
            head = conn.read_head()  # then stall, so the stream's flush stays in progress
            handler = rec.wait_for("handler")
            assert isinstance(handler, LoopSideCall)
            rec.wait_for("flushing")
            srv.run_on_loop(handler.call_from_the_loop)
            error = rec.wait_for("loop_call")
            assert isinstance(error, RuntimeError), (
                f"{method}() on the loop did not raise: {error!r}"
            )
            assert f"LoopSideCall.{method}" in str(error), str(error)
            assert "LoopSideCall.body" in str(error), str(error)
            response = conn.body_reader(head).response()
        assert response.complete
        assert sha256(response.body) == sha256(payload(LOOP_CALL_SIZE, 6))


class FlushesWithFooters(SafeStreamMixin, RequestHandler):
    """Writes, flushes (also with include_footers=True), writes more, then finishes."""

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def get(self) -> None:
        data = payload(300 * KiB, seed=7)
        self.write(data[: 100 * KiB])
        self.flush()
        self.write(data[100 * KiB : 200 * KiB])
        self.flush(include_footers=True)  # not the end: the body goes on
        self.write(data[200 * KiB :])
        if self.get_argument("finish", "0") == "1":
            self.finish()


class TestChunkedFraming:
    """The library frames chunked bodies itself after the first flush: the wire stays valid."""

    @pytest.mark.parametrize("finish", ["0", "1"])
    def test_body_and_keep_alive_survive_a_flush_with_footers(
        self, server: ServerFactory, executor: Executor, finish: str
    ) -> None:
        srv = server([("/footers", FlushesWithFooters, dict(executor=executor))])
        with RawConnection(srv.port) as conn:
            for _ in range(2):  # the second request proves the first one ended cleanly
                response = conn.request("GET", f"/footers?finish={finish}")
                assert response.status == 200
                assert response.framing == "chunked"
                assert response.complete
                assert sha256(response.body) == sha256(payload(300 * KiB, seed=7))


class CancelsItsFlush(SafeStreamMixin, RequestHandler):
    """Cancels the future flush() gave it (as after a wait that timed out), then writes on."""

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @stream_on_executor
    def get(self) -> None:
        self.write(b"a" * 1000)
        flushed = self.flush()
        self.rec.add("cancelled", flushed.cancel())
        self.write(b"b" * 1000)


def test_a_flush_future_cannot_be_cancelled_and_the_stream_goes_on(
    server: ServerFactory, executor: Executor, logs: LogRecorder
) -> None:
    # Regression: cancel() succeeded, and the consumer's set_result() on the cancelled
    # future then broke the stream.
    rec = Recorder()
    srv = server([("/", CancelsItsFlush, {"executor": executor, "rec": rec})])
    response = fetch(srv.port, "/")
    assert rec.values("cancelled") == [False]
    assert response.complete
    assert response.body == b"a" * 1000 + b"b" * 1000
    assert logs.errors() == []
