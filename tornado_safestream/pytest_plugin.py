"""
The ``safestream`` pytest plugin: assertion mode in your test suite.

Installed with the package (entry point ``pytest11``). It works beside pytest-tornado.

- ``--safestream-assert`` on the command line, or ``safestream_assert = true`` in the ini
  file, turns assertion mode on for the whole run (the command line wins).
- The fixture ``thread_assertions`` turns it on for one test.
- A test during which a `~tornado_safestream.WrongThreadError` was raised fails, with its
  message, even where the code under test caught it, and however assertion mode was
  turned on.
- A test that provokes violations on purpose requests the fixture ``thread_violations``: it
  gets the list of the errors raised during the test, and is not failed for them.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from . import WrongThreadError, enable_thread_assertions, thread_assertions
from . import disable_thread_assertions as _disable
from ._assertions import add_listener, recorded_since, remove_listener, violation_count

_MARK = pytest.StashKey[int]()  # violations recorded before the last look
_ENABLED_BY_PLUGIN = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("safestream", "tornado-safestream")
    group.addoption(
        "--safestream-assert",
        action="store_true",
        default=None,
        help="Fail any call to a Tornado handler, connection, stream or IOLoop made from "
        "the wrong thread (assertion mode), for the whole run.",
    )
    parser.addini(
        "safestream_assert",
        type="bool",
        default=False,
        help="Turn tornado-safestream's assertion mode on for the whole run.",
    )


def _wanted(config: pytest.Config) -> bool:
    option = config.getoption("safestream_assert")
    if option is not None:
        return bool(option)
    return bool(config.getini("safestream_assert"))


def pytest_configure(config: pytest.Config) -> None:
    enabled = _wanted(config)
    config.stash[_ENABLED_BY_PLUGIN] = enabled
    if enabled:
        enable_thread_assertions()


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_ENABLED_BY_PLUGIN, False):
        _disable()


def pytest_report_header(config: pytest.Config) -> str:
    state = "on for the whole run" if _wanted(config) else "off (--safestream-assert)"
    return f"safestream: thread assertions {state}"


@pytest.fixture(name="thread_assertions")
def _thread_assertions() -> Iterator[None]:
    """Assertion mode on for this test."""
    with thread_assertions():
        yield


@pytest.fixture(name="thread_violations")
def _thread_violations() -> Iterator[list[WrongThreadError]]:
    """The `WrongThreadError`s raised during this test, which does not fail for them."""
    errors: list[WrongThreadError] = []
    add_listener(errors.append)
    try:
        yield errors
    finally:
        remove_listener(errors.append)


def _take_violations(item: pytest.Item) -> list[WrongThreadError]:
    """The violations recorded since the last look, unless the test asked for them."""
    mark = item.stash.get(_MARK, None)
    item.stash[_MARK] = violation_count()
    if mark is None or "thread_violations" in getattr(item, "fixturenames", ()):
        return []
    return recorded_since(mark)


def _describe(errors: list[WrongThreadError]) -> str:
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"WrongThreadError raised during the test{more}:\n{errors[0]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_MARK] = violation_count()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return _fail_for_violations(item, (yield))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    return _fail_for_violations(item, (yield))


def _fail_for_violations(item: pytest.Item, result: None) -> None:
    # Reached only when the phase passed: a phase that raised keeps its own error, and the
    # violations go with it (see pytest_runtest_makereport).
    errors = _take_violations(item)
    if errors:
        pytest.fail(_describe(errors), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when != "setup":
        errors = _take_violations(item)  # none left if they are what failed the phase
        if errors:
            report.sections.append(("safestream violations", _describe(errors)))
    return report
