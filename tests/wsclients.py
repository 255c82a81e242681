"""WebSocket test helpers: handlers that hand themselves to the test, and a raw client.

`RawWebSocket` is a blocking client on a plain socket, for the cases the real clients
cannot play: a client that stops reading (with a small receive buffer) and resumes later.
Every wait has a timeout; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import socket
import struct
import threading
import time
from typing import Any

from helpers import TIMEOUT, Recorder
from tornado.websocket import WebSocketClientConnection, WebSocketHandler

from tornado_safestream import SafeWebSocketMixin

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Feed(SafeWebSocketMixin, WebSocketHandler):
    """Hands itself to the test when open; records on_close and what it receives."""

    def initialize(self, opened: queue.Queue[Feed], events: Recorder) -> None:
        self.opened = opened
        self.events = events

    def open(self, *args: str, **kwargs: str) -> None:
        self.opened.put(self)

    def on_message(self, message: str | bytes) -> None:
        self.events.add("message", message)

    def on_close(self) -> None:
        self.events.add("on_close", (self.close_code, self.close_reason))


class DeflateFeed(Feed):
    """A `Feed` that agrees to per-message deflate when the client offers it."""

    def get_compression_options(self) -> dict[str, Any] | None:
        return {}


def feed_class(name: str, **attributes: Any) -> type[Feed]:
    """A `Feed` with other class attributes (``slow_client``, ``max_buffer_bytes``, ...)."""
    return type(name, (Feed,), attributes)


def take(opened: queue.Queue[Feed], count: int = 1) -> list[Feed]:
    """The next ``count`` handlers that opened (a queue: safe to hand between threads)."""
    return [opened.get(timeout=TIMEOUT) for _ in range(count)]


class RawWebSocket:
    """A blocking WebSocket client on one socket; ``rcvbuf`` set before connecting."""

    def __init__(
        self, port: int, path: str, *, rcvbuf: int | None = None, timeout: float = TIMEOUT
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        for _ in range(1000):
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill()
        else:
            raise AssertionError("no end of the handshake's head")
        head = bytes(self._buf[:end])
        del self._buf[: end + 4]
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"handshake refused: {head!r}")

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self._buf += data

    def _exactly(self, n: int) -> bytes:
        for _ in range(n // 1024 + 1000):
            if len(self._buf) >= n:
                break
            self._fill()
        else:
            raise AssertionError(f"could not read {n} bytes")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """``(opcode, payload)`` of the next frame (the server sends whole messages)."""
        first, second = self._exactly(2)
        if second & 0x80:
            raise AssertionError("a server's frame is masked")
        if not first & 0x80:
            raise AssertionError("a fragmented frame")
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._exactly(8))
        return first & 0x0F, self._exactly(size)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        else:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        self.sock.sendall(head + mask + masked)

    def close(self, *, reset: bool = False) -> None:
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class Sender:
    """A thread that calls ``send(i)`` for i in range(count); records its outcome."""

    def __init__(self, name: str, send: Any, count: int) -> None:
        self.sent = 0
        self.error: BaseException | None = None
        self.futures: list[Any] = []
        self._send = send
        self._count = count
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            for i in range(self._count):
                future = self._send(i)
                with self._cond:
                    self.futures.append(future)
                    self.sent += 1
                    self._cond.notify_all()
        except BaseException as error:
            self.error = error
        finally:
            with self._cond:
                self._cond.notify_all()

    def start(self) -> Sender:
        self.thread.start()
        return self

    def join(self, timeout: float = TIMEOUT) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"{self.thread.name} still sending after {timeout} s")

    def stable_count(self, quiet: float = 0.3, timeout: float = TIMEOUT) -> int:
        """
        The number of sends once the sender stops advancing (blocked, or done): the one
        settle of these tests, as `helpers.Progress.wait_stable` (no event exists for
        "blocked inside the library"); bounded by ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while time.monotonic() < deadline:
                before = self.sent
                if not self.thread.is_alive():
                    return before
                self._cond.wait(quiet)  # back early on progress
                if self.sent == before:
                    return before
        raise AssertionError(f"{self.thread.name} never stopped advancing in {timeout} s")


async def close_client(connection: WebSocketClientConnection) -> None:
    """Close a Tornado client and wait until its connection is closed (bounded)."""
    connection.close()
    for _ in range(1_000_000):
        if await asyncio.wait_for(connection.read_message(), TIMEOUT) is None:
            return
    raise AssertionError("the client kept receiving after close()")
