"""@receive_on_executor on on_message: WebSocket messages handled in the executor, end to end.

Real servers on 127.0.0.1 and real clients (the ``websockets`` package, and Tornado's own
where a test needs it). The suite runs in assertion mode: a worker's ``write_message`` goes
through the mixin, never to Tornado from the wrong thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import socket
import sys
import threading
import time
from typing import Any

import pytest
import tornado
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    ServerFactory,
    ServerThread,
    record_text,
)
from tornado.web import RequestHandler, stream_request_body
from tornado.websocket import WebSocketHandler
from upload_helpers import Events
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from wsclients import Sender

from tornado_safestream import (
    SafeStreamMixin,
    SafeWebSocketMixin,
    WrongThreadError,
    receive_on_executor,
)
from tornado_safestream._core._inbound import Inbound

#: A small socket buffer on both sides, so that a server that stops reading is felt at once.
SMALL_BUFFER = 4096


def numbered(i: int, size: int = 16) -> str:
    return f"{i:08d}".ljust(size, "x")


def number(message: str | bytes) -> int:
    return int(message[:8])


class Worker(SafeWebSocketMixin, WebSocketHandler):
    """
    Hands itself to the test when open; `handle` runs each message (in the executor, when
    a subclass decorates ``on_message`` with `receive_on_executor`) and records it.
    """

    def initialize(
        self,
        opened: queue.Queue[Worker],
        events: Events,
        executor: concurrent.futures.Executor,
        gate: threading.Event | None = None,
        delay: float = 0.0,
        fail_at: int | None = None,
        reply: bool = True,
        wrong_thread_at: int | None = None,
    ) -> None:
        self.opened = opened
        self.events = events
        self.executor = executor
        self.gate = gate
        self.delay = delay
        self.fail_at = fail_at
        self.reply = reply
        self.wrong_thread_at = wrong_thread_at
        self.lock = threading.Lock()
        # --- guarded by lock (the worker and the loop read them) ---
        self.active = 0  # calls in progress
        self.overlapped = False  # two calls ran at once

    def open(self, *args: str, **kwargs: str) -> None:
        self.events.add("loop", threading.get_ident())
        self.opened.put(self)

    def handle(self, message: str | bytes) -> None:
        with self.lock:
            self.active += 1
            self.overlapped |= self.active > 1
        try:
            n = number(message)
            self.events.add("call", (n, threading.get_ident()))
            if self.gate is not None and not self.gate.wait(TIMEOUT):
                raise AssertionError("the gate never opened")
            if self.delay:
                time.sleep(self.delay)  # a slow handler (the test is about it)
            if n == self.fail_at:
                raise ValueError(f"boom at {n}")
            if n == self.wrong_thread_at:
                assert self.ws_connection is not None
                self.ws_connection.write_message("from the worker, to Tornado's protocol")
            if self.reply:
                self.write_message(f"done {n}")  # from the worker: through the mixin
            self.events.add("returned", n)
        finally:
            with self.lock:
                self.active -= 1

    def on_pong(self, data: bytes) -> None:
        with self.lock:
            busy = self.active > 0
        self.events.add("pong", busy)

    def on_close(self) -> None:
        self.events.add("on_close", (self.close_code, self.close_reason))


def worker_class(**options: Any) -> type[Worker]:
    """A `Worker` whose ``on_message`` is a `receive_on_executor` method with ``options``."""

    class Receiving(Worker):
        @receive_on_executor(**options)
        def on_message(self, message: str | bytes) -> None:
            self.handle(message)

    return Receiving


def start(
    server: ServerFactory,
    handler: type[Worker],
    executor: concurrent.futures.Executor,
    *,
    rcvbuf: int | None = None,
    settings: dict[str, Any] | None = None,
    **kwargs: object,
) -> tuple[ServerThread, queue.Queue[Worker], Events]:
    opened: queue.Queue[Worker] = queue.Queue()
    events = Events()
    args = {"opened": opened, "events": events, "executor": executor, **kwargs}
    srv = server([("/ws", handler, args)], rcvbuf=rcvbuf, **(settings or {}))
    return srv, opened, events


def ping_settings(interval: float = 0.2) -> dict[str, Any]:
    """Pings every ``interval`` seconds, and a connection closed once pongs stop coming."""
    # Tornado 6.6 caps the timeout at the interval (and checks for a pong that long after
    # each ping); 6.3 closes once no pong came for the timeout, checked at each ping.
    timeout = interval if tornado.version_info >= (6, 6) else 3 * interval
    return {"websocket_ping_interval": interval, "websocket_ping_timeout": timeout}


def calls(events: Events) -> list[int]:
    return [value[0] for value in events.values("call")]  # type: ignore[index]


def recv_all(client: ClientConnection, count: int) -> list[str]:
    replies = []
    for _ in range(count):
        reply = client.recv(timeout=TIMEOUT)
        assert isinstance(reply, str)
        replies.append(reply)
    return replies


def small_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


class TestOrder:
    def test_ten_thousand_messages_in_order_each_once(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        srv, opened, events = start(server, worker_class(), executor)
        count = 10_000
        with connect(f"ws://127.0.0.1:{srv.port}/ws", max_queue=None) as client:
            worker = opened.get(timeout=TIMEOUT)
            sender = Sender("client", lambda i: client.send(numbered(i)), count).start()
            replies = recv_all(client, count)
            sender.join()
            assert sender.error is None
        # Each message handled once, in order, and each reply (write_message from the
        # worker) arrived in that order.
        assert calls(events) == list(range(count))
        assert replies == [f"done {i}" for i in range(count)]
        loop_thread = events.values("loop")[0]
        threads = {value[1] for value in events.values("call")}  # type: ignore[index]
        assert loop_thread not in threads  # in the executor, never on the loop
        with worker.lock:
            assert not worker.overlapped  # one call at a time

    def test_binary_and_text(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        srv, _, events = start(server, worker_class(), executor)
        with connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            client.send(numbered(0).encode())
            client.send(numbered(1) + "é")
            assert recv_all(client, 2) == ["done 0", "done 1"]
        assert calls(events) == [0, 1]


class TestPings:
    def test_slow_handler_keeps_answering_pings(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        srv, _, events = start(
            server, worker_class(), executor, delay=1.0, settings=ping_settings()
        )
        with connect(f"ws://127.0.0.1:{srv.port}/ws", ping_interval=None) as client:
            client.send(numbered(0))
            client.send(numbered(1))
            assert recv_all(client, 2) == ["done 0", "done 1"]
            # The connection stayed open through 2 s of work: a round trip still works.
            assert client.ping().wait(TIMEOUT)
        pongs = events.values("pong")
        # Pongs kept arriving (and were read) while a call was running.
        assert sum(1 for busy in pongs if busy) >= 2, pongs
        assert events.wait_for("on_close")[0] == 1000  # type: ignore[index]  # no timeout

    def test_the_same_without_the_decorator_misses_them(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        """The problem the decorator solves: awaiting the work stops Tornado's reading."""

        class Awaiting(Worker):
            async def on_message(self, message: str | bytes) -> None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self.executor, self.handle, message)

        # Closed for a missed pong after 0.2 s (6.6) or 0.4 s (6.3): long before 1 s.
        srv, _, events = start(
            server, Awaiting, executor, delay=1.0, reply=False, settings=ping_settings(0.1)
        )
        with connect(f"ws://127.0.0.1:{srv.port}/ws", ping_interval=None) as client:
            client.send(numbered(0))
            with pytest.raises(ConnectionClosed):
                for _ in range(10):
                    client.recv(timeout=TIMEOUT)
        events.wait_for("on_close")
        assert not [busy for busy in events.values("pong") if busy]


class TestBackpressure:
    def test_flood_stops_the_reading_and_resumes_it(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        budget_messages, budget_bytes = 16, 64 * 1024
        handler = worker_class(max_queued_messages=budget_messages, max_buffer_bytes=budget_bytes)
        gate = threading.Event()
        srv, opened, events = start(server, handler, executor, rcvbuf=SMALL_BUFFER, gate=gate)
        count, size = 2000, 1024
        uri = f"ws://127.0.0.1:{srv.port}/ws"
        with connect(
            uri, sock=small_socket(srv.port), ping_interval=None, max_queue=None
        ) as client:
            worker = opened.get(timeout=TIMEOUT)
            sender = Sender("flood", lambda i: client.send(numbered(i, size)), count).start()
            # The worker is stuck in its first call: Tornado stops reading once the queue is
            # full, so the client cannot send everything (its send blocks on TCP).
            assert sender.stable_count() < count
            inbound = srv.run_on_loop(lambda: worker._safestream_inbound)
            assert isinstance(inbound, Inbound)
            peak_bytes, _, _, peak_messages = inbound.stats()
            assert peak_messages == budget_messages  # the queue filled to its budget, no more
            assert peak_bytes <= budget_bytes
            assert calls(events) == [0]
            gate.set()  # the reading resumes: every message arrives, and is handled in order
            assert recv_all(client, count) == [f"done {i}" for i in range(count)]
            sender.join()
            assert sender.error is None
        assert calls(events) == list(range(count))
        _, _, returned, peak_messages = inbound.stats()
        assert peak_messages == budget_messages
        assert returned == count

    def test_byte_budget_alone(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        budget_bytes, size = 16 * 1024, 1024
        handler = worker_class(max_buffer_bytes=budget_bytes)
        gate = threading.Event()
        srv, opened, events = start(server, handler, executor, rcvbuf=SMALL_BUFFER, gate=gate)
        count = 1000
        uri = f"ws://127.0.0.1:{srv.port}/ws"
        with connect(
            uri, sock=small_socket(srv.port), ping_interval=None, max_queue=None
        ) as client:
            worker = opened.get(timeout=TIMEOUT)
            sender = Sender("flood", lambda i: client.send(numbered(i, size)), count).start()
            assert sender.stable_count() < count
            inbound = srv.run_on_loop(lambda: worker._safestream_inbound)
            assert isinstance(inbound, Inbound)
            peak_bytes, _, _, peak_messages = inbound.stats()
            # Within the budget plus the message that went over it.
            assert budget_bytes < peak_bytes <= budget_bytes + sys.getsizeof(numbered(0, size))
            assert peak_messages < 256
            gate.set()
            assert recv_all(client, count) == [f"done {i}" for i in range(count)]
            sender.join()
        assert calls(events) == list(range(count))


class TestErrorsAndClose:
    def test_exception_closes_with_1011_and_logs_once(
        self, server: ServerFactory, executor: concurrent.futures.Executor, logs: LogRecorder
    ) -> None:
        gate = threading.Event()
        srv, _, events = start(server, worker_class(), executor, fail_at=2, gate=gate)
        with connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            for i in range(6):
                client.send(numbered(i))
            events.wait_until(lambda e: len(calls(e)) == 1, "the first call")
            gate.set()
            assert recv_all(client, 2) == ["done 0", "done 1"]
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert events.wait_for("on_close")[0] == 1011  # type: ignore[index]
        errors = logs.errors()
        assert len(errors) == 1, errors
        assert "boom at 2" in record_text(errors[0])
        assert calls(events) == [0, 1, 2]  # the messages queued behind it were dropped

    def test_client_leaves_queued_messages_dropped(
        self, server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
    ) -> None:
        pool = make_executor(1)
        gate = threading.Event()
        srv, _, events = start(server, worker_class(), pool, gate=gate)
        with connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            for i in range(5):
                client.send(numbered(i))
            events.wait_until(lambda e: len(calls(e)) == 1, "the first call")
        events.wait_for("on_close")
        gate.set()  # the call in progress runs to its end; its reply finds the socket closed
        # One thread: this runs once the drain task ended.
        assert pool.submit(lambda: "free").result(TIMEOUT) == "free"
        assert calls(events) == [0]
        assert not logs.errors()

    def test_wrong_thread_call_is_flagged_and_closes(
        self,
        server: ServerFactory,
        executor: concurrent.futures.Executor,
        thread_violations: list[WrongThreadError],
    ) -> None:
        srv, _, _ = start(server, worker_class(), executor, wrong_thread_at=1)
        with LogRecorder(), connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            client.send(numbered(0))
            client.send(numbered(1))
            assert client.recv(timeout=TIMEOUT) == "done 0"
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert thread_violations
        assert thread_violations[0].method == "WebSocketProtocol13.write_message()"


class TestMisuse:
    def test_async_def(self) -> None:
        with pytest.raises(TypeError, match=r"is async, so it runs on the IOLoop"):

            class H(SafeWebSocketMixin, WebSocketHandler):
                @receive_on_executor  # type: ignore[arg-type]
                async def on_message(self, message: str | bytes) -> None: ...

    def test_on_a_request_handler(self) -> None:
        with pytest.raises(TypeError, match=r"on_message\(\) needs the SafeWebSocketMixin"):

            class H(SafeStreamMixin, RequestHandler):
                @receive_on_executor
                def on_message(self, message: str | bytes) -> None: ...

    def test_message_budget_is_for_on_message_only(self) -> None:
        with pytest.raises(TypeError, match=r"max_queued_messages bounds the WebSocket"):

            @stream_request_body
            class H(SafeStreamMixin, RequestHandler):
                @receive_on_executor(max_queued_messages=4)
                def data_received(self, chunk: bytes) -> None: ...

    def test_options(self) -> None:
        with pytest.raises(ValueError, match=r"max_queued_messages=...\) must be positive"):
            receive_on_executor(max_queued_messages=0)
        with pytest.raises(TypeError, match=r"max_queued_messages=...\) takes an int"):
            receive_on_executor(max_queued_messages=2.5)  # type: ignore[call-overload]

    def test_without_the_mixin(
        self, server: ServerFactory, executor: concurrent.futures.Executor
    ) -> None:
        def make() -> type[WebSocketHandler]:
            class Plain(WebSocketHandler):
                @receive_on_executor  # type: ignore[type-var]
                def on_message(self, message: str | bytes) -> None: ...

            return Plain

        if sys.version_info >= (3, 12):
            with pytest.raises(TypeError, match=r"needs the SafeWebSocketMixin: declare class"):
                make()
            return
        srv = server([("/ws", make(), {})])
        with LogRecorder() as logs, connect(f"ws://127.0.0.1:{srv.port}/ws") as client:
            client.send("x")
            with pytest.raises(ConnectionClosed):
                client.recv(timeout=TIMEOUT)
            record = logs.wait_for_record(
                lambda r: "needs the SafeWebSocketMixin" in record_text(r)
            )
        assert record.levelno >= logging.ERROR
