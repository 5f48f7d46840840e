"""The providers under test, for provhub's pytest fixtures (provhub_hub, ...)."""

import pytest

from provhub_echo import Echo


@pytest.fixture
def provhub_providers():
    return [Echo]
