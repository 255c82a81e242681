"""
`SafeWebSocketMixin`: send on a WebSocket from any thread, in order, with bounded memory.

Each connection has a `.Channel`, as a response stream has: senders in any thread `offer`
it messages (`.Message`, encoded in the sender's thread) and control frames
(`.Control`), and a `_Connection` on the loop writes them to the connection's
`~tornado.iostream.IOStream`, a batch at a time. Its budget, ``max_buffer_bytes``,
counts the bytes offered and not yet handed to the socket; an offer that does not fit
meets the handler's ``slow_client`` policy.

The loop side is driven by callbacks, not by one coroutine that awaits each write: it
writes while less than `_WRITE_AHEAD` bytes of its own are in Tornado's buffer, and each
write's completion (a callback) resolves that batch's futures, gives its bytes back to the
budget and writes more. So Tornado's buffer holds at most about `_WRITE_AHEAD` bytes of
queued messages (or the one message bigger than that): a ``close()`` or a ping on the loop
is never stuck behind megabytes. A close asked for from another thread goes out after the
messages queued before it (bounded by the budget) and does not wait for a slow client to
read them: Tornado then closes the connection if the client does not answer in time.

.. warning::

   `_Connection` has a sender face (any thread: `_Connection.send`, `_Connection.evict`,
   `_Connection.dropped`) that touches only the channel (its own lock) and the
   ``_counts``-guarded counters, and a loop face where every attribute is loop-owned.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import functools
import threading
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

from tornado.iostream import IOStream, StreamClosedError
from tornado.log import app_log
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from .._core._channel import Channel
from .._core._ops import Item, Offer
from .._core._words import check_mixin_first
from ._frames import (
    CLOSE,
    PING,
    Control,
    Message,
    MessageFuture,
    WebSocketMessage,
    control_payload,
    encode,
    frame,
)

if TYPE_CHECKING:
    from .._core._inbound import Inbound

    _HandlerBase = WebSocketHandler
else:
    _HandlerBase = object

__all__ = (
    "DEFAULT_MAX_BUFFER_BYTES",
    "SLOW_CLIENT_POLICIES",
    "Outcome",
    "SafeWebSocketMixin",
)

#: ``max_buffer_bytes`` unless the handler says otherwise (the WebSockets guide says why).
DEFAULT_MAX_BUFFER_BYTES = 256 * 1024

SlowClient = Literal["wait", "close", "drop"]
SLOW_CLIENT_POLICIES: tuple[SlowClient, ...] = ("wait", "close", "drop")

#: Bytes of queued messages in Tornado's write buffer at most (one message may be bigger).
_WRITE_AHEAD = 64 * 1024

#: Runs of frames smaller than this, on average, are joined into one stream write.
_JOIN_BELOW = 16 * 1024

#: The close code for a client that fell too far behind (RFC 6455 7.4.1, IANA registry).
TRY_AGAIN_LATER = 1013


class Outcome(enum.Enum):
    """What became of one message offered to one connection."""

    SENT = "sent"  #: queued; it goes out in order
    DROPPED = "dropped"  #: not queued (``slow_client = "drop"``), and counted
    CLOSED = "closed"  #: not queued: the connection is closed (perhaps just now, by policy)


class _Connection:
    """One open connection of a `SafeWebSocketMixin` handler: its channel and loop side."""

    def __init__(
        self, handler: SafeWebSocketMixin, protocol: WebSocketProtocol, stream: IOStream
    ) -> None:
        # Constructed on the loop thread, at the upgrade. Immutable after construction.
        cls = type(handler)
        self.where = cls.__qualname__
        self.channel = Channel(
            asyncio.get_running_loop(), handler, self.where, handler.max_buffer_bytes
        )
        self.loop_thread = self.channel.loop_thread
        self.policy: SlowClient = handler.slow_client
        self.timeout: float | None = handler.slow_client_timeout
        # Private Tornado attribute: WebSocketProtocol13._compressor (Tornado 6.3 to 6.6), the
        # per-message-deflate compressor agreed at the handshake (None without one). It is set
        # before the stream is detached, and never replaced.
        self._compressor: Any = getattr(protocol, "_compressor", None)
        self.compressed = self._compressor is not None

        self._counts = threading.Lock()
        # --- guarded by _counts ---
        self._dropped = 0

        # --- loop-owned ---
        self._handler = handler
        self._protocol = protocol
        self._stream = stream
        self._backlog: collections.deque[Any] = collections.deque()  # taken, not yet written
        self._in_flight = 0  # bytes written to the stream, not yet handed to the socket
        self._hurry = False  # a close from another thread is queued: write up to it now
        self._gone = False  # the connection closed
        self._evicted = False  # closed by the slow-client policy
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<_Connection {self.where} policy={self.policy!r} compressed={self.compressed} "
            f"channel={self.channel!r}>"
        )

    # ------------------------------------------------------------------ sender face

    @property
    def dropped(self) -> int:
        with self._counts:
            return self._dropped

    def send(self, item: Item, *, on_loop: bool) -> Outcome:
        """
        Offer ``item`` under the handler's policy; wake the loop side if it is idle.

        On the loop thread nothing waits: with ``"wait"``, the message is queued over the
        budget, as Tornado's own ``write_message`` would buffer it.
        """
        wait = self.policy == "wait" and not on_loop
        try:
            offered = self.channel.offer(
                item,
                wait=wait,
                timeout=self.timeout if wait else None,
                force=on_loop and self.policy == "wait",
            )
            if offered is Offer.WAKE:
                self.wake(on_loop)
        except StreamClosedError:
            return Outcome.CLOSED
        if offered is not Offer.FULL:
            return Outcome.SENT
        return self.full()

    def wake(self, on_loop: bool) -> None:
        """
        Wake the loop side after `.Offer.WAKE`.

        :raises StreamClosedError: if the loop is closed.
        """
        if on_loop:
            self.channel.wake()
        else:
            self.channel.wake_soon()

    def full(self) -> Outcome:
        """A message did not fit (in time): apply the policy."""
        if self.policy == "drop":
            with self._counts:
                self._dropped += 1
            return Outcome.DROPPED
        self.evict()  # "close", or "wait" past slow_client_timeout
        return Outcome.CLOSED

    def evict(self) -> None:
        """Close the connection with code 1013, from any thread; sends raise from now on."""
        behind = self.channel.pending
        self.channel.close(StreamClosedError())  # and blocked senders wake up
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the connection
            self.channel.loop.call_soon_threadsafe(self._evict, behind)

    def close_soon(self, code: int | None, reason: str | None) -> None:
        """A close from another thread: after what was queued before it; sends raise now."""
        try:
            self.channel.offer(Control(CLOSE, code=code, reason=reason))
        except StreamClosedError:
            return  # closed already, or closing: as Tornado's close(), nothing to do
        self.channel.close(StreamClosedError())
        # _hurry_up runs the loop side, idle or not. A closed loop: so is the connection.
        with contextlib.suppress(RuntimeError):
            self.channel.loop.call_soon_threadsafe(self._hurry_up)

    # --------------------------------------------------------------------- loop face

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(self._ran)

    async def _run(self) -> None:
        channel = self.channel
        try:
            while not self._gone:
                self.pump()
                await channel.wait()
        finally:
            self._gone = True
            channel.close(StreamClosedError())
            self._fail_all()
            channel.detach()

    def _ran(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            app_log.error(
                "%s: the WebSocket's sender failed", self.where, exc_info=task.exception()
            )

    def client_gone(self) -> None:
        """The connection closed (`~tornado.websocket.WebSocketHandler.on_connection_close`)."""
        self._gone = True
        self.channel.close(StreamClosedError())  # senders raise; blocked ones wake up
        self._fail_all()
        self.channel.wake()

    def closed_on_loop(self) -> None:
        """Tornado's ``close()`` was called on the loop: sends from other threads raise."""
        self.channel.close(StreamClosedError())

    def _closing(self) -> bool:
        return self._gone or self._evicted or self._protocol.is_closing()

    def _hurry_up(self) -> None:
        self._hurry = True
        self.pump()

    def _evict(self, behind: int) -> None:
        if self._gone or self._evicted:
            return
        self._evicted = True
        self._fail_all()
        app_log.warning(
            "%s: closed the WebSocket of %s with code 1013 (try again later): it fell %d bytes "
            "behind (max_buffer_bytes=%d, slow_client=%r, slow_client_timeout=%r)",
            self.where,
            self._handler.request.remote_ip,
            behind,
            self.channel.max_buffer_bytes,
            self.policy,
            self.timeout,
        )
        self._handler._safestream_tornado_close(TRY_AGAIN_LATER, "try again later")

    def pump(self) -> None:
        """
        Write queued frames while less than `_WRITE_AHEAD` bytes of ours are in Tornado's
        buffer (without that limit once a close from another thread is queued).
        """
        channel = self.channel
        backlog = self._backlog
        while True:
            if self._closing():
                self._fail_all()
                return
            if not backlog:
                batch = channel.take()
                if batch is None:
                    return  # idle: the next offer wakes _run
                backlog.extend(batch[0])
            if self._in_flight >= _WRITE_AHEAD and not self._hurry:
                return  # _written calls pump again
            group: list[bytes] = []
            size = 0
            nbytes = 0
            futures: list[concurrent.futures.Future[None]] = []
            close: Control | None = None
            while backlog and (self._hurry or self._in_flight + size < _WRITE_AHEAD):
                item = backlog.popleft()
                if type(item) is Message:
                    whole = item.frame if item.frame is not None else self._compress(item)
                    group.append(whole)
                    size += len(whole)
                    nbytes += item.nbytes
                    if item.future is not None:
                        futures.append(item.future)
                elif type(item) is Control and item.kind == PING:
                    group.append(frame(PING, item.data))
                    size += len(group[-1])
                else:
                    assert type(item) is Control, item
                    close = item
                    break
            if group:
                self._write(group, size, nbytes, futures)
            if close is not None:
                self._hurry = False
                self._handler._safestream_tornado_close(close.code, close.reason)

    def _compress(self, item: Message) -> bytes:
        # On the loop, in the order the frames are written: the compressor keeps state from
        # one message to the next. (Private Tornado API: _PerMessageDeflateCompressor.compress.)
        return frame(item.opcode, self._compressor.compress(item.payload), compressed=True)

    def _write(
        self,
        group: list[bytes],
        size: int,
        nbytes: int,
        futures: list[concurrent.futures.Future[None]],
    ) -> None:
        stream = self._stream
        try:
            if len(group) == 1:
                written = stream.write(group[0])
            elif size < _JOIN_BELOW * len(group):
                written = stream.write(b"".join(group))  # small frames: one write
            else:
                for whole in group:  # big ones as they are: Tornado keeps them without a copy
                    written = stream.write(whole)
        except StreamClosedError:
            _resolve(futures, ok=False)
            self.channel.sent(nbytes)
            return
        self._in_flight += size
        written.add_done_callback(functools.partial(self._written, size, nbytes, futures))

    def _written(
        self,
        size: int,
        nbytes: int,
        futures: list[concurrent.futures.Future[None]],
        written: asyncio.Future[None],
    ) -> None:
        # A write completed (or failed: the stream closed, and Tornado retrieved the error).
        ok = not written.cancelled() and written.exception() is None
        self._in_flight -= size
        _resolve(futures, ok)
        self.channel.sent(nbytes)
        if not self._gone:
            self.pump()

    def _fail_all(self) -> None:
        """Fail every queued message: the connection can carry no more."""
        items = list(self._backlog)
        self._backlog.clear()
        while True:
            batch = self.channel.take()
            if batch is None:
                break
            items.extend(batch[0])
        nbytes = 0
        for item in items:
            nbytes += getattr(item, "nbytes", 0)
            future = getattr(item, "future", None)
            if future is not None:
                future.set_exception(WebSocketClosedError())
        if nbytes:
            self.channel.sent(nbytes)


def _resolve(futures: list[concurrent.futures.Future[None]], ok: bool) -> None:
    for future in futures:
        if ok:
            future.set_result(None)
        else:
            future.set_exception(WebSocketClosedError())


class SafeWebSocketMixin(_HandlerBase):
    """
    Makes a `~tornado.websocket.WebSocketHandler` safe to send on from any thread.

    List it before the handler base::

        class Feed(SafeWebSocketMixin, WebSocketHandler):
            max_buffer_bytes = 256 * 1024
            slow_client = "drop"

    ``write_message``, ``close`` and ``ping`` may then be called from any thread. On the
    IOLoop thread they are Tornado's own. From any other thread they are carried out on the
    loop, in the order each thread called them, and:

    - ``write_message`` returns a `concurrent.futures.Future`, done once the frame is handed
      to the socket, failed with `~tornado.websocket.WebSocketClosedError` if the connection
      closed first; it raises ``WebSocketClosedError`` at once if the connection (or its
      loop) is closed already.
    - Bytes queued for the connection and not yet handed to the socket never exceed
      ``max_buffer_bytes`` (a bigger message goes alone). A message that does not fit meets
      ``slow_client``: ``"wait"`` (the sender blocks until it fits; after
      ``slow_client_timeout`` seconds, if set, the connection is closed as with ``"close"``),
      ``"close"`` (the connection is closed with code 1013, "try again later", logged as a
      warning, and the sender gets ``WebSocketClosedError``) or ``"drop"`` (the message is
      not sent, the future returned is cancelled, and `dropped_messages` counts it).

    .. versionadded:: 0.2
    """

    #: Bytes queued for the connection, not yet handed to the socket, at most.
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    #: What a message that does not fit meets: ``"wait"``, ``"close"`` or ``"drop"``.
    slow_client: SlowClient = "wait"
    #: With ``"wait"``: seconds a sender may wait before the connection is closed (1013).
    slow_client_timeout: float | None = None

    # Immutable after __init__: the thread that runs the handler's IOLoop (handlers are
    # created on it).
    _safestream_loop_thread: int | None = None
    # Written once, on the loop thread, at the upgrade, and never replaced. Other threads
    # read it without a lock: one that has not seen it yet takes the connection for not open
    # yet and gets WebSocketClosedError, as from Tornado's write_message() before open().
    _safestream_connection: _Connection | None = None
    # Loop-owned: the messages' inbound channel (`.receive_on_executor` on on_message), once
    # a message came, and whether the connection closed (no channel starts after that).
    _safestream_inbound: Inbound[str | bytes] | None = None
    _safestream_receive_closed = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_mixin_first(cls, SafeWebSocketMixin, WebSocketHandler)
        _check_options(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._safestream_loop_thread = threading.get_ident()
        super().__init__(*args, **kwargs)

    @property
    def dropped_messages(self) -> int:
        """Messages not sent on this connection because of ``slow_client = "drop"``."""
        connection = self._safestream_connection
        return 0 if connection is None else connection.dropped

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued for this connection from any thread, not yet handed to the socket."""
        connection = self._safestream_connection
        return 0 if connection is None else connection.channel.pending

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._safestream_loop_thread

    def write_message(  # type: ignore[override]
        self, message: WebSocketMessage, binary: bool = False
    ) -> asyncio.Future[None] | concurrent.futures.Future[None]:
        """
        Send a message, from any thread.

        On the IOLoop thread, Tornado's own ``write_message``. From another thread, the
        message is queued for the loop, in this thread's order, under ``max_buffer_bytes``
        and the ``slow_client`` policy.

        :param message: ``str`` (sent as UTF-8 text), ``bytes``, ``bytearray`` or
            ``memoryview`` (copied at the call), or a ``dict`` (sent as JSON).
        :param binary: send as a binary message.
        :return: off the loop, a `concurrent.futures.Future` done once the frame is handed
            to the socket (failed with `~tornado.websocket.WebSocketClosedError` if the
            connection closed first; cancelled if ``slow_client = "drop"`` dropped it).
        :raises ~tornado.websocket.WebSocketClosedError: if the connection is closed, not
            open yet, ``close()`` was called, or its loop is closed.
        :raises TypeError: for a message of another type.
        """
        if self._on_loop():
            return super().write_message(message, binary)  # type: ignore[arg-type]
        connection = self._safestream_connection
        if connection is None:
            raise WebSocketClosedError()
        where = f"{connection.where}.write_message"
        payload, opcode = encode(message, binary, where)
        future = MessageFuture(connection.channel.loop)
        whole = None if connection.compressed else frame(opcode, payload)
        outcome = connection.send(Message(payload, opcode, whole, future), on_loop=False)
        if outcome is Outcome.SENT:
            return future
        if outcome is Outcome.DROPPED:
            dropped: concurrent.futures.Future[None] = concurrent.futures.Future()
            dropped.cancel()
            return dropped
        raise WebSocketClosedError()

    def ping(self, data: str | bytes = b"") -> None:
        """
        Send a ping, from any thread, after the messages this thread queued before it.

        :raises ValueError: for more than 125 bytes of ``data``.
        :raises ~tornado.websocket.WebSocketClosedError: once the connection is closed.
        """
        if self._on_loop():
            return super().ping(data)
        connection = self._safestream_connection
        payload = control_payload(data, f"{type(self).__qualname__}.ping")
        if connection is None:
            raise WebSocketClosedError()
        if connection.send(Control(PING, payload), on_loop=False) is not Outcome.SENT:
            raise WebSocketClosedError()
        return None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """
        Close the connection, from any thread, after the messages this thread queued before.

        From then on, every send raises `~tornado.websocket.WebSocketClosedError`.
        """
        connection = self._safestream_connection
        if self._on_loop():
            if connection is not None:
                connection.closed_on_loop()
            return super().close(code, reason)
        if connection is not None:
            connection.close_soon(code, reason)
        return None

    def _safestream_close_in_order(self, code: int | None, reason: str | None) -> None:
        """
        Close after the messages other threads queued so far (any thread): for a worker's
        failure, whose replies before it still go out.
        """
        connection = self._safestream_connection
        if connection is not None:
            connection.close_soon(code, reason)
        elif self._on_loop():
            super().close(code, reason)

    def _safestream_tornado_close(self, code: int | None, reason: str | None) -> None:
        """Tornado's ``close()`` (on the loop), for the connection's loop side."""
        super().close(code, reason)

    def detach(self) -> IOStream:
        # Tornado's WebSocketHandler detaches the stream at the upgrade, on the loop, after the
        # handshake (the compressor is agreed) and before open(): the connection starts here.
        stream = super().detach()
        protocol = self.ws_connection
        if protocol is not None and self._safestream_connection is None:
            connection = _Connection(self, protocol, stream)
            self._safestream_connection = connection
            connection.start()
        return stream

    def on_connection_close(self) -> None:
        # On the loop thread, when the connection closed (either side, or a reset).
        self._safestream_receive_closed = True
        inbound = self._safestream_inbound
        if inbound is not None:
            inbound.abort(WebSocketClosedError())  # queued messages dropped, no more calls
        connection = self._safestream_connection
        if connection is not None:
            connection.client_gone()
        super().on_connection_close()


def _check_options(cls: type[SafeWebSocketMixin]) -> None:
    """The class attributes, checked when the class is created."""
    name = cls.__qualname__
    size = cls.max_buffer_bytes
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(
            f"{name}.max_buffer_bytes must be an int (bytes), not {type(size).__qualname__}"
        )
    if size < 1:
        raise ValueError(f"{name}.max_buffer_bytes must be at least 1, not {size}")
    if cls.slow_client not in SLOW_CLIENT_POLICIES:
        raise ValueError(
            f"{name}.slow_client must be one of {', '.join(map(repr, SLOW_CLIENT_POLICIES))}, "
            f"not {cls.slow_client!r}"
        )
    timeout = cls.slow_client_timeout
    if timeout is not None:
        if not isinstance(timeout, Real) or isinstance(timeout, bool):
            raise TypeError(
                f"{name}.slow_client_timeout must be a number of seconds or None, "
                f"not {type(timeout).__qualname__}"
            )
        if not timeout >= 0:
            raise ValueError(f"{name}.slow_client_timeout must be >= 0, not {timeout}")
