"""The ``safestream`` pytest plugin, tested with pytester as pytest-asyncio tests its options.

Every run is a subprocess (`runpytest_subprocess`): assertion mode patches Tornado's classes
for the whole process, and must not leak into this one. (One run is in-process on purpose: it
checks that an inner run leaves this process's assertion mode as it found it.)
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from textwrap import dedent

import pytest
from tornado.iostream import IOStream

import tornado_safestream
from tornado_safestream._assertions import _RECORD_SIZE

pytest_plugins = ("pytester",)

PLUGIN_MODULE = "tornado_safestream.pytest_plugin"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    if sys.version_info >= (3, 10):
        return list(importlib.metadata.entry_points(group="pytest11"))
    return list(importlib.metadata.entry_points().get("pytest11", ()))  # pragma: no cover


#: Until the package is installed (entry point ``pytest11``), the plugin is loaded by name.
PLUGIN_INSTALLED = any(ep.value == PLUGIN_MODULE for ep in _entry_points())
PLUGIN_ARGS: tuple[str, ...] = () if PLUGIN_INSTALLED else ("-p", PLUGIN_MODULE)

#: Bound for each inner run (seconds).
RUN_TIMEOUT = 60

#: The lines pytest-tornado 0.8.1 needs under ``-W error`` (as in this project's pyproject.toml).
FILTERWARNINGS = """\
    error
    ignore:make_current is deprecated:DeprecationWarning:pytest_tornado.plugin
    ignore:clear_current is deprecated:DeprecationWarning:pytest_tornado.plugin
    ignore:There is no current event loop:DeprecationWarning:tornado.platform.asyncio
    ignore:pkg_resources is deprecated as an API:UserWarning
    ignore:The hookimpl .* uses old-style configuration options:pytest.PytestDeprecationWarning
"""

#: A running IOLoop in a thread of its own ("inner-loop"), and Tornado's own
#: ``BaseIOStream.write`` as it was when this conftest was imported: before the plugin's
#: ``pytest_configure``.
CONFTEST = dedent(
    """\
    import asyncio
    import threading

    import pytest
    from tornado.ioloop import IOLoop
    from tornado.iostream import BaseIOStream

    ORIGINAL_WRITE = BaseIOStream.__dict__["write"]
    assert ORIGINAL_WRITE.__code__.co_filename.endswith("iostream.py"), "imported too late"


    @pytest.fixture
    def original_write():
        return ORIGINAL_WRITE


    @pytest.fixture
    def loop():
        ready = threading.Event()
        box = {}

        async def main():
            box["asyncio_loop"] = asyncio.get_running_loop()
            box["io_loop"] = IOLoop.current()
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()

        thread = threading.Thread(
            target=lambda: asyncio.run(main()), name="inner-loop", daemon=True
        )
        thread.start()
        assert ready.wait(10)
        yield box["io_loop"]
        box["asyncio_loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        assert not thread.is_alive()
    """
)

HEADER_ON = r"^safestream: thread assertions on\b"
HEADER_OFF = r"^safestream: thread assertions off\b"


def _run(pytester: pytest.Pytester, *args: str, alone: bool = True) -> pytest.RunResult:
    """Run pytest on the files made; ``alone``: without pytest-tornado, warnings as errors."""
    strict = ("-W", "error", "-p", "no:tornado") if alone else ()
    return pytester.runpytest_subprocess(*PLUGIN_ARGS, *strict, *args, timeout=RUN_TIMEOUT)


def _line_of(source: str, snippet: str) -> int:
    """The line number of the one line of ``source`` that contains ``snippet``."""
    hits = [n for n, text in enumerate(source.splitlines(), 1) if snippet in text]
    assert len(hits) == 1, hits
    return hits[0]


def _message_lines(test_file: str, line: int, source_line: str, more: int = 0) -> list[str]:
    """
    The report of a swallowed `WrongThreadError` for a foreign ``call_later``, anchored: its
    own message (the first line of which the short summary shows), then when it was raised.
    """
    after = f"; {more} more after it" if more else ""
    return [
        r"^WrongThreadError: IOLoop\.call_later\(\) called from thread 'MainThread', but its "
        r"IOLoop runs in thread 'inner-loop'$",
        rf"^  at .*[/\\]{re.escape(test_file)}:{line}: {source_line}$",
        r"^Tornado is not thread-safe: .*SafeStreamMixin.*@stream_on_executor.*"
        r"IOLoop\.add_callback",
        r"^Raised during the test, which did not see it \(caught there, or raised in another "
        rf"thread\){re.escape(after)}\.$",
    ]


# --------------------------------------------------------------------------- switching it on

STATE_TEST = dedent(
    """\
    from tornado.iostream import IOStream

    EXPECTED_ON = {expected}


    def test_state(original_write):
        assert (IOStream.write is not original_write) is EXPECTED_ON
    """
)


@pytest.mark.parametrize(
    ("ini_value", "cli", "expected_on"),
    [
        pytest.param(None, (), False, id="default-off"),
        pytest.param("false", (), False, id="ini-false"),
        pytest.param("true", (), True, id="ini-true"),
        pytest.param("false", ("--safestream-assert",), True, id="ini-false-cli-on"),
        pytest.param("true", ("--safestream-assert",), True, id="ini-true-cli-on"),
        pytest.param("true", ("-o", "safestream_assert=false"), False, id="ini-true-cli-off"),
    ],
)
def test_command_line_and_ini(
    pytester: pytest.Pytester, ini_value: str | None, cli: tuple[str, ...], expected_on: bool
) -> None:
    ini = "[pytest]\n" if ini_value is None else f"[pytest]\nsafestream_assert = {ini_value}\n"
    pytester.makeini(ini)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_state=STATE_TEST.format(expected=expected_on))
    result = _run(pytester, *cli)
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([HEADER_ON if expected_on else HEADER_OFF])
    result.stdout.no_re_match_line(HEADER_OFF if expected_on else HEADER_ON)


def test_fixture_turns_it_on_for_one_test(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_fixture=dedent(
            """\
            from tornado.iostream import IOStream


            def test_before(original_write):
                assert IOStream.write is original_write


            def test_with_fixture(thread_assertions, original_write):
                assert IOStream.write is not original_write


            def test_after(original_write):
                assert IOStream.write is original_write
            """
        )
    )
    result = _run(pytester, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.re_match_lines([HEADER_OFF])


def _guarded() -> bool:
    """Whether assertion mode is on in this process (``IOStream.write`` is a guard)."""
    code = getattr(IOStream.write, "__code__", None)
    return code is not None and code.co_filename.endswith("_assertions.py")


@pytest.mark.usefixtures("thread_assertions")
def test_an_in_process_run_leaves_assertion_mode_on(pytester: pytest.Pytester) -> None:
    # In-process on purpose: the inner run's plugin must release only what it held.
    assert _guarded()
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_inner=dedent(
            """\
            from tornado.iostream import IOStream


            def test_on_inside():
                assert IOStream.write.__code__.co_filename.endswith("_assertions.py")
            """
        )
    )
    result = pytester.runpytest(*PLUGIN_ARGS, "-p", "no:tornado", "--safestream-assert")
    result.assert_outcomes(passed=1)
    assert _guarded(), "the inner run turned off the assertion mode this test had on"


# --------------------------------------------------------------------------- failing for violations

#: How assertion mode is turned on: command line arguments, ini text, test parameters, code.
WAYS = {
    "cli": (("--safestream-assert",), "", "", ""),
    "ini": ((), "safestream_assert = true\n", "", ""),
    "fixture": ((), "", "thread_assertions, ", ""),
    "code": ((), "", "", "enable_thread_assertions()"),
}

VIOLATIONS_TEST = dedent(
    """\
    from tornado_safestream import WrongThreadError, enable_thread_assertions


    def test_swallowed({fixture}loop):
        {enable}
        try:
            loop.call_later(3600, print)  # swallowed
        except WrongThreadError:
            pass  # the code under test hides it: the test fails all the same


    def test_clean({fixture}loop):
        {enable}
        loop.add_callback(print, end="")


    def test_on_purpose({fixture}loop, thread_violations):
        {enable}
        assert thread_violations == []
        caught = []
        for _ in range(2):
            try:
                loop.call_later(3600, print)
            except WrongThreadError as exc:
                caught.append(exc)
        assert len(caught) == 2
        assert thread_violations == caught
        assert [e.method for e in thread_violations] == ["IOLoop.call_later()"] * 2
        assert {{e.loop_thread_name for e in thread_violations}} == {{"inner-loop"}}


    def test_after_on_purpose(thread_violations):
        assert thread_violations == []
    """
)


@pytest.mark.parametrize("way", list(WAYS))
def test_violations_fail_the_test_however_it_was_turned_on(
    pytester: pytest.Pytester, way: str
) -> None:
    cli, ini, fixture, enable = WAYS[way]
    pytester.makeini("[pytest]\n" + ini)
    pytester.makeconftest(CONFTEST)
    source = VIOLATIONS_TEST.format(fixture=fixture, enable=enable or "pass")
    pytester.makepyfile(test_violations=source)
    result = _run(pytester, *cli, "-rf")
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.re_match_lines(
        [
            r"^_+ test_swallowed _+$",
            *_message_lines(
                "test_violations.py",
                _line_of(source, "# swallowed"),
                r"loop\.call_later\(3600, print\)  # swallowed",
            ),
            r"^FAILED test_violations\.py::test_swallowed\b",
        ]
    )
    result.stdout.no_re_match_line(r"^FAILED test_violations\.py::test_(clean|on_purpose|after)")


@pytest.mark.parametrize("terminal", ["wide", "ci"])
def test_the_short_summary_line_says_what_happened(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, terminal: str
) -> None:
    # pytest's short summary shows a failure's first line, cut to the terminal's width
    # (whole, message and all, on CI): that line is the error's own first line.
    for name in ("CI", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    if terminal == "ci":
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.setenv("COLUMNS", "240")
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    source = dedent(
        """\
        import pytest

        from tornado_safestream import WrongThreadError


        def test_swallowed(loop):
            try:
                loop.call_later(3600, print)  # swallowed
            except WrongThreadError:
                pass


        @pytest.fixture
        def sloppy(loop):
            yield loop
            try:
                loop.call_later(1, print)  # in the finalizer
            except WrongThreadError:
                pass


        def test_uses_sloppy(sloppy):
            pass
        """
    )
    pytester.makepyfile(test_summary=source)
    result = _run(pytester, "--safestream-assert", "-ra")
    result.assert_outcomes(failed=1, passed=1, errors=1)
    said = (
        r" - WrongThreadError: IOLoop\.call_later\(\) called from thread 'MainThread', but "
        r"its IOLoop runs in thread 'inner-loop'$"
    )
    for line in (
        r"^FAILED test_summary\.py::test_swallowed" + said,
        r"^ERROR test_summary\.py::test_uses_sloppy" + said,
    ):
        result.stdout.re_match_lines([r"^=+ short test summary info =+$", line])


def test_violation_in_teardown_fails_the_teardown(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    source = dedent(
        """\
        import pytest

        from tornado_safestream import WrongThreadError


        @pytest.fixture
        def sloppy(loop):
            yield loop
            try:
                loop.call_later(1, print)  # in the finalizer
            except WrongThreadError:
                pass


        def test_uses_sloppy(sloppy):
            pass


        def test_next():
            pass
        """
    )
    pytester.makepyfile(test_teardown=source)
    result = _run(pytester, "--safestream-assert", "-rE")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.re_match_lines(
        [
            r"^_+ ERROR at teardown of test_uses_sloppy _+$",
            *_message_lines(
                "test_teardown.py",
                _line_of(source, "# in the finalizer"),
                r"loop\.call_later\(1, print\)  # in the finalizer",
            ),
            r"^ERROR test_teardown\.py::test_uses_sloppy\b",
        ]
    )
    result.stdout.no_re_match_line(r"^(ERROR|FAILED) test_teardown\.py::test_next")


def test_unswallowed_violation_fails_with_its_own_traceback(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_raised=dedent(
            """\
            def test_raised(loop):
                loop.call_later(3600, print)
            """
        )
    )
    result = _run(pytester, "--safestream-assert")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [
            r"^E +(tornado_safestream\.(_errors\.)?)?WrongThreadError: "
            r"IOLoop\.call_later\(\) called from thread 'MainThread', but its IOLoop runs in "
            r"thread 'inner-loop'$",
        ]
    )


def test_a_violation_is_reported_once(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_once=dedent(
            """\
            import pytest


            @pytest.fixture
            def bad_setup(loop):
                loop.call_later(3600, print)  # not caught: the setup fails
                yield


            def test_setup_fails(bad_setup):
                pass


            def test_body_fails(loop):
                loop.call_later(3600, print)  # not caught: the test fails


            def test_next():
                pass
            """
        )
    )
    result = _run(pytester, "--safestream-assert", "-rfE")
    result.assert_outcomes(errors=1, failed=1, passed=1)  # no error at teardown as well
    result.stdout.re_match_lines(
        [
            r"^_+ ERROR at setup of test_setup_fails _+$",
            r"^_+ test_body_fails _+$",
            r"^FAILED test_once\.py::test_body_fails\b",
            r"^ERROR test_once\.py::test_setup_fails\b",
        ]
    )
    # Each failure shows the error once: its own traceback, no "safestream" section.
    result.stdout.no_re_match_line(r"(?i)^-+ .*safestream")
    result.stdout.no_re_match_line(r"^Raised during the test")
    result.stdout.no_re_match_line(r"at teardown of")
    raised = r"^E +.*WrongThreadError: IOLoop\.call_later\(\) called from thread 'MainThread'"
    assert sum(bool(re.match(raised, line)) for line in result.outlines) == 2


def test_many_violations_show_the_first_and_the_true_count(pytester: pytest.Pytester) -> None:
    many = _RECORD_SIZE + 44  # more than the process-wide record keeps
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    source = dedent(
        f"""\
        from tornado_safestream import WrongThreadError


        def test_many(loop):
            try:
                loop.call_later(3600, print)  # the first
            except WrongThreadError:
                pass
            for _ in range({many - 1}):
                try:
                    loop.call_later(3600, print)  # the others
                except WrongThreadError:
                    pass
        """
    )
    pytester.makepyfile(test_many=source)
    result = _run(pytester, "--safestream-assert")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [
            *_message_lines(
                "test_many.py",
                _line_of(source, "# the first"),
                r"loop\.call_later\(3600, print\)  # the first",
                more=many - 1,
            ),
        ]
    )
    result.stdout.no_re_match_line(r".*# the others$")


def test_thread_violations_claims_only_while_it_is_active(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(CONFTEST)
    source = dedent(
        """\
        import pytest

        from tornado_safestream import WrongThreadError

        GIVEN = []


        @pytest.fixture
        def sloppy(loop):
            yield loop
            try:
                loop.call_later(1, print)  # torn down after thread_violations
            except WrongThreadError:
                pass


        def test_on_purpose(sloppy, thread_violations):
            with pytest.raises(WrongThreadError):
                sloppy.call_later(3600, print)  # on purpose
            GIVEN.append(thread_violations)


        def test_the_list_given():
            assert [e.source_line for e in GIVEN[0]] == [
                "sloppy.call_later(3600, print)  # on purpose"
            ]
        """
    )
    pytester.makepyfile(test_claims=source)
    result = _run(pytester, "--safestream-assert", "-rE")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.re_match_lines(
        [
            r"^_+ ERROR at teardown of test_on_purpose _+$",
            *_message_lines(
                "test_claims.py",
                _line_of(source, "# torn down after thread_violations"),
                r"loop\.call_later\(1, print\)  # torn down after thread_violations",
            ),
            r"^ERROR test_claims\.py::test_on_purpose\b",
        ]
    )
    result.stdout.no_re_match_line(r"^(ERROR|FAILED) test_claims\.py::test_the_list_given")


#: A loop that outlives every test ("app-loop"), and a fixture whose thread calls it late:
#: released (and joined) by ``pytest_runtest_logfinish``, once its test is over.
LATE_CONFTEST = dedent(
    """\
    import asyncio
    import threading

    import pytest
    from tornado.ioloop import IOLoop

    from tornado_safestream import WrongThreadError

    APP = {}
    LEAKED = []


    def _app_loop():
        if not APP:
            ready = threading.Event()

            async def main():
                APP["asyncio_loop"] = asyncio.get_running_loop()
                APP["io_loop"] = IOLoop.current()
                APP["stop"] = asyncio.Event()
                ready.set()
                await APP["stop"].wait()

            APP["thread"] = threading.Thread(
                target=lambda: asyncio.run(main()), name="app-loop", daemon=True
            )
            APP["thread"].start()
            assert ready.wait(10)
        return APP["io_loop"]


    @pytest.fixture
    def leaks_a_thread():
        io_loop = _app_loop()
        release = threading.Event()

        def late():
            assert release.wait(10)
            try:
                io_loop.call_later(3600, print)  # after the test
            except WrongThreadError:
                pass

        thread = threading.Thread(target=late, name="late-thread", daemon=True)
        thread.start()
        LEAKED.append((release, thread))
        yield


    def pytest_runtest_logfinish(nodeid, location):
        while LEAKED:
            release, thread = LEAKED.pop()
            release.set()
            thread.join(10)
            assert not thread.is_alive()


    def pytest_sessionfinish(session, exitstatus):
        if APP:
            APP["asyncio_loop"].call_soon_threadsafe(APP["stop"].set)
            APP["thread"].join(10)
    """
)


def test_violations_outside_any_test_fail_the_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makeconftest(LATE_CONFTEST)
    pytester.makepyfile(
        test_late=dedent(
            """\
            def test_1_culprit(leaks_a_thread):
                pass


            def test_2_innocent():
                pass


            def test_3_last_culprit(leaks_a_thread):
                pass
            """
        )
    )
    result = _run(pytester, "--safestream-assert")
    result.assert_outcomes(passed=3)  # test_2 is not blamed
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    line = _line_of(LATE_CONFTEST, "# after the test")
    message = [
        r"^WrongThreadError: IOLoop\.call_later\(\) called from thread 'late-thread', but its "
        r"IOLoop runs in thread 'app-loop'$",
        rf"^  at .*[/\\]conftest\.py:{line}: io_loop\.call_later\(3600, print\)  # after the test$",
    ]
    result.stdout.re_match_lines(
        [
            r"^=+ safestream: violations outside any test =+$",
            *message,
            r"^Raised between the tests, before test_late\.py::test_2_innocent\.$",
            *message,
            r"^Raised after the last test\.$",
        ]
    )


# --------------------------------------------------------------------------- beside pytest-tornado

TORNADO_CONFTEST = dedent(
    """\
    import pytest
    from tornado.concurrent import run_on_executor
    from concurrent.futures import ThreadPoolExecutor
    from tornado.web import Application, RequestHandler

    from tornado_safestream import SafeStreamMixin, stream_on_executor

    PAYLOAD = bytes(range(256)) * 4096 + b"tail"


    class Hello(RequestHandler):
        def get(self):
            self.write("hello")


    class Download(SafeStreamMixin, RequestHandler):
        @stream_on_executor(max_buffer_bytes=64 * 1024)
        def get(self):
            self.set_header("Content-Type", "application/octet-stream")
            for start in range(0, len(PAYLOAD), 8192):
                self.write(PAYLOAD[start : start + 8192])
                self.flush()


    class Export(SafeStreamMixin, RequestHandler):
        @stream_on_executor
        def get(self):
            for n in range(1000):
                yield f"{n}\\n"


    class Broken(RequestHandler):
        executor = None

        def initialize(self, executor):
            self.executor = executor

        @run_on_executor
        def get(self):
            self.write("from a worker")  # the broken line


    @pytest.fixture
    def executor():
        pool = ThreadPoolExecutor(1, thread_name_prefix="broken-worker")
        yield pool
        pool.shutdown(wait=True)


    @pytest.fixture
    def app(executor):
        return Application(
            [
                ("/hello", Hello),
                ("/download", Download),
                ("/export", Export),
                ("/broken", Broken, {"executor": executor}),
            ]
        )


    @pytest.fixture
    def url(base_url):
        # pytest-tornado's server listens on 127.0.0.1; its base_url says "localhost".
        return base_url.replace("//localhost:", "//127.0.0.1:")
    """
)

TORNADO_TEST = dedent(
    """\
    import hashlib
    import warnings

    import pytest
    from tornado.httpclient import HTTPClientError

    from conftest import PAYLOAD


    def test_warnings_are_errors():
        with pytest.raises(UserWarning, match="^raised$"):
            warnings.warn("raised", UserWarning)


    @pytest.mark.gen_test
    async def test_hello(http_client, url):
        response = await http_client.fetch(url + "/hello")
        assert response.body == b"hello"


    @pytest.mark.gen_test(timeout=30)
    async def test_safe_download(http_client, url):
        response = await http_client.fetch(url + "/download")
        assert hashlib.sha256(response.body).digest() == hashlib.sha256(PAYLOAD).digest()


    @pytest.mark.gen_test
    def test_generator_style_with_a_generator_test(http_client, url):
        response = yield http_client.fetch(url + "/export")
        assert response.body.decode().splitlines()[-1] == "999"


    def test_fixtures(app, http_server, io_loop, base_url):
        assert base_url.startswith("http://")
        assert http_server.request_callback is app


    @pytest.mark.gen_test
    async def test_broken_handler_on_purpose(http_client, url, thread_violations):
        with pytest.raises(HTTPClientError, match="500"):
            await http_client.fetch(url + "/broken")
        assert [e.method for e in thread_violations] == ["RequestHandler.write()"]
        assert thread_violations[0].thread_name == "broken-worker_0"
        assert thread_violations[0].filename.endswith("conftest.py")
        assert thread_violations[0].source_line.endswith("# the broken line")
    """
)


@pytest.mark.parametrize("assertions", ["on", "off"])
def test_beside_pytest_tornado(pytester: pytest.Pytester, assertions: str) -> None:
    # Warnings are errors through the ini (filterwarnings = error), with the ignores
    # pytest-tornado 0.8.1 needs, as in this project's pyproject.toml. (pytest's -W error
    # option is applied after the ini's ignores: with it, pytest-tornado cannot load.)
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers --strict-config\nfilterwarnings =\n" + FILTERWARNINGS
    )
    pytester.makeconftest(TORNADO_CONFTEST)
    pytester.makepyfile(test_tornado=TORNADO_TEST)
    args: list[str] = []
    if assertions == "on":
        args.append("--safestream-assert")
    else:
        args.extend(["-k", "not on_purpose"])
    result = _run(pytester, *args, alone=False)
    if assertions == "on":
        result.assert_outcomes(passed=6)
    else:
        result.assert_outcomes(passed=5, deselected=1)
    result.stdout.re_match_lines([HEADER_ON if assertions == "on" else HEADER_OFF])
    result.stdout.no_re_match_line(r"(?i)^=+ .*warning")


# --------------------------------------------------------------------------- packaging


def test_version_is_the_distributions() -> None:
    try:
        installed = importlib.metadata.version("tornado-safestream")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tornado-safestream distribution is not installed")
    assert tornado_safestream.__version__ == installed


def test_entry_point_when_installed() -> None:
    try:
        importlib.metadata.version("tornado-safestream")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tornado-safestream distribution is not installed")
    found = [(ep.name, ep.value) for ep in _entry_points() if ep.value == PLUGIN_MODULE]
    assert found == [("safestream", PLUGIN_MODULE)]
