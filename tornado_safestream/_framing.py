"""
Chunked framing done by the library, so that a streamed body is copied once, not three times.

Tornado's ``HTTP1Connection`` frames each flush of a chunked response as
``b"%x\r\n" % len(chunk) + chunk + b"\r\n"``: two more copies of every byte, on the loop.
After a stream's first flush (headers and first chunk framed by Tornado), its consumer takes
the framing over: it turns the connection's chunking off and wraps the handler's pending
output in the chunk header and trailer, which Tornado's ``flush()`` joins with the payload
in its one copy. The last chunk (``0\r\n\r\n``) goes with the flush that ``finish()``
makes, so a response cut short by an error never ends with it.

Only where Tornado chunks the response, over its own ``HTTP1Connection``, and no output
transform (gzip) changes the body; everywhere else Tornado frames it, as usual. This relies
on ``HTTP1Connection._chunking_output``, present from Tornado 6.3 to 6.6 at least; without
it nothing is taken over.

.. warning::

   Loop thread only: these read and write the handler's and the connection's output state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tornado.http1connection import HTTP1Connection

if TYPE_CHECKING:
    from tornado.web import RequestHandler

__all__ = ("frame", "take_over_framing")

_LAST_CHUNK = b"0\r\n\r\n"


def take_over_framing(handler: RequestHandler) -> bool:
    """
    Just after the first flush: take the chunked framing over from Tornado, if it frames.

    :return: whether the handler's output must be framed by `frame` from now on.
    """
    connection = handler.request.connection
    if (
        handler._transforms
        or type(connection) is not HTTP1Connection
        or getattr(connection, "_chunking_output", None) is not True
    ):
        return False
    connection._chunking_output = False
    return True


def frame(handler: RequestHandler, last: bool) -> None:
    """Wrap the handler's pending output in one chunk (and the last chunk, if ``last``)."""
    pending = handler._write_buffer
    size = sum(map(len, pending))
    framed = [b"%x\r\n" % size, *pending, b"\r\n"] if size else []
    if last:
        framed.append(_LAST_CHUNK)
    handler._write_buffer = framed
