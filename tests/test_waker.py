"""The waker: many streams' wake-ups from producer threads cost the loop one callback."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tornado_safestream._core._waker import Waker, waker_for

TIMEOUT = 10.0


def test_wake_ups_before_the_loop_runs_share_one_callback() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        waker = Waker(loop)
        woken: list[str] = []
        done = asyncio.Event()

        def wake_all() -> None:  # a producer thread, waking three streams' consumers
            for name in ("a", "b", "c"):
                waker.wake(lambda name=name: woken.append(name))  # type: ignore[misc]
            waker.wake(done.set)  # the callbacks run on the loop, in order

        thread = threading.Thread(target=wake_all)
        thread.start()
        thread.join(TIMEOUT)
        assert "due=4 scheduled=True" in repr(waker)  # one callback scheduled for all four
        await asyncio.wait_for(done.wait(), TIMEOUT)
        assert repr(waker) == "<Waker due=0 scheduled=False>"
        return woken

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_a_closed_loop_raises_and_keeps_nothing() -> None:
    loop = asyncio.new_event_loop()
    waker = waker_for(loop)
    assert waker_for(loop) is waker  # one per loop
    loop.close()
    for _ in range(2):
        with pytest.raises(RuntimeError):
            waker.wake(lambda: None)
    assert repr(waker) == "<Waker due=0 scheduled=False>"
