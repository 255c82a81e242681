"""What a stream accepts as a chunk, and how it becomes bytes."""

from __future__ import annotations

from typing import Union

from ._words import a_type

__all__ = ("Chunk", "to_bytes")

#: What a generator-style method may yield. ``str`` is sent as UTF-8.
Chunk = Union[bytes, bytearray, memoryview, str]


def to_bytes(chunk: object, where: str) -> bytes:
    """
    Return ``chunk`` as ``bytes`` that nobody else can change.

    ``bytes`` pass through untouched; a ``bytearray`` or ``memoryview`` is copied, so the
    producer may reuse its buffer as soon as this returns; ``str`` is encoded as UTF-8.

    :param where: the producing method (``"Export.get"``), named in the error.
    :raises TypeError: if ``chunk`` is none of those.
    """
    if type(chunk) is bytes:  # the common case first: no copy, one type check
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(
        f"{where}() yielded {a_type(chunk)}; a stream's chunks must be "
        "bytes, bytearray, memoryview or str"
    )
