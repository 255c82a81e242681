"""Tornado's own ``tornado/test/websocket_test.py`` (from the installed Tornado), run here.

The suite runs with assertion mode on (``safestream_assert = true``): these tests show that
its WebSocket guards (handler, protocol and client) raise nothing for code that uses them
from the right thread, across everything Tornado tests about WebSockets.
"""

from __future__ import annotations

import logging
import unittest
from collections.abc import Iterator

import pytest
import tornado.test.websocket_test as _tornado_suite
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, WebSocketProtocol13

from tornado_safestream import _assertions


def _runTest(self: unittest.TestCase) -> None:
    """Never run: only there for collection (see `_test_cases`)."""


def _test_cases() -> dict[str, type[unittest.TestCase]]:
    # Tornado 6.3's AsyncTestCase.__init__ looks up its ``methodName``, and pytest makes an
    # instance with the default, "runTest", to collect the class: give each class one
    # (pytest collects only the test* methods of a class that has them).
    return {
        name: type(name, (value,), {"runTest": _runTest, "__module__": __name__})
        for name, value in vars(_tornado_suite).items()
        if isinstance(value, type)
        and issubclass(value, unittest.TestCase)
        and value.__module__ == _tornado_suite.__name__
        and any(attribute.startswith("test") for attribute in dir(value))
    }


# pytest collects the TestCase classes found in this module's namespace.
globals().update(_test_cases())


@pytest.fixture(autouse=True)
def _quiet_access_log() -> Iterator[None]:
    """As Tornado's own test runner (tornado/test/runtests.py): ExpectLog fails on others."""
    access = logging.getLogger("tornado.access")
    level = access.level
    access.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        access.setLevel(level)


def test_tornados_suite_runs_with_websocket_guards_on() -> None:
    assert _assertions.enabled()
    for cls, name in (
        (WebSocketHandler, "write_message"),
        (WebSocketProtocol13, "_write_frame"),
        (WebSocketClientConnection, "write_message"),
    ):
        assert hasattr(cls.__dict__[name], "__wrapped__"), f"{cls.__name__}.{name} is not guarded"
    assert len(_test_cases()) >= 10
