"""docs/cli.md and docs/errors.md show what the CLI really prints.

Every ``<!-- cli-sample: NAME -->`` block is produced by scenario ``NAME`` of
``tests/cli_samples.py`` (``python tests/cli_samples.py`` rewrites them); here
each scenario runs again and its output must match the page, up to what changes
from run to run (numbers, request ids, spacing).
"""

from __future__ import annotations

import pytest

from cli_samples import PAGES, SCENARIOS, normalized, render, samples

ALL = [(page, name, block) for page in PAGES for name, block in samples(page)]


def test_every_scenario_is_shown_and_every_sample_has_a_scenario() -> None:
    shown = [name for _, name, _ in ALL]
    assert sorted(set(shown)) == sorted(SCENARIOS)
    assert len(shown) == len(set(shown)), "a scenario is shown twice"


@pytest.mark.parametrize(("page", "name", "block"), ALL, ids=[f"{p}:{n}" for p, n, _ in ALL])
def test_the_page_shows_what_the_cli_prints(page: str, name: str, block: str) -> None:
    fresh = render(name)
    assert normalized(block) == normalized(fresh), (
        f"{page} sample {name!r} is out of date; run 'python tests/cli_samples.py'.\n"
        f"--- page:\n{block}\n--- now:\n{fresh}"
    )
