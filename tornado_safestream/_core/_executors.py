"""
Running work in an executor from the loop, without ``loop.run_in_executor()``'s costs.

``run_in_executor`` wraps each task in an asyncio future that the task's thread resolves
through ``call_soon_threadsafe``: a loop wake-up per task, and, on Python 3.9, an error
logged ("exception calling callback") for a task that ends after its loop was closed. Tasks
whose outcome the loop does not await go straight to the executor (`submit`); those it
awaits (`offload`) are bridged with a callback that lets a closed loop be.

For the IOLoop's default executor, that means asyncio's (private) ``_default_executor``
attribute, there once a first ``run_in_executor`` created it: until then, these fall back to
``run_in_executor`` itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Callable, TypeVar

__all__ = ("offload", "submit")

_T = TypeVar("_T")


def _pool(
    loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor | None
) -> concurrent.futures.Executor | None:
    if executor is not None:
        return executor
    pool = getattr(loop, "_default_executor", None)
    return pool if isinstance(pool, concurrent.futures.Executor) else None


def submit(
    loop: asyncio.AbstractEventLoop,
    executor: concurrent.futures.Executor | None,
    task: Callable[[], object],
    done: Callable[[concurrent.futures.Future[object]], None],
) -> None:
    """
    Run ``task`` in ``executor`` (``None``: the loop's default one); ``done`` gets its
    future, in the executor's thread. Called on the loop thread; raises if shut down.
    """
    pool = _pool(loop, executor)
    if pool is not None:
        pool.submit(task).add_done_callback(done)
    else:
        loop.run_in_executor(None, task).add_done_callback(done)  # type: ignore[arg-type]


def offload(
    loop: asyncio.AbstractEventLoop,
    executor: concurrent.futures.Executor | None,
    fn: Callable[[], _T],
) -> asyncio.Future[_T]:
    """``loop.run_in_executor(executor, fn)``, quiet about a loop closed before ``fn`` ends."""
    pool = _pool(loop, executor)
    if pool is None:
        return loop.run_in_executor(None, fn)
    result: asyncio.Future[_T] = loop.create_future()

    def settle(future: concurrent.futures.Future[_T]) -> None:  # in the executor's thread
        def set_state() -> None:
            if result.done():
                return
            if future.cancelled():
                result.cancel()
                return
            error = future.exception()
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(future.result())

        if not future.cancelled():
            future.exception()  # retrieved here: the loop's side decides what to report
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the outcome
            loop.call_soon_threadsafe(set_state)

    pool.submit(fn).add_done_callback(settle)
    return result
