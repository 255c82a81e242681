"""
Benchmark tornado-safestream against Tornado's own ways of streaming a file.

Run it with ``python3 run.py bench`` from the repository root (it sets up ``.nox/bench``),
or ``python benchmarks/run.py`` with a Python that has Tornado and the package installed;
``--help`` lists the options. The scenarios are in ``benchmarks/scenarios/``, one module each;
``benchmarks/__init__.py`` says where everything else is. Linux only (``/proc``), 127.0.0.1
only. Results go to ``benchmarks/results/latest.json`` and ``latest.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    if sys.version_info < (3, 9):  # noqa: UP036 (a clear message on an old python3)
        sys.exit("the benchmark needs Python 3.9 or newer")
    # run as a script: the repository root on the path, for the ``benchmarks`` package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.main import main

    sys.exit(main())
