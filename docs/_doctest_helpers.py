"""What the code in the documentation runs on: a real server on 127.0.0.1 and a real client.

``sphinx-build -b doctest docs docs/_build/doctest`` imports this module for every page
(``doctest_global_setup`` in ``conf.py``), so that a snippet defining a handler can fetch
from it and show what a client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from tornado_safestream import thread_assertions

__all__ = ("Response", "fetch", "serve")


class Response(NamedTuple):
    """What the client received."""

    code: int
    headers: dict[str, str]
    body: bytes


@contextlib.asynccontextmanager
async def serve(app: Application) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral port of 127.0.0.1; yields its base URL; stops it after."""
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    server = HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 10)


def fetch(app: Application, path: str, **request: Any) -> Response:
    """
    Serve ``app``, make one request to ``path`` and return the response, with assertion mode
    on, so that a snippet that touches Tornado from the wrong thread fails.
    """

    async def run() -> Response:
        async with serve(app) as base:
            client = AsyncHTTPClient()
            try:
                response = await client.fetch(
                    HTTPRequest(base + path, request_timeout=30, **request), raise_error=False
                )
            finally:
                client.close()
            return Response(response.code, dict(response.headers.get_all()), response.body)

    with thread_assertions():
        return asyncio.run(run())
