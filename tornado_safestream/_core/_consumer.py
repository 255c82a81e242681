"""
The consumer: the loop side of a stream, which does every ``write`` and ``flush``.

It drains the channel a batch at a time: every chunk queued since the last batch goes into
the handler's buffer, then one ``flush()``, awaited before the next. (Tornado's
``HTTP1Connection`` resolves only its latest write future: a second flush issued while one
is pending would leave the first pending for ever.) The producer wakes it only when it is
idle, so a fast producer costs one loop wake-up per batch, not per chunk.

A `.FileRange` in the channel is sent by `._sendfile.send_range` (``sendfile`` bursts in the
executor) where the connection allows it, else read in the executor and written here.

.. warning::

   Everything here runs on the IOLoop thread, and every attribute is loop-owned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import struct
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from tornado.iostream import StreamClosedError
from tornado.log import app_log

from ._calls import FLUSHING_METHODS
from ._channel import Channel
from ._ops import FLUSH, Call, End, Op
from ._output import PIECE_BYTES, take_over
from ._readahead import ReadAhead
from ._sendfile import FileRange, FileShrankError, Offload, send_range
from ._stats import StreamStats

if TYPE_CHECKING:
    from .._http._mixin import SafeStreamMixin

__all__ = ("Consumer", "ignore_outcome")

#: The producer's calls that must go through the mixin's versions (see _output).
_FRAMING_AWARE = {"flush": "_safestream_flush", "finish": "_safestream_finish"}

if sys.platform == "linux":
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
else:  # the read-ahead then goes by the flushes' timing alone
    _TIOCOUTQ = None

#: Runs of chunks smaller than this, on average, are joined before they reach the handler.
_JOIN_BELOW = 16 * 1024


class Consumer:
    """
    Carries out one stream's channel on its handler.

    :param base: the handler's methods as they are behind `.SafeStreamMixin`
        (``super(SafeStreamMixin, handler)``): what the producer's calls run as.
    :param resume: submits a task that resumes a parked producer; may raise if the
        executor was shut down.
    :param stall_timeout: seconds a flush may make no progress before the stream is aborted.
    :param offload: runs a function in the stream's executor (for `.FileRange` pieces).
    """

    def __init__(
        self,
        channel: Channel,
        handler: SafeStreamMixin,
        base: Any,
        resume: Callable[[], None],
        stall_timeout: float | None,
        *,
        offload: Offload | None = None,
    ) -> None:
        self._channel = channel
        self._handler = handler
        self._base = base
        self._resume_producer = resume
        self._stall_timeout = stall_timeout
        self._unflushed = 0  # bytes in the handler's buffer, not flushed yet
        self._lost: BaseException | None = None  # the producer can't be resumed: why
        self._readahead = ReadAhead(channel.max_buffer_bytes)
        self._started = time.monotonic()
        self._waited = 0.0  # seconds spent waiting for the producer
        self._bytes = 0  # body bytes handed to the handler
        channel.on_resume = self._resume
        self._offload = offload
        # The connection's IOStream (HTTP1Connection.stream), or None for another kind of
        # connection: it is the same for the whole stream.
        self._stream: Any = getattr(handler.request.connection, "stream", None)
        self._stop: asyncio.Future[None] | None = None  # done once aborted (for send_range)
        #: The consumer itself is calling the handler (its methods may call each other).
        self.calling = False
        #: The stream can carry no more bytes (client gone, or `failure`).
        self.aborted = False
        #: The error that broke the stream, when it was not the client leaving.
        self.failure: BaseException | None = None

    @property
    def loop_thread(self) -> int:
        """The ident of the IOLoop's thread."""
        return self._channel.loop_thread

    @property
    def where(self) -> str:
        """The streaming method, ``"Class.method"``."""
        return self._channel.where

    def __repr__(self) -> str:
        return (
            f"<Consumer {self._channel.where} unflushed={self._unflushed} "
            f"aborted={self.aborted} failure={self.failure!r}>"
        )

    async def run(self) -> BaseException | None:
        """Carry out the channel until the producer ends; return what the producer raised."""
        channel = self._channel
        ended = False
        try:
            while self._lost is None:
                batch = channel.take()
                if batch is None:
                    idle = time.monotonic()
                    try:
                        await channel.wait()
                    finally:
                        self._waited += time.monotonic() - idle
                    continue
                ops, flush, future = batch
                try:
                    end = await self._carry_out(ops, flush)
                except BaseException:
                    _fail_untaken(ops, future)
                    raise
                if future is not None:
                    if self.aborted:
                        future.set_exception(StreamClosedError(real_error=self.failure))
                    else:
                        future.set_result(None)
                if end is not None:
                    ended = True
                    return end.error
            return self._lost
        finally:
            if not ended:  # cancelled, or the producer is lost: let it go
                self._abort(StreamClosedError())
            channel.detach()

    async def _carry_out(self, ops: list[Op], flush: bool) -> End | None:
        # Ops are popped as they are carried out: once the handler's flush() has joined
        # the chunks into its one copy, nothing here keeps them alive (for a slow client,
        # that halves the memory a stream holds), and `_fail_untaken` sees only the rest.
        handler = self._handler
        if handler._finished:  # finished on the loop behind the producer's back
            self._channel.mark_finished()
        discard = self.aborted or handler._finished
        dropped = 0
        run: list[bytes] = []  # consecutive writes: one handler.write() for them all
        end: End | None = None
        ops.reverse()
        pop = ops.pop
        while ops:
            op = pop()
            if type(op) is bytes:
                run.append(op)
                continue
            if run:
                dropped += self._write(run, discard)
                run = []
            if op is FLUSH:
                await self._flush()
            elif type(op) is Call:
                await self._execute(op)
                discard = self.aborted or handler._finished
            elif type(op) is FileRange:
                await self._send_range(op, discard)
                discard = self.aborted or handler._finished
            else:
                assert type(op) is End, op
                end = op
        if run:
            dropped += self._write(run, discard)
            run = []
        if flush or self._unflushed > self._channel.max_buffer_bytes:
            await self._flush()
        if dropped:
            self._sent(dropped)
        return end

    def _write(self, run: list[bytes], discard: bool) -> int:
        """Hand a run of chunks to the handler's buffer, joined; return the bytes dropped."""
        size = sum(map(len, run))
        if discard:
            return size
        write = self._base.write
        self._bytes += size
        if len(run) > 1 and size < _JOIN_BELOW * len(run):
            write(b"".join(run))  # small chunks: one call instead of many
        else:
            for chunk in run:  # big ones: Tornado's flush() joins them, the one copy
                write(chunk)
        self._unflushed += size
        return 0

    def client_gone(self) -> None:
        """The connection closed (`.RequestHandler.on_connection_close`)."""
        self._abort(StreamClosedError())

    def _abort(self, error: BaseException) -> None:
        if isinstance(error, StreamClosedError):
            closed = error
        else:
            if self.failure is None:
                self.failure = error
            closed = StreamClosedError(real_error=error)
        self.aborted = True
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        if self._channel.close(closed):
            self._resume()

    def _resume(self) -> None:
        try:
            self._resume_producer()
        except Exception as error:  # for instance the executor was shut down
            self._lost = error
            self._abort(error)
            self._channel.wake()  # run() may be waiting for a producer that won't come

    async def _send_range(self, piece: FileRange, discard: bool) -> None:
        """
        Send a file range: with ``sendfile`` where the connection allows it, else read in the
        executor and written here. It held the whole budget: freed once it is sent.
        """
        handler = self._handler
        offset, left = piece.offset, piece.count
        try:
            if discard or not left:
                return
            await self._flush()  # what came before it (the headers): written first
            offload = self._offload
            if offload is None:
                raise RuntimeError(f"{self.where}(): a file range needs an executor to read it")
            if self._stop is None:
                self._stop = asyncio.get_running_loop().create_future()
            if not self.aborted and not handler._finished:
                sent = await send_range(handler, piece, offload, self._stop)
                offset += sent
                left -= sent
            chunk_size = min(self._channel.max_buffer_bytes, PIECE_BYTES)
            while left and not self.aborted and not handler._finished:
                read = functools.partial(os.pread, piece.fd, min(left, chunk_size), offset)
                chunk = await piece.run(offload, read)
                if not chunk:
                    raise FileShrankError(piece.name, piece.count - left, piece.count)
                offset += len(chunk)
                left -= len(chunk)
                self._channel.hold(len(chunk))  # read into memory: the budget counts it
                self._write([chunk], False)
                await self._flush()
        except Exception as error:
            self._abort(error)
        finally:
            piece.close()
            self._sent(self._channel.max_buffer_bytes)

    def _sent(self, nbytes: int, window: int | None = None) -> None:
        if self._channel.sent(nbytes, window):
            self._resume()

    async def _flush(self) -> None:
        nbytes = self._unflushed
        self._unflushed = 0
        handler = self._handler
        window = None
        if not self.aborted and not handler._finished:
            first = not handler._headers_written
            try:
                started = time.monotonic()
                sent = self._call(handler._safestream_flush)
                if first:
                    handler._safestream_output = take_over(handler)
                kept_up = self._kept_up()
                await self.sent(sent)
                now = time.monotonic()
                window = self._readahead.observe(
                    nbytes, now - started, kept_up, now, self._kernel_queue()
                )
            except Exception as error:
                self._abort(error)
        self._sent(nbytes, window)

    def _kept_up(self) -> bool:
        """Whether the socket took everything written so far at once (just after a write)."""
        stream = self._stream
        # IOStream's (private) counters, as in `sent`: without them, the client counts as
        # keeping up, and the window grows to max_buffer_bytes as it did before it adapted.
        written = getattr(stream, "_total_write_index", None)
        return written is None or written == getattr(stream, "_total_write_done_index", None)

    def _kernel_queue(self) -> int | None:
        """
        Bytes the kernel holds in the socket's send queue, not yet taken by the client's
        side (Linux: ``TIOCOUTQ``), or ``None`` where that can't be known.
        """
        stream = self._stream
        sock = getattr(stream, "socket", None)  # IOStream.socket: None once closed
        if sock is None or _TIOCOUTQ is None:
            return None
        try:
            queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0" * 4))[0]
        except (OSError, ValueError):
            return None
        return queued

    def stats(self) -> StreamStats:
        """The stream's figures so far."""
        peak, blocked, window = self._channel.stats()
        return StreamStats(
            bytes_sent=self._bytes,
            producer_blocked=blocked,
            client_waited=self._waited,
            peak_bytes=peak,
            window=window,
            duration=time.monotonic() - self._started,
        )

    async def _execute(self, call: Call) -> None:
        flushing = call.name in FLUSHING_METHODS
        nbytes = self._unflushed if flushing else 0
        # flush() and finish() from the producer: through the library's output path, if any.
        aware = _FRAMING_AWARE.get(call.name)
        try:
            method = getattr(self._handler, aware) if aware else getattr(self._base, call.name)
            result = self._call(method, *call.args, **call.kwargs)
        except BaseException as error:
            if self._handler._finished:
                self._channel.mark_finished()
            call.future.set_exception(error)
            return
        if self._handler._finished:
            self._channel.mark_finished()  # before the producer hears back
        if flushing:
            self._unflushed = 0
        if isinstance(result, asyncio.Future):
            # flush() or finish(): the producer gets a future of its own thread's kind.
            outcome = self._channel.producer_future()
            call.future.set_result(outcome)
            try:
                await self.sent(result)  # nothing may flush before this one is done
            except Exception as error:
                outcome.set_exception(error)
                self._abort(error)
            except BaseException:  # cancelled: the producer must not wait for ever
                outcome.set_exception(StreamClosedError())
                raise
            else:
                outcome.set_result(None)
        else:
            call.future.set_result(result)
        if nbytes:
            self._sent(nbytes)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.calling = True
        try:
            return method(*args, **kwargs)
        finally:
            self.calling = False

    async def sent(self, future: asyncio.Future[None]) -> None:
        """
        Wait until the bytes of a flush (the future it returned) are handed to the socket.

        :raises StreamClosedError: if the connection closed first (Tornado resolves a
            pending flush's future, without an error, when its connection closes), or made
            no progress for ``stall_timeout`` seconds.
        """
        stream = self._stream
        # Everything written to the stream so far, this flush included, must get out.
        target = getattr(stream, "_total_write_index", None)
        if self._stall_timeout is None:
            await future
        else:
            await self._sent_before_stall(future, stream, self._stall_timeout)
        if stream is not None and stream.closed():
            done = getattr(stream, "_total_write_done_index", None)
            if target is None or done is None or done < target:
                raise StreamClosedError(real_error=stream.error)

    async def _sent_before_stall(
        self, future: asyncio.Future[None], stream: Any, timeout: float
    ) -> None:
        progress = getattr(stream, "_total_write_done_index", None)
        last_progress = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout / 4)
                return
            except asyncio.TimeoutError:
                now = getattr(stream, "_total_write_done_index", None)
                if now is not None and now != progress:
                    progress = now
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress >= timeout:
                    break
        app_log.warning(
            "%s(): %s took no bytes for %s s (stall_timeout): stream aborted",
            self._channel.where,
            self._handler.request.remote_ip,
            timeout,
        )
        future.add_done_callback(ignore_outcome)
        close = getattr(self._handler.request.connection, "close", None)
        if close is not None:
            close()
        raise StreamClosedError(real_error=TimeoutError(f"no progress for {timeout} s"))


def _fail_untaken(ops: list[Op], future: concurrent.futures.Future[None] | None) -> None:
    """The consumer stops mid-batch: fail what the producer may be waiting for."""
    for op in ops:
        if type(op) is Call and not op.future.done():
            op.future.set_exception(StreamClosedError())
        elif type(op) is FileRange:
            op.close()
    if future is not None and not future.done():
        future.set_exception(StreamClosedError())


def ignore_outcome(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as retrieved: its outcome is of no interest any more."""
    if not future.cancelled():
        future.exception()
