from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Route,
    ServerFactory,
    ServerThread,
    make_app,
)
from hypothesis import Phase, settings

from tornado_safestream.memory import memory_stats

# Property tests: "ci" (bounded, reproducible, no example database) is what a plain `pytest`
# runs; "soak" explores: `pytest --hypothesis-profile=soak tests/test_properties.py`.
settings.register_profile(
    "ci",
    max_examples=50,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # a failure is reported promptly
)
settings.register_profile(
    "soak", settings.get_profile("ci"), max_examples=2000, derandomize=False, phases=list(Phase)
)
settings.load_profile("ci")


@pytest.fixture
def make_executor() -> Iterator[ExecutorFactory]:
    """Executors shut down at teardown; a worker still busy after TIMEOUT fails the test."""
    made: list[ThreadPoolExecutor] = []

    def make(max_workers: int = 4, name: str = "test-worker") -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers, thread_name_prefix=name)
        made.append(pool)
        return pool

    yield make
    threads: list[threading.Thread] = []
    for pool in made:
        threads.extend(pool._threads)
        pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"executor threads still busy at teardown: {stuck}"


@pytest.fixture
def executor(make_executor: ExecutorFactory) -> ThreadPoolExecutor:
    return make_executor(4, "test-worker")


@pytest.fixture
def server(make_executor: ExecutorFactory) -> Iterator[ServerFactory]:
    """Start real servers (127.0.0.1, ephemeral port, own loop thread); all stopped at teardown.

    It depends on ``make_executor`` so that servers stop (closing their
    connections, which releases workers) before executors are shut down.
    """
    started: list[ServerThread] = []

    def start(
        routes: Sequence[Route],
        *,
        default_executor: Executor | None = None,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
        **settings: object,
    ) -> ServerThread:
        srv = ServerThread(
            make_app(routes, **settings),
            default_executor=default_executor,
            sndbuf=sndbuf,
            rcvbuf=rcvbuf,
        )
        started.append(srv)
        srv.start()
        return srv

    yield start
    errors: list[BaseException] = []
    for srv in reversed(started):
        try:
            srv.stop()
        except BaseException as exc:  # stop them all, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def logs() -> Iterator[LogRecorder]:
    """Every log record from every thread during the test."""
    with LogRecorder() as recorder:
        yield recorder


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switch threads every 10 us instead of 5 ms, so that thread races show up in small tests.

    Against the classic broken pattern (write in the worker, ``add_callback(self.flush)``), four
    concurrent 1 MiB downloads in 64-byte chunks then came out corrupted in 4 of 5 runs here.
    """
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.fixture(scope="session", autouse=True)
def no_stream_left_in_the_memory_cap() -> Iterator[None]:
    """Every stream of the run gave its bytes back to the process-wide cap, and left it."""
    yield
    gc.collect()  # streams left behind on closed loops give their bytes back when collected
    stats = memory_stats()
    assert (stats.held, stats.streams, stats.waiting) == (0, 0, 0), stats
