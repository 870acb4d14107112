"""A kill, a domain's own end and the runtime's end reach everything the
domain forked (procmgr/containment.py): daemons that left with setsid and
a double fork, ignore SIGTERM and cleared their environment; a tree that
keeps forking; after a worker and then its manager were SIGKILLed. Each
escape is looked for by a marker in its command line, and by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import procmgr
from procmgr import containment
from e2e_helpers import T, at_its_limit, process_gone, wait_until, workers_of

CGROUP_HERE = containment.choose("auto")[0] == containment.CGROUP
MODES = [pytest.param(containment.CGROUP, marks=pytest.mark.skipif(
    not CGROUP_HERE, reason="no writable cgroup v2 hierarchy here")), containment.TREE]


def marked(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line carries ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and \
                    marker in " ".join(p.info["cmdline"] or []):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def none_left(marker: str, timeout: float = 2.0) -> None:
    wait_until(lambda: not marked(marker), timeout, f"every process marked {marker} gone")


def daemon(marker: str) -> list[str]:
    """A program that leaves a daemon: fork, setsid, fork again, the middle
    one exits; the daemon ignores SIGTERM and runs with an empty
    environment. The program itself sleeps on."""
    return [sys.executable, "-c", f"""
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)',
                                   '{marker}-daemon'], {{}})
    os._exit(0)
print('forked', flush=True)
time.sleep(600)
"""]


@pytest.fixture(params=MODES)
def runtime(request):
    with procmgr.Runtime(cores=1, containment=request.param) as rt:
        yield rt
        cgroup = rt.cgroup
    assert cgroup is None or not os.path.exists(cgroup)


def _marker(request) -> str:
    return f"pmmark{os.getpid()}x{time.monotonic_ns()}"


def test_the_mode_is_said(runtime):
    pm = runtime.client()
    assert pm.containment.split()[0] == runtime.containment_mode
    if runtime.containment_mode == containment.CGROUP:
        assert pm.containment == f"cgroup {runtime.cgroup}"
        assert os.path.isdir(runtime.cgroup)


def test_a_kill_ends_a_daemon_that_left_with_setsid_and_ignores_sigterm(runtime, request):
    marker = _marker(request)
    pm = runtime.client()
    d = pm.spawn(daemon(marker), stdout=procmgr.DEVNULL)
    wait_until(lambda: marked(f"{marker}-daemon"), T, "the daemon running")
    escaped = marked(f"{marker}-daemon")
    # Tree containment knows it by its session: its parent, the middle
    # process, is a zombie the program never reaped.
    t = time.monotonic()
    pm.kill(d, timeout=T)
    assert time.monotonic() - t < 0.2 + 1.0       # the grace, and a margin
    assert not marked(marker)                     # gone when the kill answers
    assert all(process_gone(pid) for pid in escaped)


def test_a_domains_own_end_ends_what_it_left_behind(runtime, request):
    marker = _marker(request)
    pm = runtime.client()
    program = daemon(marker)
    program[-1] = program[-1].replace("time.sleep(600)\n", "time.sleep(%s)\n" % (
        "0.3" if runtime.containment_mode == containment.CGROUP else "1.6"))
    d = pm.spawn(program, stdout=procmgr.DEVNULL)
    wait_until(lambda: marked(f"{marker}-daemon"), T, "the daemon running")
    assert pm.wait(d, timeout=T) == 0
    if runtime.containment_mode == containment.CGROUP:
        assert not marked(marker)          # gone when its end is told
    none_left(marker)                      # tree: once the worker has looked


def test_what_a_domain_left_behind_is_counted_in_its_cpu_under_cgroups(runtime):
    """A child that spins 0.3 s and is never waited for: its CPU is not
    in the program's rusage (the worker, its subreaper, reaps it), but is
    in its cgroup's -- and the exited event says what status says."""
    pm = runtime.client()
    seq = max([0] + [e.seq for e in _all_events(pm)])
    d = pm.spawn([sys.executable, "-c", """
import os, time
if os.fork() == 0:
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    os._exit(0)
time.sleep(1.0)
"""])
    assert pm.wait(d, timeout=T) == 0
    info = pm.status(d, timeout=T)
    used = info.cpu_user + info.cpu_system
    if runtime.containment_mode == containment.CGROUP:
        assert 0.3 <= used < 5
    else:
        assert used < 0.3                  # the program's own rusage: its child's is not
    end, = [e for e in _all_events(pm, seq) if e.kind == "exited" and e.domain == d.id]
    assert (end.cpu_user, end.cpu_system, end.max_rss) == \
        (info.cpu_user, info.cpu_system, info.max_rss)


def _all_events(pm, after: int = 0) -> list:
    got = []
    with pytest.raises(TimeoutError):
        for event in pm.events(after=after, timeout=0):
            got.append(event)
    return got


# A member of the tree: a shell with always one child of its own, a new
# one each second (a shell: 500 of them are light on 2 CPUs).
MEMBER = "while :; do sleep 1 & wait; done"


def test_a_tree_that_keeps_forking_is_ended_whole(runtime, request):
    """500 processes, each of the newest forking again, some leaving their
    process group: the kill stops or freezes them first, so none outruns it."""
    marker = _marker(request)
    pm = runtime.client()
    d = pm.spawn([sys.executable, "-c", f"""
import os, sys, time
MEMBER = {MEMBER!r}
n = 0
while True:
    if n < 500:
        pid = os.fork()
        if pid == 0:
            n = 0
            if os.getpid() % 3 == 0:
                os.setpgid(0, 0)
            os.execv('/bin/sh', ['/bin/sh', '-c', MEMBER, '{marker}-tree'])
        n += 1
    else:
        time.sleep(0.01)
"""], stdout=procmgr.DEVNULL)
    wait_until(lambda: len(marked(f"{marker}-tree")) >= 500, 60, "500 processes of the tree")
    t = time.monotonic()
    pm.kill(d, timeout=30)
    took = time.monotonic() - t
    none_left(marker, 5.0)
    assert took < 10, took


def test_the_runtimes_end_ends_a_daemon_with_a_cleared_environment(request):
    marker = _marker(request)
    for mode in [containment.TREE] + ([containment.CGROUP] if CGROUP_HERE else []):
        with procmgr.Runtime(cores=1, containment=mode) as rt:
            pm = rt.client()
            # Its middle process exits at once: not even tree containment
            # has seen the daemon before the end.
            pm.spawn(["/bin/sh", "-c", f"(setsid env -i {sys.executable} -c "
                      f"'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      f"time.sleep(600)' {marker}-{mode} &) ; sleep 600"],
                     stdout=procmgr.DEVNULL)
            wait_until(lambda: marked(f"{marker}-{mode}"), T, "the daemon running")
        none_left(f"{marker}-{mode}")


@pytest.mark.skipif(not CGROUP_HERE, reason="no writable cgroup v2 hierarchy here")
def test_after_a_worker_and_then_its_manager_are_sigkilled_nothing_survives(request):
    marker = _marker(request)
    rt = procmgr.Runtime(cores=1, containment=containment.CGROUP)
    rt.start()
    try:
        pm = rt.client()
        pm.spawn(["/bin/sh", "-c", f"(setsid env -i {sys.executable} -c "
                  f"'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  f"time.sleep(600)' {marker} &) ; sleep 600"], stdout=procmgr.DEVNULL)
        wait_until(lambda: marked(marker), T, "the daemon running")
        worker = psutil.Process(rt.proc.pid).children()[0]
        os.kill(worker.pid, signal.SIGKILL)
        os.kill(rt.proc.pid, signal.SIGKILL)
        rt.proc.wait(timeout=T)
        rt._guard.join(timeout=30)          # the owner's sweep ran
        none_left(marker)
        assert not os.path.exists(rt.cgroup)
    finally:
        rt.close()


def test_a_status_lists_every_process_of_the_domain(runtime):
    pm = runtime.client()
    d = pm.spawn(["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"], stdout=procmgr.DEVNULL)
    try:
        wait_until(lambda: len(pm.processes(d, timeout=T)) == 3, T, "three processes")
        pids = pm.processes(d, timeout=T)
        assert pm.status(d, timeout=T).pids[0] in pids
        assert all(psutil.Process(p).name() in ("sh", "sleep") for p in pids)
    finally:
        pm.kill(d, timeout=T)
    assert pm.processes(d, timeout=T) == []


def test_asking_for_cgroup_containment_where_there_is_none_says_why(monkeypatch):
    monkeypatch.setattr(containment, "v2_mount", lambda: None)
    with pytest.raises(containment.ContainmentUnavailable, match="not mounted"):
        procmgr.Runtime(cores=1, containment="cgroup")
    assert procmgr.Runtime(cores=1).containment_mode == containment.TREE
    with pytest.raises(ValueError, match="containment must be one of"):
        procmgr.Runtime(cores=1, containment="jail")


def test_spawns_after_kills_run(runtime):
    """A killed domain's cgroup is not used again: this kernel SIGKILLs a
    process started by clone3 in a group that was killed before
    (spawnd_workers/_spawnd.c, "the domains' cgroups")."""
    pm = runtime.client()
    for _ in range(3):
        d = pm.spawn(["/bin/sleep", "60"])
        pm.kill(d, timeout=T)
        assert [pm.wait(pm.spawn(["/bin/true"]), timeout=T) for _ in range(3)] == [0, 0, 0]
    if runtime.containment_mode == containment.CGROUP:
        core = next(p for p in os.listdir(runtime.cgroup) if p.startswith("core"))
        groups = [g for g in os.listdir(os.path.join(runtime.cgroup, core)) if g[0] == "g"]
        assert len(groups) <= 3         # the killed ones removed, the free one kept


CGROUP_ONLY = pytest.mark.skipif(not CGROUP_HERE, reason="no writable cgroup v2 hierarchy here")

# A program that writes its own group's FILE ("cgroup.kill" or
# "cgroup.freeze") from a second thread while the first ends with 0: when
# the exit wins the race, the domain ends "exited 0", yet its group was
# killed or frozen after its last process looked.
RACE_EXIT_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static int fd; static long spin; static volatile int go;
static void *writer(void *a) { while (!go); for (volatile long i = 0; i < spin; i++);
                               write(fd, "1", 1); for (;;) pause(); }
int main(int argc, char **argv) {
    char line[512], path[1024]; FILE *f = fopen("/proc/self/cgroup", "r");
    while (fgets(line, sizeof line, f) && strncmp(line, "0::", 3) != 0);
    line[strcspn(line, "\n")] = 0;
    snprintf(path, sizeof path, "%s%s/%s", argv[1], line + 3, argv[2]);
    fd = open(path, O_WRONLY); spin = atol(argv[3]);
    cpu_set_t all; CPU_ZERO(&all);                /* the thread beside it, not after it */
    for (int i = 0; i < 64; i++) CPU_SET(i, &all);
    sched_setaffinity(0, sizeof all, &all);
    pthread_t t; pthread_create(&t, NULL, writer, NULL);
    usleep(1000);
    go = 1;
    syscall(SYS_exit_group, 0);
}
"""


@CGROUP_ONLY
@pytest.mark.parametrize("file", ["cgroup.kill", "cgroup.freeze"])
def test_a_group_its_domain_killed_or_froze_is_not_given_to_the_next(tmp_path, file):
    """A group killed or frozen by its own domain, which still ended with
    0, must not start the next spawn: this kernel SIGKILLs what clone3
    starts in a killed group, and one started frozen never runs (the
    core would hang in clone3)."""
    source = tmp_path / "race.c"
    source.write_text(RACE_EXIT_C)
    program = str(tmp_path / "race")
    subprocess.run(["gcc", "-O1", "-pthread", "-o", program, str(source)], check=True,
                   timeout=60)
    with procmgr.Runtime(cores=1, containment="cgroup") as rt:
        pm, other = rt.client(), rt.client()
        for i in range(24):
            d = pm.spawn([program, containment.v2_mount(), file, str((i % 8) * 200)])
            try:
                pm.wait(d, timeout=2)
            except TimeoutError:           # frozen before it could end: a kill ends it
                pm.kill(d, timeout=T)
            # the next spawn, another client's, runs as asked
            assert other.wait(other.spawn(["/bin/sh", "-c", "exit 3"]), timeout=T) == 3


@CGROUP_ONLY
def test_a_slow_leftover_holds_up_its_own_end_only():
    """A domain ends leaving a process that takes a while to die (3 GB to
    give back): its wait answers once that is gone, while another client's
    spawns on the same core are served meanwhile."""
    with procmgr.Runtime(cores=1, containment="cgroup") as rt:
        pm, other = rt.client(), rt.client()
        d = pm.spawn([sys.executable, "-c", """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    block = b"x" * (3 << 30)            # resident: 3 GB to give back as it dies
    os.write(w, str(os.getpid()).encode())
    time.sleep(600)
print(os.read(r, 16).decode(), flush=True)
"""])
        ended = []

        def wait_for_it():
            status = pm.wait(d, timeout=30)
            leftover = int(pm.output(d))
            ended.append((status, process_gone(leftover)))

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        slowest = 0.0
        while waiter.is_alive():
            t = time.monotonic()
            assert other.wait(other.spawn(["/bin/true"]), timeout=T) == 0
            slowest = max(slowest, time.monotonic() - t)
        waiter.join()
        assert ended == [(0, True)]             # told once the leftover was gone
        assert slowest < 0.2


@CGROUP_ONLY
def test_at_its_descriptor_limit_a_worker_tells_ends_at_once_and_lives():
    """Groups past the 256 a worker keeps open are opened for each use;
    with no descriptor to spare, what cannot be read is not waited for
    (it was: 1 s for each end, then the worker ended over a stray)."""
    quiet = dict(stdout=procmgr.DEVNULL, stderr=procmgr.DEVNULL)
    with procmgr.Runtime(cores=1, containment="cgroup") as rt:
        pm = rt.client()
        worker = workers_of(rt.proc.pid)[0]
        fill = [pm.spawn(["/bin/sleep", "600"], **quiet) for _ in range(260)]
        short = [pm.spawn(["/bin/sleep", "2"], **quiet) for _ in range(5)]
        started = time.monotonic()
        limits = worker.rlimit(psutil.RLIMIT_NOFILE)
        at_its_limit(worker)
        try:
            assert [pm.wait(d, timeout=T) for d in short] == [0] * 5
            assert time.monotonic() - started < 2 + 1.0
            assert worker.is_running()
        finally:
            worker.rlimit(psutil.RLIMIT_NOFILE, limits)
        for d in fill:
            pm.kill_async(d)
        assert [pm.wait(d, timeout=T) for d in fill] == [9] * 260
        assert worker.is_running()


def test_a_pid_that_now_names_another_process_names_nothing_of_the_domains():
    with subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); "
                           "time.sleep(30)"]) as leader:
        try:
            wait_until(lambda: containment.group_and_session(leader.pid) ==
                       (leader.pid, leader.pid), T, "its own session")
            start = containment.started(leader.pid)
            # Seen with its start time: its session's members are the domain's.
            assert containment.orphans_of({leader.pid: start}, [leader.pid]) == [leader.pid]
            # The same number seen earlier as another process: not the domain's.
            assert containment.orphans_of({leader.pid: start - 1}, [leader.pid]) == []
        finally:
            leader.kill()
    # Gone: its number may still be a group's or a session's -- kept.
    assert containment.started(leader.pid) is None
