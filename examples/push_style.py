"""Push style: stream a file from a thread pool with ``self.write()`` and ``self.flush()``.

Run ``python examples/push_style.py --port 0``: it prints the URL and serves
``--file`` (this script by default) until Ctrl-C. Try ``curl -s URL | sha256sum``.

The handler is the classic thread-pool download loop. On a plain
``RequestHandler`` it would touch Tornado from a worker thread and corrupt the
response; with ``SafeStreamMixin`` and ``@stream_on_executor``, every
``write``/``flush`` made in the worker is carried out on the IOLoop thread, in
order, and ``flush()`` blocks the worker while the client is behind.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor


class Download(SafeStreamMixin, RequestHandler):
    executor = ThreadPoolExecutor(4)  # @stream_on_executor runs get() here

    def initialize(self, path: str) -> None:
        self.path = path

    @stream_on_executor
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        with open(self.path, "rb") as f:
            while chunk := f.read(256 * 1024):  # bigger reads: fewer GIL hand-offs
                self.write(chunk)
                self.flush()


async def serve(port: int, path: str) -> None:
    app = Application([(r"/download", Download, {"path": path})])
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/download", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a file, push style.")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--file", default=__file__, help="the file to serve (default: this one)")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.file))
    except KeyboardInterrupt:
        pass
    finally:
        Download.executor.shutdown()


if __name__ == "__main__":
    main()
