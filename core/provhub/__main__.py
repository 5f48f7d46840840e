"""``python -m provhub``: the command-line interface."""

from provhub.cli import main

raise SystemExit(main())
