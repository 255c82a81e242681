"""Shutting a server down with streams of both styles in flight.

Two ways an application goes down: gracefully, as ``HTTPServer.stop()`` then
``await server.close_all_connections()`` on the loop, then ``executor.shutdown(wait=True)``;
or by stopping and closing the IOLoop with the connections still open. Either way every
producer must stop (push workers get StreamClosedError, generators are closed in the
executor, their ``finally`` run once), the executor must shut down without waiting for
ever, and nothing may be logged as an error.

test_disconnect.py covers a push worker blocked on the budget when the loop closes; here
are the other states a stream can be in at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, InvalidStateError, ThreadPoolExecutor
from typing import Any, Callable

from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Progress,
    RawConnection,
    Recorder,
    make_app,
    payload,
    record_text,
    split,
)
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * KiB
CHUNK = 8 * KiB
SERVER_SNDBUF = 16 * KiB
CLIENT_RCVBUF = 8 * KiB
BODY = payload(4 * MiB, 9)
#: More than the kernel buffers take, less than the budget of the handlers that flush it.
BIG_FLUSH = 1 * MiB
#: How long the executor may take to shut down: a hang detector, not a speed limit.
SHUTDOWN_DEADLINE = 5.0
#: How long producers a closed loop left behind may take to hear of it. The library's
#: waits check the loop every 0.25 s (tornado_safestream._core._waiting.POLL_SECONDS).
ORPHANS_DEADLINE = 3.0
#: What asyncio reports of a task left pending on a closed loop: expected when the loop is
#: closed with connections open (Tornado's own tasks for them are pending too).
DESTROYED_PENDING = "Task was destroyed but it is pending!"


class _Server(HTTPServer):
    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        # a fixed SO_SNDBUF also turns off Linux's send-buffer autotuning
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SNDBUF)
        super().handle_stream(stream, address)


class ShutdownServer:
    """A Tornado server on its own IOLoop, in a thread, shut down step by step by the test.

    `shut_down` with ``close_connections=True``: on the loop, ``HTTPServer.stop()`` then
    ``await close_all_connections()``; `drain` then waits (bounded) for every task left on
    the loop to finish on its own, records those that did not in `left_pending`, and
    closes the loop. With ``close_connections=False``: ``HTTPServer.stop()``, and the loop
    is stopped and closed at once, connections and tasks as they are.

    Every context the loop hands to its exception handler is kept in `loop_errors`.
    """

    def __init__(self, app: Application) -> None:
        self._app = app
        self._asyncio_loop = asyncio.new_event_loop()
        self._asyncio_loop.set_exception_handler(self._record_loop_error)
        self.loop_errors: list[dict[str, Any]] = []
        self.left_pending: list[str] = []
        self.connections_closed = threading.Event()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._drain: asyncio.Event | None = None
        self._close_connections = True
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="shutdown-loop", daemon=True)
        self.thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("loop thread did not become ready")

    def _record_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)

    def _run(self) -> None:
        io_loop: IOLoop | None = None

        async def serve() -> None:
            nonlocal io_loop
            io_loop = IOLoop.current()
            self._stop, self._drain = asyncio.Event(), asyncio.Event()
            sockets = bind_sockets(0, "127.0.0.1")
            server = _Server(self._app)
            server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.stop()
            if not self._close_connections:
                return
            await asyncio.wait_for(server.close_all_connections(), TIMEOUT)
            self.connections_closed.set()
            await self._drain.wait()
            this = asyncio.current_task()
            others = [task for task in asyncio.all_tasks() if task is not this]
            if others:
                _, pending = await asyncio.wait(others, timeout=TIMEOUT)
                self.left_pending = [repr(task) for task in pending]

        try:
            self._asyncio_loop.run_until_complete(serve())
        finally:
            self._ready.set()
            if io_loop is not None:
                io_loop.close(all_fds=True)
            else:
                self._asyncio_loop.close()

    def shut_down(self, *, close_connections: bool) -> None:
        stop = self._stop
        assert stop is not None
        self._close_connections = close_connections
        self._asyncio_loop.call_soon_threadsafe(stop.set)
        if close_connections:
            assert self.connections_closed.wait(TIMEOUT), "close_all_connections() hung"
        else:
            self._join()

    def drain(self) -> None:
        drain = self._drain
        assert drain is not None
        self._asyncio_loop.call_soon_threadsafe(drain.set)
        self._join()

    def _join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the loop thread did not stop"
        assert self._asyncio_loop.is_closed()

    def kill(self) -> None:
        """Cleanup after a failed test: stop the loop whatever step it is at."""
        for event in (self._stop, self._drain):
            if event is not None and not self._asyncio_loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._asyncio_loop.call_soon_threadsafe(event.set)
        self.thread.join(TIMEOUT)


# --------------------------------------------------------------------------- handlers


class InFlight(SafeStreamMixin, RequestHandler):
    """One stream of a shutdown scenario, named ``name``.

    When its producer is done it records ``(outcome, thread name)`` under ``name``:
    the exception that ended it (``StreamClosedError``, ``GeneratorExit``, ...) or
    ``"returned"``. Flush futures it waits on are recorded under ``"futures"``.
    """

    def initialize(
        self,
        executor: Executor,
        rec: Recorder,
        name: str,
        progress: Progress,
        release: threading.Event,
    ) -> None:
        self.executor = executor
        self.rec = rec
        self.name = name
        self.progress = progress
        self.release = release

    def wait_flushed(self) -> None:
        """``flush().result()`` with no timeout, as real code does."""
        future = self.flush()
        assert isinstance(future, Future)
        self.rec.add("futures", future)
        future.result()

    def wait_released(self) -> None:
        self.rec.add(f"{self.name}:inside")
        assert self.release.wait(TIMEOUT), "never released"

    def ended(self, outcome: str) -> None:
        self.rec.add(self.name, (outcome, threading.current_thread().name))


class PushInFlight(InFlight):
    def run(self, body: Callable[[], None]) -> None:
        outcome = "returned"
        try:
            body()
        except Exception as exc:
            outcome = type(exc).__name__
        finally:
            self.ended(outcome)


class PushOnTheBudget(PushInFlight):
    """Writes without flushing: blocks in write() once the budget is used up."""

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> None:
        def body() -> None:
            for piece in split(BODY, CHUNK):
                self.progress.add(len(piece))
                self.write(piece)

        self.run(body)


class PushWaitingOnAFlush(PushInFlight):
    """Flushes more than the kernel buffers take and waits on the flush future."""

    @stream_on_executor(max_buffer_bytes=8 * MiB)
    def get(self) -> None:
        def body() -> None:
            self.write(BODY[:BIG_FLUSH])
            self.rec.add(f"{self.name}:inside")
            self.wait_flushed()

        self.run(body)


class PushBusyElsewhere(PushInFlight):
    """Flushes, then works outside the library until released, then writes and flushes."""

    @stream_on_executor(max_buffer_bytes=8 * MiB)
    def get(self) -> None:
        def body() -> None:
            self.write(BODY[:BIG_FLUSH])
            self.flush()
            self.wait_released()
            self.write(BODY[BIG_FLUSH : BIG_FLUSH + CHUNK])
            self.wait_flushed()

        self.run(body)


class PushWaitingOnACall(PushInFlight):
    """Flushes, then calls set_header(), which waits for the loop behind the flush."""

    @stream_on_executor(max_buffer_bytes=8 * MiB)
    def get(self) -> None:
        def body() -> None:
            self.write(BODY[:BIG_FLUSH])
            self.flush()
            self.rec.add(f"{self.name}:inside")
            self.set_header("X-Late", "1")
            self.wait_flushed()

        self.run(body)


class PushToASlowReader(PushInFlight):
    @stream_on_executor(max_buffer_bytes=32 * KiB)
    def get(self) -> None:
        def body() -> None:
            for piece in split(BODY, CHUNK):
                self.write(piece)
                self.flush()
                self.progress.add(len(piece))

        self.run(body)


class GeneratorInFlight(InFlight):
    def pieces(self, *, pause_after_first: bool, count: bool) -> Iterator[bytes]:
        outcome = "returned"
        try:
            for index, piece in enumerate(split(BODY, CHUNK)):
                if index == 1 and pause_after_first:
                    self.wait_released()  # inside next(): a thread is in the generator
                if count:
                    self.progress.add(len(piece))
                yield piece
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.ended(outcome)


class GeneratorParked(GeneratorInFlight):
    """Stalled client: the budget fills and the generator parks (no thread holds it)."""

    @stream_on_executor(max_buffer_bytes=16 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.pieces(pause_after_first=False, count=True)


class GeneratorInNext(GeneratorInFlight):
    """Yields one chunk, then works inside next() until released."""

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.pieces(pause_after_first=True, count=False)


class GeneratorToASlowReader(GeneratorInFlight):
    @stream_on_executor(max_buffer_bytes=32 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.pieces(pause_after_first=False, count=True)


# --------------------------------------------------------------------------- plumbing


class Scenario:
    """The streams of a test: routes, their clients, and what their producers did."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.rec = Recorder()
        self.release = threading.Event()
        self.stalled = Progress()  # producers that a stalled client holds back
        self.slow = Progress()  # producers that a slow client reads from
        self.routes: list[tuple[str, type[RequestHandler], dict[str, object]]] = []
        self.names: list[str] = []

    def add(self, name: str, handler: type[InFlight], progress: Progress | None = None) -> None:
        kwargs: dict[str, object] = dict(
            executor=self.pool,
            rec=self.rec,
            name=name,
            progress=progress if progress is not None else Progress(),
            release=self.release,
        )
        self.routes.append((f"/{name}", handler, kwargs))
        self.names.append(name)

    def outcomes(self, deadline: float) -> dict[str, list[tuple[str, str]]]:
        """What each producer recorded, waiting for each until ``deadline`` at most."""
        result: dict[str, list[tuple[str, str]]] = {}
        for name in self.names:
            with contextlib.suppress(AssertionError):
                self.rec.wait_for(name, timeout=max(0.0, deadline - time.monotonic()))
            result[name] = []
            for value in self.rec.values(name):
                assert isinstance(value, tuple)
                outcome, thread = value
                result[name].append((str(outcome), str(thread)))
        return result

    def unstick(self) -> None:
        """Cleanup after a failure: fail the flush futures no one resolved, so no worker
        stays blocked in result() and hangs the interpreter's exit."""
        self.release.set()
        for future in self.rec.values("futures"):
            assert isinstance(future, Future)
            with contextlib.suppress(InvalidStateError):
                future.set_exception(StreamClosedError())


def shut_down_executor(pool: ThreadPoolExecutor) -> bool:
    """``pool.shutdown(wait=True)`` in a thread; whether it returned within the deadline."""
    done = threading.Event()

    def shutdown() -> None:
        pool.shutdown(wait=True)
        done.set()

    threading.Thread(target=shutdown, name="executor-shutdown", daemon=True).start()
    return done.wait(SHUTDOWN_DEADLINE)


def stalled_client(port: int, path: str) -> RawConnection:
    conn = RawConnection(port, rcvbuf=CLIENT_RCVBUF, recv_size=KiB)
    conn.send_request("GET", path)
    assert conn.read_head().status == 200  # and then nothing is read
    return conn


def slow_reader(port: int, path: str) -> tuple[bytes, bool]:
    """Read the body 1 KiB every 5 ms until the server ends it; return it and whether it
    ended properly."""
    with RawConnection(port, rcvbuf=CLIENT_RCVBUF, recv_size=KiB) as conn:
        conn.send_request("GET", path)
        reader = conn.body_reader(conn.read_head())
        body = bytearray()
        for _ in range(len(BODY) // KiB + 1):
            data = reader.read(KiB)
            if not data:
                break
            body += data
            time.sleep(0.005)
        return bytes(body), reader.complete


def collect_earlier_garbage(logs: LogRecorder) -> int:
    """Finalize now, unjudged, what earlier tests left to the garbage collector (streams
    on loops they closed, say): a test here judges only the noise of its own streams.

    :return: the index of the first log record the test is judged on.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
    return len(logs.records)


def noise(
    logs: LogRecorder, since: int, srv: ShutdownServer, *, allow: str | None = None
) -> list[str]:
    """ERROR records, asyncio's complaints, and what the loop's exception handler got."""
    gc.collect()  # a leftover future or task complains when it is collected
    records = logs.records[since:]
    found = [record_text(r) for r in records if r.levelno >= logging.ERROR]
    found += [
        record_text(r)
        for r in records
        if r.name == "asyncio" and logging.WARNING <= r.levelno < logging.ERROR
    ]
    found += [
        f"loop exception handler: {context.get('message')!r} {context.get('exception')!r}"
        for context in srv.loop_errors
        if context.get("message") != allow
    ]
    return found


def expected_outcome(name: str) -> str:
    """How a stream's producer must end once nothing will serve it."""
    return "StreamClosedError" if name.startswith("push") else "GeneratorExit"


def assert_in_the_executor(outcomes: dict[str, list[tuple[str, str]]], prefix: str) -> None:
    for name, records in outcomes.items():
        for _, thread in records:
            assert thread.startswith(prefix), f"{name} ended in thread {thread}"


# --------------------------------------------------------------------------- tests


def test_graceful_shutdown_with_streams_in_flight(
    make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    """``HTTPServer.stop()`` + ``close_all_connections()`` with seven streams in flight.

    Push: blocked in write() on the budget, waiting on a flush future, busy outside the
    library, streaming to a slow reader. Generator: parked on the budget, inside next(),
    streaming to a slow reader. After the connections are closed, every push worker gets
    StreamClosedError and returns, every generator is closed at its yield in an executor
    thread, each once; ``executor.shutdown(wait=True)`` returns; every task on the loop
    finishes on its own; nothing is logged as an error and asyncio has nothing to say.
    """
    since = collect_earlier_garbage(logs)
    pool = make_executor(8, "shutdown")
    clients = make_executor(2, "slow-client")
    scenario = Scenario(pool)
    scenario.add("push-on-the-budget", PushOnTheBudget, scenario.stalled)
    scenario.add("push-waiting-on-a-flush", PushWaitingOnAFlush)
    scenario.add("push-busy-elsewhere", PushBusyElsewhere)
    scenario.add("push-to-a-slow-reader", PushToASlowReader, scenario.slow)
    scenario.add("generator-parked", GeneratorParked, scenario.stalled)
    scenario.add("generator-in-next", GeneratorInNext)
    scenario.add("generator-to-a-slow-reader", GeneratorToASlowReader, scenario.slow)
    srv = ShutdownServer(make_app(scenario.routes))
    stalled: list[RawConnection] = []
    try:
        slow = [
            clients.submit(slow_reader, srv.port, f"/{name}")
            for name in scenario.names
            if name.endswith("slow-reader")
        ]
        for name in scenario.names:
            if not name.endswith("slow-reader"):
                stalled.append(stalled_client(srv.port, f"/{name}"))
        for name in ("push-waiting-on-a-flush", "push-busy-elsewhere", "generator-in-next"):
            scenario.rec.wait_for(f"{name}:inside")
        scenario.slow.wait_at_least(256 * KiB)
        scenario.stalled.wait_stable()
        assert not any(scenario.rec.has(name) for name in scenario.names), scenario.rec

        srv.shut_down(close_connections=True)
        for name in scenario.names:
            if name not in ("push-busy-elsewhere", "generator-in-next"):
                scenario.rec.wait_for(name)  # released by the close alone
        scenario.release.set()  # the two at work outside the library now call it again
        outcomes = scenario.outcomes(time.monotonic() + TIMEOUT)
        assert shut_down_executor(pool), "executor.shutdown(wait=True) hung"
        srv.drain()
        for future in slow:
            body, complete = future.result(timeout=TIMEOUT)
            assert not complete, "a cut stream ended as if complete"
            assert body == BODY[: len(body)], "a slow reader got wrong bytes"
    finally:
        scenario.unstick()
        srv.kill()
        for conn in stalled:
            conn.close()
    assert {n: [o for o, _ in r] for n, r in outcomes.items()} == {
        name: [expected_outcome(name)] for name in scenario.names
    }
    assert_in_the_executor(outcomes, "shutdown")
    assert srv.left_pending == [], "tasks still pending after every producer stopped"
    assert noise(logs, since, srv) == []


def close_the_loop_under_streams(
    pool: ThreadPoolExecutor,
) -> tuple[dict[str, list[tuple[str, str]]], bool, ShutdownServer]:
    """The scenario of `test_loop_closed_with_streams_in_flight`, up to the executor's
    shutdown: what the producers did, whether the executor shut down, and the server."""
    scenario = Scenario(pool)
    scenario.add("push-waiting-on-a-flush", PushWaitingOnAFlush)
    scenario.add("push-busy-elsewhere", PushBusyElsewhere)
    scenario.add("push-waiting-on-a-call", PushWaitingOnACall)
    scenario.add("generator-in-next", GeneratorInNext)
    srv = ShutdownServer(make_app(scenario.routes))
    stalled: list[RawConnection] = []
    try:
        stalled = [stalled_client(srv.port, f"/{name}") for name in scenario.names]
        for name in scenario.names:
            scenario.rec.wait_for(f"{name}:inside")
        scenario.stalled.wait_stable()
        assert not any(scenario.rec.has(name) for name in scenario.names), scenario.rec

        srv.shut_down(close_connections=False)
        scenario.release.set()
        outcomes = scenario.outcomes(time.monotonic() + ORPHANS_DEADLINE)
        executor_done = shut_down_executor(pool)
    finally:
        scenario.unstick()
        srv.kill()
        for conn in stalled:
            conn.close()
    return outcomes, executor_done, srv


def test_loop_closed_with_streams_in_flight(
    make_executor: ExecutorFactory, logs: LogRecorder
) -> None:
    """The IOLoop is stopped and closed with the connections open and streams in flight.

    Nothing will ever serve them: a push worker waiting on a flush future, one busy outside
    the library that then writes and waits on a flush, one waiting for a set_header() call
    queued behind a flush, must all get StreamClosedError; a generator inside next() must be
    closed at its next yield, in the executor, once. (A parked generator, which no thread
    waits for, is left suspended, as asyncio leaves the loop's own coroutines: the guides
    say to close the connections first.) Then
    ``executor.shutdown(wait=True)`` returns (a worker left blocked would also hang the
    interpreter's exit), and nothing is logged as an error. (Tasks left pending on the
    closed loop, Tornado's and the library's, may be reported as destroyed: the
    application closed the loop under them.)
    """
    since = collect_earlier_garbage(logs)
    outcomes, executor_done, srv = close_the_loop_under_streams(make_executor(8, "shutdown"))
    # Every problem at once: they have different causes.
    problems = [
        f"{name}: {records or 'nothing'} instead of {expected_outcome(name)} in the executor"
        for name, records in outcomes.items()
        if [o for o, _ in records] != [expected_outcome(name)]
        or not all(thread.startswith("shutdown") for _, thread in records)
    ]
    if not executor_done:
        problems.append("executor.shutdown(wait=True) hung")
    problems += noise(logs, since, srv, allow=DESTROYED_PENDING)
    assert not problems, "\n".join(problems)
