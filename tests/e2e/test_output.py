"""A domain's output, as a user meets it: where it goes (LOG, DEVNULL, a
path, INHERIT, STDOUT), reading it back (output, follow, run), its bounds on
disk, and what bad input gets. Real runtime, real programs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

import procmgr
from procmgr import DEVNULL, INHERIT, LOG, STDOUT, Err, ProcMgmtError, State
from procmgr.osutil import runtime_dir

from e2e_helpers import T, pm, process_gone, rt, workers_of  # noqa: F401  (fixtures)

SH = "/bin/sh"


def sh(script: str) -> list[str]:
    return [SH, "-c", script]


def logs_of(rt, core: int = 0) -> list[str]:
    """The log files in a core's logs directory, but for empty ones (and
    the spare files kept for spawns to come, in .spare/)."""
    directory = os.path.join(runtime_dir(rt.name), "logs", str(core))
    return sorted(f for f in os.listdir(directory)
                  if not f.startswith(".") and os.path.getsize(f"{directory}/{f}"))


def test_megabytes_on_both_streams_never_block_and_echos_after_them_end(pm):
    """The bug at the root: output went into a pipe nobody read (the
    manager's ready pipe); 64 KiB in, every program writing blocked."""
    d = pm.spawn(sh("head -c 10000000 /dev/zero; head -c 10000000 /dev/zero >&2"))
    assert pm.wait(d, timeout=60) == 0
    for i in range(500):
        e = pm.spawn(["/bin/echo", str(i)])
        assert pm.wait(e, timeout=T) == 0
    assert pm.output(e) == b"499\n"


def test_no_descriptor_of_the_runtime_reaches_a_domain_or_its_managers(rt, pm):
    """A domain gets 0 (/dev/null), 1 and 2 (its log files) and nothing else;
    the manager and workers write their diagnostics to the runtime log, not
    to a pipe or terminal of whoever started them."""
    script = ("import os; fds = sorted(int(f) for f in os.listdir('/proc/self/fd')); "
              "print(fds, *[os.readlink(f'/proc/self/fd/{f}') for f in (0, 1, 2)])")
    r = pm.run([sys.executable, "-c", script])
    assert r.returncode == 0, r.stderr
    logs = os.path.join(runtime_dir(rt.name), "logs", "0")
    # 3 is the directory listdir opened
    assert r.stdout.decode().split() == [
        "[0,", "1,", "2,", "3]", "/dev/null", f"{logs}/{r.domain.id}.stdout",
        f"{logs}/{r.domain.id}.stderr"]
    log = os.path.join(runtime_dir(rt.name), "runtime.log")
    manager = psutil.Process(rt.proc.pid)
    for proc in [manager] + manager.children():
        assert os.readlink(f"/proc/{proc.pid}/fd/1") == log
        assert os.readlink(f"/proc/{proc.pid}/fd/2") == log
        assert os.readlink(f"/proc/{proc.pid}/fd/0") == "/dev/null"


def test_output_is_readable_while_it_runs_and_after_it_ends(pm):
    d = pm.spawn(sh("echo one; echo oops >&2; sleep 30"))
    deadline = time.monotonic() + T
    # Each stream is readable once the program wrote it and the rotator has
    # named its file (just after the spawn): wait for both.
    while (pm.output(d), pm.output(d, "stderr")) != (b"one\n", b"oops\n") and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    assert pm.output(d) == b"one\n" and pm.output(d, "stderr") == b"oops\n"
    assert pm.status(d).state == State.RUNNING
    pm.kill(d)
    assert pm.output(d) == b"one\n" and pm.output(d.id, "stderr") == b"oops\n"


def test_a_program_printing_nothing_makes_no_file(rt, pm):
    d = pm.spawn(["/bin/true"])
    assert pm.wait(d, timeout=T) == 0
    assert pm.output(d) == b"" and logs_of(rt) == []


def test_everything_written_before_a_crash_is_kept(pm):
    """Written, then killed by a signal of its own: all the kernel took is
    in the log once the wait has answered."""
    d = pm.spawn(sh("head -c 300000 /dev/zero | tr '\\0' x; kill -9 $$"))
    assert pm.wait(d, timeout=T) == -9
    assert pm.output(d) == b"x" * 300000


def test_300_programs_on_4_cores_every_line_in_order():
    with procmgr.Runtime(cores=4) as rt:
        pm = rt.client()
        doms = [pm.spawn(sh(f"for i in 1 2 3 4 5 6 7 8 9 10; do echo {n} line $i; done"),
                         core=n % 4) for n in range(300)]
        for d in doms:
            assert pm.wait(d, timeout=T) == 0
        for n, d in enumerate(doms):
            assert pm.output(d) == b"".join(b"%d line %d\n" % (n, i) for i in range(1, 11))


def test_a_stream_never_takes_more_than_its_bound_and_keeps_the_newest(rt, pm):
    """5 MB printed with 64 KiB files and 2 backups: three files of at most
    64 KiB, holding the last of what was printed, in order, without a gap."""
    limit = 64 * 1024
    script = ("import sys; w = sys.stdout.write\n"
              "for i in range(500000): w('%09d\\n' % i)")
    d = pm.spawn([sys.executable, "-c", script], log_max_bytes=limit, log_backups=2)
    assert pm.wait(d, timeout=60) == 0
    files = [f for f in logs_of(rt) if f.startswith(f"{d.id}.")]
    assert files == [f"{d.id}.stdout", f"{d.id}.stdout.1", f"{d.id}.stdout.2"]
    # on disk: the current file's blocks (its head is a hole), whole rotated files
    sizes = [os.stat(os.path.join(runtime_dir(rt.name), "logs", "0", f)).st_blocks * 512
             for f in files]
    # (a burst the rotator caught late fills several rotated files at once:
    # the oldest of them may hold less than a whole file's worth)
    assert all(size <= limit for size in sizes)
    out = pm.output(d)
    assert limit <= len(out) <= 3 * limit
    lines = out.splitlines()
    assert lines[-1] == b"000499999"
    first = int(lines[1])     # the first may be cut mid-line by a rotation
    assert [int(x) for x in lines[1:]] == list(range(first, 500000))
    assert pm.output(d, tail=3) == b"000499997\n000499998\n000499999\n"


def test_the_runtimes_bounds_apply_unless_a_spawn_says_otherwise():
    with procmgr.Runtime(cores=1, log_max_bytes=4096, log_backups=0) as rt:
        pm = rt.client()
        d = pm.spawn(sh("head -c 20500 /dev/zero | tr '\\0' a"))
        assert pm.wait(d, timeout=T) == 0
        deadline = time.monotonic() + T       # the rotator's last look comes after the exit
        while len(pm.output(d)) != 20500 % 4096 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pm.output(d) == b"a" * (20500 % 4096)    # 5 blocks' worth, only the last kept
        assert logs_of(rt) == [f"{d.id}.stdout"]


def test_logs_go_after_the_domain_is_forgotten_and_all_at_the_end():
    """A domain's log is readable as long as the manager remembers the
    domain (its history); some time after it is forgotten the file goes
    back to the worker's pool (the worker frees ended streams in batches of
    64), so what a core holds stays bounded; and at the end nothing is left."""
    with procmgr.Runtime(cores=1, history=3) as rt:
        pm = rt.client()
        doms = [pm.run(["/bin/echo", str(i)]).domain for i in range(200)]
        assert [pm.output(d) for d in doms[-3:]] == [b"197\n", b"198\n", b"199\n"]
        with pytest.raises(ProcMgmtError, match="forgotten, with its logs") as bad:
            pm.output(doms[0])
        assert bad.value.code == Err.DOMAIN_FORGOTTEN
        kept = logs_of(rt)
        assert {f"{d.id}.stdout" for d in doms[-3:]} <= set(kept)
        assert len(kept) <= 3 + 64 // 2 + 2, kept       # not 200
        directory = runtime_dir(rt.name)
    assert not os.path.exists(directory)


def test_devnull_a_path_appending_and_stderr_into_stdout(rt, pm, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    d = pm.spawn(sh("echo a; echo b >&2"), stdout=out, stderr=STDOUT)
    assert pm.wait(d, timeout=T) == 0
    assert out.read_text() == "a\nb\n"              # emptied first, both streams
    d = pm.spawn(sh("echo c"), stdout=str(out), append=True, stderr=DEVNULL)
    assert pm.wait(d, timeout=T) == 0
    assert out.read_text() == "a\nb\nc\n"
    d = pm.spawn(sh("echo gone; echo kept >&2"), stdout=DEVNULL)
    assert pm.wait(d, timeout=T) == 0
    assert pm.output(d) == b"" and pm.output(d, "stderr") == b"kept\n"
    assert logs_of(rt) == [f"{d.id}.stderr"]


def test_a_relative_path_is_the_callers_not_the_workers(pm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("from a file\n")
    d = pm.spawn(["/bin/cat"], stdin="in.txt", stdout="out.txt")
    assert pm.wait(d, timeout=T) == 0
    assert (tmp_path / "out.txt").read_text() == "from a file\n"


def test_inherit_writes_to_the_spawning_process_own_stdout(rt, children):
    """The domain writes into the client's own stdout (here a pipe the test
    reads), sharing it as a child would."""
    script = ("import sys, procmgr; pm = procmgr.connect(sys.argv[1]); "
              "print('client first', flush=True); "
              "d = pm.spawn(['/bin/sh', '-c', 'echo from the domain; echo to err >&2'], "
              "stdout=procmgr.INHERIT, stderr=procmgr.INHERIT); "
              "print(pm.wait(d, timeout=10), flush=True)")
    proc = children.python("-c", script, rt.name)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == b"client first\nfrom the domain\n0\n"
    assert err == b"to err\n"


def test_follow_yields_output_as_it_comes_and_ends_with_the_domain(pm):
    d = pm.spawn(sh("echo start; sleep 0.3; echo middle; sleep 0.3; echo end"))
    seen, stamps = [], []
    for piece in pm.follow(d):
        seen.append(piece)
        stamps.append(time.monotonic())
    assert b"".join(seen) == b"start\nmiddle\nend\n"
    assert len(seen) >= 2 and stamps[-1] - stamps[0] > 0.3   # not all at the end
    assert pm.status(d).state in (State.STOPPED, State.CLEANED)


def test_follow_by_id_and_with_tail_across_rotations(pm):
    script = ("import sys, time\n"
              "for i in range(3000):\n"
              "    print('%05d' % i, flush=True)\n"
              "    if i % 500 == 0: time.sleep(0.05)")
    d = pm.spawn([sys.executable, "-c", script], log_max_bytes=4096, log_backups=1)
    got = b"".join(pm.follow(d.id, tail=2))
    # a follower slower than a rotation misses what it moved out (4 KiB
    # here), and a cut is on a block boundary: count whole lines only
    lines = [int(x) for x in got.splitlines() if len(x) == 5]
    assert lines[-1] == 2999 and lines == sorted(set(lines))
    assert len(lines) > 1000     # followed across many rotations, not just the end


def test_run_returns_what_it_printed_and_its_status(pm):
    r = pm.run(sh("echo out; echo err >&2; exit 3"))
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert isinstance(r.domain, procmgr.Domain) and r.args == sh("echo out; echo err >&2; exit 3")
    r = pm.run(["/bin/cat"], input="héllo\n", text=True, encoding="utf-8")
    assert r.stdout == "héllo\n" and r.stderr == ""
    with pytest.raises(subprocess.CalledProcessError) as failed:
        pm.run(sh("echo partial; exit 2"), check=True)
    assert failed.value.returncode == 2 and failed.value.stdout == b"partial\n"
    assert isinstance(failed.value, procmgr.CalledProcessError)
    with pytest.raises(ValueError, match="capture_output"):
        pm.run(["/bin/true"], stdout=DEVNULL)


def test_run_timeout_kills_it_and_carries_what_it_printed(pm):
    started = time.monotonic()
    with pytest.raises(TimeoutError) as timed_out:
        pm.run(sh("echo before; exec sleep 30"), timeout=0.5)
    e = timed_out.value
    assert isinstance(e, subprocess.TimeoutExpired) and isinstance(e, procmgr.TimeoutExpired)
    assert e.stdout == b"before\n" and e.timeout == 0.5
    assert time.monotonic() - started < 5
    info = pm.status(e.domain)
    assert info.state in (State.STOPPED, State.CLEANED) and info.exit_status == 9
    assert all(process_gone(pid) for pid in info.pids)


def test_bad_output_paths_name_the_file_and_leave_nothing(rt, pm, tmp_path):
    for where, reason in ((tmp_path / "no" / "such" / "dir", "No such file or directory"),
                          (tmp_path, "Is a directory")):
        before = pm.domains()
        with pytest.raises(ProcMgmtError) as bad:
            pm.spawn(["/bin/true"], stdout=where)
        assert bad.value.code == Err.OPEN_FAILED
        assert f"stdout {where}: {reason}" in str(bad.value)
        assert pm.domains() == before        # not left half-created
    with pytest.raises(ProcMgmtError, match="stdin .*missing: No such file") as bad:
        pm.spawn(["/bin/cat"], stdin=tmp_path / "missing")
    # a missing program still says so
    with pytest.raises(ProcMgmtError, match="EXEC_FAILED.*/no/such/program"):
        pm.spawn(["/no/such/program"])
    # and everybody is still served
    assert pm.run(["/bin/echo", "fine"]).stdout == b"fine\n"


def test_a_program_that_does_not_start_leaves_no_log_file():
    """Nothing is left for a domain that never was: a file made under its
    name goes, and a spare file it was given goes back to the pool. A new
    runtime, so the first failures find no spare ready and the later ones
    do: both ways are taken."""
    with procmgr.Runtime(cores=1) as rt:
        pm = rt.client()
        directory = os.path.join(runtime_dir(rt.name), "logs", "0")
        for _ in range(40):
            with pytest.raises(ProcMgmtError, match="EXEC_FAILED"):
                pm.spawn(["/no/such/program"])
        assert [f for f in os.listdir(directory) if not f.startswith(".")] == []
        r = pm.run(sh("echo out; echo err >&2"))
        assert (r.stdout, r.stderr) == (b"out\n", b"err\n")


def test_bad_stream_arguments_are_refused_before_anything_is_sent(pm):
    with pytest.raises(ValueError, match="stream must be 'stdout' or 'stderr'"):
        pm.output(pm.run(["/bin/true"]).domain, "stdlog")
    with pytest.raises(ValueError, match="STDOUT is for stderr only"):
        pm.spawn(["/bin/true"], stdout=STDOUT)
    with pytest.raises(ValueError, match="stdin=procmgr.LOG is not allowed"):
        pm.spawn(["/bin/true"], stdin=LOG)
    with pytest.raises(TypeError, match="stdout must be LOG, DEVNULL"):
        pm.spawn(["/bin/true"], stdout=3)
    with pytest.raises(ValueError, match="log_max_bytes must be an int >= 4096"):
        pm.spawn(["/bin/true"], log_max_bytes=0)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        pm.spawn(["/bin/true"], stdot=DEVNULL)
    with pytest.raises(ValueError, match="named both"):
        pm.spawn_with_caps(["/bin/true"], [(1, "w", "/dev/null")], stdout=DEVNULL)
    with pytest.raises(ProcMgmtError, match="never started in this runtime"):
        pm.output(987654)
    with pytest.raises(ValueError, match="has not run on core 1"):
        pm.output(pm.run(["/bin/true"]).domain, core=1)
    with pytest.raises(ValueError, match="tail must be"):
        pm.output(pm.run(["/bin/true"]).domain, tail=-1)
    assert pm.run(["/bin/echo", "still fine"]).stdout == b"still fine\n"
    assert INHERIT is procmgr.INHERIT


def test_a_process_left_behind_never_writes_into_another_domains_log():
    """A daemon that outlived its domain (it left the process group, so the
    domain's end did not reach it) keeps writing to the log file it
    inherited. When the domain is forgotten its file is not handed to the
    next domain as a spare while anyone still has it open."""
    with procmgr.Runtime(cores=1, history=1) as rt:
        pm = rt.client()
        left = pm.run(sh("/usr/bin/setsid /bin/sh -c 'while :; do echo leak; sleep 0.02; done' "
                         "& sleep 0.3; echo started"))
        assert b"started\n" in left.stdout and b"leak\n" in left.stdout  # it runs
        for i in range(20):       # forgets `left`, and recycles what can be
            assert pm.run(["/bin/echo", str(i)]).stdout == b"%d\n" % i
        time.sleep(0.2)
        for i in range(20):
            r = pm.run(sh(f"sleep 0.05; echo {i}"))
            assert r.stdout == b"%d\n" % i, r.stdout      # never "leak"


def test_a_follower_within_a_rotation_of_the_program_misses_nothing(pm):
    """What a rotation cuts from under a follower is read from NAME.1: with
    64 KiB files and a program printing ~1 MB/s, a follower looking every
    50 ms is always within one rotation, and gets every byte."""
    script = ("import sys, time\n"
              "for i in range(60000):\n"
              "    sys.stdout.write('%09d\\n' % i)\n"
              "    if i % 1000 == 999: sys.stdout.flush(); time.sleep(0.01)")
    d = pm.spawn([sys.executable, "-c", script], log_max_bytes=65536, log_backups=1)
    got = b"".join(pm.follow(d))
    assert got == b"".join(b"%09d\n" % i for i in range(60000))


def test_what_a_client_or_a_program_plants_cannot_hang_or_reach_the_worker(rt, pm, tmp_path):
    """A FIFO nobody reads as a stdout path, FIFOs planted at the names of
    the next domains' logs, a copy of a worker's own descriptor, the
    worker's own descriptor "inherited": each is an error for that spawn
    (or is swept aside), the worker never waits, and everyone is served."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ProcMgmtError, match=f"stdout {fifo}: No such device or address"):
        pm.spawn(["/bin/echo", "x"], stdout=fifo)
    logs = os.path.join(runtime_dir(rt.name), "logs", "0")
    last = pm.run(["/bin/true"]).domain.id
    for ident in range(last + 1, last + 4):
        os.mkfifo(os.path.join(logs, f"{ident}.stdout"))
    for i in range(3):
        assert pm.run(["/bin/echo", str(i)]).stdout == b"%d\n" % i
    worker = workers_of(rt.proc.pid)[0]
    ring_fd = max(int(f) for f in os.listdir(f"/proc/{worker.pid}/fd"))
    with pytest.raises(ProcMgmtError, match="which the program is not given"):
        pm.spawn_with_caps(["/bin/true"], [(5, "dup", str(ring_fd))])
    with pytest.raises(ProcMgmtError, match="OPEN_FAILED.*Operation not permitted"):
        pm.spawn_with_caps(["/bin/true"], [(1, "inherit", f"{worker.pid}:{ring_fd}")])
    # Nor another core's worker (its rings), asked for from this core.
    others = [w for w in workers_of(rt.proc.pid).values() if w.pid != worker.pid]
    assert others
    for other in others:
        other_fd = max(int(f) for f in os.listdir(f"/proc/{other.pid}/fd"))
        for core in range(len(others) + 1):
            with pytest.raises(ProcMgmtError, match="OPEN_FAILED.*Operation not permitted"):
                pm.spawn_with_caps(["/bin/true"], [(1, "inherit", f"{other.pid}:{other_fd}")],
                                   core=core)
    assert pm.run(["/bin/echo", "fine"]).stdout == b"fine\n"
    assert time.monotonic() - started < T
