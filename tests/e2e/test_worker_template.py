"""Workers are forked from a template (procmgr/manager/workers.py,
spawnd_workers/template.py): each is still the manager's own child, looks
like a worker to ps, shares its pages, and a core restarts even after the
template was killed."""

from __future__ import annotations

import signal
import sys

import psutil

import procmgr
from e2e_helpers import T, as_root, pm, process_gone, ring_files, rt, wait_until, workers_of  # noqa: F401

# A worker started as an interpreter of its own held ~9.5 MB it did not
# share (USS); forked from the template ~3 MB (docs/performance.md).
WORKER_USS_BOUND = 6 * 2**20


def template_of(manager_pid: int) -> psutil.Process:
    found = [p for p in psutil.Process(manager_pid).children() if "--template" in p.cmdline()]
    assert len(found) == 1, found
    return found[0]


@as_root
def test_workers_are_the_managers_children_forked_from_a_template(rt, pm):
    workers = workers_of(rt.proc.pid)
    assert sorted(workers) == [0, 1]
    for core, worker in workers.items():
        assert worker.ppid() == rt.proc.pid
        assert worker.cmdline() == [sys.executable, "-m", "spawnd_workers", "--core", str(core),
                                    "--runtime", rt.name]
        assert worker.memory_full_info().uss < WORKER_USS_BOUND
        assert pm.wait(pm.spawn(["/bin/sh", "-c", f"exit {core + 5}"], core=core, timeout=T),
                       timeout=T) == core + 5
    template = template_of(rt.proc.pid)
    # Between forks it holds nothing of the runtime's: no ring, no doorbell.
    assert ring_files(template.pid) == []
    assert all(f.path.startswith(("/dev/", "/tmp/", "pipe:", "socket:", "/proc/"))
               or "runtime.log" in f.path for f in template.open_files())


def test_a_core_restarts_after_the_template_was_killed(rt, pm):
    old = template_of(rt.proc.pid)
    old.send_signal(signal.SIGKILL)
    d = pm.spawn(["/bin/sleep", "60"], core=1, timeout=T)
    waiter = pm.wait_async(d)
    workers_of(rt.proc.pid)[1].kill()
    assert pm.wait_for(waiter, timeout=T) == -signal.SIGKILL
    rt.restart_core(1)          # a new template forks the new worker
    assert pm.wait(pm.spawn(["/bin/sh", "-c", "exit 4"], core=1, timeout=T), timeout=T) == 4
    new = template_of(rt.proc.pid)
    assert new.pid != old.pid and workers_of(rt.proc.pid)[1].ppid() == rt.proc.pid
    wait_until(lambda: not psutil.pid_exists(old.pid), what="the killed template reaped")


def test_sixteen_cores_all_answer():
    with procmgr.Runtime(cores=16, simulate=True) as rt:
        pm = rt.client()
        for core in range(16):
            pm.kill(pm.spawn(["sim"], core=core, timeout=T), timeout=T)
        workers = workers_of(rt.proc.pid)
        assert sorted(workers) == list(range(16))
        ours = [rt.proc.pid, template_of(rt.proc.pid).pid] + [w.pid for w in workers.values()]
    assert all(process_gone(pid) for pid in ours)
