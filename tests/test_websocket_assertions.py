"""Assertion mode covers WebSockets: handler, protocol and client, from the wrong thread.

The suite runs with assertion mode on (``safestream_assert = true``); the tests that
provoke violations request ``thread_violations``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from typing import Any, Callable

import pytest
from helpers import TIMEOUT, Recorder, ServerFactory
from tornado.websocket import WebSocketHandler, websocket_connect
from websockets.sync.client import connect
from wsclients import Feed, close_client, take

from tornado_safestream import WrongThreadError

#: How often the broken pattern is tried: it must fail every time.
RUNS = 20


class Plain(WebSocketHandler):
    """A plain Tornado handler (no mixin) that hands itself to the test when open."""

    def initialize(self, opened: queue.Queue[Plain]) -> None:
        self.opened = opened

    def open(self, *args: str, **kwargs: str) -> None:
        self.opened.put(self)

    def on_message(self, message: str | bytes) -> None:
        pass


def in_a_thread(call: Callable[[], object]) -> BaseException | None:
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="app-thread") as pool:
        return pool.submit(call).exception(TIMEOUT)


class TestBrokenPatternFailsEveryTime:
    @pytest.mark.parametrize(
        ("method", "call"),
        [
            ("WebSocketHandler.write_message()", lambda h: h.write_message("from a thread")),
            ("WebSocketHandler.ping()", lambda h: h.ping(b"x")),
            ("WebSocketHandler.close()", lambda h: h.close()),
            ("WebSocketProtocol13.write_message()", lambda h: h.ws_connection.write_message("x")),
            ("WebSocketProtocol13.write_ping()", lambda h: h.ws_connection.write_ping(b"x")),
        ],
    )
    def test_handler_and_protocol(
        self,
        server: ServerFactory,
        thread_violations: list[WrongThreadError],
        method: str,
        call: Callable[[Any], object],
    ) -> None:
        opened: queue.Queue[Plain] = queue.Queue()
        srv = server([("/ws", Plain, {"opened": opened})])
        with connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            handler = opened.get(timeout=TIMEOUT)
            errors = [in_a_thread(lambda: call(handler)) for _ in range(RUNS)]
            # nothing was sent: the connection is intact
            srv.run_on_loop(lambda: handler.write_message("on the loop"))
            assert client.recv(timeout=TIMEOUT) == "on the loop"
        assert all(isinstance(e, WrongThreadError) for e in errors), errors
        first = errors[0]
        assert isinstance(first, WrongThreadError)
        assert str(first).startswith(f"{method} called from thread 'app-thread")
        assert first.loop_thread_name == "test-server-loop"
        assert first.filename == __file__
        assert first.source_line.startswith(f'("{method}", lambda h: h.')  # the user's line
        assert len(thread_violations) == RUNS

    def test_client_connection(self, thread_violations: list[WrongThreadError]) -> None:
        """A Tornado client used from a thread other than its loop's."""
        opened: queue.Queue[Feed] = queue.Queue()

        async def run(port: int) -> BaseException | None:
            client = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    None, in_a_thread, lambda: client.write_message("x")
                )
            finally:
                await close_client(client)

        from helpers import ServerThread, make_app

        srv = ServerThread(make_app([("/ws", Feed, {"opened": opened, "events": Recorder()})]))
        srv.start()
        try:
            error = asyncio.run(run(srv.port))
        finally:
            srv.stop()
        assert isinstance(error, WrongThreadError)
        assert str(error).startswith("WebSocketClientConnection.write_message() called from")
        assert thread_violations == [error]


def sent(future: object) -> None:
    assert isinstance(future, concurrent.futures.Future)  # off the loop
    future.result(TIMEOUT)


class TestSafePattern:
    def test_mixin_sends_from_threads_raise_nothing(
        self, server: ServerFactory, thread_violations: list[WrongThreadError]
    ) -> None:
        opened: queue.Queue[Feed] = queue.Queue()
        srv = server([("/ws", Feed, {"opened": opened, "events": Recorder()})])
        with connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            (feed,) = take(opened)
            for _ in range(RUNS):
                assert in_a_thread(lambda: sent(feed.write_message("safe"))) is None
                assert in_a_thread(lambda: feed.ping(b"safe")) is None
            assert [client.recv(timeout=TIMEOUT) for _ in range(RUNS)] == ["safe"] * RUNS
            assert in_a_thread(lambda: feed.close(1000, "bye")) is None
        assert thread_violations == []
