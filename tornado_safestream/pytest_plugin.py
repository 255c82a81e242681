"""
The ``safestream`` pytest plugin: assertion mode in your test suite.

Installed with the package (entry point ``pytest11``, name ``safestream``: disable it with
``-p no:safestream``). It works beside pytest-tornado.

- ``--safestream-assert`` on the command line, or ``safestream_assert = true`` in the ini
  file, turns assertion mode on for the whole run (the command line wins; use
  ``-o safestream_assert=false`` to override the ini).
- The fixture ``thread_assertions`` turns it on for one test.
- A test during which a `~tornado_safestream.WrongThreadError` was raised fails, with its
  message, even where the code under test caught it, and however assertion mode was
  turned on. Violations raised between tests are reported at the end of the run, which
  then fails.
- A test that provokes violations on purpose requests the fixture ``thread_violations``: it
  gets the list of the errors raised while the fixture is active, and is not failed for
  them.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any, cast

import pytest

from . import WrongThreadError
from ._assertions import add_listener, hold, release, remove_listener, thread_assertions

_HOLDING = pytest.StashKey[bool]()  # the plugin turned assertion mode on for the run
_KEPT = 5  # violations kept for the report, per test: the first ones (the cause)


class _Collector:
    """The violations since the last `take`, except those a ``thread_violations`` claimed."""

    def __init__(self) -> None:
        self.outside_tests: list[str] = []  # main thread only: reports of stray violations
        self._lock = threading.Lock()
        # --- guarded by _lock ---
        self._first: list[WrongThreadError] = []
        self._count = 0
        self._claims: list[list[WrongThreadError]] = []  # thread_violations lists, active

    def __call__(self, error: WrongThreadError) -> None:  # a listener: any thread
        with self._lock:
            if self._claims:
                for claim in self._claims:
                    claim.append(error)
                return
            self._count += 1
            if len(self._first) < _KEPT:
                self._first.append(error)

    def take(self) -> tuple[list[WrongThreadError], int]:
        with self._lock:
            first, count = self._first, self._count
            self._first, self._count = [], 0
        return first, count

    def claim(self, errors: list[WrongThreadError]) -> None:
        with self._lock:
            self._claims.append(errors)

    def unclaim(self, errors: list[WrongThreadError]) -> None:
        with self._lock:
            self._claims.remove(errors)


_COLLECTOR = pytest.StashKey[_Collector]()
_FAILING = pytest.StashKey[str]()  # on an item: the report the plugin failed its phase with


def _collector(config: pytest.Config) -> _Collector:
    return config.stash[_COLLECTOR]


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
    collector = config.stash[_COLLECTOR] = _Collector()
    add_listener(collector)
    wanted = _wanted(config)
    config.stash[_HOLDING] = wanted
    if wanted:
        hold()


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_HOLDING, False):
        release()  # off again, unless something else still wants it on
    collector = config.stash.get(_COLLECTOR, None)
    if collector is not None:
        remove_listener(collector)


def pytest_report_header(config: pytest.Config) -> str:
    state = "on for the whole run" if _wanted(config) else "off (--safestream-assert)"
    return f"safestream: thread assertions {state}"


@pytest.fixture(name="thread_assertions")
def _thread_assertions() -> Iterator[None]:
    """Assertion mode on for this test."""
    with thread_assertions():
        yield


@pytest.fixture(name="thread_violations")
def _thread_violations(request: pytest.FixtureRequest) -> Iterator[list[WrongThreadError]]:
    """The `WrongThreadError`s raised while this fixture is active; they fail no test."""
    errors: list[WrongThreadError] = []
    collector = _collector(request.config)
    collector.claim(errors)
    try:
        yield errors
    finally:
        collector.unclaim(errors)


#: Where an unseen violation was raised, during a test.
_IN_TEST = "during the test, which did not see it (caught there, or raised in another thread)"


def _describe(first: list[WrongThreadError], count: int, when: str = _IN_TEST) -> str:
    """
    The report of violations: the first error's own message, then when it was raised.

    Its first line is what pytest's short summary (``-ra``) shows of a failed test: the
    error's first line, which names the method, the calling thread and the loop's thread.
    """
    more = f"; {count - 1} more after it" if count > 1 else ""
    return f"WrongThreadError: {first[0]}\nRaised {when}{more}."


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    collector = _collector(item.config)
    first, count = collector.take()  # raised since the last test ended: nobody's
    if count:
        when = f"between the tests, before {item.nodeid}"
        collector.outside_tests.append(_describe(first, count, when))
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    _fail_for_violations(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    _fail_for_violations(item)
    return result


def _fail_for_violations(item: pytest.Item) -> None:
    # Reached when the phase passed (setup's violations wait for the call's check).
    first, count = _collector(item.config).take()
    if count:
        text = item.stash[_FAILING] = _describe(first, count)
        pytest.fail(text, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    text = item.stash.get(_FAILING, None)
    if text is not None and _failed_with(call, text):
        # The plugin failed the phase. pytest's short summary (and the junit report's
        # message) read the failure's reprcrash.message, which says "Failed: " + its first
        # line: make it the text alone, whose first line is the error's.
        del item.stash[_FAILING]
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None and hasattr(crash, "message"):
            cast(Any, crash).message = text
    elif report.failed:
        # The phase failed of its own: show any other violation beside its error.
        first, count = _collector(item.config).take()
        own = call.excinfo.value if call.excinfo is not None else None
        others = [error for error in first if error != own]
        count -= len(first) - len(others)
        if others and count:
            when = "during the test, beside its own failure"
            report.sections.append(("safestream", _describe(others, count, when)))
    return report


def _failed_with(call: pytest.CallInfo[None], text: str) -> bool:
    """True if ``call`` failed with ``pytest.fail(text)``."""
    error = call.excinfo.value if call.excinfo is not None else None
    return isinstance(error, pytest.fail.Exception) and error.msg == text


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    collector = _collector(session.config)
    first, count = collector.take()
    if count:
        collector.outside_tests.append(_describe(first, count, "after the last test"))
    if collector.outside_tests and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    outside_tests = _collector(terminalreporter.config).outside_tests
    if outside_tests:
        terminalreporter.section("safestream: violations outside any test", red=True)
        for text in outside_tests:
            terminalreporter.line(text)
