"""A CSV export of a large SQLite query, streamed as the rows come: generator style.

Run ``python examples/sqlite_export.py``: it makes a database of a million orders (once, in
the temporary directory; ``--database`` for another file, ``--rows`` for another size),
prints the URL of the export and serves until Ctrl-C. Open the URL in a browser: the
download starts at once, while the query is still running. With ``--download`` the script
downloads the export itself instead, and prints the time to the first byte, the rows, and
how much the process's resident memory grew meanwhile.

The handler opens its own ``sqlite3`` connection for each request and iterates the cursor
in a generator. A ``sqlite3`` connection may only be used on the thread that opened it
(``check_same_thread``, on by default), so the method asks for ``keep_thread=True``: the
generator runs on one executor thread from its first row to its ``finally``. Rows are
formatted with the `csv` module and yielded about 64 KiB at a time. The library sends each
piece as it is yielded and stops pulling the cursor while the client is
``max_buffer_bytes`` behind, so memory stays flat, whatever the size of the result.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import os
import random
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

log = logging.getLogger("sqlite_export")

#: Rows fetched from the cursor at a time, and bytes of CSV yielded at a time (about).
FETCH_ROWS = 1000
PIECE_BYTES = 64 * 1024
COLUMNS = ("id", "customer", "product", "quantity", "amount_cents", "created")


class Export(SafeStreamMixin, RequestHandler):
    """``GET /orders.csv``: every order, oldest first, as CSV."""

    executor = ThreadPoolExecutor(8)  # at most 8 exports produce at once

    def initialize(self, database: str) -> None:
        self.database = database

    @stream_on_executor(keep_thread=True, max_buffer_bytes=256 * 1024)
    def get(self) -> Iterator[str]:
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="orders.csv"')
        # The header row goes out before the query runs: the browser shows the download
        # starting at once.
        yield ",".join(COLUMNS) + "\r\n"
        started = time.monotonic()
        rows = 0
        # Read-only, opened in this thread; keep_thread=True keeps the generator on it.
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            cursor = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM orders ORDER BY id")
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            while batch := cursor.fetchmany(FETCH_ROWS):
                writer.writerows(batch)
                rows += len(batch)
                if buffer.tell() >= PIECE_BYTES:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            if buffer.tell():
                yield buffer.getvalue()
            log.info("query done: %d rows in %.2f s", rows, time.monotonic() - started)
        finally:
            connection.close()  # here, on this thread, also when the client left

    def on_finish(self) -> None:
        log.info("export sent: %s", self.stream_stats)


def make_app(database: str) -> Application:
    return Application([(r"/orders.csv", Export, {"database": database})])


def make_database(path: str, rows: int, seed: int = 0) -> None:
    """Write ``rows`` generated orders to a new SQLite database at ``path``."""
    rng = random.Random(seed)
    products = ("chair", "desk", "lamp", "shelf", "sofa", "table")
    start = 1_767_225_600  # 2026-01-01 UTC

    def orders() -> Iterator[tuple[int, str, str, int, int, str]]:
        for n in range(1, rows + 1):
            created = time.gmtime(start + n * 30)
            yield (
                n,
                f"customer-{rng.randrange(100_000):05d}",
                rng.choice(products),
                rng.randint(1, 9),
                rng.randrange(100, 500_000),
                time.strftime("%Y-%m-%dT%H:%M:%SZ", created),
            )

    connection = sqlite3.connect(path)
    try:
        connection.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
            "product TEXT NOT NULL, quantity INTEGER NOT NULL, amount_cents INTEGER NOT NULL, "
            "created TEXT NOT NULL)"
        )
        with connection:
            connection.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders())
    finally:
        connection.close()


def rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RssPeak:
    """The highest RSS seen by a thread that samples it every few milliseconds."""

    def __init__(self) -> None:
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        """Stop sampling; return the growth over the baseline, in bytes."""
        self._stop.set()
        self._thread.join(5)
        return max(self.peak, rss_bytes()) - self.baseline


def download(url: str, timeout: float = 60.0) -> tuple[float, int, int]:
    """
    GET ``url`` over a raw socket; return (seconds to the first byte of the body, lines of
    the body, bytes of the body). The body is counted and dropped as it arrives.
    """
    parts = urlsplit(url)
    started = time.monotonic()
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    with socket.create_connection(address, timeout=timeout) as sock:
        request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection before the headers")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"unexpected response: {head[:100]!r}")
        first_byte = None
        chunked = b"transfer-encoding: chunked" in head.lower()
        body = _Dechunker() if chunked else None
        lines = size = 0
        data = rest
        while True:
            if data:
                if first_byte is None:
                    first_byte = time.monotonic() - started
                payload = body.feed(data) if body is not None else data
                lines += payload.count(b"\n")
                size += len(payload)
                if body is not None and body.done:
                    break
            data = sock.recv(1024 * 1024)
            if not data:
                break
    if first_byte is None:
        raise ConnectionError("no body")
    return first_byte, lines, size


class _Dechunker:
    """Undoes chunked transfer encoding, a piece at a time."""

    def __init__(self) -> None:
        self._pending = b""
        self._left = 0  # bytes of the current chunk still to come, then its CRLF
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        out = bytearray()
        while self._pending and not self.done:
            if self._left:
                piece = self._pending[: self._left]
                out += piece
                self._left -= len(piece)
                self._pending = self._pending[len(piece) :]
                continue
            line, sep, rest = self._pending.partition(b"\r\n")
            if not sep:
                break
            if not line:  # the CRLF after a chunk's data
                self._pending = rest
                continue
            size = int(line.split(b";")[0], 16)
            self._pending = rest
            if size == 0:
                self.done = True
            self._left = size
        return bytes(out)


async def serve(port: int, database: str, download_once: bool) -> None:
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(make_app(database))
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/orders.csv"
    try:
        if not download_once:
            print(url, flush=True)
            await asyncio.Event().wait()  # until Ctrl-C
            return
        peak = RssPeak()
        first_byte, lines, size = await asyncio.get_running_loop().run_in_executor(
            None, download, url
        )
        growth = peak.stop()
        print(
            f"{lines - 1} rows, {size / 1e6:.1f} MB of CSV; first byte after "
            f"{first_byte * 1000:.1f} ms; server RSS growth {growth / 2**20:.1f} MiB",
            flush=True,
        )
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Stream a CSV export of a SQLite query.")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of a new database")
    parser.add_argument(
        "--database",
        help="the SQLite file (made with --rows orders if missing; default: one in the "
        "temporary directory, named after --rows)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download the export once, print figures, stop"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    database = args.database or os.path.join(
        tempfile.gettempdir(), f"safestream-orders-{args.rows}.sqlite3"
    )
    if not os.path.exists(database):
        print(f"making {database} ({args.rows} rows) ...", flush=True)
        partial = database + ".part"
        if os.path.exists(partial):
            os.remove(partial)
        make_database(partial, args.rows)
        os.replace(partial, database)
    try:
        asyncio.run(serve(args.port, database, args.download))
    except KeyboardInterrupt:
        pass
    finally:
        Export.executor.shutdown()


if __name__ == "__main__":
    main()
