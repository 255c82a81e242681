"""
`SafeStaticFileHandler`: Tornado's `~tornado.web.StaticFileHandler`, with no file-system work
on the IOLoop.

A request runs the steps of ``StaticFileHandler.get`` (the same in Tornado 6.3 to 6.6) as a
generator-style stream (`.run_stream`): every overridable hook (``parse_url_path``,
``get_absolute_path``, ``validate_absolute_path``, ``get_modified_time``, ``set_headers`` with
``compute_etag``, ``get_content_type``, ``get_cache_time`` and ``set_extra_headers``,
``should_return_304``, ``get_content_size``, ``get_content``) runs in the executor, and their
response calls (``set_header``, ``set_status``, ``redirect``) are carried out on the loop, in
order, as for any `@stream_on_executor` method. The body then flows through the same channel
and consumer as a generator's chunks: bounded read-ahead, no thread held while the client is
slow, the file closed in the executor when the client leaves. Where the connection allows
it, the default ``get_content`` hands the consumer a `.FileRange` instead, which it sends
with ``sendfile`` (see `.._core._sendfile`).

Versions (the ``Etag`` and ``static_url(...)?v=``) are cached as Tornado caches them, but
computed outside of any lock the loop may wait for: see `SafeStaticFileHandler.get_version`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import stat
import threading
from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar, Union

from tornado import httputil
from tornado.log import gen_log
from tornado.web import HTTPError, StaticFileHandler

from .._core._channel import producing
from .._core._executors import offload, submit
from .._core._sendfile import FileRange, FileShrankError, can_send_file
from .._core._waiting import POLL_SECONDS
from .._core._words import a_type
from ._decorator import DEFAULT_MAX_BUFFER_BYTES
from ._mixin import SafeStreamMixin
from ._stream import Options, run_stream

__all__ = ("SafeStaticFileHandler",)

#: The size of the reads of the default ``get_content``, at most (and of the version hash's).
READ_BYTES = 256 * 1024

# O_NONBLOCK: opening a FIFO (one put in the file's place after the stat) must never block a
# worker; it changes nothing for a regular file, the only kind served. O_NOCTTY: a terminal
# device never becomes the process's controlling terminal.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def open_regular_file(path: str, name: str) -> int:
    """
    Open ``path`` for reading without ever blocking on it, and check that it is a regular file.

    :param name: the path as the client named it, for the error messages.
    :return: the file descriptor (the caller closes it).
    :raises HTTPError: 404 if there is no such file (also one deleted since it was
        validated), 403 if it is not a regular file or may not be read.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise HTTPError(404) from None
    except PermissionError:
        raise HTTPError(403, "%s is not readable", name) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HTTPError(403, "%s is not a file", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _inherited(cls: type, name: str) -> bool:
    """Whether ``cls.name`` is `StaticFileHandler`'s own (not overridden in a subclass)."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass is StaticFileHandler
    return False


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _VersionJob:
    """
    One version computation, shared by everyone who asks for it before it is done.

    ``state`` goes ``"queued"`` (a background task was submitted) -> ``"running"`` (a thread
    claimed it) -> ``"done"``; it and ``result`` are guarded by `_VERSIONS_LOCK`. A thread
    that needs the version and finds the job queued claims it and computes it itself, rather
    than wait for a task that may be queued behind it in the same executor.
    """

    __slots__ = ("done", "hashes", "jobs", "result", "state")

    def __init__(self, hashes: dict[str, str | None], jobs: dict[str, _VersionJob]) -> None:
        self.state = "queued"
        self.result: str | None = None
        self.done = threading.Event()
        # The caches this job was started for: a reset() meanwhile replaces them.
        self.hashes = hashes
        self.jobs = jobs

    def __repr__(self) -> str:
        with _VERSIONS_LOCK:
            return f"<_VersionJob state={self.state} result={self.result!r}>"


#: Guards the version caches (``_static_hashes``, ``_safestatic_jobs``) of every
#: `SafeStaticFileHandler` class, and the `_VersionJob` states. Never held while a file is
#: read or a hook runs: the loop may take it (``static_url``), and must never wait for long.
_VERSIONS_LOCK = threading.Lock()


class SafeStaticFileHandler(SafeStreamMixin, StaticFileHandler):
    """
    `~tornado.web.StaticFileHandler`, with every file-system step in an executor.

    Use it where ``StaticFileHandler`` is used: as a route's handler, or as the
    ``static_handler_class`` application setting::

        app = Application(
            [(r"/files/(.*)", SafeStaticFileHandler, {"path": "/srv/files"})],
            static_path="static",
            static_handler_class=SafeStaticFileHandler,
        )

    It answers as ``StaticFileHandler`` does (status, headers, body, for GET and HEAD, ranges,
    conditional requests), and subclasses may override the same methods; the overridable
    ones (``validate_absolute_path``, ``get_modified_time``, ``get_content_size``,
    ``get_content_type``, ``get_content_version``, ``get_content``, ``compute_etag``, ...)
    run in the executor, their ``set_header``/``redirect`` calls are carried out on the loop.

    Class attributes:

    - ``executor``: the `concurrent.futures.Executor` to run them in, or ``None`` (the
      default) for the IOLoop's default executor.
    - ``max_buffer_bytes``: bytes read ahead of the client per download, at most.

    ``static_url()`` never reads a file on the loop: before a path's version is known it
    returns the URL without ``?v=`` and computes the version in the executor; see
    `get_version` and `warm_versions`.

    .. versionadded:: 0.2
    """

    executor: ClassVar[concurrent.futures.Executor | None] = None
    max_buffer_bytes: ClassVar[int] = DEFAULT_MAX_BUFFER_BYTES

    # Guarded by _VERSIONS_LOCK (rebound by reset(); subclasses share them until then, as
    # Tornado's subclasses share _static_hashes): path -> version, least recently used first,
    # and the computations under way.
    _static_hashes: dict[str, str | None] = {}  # noqa: RUF012 (Tornado declares it so)
    _safestatic_jobs: ClassVar[dict[str, _VersionJob]] = {}

    # Per request. Written by the stream's producer (in the executor) before its next
    # forwarded call; read on the loop after it (the channel's lock orders the two).
    _safestatic_etag: tuple[str | None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_options(cls)

    @classmethod
    def reset(cls) -> None:
        """Forget the cached versions, as ``StaticFileHandler.reset()`` does."""
        with _VERSIONS_LOCK:
            cls._static_hashes = {}
            cls._safestatic_jobs = {}

    async def get(self, path: str, include_body: bool = True) -> None:
        options = _check_options(type(self))
        zero_copy = include_body and _inherited(type(self), "get_content") and can_send_file(self)
        await run_stream(self, _serve, True, options, (path, include_body, zero_copy), {})

    def set_etag_header(self) -> None:
        # The stream's producer computes the Etag (compute_etag, in the executor) and keeps
        # it; Tornado's finish() asks again on the loop (a HEAD, or no Etag): it gets the
        # kept one, and the loop reads no file. Never computed: no Etag.
        channel = producing.channel
        if channel is not None and channel.handler is self:
            etag = self.compute_etag()
            self._safestatic_etag = (etag,)
        elif self._safestatic_etag is not None:
            etag = self._safestatic_etag[0]
        else:
            return
        if etag is not None:
            self.set_header("Etag", etag)

    # ------------------------------------------------------------------ versions

    @classmethod
    def get_version(cls, settings: dict[str, Any], path: str) -> str | None:
        """
        The version of a static file, for ``static_url(path)`` (``?v=``) and the ``Etag``.

        As `~tornado.web.StaticFileHandler.get_version` (``get_content_version``, cached),
        except where it runs. Off an event loop (in the executor, in a request's stream, or
        at start-up before the loop runs) it computes the version if need be and returns
        it. On an event loop's thread (``static_url()`` in a template rendered on the loop)
        it never reads the file: it returns the cached version, or ``None`` (``static_url``
        then leaves out ``?v=``) and has the version computed in the executor, for the
        calls that come after. Call `warm_versions` at start-up to have every URL versioned
        from the first request.
        """
        return super().get_version(settings, path)

    @classmethod
    async def warm_versions(
        cls, settings: dict[str, Any], paths: Iterable[str] | None = None
    ) -> dict[str, str | None]:
        """
        Compute the versions of static files in the executor, so that ``static_url()`` on the
        loop has them from the first request on.

        Await it on the application's loop before serving (or call `get_version` for each
        path before the loop runs)::

            app = Application(handlers, static_path="static",
                              static_handler_class=SafeStaticFileHandler)
            await SafeStaticFileHandler.warm_versions(app.settings)

        :param settings: the application's settings (``static_path`` is required).
        :param paths: the paths, relative to ``static_path``, as given to ``static_url``;
            ``None`` (the default) for every regular file under ``static_path`` (found in
            the executor), up to ``MAX_CACHED_VERSIONS`` of them where Tornado has it.
        :return: each path's version (``None`` where it has none).
        """
        loop = asyncio.get_running_loop()
        _check_options(cls)
        pool = cls.executor

        def compute() -> dict[str, str | None]:
            names = list(paths) if paths is not None else _static_files(cls, settings)
            return {name: cls.get_version(settings, name) for name in names}

        return await offload(loop, pool, compute)

    @classmethod
    def _get_cached_version(cls, abs_path: str) -> str | None:
        # Replaces Tornado's (same name in 6.3 to 6.6, called by get_version and
        # compute_etag), which computes under a class-wide lock the loop may wait for.
        on_loop = _on_a_loop()
        with _VERSIONS_LOCK:
            hashes = cls._static_hashes
            if abs_path in hashes:
                # Most recently used last, as Tornado 6.6 keeps them.
                hsh = hashes[abs_path] = hashes.pop(abs_path)
                return hsh or None
            jobs = cls._safestatic_jobs
            job = jobs.get(abs_path)
            submit = job is None and on_loop
            if job is None:
                job = jobs[abs_path] = _VersionJob(hashes, jobs)
            claimed = not on_loop and job.state == "queued"
            if claimed:
                job.state = "running"
        if on_loop:
            if submit:
                cls._safestatic_compute_later(abs_path, job)
            return None
        if claimed:
            return cls._safestatic_compute(abs_path, job)
        while not job.done.wait(POLL_SECONDS):  # computed by a running thread meanwhile
            pass
        with _VERSIONS_LOCK:
            return job.result or None

    @classmethod
    def _safestatic_compute_later(cls, abs_path: str, job: _VersionJob) -> None:
        """On the loop: compute the version in the executor (if nobody claims it first)."""

        def task() -> None:
            with _VERSIONS_LOCK:
                if job.state != "queued":
                    return
                job.state = "running"
            cls._safestatic_compute(abs_path, job)

        try:
            _check_options(cls)
            executor = cls.executor
            submit(asyncio.get_running_loop(), executor, task, _log_failure)
        except Exception as error:  # the executor is shut down, or is not one
            with _VERSIONS_LOCK:
                if job.jobs.get(abs_path) is job:
                    del job.jobs[abs_path]  # let a later call try again
            gen_log.error("Could not compute the version of static file %r: %s", abs_path, error)

    @classmethod
    def _safestatic_compute(cls, abs_path: str, job: _VersionJob) -> str | None:
        """Compute a claimed job's version (off the loop), cache it, and wake its waiters."""
        hsh: str | None = None
        try:
            hsh = cls._safestatic_content_version(abs_path)
        except Exception as error:
            # Tornado's message (6.6; 6.3 leaves out the error).
            gen_log.error("Could not open static file %r: %s", abs_path, error)
        finally:
            with _VERSIONS_LOCK:
                hashes = job.hashes
                limit = getattr(cls, "MAX_CACHED_VERSIONS", None)  # Tornado >= 6.6
                while limit is not None and hashes and len(hashes) >= limit:
                    del hashes[next(iter(hashes))]
                hashes[abs_path] = hsh
                if job.jobs.get(abs_path) is job:
                    del job.jobs[abs_path]
                job.result = hsh
                job.state = "done"
            job.done.set()
        return hsh or None

    @classmethod
    def _safestatic_content_version(cls, abs_path: str) -> str:
        if not (_inherited(cls, "get_content_version") and _inherited(cls, "get_content")):
            return cls.get_content_version(abs_path)
        # Tornado's own, with a file that is never opened in a way that can block.
        limit: int | None = getattr(cls, "MAX_VERSION_CONTENT_SIZE", None)  # Tornado >= 6.6
        hasher = hashlib.sha512()
        size = 0
        fd = open_regular_file(abs_path, abs_path)
        try:
            while chunk := os.read(fd, READ_BYTES):
                size += len(chunk)
                if limit is not None and size > limit:
                    raise ValueError(
                        f"content is larger than MAX_VERSION_CONTENT_SIZE ({limit} bytes)"
                    )
                hasher.update(chunk)
        finally:
            os.close(fd)
        return hasher.hexdigest()


#: A chunk of a static file's body: bytes read, or a range for the consumer to send.
_Piece = Union[bytes, FileRange]


def _serve(
    self: SafeStaticFileHandler, path: str, include_body: bool, zero_copy: bool
) -> Generator[_Piece, None, None]:
    """
    ``StaticFileHandler.get``, step by step, as a generator-style stream (in the executor).

    The steps are Tornado's (``get`` is the same in 6.3 to 6.6); only the body differs.
    """
    if "\x00" in path:
        # os.stat() would raise ValueError (a 500, logged as an error): no file has this name.
        raise HTTPError(400, "a static file path cannot contain a NUL character")
    self.path = self.parse_url_path(path)
    del path
    absolute_path = self.get_absolute_path(self.root, self.path)
    self.absolute_path = self.validate_absolute_path(self.root, absolute_path)
    if self.absolute_path is None:
        return
    self.modified = self.get_modified_time()
    self.set_headers()
    if self.should_return_304():
        self.set_status(304)
        return
    request_range = None
    range_header = self.request.headers.get("Range")
    if range_header:
        # As per RFC 2616 14.16, an invalid Range header is ignored.
        request_range = httputil._parse_request_range(range_header)
    size = self.get_content_size()
    start: int | None
    end: int | None
    if request_range:
        start, end = request_range
        if start is not None and start < 0:
            start += size
            if start < 0:
                start = 0
        if (start is not None and (start >= size or (end is not None and start >= end))) or (
            end == 0
        ):
            self.set_status(416)  # Range Not Satisfiable
            self.set_header("Content-Type", "text/plain")
            self.set_header("Content-Range", f"bytes */{size}")
            return
        if end is not None and end > size:
            end = size
        # 206 only if less than the whole file was asked for (Chrome and "bytes=0-").
        if size != (end or size) - (start or 0):
            self.set_status(206)  # Partial Content
            self.set_header("Content-Range", httputil._get_content_range(start, end, size))
    else:
        start = end = None
    if start is not None and end is not None:
        content_length = end - start
    elif end is not None:
        content_length = end
    elif start is not None:
        content_length = size - start
    else:
        content_length = size
    self.set_header("Content-Length", content_length)
    if not include_body:
        return
    if not _inherited(type(self), "get_content"):
        assert self.absolute_path is not None
        content = self.get_content(self.absolute_path, start, end)
        yield from [content] if isinstance(content, bytes) else content
        return
    yield from _read_file(self, start or 0, content_length, zero_copy)


def _read_file(
    self: SafeStaticFileHandler, offset: int, length: int, zero_copy: bool
) -> Generator[_Piece, None, None]:
    """
    The default ``get_content``: exactly ``length`` bytes from ``offset``, or an error.

    A file that grew since its size was taken gives its first ``length`` bytes (the
    ``Content-Length`` sent); one that shrank raises, so the response is cut short.
    """
    assert self.absolute_path is not None
    fd = open_regular_file(self.absolute_path, self.path)
    try:
        if zero_copy and length:
            yield FileRange(fd, offset, length, self.absolute_path)
            return
        chunk_size = min(READ_BYTES, self.max_buffer_bytes)
        end = offset + length
        while offset < end:
            chunk = os.pread(fd, min(chunk_size, end - offset), offset)
            if not chunk:
                raise FileShrankError(self.absolute_path, length - (end - offset), length)
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)  # here, in the executor: also when the client left (GeneratorExit)


def _check_options(cls: type[SafeStaticFileHandler]) -> Options:
    """The stream options of a handler class, or a TypeError/ValueError naming the attribute."""
    executor = cls.executor
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(
            f"{cls.__qualname__}.executor is {a_type(executor)}, not a "
            "concurrent.futures.Executor (or None, for the IOLoop's default executor)"
        )
    size = cls.max_buffer_bytes
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{cls.__qualname__}.max_buffer_bytes must be an int, not {size!r}")
    if size <= 0:
        raise ValueError(f"{cls.__qualname__}.max_buffer_bytes must be positive, not {size}")
    return Options("executor", size, None)


def _static_files(cls: type[SafeStaticFileHandler], settings: dict[str, Any]) -> Sequence[str]:
    """Every regular file under ``static_path``, as ``static_url`` paths (in the executor)."""
    root = settings["static_path"]
    limit = getattr(cls, "MAX_CACHED_VERSIONS", None)
    found: list[str] = []
    for directory, _dirs, files in os.walk(root):
        for name in sorted(files):
            full = os.path.join(directory, name)
            if not os.path.isfile(full):
                continue
            found.append(os.path.relpath(full, root).replace(os.path.sep, "/"))
            if limit is not None and len(found) >= limit:
                return found
    return found


def _log_failure(future: concurrent.futures.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        gen_log.error("Could not compute a static file's version", exc_info=future.exception())


_serve.__qualname__ = "SafeStaticFileHandler.get"
