"""Property-based integrity: whatever the chunks, pacing and buffers, the body arrives byte-exact.

Hypothesis draws a *case*: a list of chunks (0 B to 1 MiB, biased towards small sizes and
the boundaries 0, 1, 2 KiB +-1, 64 KiB +-1, 1 MiB - 1 and 1 MiB; at most ``MAX_TOTAL`` bytes
in all), their types, producer pauses, flushes, ``max_buffer_bytes``, the server's SO_SNDBUF,
the client's SO_RCVBUF and read pacing, gzip and Content-Length. The case's chunks go to the
handler through a thread-safe `Plans` registry (``?plan=<key>``), so one set of servers
serves every example of a test. The expected body is built from the same source slices,
independently of the library's conversions.

Profiles (registered in conftest.py): ``ci`` (the default: bounded, derandomized) and
``soak`` (``pytest --hypothesis-profile=soak tests/test_properties.py``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import random
import re
import threading
import time
import zlib
from collections.abc import Awaitable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, cast

import pytest
from helpers import (
    TIMEOUT,
    Head,
    LogRecorder,
    RawConnection,
    ServerFactory,
    payload,
    record_text,
    sha256,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

KiB = 1024
MiB = 1024 * KiB

#: Body bytes per example, at most: keeps an example well under a second.
MAX_TOTAL = 4 * MiB
BOUNDARY_SIZES = (0, 1, 2 * KiB - 1, 2 * KiB, 2 * KiB + 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1)
BIG_SIZES = (MiB - 1, MiB)
MAX_BUFFER_BYTES = (KiB, 4 * KiB - 1, 64 * KiB, 300_000, MiB, 2 * MiB)
#: Server SO_SNDBUF (``None``: the kernel's default, autotuned).
SNDBUFS = (None, 4 * KiB, 64 * KiB, 256 * KiB)
#: Client SO_RCVBUF (``None``: the kernel's default).
RCVBUFS = (None, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB)

#: Generator style takes all four chunk types; push style takes what Tornado's write() takes.
GENERATOR_KINDS = (
    "bytes",
    "bytearray",
    "bytearray-reused",  # overwritten by the generator right after the yield
    "memoryview",  # memoryview(pool)[a:b]: a slice of a bigger buffer
    "memoryview-strided",  # memoryview(pool)[a:b:2]: not contiguous
    "memoryview-cast",  # format "I": len() counts items, not bytes
    "memoryview-reused",  # a view of a buffer overwritten right after the yield
    "str",
)
PUSH_KINDS = ("bytes", "str")

#: The source every bytes-like chunk is sliced from (twice MAX_TOTAL: strided views span 2x).
POOL = payload(2 * MAX_TOTAL + 128 * KiB, 2024)
#: Inverts every byte: a reused buffer overwritten with this never matches what was yielded.
INVERT = bytes(range(255, -1, -1))


def _text_pool() -> str:
    """Non-ASCII text (1- to 4-byte UTF-8), a little over MAX_TOTAL / 4 characters."""
    alphabet = "abc xyz\n" + "\u00e9\u00fc\u00df\u00f1" + "\u20ac\u2713\u65e5\u672c" + "🎉😀𝄞"
    block = "".join(random.Random(7).choices(alphabet, k=65_521))
    return block * (MAX_TOTAL // 4 // len(block) + 2)


TEXT = _text_pool()

FlushMode = str  # "none" | "flush" | "wait" (flush and wait for its future)


# --------------------------------------------------------------------------- plans


@dataclass
class Step:
    """One chunk the handler produces: sleep ``pause`` s, then write or yield ``chunk``."""

    chunk: object
    pause: float = 0.0
    #: push style: what follows the write
    flush: FlushMode = "none"
    #: generator style: overwrite the yielded buffer right after the yield
    reuse: bool = False
    #: push style: the write must raise TypeError, and the handler goes on
    rejected: bool = False


@dataclass
class Plan:
    """What one request produces; filled in by the handler as it goes."""

    steps: list[Step]
    content_length: int | None = None
    #: the messages of the TypeErrors the handler caught (push style, ``rejected`` steps)
    rejections: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class Plans:
    """Plans waiting for their request, by key (``?plan=<key>``); safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, Plan] = {}
        self._keys = itertools.count()

    def add(self, plan: Plan) -> str:
        with self._lock:
            key = f"p{next(self._keys)}"
            self._plans[key] = plan
            return key

    def take(self, key: str) -> Plan:
        with self._lock:
            return self._plans.pop(key)

    def discard(self, key: str) -> bool:
        """Forget ``key``; ``True`` if its request never took it."""
        with self._lock:
            return self._plans.pop(key, None) is not None


def _invert(buffer: object) -> None:
    if isinstance(buffer, bytearray):
        buffer[:] = buffer.translate(INVERT)
    elif isinstance(buffer, memoryview):
        buffer[:] = buffer.tobytes().translate(INVERT)


def _unchecked_write(handler: RequestHandler, chunk: object) -> None:
    """``handler.write(chunk)``, unchecked: the error property writes values that are not chunks."""
    cast("Callable[[object], None]", handler.write)(chunk)


def _unchecked(  # the error property yields values that are not chunks
    decorator: object,
) -> Callable[[Callable[..., Iterator[object]]], Callable[..., Awaitable[None]]]:
    return cast(
        "Callable[[Callable[..., Iterator[object]]], Callable[..., Awaitable[None]]]", decorator
    )


def push_handler(max_buffer_bytes: int) -> type[RequestHandler]:
    class PushPlan(SafeStreamMixin, RequestHandler):
        """Carries out a `Plan` with ``self.write()``, ``self.flush()`` and pauses."""

        def initialize(self, executor: Executor, plans: Plans) -> None:
            self.executor = executor
            self.plans = plans

        @stream_on_executor(max_buffer_bytes=max_buffer_bytes)
        def get(self) -> None:
            plan = self.plans.take(self.get_argument("plan"))
            try:
                if plan.content_length is not None:
                    self.set_header("Content-Length", str(plan.content_length))
                for step in plan.steps:
                    if step.pause:
                        time.sleep(step.pause)  # pacing, not synchronisation
                    if step.rejected:
                        try:
                            _unchecked_write(self, step.chunk)
                        except TypeError as error:
                            plan.rejections.append(str(error))
                        continue
                    _unchecked_write(self, step.chunk)
                    if step.flush == "flush":
                        self.flush()
                    elif step.flush == "wait":
                        future = self.flush()
                        assert isinstance(future, concurrent.futures.Future), future
                        future.result(TIMEOUT)
            finally:
                plan.done.set()

    return PushPlan


def generator_handler(max_buffer_bytes: int) -> type[RequestHandler]:
    class GenPlan(SafeStreamMixin, RequestHandler):
        """Carries out a `Plan` by yielding its chunks, with pauses in ``next()``."""

        def initialize(self, executor: Executor, plans: Plans) -> None:
            self.executor = executor
            self.plans = plans

        @_unchecked(stream_on_executor(max_buffer_bytes=max_buffer_bytes))
        def get(self) -> Iterator[object]:
            plan = self.plans.take(self.get_argument("plan"))
            try:
                if plan.content_length is not None:
                    self.set_header("Content-Length", str(plan.content_length))
                for step in plan.steps:
                    if step.pause:
                        time.sleep(step.pause)  # a slow next()
                    yield step.chunk
                    if step.reuse:
                        _invert(step.chunk)
            finally:
                plan.done.set()

    return GenPlan


HANDLERS: dict[tuple[str, int], type[RequestHandler]] = {
    **{("push", m): push_handler(m) for m in MAX_BUFFER_BYTES},
    **{("gen", m): generator_handler(m) for m in MAX_BUFFER_BYTES},
}


@dataclass
class Servers:
    """One server per (SO_SNDBUF, compress_response), each serving every handler."""

    plans: Plans
    ports: dict[tuple[int | None, bool], int]


@pytest.fixture
def servers(server: ServerFactory, executor: Executor) -> Servers:
    plans = Plans()
    kwargs: dict[str, object] = dict(executor=executor, plans=plans)
    routes = [(f"/{style}/{m}", handler, kwargs) for (style, m), handler in HANDLERS.items()]
    ports = {
        (sndbuf, compress): server(routes, sndbuf=sndbuf, compress_response=compress).port
        for sndbuf in SNDBUFS
        for compress in (False, True)
    }
    return Servers(plans, ports)


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Client:
    """How the client reads: SO_RCVBUF, then ``schedule`` (recv size, pause after), then
    the rest ``tail_recv`` bytes at a time without pauses."""

    rcvbuf: int | None
    schedule: tuple[tuple[int, float], ...]
    tail_recv: int
    gzip: bool


@dataclass(frozen=True)
class ChunkSpec:
    kind: str
    size: int  # characters for "str", bytes otherwise
    flush: FlushMode = "none"


@dataclass(frozen=True)
class Case:
    style: str  # "push" | "gen"
    chunks: tuple[ChunkSpec, ...]
    #: producer pauses (seconds) before the chunk at these indexes
    pauses: tuple[tuple[int, float], ...]
    #: where in POOL the first bytes-like chunk starts
    base: int
    max_buffer_bytes: int
    sndbuf: int | None
    compress_response: bool
    content_length: bool
    client: Client


SIZES = st.one_of(
    st.sampled_from(BOUNDARY_SIZES),
    st.integers(0, 64),
    st.integers(0, 4 * KiB),
    st.integers(0, 256 * KiB),
    st.sampled_from(BIG_SIZES),
    st.integers(0, MiB),
)
RECV_SIZES = st.one_of(
    st.sampled_from((1, 2, 7, 1460, 4 * KiB, 64 * KiB, 256 * KiB)), st.integers(1, 64 * KiB)
)
PAUSES = st.sampled_from((0.0, 0.0, 0.0005, 0.001, 0.002, 0.005))


CLIENTS = st.builds(
    Client,
    rcvbuf=st.sampled_from(RCVBUFS),
    schedule=st.lists(st.tuples(RECV_SIZES, PAUSES), max_size=12).map(tuple),
    tail_recv=st.sampled_from((4 * KiB, 64 * KiB, MiB)),
    gzip=st.booleans(),
)


def chunk_specs(
    style: str, *, sizes: st.SearchStrategy[int] = SIZES, min_chunks: int = 0, max_chunks: int = 40
) -> st.SearchStrategy[tuple[ChunkSpec, ...]]:
    kinds = PUSH_KINDS if style == "push" else GENERATOR_KINDS
    flushes = st.sampled_from(("none", "flush", "wait")) if style == "push" else st.just("none")
    return st.lists(
        st.builds(ChunkSpec, kind=st.sampled_from(kinds), size=sizes, flush=flushes),
        min_size=min_chunks,
        max_size=max_chunks,
    ).map(tuple)


@st.composite
def cases(draw: st.DrawFn, style: str) -> Case:
    # An empty body still comes up (chunks of 0 B): no need to spend examples on no chunks.
    chunks = draw(chunk_specs(style, min_chunks=1))
    client = draw(CLIENTS)
    return Case(
        style=style,
        chunks=chunks,
        pauses=tuple(
            draw(
                st.dictionaries(st.integers(0, max(len(chunks) - 1, 0)), PAUSES, max_size=6).map(
                    lambda pauses: tuple(sorted(pauses.items()))
                )
            )
        ),
        base=draw(st.integers(0, 64 * KiB)),
        max_buffer_bytes=draw(st.sampled_from(MAX_BUFFER_BYTES)),
        sndbuf=draw(st.sampled_from(SNDBUFS)),
        # Without gzip in the request, the transform is still in the chain half the time.
        compress_response=client.gzip or draw(st.booleans()),
        # No Content-Length with gzip: the compressed length is not known in advance.
        content_length=not client.gzip and draw(st.booleans()),
        client=client,
    )


def build_steps(
    chunks: tuple[ChunkSpec, ...], pauses: Mapping[int, float], base: int, budget: int
) -> tuple[list[Step], bytes]:
    """The chunk objects to produce and, sliced independently, the bytes they stand for.

    Sizes are cut down so that the body stays within ``budget`` bytes (a character counts
    as 4). Consecutive chunks come from consecutive slices, so a chunk lost, repeated or
    reordered changes the body.
    """
    steps: list[Step] = []
    expected = bytearray()
    pos = base  # in POOL
    text_pos = 0  # in TEXT
    left = budget
    for index, spec in enumerate(chunks):
        kind, size = spec.kind, spec.size
        reuse = kind.endswith("-reused")
        chunk: object
        if kind == "str":
            size = min(size, left // 4)
            text = TEXT[text_pos : text_pos + size]
            text_pos += size
            chunk, piece = text, text.encode("utf-8")
        else:
            size = min(size, left)
            if kind == "memoryview-cast":
                size -= size % 4
            piece = POOL[pos : pos + size]
            if kind == "bytes":
                chunk = piece
            elif kind in ("bytearray", "bytearray-reused"):
                chunk = bytearray(piece)
            elif kind == "memoryview":
                chunk = memoryview(POOL)[pos : pos + size]
            elif kind == "memoryview-strided":
                piece = POOL[pos : pos + 2 * size : 2]
                chunk = memoryview(POOL)[pos : pos + 2 * size : 2]
                pos += size
            elif kind == "memoryview-cast":
                chunk = memoryview(POOL)[pos : pos + size].cast("I")
            elif kind == "memoryview-reused":
                chunk = memoryview(bytearray(piece))
            else:
                raise AssertionError(kind)
            pos += size
        left -= len(piece) if kind != "str" else 4 * size
        expected += piece
        steps.append(Step(chunk, pauses.get(index, 0.0), spec.flush, reuse))
    return steps, bytes(expected)


# --------------------------------------------------------------------------- client side


@dataclass
class Download:
    head: Head
    raw: bytes
    complete: bool
    framing: str


def download(port: int, path: str, client: Client) -> Download:
    """GET ``path``, reading as ``client`` says: paced first reads, then the rest."""
    headers = {"Accept-Encoding": "gzip"} if client.gzip else {}
    first = client.schedule[0][0] if client.schedule else client.tail_recv
    with RawConnection(port, rcvbuf=client.rcvbuf, recv_size=first) as conn:
        conn.send_request("GET", path, headers)
        head = conn.read_head()
        reader = conn.body_reader(head)
        raw = bytearray()
        for recv_size, pause in client.schedule:
            conn.recv_size = recv_size
            data = reader.read(recv_size)
            if not data:
                break
            raw += data
            if pause:
                time.sleep(pause)  # a slow reader, paced
        conn.recv_size = client.tail_recv
        raw += reader.read_all(limit=2 * MAX_TOTAL)
        return Download(head, bytes(raw), reader.complete, reader.framing)


def strict_gunzip(data: bytes) -> bytes:
    """Decompress one whole gzip member; fail on a truncated stream or trailing bytes."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    body = decoder.decompress(data) + decoder.flush()
    assert decoder.eof, "the gzip stream is truncated"
    assert not decoder.unused_data, f"{len(decoder.unused_data)} bytes after the gzip stream"
    return body


def assert_same_body(body: bytes, expected: bytes) -> None:
    if body == expected:
        return
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(body, expected)) if a != b), min(len(body), len(expected))
    )
    raise AssertionError(
        f"body differs: got {len(body)} bytes (sha256 {sha256(body)[:16]}), expected "
        f"{len(expected)} (sha256 {sha256(expected)[:16]}); first difference at {first_difference}"
    )


def size_class(n: int) -> str:
    return "0 B" if n == 0 else "< 64 KiB" if n < 64 * KiB else "< 1 MiB" if n < MiB else ">= 1 MiB"


def check_round_trip(servers: Servers, case: Case) -> None:
    steps, expected = build_steps(case.chunks, dict(case.pauses), case.base, MAX_TOTAL)
    plan = Plan(steps, len(expected) if case.content_length else None)
    key = servers.plans.add(plan)
    port = servers.ports[(case.sndbuf, case.compress_response)]
    with LogRecorder() as logs:
        try:
            got = download(port, f"/{case.style}/{case.max_buffer_bytes}?plan={key}", case.client)
        finally:
            assert not servers.plans.discard(key), "the handler never took its plan"
        assert plan.done.wait(TIMEOUT), "the handler's method did not return"
        errors = logs.errors()
    head = got.head
    assert head.status == 200, (head, got.raw[:300])
    assert got.complete, f"the body did not end properly ({got.framing}, {len(got.raw)} bytes)"
    encoding = head.get("Content-Encoding")
    if case.client.gzip and len(expected) >= 1024:
        # Tornado's rule: gzip unless the whole body is under 1 KiB and sent by finish()
        assert encoding == "gzip", head
    if case.client.gzip and encoding == "gzip":
        body = strict_gunzip(got.raw)
    else:
        assert encoding is None, head
        body = got.raw
    if case.content_length:
        assert got.framing == "length", head
        assert head.get("Content-Length") == str(len(expected)), head
    else:
        assert got.framing in ("chunked", "length"), head
    assert_same_body(body, expected)
    assert not errors, [record_text(r) for r in errors]
    event(f"framing: {got.framing}{', gzip' if encoding == 'gzip' else ''}")
    event(f"body: {size_class(len(expected))}")


# Hypothesis runs the examples of one test against one set of servers (function-scoped
# fixtures, set up once per test): that is the point, each example gets a fresh plan.
SHARED_SERVERS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

#: The suite's per-test timeout (120 s), stretched for a profile with many examples (soak):
#: an example takes well under a second, even at 4 MiB through 4 KiB socket buffers.
SCALED_TIMEOUT = pytest.mark.timeout(max(120, 60 + settings().max_examples))


# --------------------------------------------------------------------------- properties


@SCALED_TIMEOUT
@SHARED_SERVERS
@given(case=cases("push"))
def test_push_style_body_is_byte_exact(servers: Servers, case: Case) -> None:
    """Push style: any mix of write()/flush()/waited flush, pauses, buffer sizes and client
    pacing gives a complete 200 whose (decompressed) body equals the written bytes."""
    check_round_trip(servers, case)


@SCALED_TIMEOUT
@SHARED_SERVERS
@given(case=cases("gen"))
def test_generator_style_body_is_byte_exact(servers: Servers, case: Case) -> None:
    """Generator style: any sequence of bytes/bytearray/memoryview (sliced, strided, cast,
    reused after the yield) and str chunks gives a complete 200 whose (decompressed) body
    equals the chunks' bytes, as they were at each yield."""
    check_round_trip(servers, case)


# --------------------------------------------------------------------------- not a chunk

SMALL_SIZES = st.one_of(st.sampled_from((0, 1, 2 * KiB)), st.integers(0, 8 * KiB))
SCALARS = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
    st.booleans(),
    st.lists(st.binary(max_size=4), max_size=2),
    st.tuples(st.binary(max_size=4)),
    st.frozensets(st.integers(), max_size=2),
)
#: Not a chunk of a generator (dict included: only push style's write() takes a dict).
NOT_YIELDABLE = st.one_of(SCALARS, st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
#: Not what Tornado's write() takes (bytearray and memoryview included).
NOT_WRITABLE = st.one_of(
    SCALARS,
    st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(lambda b: memoryview(b)),
)


@dataclass(frozen=True)
class BadCase:
    style: str
    before: tuple[ChunkSpec, ...]
    bad: object
    #: push style: the handler catches the TypeError and writes ``after``
    recover: bool
    after: tuple[ChunkSpec, ...]
    max_buffer_bytes: int
    #: declare a Content-Length longer than the valid chunks before the bad value
    content_length: bool


@st.composite
def bad_cases(draw: st.DrawFn, style: str) -> BadCase:
    recover = style == "push" and draw(st.booleans())
    return BadCase(
        style=style,
        before=draw(chunk_specs(style, sizes=SMALL_SIZES, max_chunks=5)),
        bad=draw(NOT_WRITABLE if style == "push" else NOT_YIELDABLE),
        recover=recover,
        after=draw(chunk_specs(style, sizes=SMALL_SIZES, max_chunks=3)) if recover else (),
        max_buffer_bytes=draw(st.sampled_from(MAX_BUFFER_BYTES)),
        content_length=draw(st.booleans()),
    )


def headers_must_be_out(case: BadCase, before: list[Step], before_bytes: int) -> bool | None:
    """Were the headers surely written when the bad value came (``None``: not determined)?"""
    if not before:
        return False
    if case.style == "gen":
        # each yielded chunk is handed on (flushed) when it is yielded
        return True if before_bytes else None
    if any(step.flush != "none" for step in before) or before_bytes > case.max_buffer_bytes:
        return True  # flushed by the producer, or by the library once over the budget
    return False if before_bytes < case.max_buffer_bytes else None


def type_named(text: str, value: object) -> bool:
    return re.search(rf"\b{re.escape(type(value).__qualname__)}\b", text) is not None


@SCALED_TIMEOUT
@SHARED_SERVERS
@given(case=st.one_of(bad_cases("push"), bad_cases("gen")))
def test_a_value_that_is_not_a_chunk_fails_clearly(servers: Servers, case: BadCase) -> None:
    """Yielding anything but bytes/bytearray/memoryview/str, or write() of anything Tornado's
    write() rejects, at any point: a 500 if the headers were not out yet, else a 200 cut short
    (never passed off as complete) holding only a prefix of the valid bytes; either way a
    logged TypeError naming the type, the class and the method. A push-style producer that
    catches the TypeError goes on, and its body is exactly the valid bytes."""
    style = case.style
    before, before_bytes = build_steps(case.before, {}, 0, MAX_TOTAL)
    after, after_bytes = build_steps(case.after, {}, len(before_bytes), MAX_TOTAL)
    valid = before_bytes + after_bytes
    declared = len(valid) if case.recover else len(valid) + 10
    plan = Plan(
        [*before, Step(case.bad, rejected=case.recover), *after],
        declared if case.content_length else None,
    )
    key = servers.plans.add(plan)
    handler = HANDLERS[(style, case.max_buffer_bytes)]
    client = Client(rcvbuf=None, schedule=(), tail_recv=64 * KiB, gzip=False)
    with LogRecorder() as logs:
        try:
            got = download(
                servers.ports[(None, False)], f"/{style}/{case.max_buffer_bytes}?plan={key}", client
            )
        finally:
            assert not servers.plans.discard(key), "the handler never took its plan"
        assert plan.done.wait(TIMEOUT), "the handler's method did not return"
        if case.recover:
            assert len(plan.rejections) == 1, plan.rejections
            message = plan.rejections[0]
            assert "write" in message and type_named(message, case.bad), message
            assert got.head.status == 200 and got.complete, (got.head, got.raw[:300])
            assert_same_body(got.raw, valid)
            assert not logs.errors(), [record_text(r) for r in logs.errors()]
            event("recovered")
            return
        # The response first: a value taken for a chunk shows there, with no wait for a log.
        out = headers_must_be_out(case, before, len(before_bytes))
        if got.head.status == 500:
            assert out is not True, f"500 after the headers were written: {got.head}"
            assert got.complete, "the error page did not end properly"
            event("500 before the headers")
        else:
            assert out is not False, f"the headers were written too early: {got.head}"
            assert got.head.status == 200, got.head
            assert not got.complete, "a broken body was passed off as complete"
            assert before_bytes.startswith(got.raw), "the body is not a prefix of the valid bytes"
            event("200 cut short")
        record = logs.wait_for_record(
            lambda r: r.levelno >= logging.ERROR and "TypeError" in record_text(r)
        )
    text = record_text(record)
    assert type_named(text, case.bad), text
    assert handler.__name__ in text and re.search(r"\b(get|write)\b", text), text
