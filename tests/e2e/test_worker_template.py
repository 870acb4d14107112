"""Workers are forked from a template (procmgr/manager/workers.py,
spawnd_workers/template.py): each is still the manager's own child, looks
like a worker to ps, shares its pages, and a core restarts even after the
template was killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil

import procmgr
from procmgr.manager.workers import FORK_TIMEOUT
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
                                    "--runtime", rt.name, "--parent-pid", str(rt.proc.pid)]
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


def test_a_worker_forked_for_a_request_given_up_on_never_serves(rt, pm):
    """The template stalls mid-request: the manager gives up on it after
    its deadline, ends it and asks a new one. Woken just then, the old one
    still forks -- and that late worker, never told "go", exits without
    touching the rings: the core has one worker, and it serves."""
    old = template_of(rt.proc.pid)
    d = pm.spawn(["/bin/sleep", "60"], core=1, timeout=T)
    waiter = pm.wait_async(d)
    workers_of(rt.proc.pid)[1].kill()
    assert pm.wait_for(waiter, timeout=T) == -signal.SIGKILL
    old.suspend()
    waker = threading.Timer(FORK_TIMEOUT + 0.3, lambda: old.resume() if old.is_running() else None)
    waker.start()
    try:
        rt.restart_core(1)
    finally:
        waker.cancel()
    assert pm.wait(pm.spawn(["/bin/sh", "-c", "exit 6"], core=1, timeout=T), timeout=T) == 6
    wait_until(lambda: not psutil.pid_exists(old.pid), what="the stalled template ended")
    time.sleep(0.5)                      # a late worker would be up by now
    cores = [p.cmdline()[4] for p in psutil.Process(rt.proc.pid).children()
             if "--core" in p.cmdline()]
    assert sorted(cores) == ["0", "1"], cores
    assert pm.wait(pm.spawn(["/bin/sh", "-c", "exit 7"], core=1, timeout=T), timeout=T) == 7


def test_a_traced_runtime_process_refuses_to_run():
    """A tracer attached before the process made itself non-dumpable would
    follow every worker forked from the template: such a process stops."""
    code = "from procmgr.osutil import refuse_ptrace; refuse_ptrace(); print('ran')"
    p = subprocess.run(["strace", "-f", "-o", "/dev/null", sys.executable, "-c", code],
                       capture_output=True, timeout=60)
    assert p.returncode != 0 and b"ran" not in p.stdout
    assert b"is traced by process" in p.stderr and b"refusing to run" in p.stderr
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b"ran\n"


def test_a_runtime_knows_its_own_workers_by_its_managers_pid(rt):
    """After a manager's crash the Runtime ends what was its: its workers
    and template, by the manager's pid on their command lines -- never
    another runtime's, whatever the names (a runtime named "4" or "b"
    once claimed others' processes by a matching argument)."""
    with procmgr.Runtime(cores=1, name=f"{rt.name} --runtime b") as other:
        mine = list(workers_of(rt.proc.pid).values()) + [template_of(rt.proc.pid)]
        theirs = list(workers_of(other.proc.pid).values()) + [template_of(other.proc.pid)]
        for p in mine:
            assert rt._is_ours(p.pid, rt.proc.pid)
            assert not other._is_ours(p.pid, other.proc.pid)
        for p in theirs:
            assert other._is_ours(p.pid, other.proc.pid)
            assert not rt._is_ours(p.pid, rt.proc.pid)


def test_a_worker_touches_nothing_until_told_go():
    """The template's protocol driven by hand: a worker whose "go" pipe is
    closed unwritten exits without attaching to its rings; one told "go"
    attaches (it rings the manager's doorbell to say so)."""
    from procmgr.osutil import become_subreaper
    from ringbuf import Ring

    was = become_subreaper()              # its workers are re-parented to us
    ours, theirs = socket.socketpair()
    template = subprocess.Popen(
        [sys.executable, "-m", "spawnd_workers", "--template", "--socket-fd",
         str(theirs.fileno()), "--runtime", "by-hand", "--manager-pid", str(os.getpid())],
        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    theirs.close()
    ours.settimeout(T)
    held = []
    try:
        for go in (False, True):
            rings = [Ring.create_sealed(64, label=f"by-hand.{k}") for k in range(2)]
            doorbells = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
            go_r, go_w = os.pipe()
            held += rings + [("fd", fd) for fd in doorbells + [go_w]]
            socket.send_fds(ours, [json.dumps({"argv": ["--core", "0", "--no-pin"]}).encode()
                                   + b"\n"], [r.fileno() for r in rings] + doorbells + [go_r])
            os.close(go_r)
            pid = json.loads(ours.makefile("rb").readline())["pid"]
            if go:
                os.write(go_w, b"g")
                wait_until(lambda: _rang(doorbells[1]), what="the worker attached")
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            else:
                os.close(go_w)
                held.remove(("fd", go_w))
                _, status = os.waitpid(pid, 0)          # it ends by itself
                assert os.waitstatus_to_exitcode(status) == 1
                assert not _rang(doorbells[1]), "it touched the manager's doorbell"
    finally:
        ours.close()
        try:
            template.wait(timeout=T)    # it ends at the EOF
        finally:
            if template.poll() is None:
                template.kill()
                template.wait()
        become_subreaper(was)
        for item in held:
            if isinstance(item, tuple):
                os.close(item[1])
            else:
                item.close()


def _rang(eventfd: int) -> bool:
    try:
        return os.eventfd_read(eventfd) > 0
    except BlockingIOError:
        return False
