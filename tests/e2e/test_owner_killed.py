"""The process that owns a Runtime is SIGKILLed: it can clean up nothing, so
the manager (told by PDEATHSIG, as SIGTERM) shuts the runtime down itself —
every domain ended, every worker gone, the socket directory removed."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil

import procmgr
from e2e_helpers import workers_of

T = 10.0


def _gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _all_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if not _gone_or_zombie(p)]
        if not left:
            return []
        time.sleep(0.02)
    return left


def test_sigkill_of_the_runtimes_owner_leaves_no_domain(children):
    code = (
        "import sys, time, procmgr\n"
        "rt = procmgr.Runtime(cores=2, name=sys.argv[1]).start()\n"
        "pm = rt.client()\n"
        # a domain with a grandchild in its group, and one ignoring SIGTERM
        "doms = [pm.spawn(['/bin/sh', '-c', 'sleep 60 & sleep 60'], core=0, timeout=10),\n"
        "        pm.spawn(['/bin/sh', '-c', \"trap '' TERM; sleep 60\"], core=1, timeout=10)]\n"
        "print(rt.proc.pid, *[d.pid for d in doms], flush=True)\n"
        "time.sleep(60)\n"
    )
    name = f"procmgr-test-{os.getpid()}-owner"
    owner = children.python("-c", code, name)
    manager_pid, *dom_pids = map(int, owner.stdout.readline().split())
    manager = psutil.Process(manager_pid)
    workers = [p.pid for p in workers_of(manager_pid).values()]
    descendants = [g.pid for d in dom_pids for g in psutil.Process(d).children()]
    assert len(workers) == 2 and descendants

    owner.send_signal(signal.SIGKILL)
    owner.wait(T)
    everyone = [manager_pid, *workers, *dom_pids, *descendants]
    try:
        left = _all_gone(everyone, 2 * T)
        assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
    finally:
        for pid in everyone:      # whatever a failure left is not left running
            if not _gone_or_zombie(pid):
                os.kill(pid, signal.SIGKILL)
            try:                  # an orphan re-parented to us (a subreaper) is ours to reap
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    assert not os.path.exists(procmgr.osutil.runtime_dir(name))
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"procmgr-{manager_pid}-")]


def _is_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    assert libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0   # PR_GET_CHILD_SUBREAPER
    return bool(flag.value)


def test_the_owner_is_a_subreaper_only_while_it_runs_a_runtime():
    """Orphans of a crashed manager come to the owner while a Runtime runs;
    once the last one has closed, an unrelated orphan goes to init again."""
    procmgr.osutil.become_subreaper(False)
    try:
        with procmgr.Runtime(cores=1, name=f"procmgr-test-{os.getpid()}-sr1"):
            assert _is_subreaper()
            with procmgr.Runtime(cores=1, name=f"procmgr-test-{os.getpid()}-sr2"):
                assert _is_subreaper()
            assert _is_subreaper()          # the first one still runs
        assert not _is_subreaper()
    finally:
        procmgr.osutil.become_subreaper(False)
