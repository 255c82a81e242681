"""
Streamed ``multipart/form-data`` uploads, parsed in the executor.

Needs the ``multipart`` extra (``pip install 'tornado-safestream[multipart]'``, which
installs python-multipart). Feed a `MultipartForm` from a `.receive_on_executor`
``data_received``: fields are kept as values, each file part goes to a `FileTarget` the
application opens for it (`DiskFile`: a new file in a directory, with its SHA-256), with
limits on parts, field size, header size and file size, and a body cut short is refused
(400) with every file discarded.

.. versionadded:: 0.2
"""

from __future__ import annotations

__all__ = ("DiskFile", "FileTarget", "MultipartForm", "Part")

from ._http._multipart import DiskFile as DiskFile
from ._http._multipart import FileTarget as FileTarget
from ._http._multipart import MultipartForm as MultipartForm
from ._http._multipart import Part as Part

# Named after this module, where users import them from (reprs, pickles, the docs).
for _public in (DiskFile, FileTarget, MultipartForm, Part):
    _public.__module__ = __name__
del _public
