"""1,000 downloads cut short by the client at seeded points: nothing leaks, nothing is logged.

Each entry of the plan (``random.Random(PLAN_SEED)``, described in full in any failure
message) brings its producer to a state, then has the client read a number of bytes and
close the connection, with a FIN or with an RST (``SO_LINGER`` 0):

- ``streaming``: the producer runs free (an endless body); the client reads up to 512 KiB at
  full speed and leaves, wherever the producer is at that moment;
- ``stalled``: the client has read nothing more; a push worker is inside a ``write()`` that
  the budget blocks, a generator is parked (suspended after a chunk that filled the budget,
  with no task of its request queued or running in the executor);
- ``waiting``: the producer is in its own code (a generator inside ``next()``) when the
  client leaves, and goes on only once the server saw the connection close;
- ``returned``: the producer has ended; the client leaves before reading the whole body.

The client reads nothing after sending the request, or part of the response head, or the
head and part of the body (which must match the payload byte for byte).

Afterwards: every request's work is done and every executor thread is free, every
generator that started ran its ``finally`` exactly once (in the executor), every push
worker returned or raised `StreamClosedError`, the thread and file descriptor counts are back
at their baseline, traced memory grew by less than `MEMORY_BOUND`, and nothing was logged
at ERROR.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar

from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    RawConnection,
    ServerFactory,
    ServerThread,
    payload,
    record_text,
    split,
)
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

if TYPE_CHECKING:
    from typing import ParamSpec

    P = ParamSpec("P")

T = TypeVar("T")

KiB = 1024
MiB = 1024 * 1024

PLAN_SEED = 20240612
WARM_UP_SEED = 7
ABORTS = 1000
WARM_UP = 64
CONCURRENCY = 32
#: Threads of the handlers' executor: fewer than the clients, so requests queue for them.
WORKERS = 8
#: Server SO_SNDBUF and a stalled client's SO_RCVBUF: fixed and small, so a stalled client
#: holds the producer back after a few KiB.
SERVER_SNDBUF = 16 * KiB
STALLED_RCVBUF = 8 * KiB
STALLED_RECV = 4 * KiB
#: Written (yielded) after the prefix, again and again: bigger than any budget and than
#: what the kernel's buffers hold, so a stalled client blocks (parks) the producer on it.
BIG = payload(MiB + 1, 99)
BIG_REPEATS = 64
#: ``max_buffer_bytes`` of the routes.
BUDGETS = {"4k": 4 * KiB, "64k": 64 * KiB, "default": MiB}
#: The prefix stays under the budget and this: the producer is never held back on it.
MAX_PREFIX = 64 * KiB
PREFIX_CHUNKS = (1, 100, 1000, 4096, 16384)
#: A ``head`` cut reads fewer bytes than any response head here has.
MAX_HEAD_CUT = 63
STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
#: Traced memory the run may leave behind.
MEMORY_BOUND = 8 * MiB


@dataclass(frozen=True)
class Abort:
    """One entry of a plan."""

    plan_seed: int
    index: int  #: also the request's id on the server: unique across plans
    style: str  #: "push" or "generator"
    state: str  #: "streaming", "stalled", "waiting" or "returned"
    budget: str  #: a key of BUDGETS
    prefix: int  #: body bytes produced before the state is reached
    chunk: int  #: the prefix's chunk size
    framing: str  #: "chunked" or "length" (the producer sets Content-Length)
    flush_each: bool  #: push style: flush() after each write()
    swallow: bool  #: push style: return quietly after catching StreamClosedError
    cut: str  #: "request" (read nothing), "head" (part of the head), "body"
    read: int  #: bytes of the head ("head") or of the body ("body") read before closing
    how: str  #: "fin" or "rst"

    @property
    def seed(self) -> int:
        return self.plan_seed + self.index

    @property
    def path(self) -> str:
        route = "gen" if self.style == "generator" else "push"
        return (
            f"/{route}/{self.budget}?i={self.index}&state={self.state}&prefix={self.prefix}"
            f"&chunk={self.chunk}&seed={self.seed}&length={int(self.framing == 'length')}"
            f"&flush={int(self.flush_each)}&swallow={int(self.swallow)}"
        )

    def describe(self) -> str:
        what = {"request": "nothing", "head": f"{self.read} B of the head"}.get(
            self.cut, f"the head and {self.read} B of the body"
        )
        return (
            f"abort #{self.index} of the plan random.Random({self.plan_seed}): {self.style}, "
            f"producer {self.state}, client reads {what} then closes ({self.how}); "
            f"GET {self.path}"
        )

    def expected_body(self) -> bytes:
        return (payload(self.prefix, self.seed) + BIG)[: self.read]


def make_plan(seed: int, count: int, first_index: int = 0) -> list[Abort]:
    rng = random.Random(seed)
    plan = []
    for index in range(first_index, first_index + count):
        style = rng.choice(["push", "generator"])
        state = rng.choices(["streaming", "stalled", "waiting", "returned"], [35, 30, 20, 15])[0]
        budget = rng.choice(list(BUDGETS))
        limit = min(BUDGETS[budget], MAX_PREFIX) - 1
        prefix = 0 if rng.random() < 0.1 else rng.randint(1, limit)
        chunk = rng.choice(PREFIX_CHUNKS if prefix <= 2 * KiB else PREFIX_CHUNKS[1:])
        cut = rng.choices(["request", "head", "body"], [15, 15, 70])[0]
        if style == "generator" and state == "waiting" and prefix == 0:
            cut = "request"  # nothing yielded yet: not even the head was sent
        if cut == "head":
            read = rng.randint(1, MAX_HEAD_CUT)
        elif cut == "request":
            read = 0
        elif state == "streaming":
            read = rng.randint(0, 512 * KiB)
        elif state == "stalled":
            read = rng.randint(0, prefix + 32 * KiB)  # less than a BIG: still stalled
        elif state == "waiting":
            read = rng.randint(0, prefix)  # what was sent before the producer stopped
        else:
            read = rng.randint(0, max(0, prefix - 1))  # less than the whole body
        plan.append(
            Abort(
                seed,
                index,
                style,
                state,
                budget,
                prefix,
                chunk,
                "length" if rng.random() < 0.3 else "chunked",
                rng.random() < 0.6,
                rng.random() < 0.5,
                cut,
                read,
                rng.choice(["fin", "rst"]),
            )
        )
    return plan


class Tracker:
    """What the server did for each request (keyed by plan index), and its executor tasks.

    Clients wait here for their request's producer to reach a state; each request has its
    own condition (sharing one lock), so a change wakes only the client that cares.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # the test thread's final wait
        self._reset()

    def _reset(self) -> None:
        # Warning! Call with _lock held, or from __init__.
        self._conds: dict[int, threading.Condition] = {}
        self._gates: dict[int, threading.Event] = {}
        self.created: set[int] = set()
        self.started: set[int] = set()
        self.marks: dict[int, set[str]] = collections.defaultdict(set)
        self.push_outcomes: dict[int, list[str]] = collections.defaultdict(list)
        self.finally_threads: dict[int, list[str]] = collections.defaultdict(list)
        self.connection_closed: set[int] = set()
        self.finished: set[int] = set()
        self.tasks: collections.Counter[int] = collections.Counter()  # queued or running
        self.submitted: collections.Counter[int] = collections.Counter()
        self.tasks_total = 0
        self.problems: list[str] = []

    def _cond(self, index: int) -> threading.Condition:
        # Warning! Call with _lock held.
        cond = self._conds.get(index)
        if cond is None:
            cond = self._conds[index] = threading.Condition(self._lock)
        return cond

    def _changed(self, index: int) -> None:
        # Warning! Call with _lock held.
        self._cond(index).notify_all()
        self._settled.notify_all()

    def _add(self, index: int, update: Callable[[], None]) -> None:
        with self._lock:
            update()
            self._changed(index)

    def create(self, index: int) -> None:
        self._add(index, lambda: self.created.add(index))

    def start(self, index: int) -> None:
        self._add(index, lambda: self.started.add(index))

    def mark(self, index: int, name: str) -> None:
        self._add(index, lambda: self.marks[index].add(name))

    def push_ended(self, index: int, how: str) -> None:
        self._add(index, lambda: self.push_outcomes[index].append(how))

    def generator_finally(self, index: int) -> None:
        name = threading.current_thread().name
        self._add(index, lambda: self.finally_threads[index].append(name))

    def close(self, index: int) -> None:
        self._add(index, lambda: self.connection_closed.add(index))

    def finish(self, index: int) -> None:
        self._add(index, lambda: self.finished.add(index))

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def task_queued(self, index: int) -> None:
        with self._lock:
            self.tasks[index] += 1
            self.tasks_total += 1
            self.submitted[index] += 1

    def task_done(self, index: int) -> None:
        with self._lock:
            self.tasks[index] -= 1
            self.tasks_total -= 1
            self._changed(index)

    def gate(self, index: int) -> threading.Event:
        with self._lock:
            gate = self._gates.get(index)
            if gate is None:
                gate = self._gates[index] = threading.Event()
            return gate

    def wait(self, index: int, what: str, predicate: Callable[[], bool]) -> None:
        """Wait (at most TIMEOUT) until ``predicate()``, evaluated with the lock held."""
        with self._lock:
            if not self._cond(index).wait_for(predicate, TIMEOUT):
                raise AssertionError(f"the server never got to: {what}")

    def wait_settled(self) -> None:
        """Every request handled is finished, and no executor task is queued or running."""
        with self._lock:
            settled = self._settled.wait_for(
                lambda: self.tasks_total == 0 and self.created <= self.finished, 3 * TIMEOUT
            )
            if not settled:
                raise AssertionError(
                    f"not settled: {self.tasks_total} executor task(s) still queued or "
                    f"running, requests never finished: "
                    f"{sorted(self.created - self.finished)[:20]}"
                )

    def clear(self) -> None:
        """Forget everything (before measuring memory: these are the test's own records)."""
        with self._lock:
            self._reset()


class CountingExecutor(Executor):
    """One request's view of the shared pool: counts that request's tasks until they end."""

    def __init__(self, pool: ThreadPoolExecutor, tracker: Tracker, index: int) -> None:
        self._pool = pool
        self._tracker = tracker
        self._index = index

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        tracker, index = self._tracker, self._index
        tracker.task_queued(index)

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                tracker.task_done(index)

        try:
            return self._pool.submit(run)
        except BaseException:
            tracker.task_done(index)
            raise


def prefix_pieces(size: int, chunk: int, seed: int) -> Iterator[bytes]:
    return split(payload(size, seed), chunk)


class Producer(SafeStreamMixin, RequestHandler):
    """Produces the body a plan entry asks for (see `Abort.path`), recording what it does."""

    def initialize(self, pool: ThreadPoolExecutor, tracker: Tracker) -> None:
        self.tracker = tracker
        self.index = int(self.get_argument("i"))
        self.state = self.get_argument("state")
        self.prefix = int(self.get_argument("prefix"))
        self.chunk = int(self.get_argument("chunk"))
        self.seed = int(self.get_argument("seed"))
        self.with_length = self.get_argument("length") == "1"
        self.flush_each = self.get_argument("flush") == "1"
        self.swallow = self.get_argument("swallow") == "1"
        self.executor = CountingExecutor(pool, tracker, self.index)
        tracker.create(self.index)

    @property
    def endless(self) -> bool:
        return self.state != "returned"

    def content_length(self) -> int:
        return self.prefix + (BIG_REPEATS * len(BIG) if self.endless else 0)

    def wait_at_the_gate(self) -> None:
        self.tracker.mark(self.index, "waiting")
        if not self.tracker.gate(self.index).wait(TIMEOUT):
            self.tracker.problem(f"#{self.index}: the producer's gate never opened")

    def push(self) -> None:
        tracker, index = self.tracker, self.index
        tracker.start(index)
        try:
            if self.with_length:
                self.set_header("Content-Length", str(self.content_length()))
            for piece in prefix_pieces(self.prefix, self.chunk, self.seed):
                self.write(piece)
                if self.flush_each:
                    self.flush()
            if self.state == "waiting":
                self.flush()  # the head and the prefix go out; the worker stops in its own code
                self.wait_at_the_gate()
            if self.endless:
                tracker.mark(index, "big")
                for _ in range(BIG_REPEATS):
                    self.write(BIG)  # blocks while the client does not read
                    if self.flush_each:
                        self.flush()
        except StreamClosedError:
            tracker.push_ended(index, "raised StreamClosedError")
            if self.swallow:
                return
            raise
        except BaseException as error:
            tracker.push_ended(index, f"raised {error!r}")
            raise
        tracker.push_ended(index, "returned")

    def generate(self) -> Iterator[bytes]:
        tracker, index = self.tracker, self.index
        tracker.start(index)
        try:
            if self.with_length:
                self.set_header("Content-Length", str(self.content_length()))
            yield from prefix_pieces(self.prefix, self.chunk, self.seed)
            if self.state == "waiting":
                self.wait_at_the_gate()  # inside next(): the client leaves meanwhile
            if self.endless:
                tracker.mark(index, "big")
                for _ in range(BIG_REPEATS):
                    yield BIG  # fills the budget: parks while the client does not read
            tracker.mark(index, "ended")
        finally:
            tracker.generator_finally(index)

    def on_connection_close(self) -> None:
        self.tracker.close(self.index)
        super().on_connection_close()

    def on_finish(self) -> None:
        self.tracker.finish(self.index)


class Push4K(Producer):
    @stream_on_executor(max_buffer_bytes=4 * KiB)
    def get(self) -> None:
        self.push()


class Push64K(Producer):
    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> None:
        self.push()


class PushDefault(Producer):
    @stream_on_executor
    def get(self) -> None:
        self.push()


class Gen4K(Producer):
    @stream_on_executor(max_buffer_bytes=4 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.generate()


class Gen64K(Producer):
    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.generate()


class GenDefault(Producer):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield from self.generate()


HANDLERS: dict[str, type[Producer]] = {
    "push/4k": Push4K,
    "push/64k": Push64K,
    "push/default": PushDefault,
    "gen/4k": Gen4K,
    "gen/64k": Gen64K,
    "gen/default": GenDefault,
}


def reach_state(entry: Abort, tracker: Tracker) -> None:
    """Wait until the server brought this request's producer to the plan's state."""
    index = entry.index
    marks = tracker.marks  # the predicates run with the tracker's lock held
    if entry.state == "stalled" and entry.style == "push":
        # BIG cannot get through while the client reads nothing, so the write() of it
        # cannot return: from the mark on, the worker is held by the budget.
        tracker.wait(
            index,
            "the worker's write() of a body the budget holds back",
            lambda: "big" in marks[index],
        )
    elif entry.state == "stalled":
        # BIG fills the budget, so the generator is pulled no further: once its request has
        # no task queued or running, it is parked, suspended at that yield.
        tracker.wait(
            index,
            "the generator parked (after a chunk that fills the budget, no task running)",
            lambda: "big" in marks[index] and tracker.tasks[index] == 0,
        )
    elif entry.state == "waiting":
        tracker.wait(
            index, "the producer waiting in its own code", lambda: "waiting" in marks[index]
        )
    elif entry.state == "returned" and entry.style == "push":
        tracker.wait(index, "the push method returned", lambda: bool(tracker.push_outcomes[index]))
    elif entry.state == "returned":
        tracker.wait(index, "the generator ended", lambda: "ended" in marks[index])


def read_then_close(port: int, entry: Abort, tracker: Tracker) -> str | None:
    """Run one entry of the plan; return what was wrong, or None."""
    index = entry.index
    stalled = entry.state != "streaming"
    conn = RawConnection(
        port,
        rcvbuf=STALLED_RCVBUF if stalled else None,
        recv_size=STALLED_RECV if stalled else 65536,
    )
    try:
        conn.send_request("GET", entry.path)
        reach_state(entry, tracker)
        if entry.cut == "head":
            head = bytearray()
            for _ in range(entry.read):
                if len(head) >= entry.read:
                    break
                data = conn.sock.recv(entry.read - len(head))
                if not data:
                    return f"{entry.describe()}: the connection closed inside the head"
                head += data
            if bytes(head[: len(STATUS_LINE)]) != STATUS_LINE[: len(head)]:
                return f"{entry.describe()}: the head began {bytes(head)!r}"
        elif entry.cut == "body":
            response_head = conn.read_head()
            if response_head.status != 200:
                return f"{entry.describe()}: status {response_head.status}"
            body = conn.body_reader(response_head).read_exactly(entry.read)
            if body != entry.expected_body():
                return f"{entry.describe()}: the body read before closing was wrong"
    except Exception as error:
        return f"{entry.describe()}: {error!r}"
    finally:
        conn.close(reset=entry.how == "rst")
        if entry.state == "waiting":
            try:
                # The producer may go on only once the server saw the client leave.
                tracker.wait(
                    index, "on_connection_close", lambda: index in tracker.connection_closed
                )
            finally:
                tracker.gate(index).set()
    return None


def run_plan(port: int, plan: list[Abort], tracker: Tracker, clients: Executor) -> list[str]:
    runs = [clients.submit(read_then_close, port, entry, tracker) for entry in plan]
    _, not_done = concurrent.futures.wait(runs, timeout=6 * TIMEOUT)
    assert not not_done, f"{len(not_done)} of {len(plan)} clients never ended"
    return [problem for run in runs if (problem := run.result()) is not None]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` (for a state no event announces) until true; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.005)


def server_sockets_open(srv: ServerThread) -> int:
    """How many of the server's accepted connections are still open (asked on its loop)."""
    count = srv.run_on_loop(lambda: sum(sock.fileno() != -1 for sock in srv.accepted))
    assert isinstance(count, int)
    return count


def open_fds() -> int | None:
    """Open file descriptors of this process, or None where /proc is not available."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def start_every_thread(pool: ThreadPoolExecutor, workers: int) -> None:
    """Run a marker task on each of the pool's ``workers`` threads at the same time.

    The pool then has all its threads (they are created on demand), and none of them was
    busy: each marker waits for all the others.
    """
    barrier = threading.Barrier(workers)
    markers = [pool.submit(barrier.wait, TIMEOUT) for _ in range(workers)]
    done, not_done = concurrent.futures.wait(markers, timeout=2 * TIMEOUT)
    failed = [f.exception() for f in done if f.exception() is not None]
    assert not not_done and not failed, (
        f"not all {workers} executor threads were free: {len(not_done)} marker task(s) never "
        f"ran, {failed[:3]!r}"
    )
    assert pool._work_queue.empty(), "the executor's work queue did not drain"


def check_outcomes(plan: list[Abort], tracker: Tracker, pool_prefix: str) -> list[str]:
    """What the server recorded for each request, against what its plan entry allows.

    Called once the tracker settled: nothing records any more.
    """
    problems = []
    for entry in plan:
        index = entry.index

        def bad(text: str, entry: Abort = entry) -> None:
            problems.append(f"{entry.describe()}: {text}")

        # The client waited for the producer, or read what only a running stream sends.
        must_run = entry.state != "streaming" or entry.cut != "request"
        if index not in tracker.created:
            if must_run:
                bad("the handler never ran")
            continue
        if entry.style == "push":
            # A push worker always runs: it returns, or hears of the client leaving.
            expected = "returned" if entry.state == "returned" else "raised StreamClosedError"
            if tracker.push_outcomes[index] != [expected]:
                bad(f"the push worker ended {tracker.push_outcomes[index]}, not [{expected!r}]")
        elif index in tracker.started:
            threads = tracker.finally_threads[index]
            if len(threads) != 1:
                bad(f"the generator's finally ran {len(threads)} times")
            elif not threads[0].startswith(pool_prefix):
                bad(f"the generator's finally ran in thread {threads[0]!r}, not the executor")
            if entry.state == "stalled" and tracker.submitted[index] < 2:
                # Parked, it held no thread: closing it took a task of its own.
                bad(f"the parked generator ran in {tracker.submitted[index]} task(s) only")
        elif must_run:
            bad("the generator never started")
        # The stream was running, on an open connection, when the client left.
        running = entry.state != "returned" and entry.cut != "request"
        if running and index not in tracker.connection_closed:
            bad("on_connection_close never ran")
    return problems


def test_thousand_aborted_downloads_leave_nothing_behind(
    server: ServerFactory,
    make_executor: ExecutorFactory,
    logs: LogRecorder,
) -> None:
    """Aborts at every point and in every producer state leave no work, thread, fd or memory.

    The baseline (threads, fds, traced memory) is taken after warm-up aborts on the same
    server with the same executors, once all their threads exist.
    """
    plan = make_plan(PLAN_SEED, ABORTS)
    pool = make_executor(WORKERS, "abort-worker")
    clients = make_executor(CONCURRENCY, "abort-client")
    tracker = Tracker()
    routes = [(f"/{name}", cls, dict(pool=pool, tracker=tracker)) for name, cls in HANDLERS.items()]
    srv = server(routes, sndbuf=SERVER_SNDBUF)

    warm_up_plan = make_plan(WARM_UP_SEED, WARM_UP, first_index=ABORTS)
    warm_up = run_plan(srv.port, warm_up_plan, tracker, clients)
    assert not warm_up, "warm-up aborts went wrong:\n" + "\n".join(warm_up[:10])
    tracker.wait_settled()
    start_every_thread(pool, WORKERS)
    start_every_thread(clients, CONCURRENCY)
    wait_until(lambda: server_sockets_open(srv) == 0, "the warm-up connections to close")
    tracker.clear()
    srv.run_on_loop(srv.accepted.clear)
    gc.collect()
    threads_before = threading.active_count()
    fds_before = open_fds()
    tracing = tracemalloc.is_tracing()  # python -X tracemalloc: leave it on afterwards
    tracemalloc.start()
    try:
        gc.collect()
        memory_before = tracemalloc.get_traced_memory()[0]

        problems = run_plan(srv.port, plan, tracker, clients)
        assert not problems, f"{len(problems)} of {ABORTS} aborts went wrong:\n" + "\n".join(
            problems[:20]
        )

        # No request's work is left: every handler finished, every task it submitted ended.
        tracker.wait_settled()
        start_every_thread(pool, WORKERS)
        assert not tracker.problems, "\n".join(tracker.problems[:20])
        outcomes = check_outcomes(plan, tracker, "abort-worker")
        assert not outcomes, f"{len(outcomes)} requests ended wrongly:\n" + "\n".join(outcomes[:20])
        errors = logs.errors()
        assert not errors, "client disconnects were logged as errors:\n" + "\n".join(
            map(record_text, errors[:5])
        )

        # The server closed every connection: no fd (nor thread) is left over.
        wait_until(lambda: server_sockets_open(srv) == 0, "the server to close its connections")
        if fds_before is not None:  # else no /proc here: fds are not counted
            baseline = fds_before
            wait_until(lambda: (open_fds() or 0) <= baseline, f"the fd count back at {baseline}")
        threads_after = threading.active_count()
        fds_after = open_fds()
        assert threads_after == threads_before, (
            f"{threads_after} threads after the run, {threads_before} before: "
            f"{[t.name for t in threading.enumerate()]}"
        )
        assert fds_after == fds_before, f"{fds_after} fds after the run, {fds_before} before"

        summary = summarize(plan, tracker)
        tracker.clear()
        srv.run_on_loop(srv.accepted.clear)
        gc.collect()
        memory_after = tracemalloc.get_traced_memory()[0]
        growth = memory_after - memory_before
        top = ""
        if growth >= MEMORY_BOUND:
            stats = tracemalloc.take_snapshot().statistics("lineno")[:10]
            top = "\n".join(str(stat) for stat in stats)
        assert growth < MEMORY_BOUND, f"traced memory grew by {growth} bytes:\n{top}"
    finally:
        if not tracing:
            tracemalloc.stop()
    print(
        f"{summary}; threads {threads_before} -> {threads_after}, fds {fds_before} -> "
        f"{fds_after}, traced memory {memory_before} -> {memory_after} (+{growth} B)"
    )


def summarize(plan: list[Abort], tracker: Tracker) -> str:
    by = collections.Counter((entry.style, entry.state) for entry in plan)
    cuts = collections.Counter(entry.cut for entry in plan)
    hows = collections.Counter(entry.how for entry in plan)
    outcomes = collections.Counter(o for runs in tracker.push_outcomes.values() for o in runs)
    generators = [e.index for e in plan if e.style == "generator"]
    started = sum(1 for index in generators if index in tracker.started)
    finallies = sum(len(tracker.finally_threads[index]) for index in generators)
    return (
        f"{len(plan)} aborts: {dict(sorted(by.items()))}, cuts {dict(cuts)}, {dict(hows)}; "
        f"handlers run {len(tracker.created)}, push outcomes {dict(outcomes)}, "
        f"generators {len(generators)}: started {started}, finally blocks run {finallies}"
    )
