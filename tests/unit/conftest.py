"""Unit tests start no processes: what needs a second process (a real
program, a crash, a peer) is an e2e or stress test. Held here rather than
hoped for: starting one fails the test and says where it belongs."""

from __future__ import annotations

import os
import subprocess

import pytest


def _refused(*args, **kwargs):
    raise AssertionError("a unit test started a process: it belongs under tests/e2e "
                         "(tests/unit/conftest.py)")


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refused)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, _refused)
    yield
