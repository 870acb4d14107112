"""End-to-end tests start real processes: after each, none of this test
process's children may be left as a zombie (nobody reaped it)."""

import os

import psutil
import pytest


@pytest.fixture(autouse=True)
def no_zombie_children():
    yield
    me = psutil.Process()
    zombies = []
    for child in me.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append((child.pid, child.ppid()))
                if child.ppid() == me.pid:
                    os.waitpid(child.pid, 0)   # reap it: one failure, not a cascade
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    assert not zombies, f"zombie children left behind (pid, parent): {zombies}"
