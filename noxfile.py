"""
The project's sessions, for nox: ``nox -l`` lists them, ``nox -s tests-3.12`` runs one.

``python3 run.py test`` runs the default ones (lint, typecheck, docs, package and every
``tests-3.X``), with nox installed in ``.venvs/nox`` and the Pythons under
``~/.pyenv/versions`` found; ``python3 run.py nox ARGS`` runs nox with any arguments.

Each session's virtual environment is kept in ``.nox/`` and reused; the package is installed
into it, editable, again only when ``pyproject.toml`` or the package's version changed (a
stamp file in the environment records what was installed), or with ``--reuse-venv=never``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nox

ROOT = Path(__file__).resolve().parent
PYPROJECT = ROOT / "pyproject.toml"
VERSION_FILE = ROOT / "tornado_safestream" / "__init__.py"
DOCS_CONF = ROOT / "docs" / "conf.py"
#: pytest's junit reports, one per ``tests-3.X`` session: ``python3 run.py test`` sums them.
REPORTS = ROOT / ".nox" / "reports"  # (run.py's REPORTS)
STAMP_NAME = "safestream-install.stamp"

#: Pythons tested with the newest Tornado, and the oldest supported pair.
NEWEST_TORNADO_PYTHONS = ("3.11", "3.12", "3.13")
OLDEST_PYTHON, OLDEST_TORNADO = "3.9", "6.3"
#: Wall-clock limit of one pytest run, in seconds (``run.py test --run-timeout``). pytest-timeout
#: fails a hung test, but a worker thread it leaves blocked can keep the interpreter from ever
#: exiting.
PYTEST_RUN_TIMEOUT = float(os.environ.get("SAFESTREAM_PYTEST_TIMEOUT", "300"))
#: How long a demo or a benchmark interrupted by Ctrl-C may take to stop its servers.
STOP_GRACE = 60.0

nox.needs_version = ">=2025.2.9"
nox.options.sessions = ["lint", "typecheck", "docs", "package", "tests"]
nox.options.reuse_venv = "yes"
# A missing Python is skipped with a warning (an error under CI=true): never downloaded.
nox.options.download_python = "never"


def _pyproject() -> dict[str, Any]:
    return nox.project.load_toml(PYPROJECT)


def _requirements(extra: str, *names: str) -> list[str]:
    """The requirements of the optional dependencies ``extra`` for the packages ``names``."""
    listed: list[str] = _pyproject()["project"]["optional-dependencies"][extra]
    found = [req for req in listed if re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0] in names]
    assert len(found) == len(names), f"{names} not all in the {extra!r} extra: {listed}"
    return found


def _install(session: nox.Session, *args: str) -> None:
    """``pip install ARGS`` into the session's environment, unless already done as such."""
    digest = hashlib.sha256(PYPROJECT.read_bytes())
    match = re.search(r"^__version__\s*=.*$", VERSION_FILE.read_text("utf-8"), re.MULTILINE)
    digest.update(match.group(0).encode() if match else b"")
    digest.update("\n".join(args).encode())
    stamp = Path(session.bin).parent / STAMP_NAME
    if stamp.exists() and stamp.read_text("utf-8").strip() == digest.hexdigest():
        session.log(f"already installed: {' '.join(args)}")
        return
    stamp.unlink(missing_ok=True)
    session.install("--disable-pip-version-check", "-q", *args)
    stamp.write_text(digest.hexdigest() + "\n", "utf-8")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _install(session, *_requirements("dev", "ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict: the package, tests, examples, benchmarks, run.py and this file."""
    _install(session, "-e", ".[dev,test]")
    session.run("mypy", "--strict")


# No environment while there is nothing to build.
@nox.session(venv_backend=None if DOCS_CONF.exists() else "none")
def docs(session: nox.Session) -> None:
    """The documentation: HTML with warnings as errors (nitpicky), then its code as doctests."""
    if not DOCS_CONF.exists():
        session.skip(f"{DOCS_CONF.relative_to(ROOT)} not found: no documentation to build")
    _install(session, "-e", ".[docs]")
    html, doctest = ROOT / "docs" / "_build" / "html", ROOT / "docs" / "_build" / "doctest"
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-b", "html", "docs", str(html))
    session.run("sphinx-build", "-W", "-b", "doctest", "docs", str(doctest))


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, check their metadata (twine check) and contents."""
    _install(session, "build", "twine", *_pyproject()["build-system"]["requires"])
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # --no-isolation: the build backend installed above, no download on each run
    session.run("python", "-m", "build", "--no-isolation", "--outdir", str(dist), ".")
    built = sorted(dist.iterdir())
    session.run("twine", "check", "--strict", *map(str, built))
    for problem in _check_dist(built):
        session.error(problem)
    metadata = _wheel_metadata(built)
    placeholders = [line for line in metadata.splitlines() if ".invalid/" in line]
    if placeholders:
        session.warn(
            "placeholder project URLs (set the real ones in pyproject.toml before publishing): "
            + "; ".join(placeholders)
        )


def _wheel_metadata(built: Sequence[Path]) -> str:
    wheel = next(path for path in built if path.suffix == ".whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode("utf-8")


def _check_dist(built: Sequence[Path]) -> list[str]:
    """What is missing from the built sdist and wheel (nothing, when all is well)."""
    wheels = [path for path in built if path.suffix == ".whl"]
    sdists = [path for path in built if path.name.endswith(".tar.gz")]
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist, built {[p.name for p in built]}"]
    problems: list[str] = []
    with zipfile.ZipFile(wheels[0]) as archive:
        names = archive.namelist()
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), "")
        wanted = {
            "tornado_safestream/py.typed": "tornado_safestream/py.typed" in names,
            "the license file": any(n.endswith(".dist-info/licenses/LICENSE") for n in names),
            "the pytest11 entry point": bool(entry_points)
            and "safestream = tornado_safestream.pytest_plugin"
            in archive.read(entry_points).decode(),
        }
    metadata = _wheel_metadata(wheels)
    wanted["License-Expression: Apache-2.0"] = "\nLicense-Expression: Apache-2.0\n" in metadata
    for label in ("Documentation", "Changelog", "Source"):
        wanted[f"Project-URL: {label}"] = f"\nProject-URL: {label}, " in metadata
    problems += [f"{wheels[0].name}: no {what}" for what, ok in wanted.items() if not ok]
    with tarfile.open(sdists[0]) as archive:
        top = sdists[0].name.removesuffix(".tar.gz")
        members = set(archive.getnames())
    for path in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "tests/conftest.py"):
        if f"{top}/{path}" not in members:
            problems.append(f"{sdists[0].name}: no {path}")
    return problems


@nox.session(python=[*NEWEST_TORNADO_PYTHONS, OLDEST_PYTHON])
def tests(session: nox.Session) -> None:
    """pytest, with the newest Tornado (Python 3.11+) or Tornado 6.3 (Python 3.9)."""
    pin = [f"tornado=={OLDEST_TORNADO}.*"] if session.python == OLDEST_PYTHON else []
    _install(session, "-e", ".[test]", *pin)
    REPORTS.mkdir(parents=True, exist_ok=True)
    report = REPORTS / f"{session.name}.xml"  # for the counts
    report.unlink(missing_ok=True)
    pytest = ["python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}"]
    # PYTHONFAULTHANDLER: every thread's stack on the SIGABRT of a run that overran
    _run_with_timeout(
        session, [*pytest, *session.posargs], PYTEST_RUN_TIMEOUT, {"PYTHONFAULTHANDLER": "1"}
    )


def _run_with_timeout(
    session: nox.Session, args: Sequence[str], timeout: float, env: dict[str, str]
) -> None:
    """
    Run ``args`` in the session's environment, as ``session.run`` does, stopping it after
    ``timeout`` seconds (``SIGABRT`` first, so a faulthandler-enabled Python prints every
    thread's stack). pytest's exit 5, no test collected, fails the session as well.
    """
    bin_dir = session.bin
    full_env = {**os.environ, **{k: v for k, v in session.env.items() if v is not None}, **env}
    full_env["PATH"] = os.pathsep.join((bin_dir, full_env.get("PATH", "")))
    full_env["VIRTUAL_ENV"] = str(Path(bin_dir).parent)
    full_env.pop("PYTHONHOME", None)
    executable = shutil.which(args[0], path=bin_dir) or args[0]
    session.log(shlex.join(args))
    process = subprocess.Popen([executable, *args[1:]], cwd=ROOT, env=full_env)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        session.log(f"still running after {timeout:.0f}s: dumping its stacks and stopping it")
        if os.name == "posix":
            process.send_signal(signal.SIGABRT)
        _stop(process, grace=15)
        session.error(f"{shlex.join(args[:3])} stopped after {timeout:.0f}s")
    except BaseException:  # KeyboardInterrupt: the child got the SIGINT too; don't leave it
        _stop(process, grace=15)
        raise
    if code == 5:
        session.error("pytest collected no test (exit 5)")
    if code:
        session.error(f"pytest failed (exit {code})")


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """Give ``process`` ``grace`` seconds to end, then kill it."""
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """examples/download_demo.py (arguments after ``--`` go to it; ``--help`` for its options)."""
    _install(session, "-e", ".")
    session.run(
        "python", "examples/download_demo.py", *session.posargs, interrupt_timeout=STOP_GRACE
    )


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The benchmarks, benchmarks/run.py (arguments after ``--``; ``--quick``: one minute)."""
    _install(session, "-e", ".")
    command = os.environ.get("SAFESTREAM_BENCH_COMMAND") or shlex.join(
        ["nox", "-s", "bench", "--", *session.posargs]
    )
    session.run(
        "python",
        "benchmarks/run.py",
        *session.posargs,
        env={"SAFESTREAM_BENCH_COMMAND": command},  # the command line the report shows
        interrupt_timeout=STOP_GRACE,
    )
