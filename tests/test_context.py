"""contextvars set on the loop at the start of a request are seen in the worker (as to_thread)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from concurrent.futures import Executor

import pytest
from helpers import TIMEOUT, ExecutorFactory, ServerFactory, fetch
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")


class WithRequestId(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    def prepare(self) -> None:
        REQUEST_ID.set(self.get_argument("rid"))


class PushRequestId(WithRequestId):
    @stream_on_executor(max_buffer_bytes=64)
    def get(self) -> None:
        for _ in range(20):
            self.write(REQUEST_ID.get("<unset>") + ";")
            self.flush()


class GenRequestId(WithRequestId):
    @stream_on_executor(max_buffer_bytes=64)
    def get(self) -> Iterator[str]:
        # a small read-ahead: the generator is resumed by several pull tasks
        for _ in range(20):
            yield REQUEST_ID.get("<unset>") + ";"


@pytest.mark.parametrize("path", ["/push", "/gen"], ids=["push", "generator"])
def test_context_var_from_prepare_is_seen_in_the_worker(
    server: ServerFactory, executor: Executor, make_executor: ExecutorFactory, path: str
) -> None:
    srv = server(
        [
            ("/push", PushRequestId, dict(executor=executor)),
            ("/gen", GenRequestId, dict(executor=executor)),
        ]
    )
    clients = make_executor(8, "client")
    futures = {
        rid: clients.submit(fetch, srv.port, f"{path}?rid={rid}")
        for rid in (f"req-{i}" for i in range(8))
    }
    for rid, future in futures.items():
        response = future.result(timeout=3 * TIMEOUT)
        assert response.complete
        assert response.body.decode() == f"{rid};" * 20
