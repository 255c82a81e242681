"""
Benchmarks of tornado-safestream against Tornado's own ways of streaming a file.

``python3 run.py bench`` (from the repository root) runs `benchmarks/run.py`, the entry
point. The runner's modules:

``plan``
    What is measured: the variants, the scenarios' sizes (the full and the quick plan), units.
``options``
    The command line.
``harness``
    The run's state (`Bench`), the server processes (`Server`) and every process started.
``drivers``
    The runner's side of the clients: ``curl``, ``curl --parallel``, ``wrk``, and the Python
    clients of ``clients.py``.
``scenarios``
    One module per scenario: how it runs, its tables, its targets.
``report``
    Formatting, the targets' PASS/MISS table, the markdown and JSON results.
``machine``
    Facts about the machine: CPUs, memory, CPU steal, git revision, tool versions.
``stats``
    Medians, quartiles, percentiles, ratios.
``main``
    The run from start to end.

``servers.py`` (one server variant per process) and ``clients.py`` (the Python clients) are
scripts of their own, run as processes.
"""
