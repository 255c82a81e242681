"""@receive_on_executor on data_received: uploads consumed in the executor, end to end."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from helpers import TIMEOUT, ExecutorFactory, LogRecorder, ServerFactory, fetch, record_text
from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, RequestHandler, stream_request_body
from upload_helpers import (
    TORNADO_CHUNK,
    Events,
    StoreHandler,
    Upload,
    blocks,
    connect_and_leave,
    digest,
    leftover_parts,
    open_fds,
    upload,
)

from tornado_safestream import (
    SafeStreamMixin,
    WrongThreadError,
    receive_on_executor,
)
from tornado_safestream.memory import memory_stats, set_memory_cap

LIMIT = 256 * 1024  # StoreHandler's max_buffer_bytes


class Ping(RequestHandler):
    def get(self) -> None:
        self.write("pong")


def routes(tmp_path: Path, events: Events, **options: Any) -> list[Any]:
    kwargs: dict[str, object] = {"directory": str(tmp_path), "recorder": events, **options}
    return [(r"/store", StoreHandler, kwargs), (r"/ping", Ping, {})]


def stored(response: Any) -> dict[str, Any]:
    assert response.status == 200, (response.status, response.body[:500])
    result: dict[str, Any] = json.loads(response.body)
    with open(result["path"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == result["sha256"]
    return result


def calls(events: Events) -> list[tuple[int, int, str]]:
    """``(call number, chunk size, thread name)`` of each data_received call, in order."""
    return [cast("tuple[int, int, str]", value) for value in events.values("call")]


@pytest.fixture
def events() -> Events:
    return Events()


class TestUploads:
    @pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
    @pytest.mark.parametrize("size", [0, 1, TORNADO_CHUNK - 1, TORNADO_CHUNK + 1, 3 << 20])
    def test_sizes(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
        size: int,
        chunked: bool,
    ) -> None:
        srv = server(routes(tmp_path, events, executor=executor))
        response, sent = upload(srv.port, "/store", size, seed=size, chunked=chunked, block=50_000)
        result = stored(response)
        assert (result["sha256"], result["size"]) == (sent, size)
        assert not leftover_parts(str(tmp_path))
        loop_thread = srv.thread.name
        assert all(call[2] != loop_thread for call in calls(events))

    @pytest.mark.parametrize(
        ("size", "chunked"), [(64 << 20, False), (32 << 20, True)], ids=["64MiB", "32MiB-chunked"]
    )
    def test_large(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
        size: int,
        chunked: bool,
    ) -> None:
        srv = server(routes(tmp_path, events, executor=executor))
        response, sent = upload(srv.port, "/store", size, seed=7, chunked=chunked)
        result = stored(response)
        assert (result["sha256"], result["size"]) == (sent, size)

    def test_calls_in_order_one_at_a_time(
        self, server: ServerFactory, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        running = threading.Semaphore(1)
        seen: list[int] = []

        @stream_request_body
        class Ordered(SafeStreamMixin, RequestHandler):
            executor = make_executor(8)

            @receive_on_executor(max_buffer_bytes=1 << 20)
            def data_received(self, chunk: bytes) -> None:
                assert running.acquire(blocking=False), "two calls at once"
                try:
                    seen.extend(chunk)
                finally:
                    running.release()

            async def put(self) -> None:
                self.write(hashlib.sha256(bytes(seen)).hexdigest())

        body = bytes(range(256)) * 8000
        srv = server([(r"/", Ordered, {})])
        with Upload(
            srv.port, "/", [body[i : i + 777] for i in range(0, len(body), 777)], chunked=True
        ) as up:
            response = up.response()
        assert response.status == 200
        assert response.body.decode() == hashlib.sha256(body).hexdigest()

    def test_32_concurrent_uploads(
        self, server: ServerFactory, make_executor: ExecutorFactory, tmp_path: Path, events: Events
    ) -> None:
        srv = server(routes(tmp_path, events, executor=make_executor(4)))
        sizes = [random.Random(i).randrange(1, 3 << 20) for i in range(32)]
        with concurrent.futures.ThreadPoolExecutor(32) as clients:
            futures = [
                clients.submit(upload, srv.port, "/store", size, seed=i, chunked=i % 2 == 1)
                for i, size in enumerate(sizes)
            ]
            results = [f.result(TIMEOUT * 3) for f in futures]
        for (response, sent), size in zip(results, sizes):
            result = stored(response)
            assert (result["sha256"], result["size"]) == (sent, size)
        assert not leftover_parts(str(tmp_path))


class TestOrderingAndBackpressure:
    def test_verb_waits_for_every_call_and_ping_stays_served(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
    ) -> None:
        gate = threading.Event()
        srv = server(routes(tmp_path, events, executor=executor, gate=gate))
        size = 4 << 20
        sent, _ = digest(blocks(size))
        with Upload(srv.port, "/store", blocks(size), length=size) as up:
            events.wait_for("call")
            # The worker is stuck in its first call (a stalled disk): the loop serves others.
            assert fetch(srv.port, "/ping").body == b"pong"
            assert len(events.values("call")) == 1
            assert not events.has("verb")
            gate.set()
            response = up.response()
        result = stored(response)
        assert result["sha256"] == sent
        assert events.values("verb") == [len(calls(events))]  # the verb ran after the last call

    def test_queue_bounded_and_counted_under_the_cap(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
    ) -> None:
        gate = threading.Event()
        srv = server(routes(tmp_path, events, executor=executor, gate=gate))
        before = memory_stats()
        size = 16 << 20
        with Upload(srv.port, "/store", blocks(size), length=size) as up:
            events.wait_for("call")
            # Tornado stops reading once the queue is over the limit: what it read (the
            # handler's inbound figures) stays within the limit plus one read chunk.
            during = memory_stats()
            assert during.streams == before.streams + 1
            assert during.held > before.held  # the queued body counts under the cap
            gate.set()
            response = up.response()
        assert stored(response)["size"] == size
        peaks = events.values("peak")
        assert peaks and all(p <= LIMIT + TORNADO_CHUNK for p in peaks)  # type: ignore[operator]
        after = memory_stats()
        assert after.streams == before.streams

    def test_rss_bounded_with_a_slow_worker(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
    ) -> None:
        srv = server(routes(tmp_path, events, executor=executor, sleep=0.0005))
        page = os.sysconf("SC_PAGE_SIZE")

        def rss() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        baseline = rss()
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            response, sent = upload(srv.port, "/store", 64 << 20, seed=3)
        finally:
            stop.set()
            sampler.join(TIMEOUT)
        assert stored(response)["sha256"] == sent
        growth = peak[0] - baseline
        assert growth <= LIMIT + (16 << 20), f"RSS grew {growth >> 20} MiB"

    def test_stalled_sender_holds_no_thread(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        tmp_path: Path,
        events: Events,
    ) -> None:
        pool = make_executor(1)
        srv = server(routes(tmp_path, events, executor=pool))
        resume = threading.Event()
        first = 100_000

        def body() -> Iterator[bytes]:
            yield b"a" * first
            if not resume.wait(TIMEOUT):
                raise AssertionError("never resumed")
            yield b"b" * first

        with Upload(srv.port, "/store", body(), length=2 * first) as up:
            events.wait_until(
                lambda e: sum(call[1] for call in calls(e)) == first, "the first bytes"
            )
            # The client sends nothing more: the one executor thread is free meanwhile.
            assert pool.submit(lambda: "free").result(TIMEOUT) == "free"
            resume.set()
            response = up.response()
        assert stored(response)["sha256"] == hashlib.sha256(b"a" * first + b"b" * first).hexdigest()

    def test_tiny_memory_cap_still_completes(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
    ) -> None:
        srv = server(routes(tmp_path, events, executor=executor))
        set_memory_cap(96 * 1024)
        try:
            with concurrent.futures.ThreadPoolExecutor(4) as clients:
                results = list(
                    clients.map(lambda i: upload(srv.port, "/store", 2 << 20, seed=i), range(4))
                )
        finally:
            set_memory_cap(256 << 20)
        for response, sent in results:
            assert stored(response)["sha256"] == sent


class TestErrors:
    @pytest.mark.parametrize("fail_at", [1, 5], ids=["first-chunk", "middle-chunk"])
    @pytest.mark.parametrize(
        ("error", "status"),
        [(HTTPError(422, "refused"), 422), (ValueError("disk full"), 500)],
        ids=["HTTPError", "ValueError"],
    )
    def test_worker_error(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
        logs: LogRecorder,
        fail_at: int,
        error: BaseException,
        status: int,
    ) -> None:
        srv = server(routes(tmp_path, events, executor=executor, fail_at=fail_at, error=error))
        size = 8 << 20
        with Upload(srv.port, "/store", blocks(size, block=TORNADO_CHUNK), length=size) as up:
            head = up.head()
            assert head.status == status
            events.wait_for("aborted")
        assert (
            max(call[0] for call in calls(events)) == fail_at
        )  # no call after the one that raised
        assert not events.has("verb")
        assert events.values("aborted")[0][0] == type(error).__name__  # type: ignore[index]
        assert not leftover_parts(str(tmp_path))
        if status == 500:
            errors = logs.wait_for_errors(1)
            assert len(errors) == 1 and "disk full" in record_text(errors[0])

    def test_clients_leaving_at_random_points(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        tmp_path: Path,
        events: Events,
    ) -> None:
        pool = make_executor(2)
        srv = server(routes(tmp_path, events, executor=pool))
        assert fetch(srv.port, "/ping").status == 200  # the server's own fds exist now
        fds = open_fds()
        rng = random.Random(100)
        for i in range(100):
            declared = rng.randrange(2, 2 << 20)
            connect_and_leave(srv.port, "/store", declared, rng.randrange(1, declared), i % 3 == 0)
        # The server closed every connection, every request heard of it, and every request
        # that had queued a chunk ran its abort hook (after its last call returned).
        deadline = time.monotonic() + TIMEOUT
        while not (len(srv.accepted) == 101 and all(s.fileno() == -1 for s in srv.accepted)):
            assert time.monotonic() < deadline, "the server never closed every connection"
            threading.Event().wait(0.02)  # no event for a socket closed on the loop: poll

        events.wait_until(
            lambda e: (
                len(e.values("gone")) == len(e.values("handler"))
                and len(e.values("aborted")) == e.values("gone").count(True)
            ),
            "the abort hook of every request that queued a chunk",
        )
        assert not events.has("verb")
        futures = [pool.submit(lambda: None) for _ in range(2)]
        for f in futures:
            f.result(TIMEOUT)  # no executor thread stays busy
        deadline = time.monotonic() + TIMEOUT
        while open_fds() > fds and time.monotonic() < deadline:
            threading.Event().wait(0.02)  # sockets close on the loop: bounded poll
        assert open_fds() <= fds
        assert not leftover_parts(str(tmp_path))

    @pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
    def test_max_body_size_still_applies(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        tmp_path: Path,
        events: Events,
        chunked: bool,
    ) -> None:
        srv = server(
            [
                (
                    r"/",
                    Limited,
                    {"directory": str(tmp_path), "recorder": events, "executor": executor},
                )
            ]
        )
        size = 4 << 20
        body = blocks(size, block=TORNADO_CHUNK)
        with Upload(srv.port, "/", body, length=size, chunked=chunked) as up:
            head = up.head()
            if chunked:
                # Tornado's answer to a chunked body over max_body_size: 400, and the
                # connection closed; the request is aborted.
                assert head.status == 400
                events.wait_for("aborted")
                assert events.values("aborted")[0][0] == "StreamClosedError"  # type: ignore[index]
            else:
                assert head.status == 413  # the declared length, refused in prepare()
                assert not events.has("call")
        assert not leftover_parts(str(tmp_path))
        assert not events.has("verb")


class Limited(StoreHandler):
    """The 413 idiom: refuse a declared length in prepare(); Tornado's limit for the rest."""

    def prepare(self) -> None:
        limit = 1 << 20
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        connection.set_max_body_size(limit)
        if int(self.request.headers.get("Content-Length", "0")) > limit:
            raise HTTPError(413)


class TestAssertionsAndMisuse:
    def test_response_method_from_data_received_is_flagged(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        thread_violations: list[WrongThreadError],
    ) -> None:
        @stream_request_body
        class Wrong(SafeStreamMixin, RequestHandler):
            @receive_on_executor
            def data_received(self, chunk: bytes) -> None:
                self.set_header("X-Seen", "1")

            def put(self) -> None:
                self.write("not reached")

        srv = server([(r"/", Wrong, {})], default_executor=executor)
        with LogRecorder():
            response = fetch(srv.port, "/", method="PUT", body=b"x" * 10)
        assert response.status == 500
        assert thread_violations
        assert thread_violations[0].method == "RequestHandler.set_header()"

    def test_async_def(self) -> None:
        with pytest.raises(TypeError, match=r"is async, so it runs on the IOLoop"):

            class H(SafeStreamMixin, RequestHandler):
                @receive_on_executor  # type: ignore[arg-type]
                async def data_received(self, chunk: bytes) -> None: ...

    def test_other_method(self) -> None:
        with pytest.raises(TypeError, match=r"it decorates data_received"):

            class H(SafeStreamMixin, RequestHandler):
                @receive_on_executor
                def post(self, chunk: bytes) -> None: ...

    def test_on_message_needs_the_websocket_mixin(self) -> None:
        with pytest.raises(TypeError, match=r"on_message\(\) needs the SafeWebSocketMixin"):

            class H(SafeStreamMixin, RequestHandler):
                @receive_on_executor
                def on_message(self, chunk: bytes) -> None: ...

    def test_options(self) -> None:
        with pytest.raises(ValueError, match="must be positive"):
            receive_on_executor(max_buffer_bytes=0)
        with pytest.raises(TypeError, match="takes the name of the handler attribute"):
            receive_on_executor(executor=3)  # type: ignore[call-overload]

    def test_without_the_mixin(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        import sys

        def make() -> type[RequestHandler]:
            @stream_request_body
            class Plain(RequestHandler):
                @receive_on_executor  # type: ignore[type-var]
                def data_received(self, chunk: bytes) -> None: ...

            return Plain

        if sys.version_info >= (3, 12):
            with pytest.raises(TypeError, match=r"needs the SafeStreamMixin"):
                make()
            return
        srv = server([(r"/", make(), {})], default_executor=executor)
        with LogRecorder() as logs:
            with pytest.raises(Exception):  # noqa: B017 (the connection is closed)
                fetch(srv.port, "/", method="PUT", body=b"x")
            record = logs.wait_for_record(lambda r: "needs the SafeStreamMixin" in record_text(r))
        assert record.levelno >= logging.ERROR

    def test_without_stream_request_body(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        class NotStreaming(SafeStreamMixin, RequestHandler):
            @receive_on_executor
            def data_received(self, chunk: bytes) -> None: ...

            def put(self) -> None: ...

        srv = server([(r"/", NotStreaming, {})], default_executor=executor)
        with LogRecorder() as logs:
            with pytest.raises(Exception):  # noqa: B017 (the connection is closed)
                fetch(srv.port, "/", method="PUT", body=b"x")
            logs.wait_for_record(lambda r: "add @stream_request_body" in record_text(r))
