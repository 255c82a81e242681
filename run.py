#!/usr/bin/env python3
"""
Developer commands for tornado-safestream; needs only Python 3 and git.

``python3 run.py demo [ARGS...]``
    Run ``examples/download_demo.py`` (with ARGS) in ``.venvs/demo``.

``python3 run.py bench [ARGS...]``
    Run the benchmarks, ``benchmarks/run.py`` (with ARGS), in ``.venvs/bench``.

``python3 run.py test [--quick] [--recreate] [--run-timeout SECONDS] [-- PYTEST_ARGS...]``
    ruff and mypy in ``.venvs/lint``, then pytest on every Python/Tornado pair of the matrix,
    each in its own ``.venvs/py3.X-tornado...``. Stops at the first failure. ``.ci/run`` runs
    ``python3 run.py test``.

Each virtual environment is created on first use and reused afterwards; the package is
(re)installed, editable, whenever ``pyproject.toml`` or the package version changed since the
last install (a stamp file inside the environment records what was installed).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENVS = ROOT / ".venvs"
PYPROJECT = ROOT / "pyproject.toml"
VERSION_FILE = ROOT / "tornado_safestream" / "__init__.py"
DEMO_SCRIPT = ROOT / "examples" / "download_demo.py"
BENCH_SCRIPT = ROOT / "benchmarks" / "run.py"
#: How long a benchmark run interrupted by Ctrl-C may take to stop its servers and clients.
BENCH_STOP_GRACE = 60.0
STAMP_NAME = "safestream-install.stamp"

#: Pythons tested with the newest Tornado, and the oldest supported pair.
NEWEST_TORNADO_PYTHONS = ((3, 11), (3, 12), (3, 13))
OLDEST = ((3, 9), "6.3")
#: Wall-clock limit of one pytest run (``--run-timeout``). pytest-timeout fails a hung test,
#: but a worker thread it leaves blocked can keep the interpreter from ever exiting.
PYTEST_RUN_TIMEOUT = 300.0

_PROBE = "import sys, venv, ensurepip; print('{}.{}'.format(*sys.version_info[:2]))"


def _dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _header(text: str) -> None:
    _say()
    _say(f"==> {text}")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _format_cmd(cmd: Sequence[str]) -> str:
    def short(arg: str) -> str:
        try:
            return str(Path(arg).relative_to(ROOT))
        except ValueError:
            return arg

    return " ".join(short(arg) for arg in cmd)


def _run(
    cmd: Sequence[str], timeout: float | None = None, env: dict[str, str] | None = None
) -> int:
    """
    Run *cmd* in the repository root, output straight to the terminal; return its exit code.

    :raises subprocess.TimeoutExpired: after stopping *cmd*, if it ran for over *timeout* seconds
        (``SIGABRT`` first, so a faulthandler-enabled Python prints every thread's stack).
    """
    _say(f"$ {_format_cmd(cmd)}")
    process = subprocess.Popen(list(cmd), cwd=ROOT, env=env)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        _say(f"\n!!! still running after {timeout:.0f}s: dumping its stacks and stopping it")
        if os.name == "posix":
            process.send_signal(signal.SIGABRT)
        _stop(process, grace=15)
        raise
    except BaseException:  # KeyboardInterrupt: the child got the SIGINT too; don't leave it
        _stop(process, grace=15)
        raise


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """Give *process* *grace* seconds to end, then kill it."""
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class StepFailed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- interpreters ------------------------------------------------------------------------


def _base_python() -> str:
    """The interpreter running this script (the base one when this script runs in a venv)."""
    base = getattr(sys, "_base_executable", None)
    if isinstance(base, str) and base and Path(base).exists():
        return base
    return sys.executable


def _works(candidate: str, version: tuple[int, int]) -> bool:
    """True if *candidate* runs, is Python *version* and can create venvs with pip."""
    try:
        out = subprocess.run(
            [candidate, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == _dotted(version)


def _pyenv_candidates(version: tuple[int, int]) -> list[str]:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    exe = f"python{_dotted(version)}"
    pattern = os.path.join(glob.escape(root), "versions", f"{_dotted(version)}*", "bin", exe)

    def patch_level(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name  # e.g. "3.12.1"
        if not re.fullmatch(r"\d+\.\d+\.\d+", name):
            return (-1,)  # "3.12-dev", "3.12.1t" and the like come last
        return tuple(int(part) for part in name.split("."))

    return sorted(glob.glob(pattern), key=patch_level, reverse=True)


def find_python(version: tuple[int, int]) -> str | None:
    """
    Find a working Python *version*: the running one, else ``python3.X`` on PATH (pyenv shims
    that are not activated are skipped), else ``~/.pyenv/versions/3.X*/bin/python3.X``.
    """
    if sys.version_info[:2] == version:
        return _base_python()
    candidates: list[str] = []
    exe = f"python{_dotted(version)}"
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory or ".", exe)
        if os.path.isfile(path) and os.access(path, os.X_OK) and path not in candidates:
            candidates.append(path)
    candidates += _pyenv_candidates(version)
    for candidate in candidates:
        if _works(candidate, version):
            return candidate
    return None


# -- virtual environments ----------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _venv_tool(venv: Path, name: str) -> str:
    return str(_venv_python(venv).parent / name)


def _package_fingerprint() -> str:
    """What an editable install depends on: pyproject.toml and the version line."""
    digest = hashlib.sha256(PYPROJECT.read_bytes())
    if VERSION_FILE.exists():
        match = re.search(r"^__version__\s*=.*$", VERSION_FILE.read_text("utf-8"), re.MULTILINE)
        digest.update(match.group(0).encode() if match else b"")
    return digest.hexdigest()


def _interpreter_id(python: str) -> str:
    """Version and home of *python*, or ``"broken"`` if it does not run."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version); print(sys.base_prefix)"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "broken"
    return out.stdout.strip().replace("\n", " | ") if out.returncode == 0 else "broken"


@dataclass
class Venv:
    """A virtual environment under ``.venvs/`` with the package installed editable."""

    name: str
    base_python: str
    install_args: tuple[str, ...]  # what follows ``pip install -e``: [".[test]", "tornado==6.3.*"]

    @property
    def path(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> str:
        return str(_venv_python(self.path))

    def _read_stamp(self) -> tuple[str, str]:
        try:
            interpreter, _, install = (
                (self.path / STAMP_NAME).read_text("utf-8").partition("\ninstall: ")
            )
        except OSError:
            return "", ""
        return interpreter.removeprefix("interpreter: "), install.strip()

    def ensure(self, recreate: bool = False) -> str:
        """Create or update the environment; return what was done (for the summary)."""
        # a venv holds absolute paths: recreate it for another interpreter or a moved checkout
        interpreter = f"{_interpreter_id(self.base_python)} | {ROOT}"
        install = hashlib.sha256(
            "\n".join((_package_fingerprint(), *self.install_args)).encode()
        ).hexdigest()
        old_interpreter, old_install = self._read_stamp()
        fresh = (
            recreate or old_interpreter != interpreter or _interpreter_id(self.python) == "broken"
        )
        if not fresh and old_install == install:
            return "reused"
        if fresh:
            if self.path.exists():
                shutil.rmtree(self.path)
            code = _run([self.base_python, "-m", "venv", str(self.path)])
            if code:
                raise StepFailed(f"could not create {self.path}", code)
        else:
            (self.path / STAMP_NAME).unlink(missing_ok=True)
        code = _run(
            [
                self.python,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-e",
                *self.install_args,
            ]
        )
        if code:
            raise StepFailed(f"pip install into {self.path} failed", code)
        (self.path / STAMP_NAME).write_text(
            f"interpreter: {interpreter}\ninstall: {install}\n", "utf-8"
        )
        return "created" if fresh else "reinstalled"


# -- steps and summary -------------------------------------------------------------------


@dataclass
class Step:
    title: str
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class TestCounts:
    passed: int = 0
    failed: int = 0  # failures and errors
    skipped: int = 0  # skips and xfails

    def __add__(self, other: TestCounts) -> TestCounts:
        return TestCounts(
            self.passed + other.passed, self.failed + other.failed, self.skipped + other.skipped
        )

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def _junit_counts(report: Path) -> TestCounts | None:
    """The counts in pytest's ``--junitxml`` *report*, or None if there is none."""
    try:
        root = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = TestCounts()
    for suite in root.iter("testsuite"):
        tests, failed, skipped = (
            int(suite.get(key, "0")) for key in ("tests", "failures", "skipped")
        )
        failed += int(suite.get("errors", "0"))
        counts += TestCounts(max(tests - failed - skipped, 0), failed, skipped)
    return counts


@dataclass
class Runner:
    steps: list[Step] = field(default_factory=list)
    tests: TestCounts | None = None  # summed over the pytest runs

    def do_venv(self, venv: Venv, recreate: bool) -> None:
        step = Step(f"venv  {venv.path.relative_to(ROOT)}")
        self.steps.append(step)
        _header(f"{step.title} (Python from {venv.base_python})")
        start = time.monotonic()
        try:
            step.status = venv.ensure(recreate)
        except StepFailed:
            step.status = "FAILED"
            raise
        finally:
            step.seconds = time.monotonic() - start
        _say(f"{step.status} in {step.seconds:.1f}s")

    def do_command(
        self,
        title: str,
        cmd: Sequence[str],
        junit: Path | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Run *cmd* as a step; *junit* is the ``--junitxml`` report it writes, if any."""
        step = Step(title)
        self.steps.append(step)
        _header(title)
        if junit is not None:
            junit.unlink(missing_ok=True)
        start = time.monotonic()
        try:
            code = _run(cmd, timeout, env)
            step.status = "ok" if code == 0 else f"FAILED (exit {code})"
        except subprocess.TimeoutExpired:
            code = 1
            step.status = f"FAILED (stopped after {timeout:.0f}s)"
        step.seconds = time.monotonic() - start
        counts = _junit_counts(junit) if junit is not None else None
        if counts is not None:
            step.detail = str(counts)
            self.tests = counts if self.tests is None else self.tests + counts
        if code:
            raise StepFailed(f"{title}: {step.status}", code)

    def summary(self, total: float) -> None:
        _say()
        _say("==> summary")
        width = max((len(step.title) for step in self.steps), default=0)
        for step in self.steps:
            ran = step.status != "not run" and not step.status.startswith("SKIPPED")
            timing = f"{step.seconds:7.1f}s" if ran else " " * 8
            detail = f" ({step.detail})" if step.detail else ""
            _say(f"  {step.title:<{width}}  {timing}  {step.status}{detail}")
        _say(f"  {'total':<{width}}  {total:7.1f}s")
        if self.tests is not None:  # the plain closing line CI logs are read for
            _say(f"tests: {self.tests}")


@dataclass(frozen=True)
class MatrixEntry:
    version: tuple[int, int]
    tornado: str | None  # "6.3" pins ``tornado==6.3.*``; None means the newest release

    @property
    def name(self) -> str:
        spec = self.tornado if self.tornado else "-newest"
        return f"py{_dotted(self.version)}-tornado{spec}"

    @property
    def install_args(self) -> tuple[str, ...]:
        pin = (f"tornado=={self.tornado}.*",) if self.tornado else ()
        return (".[test]", *pin)


def matrix(quick: bool) -> list[MatrixEntry]:
    if quick:
        here = (sys.version_info[0], sys.version_info[1])
        return [MatrixEntry(here, OLDEST[1] if here == OLDEST[0] else None)]
    return [MatrixEntry(v, None) for v in NEWEST_TORNADO_PYTHONS] + [MatrixEntry(*OLDEST)]


def cmd_test(quick: bool, recreate: bool, run_timeout: float, pytest_args: Sequence[str]) -> int:
    runner = Runner()
    start = time.monotonic()
    _header("interpreters")
    plan: list[tuple[MatrixEntry, str | None]] = []
    for entry in matrix(quick):
        python = find_python(entry.version)
        plan.append((entry, python))
        _say(f"  {entry.name:<24} {python or 'NOT FOUND'}")
    missing = [f"python{_dotted(entry.version)}" for entry, python in plan if python is None]
    if missing and _in_ci():
        _say(f"FAILED: {', '.join(missing)} not found on PATH nor under ~/.pyenv (CI=true)")
        return 1
    code = 0
    planned = ["ruff check", "ruff format --check", "mypy --strict"]
    planned += [f"pytest {entry.name}" for entry, _ in plan]
    try:
        lint = Venv("lint", _base_python(), (".[dev,test]",))
        runner.do_venv(lint, recreate)
        ruff = _venv_tool(lint.path, "ruff")
        runner.do_command("ruff check", [ruff, "check", "."])
        runner.do_command("ruff format --check", [ruff, "format", "--check", "."])
        runner.do_command("mypy --strict", [lint.python, "-m", "mypy", "--strict"])
        for entry, python in plan:
            title = f"pytest {entry.name}"
            if python is None:
                reason = f"python{_dotted(entry.version)} not found on PATH nor under ~/.pyenv"
                _say()
                _say(f"WARNING: skipping {title}: {reason}")
                runner.steps.append(Step(title, f"SKIPPED: {reason}"))
            else:
                venv = Venv(entry.name, python, entry.install_args)
                runner.do_venv(venv, recreate)
                report = venv.path / "pytest-junit.xml"  # for the counts in the summary
                pytest = [venv.python, "-m", "pytest", "-p", "no:cacheprovider"]
                pytest += [f"--junitxml={report.relative_to(ROOT)}", *pytest_args]
                env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # stacks on SIGABRT, see _run
                runner.do_command(title, pytest, report, run_timeout, env)
    except StepFailed as failure:
        _say()
        _say(f"==> stopped: {failure}")
        code = failure.code or 1
    except KeyboardInterrupt:
        _say()
        _say("interrupted")
        code = 130
    seen = {step.title for step in runner.steps}
    runner.steps += [Step(title) for title in planned if title not in seen]
    runner.summary(time.monotonic() - start)
    if code == 0 and missing:
        _say(f"passed, but {', '.join(missing)} not found: those runs were skipped")
    return code


def cmd_demo(args: Sequence[str]) -> int:
    venv = Venv("demo", _base_python(), (".",))
    try:
        what = venv.ensure()
    except StepFailed as failure:
        _say(f"FAILED: {failure}")
        return failure.code or 1
    if what != "reused":
        _say(f"({what} {venv.path.relative_to(ROOT)})")
    cmd = [venv.python, str(DEMO_SCRIPT), *args]
    process = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the demo got the same SIGINT: let it finish its own way
        return process.wait() or 130


def cmd_bench(args: Sequence[str]) -> int:
    venv = Venv("bench", _base_python(), (".",))
    try:
        what = venv.ensure()
    except StepFailed as failure:
        _say(f"FAILED: {failure}")
        return failure.code or 1
    if what != "reused":
        _say(f"({what} {venv.path.relative_to(ROOT)})")
    # the command line the report shows
    env = {
        **os.environ,
        "SAFESTREAM_BENCH_COMMAND": shlex.join(["python3", "run.py", "bench", *args]),
    }
    process = subprocess.Popen([venv.python, str(BENCH_SCRIPT), *args], cwd=ROOT, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the benchmark got the same SIGINT: it stops its servers itself
        try:
            return process.wait(BENCH_STOP_GRACE) or 130
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return 130


# -- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Developer commands for tornado-safestream (need only Python 3 and git).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run examples/download_demo.py in .venvs/demo; arguments go to the demo"
        " (`run.py demo --help` shows the demo's options)",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="run the benchmarks (benchmarks/run.py) in .venvs/bench; arguments go to it"
        " (`run.py bench --help` shows its options, `--quick` is a one-minute smoke run)",
        add_help=False,
    )
    test = commands.add_parser(
        "test",
        help="ruff, mypy --strict, then pytest on each Python/Tornado of the matrix",
        usage="run.py test [-h] [--quick] [--recreate] [--run-timeout S] [-- PYTEST_ARGS...]",
        description="ruff and mypy --strict in .venvs/lint, then pytest on Python "
        f"{', '.join(map(_dotted, NEWEST_TORNADO_PYTHONS))} with the newest Tornado and on "
        f"Python {_dotted(OLDEST[0])} with Tornado {OLDEST[1]}.*. Arguments after `--` go to "
        "pytest. A missing Python is skipped with a warning, or is an error when CI=true.",
    )
    test.add_argument(
        "--quick",
        action="store_true",
        help="lint, then pytest on the running Python only (for development)",
    )
    test.add_argument(
        "--recreate",
        action="store_true",
        help="delete and recreate the virtual environments used (as a fresh clone would)",
    )
    test.add_argument(
        "--run-timeout",
        type=float,
        default=PYTEST_RUN_TIMEOUT,
        metavar="SECONDS",
        help="stop a pytest run that takes longer, and fail (default %(default).0f)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["demo"]:
        return cmd_demo(argv[1:])
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    options = _parser().parse_args(argv)  # "demo" and "bench" were handled above: "test"
    return cmd_test(options.quick, options.recreate, options.run_timeout, pytest_args)


if __name__ == "__main__":
    if sys.version_info < (3, 9):  # noqa: UP036 (a clear message on an old python3)
        sys.exit("run.py needs Python 3.9 or newer")
    sys.exit(main(sys.argv[1:]))
