"""Fixtures every test layer shares: segment names that are always unlinked,
child processes that are always killed and reaped, and an end-of-run check
that nothing of ours is left in /dev/shm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import posix_ipc
import psutil
import pytest

import ringbuf

# Every segment a test makes starts with this, so leaks are attributable.
SHM_PREFIX = "procmgr-test"
REPO = Path(__file__).resolve().parents[1]


_AT_START = set(os.listdir("/dev/shm"))


def _leaked_by_this_run() -> list[str]:
    """Segments of ours this run left: made by this process, or by one of its
    children that has exited. (Segments of other live runs are not ours.)"""
    return [entry for entry in ringbuf.orphaned_segments("procmgr", also_pid=os.getpid())
            if entry not in _AT_START]


@pytest.fixture
def shm_name():
    """A fresh segment name; whatever the test left under it is unlinked."""
    name = ringbuf.unique_name(SHM_PREFIX)
    yield name
    for suffix in ("", "-back"):
        try:
            posix_ipc.unlink_shared_memory(name + suffix)
        except posix_ipc.ExistentialError:
            pass


class Children:
    """Starts helper processes and guarantees they are killed and reaped."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def python(self, *args: str, **kw) -> subprocess.Popen:
        """Run ``python args...`` with the repository importable."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen([sys.executable, *args], env=env, **kw)
        self.procs.append(proc)
        return proc

    def reap_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def children():
    kids = Children()
    try:
        yield kids
    finally:
        kids.reap_all()


@pytest.fixture
def no_zombie_children():
    """After the test, no child of this process may be left a zombie
    (nobody reaped it)."""
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


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any segment of ours outlived it."""
    leaked = _leaked_by_this_run()
    if leaked:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"LEAKED shared-memory segments in /dev/shm: {leaked}", red=True
        )
        for name in leaked:
            try:
                posix_ipc.unlink_shared_memory("/" + name)
            except posix_ipc.ExistentialError:
                pass
        session.exitstatus = 1
