"""
Types users see, checked by mypy (``mypy --strict``, with ``warn_unused_ignores``); never run.

A positive line pins a type with ``assert_type``; a negative line carries the error code
mypy must give (``# type: ignore[code]``): an ignore that stops being needed fails the check.
"""

from __future__ import annotations

import concurrent.futures
from asyncio import Future
from collections.abc import Iterator

from tornado.web import RequestHandler
from typing_extensions import assert_type

from tornado_safestream import SafeStreamMixin, stream_on_executor


class Download(SafeStreamMixin, RequestHandler):
    @stream_on_executor
    def get(self, name: str) -> None:
        # The worker's face: flush_from_worker() is a concurrent.futures.Future.
        self.write(name.encode())
        assert_type(self.flush_from_worker(), "concurrent.futures.Future[None]")
        self.flush_from_worker().result(timeout=5)
        self.flush_from_worker(include_footers=True).result()
        # flush() and finish() keep Tornado's types, for the loop...
        assert_type(self.flush(), "Future[None]")
        assert_type(self.finish(), "Future[None]")
        # ... so a worker that waits with a timeout calls flush_from_worker().
        self.flush().result(timeout=5)  # type: ignore[call-arg]

    async def post(self) -> None:
        # The loop's face: Tornado's awaitables, as in any RequestHandler.
        self.write(b"x")
        await self.flush()
        await self.finish()


class Export(SafeStreamMixin, RequestHandler):
    @stream_on_executor(max_buffer_bytes=64 * 1024)
    def get(self) -> Iterator[str]:
        yield "a,b\n"


async def the_streamers(download: Download, export: Export) -> None:
    assert_type(await download.get("x"), None)
    assert_type(await export.get(), None)
    await download.get(1)  # type: ignore[arg-type]


def a_concurrent_future(download: Download) -> concurrent.futures.Future[None]:
    return download.flush_from_worker()


def not_an_asyncio_future(download: Download) -> Future[None]:
    return download.flush_from_worker()  # type: ignore[return-value]
