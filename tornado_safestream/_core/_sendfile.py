"""
Zero copy: a range of an open file, handed to a stream and sent with ``os.sendfile``.

A generator-style producer may yield a `FileRange` instead of bytes (`.SafeStaticFileHandler`
does, for the default ``get_content``). The channel carries it in order with the chunks; it
holds the stream's whole read-ahead budget until it is sent, so the producer parks meanwhile.
The consumer, on the loop, then:

1. flushes what came before it and waits until the stream has written all of it;
2. takes the socket over if the connection allows it (`send_range`): plain HTTP/1.1 over
   Tornado's own `~tornado.iostream.IOStream` (not ``SSLIOStream``), a ``Content-Length``
   body (not chunked), no output transform (gzip), and the stream's write buffer empty;
3. sends bursts of at most `BURST_BYTES` with ``os.sendfile`` in the executor, each until
   the socket's buffer is full; between bursts the loop waits for the socket to become
   writable, and no thread is held;
4. gives the socket back before anything else is written;

and where it cannot (or ``sendfile`` refuses the first byte), it reads the range in the
executor and writes it as chunks. A client that leaves stops the bursts; the consumer closes
the range's descriptor (a duplicate: the producer closes its own file whenever it likes).

While it has the socket, Tornado does not write to it: the handler's output goes through the
consumer, which is busy with the range, and the stream's write buffer is empty. Tornado may
still read (to notice a closed connection) or close its socket; the bursts write to a
duplicate of the descriptor, so a close never lets them reach another file that got its
number.

Private Tornado attributes relied on (read with defaults; where one is missing or of another
type, nothing is taken over and the range is read and written instead). Checked against the
source of Tornado 6.3.3 and 6.6.1, and exercised on both by ``tests/test_static_files.py``
(``TestZeroCopy`` asserts that ``sendfile`` carried the body):

- ``HTTP1Connection._chunking_output`` (``bool``): ``False`` once the headers are written
  with a ``Content-Length`` (the body goes out as it is, not framed in chunks);
- ``HTTP1Connection._expected_content_remaining`` (``int``, or ``None`` without a
  ``Content-Length``): the body bytes Tornado still expects. Each burst subtracts what it
  sent, as ``HTTP1Connection.write`` does, so that Tornado's ``finish()`` sees the body
  complete (and a short one still fails there);
- ``RequestHandler._transforms``: the output transforms of the request (gzip); the range is
  sent as it is only when there are none.

Public Tornado API used: ``IOStream.socket``, ``IOStream.writing()``, ``IOStream.closed()``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Callable, Protocol, TypeVar

from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream, StreamClosedError

if TYPE_CHECKING:
    from tornado.web import RequestHandler

__all__ = ("BURST_BYTES", "FileRange", "FileShrankError", "Offload", "can_send_file", "send_range")

_T = TypeVar("_T")

#: The most one ``sendfile`` burst sends (one writability event's worth, at most): a bound
#: on how long a worker is busy with one client at a time.
BURST_BYTES = 4 * 1024 * 1024

_sendfile: Callable[[int, int, int, int], int] | None = getattr(os, "sendfile", None)

#: ``sendfile`` does not work for this pair of descriptors: read and write instead.
_UNSUPPORTED = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in ("EINVAL", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "ENOTSOCK", "EOVERFLOW")
    )
    if code is not None
)
#: The client went away.
_GONE = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in ("EPIPE", "ECONNRESET", "ECONNABORTED", "ENOTCONN", "ESHUTDOWN")
    )
    if code is not None
)


class Offload(Protocol):
    """Runs a function in the stream's executor; awaited on the loop."""

    def __call__(self, fn: Callable[[], _T], /) -> Awaitable[_T]: ...


class FileShrankError(OSError):
    """A file ended before the bytes its response promised (``Content-Length``)."""

    def __init__(self, name: str, sent: int, length: int) -> None:
        super().__init__(
            f"{name} ended after {sent} of the {length} bytes its response promised (the file "
            "shrank while it was being sent): response cut short"
        )


class FileRange:
    """
    ``count`` bytes of an open file from ``offset``: a piece of a body sent without reading
    it into memory (see the module docstring).

    It holds its own duplicate of the descriptor, owned by whoever holds the range: the
    producer until it yields it, then the channel and the consumer, which `close` it once
    sent or dropped. Once the consumer has it, it is loop-owned, and `run` is how a task
    in the executor uses the descriptor: a `close` while one runs (the stream cancelled
    under it) waits for it to end.
    """

    __slots__ = ("_busy", "count", "fd", "name", "offset")

    def __init__(self, fd: int, offset: int, count: int, name: str) -> None:
        if offset < 0 or count < 0:
            raise ValueError(f"FileRange({name!r}): offset and count must be >= 0")
        self.fd = os.dup(fd)
        self.offset = offset
        self.count = count
        self.name = name
        self._busy: asyncio.Future[object] | None = None  # loop-owned: a task using fd

    def __repr__(self) -> str:
        return f"<FileRange {self.name} offset={self.offset} count={self.count} fd={self.fd}>"

    def close(self) -> None:
        """Close the descriptor (idempotent). A read-only descriptor's close does no I/O."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _close_after(self._busy, fd)

    async def run(self, offload: Offload, fn: Callable[[], _T]) -> _T:
        """On the loop: run ``fn`` (which uses `fd`) in the executor, and return its result."""
        future = asyncio.ensure_future(offload(fn))
        self._busy = future  # type: ignore[assignment]
        try:
            # Shielded: cancelled, we stop waiting, but the task still has the descriptor.
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._busy = None


def _close_after(busy: asyncio.Future[object] | None, fd: int) -> None:
    """Close ``fd`` now, or once the executor task ``busy`` that uses it is done."""
    if busy is None or busy.done():
        os.close(fd)
    else:
        busy.add_done_callback(lambda _: os.close(fd))


def can_send_file(handler: RequestHandler) -> bool:
    """
    Whether ``handler``'s response body may go out with ``sendfile``, as far as the request
    tells (on the loop, before the response starts; `send_range` checks the rest).
    """
    connection = handler.request.connection
    return (
        _sendfile is not None
        and handler.request.method != "HEAD"
        and not getattr(handler, "_transforms", True)  # private: see the module docstring
        and type(connection) is HTTP1Connection
        and type(getattr(connection, "stream", None)) is IOStream
    )


def _sendable(handler: RequestHandler, count: int) -> tuple[HTTP1Connection, IOStream] | None:
    """The connection and stream to take over for ``count`` body bytes, if it can be now."""
    connection = handler.request.connection
    if _sendfile is None or not isinstance(connection, HTTP1Connection):
        return None
    stream = getattr(connection, "stream", None)
    remaining = getattr(connection, "_expected_content_remaining", None)
    if (
        type(stream) is not IOStream
        or getattr(connection, "_chunking_output", None) is not False
        or type(remaining) is not int
        or remaining < count
        or getattr(handler, "_transforms", True)
        or handler._write_buffer
        or stream.closed()
        or stream.writing()
        or type(connection) is not HTTP1Connection
    ):
        return None
    return connection, stream


async def send_range(
    handler: RequestHandler, piece: FileRange, offload: Offload, stop: asyncio.Future[None]
) -> int:
    """
    Send ``piece`` to ``handler``'s socket with ``sendfile``, a burst at a time (loop thread).

    Call it once the stream wrote everything before the range.

    :param offload: runs each burst in the executor.
    :param stop: done when the stream is aborted (the client left): the bursts stop.
    :return: the bytes sent: ``piece.count``, or fewer (possibly 0) if the connection does
        not allow ``sendfile`` or it stopped working; the caller sends the rest another way.
    :raises StreamClosedError: if the client left (or ``stop`` is done).
    :raises FileShrankError: if the file ended early.
    :raises OSError: if reading the file failed.
    """
    taken = _sendable(handler, piece.count)
    if taken is None:
        return 0
    connection, stream = taken
    loop = asyncio.get_running_loop()
    # A duplicate: Tornado may close its socket (the client left) while a burst runs.
    out = os.dup(stream.socket.fileno())
    sent = 0
    try:
        while sent < piece.count:
            want = min(piece.count - sent, BURST_BYTES)
            burst = functools.partial(_burst, out, piece.fd, piece.offset + sent, want)
            try:
                count, end_of_file = await piece.run(offload, burst)
            except OSError as error:
                if error.errno in _GONE:
                    raise StreamClosedError(real_error=error) from None
                if error.errno in _UNSUPPORTED and sent == 0:
                    return 0
                raise
            sent += count
            # Private (see the module docstring): as HTTP1Connection.write() counts a write.
            remaining = connection._expected_content_remaining
            assert remaining is not None  # checked by _sendable(); only we write meanwhile
            connection._expected_content_remaining = remaining - count
            if stop.done():
                raise StreamClosedError()
            if sent == piece.count:
                break
            if end_of_file:
                raise FileShrankError(piece.name, sent, piece.count)
            if count < want:  # the socket's buffer is full: wait, holding no thread
                try:
                    writable = await _writable(loop, out, stop)
                except NotImplementedError:  # an event loop without add_writer()
                    return sent
                if not writable:
                    raise StreamClosedError()
        return sent
    finally:
        _close_after(piece._busy, out)  # a burst may still be running if we were cancelled


def _burst(out: int, fd: int, offset: int, count: int) -> tuple[int, bool]:
    """
    In the executor: ``sendfile`` until ``count`` bytes are sent or the socket is full.

    :return: the bytes sent, and whether the file ended first.
    """
    assert _sendfile is not None
    sent = 0
    while sent < count:
        try:
            n = _sendfile(out, fd, offset + sent, count - sent)
        except BlockingIOError:
            return sent, False
        except OSError:
            if sent:  # report what went out; the error comes back on the next burst
                return sent, False
            raise
        if n == 0:
            return sent, True
        sent += n
    return sent, False


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Future[None]) -> bool:
    """Wait until ``fd`` is writable (``True``) or ``stop`` is done (``False``)."""
    ready: asyncio.Future[None] = loop.create_future()

    def on_writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, on_writable)
    try:
        await asyncio.wait((ready, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_writer(fd)
        if not ready.done():
            ready.cancel()
    return not stop.done()
