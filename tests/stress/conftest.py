"""Fixtures of the storm and fault tests: a runtime the test owns, closed
and checked (nothing of it left) at the end."""

from __future__ import annotations

import os
import signal
import time

import pytest

import procmgr
from storm_support import close_and_check


@pytest.fixture
def make_runtime():
    """``make_runtime(cores=2, **kw)``: a started Runtime, closed and checked
    at the end of the test (a stopped manager is continued first)."""
    made = []

    def make(cores: int = 2, **kw):
        rt = procmgr.Runtime(cores=cores, name=f"procmgr-test-{os.getpid()}-"
                             f"{time.monotonic_ns()}", **kw).start()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        if rt.proc is not None and rt.proc.poll() is None:
            os.kill(rt.proc.pid, signal.SIGCONT)
        close_and_check(rt)
