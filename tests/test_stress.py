"""1,000 downloads, 32 at a time, every one byte-exact: both styles, every chunk size, slow readers.

The plan is drawn from ``random.Random(PLAN_SEED)``: the same 1,000 downloads on every run,
each described in full (with its place in the plan) in any failure message, so a failure
can be reproduced. The mix covers push style (with a ``flush()`` per chunk, or ``write()``
alone) and generator style; chunks of 1 B to 1 MiB and irregular runs of sizes; bodies
from empty to 4 MiB; chunked and ``Content-Length`` responses; the default
``max_buffer_bytes`` and small ones (the producer is held back on nearly every chunk); and
a minority of slow readers (1 KiB per ``recv`` through a 4 KiB ``SO_RCVBUF``, pausing
between reads).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import random
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    ServerFactory,
    fetch,
    payload,
    record_text,
    sha256,
    split,
)
from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * 1024

PLAN_SEED = 20240611
DOWNLOADS = 1000
CONCURRENCY = 32
#: Threads of the handlers' executor: fewer than the clients, so requests queue for them.
WORKERS = 8

#: ``chunk`` of a plan entry that yields/writes a seeded run of these sizes instead.
IRREGULAR = 0
IRREGULAR_SIZES = (1, 2, 3, 7, 100, 1000, 1023, 4095, 4096, 4097, 16383, 65537, 100_003, 262_147)
#: Chunk sizes and how often each is drawn (IRREGULAR: a mix).
CHUNK_WEIGHTS = {1: 6, 100: 10, KiB: 16, 16 * KiB: 16, 64 * KiB: 18, MiB: 12, IRREGULAR: 22}
#: At most this many chunks per body (bounds the 1 B and 100 B cases).
MAX_CHUNKS = 2048
#: A slow reader's body is at most this big: it takes 1 KiB a read, pausing between reads.
SLOW_MAX_SIZE = 256 * KiB
SLOW_RCVBUF = 4 * KiB
SLOW_RECV = KiB
SLOW_PACE = 0.0002
#: Server SO_SNDBUF: fixed (Linux doubles it), so a slow reader with a bigger body than the
#: kernel's buffers hold pushes back on the server.
SERVER_SNDBUF = 64 * KiB
#: ``max_buffer_bytes`` of the routes: the library's default, and two small budgets.
BUDGETS = {"default": 6, "64k": 3, "4k": 3}
BUDGET_BYTES = {"default": 1 * MiB, "64k": 64 * KiB, "4k": 4 * KiB}


@dataclass(frozen=True)
class Download:
    """One entry of the plan."""

    index: int
    style: str  #: "push" (write + flush per chunk), "push-write-only" or "generator"
    chunk: int  #: bytes per write/yield, or IRREGULAR
    size: int
    framing: str  #: "chunked" or "length" (the handler sets Content-Length)
    reader: str  #: "fast" or "slow"
    budget: str  #: a key of BUDGETS

    @property
    def seed(self) -> int:
        return PLAN_SEED + self.index

    @property
    def path(self) -> str:
        route = "gen" if self.style == "generator" else "push"
        flush = 0 if self.style == "push-write-only" else 1
        length = 1 if self.framing == "length" else 0
        return (
            f"/{route}/{self.budget}?i={self.index}&size={self.size}&seed={self.seed}"
            f"&chunk={self.chunk}&flush={flush}&length={length}"
        )

    def describe(self) -> str:
        chunk = "irregular" if self.chunk == IRREGULAR else f"{self.chunk} B"
        return (
            f"download #{self.index} of the plan random.Random({PLAN_SEED}): {self.style}, "
            f"{self.size} B in {chunk} chunks, {self.framing}, {self.reader} reader, "
            f"max_buffer_bytes={self.budget}, GET {self.path}"
        )


def make_plan(seed: int = PLAN_SEED, count: int = DOWNLOADS) -> list[Download]:
    rng = random.Random(seed)
    chunks, chunk_weights = list(CHUNK_WEIGHTS), list(CHUNK_WEIGHTS.values())
    budgets, budget_weights = list(BUDGETS), list(BUDGETS.values())
    plan = []
    for index in range(count):
        style = rng.choices(["push", "push-write-only", "generator"], [35, 15, 50])[0]
        chunk = rng.choices(chunks, chunk_weights)[0]
        draw = rng.random()
        if draw < 0.02:
            size = 0
        elif draw < 0.25:
            size = rng.randint(1, KiB)
        elif draw < 0.65:
            size = rng.randint(KiB, 64 * KiB)
        elif draw < 0.93:
            size = rng.randint(64 * KiB, 512 * KiB)
        else:
            size = rng.randint(512 * KiB, 4 * MiB)
        if chunk != IRREGULAR:
            size = min(size, chunk * MAX_CHUNKS)
            if size >= chunk and rng.random() < 0.1:  # whole chunks: no short last one
                size = chunk * (size // chunk)
        reader = "slow" if rng.random() < 0.1 else "fast"
        if reader == "slow":
            size = min(size, SLOW_MAX_SIZE)
        framing = "length" if rng.random() < 0.3 else "chunked"
        budget = rng.choices(budgets, budget_weights)[0]
        plan.append(Download(index, style, chunk, size, framing, reader, budget))
    return plan


def pieces(data: bytes, chunk: int, seed: int) -> Iterator[bytes]:
    """``data`` in ``chunk``-byte pieces, or (IRREGULAR) in a seeded run of mixed sizes."""
    if chunk != IRREGULAR:
        yield from split(data, chunk)
        return
    rng = random.Random(seed * 7919)
    start = 0
    while start < len(data):
        end = start + rng.choice(IRREGULAR_SIZES)
        yield data[start:end]
        start = end


class Finished:
    """What the server recorded per plan index: how each producer ended, each ``on_finish``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._finishes: collections.Counter[int] = collections.Counter()
        self._producers: dict[int, list[str]] = collections.defaultdict(list)

    def finished(self, index: int) -> None:
        with self._cond:
            self._finishes[index] += 1
            self._cond.notify_all()

    def producer_ended(self, index: int, how: str) -> None:
        with self._cond:
            self._producers[index].append(how)

    def wait_all(self, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until each of the ``count`` responses was finished on the server."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._finishes) >= count, timeout):
                missing = sorted(set(range(count)) - set(self._finishes))
                raise AssertionError(
                    f"{len(missing)} response(s) never finished on the server: {missing[:20]}"
                )

    def finishes(self) -> dict[int, int]:
        with self._cond:
            return dict(self._finishes)

    def producers(self) -> dict[int, list[str]]:
        with self._cond:
            return {index: list(ends) for index, ends in self._producers.items()}


class Stress(SafeStreamMixin, RequestHandler):
    """Streams ``payload(size, seed)`` as the query string says (see `Download.path`)."""

    def initialize(self, executor: Executor, finished: Finished) -> None:
        self.executor = executor
        self.finished = finished

    def prepare(self) -> None:
        self.index = int(self.get_argument("i"))
        self.size = int(self.get_argument("size"))
        self.seed = int(self.get_argument("seed"))
        self.chunk = int(self.get_argument("chunk"))
        self.flush_each = self.get_argument("flush") == "1"
        self.with_length = self.get_argument("length") == "1"

    def push(self) -> None:
        # From the worker: forwarded to the loop, before the first byte is sent.
        self.set_header("Content-Type", "application/octet-stream")
        if self.with_length:
            self.set_header("Content-Length", str(self.size))
        try:
            for piece in pieces(payload(self.size, self.seed), self.chunk, self.seed):
                self.write(piece)
                if self.flush_each:
                    self.flush()
        except StreamClosedError:
            self.finished.producer_ended(self.index, "client left")
            raise
        self.finished.producer_ended(self.index, "done")

    def generate(self) -> Iterator[bytes]:
        if self.with_length:
            self.set_header("Content-Length", str(self.size))
        try:
            yield from pieces(payload(self.size, self.seed), self.chunk, self.seed)
        except GeneratorExit:
            self.finished.producer_ended(self.index, "client left")
            raise
        self.finished.producer_ended(self.index, "done")

    def on_finish(self) -> None:
        self.finished.finished(self.index)


class PushDefault(Stress):
    @stream_on_executor
    def get(self) -> None:
        self.push()


class Push64K(Stress):
    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> None:
        self.push()


class Push4K(Stress):
    @stream_on_executor(max_buffer_bytes=4 * KiB)
    def get(self) -> None:
        self.push()


class GenDefault(Stress):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield from self.generate()


class Gen64K(Stress):
    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.generate()


class Gen4K(Stress):
    @stream_on_executor(max_buffer_bytes=4 * KiB)
    def get(self) -> Iterator[bytes]:
        yield from self.generate()


HANDLERS: dict[str, type[Stress]] = {
    "push/default": PushDefault,
    "push/64k": Push64K,
    "push/4k": Push4K,
    "gen/default": GenDefault,
    "gen/64k": Gen64K,
    "gen/4k": Gen4K,
}


def expected_framing(entry: Download) -> tuple[str, ...]:
    """How the body must be framed: chunked once anything was flushed before the end."""
    if entry.framing == "length" or entry.size == 0:
        return ("length",)
    if entry.style == "push-write-only":
        # Never flushed before finish() unless over the budget: then Tornado sets the
        # Content-Length, as it does for a handler that writes on the loop. (At exactly the
        # budget, either.)
        budget = BUDGET_BYTES[entry.budget]
        if entry.size < budget:
            return ("length",)
        if entry.size == budget:
            return ("length", "chunked")
    return ("chunked",)


def download(port: int, entry: Download) -> str | None:
    """Run one download of the plan; return what was wrong with it, or None."""
    slow = entry.reader == "slow"
    try:
        response = fetch(
            port,
            entry.path,
            rcvbuf=SLOW_RCVBUF if slow else None,
            recv_size=SLOW_RECV if slow else 65536,
            pace=SLOW_PACE if slow else None,
        )
    except Exception as exc:
        return f"{entry.describe()}: the client failed: {exc!r}"
    problems = []
    if response.status != 200:
        problems.append(f"status {response.status}")
    if not response.complete:
        problems.append("the body did not end properly")
    if response.framing not in expected_framing(entry):
        problems.append(f"framed {response.framing!r}")
    if len(response.body) != entry.size:
        problems.append(f"{len(response.body)} bytes instead of {entry.size}")
    if sha256(response.body) != sha256(payload(entry.size, entry.seed)):
        problems.append("wrong SHA-256")
    return f"{entry.describe()}: {', '.join(problems)}" if problems else None


def assert_every_worker_free(pool: ThreadPoolExecutor, workers: int) -> None:
    """Each of the pool's ``workers`` threads runs a marker task, all at the same time."""
    barrier = threading.Barrier(workers)
    markers = [pool.submit(barrier.wait, TIMEOUT) for _ in range(workers)]
    done, not_done = concurrent.futures.wait(markers, timeout=2 * TIMEOUT)
    failed = [f.exception() for f in done if f.exception() is not None]
    assert not not_done and not failed, (
        f"not all {workers} executor threads were free: {len(not_done)} marker task(s) never "
        f"ran, {failed[:3]!r}"
    )
    assert pool._work_queue.empty(), "the executor's work queue did not drain"


def test_thousand_downloads_32_at_a_time_are_byte_exact(
    server: ServerFactory,
    make_executor: ExecutorFactory,
    logs: LogRecorder,
) -> None:
    """Every download of the plan arrives whole and byte-exact; nothing is left busy or logged."""
    plan = make_plan()
    pool = make_executor(WORKERS, "stress-worker")
    clients = make_executor(CONCURRENCY, "stress-client")
    finished = Finished()
    routes = [
        (f"/{name}", cls, dict(executor=pool, finished=finished)) for name, cls in HANDLERS.items()
    ]
    srv = server(routes, sndbuf=SERVER_SNDBUF)

    runs = [clients.submit(download, srv.port, entry) for entry in plan]
    _, not_done = concurrent.futures.wait(runs, timeout=6 * TIMEOUT)
    assert not not_done, f"{len(not_done)} of {DOWNLOADS} downloads never ended"
    problems = [problem for run in runs if (problem := run.result()) is not None]
    assert not problems, f"{len(problems)} of {DOWNLOADS} downloads went wrong:\n" + "\n".join(
        problems[:20]
    )

    finished.wait_all(DOWNLOADS)
    assert_every_worker_free(pool, WORKERS)
    twice = {index: n for index, n in finished.finishes().items() if n != 1}
    assert not twice, f"responses finished more than once: {twice}"
    # A client closes as soon as it has the whole Content-Length: that producer may hear
    # of it before its end. A chunked body is whole only after the producer's end.
    ends = finished.producers()
    odd = [
        f"{entry.describe()}: producer ended {ends.get(entry.index, [])}"
        for entry in plan
        if ends.get(entry.index) != ["done"]
        and not (entry.framing == "length" and ends.get(entry.index) == ["client left"])
    ]
    assert not odd, "producers that did not end exactly once as expected:\n" + "\n".join(odd[:20])
    noisy = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert not noisy, "logged during the run:\n" + "\n".join(map(record_text, noisy[:5]))

    total = sum(entry.size for entry in plan)
    styles = collections.Counter(entry.style for entry in plan)
    print(f"{DOWNLOADS} downloads, {total} body bytes ({total / MiB:.1f} MiB), {dict(styles)}")
