"""Scale out: serve one file from several processes, with ``fork_processes`` or ``reuse_port``.

Run ``python examples/scale_out.py --port 0 --processes 2``: it prints the URL, then one
``process PID ready`` line per server process, and serves ``--file`` (this script by
default) at ``/push`` (push style) and ``/generator`` (generator style) until Ctrl-C or
SIGTERM. Try ``curl -si URL/push | grep -i served-by`` a few times. Every response names
the process that served it in its ``X-Served-By-Pid`` header.

``--mode fork`` (the default, Unix): the parent binds the listening sockets, then
`tornado.process.fork_processes` forks the children, which share them. Each child creates
its own IOLoop, ``HTTPServer`` and ``ThreadPoolExecutor`` *after* the fork. A thread pool
whose threads were started before ``fork()`` has no threads in the child: its copy believes
it has idle workers that do not exist, and work submitted to it never runs.
``--executor-before-fork`` makes that mistake on purpose; ``@stream_on_executor`` then
fails each request with a 500 and logs a ``RuntimeError`` that says so, instead of hanging.

``--mode reuse-port`` (Linux): independent processes, started the way a process manager
would start them, each bind their own listening socket with ``reuse_port=True``. The
kernel spreads the connections among them. Nothing is shared and nothing is forked, so
there is no pre-fork trap.

Stopping: SIGTERM or SIGINT to the parent stops every process. The parent closes its end of
a "lifeline" pipe that every child watches. Each child then stops accepting, closes its
connections, shuts its executor down and exits with status 0. ``fork_processes`` restarts
only the children that die abnormally, so the parent exits once all of them have. If the
parent is killed outright, its end of the pipe closes all the same, and the children exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import tornado.process
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

HOST = "127.0.0.1"
SERVER_THREADS = 4
#: Seconds a stopping process gives its open connections to close.
CLOSE_TIMEOUT = 5.0

log = logging.getLogger("scale_out")


class PushDownload(SafeStreamMixin, RequestHandler):
    executor: ThreadPoolExecutor  # @stream_on_executor runs get() here

    def initialize(self, path: str, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self.executor = executor

    @stream_on_executor
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Served-By-Pid", str(os.getpid()))
        with open(self.path, "rb") as f:
            while chunk := f.read(256 * 1024):  # bigger reads: fewer GIL hand-offs
                self.write(chunk)
                self.flush()


class GeneratorDownload(SafeStreamMixin, RequestHandler):
    executor: ThreadPoolExecutor

    def initialize(self, path: str, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=256 * 1024)
    def get(self) -> Iterator[bytes]:
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Served-By-Pid", str(os.getpid()))
        with open(self.path, "rb") as f:
            while chunk := f.read(16 * 1024):
                yield chunk


# ------------------------------------------------------------------------ one server process


async def serve(
    sockets: Sequence[socket.socket], path: str, executor: ThreadPoolExecutor, lifeline: Lifeline
) -> None:
    """Serve on ``sockets`` until SIGTERM, SIGINT or the end of the parent's ``lifeline``."""
    kwargs = {"path": path, "executor": executor}
    app = Application(
        [(r"/push", PushDownload, kwargs), (r"/generator", GeneratorDownload, kwargs)]
    )
    server = HTTPServer(app)
    server.add_sockets(sockets)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_reader(lifeline.read_fd, stop.set)  # readable = end of file: the parent is gone
    if lifeline.stop_requested:  # a signal came before the loop took the signals over
        stop.set()
    announce(f"process {os.getpid()} ready")
    try:
        await stop.wait()
    finally:
        loop.remove_reader(lifeline.read_fd)
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("connections still open after %ss; exiting anyway", CLOSE_TIMEOUT)


def run_server(
    sockets: Sequence[socket.socket], path: str, executor: ThreadPoolExecutor, lifeline: Lifeline
) -> None:
    try:
        asyncio.run(serve(sockets, path, executor, lifeline))
    finally:
        # Closing the connections released any worker blocked on a slow client.
        executor.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------ parent and children


class Lifeline:
    """A pipe from the parent to its children, whose write end only the parent holds.

    A child watches the read end: it becomes readable (end of file) once no process holds
    the write end any more, because the parent closed it on SIGTERM/SIGINT, or died.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self._write_fd = write_fd
        #: SIGTERM or SIGINT came before this process's IOLoop took the signals over.
        self.stop_requested = False

    @classmethod
    def create(cls) -> Lifeline:
        return cls(*os.pipe())

    @classmethod
    def inherited(cls, read_fd: int) -> Lifeline:
        """In a child started with ``--lifeline-fd``: the parent's read end."""
        return cls(read_fd, -1)

    def cut(self) -> None:
        """Close this process's copy of the write end. Idempotent."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self.cut()

    def install_signal_handlers(self) -> None:
        # A forked child inherits them until its IOLoop takes SIGTERM/SIGINT over.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)


def announce(line: str) -> None:
    # One write per line: the processes share stdout.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_forked(port: int, processes: int, path: str, executor_before_fork: bool) -> None:
    """Bind, fork, serve in each child. The parent never returns: it exits once all have."""
    sockets = bind_sockets(port, HOST)
    port = sockets[0].getsockname()[1]
    announce(f"serving http://{HOST}:{port}/push and /generator, {processes} processes (fork)")
    inherited: ThreadPoolExecutor | None = None
    if executor_before_fork:  # the mistake this example warns about
        inherited = ThreadPoolExecutor(SERVER_THREADS)
        # Warm it up, as a preloading app would: all its threads start, in this process only.
        warm_up = threading.Barrier(SERVER_THREADS, timeout=CLOSE_TIMEOUT)
        for future in [inherited.submit(warm_up.wait) for _ in range(SERVER_THREADS)]:
            future.result()
    lifeline = Lifeline.create()
    lifeline.install_signal_handlers()
    # In the parent, fork_processes waits for the children, restarts those that die
    # abnormally, and calls sys.exit(0) once all of them exited with status 0.
    tornado.process.fork_processes(processes)
    lifeline.cut()  # leave the parent the only write end
    executor = inherited or ThreadPoolExecutor(SERVER_THREADS)  # created after the fork
    run_server(sockets, path, executor, lifeline)


def run_reuse_port(port: int, processes: int, path: str) -> int:
    """Start independent server processes on one port; return the worst exit status."""
    # Hold the port (bound, not listening, so no connection ever lands here): with port 0,
    # every process then binds the same one.
    reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind((HOST, port))
    port = reservation.getsockname()[1]
    announce(
        f"serving http://{HOST}:{port}/push and /generator, {processes} processes (reuse_port)"
    )
    lifeline = Lifeline.create()
    lifeline.install_signal_handlers()
    command = [sys.executable, os.path.abspath(__file__), "--file", path]
    command += ["--reuse-port-worker", str(port), "--lifeline-fd", str(lifeline.read_fd)]
    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            if lifeline.stop_requested:
                break
            children.append(subprocess.Popen(command, pass_fds=[lifeline.read_fd]))
    except BaseException:
        lifeline.cut()
        raise
    finally:
        # No restarts here: a process manager would do that. Wait until the lifeline is cut.
        statuses = [child.wait() for child in children]
        reservation.close()
    return max((abs(status) for status in statuses), default=0)


def run_reuse_port_worker(port: int, path: str, lifeline_fd: int) -> None:
    lifeline = Lifeline.inherited(lifeline_fd)
    lifeline.install_signal_handlers()
    sockets = bind_sockets(port, HOST, reuse_port=True)
    run_server(sockets, path, ThreadPoolExecutor(SERVER_THREADS), lifeline)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a file from several processes.")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument(
        "--processes", type=int, default=0, help="server processes (default: one per CPU)"
    )
    parser.add_argument("--mode", choices=("fork", "reuse-port"), default="fork")
    parser.add_argument("--file", default=__file__, help="the file to serve (default: this one)")
    parser.add_argument(
        "--executor-before-fork",
        action="store_true",
        help="fork mode: start the thread pool before forking, to see the error it causes",
    )
    parser.add_argument("--reuse-port-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s pid %(process)d %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("tornado.access").setLevel(logging.WARNING)  # 4xx and 5xx only
    if args.reuse_port_worker is not None:
        run_reuse_port_worker(args.reuse_port_worker, args.file, args.lifeline_fd)
        return
    processes = args.processes if args.processes > 0 else tornado.process.cpu_count()
    if args.mode == "fork":
        run_forked(args.port, processes, args.file, args.executor_before_fork)
        return
    if args.executor_before_fork:
        parser.error("--executor-before-fork goes with --mode fork: reuse-port does not fork")
    if not hasattr(socket, "SO_REUSEPORT"):
        parser.error("--mode reuse-port needs SO_REUSEPORT (Linux)")
    sys.exit(run_reuse_port(args.port, processes, args.file))


if __name__ == "__main__":
    main()
