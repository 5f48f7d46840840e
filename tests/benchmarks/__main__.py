"""``python -m tests.benchmarks``: run the benchmark (see ``run.py``)."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
