"""Helpers of the storm and fault tests: the runtime's processes by role, and
the check that nothing of a runtime outlives its close."""

from __future__ import annotations

import os
import time

import psutil

import procmgr
from procmgr import storm

T = 10.0       # bound on every single answer or wait in these tests


def runtime_processes(rt) -> dict[str, psutil.Process]:
    """The manager and its workers ("spawnd.K"), by role."""
    manager = psutil.Process(rt.proc.pid)
    procs = {"manager": manager}
    for p in manager.children():
        cmd = p.cmdline()
        if "--core" in cmd:
            procs[f"spawnd.{cmd[cmd.index('--core') + 1]}"] = p
    return procs


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(pred, what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.01)


def close_and_check(rt) -> dict:
    """Close the runtime; assert that no process of it (manager, worker,
    domain, anything a domain forked), no segment and no socket is left.
    Returns what ``storm.leftovers`` found, for a summary."""
    manager_pid = rt.proc.pid if rt.proc else None
    pids = [p.pid for p in runtime_processes(rt).values()] if rt.proc and \
        rt.proc.poll() is None else []
    rt.close()
    if manager_pid is None:
        return {}
    left = storm.leftovers(rt.name, manager_pid)
    assert left["orphans"] == [] and left["leaked_segments"] == [], left
    for pid in [manager_pid, *pids]:
        assert gone(pid), f"pid {pid} of the runtime outlived its close"
    assert not os.path.exists(procmgr.osutil.runtime_dir(rt.name))
    return left
