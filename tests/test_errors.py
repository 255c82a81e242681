"""`WrongThreadError`: a `RuntimeError` that builds its message from the facts it keeps."""

from __future__ import annotations

import copy
import pickle
import re

import pytest

from tornado_safestream import WrongThreadError

#: The fix, on the message's last line: both ways out, by name.
FIX = (
    r"[^\n]*\bSafeStreamMixin\b[^\n]*@stream_on_executor\b[^\n]*"
    r"\bIOLoop\.add_callback\b[^\n]*"
)


def make_error() -> WrongThreadError:
    return WrongThreadError("RequestHandler.flush()", "w", "l", "f.py", 3, "src")


class TestType:
    def test_is_a_runtime_error(self) -> None:
        assert issubclass(WrongThreadError, RuntimeError)
        with pytest.raises(RuntimeError, match=r"^RequestHandler\.flush\(\) "):
            raise make_error()

    def test_raised_and_matched_by_its_own_type(self) -> None:
        with pytest.raises(WrongThreadError, match=r"^RequestHandler\.flush\(\) called from "):
            raise make_error()


class TestMessage:
    def test_names_method_threads_call_site_and_fix(self) -> None:
        message = str(make_error())
        assert re.match(
            r"^RequestHandler\.flush\(\) called from thread 'w', "
            r"but its IOLoop runs in thread 'l'\n  at f\.py:3: src\n",
            message,
        ), message
        assert re.fullmatch(
            r"RequestHandler\.flush\(\) called from thread 'w', "
            r"but its IOLoop runs in thread 'l'\n  at f\.py:3: src\n" + FIX,
            message,
        ), message

    def test_the_fix_names_both_remedies(self) -> None:
        last_line = str(make_error()).splitlines()[-1]
        assert "SafeStreamMixin" in last_line
        assert "@stream_on_executor" in last_line
        assert "IOLoop.add_callback" in last_line

    def test_unknown_call_site(self) -> None:
        error = WrongThreadError("IOLoop.call_later()", "worker-1", "loop")
        assert re.fullmatch(
            r"IOLoop\.call_later\(\) called from thread 'worker-1', but its IOLoop runs in "
            r"thread 'loop'\n  at an unknown call site\n" + FIX,
            str(error),
        ), str(error)

    def test_call_site_without_source_text(self) -> None:
        error = WrongThreadError("IOStream.write()", "w", "l", "<string>", 7)
        assert re.match(
            r"^IOStream\.write\(\) called from thread 'w', but its IOLoop runs in thread 'l'\n"
            r"  at <string>:7\n",
            str(error),
        ), str(error)

    def test_args_hold_the_message(self) -> None:
        error = make_error()
        assert error.args == (str(error),)


class TestAttributes:
    def test_facts_are_kept(self) -> None:
        error = make_error()
        assert error.method == "RequestHandler.flush()"
        assert error.thread_name == "w"
        assert error.loop_thread_name == "l"
        assert error.filename == "f.py"
        assert error.lineno == 3
        assert error.source_line == "src"

    def test_keywords(self) -> None:
        error = WrongThreadError(
            method="HTTP1Connection.write()",
            thread_name="w",
            loop_thread_name="l",
            filename="g.py",
            lineno=9,
            source_line="conn.write(b'x')",
        )
        assert (error.method, error.filename, error.lineno) == (
            "HTTP1Connection.write()",
            "g.py",
            9,
        )
        assert str(error).startswith("HTTP1Connection.write() called from thread 'w'")

    def test_unknown_call_site_attributes(self) -> None:
        error = WrongThreadError("IOLoop.call_later()", "w", "l")
        assert error.filename is None
        assert error.lineno is None
        assert error.source_line == ""


def _facts(error: WrongThreadError) -> tuple[object, ...]:
    return (
        error.method,
        error.thread_name,
        error.loop_thread_name,
        error.filename,
        error.lineno,
        error.source_line,
        error.args,
        str(error),
    )


class TestCopies:
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    @pytest.mark.parametrize(
        "error",
        [
            pytest.param(make_error(), id="call-site"),
            pytest.param(WrongThreadError("IOLoop.call_later()", "w", "l"), id="unknown"),
        ],
    )
    def test_pickle_round_trip(self, error: WrongThreadError, protocol: int) -> None:
        clone = pickle.loads(pickle.dumps(error, protocol))
        assert type(clone) is WrongThreadError
        assert clone is not error
        assert _facts(clone) == _facts(error)

    def test_copy_and_deepcopy(self) -> None:
        error = make_error()
        for clone in (copy.copy(error), copy.deepcopy(error)):
            assert type(clone) is WrongThreadError
            assert _facts(clone) == _facts(error)


class TestEquality:
    """The record of violations keeps copies (without the traceback): equal by their facts."""

    def test_a_copy_of_the_facts_equals_the_raised_error(self) -> None:
        with pytest.raises(WrongThreadError) as info:
            raise make_error()
        raised = info.value
        copy_ = make_error()
        assert raised.__traceback__ is not None
        assert copy_.__traceback__ is None
        assert copy_ == raised
        assert raised == copy_
        assert hash(copy_) == hash(raised)
        assert {copy_, raised} == {raised}
        assert [copy_] == [raised]

    @pytest.mark.parametrize("field", range(6))
    def test_any_other_fact_differs(self, field: int) -> None:
        facts: list[object] = ["RequestHandler.flush()", "w", "l", "f.py", 3, "src"]
        facts[field] = 4 if field == 4 else "other"
        other = WrongThreadError(*facts)  # type: ignore[arg-type]
        assert other != make_error()
        assert make_error() != other

    def test_not_equal_to_a_runtime_error_with_the_same_message(self) -> None:
        error = make_error()
        assert error != RuntimeError(str(error))
        assert error != str(error)
