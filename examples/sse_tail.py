"""Server-sent events: tail a growing log file to the browser, from a worker thread.

Run ``python examples/sse_tail.py`` and open the URL it prints: the page shows each line
appended to the log as it is written. Without ``--log``, the script writes a demo log of
its own (a line every half second, in a thread); with ``--log /var/log/app.log`` it tails
that file. ``curl -N URL/events`` shows the raw stream.

``GET /events`` is a generator-style method: it opens the file, seeks to its end (or to the
``Last-Event-ID`` a reconnecting browser sends), and yields one event per new line, each
with its byte offset as its ``id``. The generator waits for the file to grow in the
executor (a blocking wait, which is why it runs there), and when nothing was written for
``--heartbeat`` seconds it yields a comment line, ``: heartbeat``, so that proxies and load
balancers keep an idle connection open. When the browser leaves, ``on_connection_close``
wakes the generator at once and the library closes it: its ``finally`` closes the file,
in the executor. Each open page holds an executor thread while it waits, so size the
executor for the number of tails you serve at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

log = logging.getLogger("sse_tail")

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>tail</title>
<style>body { font: 14px monospace; margin: 1em } #status { color: gray }</style>
<p id="status">connecting...</p>
<pre id="lines"></pre>
<script>
const lines = document.getElementById("lines");
const status = document.getElementById("status");
const source = new EventSource("events");
source.onopen = () => { status.textContent = "connected"; };
source.onerror = () => { status.textContent = "reconnecting..."; };
source.onmessage = (event) => { lines.textContent += event.data + "\\n"; };
</script>
"""


class Page(RequestHandler):
    def get(self) -> None:
        self.write(PAGE)


class Events(SafeStreamMixin, RequestHandler):
    """``GET /events``: the lines appended to the log, as server-sent events."""

    executor = ThreadPoolExecutor(16)  # one thread per open page while it waits

    def initialize(self, path: str, heartbeat: float = 15.0, poll: float = 0.1) -> None:
        self.path = path
        self.heartbeat = heartbeat
        self.poll = poll
        self.gone = threading.Event()  # set on the loop, waited on by the worker

    def on_connection_close(self) -> None:
        self.gone.set()  # wakes the generator below at once
        super().on_connection_close()

    @stream_on_executor(max_buffer_bytes=64 * 1024)
    def get(self) -> Iterator[str]:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        last_id = self.request.headers.get("Last-Event-ID", "")
        events = 0
        with open(self.path, "rb") as f:
            try:
                position = int(last_id) if last_id.isdigit() else f.seek(0, os.SEEK_END)
                f.seek(position)
                # A reconnect delay for the browser, and the headers sent at once.
                yield "retry: 2000\n: connected\n\n"
                pending = b""
                quiet_since = time.monotonic()
                while not self.gone.is_set():
                    data = f.read(64 * 1024)
                    if not data:
                        if os.fstat(f.fileno()).st_size < f.tell():  # truncated: start over
                            f.seek(0)
                            pending = b""
                            continue
                        if time.monotonic() - quiet_since >= self.heartbeat:
                            yield ": heartbeat\n\n"
                            quiet_since = time.monotonic()
                        self.gone.wait(self.poll)
                        continue
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    position = f.tell() - len(pending)
                    if lines:
                        end = position
                        out = []
                        for line in reversed(lines):  # ids are the offset after each line
                            out.append(f"id: {end}\ndata: {_text(line)}\n\n")
                            end -= len(line) + 1
                        out.reverse()
                        events += len(lines)
                        yield "".join(out)
                        quiet_since = time.monotonic()
            finally:
                log.info("tail of %s closed after %d events", self.path, events)


def _text(line: bytes) -> str:
    # One event per line: a carriage return would end the SSE line early.
    return line.decode("utf-8", "replace").replace("\r", "")


def make_app(path: str, heartbeat: float = 15.0, poll: float = 0.1) -> Application:
    return Application(
        [
            (r"/", Page),
            (r"/events", Events, {"path": path, "heartbeat": heartbeat, "poll": poll}),
        ]
    )


def write_demo_log(path: str, stop: threading.Event, interval: float = 0.5) -> None:
    """Append a line to ``path`` every ``interval`` seconds until ``stop`` is set."""
    n = 0
    while not stop.wait(interval):
        n += 1
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} demo line {n}\n")


async def serve(port: int, path: str, heartbeat: float) -> None:
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(make_app(path, heartbeat))
    server.add_sockets(sockets)
    print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/  (tailing {path})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()  # until Ctrl-C
    finally:
        # Closing the connections wakes every tail (on_connection_close), so that the
        # executor's threads are free before it is shut down.
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Tail a log file to the browser (SSE).")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--log", help="the file to tail (default: a demo log written here)")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="seconds (default 15)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.log
        writer = None
        if path is None:
            path = os.path.join(tmp, "demo.log")
            open(path, "w").close()
            writer = threading.Thread(target=write_demo_log, args=(path, stop), daemon=True)
            writer.start()
        try:
            asyncio.run(serve(args.port, path, args.heartbeat))
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            if writer is not None:
                writer.join(5)
            Events.executor.shutdown()


if __name__ == "__main__":
    main()
