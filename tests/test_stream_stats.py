"""Per-stream figures (``handler.stream_stats``) and the process-wide ones (`memory_stats`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor

from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Pause,
    Progress,
    Recorder,
    ServerFactory,
    fetch,
    payload,
    sha256,
)
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor
from tornado_safestream.memory import StreamStats, memory_stats

KiB = 1024
BODY = payload(2 * 1024 * KiB, 5)


class _Recorded(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    def on_finish(self) -> None:
        self.rec.add("on_finish", self.stream_stats)


class SlowProducer(_Recorded):
    """Like a query that takes its time: 10 ms before each chunk."""

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        self.rec.add("during", memory_stats())
        for start in range(0, len(BODY), 256 * KiB):
            time.sleep(0.01)
            yield BODY[start : start + 256 * KiB]


class FastProducer(_Recorded):
    def initialize(self, executor: Executor, rec: Recorder, progress: Progress) -> None:  # type: ignore[override]
        super().initialize(executor, rec)
        self.progress = progress

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        for start in range(0, len(BODY), 16 * KiB):
            self.progress.add(16 * KiB)
            yield BODY[start : start + 16 * KiB]


class Push(_Recorded):
    @stream_on_executor
    def get(self) -> None:
        for start in range(0, len(BODY), 64 * KiB):
            self.write(BODY[start : start + 64 * KiB])
            self.flush()


def test_on_finish_sees_what_the_stream_did_and_a_slow_producer_shows(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    rec = Recorder()
    srv = server([("/", SlowProducer, dict(executor=make_executor(2), rec=rec))])
    assert sha256(fetch(srv.port, "/").body) == sha256(BODY)
    stats = rec.wait_for("on_finish")
    assert isinstance(stats, StreamStats)
    assert stats.bytes_sent == len(BODY)
    # The client waited for the producer's sleeps (8 x 10 ms); the producer never waited.
    assert stats.client_waited >= 0.04, stats
    assert stats.producer_blocked < stats.client_waited, stats
    assert 0 < stats.peak_bytes <= 1024 * KiB + 256 * KiB
    assert stats.duration >= stats.client_waited
    during = rec.wait_for("during")
    assert during.streams >= 1  # type: ignore[attr-defined]
    assert logs.errors() == []


def test_a_slow_client_shows_as_the_producer_waiting(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    rec, progress = Recorder(), Progress()
    srv = server(
        [("/", FastProducer, dict(executor=make_executor(2), rec=rec, progress=progress))],
        sndbuf=16 * KiB,
    )
    pause = Pause()

    def resume_once_the_producer_waits() -> None:
        if pause.headers_read.wait(TIMEOUT):
            progress.wait_stable()  # the client reads nothing: the producer waits for it
        pause.resume.set()

    waiter = threading.Thread(target=resume_once_the_producer_waits)
    waiter.start()
    try:
        response = fetch(srv.port, "/", rcvbuf=16 * KiB, pause=pause)
    finally:
        pause.resume.set()
        waiter.join(TIMEOUT)
    assert sha256(response.body) == sha256(BODY)
    stats = rec.wait_for("on_finish")
    assert isinstance(stats, StreamStats)
    assert stats.producer_blocked >= 0.1, stats
    assert stats.producer_blocked > stats.client_waited, stats
    assert stats.peak_bytes <= 64 * KiB + 16 * KiB
    assert logs.errors() == []


def test_push_style_and_the_access_log(
    server: ServerFactory, make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    rec = Recorder()
    logged: list[str] = []

    def log_function(handler: RequestHandler) -> None:
        stats = getattr(handler, "stream_stats", None)
        logged.append(f"{handler.get_status()} {handler.request.uri} {stats}")

    srv = server([("/", Push, dict(executor=make_executor(2), rec=rec))], log_function=log_function)
    assert sha256(fetch(srv.port, "/").body) == sha256(BODY)
    stats = rec.wait_for("on_finish")
    assert isinstance(stats, StreamStats)
    assert stats.bytes_sent == len(BODY)
    assert logged and logged[0].startswith(f"200 / sent={len(BODY)}B blocked="), logged
    assert logs.errors() == []


def test_no_stream_no_figures() -> None:
    assert SafeStreamMixin.stream_stats.__doc__  # documented property
    handler = object.__new__(Push)
    assert handler.stream_stats is None
