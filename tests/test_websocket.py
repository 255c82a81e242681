"""SafeWebSocketMixin end to end: real servers on 127.0.0.1, Tornado's and a third-party client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import hashlib
import json
import queue
import threading
from collections.abc import Callable

import pytest
from helpers import TIMEOUT, LogRecorder, Recorder, ServerFactory, make_app, payload
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketHandler,
    websocket_connect,
)
from websockets.sync.client import connect
from wsclients import (
    CLOSE,
    TEXT,
    DeflateFeed,
    Feed,
    RawWebSocket,
    Sender,
    close_client,
    close_code,
    feed_class,
    take,
)

from tornado_safestream import BroadcastResult, SafeWebSocketMixin, broadcast


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
                await close_client(client)

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


# --------------------------------------------------------------------------- slow clients

CAP = 64 * 1024
#: Small socket buffers on both sides, so that a client that stops reading is felt at once.
SMALL_BUFFER = 4096


def numbered(i: int, size: int = 1024) -> str:
    return f"{i:08d}".ljust(size, "x")


def number(message: bytes | str) -> int:
    return int(message[:8])


class Peak:
    """The most bytes a connection had queued, sampled after each send (any thread)."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._lock = threading.Lock()
        self.value = 0

    def sample(self) -> None:
        buffered = self._feed.buffered_bytes
        with self._lock:
            self.value = max(self.value, buffered)


def stalled_sender(feed: Feed, count: int = 100_000) -> tuple[Sender, Peak]:
    peak = Peak(feed)

    def send(i: int) -> object:
        future = feed.write_message(numbered(i))
        peak.sample()
        return future

    return Sender("stalled-sender", send, count).start(), peak


def read_until_close(client: RawWebSocket, limit: int = 100_000) -> tuple[list[int], int | None]:
    """The numbers of the text messages, then the close frame's code (the close answered)."""
    numbers: list[int] = []
    for _ in range(limit):
        opcode, data = client.read_frame()
        if opcode == CLOSE:
            client.send_frame(CLOSE, data[:2])
            return numbers, close_code(data)
        if opcode == TEXT:
            numbers.append(number(data))
    raise AssertionError(f"no close frame after {limit} frames")


class TestSlowClients:
    def test_wait_blocks_the_sender_within_the_cap(self, server: ServerFactory) -> None:
        port, opened, events = start_feed(
            server, feed_class("Wait", max_buffer_bytes=CAP), sndbuf=SMALL_BUFFER
        )
        with RawWebSocket(port, "/ws", rcvbuf=SMALL_BUFFER) as slow:
            (slow_feed,) = take(opened)
            with connect(f"ws://127.0.0.1:{port}/ws") as fast:
                (fast_feed,) = take(opened)
                sender, peak = stalled_sender(slow_feed)
                sender.stable_count()
                assert sender.thread.is_alive(), "the sender should be blocked, not done"
                assert 0 < slow_feed.buffered_bytes <= CAP
                # other connections keep going while this one is stuck
                count = 2000
                other = Sender("fast-sender", lambda i: fast_feed.write_message(str(i)), count)
                other.start()
                assert [fast.recv(timeout=TIMEOUT) for _ in range(count)] == [
                    str(i) for i in range(count)
                ]
                other.join()
                assert sender.thread.is_alive()
                # the client leaves: the blocked sender wakes up with WebSocketClosedError
                slow.close(reset=True)
                sender.join()
        assert isinstance(sender.error, WebSocketClosedError)
        assert peak.value <= CAP
        events.wait_for("on_close")
        outcomes = [f.exception(TIMEOUT) for f in sender.futures]
        assert all(e is None or isinstance(e, WebSocketClosedError) for e in outcomes)
        assert slow_feed.buffered_bytes == 0

    @pytest.mark.parametrize(
        "attributes",
        [{"slow_client": "close"}, {"slow_client": "wait", "slow_client_timeout": 0.2}],
        ids=["close", "wait-timeout"],
    )
    def test_close_with_1013(
        self, server: ServerFactory, logs: LogRecorder, attributes: dict[str, object]
    ) -> None:
        handler = feed_class("Closing", max_buffer_bytes=CAP, **attributes)
        port, opened, events = start_feed(server, handler, sndbuf=SMALL_BUFFER)
        with RawWebSocket(port, "/ws", rcvbuf=SMALL_BUFFER) as slow:
            (slow_feed,) = take(opened)
            sender, peak = stalled_sender(slow_feed)
            sender.join()
            assert isinstance(sender.error, WebSocketClosedError)
            assert peak.value <= CAP
            record = logs.wait_for_record(lambda r: "1013" in r.getMessage())
            assert record.levelname == "WARNING"
            assert (
                "Closing: closed the WebSocket of 127.0.0.1 with code 1013" in record.getMessage()
            )
            with pytest.raises(WebSocketClosedError):
                slow_feed.write_message("after the close")
            # the client catches up: what was sent, in order, then the close frame
            numbers, code = read_until_close(slow)
        assert code == 1013
        assert numbers == list(range(len(numbers)))
        assert len(numbers) <= sender.sent  # those already in Tornado's buffer still go out
        events.wait_for("on_close")
        outcomes = [f.exception(TIMEOUT) for f in sender.futures]
        assert outcomes[: len(numbers)] == [None] * len(numbers)
        assert all(isinstance(e, WebSocketClosedError) for e in outcomes[len(numbers) :])

    def test_drop_counts_and_never_blocks(self, server: ServerFactory) -> None:
        handler = feed_class("Drop", max_buffer_bytes=CAP, slow_client="drop")
        port, opened, events = start_feed(server, handler, sndbuf=SMALL_BUFFER)
        count = 2000
        with RawWebSocket(port, "/ws", rcvbuf=SMALL_BUFFER) as slow:
            (slow_feed,) = take(opened)
            sender, peak = stalled_sender(slow_feed, count)
            sender.join()  # never blocked
            assert sender.error is None
            dropped = [i for i, f in enumerate(sender.futures) if f.cancelled()]
            assert slow_feed.dropped_messages == len(dropped) > 0
            assert peak.value <= CAP
            received = []
            for _ in range(count - len(dropped)):
                opcode, data = slow.read_frame()
                assert opcode == TEXT
                received.append(number(data))
            assert received == sorted(set(range(count)) - set(dropped))
            assert all(f.result(TIMEOUT) is None for f in sender.futures if not f.cancelled())
        events.wait_for("on_close")


# --------------------------------------------------------------------------- broadcast


class TestBroadcast:
    def test_four_threads_to_a_hundred_connections(self, server: ServerFactory) -> None:
        port, opened, _ = start_feed(server)
        clients, threads, count = 100, 4, 200
        results: list[BroadcastResult] = []
        results_lock = threading.Lock()

        def send(feeds: list[Feed], t: int, i: int) -> None:
            result = broadcast(feeds, f"{t}:{i}")
            with results_lock:
                results.append(result)

        async def run() -> list[dict[int, int]]:
            connections = [
                await websocket_connect(f"ws://127.0.0.1:{port}/ws") for _ in range(clients)
            ]
            try:
                feeds = await asyncio.get_running_loop().run_in_executor(
                    None, take, opened, clients
                )
                senders = [
                    Sender(f"broadcaster-{t}", functools.partial(send, feeds, t), count).start()
                    for t in range(threads)
                ]

                async def receive(connection: WebSocketClientConnection) -> dict[int, int]:
                    last: dict[int, int] = {}
                    for _ in range(threads * count):
                        message = await asyncio.wait_for(connection.read_message(), TIMEOUT)
                        assert isinstance(message, str)
                        t, i = map(int, message.split(":"))
                        assert i == last.get(t, -1) + 1
                        last[t] = i
                    return last

                got = await asyncio.gather(*map(receive, connections))
                for sender in senders:
                    sender.join()
                    assert sender.error is None
                return got
            finally:
                await asyncio.gather(*map(close_client, connections))

        got = asyncio.run(run())
        assert got == [dict.fromkeys(range(threads), count - 1)] * clients
        assert results == [BroadcastResult(sent=clients, dropped=0, closed=0)] * (threads * count)

    def test_compressed_and_plain_connections_each_get_their_frames(
        self, server: ServerFactory
    ) -> None:
        port, opened, _ = start_feed(server, DeflateFeed)
        sent = messages()
        with (
            connect(f"ws://127.0.0.1:{port}/ws", max_size=None, compression=None) as plain,
            connect(f"ws://127.0.0.1:{port}/ws", max_size=None, compression="deflate") as zipped,
        ):
            feeds = take(opened, 2)
            assert sorted(f._safestream_connection.compressed for f in feeds) == [False, True]  # type: ignore[union-attr]

            def send_all() -> list[BroadcastResult]:
                return [broadcast(feeds, m, binary=b) for m, b in sent]

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                results = pool.submit(send_all)
                got = {
                    name: [client.recv(timeout=TIMEOUT) for _ in sent]
                    for name, client in (("plain", plain), ("zipped", zipped))
                }
                assert results.result(TIMEOUT) == [BroadcastResult(2, 0, 0)] * len(sent)
        want = [digest(expected(m)) for m, _ in sent]
        assert [digest(m) for m in got["plain"]] == want
        assert [digest(m) for m in got["zipped"]] == want

    def test_each_connection_meets_its_own_policy(
        self, server: ServerFactory, logs: LogRecorder
    ) -> None:
        routes: dict[str, tuple[type[Feed], queue.Queue[Feed]]] = {
            name: (feed_class(name, max_buffer_bytes=CAP, slow_client=policy), queue.Queue())
            for name, policy in (("Drop", "drop"), ("Close", "close"), ("Fine", "wait"))
        }
        events = Recorder()
        srv = server(
            [
                (f"/{name}", cls, {"opened": q, "events": events})
                for name, (cls, q) in routes.items()
            ],
            sndbuf=SMALL_BUFFER,
        )
        port = srv.port
        with (
            RawWebSocket(port, "/Drop", rcvbuf=SMALL_BUFFER) as dropping,
            RawWebSocket(port, "/Close", rcvbuf=SMALL_BUFFER),
            connect(f"ws://127.0.0.1:{port}/Fine") as fine,
        ):
            feeds = [take(q)[0] for _, q in routes.values()]
            count = 300
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                results = pool.submit(lambda: [broadcast(feeds, numbered(i)) for i in range(count)])
                # the reading client gets every message, whatever the stalled ones do
                assert [number(fine.recv(timeout=TIMEOUT)) for _ in range(count)] == list(
                    range(count)
                )
                outcome = results.result(TIMEOUT)
            drop_feed = feeds[0]
            dropped = sum(r.dropped for r in outcome)
            assert dropped == drop_feed.dropped_messages > 0
            closed_at = next(i for i, r in enumerate(outcome) if r.closed)
            assert all(r.closed == 1 for r in outcome[closed_at:])
            assert sum(r.sent for r in outcome) == count + (count - dropped) + closed_at
            logs.wait_for_record(lambda r: "Close: closed the WebSocket" in r.getMessage())
            # the dropping client still gets what was not dropped, in order
            received = [number(dropping.read_frame()[1]) for _ in range(count - dropped)]
            assert received == sorted(received)
            assert len(set(received)) == count - dropped

    def test_closed_and_unopened_connections_count_as_closed(self, server: ServerFactory) -> None:
        port, opened, events = start_feed(server)
        with connect(f"ws://127.0.0.1:{port}/ws") as client:
            (feed,) = take(opened)
        events.wait_for("on_close")
        assert run_in_thread(lambda: broadcast([feed], "gone")) == BroadcastResult(0, 0, 1)
        assert broadcast([], "nobody") == BroadcastResult(0, 0, 0)
        del client

    def test_not_a_mixin_handler_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match=r"broadcast\(\) sends to SafeWebSocketMixin handlers"):
            broadcast([object()], "x")  # type: ignore[list-item]
        with pytest.raises(TypeError, match=r"broadcast\(\) takes str, bytes"):
            broadcast([], 3.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- lifecycle


class TestLifecycle:
    def test_server_stopped_under_blocked_senders(
        self, server: ServerFactory, logs: LogRecorder
    ) -> None:
        opened: queue.Queue[Feed] = queue.Queue()
        events = Recorder()
        handler = feed_class("Stopping", max_buffer_bytes=CAP)
        srv = server([("/ws", handler, {"opened": opened, "events": events})], sndbuf=SMALL_BUFFER)
        with (
            RawWebSocket(srv.port, "/ws", rcvbuf=SMALL_BUFFER),
            RawWebSocket(srv.port, "/ws", rcvbuf=SMALL_BUFFER),
        ):
            senders = [stalled_sender(feed)[0] for feed in take(opened, 2)]
            for sender in senders:
                sender.stable_count()
                assert sender.thread.is_alive()
            srv.stop()
            for sender in senders:
                sender.join()
                assert isinstance(sender.error, WebSocketClosedError)
                for future in sender.futures:
                    error = future.exception(TIMEOUT)
                    assert error is None or isinstance(error, WebSocketClosedError)
        assert not [r for r in logs.records if "never retrieved" in r.getMessage()]

    def test_loop_closed_under_blocked_senders(self, logs: LogRecorder) -> None:
        """No cancellation, no close of the connections: the loop just stops and closes."""
        opened: queue.Queue[Feed] = queue.Queue()
        events = Recorder()
        handler = feed_class("Abandoned", max_buffer_bytes=CAP)
        app = make_app([("/ws", handler, {"opened": opened, "events": events})])
        ready: queue.Queue[tuple[asyncio.AbstractEventLoop, int]] = queue.Queue()
        stop = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            sockets = bind_sockets(0, "127.0.0.1")

            async def main() -> None:
                http = HTTPServer(app)
                http.add_sockets(sockets)
                ready.put((loop, sockets[0].getsockname()[1]))
                await loop.run_in_executor(None, stop.wait, TIMEOUT)
                http.stop()

            loop.run_until_complete(main())
            loop.close()  # tasks left pending, connections left open

        thread = threading.Thread(target=serve, name="abandoned-loop")
        thread.start()
        loop, port = ready.get(timeout=TIMEOUT)
        with RawWebSocket(port, "/ws", rcvbuf=SMALL_BUFFER) as client:
            (feed,) = take(opened)
            sender, _ = stalled_sender(feed)
            sender.stable_count()
            assert sender.thread.is_alive()
            stop.set()
            thread.join(TIMEOUT)
            assert loop.is_closed()
            sender.join()  # woken within POLL_SECONDS
            assert isinstance(sender.error, WebSocketClosedError)
            for future in sender.futures:
                error = future.exception(TIMEOUT)
                assert error is None or isinstance(error, WebSocketClosedError)
            with pytest.raises(WebSocketClosedError):
                feed.write_message("the loop is closed")
            client.close(reset=True)
            # What the abandoned loop leaves behind is the test's to clean up, here and now:
            # the server's side of the connection, and the loop's pending tasks (asyncio logs
            # "Task was destroyed but it is pending!" as they are collected).
            protocol = feed.ws_connection
            assert protocol is not None and protocol.stream is not None
            protocol.stream.socket.close()
        del feed, protocol, sender, loop, opened
        gc.collect()
        assert not [r for r in logs.records if "never retrieved" in r.getMessage()]
