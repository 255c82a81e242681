"""`broadcast`: one message to many `.SafeWebSocketMixin` connections, from any thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import NamedTuple

from tornado.iostream import StreamClosedError

from .._core._channel import Channel
from .._core._ops import Offer
from ._frames import Message, WebSocketMessage, encode, frame
from ._handler import Outcome, SafeWebSocketMixin, _Connection

__all__ = ("BroadcastResult", "broadcast")


class BroadcastResult(NamedTuple):
    """
    What `broadcast` did, in connections.

    .. versionadded:: 0.2
    """

    #: queued for sending (each goes out in order, as a ``write_message`` would)
    sent: int
    #: skipped by their ``slow_client = "drop"`` policy (and counted in ``dropped_messages``)
    dropped: int
    #: closed already, not open yet, or closed now by their policy (``"close"``, or
    #: ``"wait"`` past ``slow_client_timeout``)
    closed: int


def broadcast(
    handlers: Iterable[SafeWebSocketMixin], message: WebSocketMessage, binary: bool = False
) -> BroadcastResult:
    """
    Send ``message`` to every connection in ``handlers``, from any thread.

    The message is encoded once, and framed once for all the connections without
    per-message compression (those with it compress it on the loop, each in turn). Each
    connection's ``slow_client`` policy applies on its own: the connections with room get
    the message first, with one loop wake-up for all of them; then the sender waits for the
    ``"wait"`` connections that are full, one after another, so one slow client never
    delays the others. On the IOLoop thread nothing waits: a full ``"wait"`` connection
    takes the message over its ``max_buffer_bytes``, as Tornado's ``write_message`` would
    buffer it (the same in any thread that runs an event loop).

    Returns once the message is queued for every connection (or not, by policy); its frames
    reach the sockets as each connection's loop writes them.

    :param handlers: `.SafeWebSocketMixin` handlers (an open connection each, or not yet
        open, or closed: those count as ``closed``).
    :param message: ``str`` (sent as UTF-8), ``bytes``, ``bytearray``, ``memoryview``, or
        a ``dict`` (sent as JSON), as for ``write_message``.
    :param binary: send a binary frame instead of a text frame.
    :raises TypeError: if ``message`` is not one of those, or a handler is not a
        `.SafeWebSocketMixin` (before anything is sent).

    .. versionadded:: 0.2
    """
    payload, opcode = encode(message, binary, "broadcast")
    connections: list[_Connection | None] = []
    for handler in handlers:
        if not isinstance(handler, SafeWebSocketMixin):
            raise TypeError(
                f"broadcast() sends to SafeWebSocketMixin handlers, not to "
                f"{type(handler).__qualname__}: list SafeWebSocketMixin first in its bases"
            )
        # Written once on the loop, never replaced: see SafeWebSocketMixin.
        connections.append(handler._safestream_connection)

    # One item for every connection that shares the frame, one for those that compress.
    plain: Message | None = None
    deflate: Message | None = None
    me = threading.get_ident()
    in_a_loop = _running_a_loop()
    sent = dropped = closed = 0
    to_wake: dict[asyncio.AbstractEventLoop, tuple[int, list[Channel]]] = {}
    full: list[tuple[_Connection, Message]] = []
    for connection in connections:
        if connection is None:
            closed += 1
            continue
        if connection.compressed:
            item = deflate = deflate or Message(payload, opcode, None, None)
        else:
            item = plain = plain or Message(payload, opcode, frame(opcode, payload), None)
        on_loop = in_a_loop or connection.loop_thread == me  # then nothing may wait
        try:
            offered = connection.channel.offer(item, force=on_loop and connection.policy == "wait")
        except StreamClosedError:
            closed += 1
            continue
        if offered is Offer.FULL:
            if connection.policy == "wait":
                full.append((connection, item))  # after the others
                continue
            outcome = connection.full()
            if outcome is Outcome.DROPPED:
                dropped += 1
            else:
                closed += 1
            continue
        sent += 1
        if offered is Offer.WAKE:
            loop = connection.channel.loop
            to_wake.setdefault(loop, (connection.loop_thread, []))[1].append(connection.channel)

    for loop, (loop_thread, channels) in to_wake.items():
        if loop_thread == me:
            _wake_all(channels)
            continue
        try:
            loop.call_soon_threadsafe(_wake_all, channels)
        except RuntimeError:  # the loop is closed: nothing will send these
            sent -= len(channels)
            closed += len(channels)

    for connection, item in full:  # only off the loops: on_loop forces "wait" offers
        outcome = connection.send(item, on_loop=False)
        if outcome is Outcome.SENT:
            sent += 1
        elif outcome is Outcome.DROPPED:
            dropped += 1
        else:
            closed += 1
    return BroadcastResult(sent, dropped, closed)


def _running_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _wake_all(channels: list[Channel]) -> None:
    # On the loop thread: one callback wakes every idle connection of this loop.
    for channel in channels:
        channel.wake()
