"""Fixtures of the regression tests: an in-process control plane under each
pending-client strategy, always closed, leaving nothing in /dev/shm."""

from __future__ import annotations

import pytest

from procmgr.testing.inprocess import InProcessRuntime
from regress_helpers import PENDING, SHM_PREFIX, shm_leftovers


@pytest.fixture(params=PENDING)
def pending(request) -> str:
    """The pending-client strategy; a test pins one with parametrize("pending", ...)."""
    return request.param


@pytest.fixture
def make_rt(pending):
    """``make_rt(cores=2, **kw)``: an InProcessRuntime with ``pending`` and
    ``kw`` (reply_queue, ring_capacity), closed after the test."""
    made: list[InProcessRuntime] = []

    def make(cores: int = 2, **kw) -> InProcessRuntime:
        kw.setdefault("pending", pending)
        rt = InProcessRuntime(cores=cores, prefix=SHM_PREFIX, **kw)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()
    assert not shm_leftovers(), f"segments left in /dev/shm: {shm_leftovers()}"


@pytest.fixture
def rt(make_rt) -> InProcessRuntime:
    """Two cores, a simulated spawnd on each."""
    return make_rt()


@pytest.fixture
def client(rt):
    return rt.client()


@pytest.fixture
def other(rt):
    """A second client, for races between clients."""
    return rt.client()
