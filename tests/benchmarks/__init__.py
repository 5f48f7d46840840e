"""provhub's benchmark suite (not collected by pytest): ``python -m tests.benchmarks``.

See ``run.py`` for the command line and ``docs/performance.md`` for the results.
"""
