"""The channel on its own: order, budget, parking, closing, as each side sees it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import Callable, TypeVar

import pytest
from tornado.iostream import StreamClosedError

from tornado_safestream._core._channel import Channel
from tornado_safestream._core._ops import FLUSH, Call, End, Op, Put

T = TypeVar("T")
TIMEOUT = 10.0


def run(body: Callable[[Channel], Awaitable[T]], max_buffer_bytes: int = 100) -> T:
    """Run ``body`` on a fresh loop with a channel bound to it."""

    async def main() -> T:
        channel = Channel(asyncio.get_running_loop(), object(), "H.get", max_buffer_bytes)
        try:
            return await asyncio.wait_for(body(channel), TIMEOUT)
        finally:
            channel.detach()  # a producer thread still blocked must not outlive the test

    return asyncio.run(main())


async def in_thread(function: Callable[[], T]) -> T:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, function)


class TestProducerSide:
    def test_writes_arrive_in_order_with_flushes_before_calls(self) -> None:
        async def body(channel: Channel) -> list[Op]:
            def produce() -> None:
                channel.write(b"a")
                channel.flush()
                channel.write(b"b")
                channel.end(None)

            await in_thread(produce)
            batch = channel.take()
            assert batch is not None
            ops, flush, future = batch
            assert not flush  # the end took the requested flush along, in its place
            assert future is not None
            return ops

        ops = run(body)
        assert ops[:3] == [b"a", b"b", FLUSH]
        assert isinstance(ops[3], End) and ops[3].error is None

    def test_write_after_finish_raises_as_tornado_does(self) -> None:
        async def body(channel: Channel) -> None:
            channel.mark_finished()
            with pytest.raises(RuntimeError, match=r"^Cannot write\(\) after finish\(\)$"):
                await in_thread(lambda: channel.write(b"x"))
            flushed = await in_thread(channel.flush)
            assert flushed.done()  # nothing left to send

        run(body)

    def test_write_after_close_raises_stream_closed_with_the_cause(self) -> None:
        cause = OSError("reset")

        async def body(channel: Channel) -> None:
            channel.close(StreamClosedError(real_error=cause))
            with pytest.raises(StreamClosedError) as raised:
                await in_thread(lambda: channel.write(b"x"))
            assert raised.value.real_error is cause
            assert await in_thread(lambda: channel.put(b"x")) is Put.CLOSED

        run(body)

    def test_call_returns_the_loops_result(self) -> None:
        async def body(channel: Channel) -> object:
            result = asyncio.ensure_future(in_thread(lambda: channel.call("m", (1,), {"k": 2})))
            while (batch := channel.take()) is None:
                await channel.wait()
            (call,) = batch[0]
            assert isinstance(call, Call)
            assert (call.name, call.args, call.kwargs) == ("m", (1,), {"k": 2})
            call.future.set_result("done")
            return await result

        assert run(body) == "done"


class TestBudget:
    def test_write_blocks_over_budget_until_sent(self) -> None:
        async def body(channel: Channel) -> None:
            released = threading.Event()

            def produce() -> None:
                channel.write(b"x" * 60)
                channel.write(b"x" * 60)  # 120 > 100: blocks
                released.set()

            producing = asyncio.ensure_future(in_thread(produce))
            taken: list[object] = []
            for _ in range(4):  # at most: wait, the first write, wait, the second
                batch = channel.take()
                if batch is None:
                    await channel.wait()
                    continue
                taken += batch[0]
                if len(taken) == 2:
                    break
            assert len(taken) == 2
            assert not released.is_set()
            channel.sent(60)  # 60 pending: under the budget again
            await producing
            assert released.is_set()

        run(body)

    def test_close_wakes_a_blocked_writer(self) -> None:
        async def body(channel: Channel) -> None:
            producing = asyncio.ensure_future(in_thread(lambda: channel.write(b"x" * 101)))
            while channel.take() is None:
                await channel.wait()
            channel.close(StreamClosedError())
            with pytest.raises(StreamClosedError):
                await producing

        run(body)

    def test_put_says_full_at_the_budget_and_park_waits_for_a_resume(self) -> None:
        async def body(channel: Channel) -> None:
            assert await in_thread(lambda: channel.put(b"x" * 60)) is Put.MORE
            assert await in_thread(lambda: channel.put(b"x" * 40)) is Put.FULL
            assert "parked=False" in repr(channel)  # not before the producer let go
            assert await in_thread(channel.park)
            assert "parked=True" in repr(channel)
            assert not channel.sent(0)  # still full
            assert channel.sent(1)  # resume, once
            assert not channel.sent(1)

        run(body)

    def test_park_refuses_when_the_budget_freed_up_meanwhile(self) -> None:
        async def body(channel: Channel) -> None:
            assert await in_thread(lambda: channel.put(b"x" * 100)) is Put.FULL
            assert not channel.sent(50)  # nobody parked yet: no resume from here
            assert not await in_thread(channel.park)  # so the producer pulls on itself

        run(body)

    def test_close_resumes_a_parked_producer_so_it_can_close_its_generator(self) -> None:
        async def body(channel: Channel) -> None:
            assert await in_thread(lambda: channel.put(b"x" * 100)) is Put.FULL
            assert await in_thread(channel.park)
            assert channel.close(StreamClosedError())
            assert not channel.close(StreamClosedError())  # once
            assert not await in_thread(channel.park)  # closed: close the generator now

        run(body)


class TestConsumerSide:
    def test_take_marks_idle_and_the_next_write_wakes_wait(self) -> None:
        async def body(channel: Channel) -> None:
            assert channel.take() is None
            waiting = asyncio.ensure_future(channel.wait())
            await in_thread(lambda: channel.write(b"x"))
            await waiting
            batch = channel.take()
            assert batch is not None and batch[0] == [b"x"]

        run(body)

    def test_detach_fails_a_queued_call_and_refuses_new_ones(self) -> None:
        async def body(channel: Channel) -> None:
            assert channel.take() is None  # idle: the call below wakes us
            calling = asyncio.ensure_future(in_thread(lambda: channel.call("m", (), {})))
            await channel.wait()
            channel.detach()
            with pytest.raises(StreamClosedError):
                await calling
            with pytest.raises(StreamClosedError):
                await in_thread(lambda: channel.call("m", (), {}))

        run(body)

    def test_detach_fails_an_untaken_flush(self) -> None:
        async def body(channel: Channel) -> None:
            flushed = await in_thread(channel.flush)
            channel.detach()
            assert isinstance(flushed.exception(timeout=0), StreamClosedError)

        run(body)

    def test_repr_shows_the_state(self) -> None:
        async def body(channel: Channel) -> str:
            await in_thread(lambda: channel.write(b"x" * 7))
            return repr(channel)

        assert run(body) == (
            "<Channel H.get pending=7/100 reserved=100 ops=1 closed=False finished=False "
            "parked=False>"
        )
