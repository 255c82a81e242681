"""
A streamed ``multipart/form-data`` body, parsed in the executor with python-multipart.

`MultipartForm` is fed the chunks of a request body (from a `.receive_on_executor`
``data_received``, so in the executor, one call at a time) and hands each file part's bytes
to a target the application opened for it (`FileTarget`: a `DiskFile`, a hash, a socket),
while fields are kept as values. It checks limits as it goes (parts, field size, header
size, file size), and `MultipartForm.finish` refuses a body that ended before its closing
boundary: every target it opened is then discarded, so a partial file is never passed off
as complete.

.. warning::

   Not thread-safe: one thread at a time (the calls of one request's ``data_received``
   and verb method are never concurrent, and the channel's lock orders them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, TypeVar

from tornado.httputil import HTTPHeaders
from tornado.web import HTTPError

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # python-multipart < 0.0.13 named its package "multipart"
    try:
        from multipart.multipart import (  # type: ignore[import-not-found,import-untyped,no-redef,unused-ignore]
            MultipartParser,
            parse_options_header,
        )
    except ImportError:
        raise ImportError(
            "tornado_safestream.multipart needs python-multipart: "
            "pip install 'tornado-safestream[multipart]'"
        ) from None

__all__ = ("DiskFile", "FileTarget", "MultipartForm", "Part")

_T = TypeVar("_T", bound="FileTarget")


@dataclass(frozen=True)
class Part:
    """The headers of one part of a form."""

    #: The form field's name (``Content-Disposition: form-data; name=...``), decoded as UTF-8.
    name: str
    #: The file name the client sent, for display only: never use it as a path. ``None`` for
    #: a field that is not a file.
    filename: str | None
    #: The part's ``Content-Type`` (``text/plain`` if it sent none).
    content_type: str
    #: Every header of the part.
    headers: HTTPHeaders = field(repr=False)


class FileTarget(Protocol):
    """Where a file part's bytes go. Its methods are called in the executor."""

    def write(self, data: bytes, /) -> object:
        """The next bytes of the part."""

    def close(self) -> None:
        """The part is complete."""

    def discard(self) -> None:
        """The part or the request failed: let go of what was written (delete a file)."""


class DiskFile:
    """
    A `FileTarget` that writes to a new file in ``directory`` (a name of its own, never the
    client's), computing its SHA-256 as it goes; ``discard()`` deletes it. Move ``path`` where the
    file belongs once the form is finished (`os.replace`).
    """

    def __init__(self, directory: str | os.PathLike[str], part: Part | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
        self.part = part
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = os.fdopen(fd, "wb")
        self._discarded = False

    def __repr__(self) -> str:
        state = "discarded" if self._discarded else "closed" if self._file.closed else "open"
        return f"<DiskFile {self.path!r} size={self.size} {state}>"

    @classmethod
    def opener(cls, directory: str | os.PathLike[str]) -> Callable[[Part], DiskFile]:
        """An ``open_file`` for `MultipartForm`: each file part to a `DiskFile` in ``directory``."""
        return lambda part: cls(directory, part)

    def write(self, data: bytes, /) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()

    def discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        self._file.close()
        with contextlib.suppress(FileNotFoundError):  # moved away already: no longer ours
            os.unlink(self.path)

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of what was written."""
        return self._hash.hexdigest()


class MultipartForm(Generic[_T]):
    """
    A ``multipart/form-data`` request body, parsed as it arrives.

    Create it on the loop (in ``prepare``), feed it in ``data_received``, finish it in the
    verb method, and discard it in ``on_receive_aborted``::

        @stream_request_body
        class Form(SafeStreamMixin, RequestHandler):
            def prepare(self) -> None:
                self.form = MultipartForm(
                    self.request.headers.get("Content-Type", ""), DiskFile.opener(UPLOADS)
                )

            @receive_on_executor
            def data_received(self, chunk: bytes) -> None:
                self.form.feed(chunk)

            def on_receive_aborted(self, error: BaseException) -> None:
                self.form.discard()

            @stream_on_executor
            def post(self) -> None:
                self.form.finish()  # 400 if the body was cut short (and nothing kept)
                for target in self.form.files.get("upload", []):
                    os.replace(target.path, final_path_for(target))

    :param content_type: the request's ``Content-Type`` header.
    :param open_file: called in the executor when a file part begins (a part with a
        ``filename``), with its `Part`; returns the `FileTarget` its bytes go to.
    :param max_parts: parts (fields and files), at most.
    :param max_field_size: bytes of one field's value, at most (fields are kept in memory).
    :param max_header_size: bytes of one part's headers, at most.
    :param max_file_size: bytes of one file, at most (``None``: no limit here; Tornado's
        ``max_body_size`` still applies).
    :raises tornado.web.HTTPError: 415 if ``content_type`` is not ``multipart/form-data``,
        400 if it has no boundary.

    Beyond a limit, `feed` raises `~tornado.web.HTTPError` 413; for a malformed body, 400.
    Either way, every target opened so far is discarded first.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        content_type: str,
        open_file: Callable[[Part], _T],
        *,
        max_parts: int = 1000,
        max_field_size: int = 1024 * 1024,
        max_header_size: int = 16 * 1024,
        max_file_size: int | None = None,
    ) -> None:
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data":
            raise HTTPError(415, "expected a multipart/form-data body, got %r", content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise HTTPError(400, "multipart/form-data body without a boundary")
        self._open_file = open_file
        self.max_parts = max_parts
        self.max_field_size = max_field_size
        self.max_header_size = max_header_size
        self.max_file_size = max_file_size
        #: The fields received so far: name -> values, in order.
        self.fields: dict[str, list[str]] = {}
        #: The files received whole so far: name -> targets, in order.
        self.files: dict[str, list[_T]] = {}
        self._opened: list[_T] = []  # every target opened, whole or not
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_size = 0
        self._headers = HTTPHeaders()
        self._part: Part | None = None
        self._target: _T | None = None
        self._size = 0
        self._value = bytearray()
        self._ended = False  # the closing boundary was seen
        self._failed = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def __repr__(self) -> str:
        return (
            f"<MultipartForm parts={self._parts} fields={sum(map(len, self.fields.values()))} "
            f"files={sum(map(len, self.files.values()))} ended={self._ended} "
            f"failed={self._failed}>"
        )

    def feed(self, chunk: bytes) -> None:
        """
        Parse the next chunk of the body (in the executor).

        :raises tornado.web.HTTPError: 413 beyond a limit, 400 for a malformed body (every
            target opened so far is discarded first).
        """
        if self._failed:
            raise HTTPError(400, "multipart/form-data body: fed after an error")
        try:
            self._parser.write(chunk)
        except HTTPError:
            self._fail()
            raise
        except Exception as error:  # the parser's own errors
            self._fail()
            raise HTTPError(400, "malformed multipart/form-data body: %s", error) from error

    def finish(self) -> MultipartForm[_T]:
        """
        The body ended: check that it was whole (its closing boundary came).

        :raises tornado.web.HTTPError: 400 if the body was cut short; every target opened is
            discarded first, complete or not.
        """
        if self._failed:
            raise HTTPError(400, "multipart/form-data body: finished after an error")
        try:
            self._parser.finalize()
        except Exception as error:
            self._fail()
            raise HTTPError(400, "malformed multipart/form-data body: %s", error) from error
        if not self._ended:
            self._fail()
            raise HTTPError(400, "multipart/form-data body cut short (no closing boundary)")
        return self

    def discard(self) -> None:
        """Discard every target opened, complete or not (``on_receive_aborted``). Idempotent."""
        self._fail()

    def _fail(self) -> None:
        self._failed = True
        opened, self._opened = self._opened, []
        self.files = {}
        self._target = None
        for target in opened:
            target.discard()

    # -------------------------------------------------------------- parser callbacks

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.max_parts:
            raise HTTPError(413, "multipart/form-data body: more than %d parts", self.max_parts)
        self._headers = HTTPHeaders()
        self._header_size = 0
        self._size = 0
        self._value = bytearray()

    def _count_header(self, nbytes: int) -> None:
        self._header_size += nbytes
        if self._header_size > self.max_header_size:
            raise HTTPError(
                413, "multipart/form-data part headers over %d bytes", self.max_header_size
            )

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        # Browsers send names as raw UTF-8: latin-1 keeps the bytes, decoded below.
        self._headers.add(
            self._header_field.decode("latin-1"), self._header_value.decode("latin-1")
        )
        self._header_field = bytearray()
        self._header_value = bytearray()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("Content-Disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise HTTPError(400, "multipart/form-data part without a form-data name")
        try:
            name = options[b"name"].decode("utf-8")
            raw_filename = options.get(b"filename")
            filename = None if raw_filename is None else raw_filename.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "multipart/form-data part name is not UTF-8") from None
        content_type = self._headers.get("Content-Type", "text/plain")
        self._part = Part(name, filename, content_type, self._headers)
        if filename is not None:
            target = self._open_file(self._part)
            self._opened.append(target)
            self._target = target

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        target = self._target
        if target is not None:
            if self.max_file_size is not None and self._size > self.max_file_size:
                raise HTTPError(413, "multipart/form-data file over %d bytes", self.max_file_size)
            target.write(data[start:end])
        else:
            if self._size > self.max_field_size:
                raise HTTPError(413, "multipart/form-data field over %d bytes", self.max_field_size)
            self._value += data[start:end]

    def _on_part_end(self) -> None:
        part = self._part
        if part is None:
            return
        target = self._target
        if target is not None:
            target.close()
            self.files.setdefault(part.name, []).append(target)
            self._target = None
        else:
            charset = parse_options_header(part.content_type)[1].get(b"charset", b"utf-8")
            try:
                value = self._value.decode(charset.decode("latin-1"))
            except (UnicodeDecodeError, LookupError):
                raise HTTPError(
                    400, "multipart/form-data field %r: bad encoding", part.name
                ) from None
            self.fields.setdefault(part.name, []).append(value)
        self._part = None

    def _on_end(self) -> None:
        self._ended = True
