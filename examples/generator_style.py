"""Generator style: a CSV export produced in a thread pool, one ``yield`` per row.

Run ``python examples/generator_style.py --port 0``: it prints the URL and
serves until Ctrl-C. Try ``curl -s 'URL?rows=5'``.

``@stream_on_executor`` on a generator method pulls it in the handler's
executor a bounded read-ahead at a time (``max_buffer_bytes``) and sends the
chunks from the IOLoop thread. While a slow client catches up, no thread is
held. The generator may read the request (``self.get_argument``) and set
headers before its first ``yield``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor


class Export(SafeStreamMixin, RequestHandler):
    executor = ThreadPoolExecutor(4)

    @stream_on_executor(max_buffer_bytes=256 * 1024)
    def get(self) -> Iterator[str]:
        rows = int(self.get_argument("rows", "100000"))
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        yield "n,square,cube\n"
        for n in range(rows):  # stands for a slow, blocking database cursor
            yield f"{n},{n * n},{n * n * n}\n"


async def serve(port: int) -> None:
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(Application([(r"/export.csv", Export)]))
    server.add_sockets(sockets)
    print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/export.csv", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a CSV export, generator style.")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass
    finally:
        Export.executor.shutdown()


if __name__ == "__main__":
    main()
