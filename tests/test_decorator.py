"""The decorator's forms, executor lookup and misuse errors (cf. tornado's RunOnExecutorTest)."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Awaitable, Iterator
from concurrent.futures import Executor
from typing import Callable, cast

import pytest
from helpers import (
    ExecutorFactory,
    LogRecorder,
    ServerFactory,
    ServerThread,
    fetch,
    record_text,
)
from tornado.concurrent import dummy_executor
from tornado.web import RequestHandler

from tornado_safestream import SafeStreamMixin, stream_on_executor

# Deliberate misuse, hidden from mypy (which rejects each of these statically).
_untyped_decorator = cast("Callable[[object], object]", stream_on_executor)
_unchecked_method_decorator = cast(
    "Callable[[Callable[..., object]], Callable[..., Awaitable[None] | None]]", stream_on_executor
)


def thread_name() -> bytes:
    return threading.current_thread().name.encode()


class BareForm(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def get(self) -> None:
        self.write(thread_name())


class CallForm(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor()
    def get(self) -> None:
        self.write(thread_name())


class KeywordForm(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self._pool = executor
        self.executor = "not used: executor= names another attribute"

    @stream_on_executor(executor="_pool", max_buffer_bytes=8192, stall_timeout=None)
    def get(self) -> None:
        self.write(thread_name())


class KeywordFormGenerator(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self._pool = executor

    @stream_on_executor(executor="_pool", max_buffer_bytes=8192)
    def get(self) -> Iterator[bytes]:
        yield thread_name()


class NoExecutorAttribute(SafeStreamMixin, RequestHandler):
    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield thread_name()


class NoneExecutor(SafeStreamMixin, RequestHandler):
    executor = None

    @stream_on_executor
    def get(self) -> None:
        self.write(thread_name())


class PathArguments(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def get(self, name: str, number: str) -> None:
        self.write(f"{name}-{number}")


class AwaitedHelpers(SafeStreamMixin, RequestHandler):
    """The decorated method is a helper awaited from ``async def get``; it ends the response."""

    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @stream_on_executor
    def rows(self, count: int) -> Iterator[str]:
        for i in range(count):
            yield f"{i}\n"

    async def get(self) -> None:
        self.set_header("X-Loop", "1")
        self.write("head\n")
        await self.rows(3)


class BadExecutorPush(SafeStreamMixin, RequestHandler):
    def initialize(self) -> None:
        self.executor = "not an executor"

    @stream_on_executor
    def get(self) -> None:
        self.write(b"never")


class BadExecutorGenerator(SafeStreamMixin, RequestHandler):
    def initialize(self) -> None:
        self.executor = 42

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield b"never"


class InlineExecutorPush(SafeStreamMixin, RequestHandler):
    executor = dummy_executor  # runs each task inline, in submit(): on the IOLoop thread

    @stream_on_executor
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(b"never")


class InlineExecutorGenerator(SafeStreamMixin, RequestHandler):
    executor = dummy_executor

    @stream_on_executor
    def get(self) -> Iterator[bytes]:
        yield b"never"


class YieldsInt(SafeStreamMixin, RequestHandler):
    def initialize(self, executor: Executor) -> None:
        self.executor = executor

    @_unchecked_method_decorator
    def get(self) -> Iterator[object]:
        if self.get_argument("late", "0") == "1":
            yield b"first chunk"
        yield 42


def worker_name(srv: ServerThread, path: str) -> str:
    response = fetch(srv.port, path)
    assert response.status == 200, response
    assert response.complete
    return response.body.decode()


def names_class_and_method(text: str, class_name: str, method: str) -> bool:
    return class_name in text and re.search(rf"\b{method}\b", text) is not None


def creation_error(exc: BaseException) -> TypeError:
    """The TypeError of class creation (3.9-3.11 wrap ``__set_name__`` errors in RuntimeError)."""
    if isinstance(exc, TypeError):
        return exc
    assert sys.version_info < (3, 12), f"expected TypeError, got {exc!r}"
    assert isinstance(exc, RuntimeError) and isinstance(exc.__cause__, TypeError), repr(exc)
    return exc.__cause__


class TestForms:
    def test_bare_call_and_keyword_forms(
        self, server: ServerFactory, make_executor: ExecutorFactory
    ) -> None:
        bare, called, keyword = (
            make_executor(1, "bare"),
            make_executor(1, "called"),
            make_executor(1, "keyword"),
        )
        srv = server(
            [
                ("/bare", BareForm, dict(executor=bare)),
                ("/called", CallForm, dict(executor=called)),
                ("/keyword", KeywordForm, dict(executor=keyword)),
                ("/keyword-gen", KeywordFormGenerator, dict(executor=keyword)),
            ]
        )
        assert worker_name(srv, "/bare").startswith("bare_")
        assert worker_name(srv, "/called").startswith("called_")
        assert worker_name(srv, "/keyword").startswith("keyword_")
        assert worker_name(srv, "/keyword-gen").startswith("keyword_")

    def test_missing_or_none_executor_means_the_ioloops_default(
        self, server: ServerFactory, make_executor: ExecutorFactory
    ) -> None:
        default = make_executor(2, "loop-default")
        srv = server(
            [("/absent", NoExecutorAttribute, {}), ("/none", NoneExecutor, {})],
            default_executor=default,
        )
        assert worker_name(srv, "/absent").startswith("loop-default_")
        assert worker_name(srv, "/none").startswith("loop-default_")

    def test_path_arguments_are_passed(self, server: ServerFactory, executor: Executor) -> None:
        srv = server([(r"/args/(\w+)/(\d+)", PathArguments, dict(executor=executor))])
        response = fetch(srv.port, "/args/bob/42")
        assert response.complete and response.body == b"bob-42"

    def test_awaited_from_an_async_method(self, server: ServerFactory, executor: Executor) -> None:
        srv = server([("/", AwaitedHelpers, dict(executor=executor))])
        response = fetch(srv.port, "/")
        assert response.status == 200
        assert response.complete
        assert response.header("X-Loop") == "1"
        assert response.body == b"head\n0\n1\n2\n"


class TestMisuse:
    @pytest.mark.parametrize("thing", [42, "get", object()], ids=["int", "str", "object"])
    def test_decorating_a_non_function(self, thing: object) -> None:
        with pytest.raises(TypeError):
            _untyped_decorator(thing)

    def test_handler_without_the_mixin(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        try:

            class NoMixin(RequestHandler):
                @_unchecked_method_decorator
                def get(self) -> None:
                    self.write(b"never")

        except (TypeError, RuntimeError) as exc:  # at class creation: the better of the two
            error = creation_error(exc)
            assert names_class_and_method(str(error), "NoMixin", "get"), str(error)
            return
        # otherwise at the first request: a 500, and the TypeError logged
        srv = server([("/", NoMixin, {})])
        response = fetch(srv.port, "/")
        assert response.status == 500
        errors = logs.wait_for_errors(1)
        text = "\n".join(record_text(r) for r in errors)
        assert "TypeError" in text and names_class_and_method(text, "NoMixin", "get"), text

    def test_mixin_listed_after_the_handler_base(self) -> None:
        def get(self: RequestHandler) -> None:
            self.write(b"never")

        with pytest.raises((TypeError, RuntimeError)) as info:
            type(
                "WrongOrder",
                (RequestHandler, SafeStreamMixin),
                {"get": _unchecked_method_decorator(get)},
            )
        message = str(creation_error(info.value))
        assert "SafeStreamMixin" in message
        assert "WrongOrder" in message
        assert re.search(r"\b(first|before)\b", message), message

    @pytest.mark.parametrize(
        "handler", [BadExecutorPush, BadExecutorGenerator], ids=["push", "generator"]
    )
    def test_executor_attribute_of_the_wrong_type(
        self, server: ServerFactory, logs: LogRecorder, handler: type[RequestHandler]
    ) -> None:
        srv = server([("/", handler, {})])
        response = fetch(srv.port, "/")
        assert response.status == 500
        assert response.complete
        assert b"never" not in response.body
        errors = logs.wait_for_errors(1)
        text = "\n".join(record_text(r) for r in errors)
        assert "TypeError" in text and names_class_and_method(text, handler.__name__, "get"), text

    @pytest.mark.parametrize(
        "handler", [InlineExecutorPush, InlineExecutorGenerator], ids=["push", "generator"]
    )
    def test_executor_that_runs_tasks_inline(
        self, server: ServerFactory, logs: LogRecorder, handler: type[RequestHandler]
    ) -> None:
        # Regression: the method ran on the loop thread, and its first response method call
        # waited for the loop, which was the caller: the loop hung for ever.
        srv = server([("/", handler, {})])
        response = fetch(srv.port, "/")
        assert response.status == 500
        assert response.complete
        assert b"never" not in response.body
        errors = logs.wait_for_errors(1)
        text = "\n".join(record_text(r) for r in errors)
        assert "RuntimeError" in text and "IOLoop thread" in text, text
        assert names_class_and_method(text, handler.__name__, "get"), text
        assert srv.run_on_loop(lambda: "responsive") == "responsive"

    def test_yielding_an_int_before_the_headers(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        srv = server([("/", YieldsInt, dict(executor=executor))])
        response = fetch(srv.port, "/")
        assert response.status == 500
        assert response.complete
        errors = logs.wait_for_errors(1)
        text = "\n".join(record_text(r) for r in errors)
        assert "TypeError" in text and names_class_and_method(text, "YieldsInt", "get"), text
        assert "get() yielded an int object;" in text, text

    def test_yielding_an_int_after_the_first_chunk(
        self, server: ServerFactory, executor: Executor, logs: LogRecorder
    ) -> None:
        srv = server([("/", YieldsInt, dict(executor=executor))])
        response = fetch(srv.port, "/?late=1")
        assert response.status == 200
        assert not response.complete, "the response was ended as if the body were complete"
        assert b"first chunk".startswith(response.body)
        errors = logs.wait_for_errors(1)
        text = "\n".join(record_text(r) for r in errors)
        assert "TypeError" in text and names_class_and_method(text, "YieldsInt", "get"), text
        assert "get() yielded an int object;" in text, text
