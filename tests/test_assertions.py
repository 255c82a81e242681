"""Assertion mode: the switch, the guarded Tornado objects, and whole servers run under it.

Violations are provoked on real loops running in their own threads (the ``server`` fixture).
The tests that provoke them on purpose request the plugin's ``thread_violations`` fixture;
without it the plugin fails the test, which is the point.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import gc
import importlib.util
import inspect
import os
import re
import socket
import sys
import threading
import weakref
from collections.abc import Awaitable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TypeVar, cast

import pytest
import tornado
from helpers import (
    TIMEOUT,
    ExecutorFactory,
    LogRecorder,
    Recorder,
    Route,
    ServerFactory,
    ServerThread,
    fetch,
    payload,
    sha256,
    split,
)
from tornado.concurrent import run_on_executor
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, ResponseStartLine
from tornado.ioloop import IOLoop
from tornado.iostream import BaseIOStream, IOStream, PipeIOStream, SSLIOStream
from tornado.platform.asyncio import AsyncIOLoop, BaseAsyncIOLoop
from tornado.web import RequestHandler, StaticFileHandler

import tornado_safestream as safestream
from tornado_safestream import (
    SafeStreamMixin,
    WrongThreadError,
    disable_thread_assertions,
    enable_thread_assertions,
    stream_on_executor,
)
from tornado_safestream._assertions import recorded_since, violation_count

_T = TypeVar("_T")

KiB = 1024
MiB = 1024 * KiB
HERE = os.path.abspath(__file__)
_THIS_THREAD = threading.current_thread().name  # pytest runs the tests in this thread
DEMO = Path(__file__).resolve().parent.parent / "examples" / "download_demo.py"

# --------------------------------------------------------------------------- the API's table

#: API.md, "Assertion mode": what is checked, per class.
STREAM_METHODS = (
    "read_until",
    "read_until_regex",
    "read_bytes",
    "read_into",
    "read_until_close",
    "write",
    "close",
    "set_close_callback",
    "set_nodelay",
    "start_tls",
)
CONNECTION_METHODS = ("write_headers", "write", "finish", "detach", "set_close_callback")
RESPONSE_METHODS = (
    "write",
    "flush",
    "finish",
    "set_status",
    "set_header",
    "add_header",
    "clear_header",
    "clear",
    "set_cookie",
    "clear_cookie",
    "send_error",
    "redirect",
)
IOLOOP_METHODS = (
    "add_handler",
    "update_handler",
    "remove_handler",
    "call_at",
    "call_later",
    "add_timeout",
    "remove_timeout",
    "add_future",
    "spawn_callback",
)

#: Where Tornado defines them (a subclass may override one: it is checked too).
DEFINING: list[tuple[type, tuple[str, ...]]] = [
    (BaseIOStream, STREAM_METHODS),
    (IOStream, STREAM_METHODS),
    (SSLIOStream, STREAM_METHODS),
    (PipeIOStream, STREAM_METHODS),
    (HTTP1Connection, CONNECTION_METHODS),
    (RequestHandler, RESPONSE_METHODS),
    (IOLoop, IOLOOP_METHODS),
    (BaseAsyncIOLoop, IOLOOP_METHODS),
]
#: What users call: the concrete classes, whichever class the method comes from.
CONCRETE: list[tuple[type, tuple[str, ...]]] = [
    (IOStream, STREAM_METHODS),
    (SSLIOStream, STREAM_METHODS),
    (PipeIOStream, tuple(n for n in STREAM_METHODS if n != "start_tls")),
    (HTTP1Connection, CONNECTION_METHODS),
    (RequestHandler, RESPONSE_METHODS),
    (AsyncIOLoop, IOLOOP_METHODS),
]

_TORNADO_DIR = os.path.dirname(os.path.abspath(tornado.__file__)) + os.sep

Snapshot = dict[tuple[type, str], object]


def _from_tornado(function: object) -> bool:
    """Tornado's own function (not a guard, whatever ``functools.wraps`` copied onto it)."""
    code = getattr(function, "__code__", None)
    return code is not None and os.path.abspath(code.co_filename).startswith(_TORNADO_DIR)


def _defined() -> Snapshot:
    return {
        (cls, name): cls.__dict__[name]
        for cls, names in DEFINING
        for name in names
        if name in cls.__dict__
    }


def _class_dicts() -> dict[type, dict[str, object]]:
    return {cls: dict(vars(cls)) for cls, _ in DEFINING}


def _is_on() -> bool:
    return not _from_tornado(BaseIOStream.__dict__["write"])


def _assert_all_guarded() -> None:
    unguarded = [
        f"{cls.__name__}.{name}"
        for cls, names in CONCRETE
        for name in names
        if _from_tornado(getattr(cls, name))
    ]
    assert not unguarded, f"not checked while enabled: {unguarded}"


def _assert_tornados_own(originals: Snapshot) -> None:
    changed = [
        f"{cls.__name__}.{name}"
        for (cls, name), original in originals.items()
        if cls.__dict__.get(name) is not original
    ]
    assert not changed, f"not Tornado's own after disable: {changed}"


@pytest.fixture
def originals() -> Iterator[Snapshot]:
    """Assertion mode off, and Tornado's own functions; the state before is restored after."""
    was_on = _is_on()
    disable_thread_assertions()
    own = _defined()
    assert all(_from_tornado(function) for function in own.values()), own
    try:
        yield own
    finally:
        if was_on:
            enable_thread_assertions()
        else:
            disable_thread_assertions()


# --------------------------------------------------------------------------- the switch


class TestSwitch:
    def test_the_table_is_not_empty(self) -> None:
        for names in (STREAM_METHODS, CONNECTION_METHODS, RESPONSE_METHODS, IOLOOP_METHODS):
            for name in names:
                assert any(name in cls.__dict__ for cls, _ in DEFINING), name

    def test_enable_checks_every_listed_method(self, originals: Snapshot) -> None:
        enable_thread_assertions()
        _assert_all_guarded()
        assert IOStream.write is not originals[BaseIOStream, "write"]
        assert RequestHandler.flush is not originals[RequestHandler, "flush"]

    def test_disable_puts_tornados_own_functions_back(self, originals: Snapshot) -> None:
        write = originals[BaseIOStream, "write"]
        flush = originals[RequestHandler, "flush"]
        connection_write = originals[HTTP1Connection, "write"]
        call_later = originals[IOLoop, "call_later"]
        add_handler = originals[BaseAsyncIOLoop, "add_handler"]
        before = _class_dicts()
        enable_thread_assertions()
        assert IOStream.write is not write
        disable_thread_assertions()
        assert IOStream.write is write
        assert RequestHandler.flush is flush
        assert HTTP1Connection.write is connection_write
        assert IOLoop.call_later is call_later
        assert AsyncIOLoop.call_later is call_later
        assert BaseAsyncIOLoop.add_handler is add_handler
        _assert_tornados_own(originals)
        after = _class_dicts()
        for cls, attributes in before.items():
            assert after[cls].keys() == attributes.keys(), cls
            moved = [name for name, value in attributes.items() if after[cls][name] is not value]
            assert not moved, (cls, moved)

    def test_add_callback_is_never_replaced(self, originals: Snapshot) -> None:
        add_callback = IOLoop.__dict__.get("add_callback")
        async_add_callback = BaseAsyncIOLoop.__dict__["add_callback"]
        with safestream.thread_assertions():
            assert IOLoop.__dict__.get("add_callback") is add_callback
            assert BaseAsyncIOLoop.__dict__["add_callback"] is async_add_callback

    def test_enable_is_idempotent(self, originals: Snapshot) -> None:
        enable_thread_assertions()
        guards = _defined()
        enable_thread_assertions()
        assert all(_defined()[key] is guard for key, guard in guards.items())
        disable_thread_assertions()  # once is enough: no guard around a guard left behind
        _assert_tornados_own(originals)

    def test_disable_is_idempotent(self, originals: Snapshot) -> None:
        disable_thread_assertions()
        disable_thread_assertions()
        _assert_tornados_own(originals)
        enable_thread_assertions()
        disable_thread_assertions()
        disable_thread_assertions()
        _assert_tornados_own(originals)

    def test_context_manager_from_off(self, originals: Snapshot) -> None:
        with safestream.thread_assertions():
            _assert_all_guarded()
        assert not _is_on()
        _assert_tornados_own(originals)

    def test_context_manager_when_already_on(self, originals: Snapshot) -> None:
        enable_thread_assertions()
        guards = _defined()
        with safestream.thread_assertions():
            _assert_all_guarded()
        assert _is_on()
        assert all(_defined()[key] is guard for key, guard in guards.items())

    def test_context_manager_nested(self, originals: Snapshot) -> None:
        with safestream.thread_assertions():
            with safestream.thread_assertions():
                _assert_all_guarded()
            assert _is_on()
            _assert_all_guarded()
        assert not _is_on()
        _assert_tornados_own(originals)

    def test_context_manager_restores_after_an_exception(self, originals: Snapshot) -> None:
        with pytest.raises(ValueError, match=r"^inside$"), safestream.thread_assertions():
            raise ValueError("inside")
        _assert_tornados_own(originals)

    def test_from_another_thread(self, originals: Snapshot) -> None:
        _in_thread(enable_thread_assertions)
        _assert_all_guarded()
        _in_thread(disable_thread_assertions)
        _assert_tornados_own(originals)

    def test_from_many_threads_at_once(self, originals: Snapshot) -> None:
        barrier = threading.Barrier(8, timeout=TIMEOUT)

        def toggle(n: int) -> None:
            barrier.wait()
            for i in range(50):
                if (i + n) % 3 == 0:
                    with safestream.thread_assertions():
                        pass
                elif (i + n) % 3 == 1:
                    enable_thread_assertions()
                else:
                    disable_thread_assertions()

        _in_threads(toggle, 8)
        enable_thread_assertions()
        _assert_all_guarded()
        disable_thread_assertions()
        _assert_tornados_own(originals)

    def test_blocks_in_two_threads_keep_it_on_until_the_last_ends(
        self, originals: Snapshot
    ) -> None:
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen: list[bool] = []

        def first() -> None:
            with safestream.thread_assertions():
                first_in.set()
                assert second_in.wait(TIMEOUT)
            first_out.set()

        def second() -> None:
            assert first_in.wait(TIMEOUT)
            with safestream.thread_assertions():
                second_in.set()
                assert first_out.wait(TIMEOUT)
                seen.append(_is_on())

        _in_threads(lambda i: (first, second)[i](), 2)
        assert seen == [True], "the first block to end turned it off under the second"
        assert not _is_on()
        _assert_tornados_own(originals)

    def test_disable_keeps_a_patch_made_over_a_guard(
        self, originals: Snapshot, wired: Wired, thread_violations: list[WrongThreadError]
    ) -> None:
        name = "set_nodelay"
        own = originals[IOStream, name]
        sock = wired.stream.socket
        calls: list[bool] = []

        def patched(stream: IOStream, value: bool) -> None:
            calls.append(value)

        enable_thread_assertions()
        guard = cast(Callable[[IOStream, bool], None], IOStream.__dict__[name])
        assert guard is not own
        setattr(IOStream, name, patched)  # as monkeypatch.setattr, while enabled
        try:
            disable_thread_assertions()
            assert IOStream.__dict__[name] is patched, "their patch was undone"
            _assert_tornados_own({k: f for k, f in originals.items() if f is not own})
            wired.stream.set_nodelay(True)
            assert calls == [True]
            # An old guard, called from this (the wrong) thread once disabled: Tornado's own
            # method runs, unchecked.
            assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            guard(wired.stream, True)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            setattr(IOStream, name, guard)  # as monkeypatch's undo puts it back
            wired.stream.set_nodelay(False)
            assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            setattr(IOStream, name, own)
        assert thread_violations == []
        assert calls == [True]


def _in_threads(function: Callable[[int], object], count: int) -> None:
    """Call ``function(i)`` in ``count`` new threads; wait for them (bounded), raise their error."""
    results: list[concurrent.futures.Future[object]] = [
        concurrent.futures.Future() for _ in range(count)
    ]

    def run(i: int) -> None:
        try:
            results[i].set_result(function(i))
        except BaseException as exc:
            results[i].set_exception(exc)

    threads = [
        threading.Thread(target=run, args=(i,), name=f"switcher-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for result in results:
        result.result(TIMEOUT)
    for thread in threads:
        thread.join(TIMEOUT)


def _in_thread(function: Callable[[], object]) -> None:
    """Call ``function`` in a new thread and wait for it (bounded); its error is raised."""
    _in_threads(lambda _: function(), 1)


# --------------------------------------------------------------------------- helpers


def _here() -> int:
    """The caller's line number."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def _line_in(function: Callable[..., Any], snippet: str) -> int:
    """The line of the one source line of ``function`` (decorators unwrapped) with ``snippet``."""
    lines, first = inspect.getsourcelines(inspect.unwrap(function))
    hits = [first + i for i, text in enumerate(lines) if snippet in text]
    assert len(hits) == 1, (snippet, hits)
    return hits[0]


def _same_file(a: str | None, b: str) -> bool:
    return a is not None and os.path.exists(a) and os.path.samefile(a, b)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.settimeout(TIMEOUT)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        one = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        other, _ = listener.accept()
    other.settimeout(TIMEOUT)
    return one, other


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise AssertionError(f"peer closed after {bytes(data)!r}")
        data += piece
    return bytes(data)


def _await_on_loop(srv: ServerThread, make: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``await make()`` on the server's loop thread and return the result (bounded)."""

    async def run() -> _T:
        return await make()

    loop = cast(BaseAsyncIOLoop, srv.io_loop).asyncio_loop
    return asyncio.run_coroutine_threadsafe(run(), loop).result(TIMEOUT)


def _loop_turns(srv: ServerThread, turns: int = 2) -> None:
    """Let the server's loop run ``turns`` iterations (callbacks already due run in them)."""
    for _ in range(turns):
        srv.run_on_loop(lambda: None)


@dataclass
class Wired:
    """An `IOStream` owned by a server loop, and the peer socket at its other end."""

    srv: ServerThread
    stream: IOStream
    peer: socket.socket

    def assert_untouched(self) -> None:
        """Nothing reached the peer, the stream is open and still reads and writes on its loop."""
        assert not self.stream.closed()
        self.peer.sendall(b"ping\n")

        async def round_trip() -> bytes:
            await self.stream.write(b"marker")
            return await self.stream.read_until(b"\n")

        assert _await_on_loop(self.srv, round_trip) == b"ping\n"
        assert _recv_exactly(self.peer, len(b"marker")) == b"marker"


@pytest.fixture
def wired(server: ServerFactory) -> Iterator[Wired]:
    srv = server([])
    one, other = _tcp_pair()
    stream = srv.run_on_loop(lambda: IOStream(one))
    assert isinstance(stream, IOStream)
    try:
        yield Wired(srv, stream, other)
    finally:
        srv.run_on_loop(stream.close)
        other.close()


# --------------------------------------------------------------------------- violations


@pytest.mark.usefixtures("thread_assertions")
class TestForeignThreadStream:
    def test_write_raises_before_the_stream_is_touched(
        self, wired: Wired, thread_violations: list[WrongThreadError]
    ) -> None:
        mark = violation_count()
        with pytest.raises(
            WrongThreadError,
            match=rf"^IOStream\.write\(\) called from thread '{re.escape(_THIS_THREAD)}', but "
            r"its IOLoop runs in thread 'test-server-loop'\n",
        ) as info:
            line = _here() + 1
            wired.stream.write(b"foreign")
        error = info.value
        assert error.method == "IOStream.write()"
        assert error.thread_name == threading.current_thread().name
        assert error.loop_thread_name == wired.srv.thread.name
        assert _same_file(error.filename, HERE)
        assert error.lineno == line
        assert error.source_line == 'wired.stream.write(b"foreign")'
        assert f'\n  at {error.filename}:{line}: wired.stream.write(b"foreign")\n' in str(error)
        assert thread_violations == [error]
        assert thread_violations[0] == error  # a copy: the record keeps no traceback
        assert thread_violations[0].__traceback__ is None
        assert recorded_since(mark) == [error]
        # The peer receives the loop's own write and nothing before it.
        wired.assert_untouched()
        wired.srv.run_on_loop(wired.stream.close)
        assert wired.peer.recv(100) == b""

    @pytest.mark.parametrize(
        ("name", "call"),
        [
            ("read_until", lambda s: s.read_until(b"\n")),
            ("read_until_regex", lambda s: s.read_until_regex(b"x")),
            ("read_bytes", lambda s: s.read_bytes(4)),
            ("read_into", lambda s: s.read_into(bytearray(4))),
            ("read_until_close", lambda s: s.read_until_close()),
            ("write", lambda s: s.write(b"foreign")),
            ("close", lambda s: s.close()),
            ("set_close_callback", lambda s: s.set_close_callback(None)),
            ("set_nodelay", lambda s: s.set_nodelay(True)),
            ("start_tls", lambda s: s.start_tls(False)),
        ],
    )
    def test_every_stream_method(
        self,
        wired: Wired,
        thread_violations: list[WrongThreadError],
        name: str,
        call: Callable[[IOStream], object],
    ) -> None:
        assert name in STREAM_METHODS
        with pytest.raises(WrongThreadError, match=rf"^IOStream\.{name}\(\) called from thread "):
            call(wired.stream)
        assert [e.method for e in thread_violations] == [f"IOStream.{name}()"]
        assert _same_file(thread_violations[0].filename, HERE)
        wired.assert_untouched()


@dataclass
class LoopFixtures:
    """What the IOLoop calls below need: set up on the loop, cleaned up on the loop."""

    srv: ServerThread
    io_loop: IOLoop
    rec: Recorder
    spare: socket.socket  #: not registered with the loop
    registered: socket.socket  #: registered with the loop (for READ)
    handle: object  #: a timeout on the loop, far in the future
    done_future: concurrent.futures.Future[None]

    def ran(self, *args: object) -> None:
        self.rec.add("ran", threading.current_thread().name)

    def on_event(self, fd: object, events: int) -> None:
        self.rec.add("event", events)


@pytest.fixture
def loop_fixtures(server: ServerFactory) -> Iterator[LoopFixtures]:
    srv = server([])
    io_loop = srv.io_loop
    assert io_loop is not None
    pair = _tcp_pair()
    rec = Recorder()
    done_future: concurrent.futures.Future[None] = concurrent.futures.Future()
    done_future.set_result(None)
    fixtures = LoopFixtures(srv, io_loop, rec, pair[0], pair[1], None, done_future)
    srv.run_on_loop(
        lambda: io_loop.add_handler(fixtures.registered.fileno(), fixtures.on_event, IOLoop.READ)
    )
    fixtures.handle = srv.run_on_loop(lambda: io_loop.call_later(3600, fixtures.ran))
    try:
        yield fixtures
    finally:
        srv.run_on_loop(lambda: io_loop.remove_timeout(fixtures.handle))
        srv.run_on_loop(lambda: io_loop.remove_handler(fixtures.registered.fileno()))
        for sock in pair:
            sock.close()


IOLOOP_CALLS: list[tuple[str, Callable[[IOLoop, LoopFixtures], object]]] = [
    ("add_handler", lambda io, f: io.add_handler(f.spare.fileno(), f.on_event, IOLoop.WRITE)),
    (
        "update_handler",
        lambda io, f: io.update_handler(f.registered.fileno(), IOLoop.READ | IOLoop.WRITE),
    ),
    ("remove_handler", lambda io, f: io.remove_handler(f.registered.fileno())),
    ("call_at", lambda io, f: io.call_at(io.time(), f.ran)),
    ("call_later", lambda io, f: io.call_later(0, f.ran)),
    ("add_timeout", lambda io, f: io.add_timeout(io.time(), f.ran)),
    ("remove_timeout", lambda io, f: io.remove_timeout(f.handle)),
    ("add_future", lambda io, f: io.add_future(f.done_future, f.ran)),
    ("spawn_callback", lambda io, f: io.spawn_callback(f.ran)),
]


@pytest.mark.usefixtures("thread_assertions")
class TestForeignThreadIOLoop:
    def test_call_later_raises(
        self, loop_fixtures: LoopFixtures, thread_violations: list[WrongThreadError]
    ) -> None:
        io_loop = loop_fixtures.io_loop
        with pytest.raises(
            WrongThreadError,
            match=rf"^IOLoop\.call_later\(\) called from thread '{re.escape(_THIS_THREAD)}', "
            r"but its IOLoop runs in thread 'test-server-loop'\n",
        ) as info:
            line = _here() + 1
            io_loop.call_later(0, loop_fixtures.ran)
        assert info.value.lineno == line
        assert _same_file(info.value.filename, HERE)
        assert info.value.source_line == "io_loop.call_later(0, loop_fixtures.ran)"
        assert thread_violations == [info.value]  # one, though call_later calls call_at
        _loop_turns(loop_fixtures.srv)
        assert not loop_fixtures.rec.has("ran")

    @pytest.mark.parametrize(("name", "call"), IOLOOP_CALLS, ids=[n for n, _ in IOLOOP_CALLS])
    def test_every_unsafe_method(
        self,
        loop_fixtures: LoopFixtures,
        thread_violations: list[WrongThreadError],
        name: str,
        call: Callable[[IOLoop, LoopFixtures], object],
    ) -> None:
        assert name in IOLOOP_METHODS
        with pytest.raises(WrongThreadError, match=rf"^IOLoop\.{name}\(\) called from thread "):
            call(loop_fixtures.io_loop, loop_fixtures)
        assert [e.method for e in thread_violations] == [f"IOLoop.{name}()"]
        error = thread_violations[0]
        assert error.loop_thread_name == loop_fixtures.srv.thread.name
        assert _same_file(error.filename, HERE)
        _loop_turns(loop_fixtures.srv)
        assert loop_fixtures.rec.names() == []  # nothing was scheduled, registered or removed

    def test_call_site_of_a_method_handed_to_an_executor(
        self,
        loop_fixtures: LoopFixtures,
        make_executor: ExecutorFactory,
        thread_violations: list[WrongThreadError],
    ) -> None:
        # The worker's stack holds no frame of ours: the line that submitted the job is on
        # another thread. The call site is then, as API.md defines it, the first frame
        # outside Tornado and this package: the executor's own.
        worker = make_executor(1, "submit-worker")
        future = worker.submit(loop_fixtures.io_loop.call_later, 1, loop_fixtures.ran)
        with pytest.raises(
            WrongThreadError,
            match=r"^IOLoop\.call_later\(\) called from thread 'submit-worker_0', but its "
            r"IOLoop runs in thread 'test-server-loop'\n",
        ) as info:
            future.result(TIMEOUT)
        error = info.value
        assert error.filename is not None
        assert error.filename.endswith(os.path.join("concurrent", "futures", "thread.py"))
        assert error.source_line
        assert thread_violations == [error]

    def test_add_callback_is_allowed_from_any_thread(
        self, loop_fixtures: LoopFixtures, make_executor: ExecutorFactory
    ) -> None:
        mark = violation_count()
        loop_fixtures.io_loop.add_callback(loop_fixtures.ran)
        worker = make_executor(1, "add-callback-worker")
        worker.submit(loop_fixtures.io_loop.add_callback, loop_fixtures.ran).result(TIMEOUT)
        loop_fixtures.rec.wait_for("ran")
        _loop_turns(loop_fixtures.srv)
        assert loop_fixtures.rec.values("ran") == [loop_fixtures.srv.thread.name] * 2
        assert violation_count() == mark

    def test_the_loop_thread_itself_is_allowed(self, loop_fixtures: LoopFixtures) -> None:
        mark = violation_count()

        def on_the_loop() -> None:
            for _, call in IOLOOP_CALLS:  # removing twice (again at teardown) is harmless
                call(loop_fixtures.io_loop, loop_fixtures)

        loop_fixtures.srv.run_on_loop(on_the_loop)
        _loop_turns(loop_fixtures.srv)
        assert violation_count() == mark
        loop_fixtures.srv.run_on_loop(
            lambda: loop_fixtures.io_loop.remove_handler(loop_fixtures.spare.fileno())
        )

    def test_a_loop_that_is_not_running_is_not_checked(self) -> None:
        mark = violation_count()
        io_loop = IOLoop(make_current=False)
        try:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)

            def noop(*args: object) -> None:
                pass

            handle = io_loop.call_later(3600, noop)
            io_loop.remove_timeout(handle)
            io_loop.add_timeout(io_loop.time() + 3600, noop)
            io_loop.call_at(io_loop.time() + 3600, noop)
            io_loop.spawn_callback(noop)
            io_loop.add_future(done, noop)
            _in_thread(lambda: io_loop.call_later(3600, noop))
        finally:
            io_loop.close(all_fds=True)
        assert violation_count() == mark


class _Sentinel:
    """An object that can be weakly referenced."""


class TestRecord:
    def test_switched_on_while_the_loop_runs(
        self,
        originals: Snapshot,
        loop_fixtures: LoopFixtures,
        thread_violations: list[WrongThreadError],
    ) -> None:
        assert not _is_on()  # the loop, its handler and its timeout were set up before
        enable_thread_assertions()
        with pytest.raises(WrongThreadError, match=r"^IOLoop\.remove_timeout\(\) called "):
            loop_fixtures.io_loop.remove_timeout(loop_fixtures.handle)
        assert len(thread_violations) == 1

    @pytest.mark.usefixtures("thread_assertions")
    def test_is_bounded_and_keeps_the_newest(
        self, loop_fixtures: LoopFixtures, thread_violations: list[WrongThreadError]
    ) -> None:
        count = 600
        mark = violation_count()
        for _ in range(count):
            with contextlib.suppress(WrongThreadError):
                loop_fixtures.io_loop.spawn_callback(loop_fixtures.ran)
        assert violation_count() - mark == count
        assert len(thread_violations) == count  # the fixture sees every one
        kept = recorded_since(mark)
        assert 0 < len(kept) < count
        assert kept == thread_violations[-len(kept) :]
        assert recorded_since(violation_count()) == []

    @pytest.mark.usefixtures("thread_assertions")
    def test_keeps_no_traceback(
        self, loop_fixtures: LoopFixtures, thread_violations: list[WrongThreadError]
    ) -> None:
        mark = violation_count()
        alive: list[weakref.ref[_Sentinel]] = []

        def provoke() -> WrongThreadError:
            local = _Sentinel()  # stands for a handler, a buffer: whatever the caller holds
            alive.append(weakref.ref(local))
            try:
                loop_fixtures.io_loop.call_later(3600, loop_fixtures.ran)
            except WrongThreadError as exc:
                return exc
            raise AssertionError("no WrongThreadError")

        raised = provoke()
        assert raised.__traceback__ is not None
        assert recorded_since(mark) == [raised]
        assert thread_violations == [raised]
        assert recorded_since(mark)[0].__traceback__ is None
        assert thread_violations[0].__traceback__ is None
        del raised
        gc.collect()
        assert alive[0]() is None, "the record keeps the caller's frames alive"


# --------------------------------------------------------------------------- whole servers

DATA = payload(256 * KiB + 7, seed=5)
CHUNK = 16 * KiB
RUNS = 20


class DemoPattern(RequestHandler):
    """examples/download_demo.py's broken handler (its first call here is ``self.write``)."""

    executor: Executor
    io_loop: IOLoop

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    def prepare(self) -> None:
        # IOLoop.current() only works on the loop thread: captured here, as the demo does.
        self.io_loop = IOLoop.current()

    @run_on_executor
    def get(self) -> None:
        self.rec.add("worker", threading.current_thread().name)
        for chunk in split(DATA, CHUNK):
            self.write(chunk)
            self.io_loop.add_callback(self.flush)


class PlainExecutor(RequestHandler):
    """The plain thread-pool download: write and flush in the worker."""

    executor: Executor

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @run_on_executor
    def get(self) -> None:
        self.rec.add("worker", threading.current_thread().name)
        for chunk in split(DATA, CHUNK):
            self.write(chunk)
            self.flush()


class MixinWithoutDecorator(SafeStreamMixin, RequestHandler):
    """The mixin alone excuses nothing: only a ``@stream_on_executor`` method is forwarded."""

    executor: Executor

    def initialize(self, executor: Executor, rec: Recorder) -> None:
        self.executor = executor
        self.rec = rec

    @run_on_executor
    def get(self) -> None:
        self.rec.add("worker", threading.current_thread().name)
        for chunk in split(DATA, CHUNK):
            self.write(chunk)
            self.flush()


def _load_demo() -> ModuleType:
    name = "download_demo"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, DEMO)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def _connection(handler: RequestHandler) -> HTTP1Connection:
    connection = handler.request.connection
    assert isinstance(connection, HTTP1Connection)
    return connection


#: One call of each checked kind, made from a ``@run_on_executor`` worker.
WORKER_CALLS: list[tuple[str, Callable[[RequestHandler], object]]] = [
    ("RequestHandler.write()", lambda h: h.write(b"x")),
    ("RequestHandler.flush()", lambda h: h.flush()),
    ("RequestHandler.finish()", lambda h: h.finish()),
    ("RequestHandler.set_status()", lambda h: h.set_status(201)),
    ("RequestHandler.set_header()", lambda h: h.set_header("X-Foreign", "1")),
    ("RequestHandler.add_header()", lambda h: h.add_header("X-Foreign", "1")),
    ("RequestHandler.clear_header()", lambda h: h.clear_header("X-Foreign")),
    ("RequestHandler.clear()", lambda h: h.clear()),
    ("RequestHandler.set_cookie()", lambda h: h.set_cookie("foreign", "1")),
    ("RequestHandler.clear_cookie()", lambda h: h.clear_cookie("foreign")),
    ("RequestHandler.send_error()", lambda h: h.send_error(503)),
    ("RequestHandler.redirect()", lambda h: h.redirect("/elsewhere")),
    (
        "HTTP1Connection.write_headers()",
        lambda h: _connection(h).write_headers(
            ResponseStartLine("HTTP/1.1", 201, "Foreign"), HTTPHeaders()
        ),
    ),
    ("HTTP1Connection.write()", lambda h: _connection(h).write(b"x")),
    ("HTTP1Connection.finish()", lambda h: _connection(h).finish()),
    ("HTTP1Connection.detach()", lambda h: _connection(h).detach()),
    ("HTTP1Connection.set_close_callback()", lambda h: _connection(h).set_close_callback(None)),
    ("IOStream.write()", lambda h: _connection(h).stream.write(b"x")),
    ("IOStream.close()", lambda h: _connection(h).stream.close()),
    ("IOStream.set_nodelay()", lambda h: _connection(h).stream.set_nodelay(True)),
]


class ForeignCall(RequestHandler):
    executor: Executor

    def initialize(self, executor: Executor, call: Callable[[RequestHandler], object]) -> None:
        self.executor = executor
        self.call = call

    @run_on_executor
    def get(self) -> None:
        self.call(self)


def _uncaught(logs: LogRecorder) -> list[BaseException]:
    """The exceptions Tornado logged as uncaught in a handler."""
    return [
        r.exc_info[1]
        for r in logs.errors()
        if r.exc_info and r.exc_info[1] is not None and r.getMessage().startswith("Uncaught")
    ]


@pytest.mark.usefixtures("thread_assertions")
class TestWorkerThreadHandlers:
    @pytest.mark.parametrize("handler", [DemoPattern, PlainExecutor, MixinWithoutDecorator])
    def test_fails_on_the_first_call_every_time(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        logs: LogRecorder,
        thread_violations: list[WrongThreadError],
        handler: type[RequestHandler],
    ) -> None:
        rec = Recorder()
        srv = server(
            [("/download", handler, {"executor": make_executor(4, "pool-worker"), "rec": rec})]
        )
        mark = violation_count()
        statuses = [fetch(srv.port, "/download").status for _ in range(RUNS)]
        assert statuses == [500] * RUNS
        errors = list(thread_violations)
        assert len(errors) == RUNS, [str(e) for e in errors]
        assert recorded_since(mark) == errors
        line = _line_in(handler.get, "self.write(chunk)")
        workers = rec.values("worker")
        assert len(workers) == RUNS
        for error, worker in zip(errors, workers):
            assert error.method == "RequestHandler.write()"
            assert _same_file(error.filename, HERE), error.filename
            assert error.lineno == line
            assert error.source_line == "self.write(chunk)"
            assert error.thread_name == worker
            assert re.fullmatch(r"pool-worker_\d", error.thread_name), error.thread_name
            assert error.loop_thread_name == srv.thread.name == "test-server-loop"
            assert re.match(
                rf"^RequestHandler\.write\(\) called from thread '{worker}', but its IOLoop runs "
                rf"in thread 'test-server-loop'\n  at {re.escape(str(error.filename))}:{line}: "
                r"self\.write\(chunk\)\n",
                str(error),
            ), str(error)
        # Each request failed loudly through Tornado's error path, with this error.
        logged = _uncaught(logs)
        assert len(logged) == RUNS
        assert all(isinstance(exc, WrongThreadError) for exc in logged)
        assert set(logged) == set(errors)  # equal facts (the record keeps copies)

    def test_the_demo_handler_itself(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        tmp_path: Path,
        thread_violations: list[WrongThreadError],
    ) -> None:
        demo = _load_demo()
        broken: type[RequestHandler] = demo.BrokenDownload
        path = tmp_path / "payload.bin"
        path.write_bytes(DATA)
        srv = server(
            [
                (
                    "/broken",
                    broken,
                    {"path": str(path), "executor": make_executor(4, "demo-worker")},
                )
            ]
        )
        statuses = [fetch(srv.port, "/broken").status for _ in range(RUNS)]
        assert statuses == [500] * RUNS
        assert len(thread_violations) == RUNS
        line = _line_in(broken.get, 'self.set_header("Content-Type"')
        for error in thread_violations:
            assert error.method == "RequestHandler.set_header()"  # the demo's first call
            assert _same_file(error.filename, str(DEMO)), error.filename
            assert error.lineno == line
            assert error.source_line.startswith('self.set_header("Content-Type"')
            assert error.thread_name.startswith("demo-worker_")
            assert error.loop_thread_name == "test-server-loop"

    @pytest.mark.parametrize(("method", "call"), WORKER_CALLS, ids=[m for m, _ in WORKER_CALLS])
    def test_every_checked_layer_from_a_worker(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        thread_violations: list[WrongThreadError],
        method: str,
        call: Callable[[RequestHandler], object],
    ) -> None:
        srv = server(
            [("/call", ForeignCall, {"executor": make_executor(1, "pool-worker"), "call": call})]
        )
        response = fetch(srv.port, "/call")
        # Nothing the worker asked for happened: Tornado's plain 500.
        assert response.status == 500
        assert response.complete
        assert response.header("X-Foreign") is None
        assert response.header("Set-Cookie") is None
        assert [e.method for e in thread_violations] == [method]
        error = thread_violations[0]
        assert error.thread_name == "pool-worker_0"
        assert _same_file(error.filename, HERE)
        assert error.lineno is not None and error.lineno >= call.__code__.co_firstlineno


# --------------------------------------------------------------------------- safe styles

SIZE = 2 * MiB + 13


class SafePush(SafeStreamMixin, RequestHandler):
    executor: Executor

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> None:
        seed = int(self.get_argument("seed"))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Style", "push")
        for piece in split(payload(SIZE, seed), CHUNK):
            self.write(piece)
            self.flush()


class SafeGenerator(SafeStreamMixin, RequestHandler):
    executor: Executor

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor(max_buffer_bytes=64 * KiB)
    def get(self) -> Iterator[bytes]:
        seed = int(self.get_argument("seed"))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Style", "generator")
        yield from split(payload(SIZE, seed), CHUNK)


@pytest.mark.usefixtures("thread_assertions")
class TestSafeStylesUnderAssertions:
    def test_whole_downloads_and_no_violation(
        self, server: ServerFactory, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        _assert_all_guarded()
        (tmp_path / "file.bin").write_bytes(payload(SIZE, 99))
        executor = make_executor(4, "stream-worker")
        routes: list[Route] = [
            ("/push", SafePush, {"executor": executor}),
            ("/generator", SafeGenerator, {"executor": executor}),
            (r"/static/(.*)", StaticFileHandler, {"path": str(tmp_path)}),
        ]
        srv = server(routes)
        mark = violation_count()
        clients = make_executor(6, "client")
        paths = {
            f"/{style}?seed={seed}": seed for style in ("push", "generator") for seed in (1, 2, 3)
        }
        paths["/static/file.bin"] = 99
        futures = {path: clients.submit(fetch, srv.port, path) for path in paths}
        for path, future in futures.items():
            response = future.result(TIMEOUT * 2)
            assert response.status == 200, path
            assert response.complete, path
            assert len(response.body) == SIZE, path
            assert sha256(response.body) == sha256(payload(SIZE, paths[path])), path
        assert recorded_since(mark) == []
        assert violation_count() == mark


class OtherThreadCalls(SafeStreamMixin, RequestHandler):
    """A push-style stream whose producer starts a thread that calls the handler."""

    executor: Executor

    def initialize(self, executor: Executor, rec: Recorder, copy_context: bool) -> None:
        self.executor = executor
        self.rec = rec
        self.copy_context = copy_context

    def other_thread(self) -> None:
        calls: list[tuple[str, Callable[[], object]]] = [
            ("write", lambda: self.write(b"other")),
            ("flush", self.flush),
        ]
        for name, call in calls:
            try:
                call()
            except Exception as exc:
                self.rec.add(name, exc)
            else:
                self.rec.add(name, None)

    @stream_on_executor
    def get(self) -> None:
        self.write(b"head;")
        self.flush()
        target = self.other_thread
        if self.copy_context:  # as asyncio.to_thread and many libraries do
            target = functools.partial(contextvars.copy_context().run, self.other_thread)
        thread = threading.Thread(target=target, name="other-thread", daemon=True)
        thread.start()
        thread.join(TIMEOUT)
        self.rec.add("joined", not thread.is_alive())
        self.write(b"tail")


@pytest.mark.usefixtures("thread_assertions")
class TestOtherThreadsDuringAStream:
    @pytest.mark.parametrize("copy_context", [False, True], ids=["plain", "copied-context"])
    def test_are_not_forwarded_and_raise_wrong_thread_error(
        self,
        server: ServerFactory,
        make_executor: ExecutorFactory,
        thread_violations: list[WrongThreadError],
        copy_context: bool,
    ) -> None:
        rec = Recorder()
        kwargs = {
            "executor": make_executor(1, "producer"),
            "rec": rec,
            "copy_context": copy_context,
        }
        srv = server([("/", OtherThreadCalls, kwargs)])
        response = fetch(srv.port, "/")
        assert response.status == 200
        assert response.body == b"head;tail"  # nothing from the other thread
        assert rec.values("joined") == [True]
        raised = rec.values("write") + rec.values("flush")
        assert [type(exc) for exc in raised] == [WrongThreadError] * 2, [str(e) for e in raised]
        assert [e.method for e in thread_violations] == [
            "RequestHandler.write()",
            "RequestHandler.flush()",
        ]
        assert thread_violations == raised
        for error in thread_violations:
            assert error.thread_name == "other-thread"
            assert error.loop_thread_name == "test-server-loop"
            assert _same_file(error.filename, HERE)
