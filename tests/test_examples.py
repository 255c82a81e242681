"""The examples in ``examples/`` do what their docstrings and the documentation say.

The SQLite export and the log tail are tested in depth (their handlers on a real server, a
raw-socket client); every example is also run once as a user runs it, from its one command,
in a subprocess.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import (
    TIMEOUT,
    BodyReader,
    ExecutorFactory,
    LogRecorder,
    RawConnection,
    ServerFactory,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture
def info_logs(logs: LogRecorder) -> Iterator[LogRecorder]:
    """``logs``, with the examples' INFO records (their loggers are set to INFO meanwhile)."""
    loggers = [logging.getLogger(name) for name in ("sqlite_export", "sse_tail")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    try:
        yield logs
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --------------------------------------------------------------------------- sqlite_export


def _expected_csv_sha256(database: str) -> tuple[str, int]:
    """What the export must send, made here straight from the database."""
    mod = _load("sqlite_export")
    digest = hashlib.sha256((",".join(mod.COLUMNS) + "\r\n").encode())
    connection = sqlite3.connect(database)
    size = 0
    try:
        cursor = connection.execute(f"SELECT {', '.join(mod.COLUMNS)} FROM orders ORDER BY id")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        while batch := cursor.fetchmany(10_000):
            writer.writerows(batch)
            data = buffer.getvalue().encode()
            digest.update(data)
            size += len(data)
            buffer.seek(0)
            buffer.truncate()
    finally:
        connection.close()
    return digest.hexdigest(), size


def test_sqlite_export_starts_at_once_streams_every_row_and_keeps_memory_flat(
    server: ServerFactory, make_executor: ExecutorFactory, info_logs: LogRecorder, tmp_path: Path
) -> None:
    mod = _load("sqlite_export")
    rows = 400_000
    database = str(tmp_path / "orders.sqlite3")
    mod.make_database(database, rows)
    expected, size = _expected_csv_sha256(database)
    rss_limit = 10 * 2**20
    assert size > 2 * rss_limit  # a body that memory could not hold unnoticed
    export = type("Export", (mod.Export,), {"executor": make_executor(2, "export")})
    srv = server([(r"/orders.csv", export, {"database": database})])

    peak = mod.RssPeak()
    digest = hashlib.sha256()
    lines = 0
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", "/orders.csv")
        head = conn.read_head()
        assert head.status == 200
        assert head.get("Content-Type") == "text/csv; charset=utf-8"
        assert head.get("Content-Disposition") == 'attachment; filename="orders.csv"'
        body = conn.body_reader(head)
        first = body.read()
        first_at = time.time()  # the clock of log records' `created`
        assert first.startswith(b"id,customer,product,quantity,amount_cents,created\r\n")
        digest.update(first)
        lines += first.count(b"\n")
        for _ in range(size):  # bounded: at least one byte a read
            data = body.read()
            if not data:
                break
            digest.update(data)
            lines += data.count(b"\n")
        assert body.complete
    growth = peak.stop()

    done = info_logs.wait_for_record(
        lambda r: r.name == "sqlite_export" and r.getMessage().startswith("query done")
    )
    assert done.getMessage().startswith(f"query done: {rows} rows")
    # The browser saw the download start while the query was still running.
    assert first_at < done.created
    assert lines == rows + 1
    assert digest.hexdigest() == expected
    assert growth < rss_limit, f"RSS grew by {growth / 2**20:.1f} MiB"
    info_logs.wait_for_record(
        lambda r: r.name == "sqlite_export" and r.getMessage().startswith("export sent")
    )
    assert not info_logs.errors()


def test_sqlite_export_closes_its_connection_when_the_client_leaves(
    server: ServerFactory, make_executor: ExecutorFactory, info_logs: LogRecorder, tmp_path: Path
) -> None:
    mod = _load("sqlite_export")
    database = str(tmp_path / "orders.sqlite3")
    mod.make_database(database, 200_000)
    pool = make_executor(1, "export")
    export = type("Export", (mod.Export,), {"executor": pool})
    srv = server([(r"/orders.csv", export, {"database": database})])
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", "/orders.csv")
        head = conn.read_head()
        conn.body_reader(head).read()
    # The generator was closed on its thread (its finally closed the connection): the
    # executor's one thread is free for the next export, which is complete.
    with RawConnection(srv.port) as conn:
        response = conn.request("GET", "/orders.csv")
    assert response.status == 200
    assert response.body.count(b"\n") == 200_001
    assert not info_logs.errors()


# --------------------------------------------------------------------------- sse_tail


class _Events:
    """Server-sent events read from a body, one block (up to a blank line) at a time."""

    def __init__(self, body: BodyReader) -> None:
        self.body = body
        self._pending = b""

    def next(self) -> str:
        for _ in range(10_000):
            block, sep, rest = self._pending.partition(b"\n\n")
            if sep:
                self._pending = rest
                return block.decode()
            data = self.body.read()
            if not data:
                raise AssertionError(f"the stream ended; pending {self._pending!r}")
            self._pending += data
        raise AssertionError("unbounded event read")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_sse_tail_sends_new_lines_heartbeats_and_closes_when_the_browser_leaves(
    server: ServerFactory, make_executor: ExecutorFactory, info_logs: LogRecorder, tmp_path: Path
) -> None:
    mod = _load("sse_tail")
    log = tmp_path / "app.log"
    log.write_text("written before the page opened\n")
    start = log.stat().st_size
    events = type("Events", (mod.Events,), {"executor": make_executor(2, "tail")})
    srv = server([(r"/events", events, {"path": str(log), "heartbeat": 0.2, "poll": 0.02})])

    conn = RawConnection(srv.port)
    try:
        conn.send_request("GET", "/events")
        head = conn.read_head()
        assert head.status == 200
        assert head.get("Content-Type") == "text/event-stream; charset=utf-8"
        assert head.get("Cache-Control") == "no-cache"
        stream = _Events(conn.body_reader(head))
        assert stream.next() == "retry: 2000\n: connected"
        _append(log, "one\ntwo\nthr")  # a line still being written is not sent
        assert stream.next() == f"id: {start + 4}\ndata: one"
        assert stream.next() == f"id: {start + 8}\ndata: two"
        _append(log, "ee\n")
        assert stream.next() == f"id: {start + 14}\ndata: three"
        # Nothing written for the heartbeat's interval: a comment keeps proxies from
        # closing the idle connection.
        assert stream.next() == ": heartbeat"
    finally:
        conn.close()
    closed = info_logs.wait_for_record(
        lambda r: r.name == "sse_tail" and r.getMessage().startswith("tail of")
    )
    assert closed.getMessage().endswith("closed after 3 events")

    # A browser that reconnects sends the last id it got, and gets what followed it.
    with RawConnection(srv.port) as conn:
        conn.send_request("GET", "/events", {"Last-Event-ID": str(start + 4)})
        stream = _Events(conn.body_reader(conn.read_head()))
        assert stream.next() == "retry: 2000\n: connected"
        assert stream.next() == f"id: {start + 8}\ndata: two"
        assert stream.next() == f"id: {start + 14}\ndata: three"
    assert not info_logs.errors()


# --------------------------------------------------------------------------- one command each


class _Example:
    """``python examples/NAME.py ARGS`` in a subprocess, its output read line by line."""

    def __init__(self, name: str, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for_line(self, prefix: str, timeout: float = 60.0) -> str:
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(line.startswith((prefix, "<eof>")) for line in self.lines), timeout
            )
            line = next((x for x in self.lines if x.startswith((prefix, "<eof>"))), "")
        assert found and line != "<eof>", f"no line {prefix!r}; output: {self.lines}"
        return line

    def stopped(self) -> int:
        """
        The exit status of an example that stops by itself: wait for it first, as a Ctrl-C
        could land in the middle of its own shutdown (`stop` then interrupts only one that
        has not stopped in time).
        """
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(TIMEOUT)
        return self.stop()

    def stop(self) -> int:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
                raise AssertionError(f"no stop on SIGINT; output: {self.lines}") from None
        finally:
            self._reader.join(TIMEOUT)
            if self.process.stdout is not None:
                self.process.stdout.close()


def _get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        data: bytes = response.read()
        return data


@pytest.mark.parametrize("name", ["push_style", "generator_style"])
def test_a_streaming_example_serves_from_its_command(name: str) -> None:
    example = _Example(name, "--port", "0")
    try:
        url = example.wait_for_line("http://")
        if name == "push_style":
            assert _get(url) == (EXAMPLES / "push_style.py").read_bytes()
        else:
            body = _get(url + "?rows=1000").decode()
            assert body.splitlines()[:3] == ["n,square,cube", "0,0,0", "1,1,1"]
            assert len(body.splitlines()) == 1001
    finally:
        assert example.stop() == 0


def test_static_files_example_serves_from_its_command() -> None:
    example = _Example("static_files", "--port", "0")
    try:
        index_url = example.wait_for_line("http://").split()[0]
        download_url = example.wait_for_line(index_url + "downloads/")
        # Versions were warmed before serving: the first page has ?v= already.
        assert "/static/app.css?v=" in _get(index_url).decode()
        assert len(_get(download_url)) == 16 * 1024 * 1024
    finally:
        assert example.stop() == 0


def test_websocket_feed_example_runs_from_its_command() -> None:
    example = _Example("websocket_feed", "--seconds", "0.5", "--fast", "2", "--slow", "1")
    example.wait_for_line("  fast client 0:")
    assert example.stopped() == 0, example.lines  # with --seconds it stops by itself


def test_sqlite_export_example_downloads_from_its_command(tmp_path: Path) -> None:
    database = str(tmp_path / "orders.sqlite3")
    example = _Example(
        "sqlite_export", "--port", "0", "--rows", "20000", "--database", database, "--download"
    )
    line = example.wait_for_line("20000 rows")
    assert "first byte after" in line and "RSS growth" in line
    assert example.stopped() == 0, example.lines  # with --download it stops by itself


def test_sse_tail_example_serves_its_demo_log_from_its_command() -> None:
    example = _Example("sse_tail", "--port", "0")
    try:
        base = example.wait_for_line("http://").split()[0]
        assert "EventSource" in _get(base).decode()
        request = urllib.request.Request(base + "events")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            seen = ""
            for _ in range(1000):
                seen += response.readline().decode()
                if "data: " in seen and seen.endswith("\n\n"):
                    break
        assert "demo line" in seen
    finally:
        assert example.stop() == 0


def test_upload_example_stores_a_put_from_its_command(tmp_path: Path) -> None:
    example = _Example("upload", "--port", "0", "--directory", str(tmp_path))
    try:
        base = example.wait_for_line("http://")
        data = os.urandom(3 * 1024 * 1024 + 5)
        request = urllib.request.Request(base + "files/big.bin", data=data, method="PUT")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            answer = response.read().decode()
        assert hashlib.sha256(data).hexdigest() in answer
        assert (tmp_path / "big.bin").read_bytes() == data
        assert "<form" in _get(base).decode()
    finally:
        assert example.stop() == 0


def test_every_example_is_covered_here() -> None:
    covered = {
        "download_demo",  # test_assertions.py
        "scale_out",  # test_scale_out.py
        "push_style",
        "generator_style",
        "static_files",
        "websocket_feed",
        "sqlite_export",
        "sse_tail",
        "upload",
    }
    assert {p.stem for p in EXAMPLES.glob("*.py")} == covered
