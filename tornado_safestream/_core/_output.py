"""
The library's own output path, after a stream's first flush: one copy of the body at most,
and never two copies of a whole flush at once.

Tornado's ``RequestHandler.flush()`` joins the handler's buffered chunks into one ``bytes``
(a copy of every byte; until the flush returns, the chunks and the copy are both alive), and
``HTTP1Connection`` frames a chunked response as ``b"%x\r\n" % len(chunk) + chunk +
b"\r\n"``: two more copies. After a stream's first flush (the headers, and the first chunk,
framed by Tornado), its consumer takes the output over: a flush hands the stream pieces of
about `PIECE_BYTES` (big chunks as they are, which ``IOStream`` keeps as views; runs of
small ones joined), letting go of each chunk as soon as it is in a piece, and frames a
chunked response itself, one chunk header per flush. The last chunk (``0\r\n\r\n``) goes
with the flush that ``finish()`` makes, so a response cut short by an error never ends with
it.

Only over Tornado's own ``HTTP1Connection``, for a response with no output transform (gzip
changes the body) that is not an answer to HEAD; everywhere else Tornado's ``flush()``
does it, as usual. This relies on ``HTTP1Connection._chunking_output`` and
``HTTP1Connection._pending_write``, present from Tornado 6.3 to 6.6 at least; without them
nothing is taken over. (A flush also reads ``_expected_content_remaining``, to refuse one
that overruns the ``Content-Length`` as a whole, as Tornado's ``flush()`` does.)

.. warning::

   Loop thread only: these read and write the handler's and the connection's output state.
"""

from __future__ import annotations

import threading
from asyncio import Future
from typing import TYPE_CHECKING

from tornado.concurrent import chain_future
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPOutputError
from tornado.iostream import StreamClosedError

if TYPE_CHECKING:
    from tornado.web import RequestHandler

__all__ = ("PIECE_BYTES", "Output", "take_over")

_LAST_CHUNK = b"0\r\n\r\n"

#: The size of the pieces a flush hands to the stream: small enough that a flush never
#: holds a second copy of much, big enough that the per-write cost (a send(), a future and
#: a loop callback) is nothing next to the bytes'.
PIECE_BYTES = 1024 * 1024


class Output:
    """How a taken-over response is written: see `take_over`."""

    __slots__ = ("_chunked", "_connection", "loop_thread")

    def __init__(self, connection: HTTP1Connection, chunked: bool) -> None:
        self._connection = connection
        self._chunked = chunked  # the library frames the chunks
        self.loop_thread = threading.get_ident()  # made on the loop

    def flush(self, handler: RequestHandler, last: bool) -> Future[None]:
        """
        What ``handler.flush()`` does, a piece at a time instead of one copy of everything.

        :param last: ``finish()``'s flush: end a chunked body with the last chunk.
        :return: a future resolved once every byte written so far is handed to the socket,
            or failed with `.StreamClosedError` if the connection closes first.
        """
        pending = handler._write_buffer
        handler._write_buffer = []
        size = sum(map(len, pending))
        remaining = getattr(self._connection, "_expected_content_remaining", None)
        if remaining is not None and size > remaining and not self._connection.stream.closed():
            # As Tornado's flush: none of a flush that overruns the Content-Length is sent,
            # or its first pieces could fill the body exactly and pass it off as complete.
            self._connection.stream.close()
            raise HTTPOutputError("Tried to write more data than Content-Length")
        if self._chunked:
            if size:
                pending = [b"%x\r\n" % size, *pending, b"\r\n"]
            if last:
                pending.append(_LAST_CHUNK)
        # Chunks of PIECE_BYTES or more go to the stream as they are; runs of smaller ones
        # are joined into pieces of about PIECE_BYTES. Each chunk is let go of as soon as it
        # is in a piece: at no time are two copies of the whole flush alive.
        pending.reverse()
        run: list[bytes] = []
        run_size = 0
        future: Future[None] | None = None
        while pending:
            chunk = pending.pop()
            if len(chunk) >= PIECE_BYTES:
                if run:
                    future = self._write(b"".join(run))
                    run, run_size = [], 0
                future = self._write(chunk)
            else:
                run.append(chunk)
                run_size += len(chunk)
                if run_size >= PIECE_BYTES:
                    future = self._write(b"".join(run))
                    run, run_size = [], 0
            del chunk
            if future is not None and future.done() and future.exception() is not None:
                return future  # the stream is closed: its StreamClosedError
        if run or future is None:
            # (Nothing to write: b"" resolves once what the stream holds is written.)
            future = self._write(b"".join(run))
            if future.done() and future.exception() is not None:
                return future
        # Each write replaced the connection's write future, and the first write to complete
        # would resolve the latest one: the stream's own future of the last write is the
        # one that means "all of it". We return a future of our own: cancelling it (say,
        # with the request) must not cancel the stream's, which Tornado's callbacks wait on,
        # and, as with Tornado's, its error needs no one to retrieve it (finish() returns
        # one that no one awaits).
        done: Future[None] = Future()
        chain_future(self._connection._pending_write, done)  # type: ignore[arg-type]
        done.add_done_callback(_retrieved)
        return done

    def _write(self, piece: bytes) -> Future[None]:
        stream = self._connection.stream
        if stream.closed():
            # Not HTTP1Connection.write(): on a closed stream it makes its write future a
            # failed one, which the pending _on_write_complete of an earlier piece (its
            # stream future failed by the close) then resolves again: InvalidStateError,
            # logged by asyncio as "Exception in callback".
            failed: Future[None] = Future()
            failed.set_exception(StreamClosedError(real_error=stream.error))
            failed.exception()
            return failed
        return self._connection.write(piece)


def _retrieved(future: Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def take_over(handler: RequestHandler) -> Output | None:
    """
    Just after the first flush: take the output over from Tornado, where it can be.

    :return: what ``handler.flush()`` must call from now on, or ``None`` for Tornado's own.
    """
    connection = handler.request.connection
    if (
        handler._transforms
        or handler.request.method == "HEAD"
        or type(connection) is not HTTP1Connection
        or type(getattr(connection, "_chunking_output", None)) is not bool
        or getattr(connection, "_pending_write", None) is None
    ):
        return None
    chunked = connection._chunking_output
    connection._chunking_output = False
    return Output(connection, chunked)
