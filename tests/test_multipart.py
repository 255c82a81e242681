"""tornado_safestream.multipart: streamed multipart/form-data uploads parsed in the executor."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerFactory
from tornado.web import RequestHandler, stream_request_body
from upload_helpers import Events, Upload, blocks

from tornado_safestream import SafeStreamMixin, receive_on_executor, stream_on_executor
from tornado_safestream.multipart import DiskFile, MultipartForm

BOUNDARY = "----safestream-b0undary"


@stream_request_body
class FormHandler(SafeStreamMixin, RequestHandler):
    def initialize(
        self, directory: str, events: Events, limits: dict[str, int] | None = None
    ) -> None:
        self.directory = directory
        self.events = events
        self.limits = limits or {}

    def prepare(self) -> None:
        self.form: MultipartForm[DiskFile] = MultipartForm(
            self.request.headers.get("Content-Type", ""),
            DiskFile.opener(self.directory),
            **self.limits,
        )

    @receive_on_executor(max_buffer_bytes=128 * 1024)
    def data_received(self, chunk: bytes) -> None:
        self.form.feed(chunk)

    def on_receive_aborted(self, error: BaseException) -> None:
        self.form.discard()
        self.events.add("aborted", type(error).__name__)

    @stream_on_executor
    def post(self) -> None:
        self.form.finish()
        files = {
            name: [
                {
                    "filename": target.part.filename if target.part else None,
                    "sha256": target.sha256,
                    "size": target.size,
                    "path": target.path,
                }
                for target in targets
            ]
            for name, targets in self.form.files.items()
        }
        self.write({"fields": self.form.fields, "files": files})


def part(name: str, value: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode("utf-8") + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def post(port: int, body: bytes, piece: int = 1000, ctype: str | None = None) -> Any:
    headers = {"Content-Type": ctype or f"multipart/form-data; boundary={BOUNDARY}"}
    with Upload(
        port, "/", pieces(body, piece), length=len(body), method="POST", headers=headers
    ) as up:
        return up.response()


@pytest.fixture
def start(server: ServerFactory, executor: concurrent.futures.Executor, tmp_path: Path) -> Any:
    events = Events()

    def start(**limits: int) -> tuple[int, Events]:
        kwargs = {"directory": str(tmp_path), "events": events, "limits": limits}
        srv = server([(r"/", FormHandler, kwargs)], default_executor=executor)
        return srv.port, events

    return start


class TestMultipart:
    def test_fields_and_files(self, start: Any, tmp_path: Path) -> None:
        port, _ = start()
        big = b"".join(blocks(3 << 20, seed=5))
        # Contents that look like the boundary without being it.
        tricky = b"x\r\n--" + BOUNDARY[:-1].encode() + b"\r\n--" + BOUNDARY.encode() + b"-not"
        body = form(
            part("title", "Grüße, 世界".encode()),
            part("名前", b"value"),
            part("upload", big, "résumé.bin", "application/octet-stream"),
            part("upload", tricky, "../../etc/passwd"),
            part("empty", b"", "empty.txt"),
            part("title", b"second"),
        )
        for piece in (1, 997, 64 * 1024):
            if piece == 1:
                small = form(part("a", b"1"), part("f", tricky, "t.bin"))
                response = post(port, small, piece)
                assert response.status == 200, response.body
                result = json.loads(response.body)
                assert result["fields"] == {"a": ["1"]}
                assert result["files"]["f"][0]["sha256"] == hashlib.sha256(tricky).hexdigest()
                continue
            response = post(port, body, piece)
            assert response.status == 200, response.body
            result = json.loads(response.body)
            assert result["fields"] == {"title": ["Grüße, 世界", "second"], "名前": ["value"]}
            uploads = result["files"]["upload"]
            assert [u["filename"] for u in uploads] == ["résumé.bin", "../../etc/passwd"]
            for sent, stored in zip((big, tricky), uploads):
                assert stored["sha256"] == hashlib.sha256(sent).hexdigest()
                assert stored["size"] == len(sent)
                # Stored under a name of its own, in the directory: never the client's.
                assert os.path.dirname(stored["path"]) == str(tmp_path)
                with open(stored["path"], "rb") as f:
                    assert hashlib.sha256(f.read()).hexdigest() == stored["sha256"]
            assert result["files"]["empty"][0]["size"] == 0

    @pytest.mark.parametrize("cut", ["before-closing", "mid-file", "mid-headers", "empty"])
    def test_truncated_body(self, start: Any, tmp_path: Path, cut: str) -> None:
        port, _ = start()
        whole = form(part("a", b"1"), part("f", b"y" * 200_000, "f.bin"))
        body = {
            "before-closing": whole[: -len(f"--{BOUNDARY}--\r\n")],
            "mid-file": whole[:100_000],
            "mid-headers": whole[:60],
            "empty": b"",
        }[cut]
        response = post(port, body)
        assert response.status == 400
        assert os.listdir(tmp_path) == []  # no file kept, complete or partial

    @pytest.mark.parametrize(
        ("limits", "body"),
        [
            ({"max_parts": 2}, form(part("a", b"1"), part("b", b"2"), part("c", b"3"))),
            ({"max_field_size": 10}, form(part("a", b"x" * 11))),
            ({"max_header_size": 100}, form(part("a" * 200, b"1"))),
            ({"max_file_size": 1000}, form(part("f", b"z" * 5000, "f.bin"))),
        ],
        ids=["parts", "field", "header", "file"],
    )
    def test_limits(self, start: Any, tmp_path: Path, limits: dict[str, int], body: bytes) -> None:
        port, events = start(**limits)
        response = post(
            port, form(part("f", b"kept?", "early.bin"))[: -len(f"--{BOUNDARY}--\r\n")] + body
        )
        assert response.status == 413
        events.wait_for("aborted")
        assert os.listdir(tmp_path) == []

    def test_not_multipart(self, start: Any) -> None:
        port, _ = start()
        assert post(port, b"a=1", ctype="application/x-www-form-urlencoded").status == 415
        assert post(port, b"a=1", ctype="multipart/form-data").status == 400
