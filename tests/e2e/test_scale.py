"""Sizes a runtime must take without failing: here, thousands of live
domains on one core (a worker then holds a pidfd for each, numbered far
past 1024)."""

from __future__ import annotations

import time

import psutil
import pytest

import procmgr
from procmgr import DEVNULL

from e2e_helpers import T, as_root, at_its_limit, workers_of

LIVE = 5000


@as_root
def test_five_thousand_live_domains_on_one_core_each_killed_and_waited():
    """The worker waited for a dispatcher's end with select(), which cannot
    take a descriptor numbered 1024 or more: the first kill of a domain
    past ~1,016 live ones killed the worker, and every other domain of the
    core ended -9. Now every one is killed and waited, and the worker
    lives on (the same process throughout)."""
    quiet = {"stdout": DEVNULL, "stderr": DEVNULL}
    with procmgr.Runtime(cores=1) as rt:
        pm = rt.client()
        worker = workers_of(rt.proc.pid)[0]
        start = time.monotonic()
        futures = [pm.spawn_async(["/bin/sleep", "3600"], core=0, **quiet) for _ in range(LIVE)]
        domains = [pm.wait_for(f, timeout=60) for f in futures]
        assert len({d.id for d in domains}) == LIVE
        assert worker.num_fds() > LIVE                  # a pidfd each: numbers past 1024
        waits = [pm.wait_async(d) for d in domains]
        kills = [pm.kill_async(d) for d in domains]
        assert all(pm.wait_for(f, timeout=60) is None for f in kills)
        assert all(pm.wait_for(f, timeout=60) == 9 for f in waits)
        assert worker.is_running() and workers_of(rt.proc.pid)[0].pid == worker.pid
        assert pm.wait(pm.spawn(["/bin/true"], core=0, timeout=T), timeout=T) == 0
        print(f"\n{LIVE} live domains spawned, killed and waited in "
              f"{time.monotonic() - start:.1f} s")


@as_root
def test_a_worker_out_of_descriptors_refuses_that_spawn_and_stays_up():
    """At its descriptor limit a worker cannot open the next program's
    pidfd: that spawn fails with a clear error (EMFILE, said in words) and
    the core goes on serving once a descriptor is free."""
    with procmgr.Runtime(cores=1) as rt:
        pm = rt.client()
        assert pm.wait(pm.spawn(["/bin/true"], core=0, timeout=T), timeout=T) == 0  # it is up
        worker = workers_of(rt.proc.pid)[0]
        limits = worker.rlimit(psutil.RLIMIT_NOFILE)
        at_its_limit(worker, no_pidfd=True)    # the first program's is closed
        try:
            with pytest.raises(procmgr.ProcMgmtError, match="Too many open files"):
                pm.spawn(["/bin/true"], core=0, stdout=DEVNULL, stderr=DEVNULL, timeout=T)
        finally:
            worker.rlimit(psutil.RLIMIT_NOFILE, limits)
        assert pm.wait(pm.spawn(["/bin/true"], core=0, timeout=T), timeout=T) == 0
        assert worker.is_running()
