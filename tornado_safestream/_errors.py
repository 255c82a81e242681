"""`WrongThreadError`: a Tornado object was used from a thread that is not its IOLoop's."""

from __future__ import annotations

__all__ = ("WrongThreadError",)


class WrongThreadError(RuntimeError):
    """
    Raised by assertion mode when a Tornado object is used from the wrong thread.

    Tornado's handlers, connections, streams and most `~tornado.ioloop.IOLoop` methods may
    only be used from the thread that runs their IOLoop. Called from any other thread they
    corrupt responses now and then; in assertion mode (`.enable_thread_assertions`) they
    raise this instead, every time, before the object is touched.

    The facts are kept as attributes:

    :ivar method: what was called, as ``"RequestHandler.flush()"``.
    :ivar thread_name: the name of the calling thread.
    :ivar loop_thread_name: the name of the thread that runs the object's IOLoop.
    :ivar filename: the file of the call site: the first frame outside Tornado and this
        package (``None`` if there is none).
    :ivar lineno: its line number.
    :ivar source_line: the source text of that line (``""`` if unavailable).

    Two errors with the same facts compare equal: the record of violations keeps copies
    (without the traceback, which would keep every frame of the caller alive).
    """

    def __init__(
        self,
        method: str,
        thread_name: str,
        loop_thread_name: str,
        filename: str | None = None,
        lineno: int | None = None,
        source_line: str = "",
    ) -> None:
        self.method = method
        self.thread_name = thread_name
        self.loop_thread_name = loop_thread_name
        self.filename = filename
        self.lineno = lineno
        self.source_line = source_line
        if filename is None:
            where = "at an unknown call site"
        else:
            where = f"at {filename}:{lineno}"
            if source_line:
                where += f": {source_line}"
        super().__init__(
            f"{method} called from thread {thread_name!r}, but its IOLoop runs in thread "
            f"{loop_thread_name!r}\n"
            f"  {where}\n"
            "Tornado is not thread-safe: stream from a thread pool with SafeStreamMixin and "
            "@stream_on_executor, or hand the call to the loop with IOLoop.add_callback."
        )

    __module__ = "tornado_safestream"  # where users import it from

    def _facts(self) -> tuple[object, ...]:
        return (
            self.method,
            self.thread_name,
            self.loop_thread_name,
            self.filename,
            self.lineno,
            self.source_line,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WrongThreadError):
            return NotImplemented
        return self._facts() == other._facts()

    def __hash__(self) -> int:
        return hash(self._facts())

    def __reduce__(self) -> tuple[type[WrongThreadError], tuple[object, ...]]:
        return (type(self), self._facts())
