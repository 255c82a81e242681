"""Static files with no disk access on the IOLoop: `SafeStaticFileHandler`.

Run ``python examples/static_files.py --port 0 [--root DIR]``: it prints the URL and serves
until Ctrl-C. Try ``curl -sI URL/static/app.css`` and ``curl -s URL/`` (the page links the
stylesheet with ``static_url()``, versioned from the first request: the versions were
computed at start-up).

``SafeStaticFileHandler`` is a drop-in ``StaticFileHandler``: the ``static_handler_class``
setting for ``static_path``, and a route handler for another directory. Every ``stat``,
``open``, read and hash runs in its executor; where the connection allows it the body goes
out with ``sendfile``, a bounded burst at a time, with no thread held while the client is
slow.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStaticFileHandler


class Static(SafeStaticFileHandler):
    # Its own pool: a slow disk then never queues behind the rest of the application's
    # executor work (None, the default, is the IOLoop's default executor).
    executor = ThreadPoolExecutor(8, thread_name_prefix="static")
    max_buffer_bytes = 1024 * 1024


class Index(RequestHandler):
    def get(self) -> None:
        # On the loop: static_url() reads no file (the version is cached, see main()).
        css = self.static_url("app.css")
        self.write(f'<!doctype html><link rel="stylesheet" href="{css}"><h1>Hello</h1>\n')


def make_app(root: str) -> Application:
    return Application(
        [
            (r"/", Index),
            (r"/downloads/(.*)", Static, {"path": os.path.join(root, "downloads")}),
        ],
        static_path=os.path.join(root, "static"),
        static_handler_class=Static,
    )


def make_example_files(root: str) -> None:
    os.makedirs(os.path.join(root, "static"), exist_ok=True)
    os.makedirs(os.path.join(root, "downloads"), exist_ok=True)
    with open(os.path.join(root, "static", "app.css"), "w", encoding="utf-8") as f:
        f.write("h1 { color: teal }\n")
    with open(os.path.join(root, "downloads", "big.bin"), "wb") as f:
        f.write(os.urandom(16 * 1024 * 1024))


async def serve(port: int, root: str) -> None:
    app = make_app(root)
    # Warm the versions before serving: static_url() on the loop never reads a file, so a
    # path whose version is not cached yet gets no ?v= until the executor computed it.
    versions = await Static.warm_versions(app.settings)
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    print(f"{base}/  (static files versioned: {len(versions)})", flush=True)
    print(f"{base}/downloads/big.bin", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve static files off the IOLoop.")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--root", help="a directory with static/ and downloads/ (default: made)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as made:
        root = args.root or made
        if not args.root:
            make_example_files(root)
        try:
            asyncio.run(serve(args.port, root))
        except KeyboardInterrupt:
            pass
        finally:
            Static.executor.shutdown()


if __name__ == "__main__":
    main()
