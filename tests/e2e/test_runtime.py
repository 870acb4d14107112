"""The runtime end to end: manager process, real workers, real programs."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import procmgr
from procmgr import Domain, Err, ProcMgmtError, State
from e2e_helpers import T, pm, process_gone, rt, wait_until, workers_of  # noqa: F401 (fixtures)
from procmgr.manager.server import RING_CAPACITY


def test_exit_statuses(pm):
    assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0
    assert pm.wait(pm.spawn(["/bin/sh", "-c", "exit 7"], core=1, timeout=T), timeout=T) == 7
    d = pm.spawn(["/bin/sh", "-c", "kill -TERM $$"], timeout=T)
    assert pm.wait(d, timeout=T) == -signal.SIGTERM


def test_kill_gives_9_and_leaves_no_process(pm):
    d = pm.spawn(["/bin/sleep", "60"], timeout=T)
    assert pm.wait(d, nohang=True, timeout=T) is None
    pm.kill(d, timeout=T)
    assert pm.wait(d, timeout=T) == 9
    assert process_gone(d.pid)
    # The worker reaped it and says so (Flag.RELEASED): cleaned with the
    # stop, no cleanup round trip to wait for.
    info = pm.status(d, timeout=T)
    assert info.state == State.CLEANED and info.exit_status == 9


def test_a_domain_that_exits_is_cleaned_when_waited_for(pm):
    d = pm.spawn(["/bin/sh", "-c", "exit 4"], core=1, timeout=T)
    assert pm.wait(d, timeout=T) == 4
    info = pm.status(d, timeout=T)
    assert info.state == State.CLEANED and info.exit_status == 4
    assert d.id not in pm.domains(timeout=T)


def test_span_then_kill_ends_both(pm):
    d = pm.spawn(["/bin/sleep", "60"], core=0, timeout=T)
    other = pm.span(d, 1, timeout=T)
    assert other != d.pid and not process_gone(other)
    assert pm.status(d, timeout=T).cores == [0, 1]
    pm.kill(d, timeout=T)
    assert process_gone(d.pid) and process_gone(other)


def test_two_clients_wait_on_one_domain(rt, pm):
    other = rt.client()
    d = pm.spawn(["/bin/sh", "-c", "sleep 0.2; exit 3"], timeout=T)
    futures = [pm.wait_async(d), other.wait_async(Domain.from_token(d.token))]
    assert pm.wait_for(futures[0], timeout=T) == 3
    assert other.wait_for(futures[1], timeout=T) == 3


def test_bad_requests_get_clear_errors(pm):
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["/no/such/program"], timeout=T)
    assert e.value.code == Err.EXEC_FAILED and e.value.status == errno.ENOENT
    assert "/no/such/program" in str(e.value)
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["/bin/true"], core=5, timeout=T)
    assert e.value.code == Err.INVALID_SPAWND
    with pytest.raises(ProcMgmtError) as e:
        pm.kill(Domain(1, 12345), timeout=T)
    assert e.value.code in (Err.BAD_CAP, Err.DOMAIN_TABLE_FIND)


def test_connect_to_a_missing_runtime():
    with pytest.raises(procmgr.RuntimeNotFound, match="no procmgr runtime named"):
        procmgr.connect("procmgr-test-no-such-runtime")


def test_several_client_processes_at_once(rt, children):
    code = (
        "import sys, procmgr\n"
        "pm = procmgr.connect(sys.argv[1])\n"
        "total = 0\n"
        "for i in range(20):\n"
        "    d = pm.spawn(['/bin/sh', '-c', 'exit %d' % (i % 5)], core=i % 2, timeout=10)\n"
        "    total += pm.wait(d, timeout=10)\n"
        "print(total)\n"
        "pm.close()\n"
    )
    procs = [children.python("-c", code, rt.name) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        assert int(out) == sum(i % 5 for i in range(20))


def test_a_domain_token_works_from_another_process(rt, pm, children):
    d = pm.spawn(["/bin/sleep", "60"], timeout=T)
    code = ("import sys, procmgr\n"
            "pm = procmgr.connect(sys.argv[1])\n"
            "d = procmgr.Domain.from_token(sys.argv[2])\n"
            "pm.kill(d, timeout=10); print(pm.wait(d, timeout=10))\n")
    p = children.python("-c", code, rt.name, d.token)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()
    assert out.strip() == b"9" and process_gone(d.pid)


def test_sigkill_of_a_worker(rt, pm):
    d = pm.spawn(["/bin/sleep", "60"], core=1, timeout=T)
    worker = workers_of(rt.proc.pid)[1]
    waiter = pm.wait_async(d)
    worker.kill()
    assert pm.wait_for(waiter, timeout=T) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while not process_gone(d.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_gone(d.pid), "the dead worker's domain lived on"
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["/bin/true"], core=1, timeout=T)
    assert e.value.code == Err.INVALID_SPAWND
    assert pm.wait(pm.spawn(["/bin/true"], core=0, timeout=T), timeout=T) == 0
    # The monitor starts a replacement; the core serves again.
    rt.restart_core(1)
    assert pm.wait(pm.spawn(["/bin/sh", "-c", "exit 4"], core=1, timeout=T), timeout=T) == 4
    with pytest.raises(ProcMgmtError) as e:
        rt.restart_core(1)
    assert e.value.code == Err.SPAWND_EXISTS
    with pytest.raises(ProcMgmtError) as e:
        pm.add_spawnd(1)
    assert e.value.code == Err.NOT_MONITOR


def test_client_that_dies_is_released(rt, pm, children):
    code = ("import sys, time, procmgr\n"
            "pm = procmgr.connect(sys.argv[1])\n"
            "d = pm.spawn(['/bin/sleep', '60'], timeout=10)\n"
            "pm.wait_async(d); print(d.token, flush=True); time.sleep(60)\n")
    p = children.python("-c", code, rt.name)
    token = p.stdout.readline().decode().strip()
    p.kill()
    p.wait(timeout=10)
    d = Domain.from_token(token)
    pm.kill(d, timeout=T)                  # the dead client's waiter is not answered
    assert pm.wait(d, timeout=T) == 9
    assert sys.getrefcount(pm) > 0


def test_sigkill_of_the_manager_leaves_nothing(children):
    """Run the runtime in a child process (it is the monitor), SIGKILL its
    manager: no worker, no domain, no segment, no socket survives."""
    code = (
        "import sys, time, procmgr\n"
        "rt = procmgr.Runtime(cores=2, name=sys.argv[1]).start()\n"
        "pm = rt.client()\n"
        "doms = [pm.spawn(['/bin/sh', '-c', 'sleep 60 & sleep 60'], core=c, timeout=10)\n"
        "        for c in (0, 1)]\n"
        "print(rt.proc.pid, *[d.pid for d in doms], flush=True)\n"
        "rt.proc.wait()\n"
        "rt._guard.join(15)\n"
        "print('swept', flush=True)\n"
        "time.sleep(60)\n"
    )
    name = f"procmgr-test-{os.getpid()}-kill"
    monitor = children.python("-c", code, name)
    manager_pid, *dom_pids = map(int, monitor.stdout.readline().split())
    manager = psutil.Process(manager_pid)
    workers = [p.pid for p in workers_of(manager_pid).values()]
    group = [g.pid for d in dom_pids for g in psutil.Process(d).children()]
    assert len(workers) == 2 and len(group) >= 2
    manager.kill()
    assert monitor.stdout.readline().strip() == b"swept"
    for pid in [manager_pid, *workers, *dom_pids, *group]:
        assert process_gone(pid), (f"pid {pid} outlived its manager", _describe(pid))
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"procmgr-{manager_pid}-")]
    assert not os.path.exists(procmgr.osutil.runtime_dir(name))


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{p.cmdline()} status={p.status()} ppid={p.ppid()}"
    except psutil.NoSuchProcess:
        return "gone"


def test_worker_death_is_noticed_fast(rt, pm):
    d = pm.spawn(["/bin/sleep", "60"], core=0, timeout=T)
    worker = workers_of(rt.proc.pid)[0]
    waiter = pm.wait_async(d)
    start = time.monotonic()
    worker.kill()
    assert pm.wait_for(waiter, timeout=T) == -signal.SIGKILL
    # Issue 4 asks for 100 ms; the pidfd makes it immediate, the bound here
    # leaves room for a loaded CI machine.
    assert time.monotonic() - start < 0.25


def test_shutdown_reaps_what_a_dead_worker_left(rt, pm):
    """A dead worker's domains are re-parented to the manager. One that has
    died but is not reaped yet when the runtime stops must not outlive the
    manager as a zombie (re-parented again, to the owner, which cannot tell
    it from a child of its own). Seen once in CI: the runtime stopped right
    after a worker's death, before the manager's child watch came round.
    Here the window is held open: the manager is stopped while its worker
    and that worker's domain die, and told to stop before it runs again."""
    d = pm.spawn(["/bin/sleep", "60"], core=0, timeout=T)
    manager = psutil.Process(rt.proc.pid)
    worker = workers_of(manager.pid)[0]
    manager.suspend()
    try:
        worker.kill()
        wait_until(lambda: worker.status() == psutil.STATUS_ZOMBIE, what="worker dead, unreaped")
        wait_until(lambda: psutil.Process(d.pid).ppid() == manager.pid,
                   what="domain re-parented to the manager")
        os.kill(d.pid, signal.SIGKILL)
        wait_until(lambda: psutil.Process(d.pid).status() == psutil.STATUS_ZOMBIE,
                   what="domain dead, unreaped")
        manager.terminate()             # pending until it runs again
    finally:
        manager.resume()
    rt.proc.wait(timeout=T)
    assert process_gone(d.pid)
    assert d.pid not in [c.pid for c in psutil.Process().children()], \
        "the dead worker's domain outlived the manager, unreaped"


def test_worker_killed_mid_spawn_answers_everyone(rt, pm):
    futures = [pm.spawn_async(["/bin/sleep", "60"], core=1) for _ in range(20)]
    worker = workers_of(rt.proc.pid)[1]
    worker.kill()
    started = []
    for f in futures:
        try:
            started.append(pm.wait_for(f, timeout=T))
        except ProcMgmtError as e:
            assert e.code in (Err.SPAWND_DIED, Err.INVALID_SPAWND), e
    for d in started:          # whatever did start was killed with the worker
        assert pm.wait(d, timeout=T) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while not process_gone(d.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_gone(d.pid)


def test_ctrl_c_stops_everything(children):
    """SIGINT to the process group, as a terminal's Ctrl-C sends it: it
    reaches the owner, not the manager or its workers (a session of their
    own), so the owner's `except KeyboardInterrupt` can still kill and wait
    its domains; then the runtime closes, in order, and nothing is left."""
    code = (
        "import signal, sys, time, procmgr\n"
        # As from an interactive shell: a background job of a non-interactive
        # one (as CI runs us) starts with SIGINT ignored.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "with procmgr.Runtime(cores=2, name=sys.argv[1]) as rt:\n"
        "    pm = rt.client()\n"
        "    d = pm.spawn(['/bin/sleep', '60'], timeout=10)\n"
        "    try:\n"      # said inside: the signal may come as soon as it is said
        "        print(rt.proc.pid, d.pid, flush=True)\n"
        "        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n"
        "        pm.kill(d, timeout=10)\n"
        "        print('cleaned up', pm.wait(d, timeout=10), flush=True)\n"
        "        raise\n"
    )
    name = f"procmgr-test-{os.getpid()}-ctrlc"
    monitor = children.python("-c", code, name, start_new_session=True)
    manager_pid, dom_pid = map(int, monitor.stdout.readline().split())
    workers = [p.pid for p in psutil.Process(manager_pid).children()]
    assert os.getsid(manager_pid) == manager_pid != os.getsid(monitor.pid)
    os.killpg(monitor.pid, signal.SIGINT)
    assert monitor.stdout.readline() == b"cleaned up 9\n"
    try:
        monitor.wait(timeout=60)
    except subprocess.TimeoutExpired:
        tree = [(p.pid, p.name(), p.status()) for p in
                [psutil.Process(monitor.pid)] + psutil.Process(monitor.pid).children(True)]
        raise AssertionError(f"the runtime did not stop on SIGINT; processes: {tree}") from None
    for pid in [manager_pid, dom_pid, *workers]:
        assert process_gone(pid), (pid, _describe(pid))
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"procmgr-{manager_pid}-")]
    assert not os.path.exists(procmgr.osutil.runtime_dir(name))


def test_spawn_with_caps_gives_exactly_those_files(pm, tmp_path):
    out = tmp_path / "out.txt"
    src = tmp_path / "in.txt"
    src.write_text("from a cap\n")
    d = pm.spawn_with_caps(["/bin/sh", "-c", "cat; echo done"],
                           caps=[(0, "r", str(src)), (1, "w", str(out))], timeout=T)
    assert pm.wait(d, timeout=T) == 0
    assert out.read_text() == "from a cap\ndone\n"


def test_a_dead_manager_is_a_procmgr_error_for_every_call():
    """What a client meets when the manager dies: RuntimeGone (a
    ConnectionError) from every call, waiting or not -- not the ring's
    PeerDied; every request in flight is answered with it (its callbacks
    run), and nothing is left waiting."""
    with procmgr.Runtime(cores=1) as rt:
        pm = rt.client()
        d = pm.spawn(["/bin/sleep", "60"], timeout=T)
        waiter, other = pm.wait_async(d), pm.wait_async(d)
        told = []
        other.add_done_callback(told.append)
        os.kill(rt.proc.pid, signal.SIGKILL)
        with pytest.raises(procmgr.RuntimeGone, match="manager is gone") as e:
            pm.wait_for(waiter, timeout=T)
        assert isinstance(e.value, ConnectionError) and e.value.__cause__ is not None
        assert told == [other] and pm.in_flight == 0
        with pytest.raises(procmgr.RuntimeGone):
            other.result()
        for call in (lambda: pm.spawn(["/bin/true"], timeout=T),
                     lambda: pm.status(d, timeout=T), lambda: pm.kill(d, timeout=T)):
            with pytest.raises(procmgr.RuntimeGone):
                call()
        assert pm.in_flight == 0


def test_a_directory_a_dead_runtime_left_is_taken_over(tmp_path, monkeypatch):
    """What a runtime that died with its owner left (its socket, its log,
    a domain's output) does not keep its name: the next runtime of that
    name takes the directory over, emptied. A live one's is refused and
    left untouched."""
    import socket

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    left = procmgr.osutil.runtime_dir("stale")
    os.mkdir(left, 0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.path.join(left, "manager.sock"))           # nobody listens any more
    dead.close()
    os.makedirs(os.path.join(left, "logs", "0"))
    with open(os.path.join(left, "logs", "0", "1.stdout"), "w") as f:
        f.write("the old runtime's\n")
    with procmgr.Runtime(cores=1, name="stale") as rt:
        pm = rt.client()
        assert pm.run(["/bin/echo", "new"], timeout=T).stdout == b"new\n"
        assert pm.output(1) == b"new\n"                       # its domain 1, not the old one's
        with pytest.raises(FileExistsError, match="a runtime of that name is running"):
            procmgr.Runtime(cores=1, name="stale").start()
        assert pm.run(["/bin/true"], timeout=T).returncode == 0   # untouched
    assert not os.path.exists(left)


def test_a_start_refused_or_a_late_sweep_leaves_the_live_runtimes_directory(tmp_path,
                                                                           monkeypatch):
    """Two starters of one name at once: the second's manager is refused at
    the directory's lock, and its owner's sweep then leaves the live one's
    directory alone -- as does any sweep of a directory someone holds."""
    from procmgr.client import runtime as runtime_module
    from procmgr.osutil import remove_dead_runtime_dir, runtime_dir

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with procmgr.Runtime(cores=1, name="twice") as first:
        pm = first.client()
        # As if its check had run before the first one's manager took the name.
        monkeypatch.setattr(runtime_module, "_taken", lambda directory, name: None)
        second = procmgr.Runtime(cores=1, name="twice")
        with pytest.raises(RuntimeError, match="it is running"):
            second.start()
        second.close()                                    # joins its guard, sweep and all
        assert remove_dead_runtime_dir(runtime_dir("twice")) is False   # held: kept
        assert pm.run(["/bin/echo", "still here"], timeout=T).stdout == b"still here\n"
        with procmgr.connect("twice") as other:           # reachable by its name
            assert other.wait(pm.spawn(["/bin/true"]), timeout=T) == 0
    assert not os.path.exists(runtime_dir("twice"))


def test_answers_that_backed_up_flow_once_the_client_reads(pm):
    """Three rings' worth of requests sent before any answer is read: the
    answers back up in the manager (it stops reading this client until
    they fit), and flow as soon as the client reads. The manager used to
    arm such a client's ring for the wrong thing (docs/reliability.md):
    the room made woke nobody, and the last answers came a second late,
    at the loop's timeout."""
    d = pm.spawn(["/bin/sleep", "30"], timeout=T)
    try:
        t = time.perf_counter()
        futures = [pm.wait_async(d, nohang=True) for _ in range(3 * RING_CAPACITY)]
        assert all(f.result(T) is None for f in futures)
        assert time.perf_counter() - t < 0.8
    finally:
        pm.kill(d, timeout=T)


def test_ended_domains_are_listed_with_when_they_started_and_ended(pm):
    t = time.time()
    done = pm.spawn(["/bin/sh", "-c", "exit 4"], timeout=T)
    assert pm.wait(done, timeout=T) == 4
    live = pm.spawn(["/bin/sleep", "30"], timeout=T)
    try:
        assert pm.domains(timeout=T) == [live.id]
        assert pm.domains(ended=True, timeout=T) == [done.id]
        info = pm.status(done.id, timeout=T)
        assert t - 1 < info.started <= info.ended <= time.time()
        assert pm.status(live, timeout=T).ended is None
    finally:
        pm.kill(live, timeout=T)
