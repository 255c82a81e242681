"""``keep_thread=True``: one executor thread for a generator, from its first next() to its close."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Progress,
    RawConnection,
    Recorder,
    ServerFactory,
    fetch,
    sha256,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

ROWS = 20_000


def expected_csv() -> bytes:
    return b"".join(b"%d,row %d,%d\n" % (i, i, i * i) for i in range(ROWS))


class SqliteExport(SafeStreamMixin, RequestHandler):
    """The streaming guide's CSV export, with a connection owned by the thread that made it."""

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @stream_on_executor(max_buffer_bytes=64 * 1024, keep_thread=True)
    def get(self) -> Iterator[str]:
        threads = {threading.get_ident()}
        db = sqlite3.connect(":memory:")  # check_same_thread=True, the default
        try:
            db.execute("CREATE TABLE big (id INTEGER, name TEXT, square INTEGER)")
            db.executemany(
                "INSERT INTO big VALUES (?, ?, ?)", ((i, f"row {i}", i * i) for i in range(ROWS))
            )
            self.set_header("Content-Type", "text/csv")
            for row in db.execute("SELECT * FROM big ORDER BY id"):
                threads.add(threading.get_ident())
                yield ",".join(map(str, row)) + "\n"
        finally:
            db.close()  # raises ProgrammingError on another thread
            threads.add(threading.get_ident())
            self.rec.add("threads", len(threads))


class HoldsItsThread(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder, progress: Progress) -> None:
        self.executor = executor
        self.rec = rec
        self.progress = progress

    @stream_on_executor(max_buffer_bytes=16 * 1024, keep_thread=True)
    def get(self) -> Iterator[bytes]:
        first = threading.get_ident()
        try:
            for _ in range(100_000):
                self.progress.add(8 * 1024)
                yield b"x" * (8 * 1024)
        finally:
            self.rec.add("same_thread", threading.get_ident() == first)


def test_sqlite_generator_serves_slow_and_fast_clients_at_once(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    pool = make_executor(16)
    rec = Recorder()
    srv = server([("/export", SqliteExport, dict(executor=pool, rec=rec))], sndbuf=16 * 1024)
    want = sha256(expected_csv())

    def download(slow: bool) -> str:
        response = fetch(
            srv.port, "/export", rcvbuf=8 * 1024 if slow else None, pace=0.001 if slow else None
        )
        assert response.complete
        return sha256(response.body)

    with ThreadPoolExecutor(16) as clients:
        futures = [clients.submit(download, i % 2 == 0) for i in range(16)]
        assert [future.result(TIMEOUT) for future in futures] == [want] * 16
    for _ in range(16):
        assert rec.wait_for("threads") == 1
    assert logs.errors() == []


def test_a_client_that_leaves_closes_the_generator_on_its_thread(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    pool = make_executor(2)
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", HoldsItsThread, dict(executor=pool, rec=rec, progress=progress))],
        sndbuf=16 * 1024,
    )
    with RawConnection(srv.port, rcvbuf=8 * 1024) as conn:
        conn.send_request("GET", "/")
        conn.read_head()
        progress.wait_stable()  # stalled: the generator waits in its thread
        conn.close(reset=True)
    assert rec.wait_for("same_thread") is True
    assert logs.errors() == []


def test_keep_thread_takes_a_bool() -> None:
    with pytest.raises(TypeError, match=r"keep_thread=\.\.\.\) takes True or False, not 'yes'"):
        stream_on_executor(keep_thread="yes")  # type: ignore[call-overload]
    assert "keep_thread=True" in repr(stream_on_executor(keep_thread=True))
