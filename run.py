#!/usr/bin/env python3
"""
Developer commands for tornado-safestream; needs only Python 3 and git.

The sessions are nox's (``noxfile.py``). This script installs nox into ``.venvs/nox`` (once,
then reused), makes the Pythons under ``~/.pyenv/versions`` visible to it, and hands over:

``python3 run.py test [--quick] [--recreate] [--run-timeout SECONDS] [-- PYTEST_ARGS...]``
    Every default session: lint, typecheck, docs, package, then pytest on every
    Python/Tornado pair (``tests-3.X``), stopping at the first failure; the last line sums
    the tests: ``tests: N passed, N failed, N skipped``. ``.ci/run`` runs exactly this.

``python3 run.py demo [ARGS...]`` and ``python3 run.py bench [ARGS...]``
    The sessions ``demo`` (``examples/download_demo.py``) and ``bench``
    (``benchmarks/run.py``), with ARGS.

``python3 run.py nox [NOX_ARGS...]``
    nox itself: ``python3 run.py nox -l`` lists the sessions, ``python3 run.py nox -s
    tests-3.12`` runs one.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENVS = ROOT / ".venvs"
NOX_VENV = VENVS / "nox"
#: ``python3.X`` links to the interpreters found, put first on nox's PATH.
PYTHONS_DIR = VENVS / "pythons"
#: Where the ``tests-3.X`` sessions write pytest's junit reports (noxfile.py's REPORTS).
REPORTS = ROOT / ".nox" / "reports"
NOX_REQUIREMENT = "nox>=2025.2.9"
STAMP_NAME = "safestream-install.stamp"

#: The test matrix, as in noxfile.py: Pythons with the newest Tornado, then the oldest pair.
MATRIX = ((3, 11), (3, 12), (3, 13), (3, 9))
#: Wall-clock limit of one pytest run (``--run-timeout``), in seconds.
PYTEST_RUN_TIMEOUT = 300.0
#: How long a demo or benchmark interrupted by Ctrl-C may take to stop its servers.
STOP_GRACE = 60.0

_PROBE = "import sys, venv; print('{}.{}'.format(*sys.version_info[:2]))"


def _dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


class Failed(Exception):
    pass


# -- interpreters ------------------------------------------------------------------------


def _base_python() -> str:
    """The interpreter running this script (the base one when this script runs in a venv)."""
    base = getattr(sys, "_base_executable", None)
    if isinstance(base, str) and base and Path(base).exists():
        return base
    return sys.executable


def _works(candidate: str, version: tuple[int, int]) -> bool:
    """True if *candidate* runs and is Python *version*."""
    try:
        out = subprocess.run(
            [candidate, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
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
    A working Python *version*: the running one, else ``python3.X`` on PATH (pyenv shims
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


def _link_pythons(found: dict[tuple[int, int], str]) -> None:
    """``.venvs/pythons/python3.X`` -> each Python found, for nox's lookup on PATH."""
    shutil.rmtree(PYTHONS_DIR, ignore_errors=True)
    PYTHONS_DIR.mkdir(parents=True)
    for version, python in found.items():
        (PYTHONS_DIR / f"python{_dotted(version)}").symlink_to(python)


# -- nox ---------------------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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


def ensure_nox(recreate: bool = False) -> str:
    """``.venvs/nox`` with nox installed, created or reused; return its Python."""
    python = str(_venv_python(NOX_VENV))
    # a venv holds absolute paths: recreate it for another interpreter or a moved checkout
    wanted = hashlib.sha256(
        f"{_interpreter_id(_base_python())}\n{ROOT}\n{NOX_REQUIREMENT}".encode()
    ).hexdigest()
    stamp = NOX_VENV / STAMP_NAME
    try:
        fresh = not recreate and stamp.read_text("utf-8").strip() == wanted
        if fresh and _interpreter_id(python) != "broken":
            return python
    except OSError:
        pass
    _say(f"==> setting up {NOX_VENV.relative_to(ROOT)} ({NOX_REQUIREMENT})")
    shutil.rmtree(NOX_VENV, ignore_errors=True)
    steps = (
        [_base_python(), "-m", "venv", str(NOX_VENV)],
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", NOX_REQUIREMENT],
    )
    for step in steps:
        if subprocess.run(step, cwd=ROOT, check=False).returncode:
            raise Failed(f"could not set up {NOX_VENV}: {shlex.join(step)} failed")
    stamp.write_text(wanted + "\n", "utf-8")
    return python


def run_nox(
    nox_args: Sequence[str],
    env: dict[str, str] | None = None,
    recreate: bool = False,
    grace: float = 15.0,
) -> int:
    """Run nox (``noxfile.py``) with *nox_args*; return its exit code."""
    python = ensure_nox(recreate)
    full_env = {**os.environ, **(env or {})}
    if PYTHONS_DIR.is_dir():
        full_env["PATH"] = os.pathsep.join((str(PYTHONS_DIR), full_env.get("PATH", "")))
    cmd = [python, "-m", "nox", "--noxfile", str(ROOT / "noxfile.py"), *nox_args]
    process = subprocess.Popen(cmd, cwd=ROOT, env=full_env)
    try:
        return process.wait()
    except KeyboardInterrupt:  # nox got the same SIGINT: it stops its session itself
        try:
            return process.wait(grace) or 130
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return 130


# -- commands ----------------------------------------------------------------------------


def junit_counts(reports: Sequence[Path]) -> tuple[int, int, int] | None:
    """
    Passed, failed (failures and errors) and skipped (skips and xfails) tests, summed over
    pytest's ``--junitxml`` *reports*; None if there is none.
    """
    passed = failed = skipped = 0
    found = False
    for report in reports:
        try:
            root = ElementTree.parse(report).getroot()
        except (OSError, ElementTree.ParseError):
            continue
        found = True
        for suite in root.iter("testsuite"):
            total, bad, skips = (int(suite.get(k, "0")) for k in ("tests", "failures", "skipped"))
            bad += int(suite.get("errors", "0"))
            passed += max(total - bad - skips, 0)
            failed += bad
            skipped += skips
    return (passed, failed, skipped) if found else None


def cmd_test(quick: bool, recreate: bool, run_timeout: float, pytest_args: Sequence[str]) -> int:
    start = time.monotonic()
    here = (sys.version_info[0], sys.version_info[1])
    versions = [here] if quick else list(MATRIX)
    _say("==> interpreters")
    found: dict[tuple[int, int], str] = {}
    for version in versions:
        python = find_python(version)
        if python is not None:
            found[version] = python
        _say(f"  python{_dotted(version):<6} {python or 'NOT FOUND'}")
    missing = [f"python{_dotted(v)}" for v in versions if v not in found]
    where = "not found on PATH nor under ~/.pyenv"
    if missing and _in_ci():
        _say(f"FAILED: {', '.join(missing)} {where} (CI=true)")
        return 1
    for name in missing:
        _say(f"WARNING: {name} {where}: its tests session is skipped")
    _link_pythons(found)

    sessions = ["lint", "typecheck", "docs", "package"]
    nox_args = ["--stop-on-first-error"]
    if quick:
        sessions = ["lint", "typecheck"]
        if here in MATRIX:
            sessions.append(f"tests-{_dotted(here)}")
        else:  # not in the matrix: the newest Tornado on the running Python
            sessions.append("tests")
            nox_args += ["--force-python", _dotted(here)]
    else:  # a missing Python's session is left out: skipped, as said above
        sessions += [f"tests-{_dotted(v)}" for v in MATRIX if v in found]
    nox_args += ["--sessions", *sessions]
    nox_args.append(
        "--error-on-missing-interpreters" if _in_ci() else "--no-error-on-missing-interpreters"
    )
    if recreate:
        nox_args.append("--reuse-venv=never")
    if pytest_args:
        nox_args += ["--", *pytest_args]
    REPORTS.mkdir(parents=True, exist_ok=True)
    for old in REPORTS.glob("tests-*.xml"):
        old.unlink()
    env = {"SAFESTREAM_PYTEST_TIMEOUT": str(run_timeout)}
    try:
        code = run_nox(nox_args, env, recreate)
    except Failed as failure:
        _say(f"FAILED: {failure}")
        return 1
    _say()
    _say(f"total {time.monotonic() - start:.1f}s")
    if code == 0 and missing:
        _say(f"passed, but {', '.join(missing)} not found: those runs were skipped")
    counts = junit_counts(sorted(REPORTS.glob("tests-*.xml")))
    if counts is not None:  # the plain closing line CI logs are read for
        _say(f"tests: {counts[0]} passed, {counts[1]} failed, {counts[2]} skipped")
    return code


def cmd_session(name: str, args: Sequence[str]) -> int:
    """Run the nox session *name* (``demo`` or ``bench``) with *args*."""
    env = {"SAFESTREAM_BENCH_COMMAND": shlex.join(["python3", "run.py", name, *args])}
    nox_args = ["--sessions", name, "--no-error-on-missing-interpreters", "--", *args]
    try:
        return run_nox(nox_args, env, grace=STOP_GRACE + 15)
    except Failed as failure:
        _say(f"FAILED: {failure}")
        return 1


def cmd_nox(args: Sequence[str]) -> int:
    _link_pythons({v: p for v in MATRIX if (p := find_python(v)) is not None})
    try:
        return run_nox(args, grace=STOP_GRACE + 15)
    except Failed as failure:
        _say(f"FAILED: {failure}")
        return 1


# -- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Developer commands for tornado-safestream (need only Python 3 and git); "
        "the sessions are nox's, in noxfile.py.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run examples/download_demo.py (nox session demo); arguments go to the demo"
        " (`run.py demo --help` shows the demo's options)",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="run the benchmarks, benchmarks/run.py (nox session bench); arguments go to it"
        " (`run.py bench --help` shows its options, `--quick` is a one-minute smoke run)",
        add_help=False,
    )
    commands.add_parser(
        "nox",
        help="run nox with the arguments given (`run.py nox -l` lists the sessions,"
        " `run.py nox -s tests-3.12` runs one)",
        add_help=False,
    )
    test = commands.add_parser(
        "test",
        help="lint, typecheck, docs, package, then pytest on each Python/Tornado of the matrix",
        usage="run.py test [-h] [--quick] [--recreate] [--run-timeout S] [-- PYTEST_ARGS...]",
        description="The nox sessions lint (ruff), typecheck (mypy --strict), docs, package "
        "(build, twine check) and tests-3.X: pytest on Python 3.11, 3.12 and 3.13 with the "
        "newest Tornado and on Python 3.9 with Tornado 6.3.*. Arguments after `--` go to "
        "pytest. A missing Python is skipped with a warning, or is an error when CI=true.",
    )
    test.add_argument(
        "--quick",
        action="store_true",
        help="lint and typecheck, then pytest on the running Python only (for development)",
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
    if argv[:1] in (["demo"], ["bench"]):
        return cmd_session(argv[0], argv[1:])
    if argv[:1] == ["nox"]:
        return cmd_nox(argv[1:])
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    options = _parser().parse_args(argv)  # "demo", "bench" and "nox" were handled above
    return cmd_test(options.quick, options.recreate, options.run_timeout, pytest_args)


if __name__ == "__main__":
    if sys.version_info < (3, 9):  # noqa: UP036 (a clear message on an old python3)
        sys.exit("run.py needs Python 3.9 or newer")
    sys.exit(main(sys.argv[1:]))
