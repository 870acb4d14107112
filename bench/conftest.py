"""`pytest bench/`: fail the run if a benchmark left a shared-memory segment
or a child process behind (tests/conftest.py does the same for tests/, but
does not apply here)."""

from __future__ import annotations

import multiprocessing
import os

import posix_ipc

import ringbuf

_PREFIX = "procmgr-bench"
_AT_START = set(os.listdir("/dev/shm"))


def pytest_sessionfinish(session, exitstatus):
    leaked = [entry for entry in ringbuf.orphaned_segments(_PREFIX, also_pid=os.getpid())
              if entry not in _AT_START]
    for entry in leaked:
        try:
            posix_ipc.unlink_shared_memory("/" + entry)
        except posix_ipc.ExistentialError:
            pass
    children = multiprocessing.active_children()
    for proc in children:
        proc.kill()
        proc.join(5)
    if leaked or children:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"LEAKED by the benchmarks: segments {leaked}, children {children}", red=True)
        session.exitstatus = 1
