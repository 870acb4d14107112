"""End-to-end tests start real processes: after each, none of this test
process's children may be left as a zombie (nobody reaped it)."""

import pytest


@pytest.fixture(autouse=True)
def _no_zombies(no_zombie_children):
    yield
