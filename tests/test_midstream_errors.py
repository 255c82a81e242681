"""Exceptions in the worker: Tornado's error page before the headers, an aborted body after them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from typing import Any

import pytest
from helpers import (
    TIMEOUT,
    ConnectionClosed,
    LogRecorder,
    RawConnection,
    Recorder,
    ServerFactory,
    ServerThread,
    fetch,
    payload,
    record_text,
)
from tornado.web import HTTPError, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
PREFIX = payload(10 * KiB, 4)


class Base(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    def prepare(self) -> None:
        self.rec.add("prepare", threading.get_ident())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.rec.add("write_error", status_code)
        self.finish(f"custom error {status_code}")

    def on_finish(self) -> None:
        self.rec.add("on_finish")

    def flushed_prefix(self) -> None:
        """Write PREFIX and wait until it is on the socket, so the client must get all of it."""
        self.write(PREFIX)
        future = self.flush()
        assert isinstance(future, Future)
        future.result(timeout=TIMEOUT)


class RaiseBeforeWrite(Base):
    @stream_on_executor
    def get(self) -> None:
        self.rec.add("method", threading.get_ident())
        self.set_header("X-Before", "1")
        raise ValueError("boom-before")


class RaiseAfterUnflushedWrite(Base):
    @stream_on_executor
    def get(self) -> None:
        self.write(b"unflushed")  # below max_buffer_bytes, never flushed: headers not written yet
        raise ValueError("boom-before")


class Raise403(Base):
    @stream_on_executor
    def get(self) -> None:
        raise HTTPError(403)


class GeneratorRaiseBefore(Base):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        if self.request.method == "GET":
            raise ValueError("boom-before")
        yield b"never"


class RaiseAfterFlush(Base):
    @stream_on_executor
    def get(self) -> None:
        if self.get_argument("length", "0") == "1":
            self.set_header("Content-Length", str(100 * KiB))
        self.flushed_prefix()
        raise RuntimeError("boom-after")


class GeneratorRaiseAfterFirst(Base):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        if self.get_argument("length", "0") == "1":
            self.set_header("Content-Length", str(100 * KiB))
        yield PREFIX
        raise RuntimeError("boom-after")


class HTTPErrorAfterFlush(Base):
    @stream_on_executor
    def get(self) -> None:
        self.flushed_prefix()
        raise HTTPError(503)


class GeneratorHTTPErrorAfterFirst(Base):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield PREFIX
        raise HTTPError(404)


class FinishThenRaise(Base):
    @stream_on_executor
    def get(self) -> None:
        finished = self.finish(b"complete")
        assert isinstance(finished, Future)
        finished.result(timeout=TIMEOUT)
        raise ValueError("cleanup failed after the response was complete")


class Ok(RequestHandler):
    def get(self) -> None:
        self.write(b"ok")


def routes(
    executor: Executor, rec: Recorder
) -> list[tuple[str, type[RequestHandler], dict[str, object]]]:
    kwargs: dict[str, object] = dict(executor=executor, rec=rec)
    return [
        ("/before", RaiseBeforeWrite, kwargs),
        ("/unflushed", RaiseAfterUnflushedWrite, kwargs),
        ("/403", Raise403, kwargs),
        ("/gen-before", GeneratorRaiseBefore, kwargs),
        ("/after", RaiseAfterFlush, kwargs),
        ("/gen-after", GeneratorRaiseAfterFirst, kwargs),
        ("/http-error-after", HTTPErrorAfterFlush, kwargs),
        ("/gen-http-error-after", GeneratorHTTPErrorAfterFirst, kwargs),
        ("/finish-then-raise", FinishThenRaise, kwargs),
        ("/ok", Ok, {}),
    ]


def logged_once(srv: ServerThread, logs: LogRecorder, marker: str) -> None:
    """Exactly one ERROR record (beside tornado.access's 5xx line), and it is about ``marker``."""
    logs.wait_for_errors(1)
    srv.stop()  # joins the loop thread: nothing more can be logged for this request
    errors = logs.errors()
    assert len(errors) == 1, [record_text(r) for r in errors]
    assert marker in record_text(errors[0])


class TestBeforeTheHeaders:
    @pytest.mark.parametrize("path", ["/before", "/unflushed", "/gen-before"])
    def test_exception_gives_tornados_error_page(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder, path: str
    ) -> None:
        rec = Recorder()
        srv = server(routes(executor, rec))
        response = fetch(srv.port, path)
        assert response.status == 500
        assert response.complete
        assert response.body == b"custom error 500"
        assert response.header("X-Before") is None
        assert rec.wait_for("write_error") == 500
        rec.wait_for("on_finish")
        logged_once(srv, logs, "boom-before")

    def test_http_error_status(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        rec = Recorder()
        srv = server(routes(executor, rec))
        response = fetch(srv.port, "/403")
        assert response.status == 403
        assert response.complete
        assert response.body == b"custom error 403"
        rec.wait_for("on_finish")
        srv.stop()
        assert logs.errors() == []

    def test_prepare_then_method_then_on_finish(
        self, server: ServerFactory, executor: Executor
    ) -> None:
        rec = Recorder()
        srv = server(routes(executor, rec))
        fetch(srv.port, "/before")
        rec.wait_for("on_finish")
        order = [n for n in rec.names() if n in ("prepare", "method", "write_error", "on_finish")]
        assert order == ["prepare", "method", "write_error", "on_finish"]
        assert rec.wait_for("prepare") == srv.loop_thread_ident
        assert rec.wait_for("method") != srv.loop_thread_ident


class TestAfterTheHeaders:
    @pytest.mark.parametrize("length", ["0", "1"], ids=["chunked", "content-length"])
    @pytest.mark.parametrize("path", ["/after", "/gen-after"], ids=["push", "generator"])
    def test_connection_closed_without_a_proper_end(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder, path: str, length: str
    ) -> None:
        rec = Recorder()
        srv = server(routes(executor, rec))
        with RawConnection(srv.port) as conn:
            response = conn.request("GET", f"{path}?length={length}")
            assert response.status == 200
            assert response.framing == ("length" if length == "1" else "chunked")
            assert not response.complete, "a body cut short by an error was passed off as complete"
            assert PREFIX.startswith(response.body)
            if path == "/after":
                assert response.body == PREFIX, "bytes flushed before the error were lost"
        assert not rec.has("write_error")
        logged_once(srv, logs, "boom-after")

    @pytest.mark.parametrize(
        ("path", "status"),
        [("/http-error-after", "503"), ("/gen-http-error-after", "404")],
        ids=["push", "generator"],
    )
    def test_http_error_is_logged_once_and_the_body_cut_short(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder, path: str, status: str
    ) -> None:
        # Regression: log_exception() logs nothing for an HTTPError without a log_message, so
        # an HTTPError raised after the headers cut the response without a word in the log.
        rec = Recorder()
        srv = server(routes(executor, rec))
        response = fetch(srv.port, path)
        assert response.status == 200
        assert not response.complete, "a body cut short by an error was passed off as complete"
        assert response.body == PREFIX
        assert not rec.has("write_error")
        srv.stop()  # joins the loop thread: nothing more can be logged for this request
        records = [
            r for r in logs.records if r.levelno >= logging.WARNING and r.name != "tornado.access"
        ]
        assert len(records) == 1, [record_text(r) for r in records]
        assert records[0].levelno == logging.WARNING, record_text(records[0])
        assert status in record_text(records[0]), record_text(records[0])

    def test_error_after_a_finish_in_the_worker_keeps_the_connection(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        # Regression: the response was complete, yet the connection was closed for the error.
        rec = Recorder()
        srv = server(routes(executor, rec))
        with RawConnection(srv.port) as conn:
            first = conn.request("GET", "/finish-then-raise")
            assert first.status == 200
            assert first.complete
            assert first.body == b"complete"
            logs.wait_for_errors(1)  # the error is handled: the connection was kept, or not
            try:
                second = conn.request("GET", "/ok")
            except (ConnectionClosed, OSError) as exc:
                raise AssertionError("the connection was closed after a whole response") from exc
            assert second.status == 200 and second.complete and second.body == b"ok"
        logged_once(srv, logs, "cleanup failed after the response was complete")
