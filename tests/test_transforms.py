"""Output transforms work as for a handler writing on the loop: gzip, Content-Length, HEAD."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Executor

import pytest
from helpers import (
    RawConnection,
    Recorder,
    Response,
    ServerFactory,
    fetch,
    payload,
    sha256,
    split,
    text_payload,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
TEXT = text_payload(512 * KiB + 7, 5)
BINARY = payload(300 * KiB + 1, 6)


def body_for(handler: RequestHandler) -> bytes:
    return TEXT if handler.get_argument("text", "0") == "1" else BINARY


class Push(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @stream_on_executor
    def get(self) -> None:
        data = body_for(self)
        self.set_header("X-Custom", "push")
        if self.get_argument("length", "0") == "1":
            self.set_header("Content-Length", str(len(data)))
        for piece in split(data, 8 * KiB):
            self.write(piece)
            self.flush()
        self.rec.add("returned")

    head = get


class Gen(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        data = body_for(self)
        self.set_header("X-Custom", "generator")
        if self.get_argument("length", "0") == "1":
            self.set_header("Content-Length", str(len(data)))
        try:
            for i, piece in enumerate(split(data, 8 * KiB)):
                try:
                    yield piece
                except GeneratorExit:
                    self.rec.add("closed_after_chunks", i + 1)
                    raise
            self.rec.add("ran_to_the_end")
        finally:
            self.rec.add("finally", threading.get_ident())

    head = get


class DecoratedHead(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @stream_on_executor
    def head(self) -> None:
        self.set_header("X-Custom", "head")
        self.write(b"not sent")
        self.flush()
        self.write(b"not sent either")
        self.rec.add("returned")


class Reference(RequestHandler):
    """The same response written on the loop, as Tornado users do it."""

    async def get(self) -> None:
        data = body_for(self)
        self.set_header("X-Custom", "reference")
        if self.get_argument("length", "0") == "1":
            self.set_header("Content-Length", str(len(data)))
        for piece in split(data, 8 * KiB):
            self.write(piece)
            await self.flush()

    head = get


def routes(
    executor: Executor, rec: Recorder
) -> list[tuple[str, type[RequestHandler], dict[str, object]]]:
    kwargs: dict[str, object] = dict(executor=executor, rec=rec)
    return [
        ("/push", Push, kwargs),
        ("/gen", Gen, kwargs),
        ("/head", DecoratedHead, kwargs),
        ("/reference", Reference, {}),
    ]


def framing_headers(response: Response) -> dict[str, str | None]:
    return {
        name: response.header(name)
        for name in (
            "Content-Encoding",
            "Transfer-Encoding",
            "Content-Length",
            "Vary",
            "Connection",
        )
    }


STYLES = pytest.mark.parametrize("path", ["/push", "/gen"], ids=["push", "generator"])


@STYLES
def test_gzip_streams_the_exact_payload(
    server: ServerFactory, executor: Executor, path: str
) -> None:
    srv = server(routes(executor, Recorder()), compress_response=True)
    gzip = {"Accept-Encoding": "gzip"}
    response = fetch(srv.port, f"{path}?text=1", headers=gzip)
    reference = fetch(srv.port, "/reference?text=1", headers=gzip)
    assert response.status == 200
    assert response.header("Content-Encoding") == "gzip"
    assert response.complete
    assert len(response.raw_body) < len(TEXT)
    assert sha256(response.body) == sha256(TEXT)
    assert framing_headers(response) == framing_headers(reference)


@STYLES
def test_no_gzip_without_accept_encoding(
    server: ServerFactory, executor: Executor, path: str
) -> None:
    srv = server(routes(executor, Recorder()), compress_response=True)
    response = fetch(srv.port, f"{path}?text=1")
    assert response.header("Content-Encoding") is None
    assert response.complete
    assert response.body == TEXT


@STYLES
def test_content_length_set_by_the_handler(
    server: ServerFactory, executor: Executor, path: str
) -> None:
    srv = server(routes(executor, Recorder()))
    response = fetch(srv.port, f"{path}?length=1")
    reference = fetch(srv.port, "/reference?length=1")
    assert response.header("Content-Length") == str(len(BINARY))
    assert response.header("Transfer-Encoding") is None
    assert response.framing == "length"
    assert response.complete
    assert sha256(response.body) == sha256(BINARY)
    assert framing_headers(response) == framing_headers(reference)


@STYLES
def test_chunked_when_no_length(server: ServerFactory, executor: Executor, path: str) -> None:
    srv = server(routes(executor, Recorder()))
    response = fetch(srv.port, path)
    reference = fetch(srv.port, "/reference")
    assert response.framing == "chunked"
    assert response.complete
    assert sha256(response.body) == sha256(BINARY)
    assert framing_headers(response) == framing_headers(reference)


@STYLES
@pytest.mark.parametrize("length", ["0", "1"], ids=["no-length", "content-length"])
def test_head_sends_headers_only(
    server: ServerFactory, executor: Executor, path: str, length: str
) -> None:
    rec = Recorder()
    srv = server(routes(executor, rec))
    with RawConnection(srv.port) as conn:
        reference = conn.request("HEAD", f"/reference?length={length}")
        head = conn.request("HEAD", f"{path}?length={length}")
        # the next response on this connection parses cleanly only if HEAD sent no body bytes
        after = conn.request("GET", path)
    assert head.status == 200
    assert head.header("X-Custom") == ("push" if path == "/push" else "generator")
    assert head.body == b""
    assert framing_headers(head) == framing_headers(reference)
    assert after.complete and sha256(after.body) == sha256(BINARY)
    if path == "/gen":
        # stopped early (allowed: rec "closed_after_chunks") or run out: either way not left open
        rec.wait_for("finally")
    else:
        rec.wait_for("returned")


def test_decorated_head(server: ServerFactory, executor: Executor) -> None:
    rec = Recorder()
    srv = server(routes(executor, rec))
    with RawConnection(srv.port) as conn:
        head = conn.request("HEAD", "/head")
        after = conn.request("GET", "/push")
    assert head.status == 200
    assert head.header("X-Custom") == "head"
    assert after.complete and sha256(after.body) == sha256(BINARY)
    rec.wait_for("returned")
