"""A live feed: a background thread broadcasts to every WebSocket client, some of them slow.

Run ``python examples/websocket_feed.py``: it serves ``ws://127.0.0.1:PORT/feed``, starts
a few demo clients of its own (``--fast`` that read everything, ``--slow`` that stop
reading after the handshake), broadcasts a tick from a plain thread every few
milliseconds for ``--seconds``, then prints what each client got and stops. With
``--serve`` it also prints the URL and keeps serving until Ctrl-C, for clients of your own.

The feed is "latest value only": ``slow_client = "drop"``, so a client that falls
``max_buffer_bytes`` behind misses ticks (counted in ``dropped_messages``) while the others
get every one, and the server holds at most ``max_buffer_bytes`` per client. The thread
that broadcasts never touches Tornado: `broadcast` hands each message to the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import threading
import time

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, websocket_connect

from tornado_safestream import SafeWebSocketMixin, broadcast


class Clients:
    """The open connections; the loop adds and removes, the ticker thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._feeds: set[Feed] = set()  # guarded by _lock

    def add(self, feed: Feed) -> None:
        with self._lock:
            self._feeds.add(feed)

    def remove(self, feed: Feed) -> None:
        with self._lock:
            self._feeds.discard(feed)

    def snapshot(self) -> list[Feed]:
        with self._lock:
            return list(self._feeds)


class Feed(SafeWebSocketMixin, WebSocketHandler):
    max_buffer_bytes = 64 * 1024
    slow_client = "drop"

    def initialize(self, clients: Clients) -> None:
        self.clients = clients

    def open(self) -> None:
        self.clients.add(self)

    def on_close(self) -> None:
        self.clients.remove(self)


def ticker(clients: Clients, stop: threading.Event, interval: float) -> None:
    """A plain thread, as a message-queue consumer or a sensor loop would be."""
    tick = 0
    while not stop.wait(interval):
        tick += 1
        payload = {"tick": tick, "time": time.time(), "pad": "x" * 4000}
        broadcast(clients.snapshot(), payload)


def stalled_client(port: int) -> socket.socket:
    """A client that completes the handshake, then never reads (a frozen browser tab)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /feed HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


async def count_messages(connection: WebSocketClientConnection, until: float) -> int:
    received = 0
    while (left := until - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(connection.read_message(), left)
        except asyncio.TimeoutError:
            break
        if message is None:
            break
        received += 1
    return received


async def run(args: argparse.Namespace) -> None:
    clients = Clients()
    sockets = bind_sockets(args.port, "127.0.0.1")
    server = HTTPServer(Application([(r"/feed", Feed, {"clients": clients})]))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(f"serving ws://127.0.0.1:{port}/feed", flush=True)

    slow = [stalled_client(port) for _ in range(args.slow)]
    fast = [await websocket_connect(f"ws://127.0.0.1:{port}/feed") for _ in range(args.fast)]
    for _ in range(500):  # until every demo client is open (bounded)
        if len(clients.snapshot()) >= args.slow + args.fast:
            break
        await asyncio.sleep(0.01)

    stop = threading.Event()
    thread = threading.Thread(target=ticker, args=(clients, stop, args.interval), name="ticker")
    thread.start()
    try:
        until = time.monotonic() + args.seconds
        counts = await asyncio.gather(*(count_messages(c, until) for c in fast))
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        print(f"{args.seconds:g} s of ticks every {args.interval * 1000:g} ms:")
        for n, received in enumerate(counts):
            print(f"  fast client {n}: {received} ticks received")
        for feed in clients.snapshot():
            if feed.dropped_messages:
                print(
                    f"  slow client: {feed.dropped_messages} ticks dropped, "
                    f"{feed.buffered_bytes} bytes queued (max {feed.max_buffer_bytes})"
                )
        if args.serve:
            thread = threading.Thread(target=ticker, args=(clients, stop, args.interval))
            stop.clear()
            thread.start()
            await asyncio.Event().wait()  # until Ctrl-C
    finally:
        stop.set()
        for connection in fast:
            connection.close()
        for sock in slow:
            sock.close()
        server.stop()
        for feed in clients.snapshot():  # detached from the server: close them ourselves
            feed.close(1001, "server shutting down")


def main() -> None:
    parser = argparse.ArgumentParser(description="Broadcast from a thread to WebSocket clients.")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    parser.add_argument("--fast", type=int, default=4, help="demo clients that read everything")
    parser.add_argument("--slow", type=int, default=2, help="demo clients that never read")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between ticks")
    parser.add_argument("--serve", action="store_true", help="then keep serving until Ctrl-C")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
