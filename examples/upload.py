"""Uploads consumed in a thread pool: a browser form and a raw PUT, to disk, with SHA-256.

Run ``python examples/upload.py --port 0 --directory /tmp/uploads``: it prints the URL and
serves until Ctrl-C. Open the URL in a browser for the form, or upload with
``curl -T big.iso URL/files/big.iso`` and compare ``sha256sum big.iso``.

Every step that touches the disk runs in the executor: opening the partial file (in the
first ``data_received`` call), writing and hashing each chunk, renaming it into place (in the
verb method) and deleting it when the upload fails or the client leaves
(``on_receive_aborted``). The IOLoop only reads the socket, and stops reading while more
than ``max_buffer_bytes`` wait for the disk: a slow disk slows the client, not the server.
The form needs ``pip install 'tornado-safestream[multipart]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from tornado_safestream import SafeStreamMixin, receive_on_executor, stream_on_executor
from tornado_safestream.multipart import DiskFile, MultipartForm

EXECUTOR = ThreadPoolExecutor(8)
#: Largest upload accepted (Tornado's own limit, checked as the body arrives).
MAX_BODY = 16 * 1024**3

FORM = b"""<!doctype html><meta charset="utf-8"><title>Upload</title>
<form method="post" action="/form" enctype="multipart/form-data">
<p><input name="comment" placeholder="comment"></p>
<p><input type="file" name="files" multiple></p>
<p><button>Upload</button></p></form>"""


@stream_request_body
class RawPut(SafeStreamMixin, RequestHandler):
    """``PUT /files/<name>``: the body, as it is, to ``<directory>/<name>``."""

    executor = EXECUTOR

    def initialize(self, directory: str) -> None:
        self.directory = directory
        self.file: IO[bytes] | None = None
        self.partial = os.path.join(directory, f".{uuid.uuid4().hex}.part")
        self.hash = hashlib.sha256()

    def prepare(self) -> None:
        name = self.path_args[0]
        if "/" in name or name.startswith("."):  # checked before any byte is stored
            raise HTTPError(400, "bad file name")

    @receive_on_executor(max_buffer_bytes=4 * 1024 * 1024)
    def data_received(self, chunk: bytes) -> None:
        if self.file is None:
            self.file = open(self.partial, "wb")  # noqa: SIM115 (closed in put/on_receive_aborted)
        self.file.write(chunk)
        self.hash.update(chunk)

    def on_receive_aborted(self, error: BaseException) -> None:
        if self.file is not None:  # the client left, or a write failed: no partial file kept
            self.file.close()
            os.unlink(self.partial)

    @stream_on_executor
    def put(self, name: str) -> None:
        if self.file is None:  # an empty body
            self.file = open(self.partial, "wb")  # noqa: SIM115
        self.file.close()
        os.replace(self.partial, os.path.join(self.directory, name))
        self.write({"name": name, "sha256": self.hash.hexdigest()})


@stream_request_body
class Form(SafeStreamMixin, RequestHandler):
    """``GET /form``: the form; ``POST /form``: its fields and files, files to disk."""

    executor = EXECUTOR

    def initialize(self, directory: str) -> None:
        self.directory = directory

    def get(self) -> None:
        self.write(FORM)

    def prepare(self) -> None:
        if self.request.method == "POST":
            self.form: MultipartForm[DiskFile] = MultipartForm(
                self.request.headers.get("Content-Type", ""),
                DiskFile.opener(self.directory),  # named by the library, never the client
                max_parts=100,
            )

    @receive_on_executor
    def data_received(self, chunk: bytes) -> None:
        self.form.feed(chunk)

    def on_receive_aborted(self, error: BaseException) -> None:
        self.form.discard()

    @stream_on_executor
    def post(self) -> None:
        self.form.finish()  # 400 if the body was cut short: then no file is kept
        stored = []
        for target in self.form.files.get("files", []):
            final = target.path[: -len(".part")]
            os.replace(target.path, final)
            filename = target.part.filename if target.part else None
            stored.append({"filename": filename, "stored": final, "sha256": target.sha256})
        self.write({"fields": self.form.fields, "files": stored})


async def serve(port: int, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    app = Application(
        [
            (r"/files/([^/]+)", RawPut, {"directory": directory}),
            (r"/(?:form)?", Form, {"directory": directory}),
        ]
    )
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(app, max_body_size=MAX_BODY)
    server.add_sockets(sockets)
    print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Receive uploads in a thread pool.")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--directory", default="uploads", help="where uploads are stored")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.directory))


if __name__ == "__main__":
    main()
