"""SafeWebSocketMixin end to end: real servers on 127.0.0.1, Tornado's and a third-party client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import queue
import threading
from collections.abc import Callable

import pytest
from helpers import TIMEOUT, Recorder, ServerFactory, payload
from tornado.websocket import (
    WebSocketClosedError,
    WebSocketHandler,
    websocket_connect,
)
from websockets.sync.client import connect
from wsclients import DeflateFeed, Feed, Sender, take

from tornado_safestream import SafeWebSocketMixin


def start_feed(
    server: ServerFactory, handler: type[Feed] = Feed, *, sndbuf: int | None = None
) -> tuple[int, queue.Queue[Feed], Recorder]:
    """A server with ``handler`` at /ws; its handlers come out of the queue as they open."""
    opened: queue.Queue[Feed] = queue.Queue()
    events = Recorder()
    srv = server([("/ws", handler, {"opened": opened, "events": events})], sndbuf=sndbuf)
    return srv.port, opened, events


class TestAnyThread:
    def test_eight_threads_ten_thousand_messages_each(self, server: ServerFactory) -> None:
        port, opened, _ = start_feed(server)
        threads, count = 8, 10_000
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as client:
            (feed,) = take(opened)
            senders = [
                Sender(f"sender-{t}", lambda i, t=t: feed.write_message(f"{t}:{i}"), count).start()
                for t in range(threads)
            ]
            last: dict[int, int] = {}
            seen = 0
            for _ in range(threads * count):
                message = client.recv(timeout=TIMEOUT)
                assert isinstance(message, str)
                thread, number = map(int, message.split(":"))
                assert number == last.get(thread, -1) + 1, (thread, number, last.get(thread))
                last[thread] = number
                seen += 1
            for sender in senders:
                sender.join()
                assert sender.error is None
                # every future is done once its frame is handed to the socket
                concurrent.futures.wait(sender.futures, TIMEOUT)
                assert all(f.done() and f.exception() is None for f in sender.futures)
        assert seen == threads * count
        assert last == dict.fromkeys(range(threads), count - 1)

    def test_on_the_loop_the_methods_are_tornados(self, server: ServerFactory) -> None:
        port, opened, _ = start_feed(server)
        with connect(f"ws://127.0.0.1:{port}/ws") as client:
            (feed,) = take(opened)
            box: queue.Queue[object] = queue.Queue()
            loop = feed._safestream_connection.channel.loop  # type: ignore[union-attr]
            loop.call_soon_threadsafe(lambda: box.put(feed.write_message("on the loop")))
            assert isinstance(box.get(timeout=TIMEOUT), asyncio.Future)
            assert client.recv(timeout=TIMEOUT) == "on the loop"
            off = feed.write_message("off the loop")
            assert isinstance(off, concurrent.futures.Future)
            assert off.result(TIMEOUT) is None
            assert client.recv(timeout=TIMEOUT) == "off the loop"

    def test_ping_and_close_from_a_thread_in_order(self, server: ServerFactory) -> None:
        port, opened, events = start_feed(server)
        with connect(f"ws://127.0.0.1:{port}/ws") as client:
            (feed,) = take(opened)

            def work() -> None:
                for i in range(100):
                    feed.write_message(str(i))
                feed.ping(b"still there?")
                feed.close(4000, "done")

            worker = threading.Thread(target=work)
            worker.start()
            worker.join(TIMEOUT)
            assert [client.recv(timeout=TIMEOUT) for _ in range(100)] == [
                str(i) for i in range(100)
            ]
            with pytest.raises(Exception, match="4000"):
                client.recv(timeout=TIMEOUT)
        assert events.wait_for("on_close") is not None
        # once closed, a send from a thread raises at once
        with pytest.raises(WebSocketClosedError):
            feed.write_message("late")
        with pytest.raises(WebSocketClosedError):
            feed.ping()
        feed.close()  # as Tornado's: nothing left to close

    def test_a_send_after_close_from_another_thread_raises(self, server: ServerFactory) -> None:
        port, opened, _ = start_feed(server)
        with connect(f"ws://127.0.0.1:{port}/ws"):
            (feed,) = take(opened)
            closer = threading.Thread(target=feed.close)
            closer.start()
            closer.join(TIMEOUT)
            with pytest.raises(WebSocketClosedError):
                feed.write_message("after close()")

    def test_bad_messages_fail_in_the_caller(self, server: ServerFactory) -> None:
        port, opened, _ = start_feed(server)
        with connect(f"ws://127.0.0.1:{port}/ws") as client:
            (feed,) = take(opened)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                error = pool.submit(feed.write_message, 42).exception(TIMEOUT)  # type: ignore[arg-type]
                assert isinstance(error, TypeError)
                assert "Feed.write_message() takes str, bytes" in str(error)
                error = pool.submit(feed.ping, b"x" * 126).exception(TIMEOUT)
                assert isinstance(error, ValueError)
                assert "at most 125 bytes" in str(error)
                pool.submit(feed.write_message, "still open").result(TIMEOUT)
            assert client.recv(timeout=TIMEOUT) == "still open"


SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20, 8 << 20]


def messages() -> list[tuple[str | bytes | dict[str, object], bool]]:
    out: list[tuple[str | bytes | dict[str, object], bool]] = [
        ("", False),
        (b"", True),
        ("h\u00e9llo w\u00f6rld \u2603 \U0001f600", False),
        ({"dict": ["as", "json"], "n": 1}, False),
    ]
    for size in SIZES:
        out.append((payload(size, seed=size), True))
        out.append(("x" * size, False))
    return out


def expected(message: str | bytes | dict[str, object]) -> str | bytes:
    return json.dumps(message) if isinstance(message, dict) else message  # as json_encode


def digest(message: str | bytes) -> str:
    data = message.encode() if isinstance(message, str) else message
    return f"{type(message).__name__}:{len(data)}:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "deflate"])
class TestMessages:
    def test_websockets_client(self, server: ServerFactory, compression: bool) -> None:
        port, opened, _ = start_feed(server, DeflateFeed if compression else Feed)
        sent = messages()
        with connect(
            f"ws://127.0.0.1:{port}/ws",
            max_size=None,
            compression="deflate" if compression else None,
        ) as client:
            (feed,) = take(opened)
            assert feed._safestream_connection.compressed is compression  # type: ignore[union-attr]
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                futures = [pool.submit(feed.write_message, m, b) for m, b in sent]
                got = [client.recv(timeout=TIMEOUT) for _ in sent]
                for future in futures:
                    sent_future = future.result(TIMEOUT)
                    assert isinstance(sent_future, concurrent.futures.Future)
                    sent_future.result(TIMEOUT)
        assert list(map(digest, got)) == [digest(expected(m)) for m, _ in sent]

    def test_tornado_client(self, server: ServerFactory, compression: bool) -> None:
        port, opened, _ = start_feed(server, DeflateFeed if compression else Feed)
        sent = messages()

        async def receive() -> list[str | bytes | None]:
            client = await websocket_connect(
                f"ws://127.0.0.1:{port}/ws",
                compression_options={} if compression else None,
                max_message_size=16 << 20,
            )
            try:
                (feed,) = await asyncio.get_running_loop().run_in_executor(None, take, opened)

                def send_all() -> None:
                    for message, binary in sent:
                        feed.write_message(message, binary)

                worker = threading.Thread(target=send_all)
                worker.start()
                got = [await asyncio.wait_for(client.read_message(), TIMEOUT) for _ in sent]
                worker.join(TIMEOUT)
                return got
            finally:
                client.close()

        got = asyncio.run(receive())
        assert [digest(m) for m in got if m is not None] == [digest(expected(m)) for m, _ in sent]
        assert len(got) == len(sent)


class TestMisuse:
    def test_mixin_after_the_handler(self) -> None:
        with pytest.raises(TypeError, match=r"list SafeWebSocketMixin before the WebSocketHandler"):

            class Wrong(WebSocketHandler, SafeWebSocketMixin):  # type: ignore[misc]
                pass

    @pytest.mark.parametrize(
        ("attributes", "error", "match"),
        [
            ({"slow_client": "block"}, ValueError, r"Bad.slow_client must be one of"),
            ({"max_buffer_bytes": 0}, ValueError, r"Bad.max_buffer_bytes must be at least 1"),
            ({"max_buffer_bytes": 1.5}, TypeError, r"Bad.max_buffer_bytes must be an int"),
            ({"slow_client_timeout": "1"}, TypeError, r"Bad.slow_client_timeout must be a"),
            ({"slow_client_timeout": -1}, ValueError, r"Bad.slow_client_timeout must be >= 0"),
        ],
    )
    def test_bad_options_fail_at_class_creation(
        self, attributes: dict[str, object], error: type[Exception], match: str
    ) -> None:
        with pytest.raises(error, match=match):
            type("Bad", (SafeWebSocketMixin, WebSocketHandler), attributes)


def run_in_thread(fn: Callable[[], object]) -> object:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(TIMEOUT)
