"""Upload clients and handlers for the request-body tests (real sockets, 127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from helpers import TIMEOUT, Head, RawConnection, Recorder, Response
from tornado.web import RequestHandler, stream_request_body

from tornado_safestream import SafeStreamMixin, receive_on_executor, stream_on_executor

#: The read chunk of Tornado's HTTP1Connection (``chunk_size``, 64 KiB by default).
TORNADO_CHUNK = 64 * 1024


def blocks(size: int, seed: int = 0, block: int = 1 << 20) -> Iterator[bytes]:
    """``size`` deterministic bytes, a block at a time, without holding them all."""
    base = hashlib.sha256(str(seed).encode()).digest()
    counter = 0
    left = size
    while left > 0:
        # Cheap incompressible-looking blocks: a digest stretched, tagged by its counter.
        unit = hashlib.sha256(base + counter.to_bytes(8, "big")).digest()
        data = (unit * (block // len(unit) + 1))[: min(block, left)]
        counter += 1
        left -= len(data)
        yield data


def digest(parts: Iterable[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for part in parts:
        h.update(part)
        n += len(part)
    return h.hexdigest(), n


class Upload:
    """
    One upload on its own connection: the body is sent from a thread while the test thread
    reads the response (so a server that answers early is seen, as a client would see it).
    """

    def __init__(
        self,
        port: int,
        path: str,
        body: Iterable[bytes],
        *,
        length: int | None = None,
        method: str = "PUT",
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> None:
        self.conn = RawConnection(port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            assert length is not None
            lines.append(f"Content-Length: {length}")
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        self._body = body
        self._chunked = chunked
        self.sent = 0
        self.send_error: BaseException | None = None
        self.done_sending = threading.Event()
        self._thread = threading.Thread(target=self._send, name="upload-sender", daemon=True)

    def start(self) -> Upload:
        self._thread.start()
        return self

    def _send(self) -> None:
        sock = self.conn.sock
        try:
            sock.sendall(self._head)
            for data in self._body:
                if self._chunked:
                    if not data:
                        continue
                    sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
                else:
                    sock.sendall(data)
                self.sent += len(data)
            if self._chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError as error:  # the server answered early and closed: as a client sees it
            self.send_error = error
        finally:
            self.done_sending.set()

    def response(self) -> Response:
        head = self.conn.read_head()
        response = self.conn.body_reader(head, "PUT").response()
        self.join()
        return response

    def head(self) -> Head:
        return self.conn.read_head()

    def join(self) -> None:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the sender thread never finished"

    def close(self, *, reset: bool = False) -> None:
        self.conn.close(reset=reset)
        self._thread.join(TIMEOUT)

    def __enter__(self) -> Upload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def upload(
    port: int, path: str, size: int, *, seed: int = 0, chunked: bool = False, block: int = 1 << 20
) -> tuple[Response, str]:
    """Upload ``size`` bytes; return the response and the SHA-256 of what was sent."""
    sent, _ = digest(blocks(size, seed, block))
    with Upload(port, path, blocks(size, seed, block), length=size, chunked=chunked) as up:
        return up.response(), sent


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@stream_request_body
class StoreHandler(SafeStreamMixin, RequestHandler):
    """
    Stores the body in ``directory``: a ``.part`` file opened by the first data_received
    call and renamed by the verb method; on_receive_aborted deletes it.

    ``initialize`` knobs: ``fail_at`` (raise ``error`` at that call, counted from 1),
    ``gate`` (each call waits for it), ``sleep`` (seconds per call), ``recorder``.
    """

    executor: Executor | None

    def initialize(
        self,
        directory: str,
        recorder: Recorder,
        executor: Executor | None = None,
        fail_at: int | None = None,
        error: BaseException | None = None,
        gate: threading.Event | None = None,
        sleep: float = 0.0,
    ) -> None:
        self.executor = executor
        self.directory = directory
        self.recorder = recorder
        self.fail_at = fail_at
        self.error = error
        self.gate = gate
        self.sleep = sleep
        self.file: Any = None
        self.partial = os.path.join(directory, f"{uuid.uuid4().hex}.part")
        self.hash = hashlib.sha256()
        self.size = 0
        self.calls = 0
        recorder.add("handler")

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.recorder.add("gone", self._safestream_inbound is not None)

    @receive_on_executor(max_buffer_bytes=256 * 1024)
    def data_received(self, chunk: bytes) -> None:
        self.calls += 1
        self.recorder.add("call", (self.calls, len(chunk), threading.current_thread().name))
        if self.gate is not None and not self.gate.wait(TIMEOUT):
            raise AssertionError("gate never opened")
        if self.sleep:
            threading.Event().wait(self.sleep)  # a slow disk
        if self.fail_at is not None and self.calls == self.fail_at:
            assert self.error is not None
            raise self.error
        if self.file is None:
            self.file = open(self.partial, "wb")  # noqa: SIM115 (closed in put / the hook)
            self.recorder.add("opened", self.partial)
        self.file.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)

    def on_receive_aborted(self, error: BaseException) -> None:
        if self.file is not None:
            self.file.close()
            os.unlink(self.partial)
        self.recorder.add(
            "aborted", (type(error).__name__, threading.current_thread().name, self.partial)
        )

    @stream_on_executor
    def put(self, name: str = "") -> None:
        self.recorder.add("verb", self.calls)
        inbound = self._safestream_inbound
        if inbound is not None:
            self.recorder.add("peak", inbound.stats()[0])
        if self.file is None:  # an empty body: no data_received call
            self.file = open(self.partial, "wb")  # noqa: SIM115
        self.file.close()
        final = os.path.join(self.directory, f"{uuid.uuid4().hex}.bin")
        os.replace(self.partial, final)
        self.write({"sha256": self.hash.hexdigest(), "size": self.size, "path": final})

    post = put


def leftover_parts(directory: str) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".part")]


def connect_and_leave(port: int, path: str, declared: int, send: int, reset: bool) -> None:
    """Send the head and ``send`` bytes of a ``declared``-byte body, then leave."""
    sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    try:
        sock.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
        )
        for data in blocks(send, seed=send, block=64 * 1024):
            sock.sendall(data)
    finally:
        if reset:
            import struct

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class Events(Recorder):
    """A `Recorder` that can also wait for a condition on everything recorded."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def add(self, name: str, value: object = None) -> None:
        super().add(name, value)
        with self._changed:
            self._changed.notify_all()

    def wait_until(self, predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self!r}")
