"""
WebSocket messages as the library sends them: encoded once, in the sending thread.

A server's frames are not masked (RFC 6455, 5.1), so a frame's bytes depend only on the
message: the sending thread builds them (`frame`), and a broadcast builds them once for
every connection without per-message compression. With compression a connection's frames
depend on its compressor's state: the loop compresses them, in order (see `._handler`).
"""

from __future__ import annotations

import concurrent.futures
import struct
from typing import Any, Union

from tornado.escape import json_encode, utf8
from tornado.websocket import WebSocketClosedError

from .._core._ops import Item
from .._core._waiting import ProducerFuture

__all__ = (
    "CLOSE",
    "PING",
    "Control",
    "Message",
    "MessageFuture",
    "WebSocketMessage",
    "control_payload",
    "encode",
    "frame",
)

#: What ``write_message`` and ``broadcast`` take, as Tornado's ``write_message`` does (plus
#: ``bytearray`` and ``memoryview``, copied at the call).
WebSocketMessage = Union[str, bytes, bytearray, memoryview, "dict[str, Any]"]

_FIN = 0x80
_RSV1 = 0x40  # per-message deflate (RFC 7692)
_TEXT = 0x1
_BINARY = 0x2
_CLOSE_OPCODE = 0x8
PING = 0x9

#: The kind of a `Control` that closes the connection.
CLOSE = _CLOSE_OPCODE


def encode(message: WebSocketMessage, binary: bool, where: str) -> tuple[bytes, int]:
    """
    The payload and opcode of ``message``, as Tornado's ``write_message`` would send it.

    :raises TypeError: if ``message`` is not text, bytes or a ``dict``; the text names
        ``where``.
    """
    if isinstance(message, dict):
        message = json_encode(message)
    if isinstance(message, str):
        payload = message.encode("utf-8")
    elif type(message) is bytes:
        payload = message
    elif isinstance(message, (bytes, bytearray, memoryview)):
        payload = bytes(message)  # the caller may reuse its buffer
    else:
        raise TypeError(
            f"{where}() takes str, bytes, bytearray, memoryview or dict messages, "
            f"not {type(message).__qualname__}"
        )
    return payload, _BINARY if binary else _TEXT


def frame(opcode: int, payload: bytes, compressed: bool = False) -> bytes:
    """One whole, unmasked frame (a server's): header and payload."""
    first = _FIN | opcode | (_RSV1 if compressed else 0)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, size)
    elif size <= 0xFFFF:
        head = struct.pack("!BBH", first, 126, size)
    else:
        head = struct.pack("!BBQ", first, 127, size)
    return head + payload


def control_payload(data: str | bytes, where: str) -> bytes:
    """
    A ping's payload, checked in the caller's thread.

    :raises ValueError: over 125 bytes (RFC 6455, 5.5), where Tornado would fail on the loop.
    """
    payload = utf8(data)
    if len(payload) > 125:
        raise ValueError(
            f"{where}(): a ping carries at most 125 bytes, not {len(payload)} (RFC 6455, 5.5)"
        )
    return payload


class MessageFuture(ProducerFuture):
    """
    The future of one message sent from another thread: done once its frame is handed to
    the socket, failed with `WebSocketClosedError` if the connection closed first (or its
    loop: then ``result()`` and ``exception()`` say so within `.POLL_SECONDS`).
    """

    def _closed_error(self) -> BaseException:
        return WebSocketClosedError()


class Message(Item):
    """
    One message to send (immutable: a broadcast offers one to many channels).

    ``frame`` is the whole frame, or ``None`` for a connection with per-message
    compression (the loop compresses ``payload``). ``future`` is ``None`` in a broadcast.
    """

    __slots__ = ("frame", "future", "opcode", "payload")

    def __init__(
        self,
        payload: bytes,
        opcode: int,
        whole: bytes | None,
        future: concurrent.futures.Future[None] | None,
    ) -> None:
        super().__init__(len(whole) if whole is not None else len(payload))
        self.payload = payload
        self.opcode = opcode
        self.frame = whole
        self.future = future

    def __repr__(self) -> str:
        return f"<Message opcode={self.opcode} nbytes={self.nbytes}>"


class Control(Item):
    """A ping (``kind`` `PING`, ``data``) or a close (`CLOSE`, ``code``, ``reason``)."""

    __slots__ = ("code", "data", "kind", "reason")

    def __init__(
        self, kind: int, data: bytes = b"", code: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(0)  # never held back by the budget
        self.kind = kind
        self.data = data
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Control {'PING' if self.kind == PING else 'CLOSE'}>"
