"""
HTTP/1.1 benchmark clients on raw sockets, for ``benchmarks/run.py``; 127.0.0.1 only.

Each command is run as a process of its own (so that its GIL is not the runner's, nor the
other clients') and prints JSON on its last line of output:

``fetch``
    ``--downloads`` GETs over ``--threads`` threads, each body read with ``recv_into`` and
    hashed as it arrives (SHA-256, ``hashlib`` releases the GIL), kept in memory and hashed
    at the end (``--hash-after``), or only counted; every body is checked against
    ``--expect-size`` and ``--expect-sha256``.
``slow``
    ``--clients`` threads, each reading one response at ``--rate`` bytes per second for
    ``--duration`` seconds, then hanging up.
``probe``
    Fresh-connection GETs of small URLs, at ``--interval`` for ``--duration`` seconds or
    ``--count`` times each, with their latencies.
``stall``
    ``--streams`` GETs whose clients read the response headers and then stop reading; the
    sockets stay open until a line (or EOF) on standard input, or ``--hold`` seconds. The
    line ``read`` has every stream read to its end first, each body checked against
    ``--expect-size`` and ``--expect-sha256``.
``ws``
    A WebSocket client on a raw socket (``/ws`` of the ``ws-*`` server variants). ``--mode
    flood``: asks for ``--messages`` binary messages of ``--size`` bytes and reads them as
    fast as it can, timed from the request to the last byte, hashing the frames as they
    arrive; afterwards (not timed) the SHA-256 is compared with that of the frames expected,
    so every message arrived once, in order, byte for byte. ``--mode stall``: asks for
    messages without end and never reads them (a small receive buffer); prints ``STALLED``
    and keeps the connection until a line on standard input (or ``--hold`` seconds).

With ``--wait-go``, a command prints ``READY`` once set up and starts at the next line on its
standard input (within 60 seconds), so that several client processes start together.
Every wait is bounded: connections by ``--idle-timeout``, a command by ``--timeout``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import resource
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable

HOST = "127.0.0.1"
RECV_SIZE = 256 * 1024
GO_TIMEOUT = 60.0

Sink = Callable[[memoryview], None]


class HttpError(Exception):
    """The response was not what an HTTP/1.1 client accepts."""


class Deadline(Exception):
    """The command's deadline passed."""


class Body:
    """A body kept in memory (one copy, into a buffer of the expected size), hashed later."""

    def __init__(self, expected: int | None) -> None:
        self.data = bytearray(expected or 0)
        self.size = 0

    def add(self, piece: memoryview) -> None:
        end = self.size + len(piece)
        if end <= len(self.data):
            self.data[self.size : end] = piece
        else:  # longer than expected
            del self.data[self.size :]
            self.data += piece
        self.size = end

    def room(self, limit: int) -> memoryview | None:
        """A view of the next *limit* free bytes (at most), None if the buffer is full."""
        free = len(self.data) - self.size
        if free <= 0:
            return None
        return memoryview(self.data)[self.size : self.size + min(limit, free)]

    def sha256(self) -> str:
        with memoryview(self.data) as view:
            return hashlib.sha256(view[: self.size]).hexdigest()


class Connection:
    """One HTTP/1.1 exchange on a blocking socket: ``Connection: close``, GET only."""

    def __init__(self, port: int, deadline: float, idle_timeout: float, rcvbuf: int = 0) -> None:
        self.deadline = deadline
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # before connect(), so that the TCP window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(max(min(idle_timeout, deadline - time.monotonic()), 0.001))
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._pending = bytearray()  # received, not consumed yet (headers, chunk framing)
        self.received = 0  # bytes received on the socket, head included
        self.sock.connect((HOST, port))

    def close(self) -> None:
        self._view.release()
        self.sock.close()

    def send_get(self, path: str) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode("ascii"))

    @property
    def buffered(self) -> int:
        """Bytes received but not consumed yet."""
        return len(self._pending)

    def recv(self, limit: int = RECV_SIZE) -> memoryview:
        """One ``recv`` of at most *limit* bytes, valid until the next call."""
        if time.monotonic() > self.deadline:
            raise Deadline("deadline passed")
        n = self.sock.recv_into(self._view, min(limit, RECV_SIZE))
        if n == 0:
            raise EOFError("connection closed by the server")
        self.received += n
        return self._view[:n]

    def recv_body(self, body: Body, limit: int) -> int:
        """One ``recv_into`` straight into *body* (no copy), of at most *limit* bytes."""
        room = body.room(min(limit, RECV_SIZE))
        if room is None:
            data = self.recv(limit)
            body.add(data)
            return len(data)
        if time.monotonic() > self.deadline:
            raise Deadline("deadline passed")
        with room:
            n = self.sock.recv_into(room)
        if n == 0:
            raise EOFError("connection closed by the server")
        self.received += n
        body.size += n
        return n

    def _readline(self, limit: int = 64 * 1024) -> bytes:
        while True:
            end = self._pending.find(b"\r\n")
            if end >= 0:
                line = bytes(self._pending[:end])
                del self._pending[: end + 2]
                return line
            if len(self._pending) > limit:
                raise HttpError("line too long")
            self._pending += self.recv()

    def read_head(self) -> tuple[int, dict[str, str]]:
        """The status code and the headers (lower-case names)."""
        status_line = self._readline().decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"bad status line {status_line!r}")
        headers: dict[str, str] = {}
        while True:
            line = self._readline()
            if not line:
                return int(parts[1]), headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    def _read_exact(self, n: int, sink: Sink | None, body: Body | None) -> None:
        if self._pending:
            take = min(n, len(self._pending))
            with memoryview(self._pending) as pending:
                if body is not None:
                    body.add(pending[:take])
                elif sink is not None:
                    sink(pending[:take])
            del self._pending[:take]
            n -= take
        while n > 0:
            if body is not None:
                n -= self.recv_body(body, n)
                continue
            data = self.recv(n)
            if sink is not None:
                sink(data)
            n -= len(data)

    def read_body(
        self, headers: dict[str, str], sink: Sink | None, body: Body | None = None
    ) -> None:
        """Read the body (Content-Length, chunked or to the close) into *sink* or *body*."""
        if body is not None:
            sink = body.add
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._readline().split(b";", 1)[0], 16)
                if size == 0:
                    while self._readline():  # trailers, then the empty line
                        pass
                    return
                self._read_exact(size, sink, body)
                if self._readline():
                    raise HttpError("chunk not followed by CRLF")
        elif "content-length" in headers:
            self._read_exact(int(headers["content-length"]), sink, body)
        else:
            if self._pending and sink is not None:
                with memoryview(self._pending) as pending:
                    sink(pending)
            self._pending.clear()
            while True:
                try:
                    data = self.recv()
                except EOFError:
                    return
                if sink is not None:
                    sink(data)


@dataclass
class Download:
    #: "ok"; "wrong" (complete response, SHA-256 differs), "short" (complete response, wrong
    #: size), "cut off" (connection closed mid-body), "status NNN", "error" or "timeout"
    status: str = "error"
    detail: str = ""
    nbytes: int = 0
    start: float = 0.0
    first_byte: float = 0.0
    end: float = 0.0


def download(
    port: int,
    path: str,
    expect_size: int | None,
    expect_sha256: str | None,
    deadline: float,
    idle_timeout: float,
    body: Body | None = None,
) -> Download:
    """
    GET *path* and check the body's size and SHA-256 (if expected), hashing as it arrives;
    or keep it in *body*, for `check_body` to hash later (the status is then at most "ok").
    """
    result = Download(start=time.monotonic())
    digest = hashlib.sha256() if expect_sha256 and body is None else None

    def sink(data: memoryview) -> None:
        result.nbytes += len(data)
        if digest is not None:
            digest.update(data)

    conn: Connection | None = None
    try:
        conn = Connection(port, deadline, idle_timeout)
        conn.send_get(path)
        code, headers = conn.read_head()
        result.first_byte = time.monotonic()
        if code != 200:
            raise HttpError(f"status {code}")
        try:
            conn.read_body(headers, sink, body)
        finally:
            if body is not None:
                result.nbytes = body.size
    except (Deadline, socket.timeout, TimeoutError):
        result.status, result.detail = "timeout", f"after {result.nbytes} body bytes"
    except EOFError:
        result.status, result.detail = "cut off", f"closed after {result.nbytes} body bytes"
    except (OSError, HttpError, ValueError) as e:
        result.status, result.detail = "error", f"{type(e).__name__}: {e}"
    else:
        if expect_size is not None and result.nbytes != expect_size:
            result.status, result.detail = "short", f"complete response of {result.nbytes} bytes"
        elif digest is not None and digest.hexdigest() != expect_sha256:
            result.status, result.detail = "wrong", "SHA-256 differs"
        else:
            result.status = "ok"
    finally:
        if conn is not None:
            conn.close()
    result.end = time.monotonic()
    return result


def check_body(result: Download, body: Body, expect_sha256: str) -> None:
    """Hash a body kept by `download`: an "ok" download whose SHA-256 differs is "wrong"."""
    if result.status == "ok" and body.sha256() != expect_sha256:
        result.status, result.detail = "wrong", "SHA-256 differs"


# -- commands ------------------------------------------------------------------------------


def _wait_for_go(enabled: bool, say: str = "READY") -> bool:
    """Print *say*, then wait for a line on stdin; False if none came in time."""
    if not enabled:
        return True
    print(say, flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT)
    if not ready:
        return False
    sys.stdin.readline()
    return True


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cmd_fetch(args: argparse.Namespace) -> dict[str, Any]:
    if not _wait_for_go(args.wait_go):
        sys.exit(f"no go within {GO_TIMEOUT:.0f}s")
    later = bool(args.hash_after and args.expect_sha256)
    bodies = [Body(args.expect_size) if later else None for _ in range(args.downloads)]
    cpu0, start = _cpu(), time.monotonic()
    deadline = start + args.timeout

    def one(i: int) -> Download:
        return download(
            args.port,
            args.path,
            args.expect_size,
            args.expect_sha256,
            deadline,
            args.idle_timeout,
            bodies[i],
        )

    with ThreadPoolExecutor(args.threads) as pool:
        downloads = list(pool.map(one, range(args.downloads)))
    end, cpu = time.monotonic(), _cpu() - cpu0
    if later:
        # hash once every client process is done, so that hashing takes no CPU from the run
        _wait_for_go(args.wait_go, "DONE")
        for d, body in zip(downloads, bodies):
            assert body is not None
            check_body(d, body, args.expect_sha256)
    return {
        "start": start,
        "end": end,
        "cpu": cpu,  # from the start to the last byte: hashing afterwards not included
        "downloads": [asdict(d) for d in downloads],
    }


@dataclass
class SlowClient:
    status: str = "error"  # "ok" (read for the whole duration), "cut off", "error", ...
    detail: str = ""
    body_bytes: int = 0
    head_seconds: float | None = None  # from the request to the end of the headers


def slow_client(args: argparse.Namespace, start: float) -> SlowClient:
    result = SlowClient()
    stop = start + args.duration
    conn: Connection | None = None
    try:
        conn = Connection(args.port, stop, args.idle_timeout, args.rcvbuf)
        conn.send_get(args.path)
        conn.read_head()
        head_done = time.monotonic()
        result.head_seconds = head_done - start
        # the body bytes read with the head count against the rate too (framing is counted
        # as body: the servers send Content-Length bodies unless told --chunked)
        result.body_bytes = conn.buffered
        while True:
            now = time.monotonic()
            if now >= stop:
                break
            allowed = int(args.rate * (now - head_done)) + args.burst - result.body_bytes
            if allowed <= 0:
                time.sleep(min(-allowed / args.rate + 0.001, stop - now))
                continue
            conn.sock.settimeout(max(stop - now, 0.001))
            data = conn.recv(min(allowed, args.recv_size))
            result.body_bytes += len(data)
        result.status = "ok"
    except (Deadline, socket.timeout, TimeoutError):
        result.status = "ok" if result.head_seconds is not None else "no response"
    except EOFError:
        result.status, result.detail = "cut off", "the server closed the connection"
    except (OSError, HttpError, ValueError) as e:
        result.status, result.detail = "error", f"{type(e).__name__}: {e}"
    finally:
        if conn is not None:
            conn.close()
    return result


def cmd_slow(args: argparse.Namespace) -> dict[str, Any]:
    if not _wait_for_go(args.wait_go):
        sys.exit(f"no go within {GO_TIMEOUT:.0f}s")
    cpu0, start = _cpu(), time.monotonic()
    with ThreadPoolExecutor(args.clients) as pool:
        clients = list(pool.map(lambda _: slow_client(args, start), range(args.clients)))
    return {
        "start": start,
        "end": time.monotonic(),
        "cpu": _cpu() - cpu0,
        "clients": [asdict(c) for c in clients],
    }


def probe_once(port: int, path: str, timeout: float, idle_timeout: float) -> Download:
    return download(port, path, None, None, time.monotonic() + timeout, idle_timeout)


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    if not _wait_for_go(args.wait_go):
        sys.exit(f"no go within {GO_TIMEOUT:.0f}s")
    start = time.monotonic()
    paths: list[str] = args.path
    results: dict[str, dict[str, Any]] = {
        path: {"latencies_ms": [], "failures": [], "timeouts": 0, "skipped": 0} for path in paths
    }
    consecutive = dict.fromkeys(paths, 0)
    i = 0
    while True:
        due = start + i * args.interval
        if args.until_line and select.select([sys.stdin], [], [], 0)[0]:
            break  # told to stop (a line, or EOF)
        if args.count is not None:
            if i >= args.count:
                break
        elif due >= start + args.duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for path in paths:
            record = results[path]
            if args.give_up_after and consecutive[path] >= args.give_up_after:
                record["skipped"] += 1
                continue
            d = probe_once(args.port, path, args.request_timeout, args.idle_timeout)
            if d.status == "ok":
                record["latencies_ms"].append((d.end - d.start) * 1000.0)
                consecutive[path] = 0
            else:
                if d.status == "timeout":
                    record["timeouts"] += 1
                    consecutive[path] += 1
                record["failures"].append(f"{d.status}: {d.detail}")
        i += 1
    return {"start": start, "end": time.monotonic(), "cpu": _cpu(), "paths": results}


def cmd_stall(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    header_deadline = start + args.header_timeout
    sockets: list[socket.socket] = []
    failed: list[str] = []
    statuses: dict[str, int] = {}
    selector = selectors.DefaultSelector()
    heads: dict[socket.socket, bytearray] = {}
    received: dict[socket.socket, bytearray] = {}  # what each stream got: its head, or part
    request = f"GET {args.path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    try:
        for _ in range(args.streams):
            remaining = header_deadline - time.monotonic()
            if remaining <= 0:
                failed.append("not connected: --header-timeout passed")
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
            sock.settimeout(min(args.idle_timeout, remaining))
            try:
                sock.connect((HOST, args.port))
                sock.sendall(request)
            except OSError as e:
                failed.append(f"{type(e).__name__}: {e}")
                sock.close()
                continue
            sock.setblocking(False)
            sockets.append(sock)
            heads[sock] = bytearray()
            selector.register(sock, selectors.EVENT_READ)
        # read each response up to the end of its headers, then never again
        while heads and time.monotonic() < header_deadline:
            for key, _ in selector.select(max(header_deadline - time.monotonic(), 0.0)):
                ready_sock = key.fileobj
                assert isinstance(ready_sock, socket.socket)
                try:
                    data = ready_sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = b""
                    failed.append(f"{type(e).__name__}: {e}")
                head = heads[ready_sock]
                head += data
                received[ready_sock] = head
                end = head.find(b"\r\n\r\n")
                if end >= 0 or not data:
                    selector.unregister(ready_sock)
                    del heads[ready_sock]
                    if end >= 0:
                        status = head.split(b" ", 2)[1].decode("latin-1")
                        statuses[status] = statuses.get(status, 0) + 1
        ready = {
            "streams": args.streams,
            "connected": len(sockets),
            "headers": sum(statuses.values()),
            "statuses": statuses,
            "without_headers": len(heads),
            "failed": failed[:5],
            "seconds": time.monotonic() - start,
        }
        print(json.dumps(ready), flush=True)
        # hold the connections, unread, until told to read them to the end or to let go
        wait, _, _ = select.select([sys.stdin], [], [], args.hold)
        command = sys.stdin.readline().strip() if wait else ""
        held = time.monotonic() - start
        result: dict[str, Any] = {"held_seconds": held}
        if command == "read":
            result["read"] = read_to_end(sockets, received, args)
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    result["closed"] = len(sockets)
    return result


def read_to_end(
    sockets: list[socket.socket], received: dict[socket.socket, bytearray], args: argparse.Namespace
) -> dict[str, Any]:
    """
    Read every stream to its end (the server closes each: ``Connection: close``), checking
    each body's size and SHA-256 (``--expect-size``, ``--expect-sha256``; a chunked body is
    counted, not checked).
    """
    start = time.monotonic()
    deadline = start + args.read_timeout
    selector = selectors.DefaultSelector()
    buffer = bytearray(RECV_SIZE)
    view = memoryview(buffer)
    heads: dict[socket.socket, bytearray] = {}
    digests: dict[socket.socket, Any] = {}
    sizes: dict[socket.socket, int] = {}
    chunked: set[socket.socket] = set()
    statuses: dict[str, int] = {}

    def count(status: str) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    def take(sock: socket.socket, data: memoryview | bytes) -> None:
        if sock in digests:
            digests[sock].update(data)
            sizes[sock] += len(data)
            return
        head = heads.setdefault(sock, bytearray())
        head += data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            if b"transfer-encoding: chunked" in bytes(head[:end]).lower():
                chunked.add(sock)
            body = bytes(head[end + 4 :])
            digests[sock] = hashlib.sha256(body)
            sizes[sock] = len(body)
            del heads[sock]

    for sock in sockets:
        with contextlib.suppress(OSError):  # a larger window for the read (up to 64 KiB)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        take(sock, bytes(received.get(sock, b"")))
        selector.register(sock, selectors.EVENT_READ)
    open_ = len(sockets)
    while open_ and time.monotonic() < deadline:
        for key, _ in selector.select(max(min(deadline - time.monotonic(), 1.0), 0.0)):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                n = ready.recv_into(view)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n:
                take(ready, view[:n])
                continue
            selector.unregister(ready)
            open_ -= 1
            if ready not in digests:
                count("no complete head")
            elif ready in chunked:
                count("chunked (not checked)")
            elif args.expect_size is not None and sizes[ready] != args.expect_size:
                count("short")
            elif args.expect_sha256 and digests[ready].hexdigest() != args.expect_sha256:
                count("wrong")
            else:
                count("ok")
            digests.pop(ready, None)
    if open_:
        statuses["timeout"] = open_
    selector.close()
    view.release()
    return {"statuses": statuses, "seconds": time.monotonic() - start}


# -- WebSocket --------------------------------------------------------------------------------


def ws_message(i: int, size: int) -> bytes:
    """Message *i* as the servers send it (servers.py `ws_message`)."""
    head = b"%08d" % i
    return head[:size] + b"." * (size - len(head))


def ws_frame_head(size: int) -> bytes:
    """The head of an unmasked, final, binary frame of *size* bytes (as a server sends it)."""
    if size < 126:
        return bytes([0x82, size])
    if size < 65536:
        return bytes([0x82, 126]) + size.to_bytes(2, "big")
    return bytes([0x82, 127]) + size.to_bytes(8, "big")


def ws_connect(
    port: int, path: str, timeout: float, rcvbuf: int = 0
) -> tuple[socket.socket, bytes]:
    """A WebSocket handshake on a blocking socket; the socket and the bytes read past it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((HOST, port))
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
    )
    head = bytearray()
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise HttpError(f"closed during the handshake (got {bytes(head)!r})")
        head += data
        if len(head) > 64 * 1024:
            raise HttpError("handshake response too long")
    end = head.index(b"\r\n\r\n") + 4
    status = bytes(head[:end]).split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        raise HttpError(f"no upgrade: {bytes(head[:end])!r}")
    return sock, bytes(head[end:])


def ws_send_text(sock: socket.socket, text: str) -> None:
    """One masked text frame (a client's frames are masked)."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def cmd_ws(args: argparse.Namespace) -> dict[str, Any]:
    if not _wait_for_go(args.wait_go):
        sys.exit(f"no go within {GO_TIMEOUT:.0f}s")
    if args.mode == "stall":
        sock, _ = ws_connect(args.port, args.path, args.idle_timeout, rcvbuf=args.rcvbuf)
        try:
            ws_send_text(sock, f"stall {args.size}")
            print("STALLED", flush=True)
            wait, _, _ = select.select([sys.stdin], [], [], args.hold)
            if wait:
                sys.stdin.readline()
        finally:
            sock.close()
        return {"mode": "stall"}
    head = ws_frame_head(args.size)
    frame = len(head) + args.size
    expected = args.messages * frame
    sock, extra = ws_connect(args.port, args.path, args.idle_timeout)
    buffer = bytearray(RECV_SIZE)
    view = memoryview(buffer)
    digest = hashlib.sha256(extra)
    received = len(extra)
    status = "ok"
    try:
        cpu0, start = _cpu(), time.monotonic()
        deadline = start + args.timeout
        ws_send_text(sock, f"flood {args.messages} {args.size}")
        while received < expected:
            if time.monotonic() > deadline:
                status = "timeout"
                break
            n = sock.recv_into(view, min(RECV_SIZE, expected - received))
            if not n:
                status = "closed"
                break
            digest.update(view[:n])
            received += n
        end, cpu = time.monotonic(), _cpu() - cpu0
    except (OSError, socket.timeout) as e:
        status, end, cpu = f"{type(e).__name__}: {e}", time.monotonic(), _cpu() - cpu0
    finally:
        view.release()
        sock.close()
    # after the timing: the SHA-256 of the frames expected, message 0 to the last, in order
    if status == "ok":
        want = hashlib.sha256()
        for i in range(args.messages):
            want.update(head)
            want.update(ws_message(i, args.size))
        if want.digest() != digest.digest():
            status = "wrong"
    return {
        "mode": "flood",
        "status": status,
        "messages": args.messages,
        "size": args.size,
        "bytes": received,
        "start": start,
        "end": end,
        "seconds": end - start,
        "cpu": cpu,
    }


# -- command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    commands = parser.add_subparsers(dest="command", required=True)

    def common(name: str, text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--idle-timeout", type=float, default=10.0, metavar="SECONDS")
        command.add_argument("--wait-go", action="store_true", help="READY, then wait for a line")
        return command

    fetch = common("fetch", "download and check bodies")
    fetch.add_argument("--path", default="/file")
    fetch.add_argument("--downloads", type=int, default=1)
    fetch.add_argument("--threads", type=int, default=1)
    fetch.add_argument("--expect-size", type=int)
    fetch.add_argument("--expect-sha256", help="hash every body and compare (else only count)")
    fetch.add_argument(
        "--hash-after",
        action="store_true",
        help="keep the bodies in memory and hash them at the end (with --wait-go: print DONE "
        "and hash at the next line on stdin)",
    )
    fetch.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")

    slow = common("slow", "clients that read at a fixed rate, then hang up")
    slow.add_argument("--path", default="/file")
    slow.add_argument("--clients", type=int, default=40)
    slow.add_argument("--rate", type=int, default=256 * 1024, help="bytes per second each")
    slow.add_argument("--burst", type=int, default=16 * 1024, help="bytes read ahead of the rate")
    slow.add_argument("--recv-size", type=int, default=16 * 1024)
    slow.add_argument("--rcvbuf", type=int, default=64 * 1024, help="SO_RCVBUF, 0: the system's")
    slow.add_argument("--duration", type=float, default=8.0, metavar="SECONDS")

    probe = common("probe", "latency of fresh-connection GETs")
    probe.add_argument("--path", action="append", required=True, help="repeat for several")
    probe.add_argument("--interval", type=float, default=0.05, metavar="SECONDS")
    probe.add_argument("--duration", type=float, default=8.0, metavar="SECONDS")
    probe.add_argument("--count", type=int, help="this many rounds instead of --duration")
    probe.add_argument("--request-timeout", type=float, default=2.0, metavar="SECONDS")
    probe.add_argument(
        "--give-up-after", type=int, default=0, help="stop a path after N timeouts in a row"
    )
    probe.add_argument(
        "--until-line", action="store_true", help="also stop at a line (or EOF) on stdin"
    )

    ws = common("ws", "a WebSocket client: read a flood of messages, or stall")
    ws.add_argument("--path", default="/ws")
    ws.add_argument("--mode", choices=("flood", "stall"), default="flood")
    ws.add_argument("--messages", type=int, default=100_000)
    ws.add_argument("--size", type=int, default=100, help="bytes per message (at least 8)")
    ws.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF when stalling")
    ws.add_argument("--hold", type=float, default=120.0, metavar="SECONDS")
    ws.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")

    stall = common("stall", "streams whose clients stop reading after the headers")
    stall.add_argument("--path", default="/file")
    stall.add_argument("--streams", type=int, default=200)
    stall.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each client")
    stall.add_argument("--header-timeout", type=float, default=5.0, metavar="SECONDS")
    stall.add_argument("--hold", type=float, default=120.0, metavar="SECONDS")
    stall.add_argument("--expect-size", type=int, help="each body's size (with 'read')")
    stall.add_argument("--expect-sha256", help="each body's SHA-256 (with 'read')")
    stall.add_argument("--read-timeout", type=float, default=120.0, metavar="SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # a socket per stream: the thousand-stream scenarios need more than 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "fetch": cmd_fetch,
        "slow": cmd_slow,
        "probe": cmd_probe,
        "stall": cmd_stall,
        "ws": cmd_ws,
    }
    result = commands[args.command](args)
    result["threads_left"] = threading.active_count()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
