"""The CLI as a user drives it: a subprocess per command, exit codes and
--json output checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from e2e_helpers import workers_of
from procmgr.osutil import runtime_dir


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "procmgr", *args], capture_output=True,
                          text=True, timeout=60)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def name():
    n = f"procmgr-test-cli-{os.getpid()}-{time.monotonic_ns()}"
    run("up", "--cores", "2", "--name", n, "--detach")
    try:
        yield n
    finally:
        run("down", "--name", n, check=False)
        assert not os.path.exists(runtime_dir(n))


def test_spawn_ps_wait_kill_down(name):
    out = run("spawn", "--name", name, "--core", "1", "--json", "--", "/bin/sleep", "30")
    dom = json.loads(out.stdout)
    assert dom["core"] == 1 and psutil.pid_exists(dom["pid"])
    rows = json.loads(run("ps", "--name", name, "--json").stdout)
    assert [(r["id"], r["state"], r["argv"]) for r in rows] == \
        [(dom["id"], "RUNNING", ["/bin/sleep", "30"])]
    assert json.loads(run("wait", "--name", name, "--nohang", "--json",
                          dom["token"]).stdout) == {"running": True, "status": None}
    run("kill", "--name", name, dom["token"])
    assert run("wait", "--name", name, dom["token"], check=False).returncode == 9
    info = json.loads(run("status", "--name", name, str(dom["id"]), "--json").stdout)
    assert info["exit_status"] == 9 and info["state"] in ("STOPPED", "CLEANED")
    assert info["killed"] is True and info["signaled"] is False
    assert "killed" in run("status", "--name", name, str(dom["id"])).stdout
    text = run("ps", "--name", name).stdout
    assert "no domains" in text


def test_wait_exits_with_the_domain_status(name):
    token = run("spawn", "--name", name, "--", "/bin/sh", "-c", "exit 5").stdout.split()[1]
    assert run("wait", "--name", name, token, check=False).returncode == 5
    token = run("spawn", "--name", name, "--", "/bin/sh", "-c", "kill -TERM $$").stdout.split()[1]
    assert run("wait", "--name", name, token, check=False).returncode == 128 + 15
    assert "SIGTERM" in run("status", "--name", name, token).stdout   # how it ended, named


@pytest.mark.parametrize("args, message", [
    (("kill", "99:00ff"), "no such domain"),
    (("kill", "not-a-token"), "is not a domain token"),
    (("spawn", "--core", "9", "--", "/bin/true"), "no spawnd worker serves that core"),
    (("spawn", "--", "/no/such/program"), "No such file or directory"),
])
def test_bad_input_is_one_line_and_nonzero(name, args, message):
    proc = run(*args[:1], "--name", name, *args[1:], check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_such_runtime():
    proc = run("ps", "--name", "procmgr-test-nope", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "procmgr: no procmgr runtime named 'procmgr-test-nope' is running"
    proc = run("down", "--name", "procmgr-test-nope", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_help_shows_an_example():
    for cmd in ("up", "down", "spawn", "span", "kill", "wait", "status", "ps", "top",
                "storm", "cleanup"):
        assert "example: procmgr" in run(cmd, "--help").stdout


def test_storm_checks_everything_and_reports_json():
    proc = run("storm", "--cores", "2", "--clients", "2", "--ops", "40", "--json",
               "--mix", "spawn=3,kill=2,wait=3,span=1")
    s = json.loads(proc.stdout)
    assert s["ops"] == s["answered"] > 80
    assert s["statuses_checked"] > 0
    for key in ("lost", "duplicated", "wrong_status"):
        assert s[key] == 0, (key, s)
    assert s["zombies"] == s["orphans"] == s["leaked_segments"] == []
    assert s["latency_ms_p50"] > 0 and s["ops_per_s"] > 0


def test_storm_bad_mix():
    proc = run("storm", "--mix", "spawn=x", check=False)
    assert proc.returncode == 1 and "is not OP=WEIGHT" in proc.stderr


def test_cleanup_removes_only_what_dead_runtimes_left(name, tmp_path):
    import posix_ipc

    # A segment whose creator is dead, and a socket directory nobody serves.
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    seg = f"/procmgr-test-{dead.pid}-0123456789ab"
    posix_ipc.SharedMemory(seg, posix_ipc.O_CREX, mode=0o600, size=64).close_fd()
    stale = runtime_dir(f"procmgr-test-stale-{os.getpid()}")
    os.makedirs(os.path.join(stale, "logs", "0"))
    open(os.path.join(stale, "manager.sock"), "w").close()
    open(os.path.join(stale, "logs", "0", "1.stdout"), "w").close()   # a crashed one's logs
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("kept")
    os.symlink(victim, os.path.join(stale, "logs", "link"))          # removed, not followed
    try:
        out = json.loads(run("cleanup", "--json").stdout)
        assert f"/dev/shm{seg}" in out["removed"]
        assert stale in out["removed"] and not os.path.exists(stale)
        assert (victim / "precious").read_text() == "kept"
        # the live runtime is untouched and still serves
        assert run("ps", "--name", name).returncode == 0
    finally:
        try:
            posix_ipc.unlink_shared_memory(seg)
        except posix_ipc.ExistentialError:
            pass


def test_top_under_a_terminal(name):
    import pty
    import select as _select

    run("spawn", "--name", name, "--", "/bin/sleep", "30")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "procmgr", "top", "--name", name,
                             "--count", "3", "--interval", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="120", LINES="40", TERM="xterm"))
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = _select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:        # EIO: the program closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = screen.decode(errors="replace")
    assert text.count("CORE") >= 3, text          # three refreshes drawn
    assert "REPLY Q" in text and "/bin/sleep 30" in text and "RUNNING" in text


def test_forged_token_is_refused(name):
    dom = json.loads(run("spawn", "--name", name, "--json", "--", "/bin/sleep", "30").stdout)
    ident, nonce = dom["token"].split(":")
    forged = f"{ident}:{int(nonce, 16) ^ 1:016x}"
    for cmd in ("kill", "wait"):
        proc = run(cmd, "--name", name, forged, check=False)
        assert proc.returncode == 1 and "BAD_CAP" in proc.stderr, proc.stderr
    assert psutil.pid_exists(dom["pid"])        # the real domain is untouched
    run("kill", "--name", name, dom["token"])


def test_bench_writes_a_report_with_plots(tmp_path):
    out = tmp_path / "report"
    proc = run("bench", "pending", "--quick", "--report", str(out), "--json")
    results = json.loads(proc.stdout)
    assert set(results["pending"]["ns_per_request"]) == {"replyq", "hashtable"}
    assert results["machine"]["cpus"] == os.cpu_count()
    text = (out / "report.md").read_text()
    assert "Pending clients" in text and "pending.png" in text and "Reproduce" in text
    assert (out / "pending.png").read_bytes()[:4] == b"\x89PNG"


def test_output_from_the_shell_spawn_logs_ps_and_run(name, tmp_path):
    out = run("spawn", "--name", name, "--json", "--",
              "/bin/sh", "-c", "echo one; echo two; echo err >&2; sleep 0.5; echo three")
    ident = str(json.loads(out.stdout)["id"])
    followed = run("logs", "--name", name, ident, "-f")
    assert followed.stdout == "one\ntwo\nthree\n"
    assert run("logs", "--name", name, ident, "--tail", "1").stdout == "three\n"
    assert run("logs", "--name", name, ident, "--stderr").stdout == "err\n"
    both = run("logs", "--name", name, ident, "--both")
    assert (both.stdout, both.stderr) == ("one\ntwo\nthree\n", "err\n")
    # ps --last shows each running domain's last line
    out = run("spawn", "--name", name, "--json", "--", "/bin/sh", "-c",
              "echo first; echo alive; exec sleep 30")
    alive = json.loads(out.stdout)["id"]
    deadline = time.monotonic() + 10
    while run("logs", "--name", name, str(alive)).stdout != "first\nalive\n":
        assert time.monotonic() < deadline
    rows = json.loads(run("ps", "--name", name, "--last", "--json").stdout)
    assert [r["last"] for r in rows if r["id"] == alive] == ["alive"]
    assert "LAST OUTPUT" in run("ps", "--name", name, "--last").stdout
    # a file, and stderr into it too
    target = tmp_path / "out.txt"
    out = run("spawn", "--name", name, "--json", "--stdout", str(target), "--stderr", "stdout",
              "--", "/bin/sh", "-c", "echo to file; echo and err >&2")
    token = json.loads(out.stdout)["token"]
    assert run("wait", "--name", name, token).stdout.strip() == "0"
    assert target.read_text() == "to file\nand err\n"
    # run: the program writes to our stdout and stderr, we exit with its status
    ran = run("run", "--name", name, "--", "/bin/sh", "-c", "echo hi; echo ho >&2; exit 5",
              check=False)
    assert (ran.returncode, ran.stdout, ran.stderr) == (5, "hi\n", "ho\n")


def test_output_errors_from_the_shell_are_one_line(name, tmp_path):
    bad = run("spawn", "--name", name, "--stdout", str(tmp_path / "no" / "x"), "--",
              "/bin/true", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert f"OPEN_FAILED" in bad.stderr and f"stdout {tmp_path}/no/x" in bad.stderr
    for args, message in ((("logs", "999999"), "never started in this runtime"),
                          (("logs", "abc"), "neither a domain id nor a token"),
                          (("spawn", "--stderr", "", "--", "/bin/true"), "stderr path is empty")):
        proc = run(args[0], "--name", name, *args[1:], check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_up_in_the_foreground_shows_what_the_runtime_logs(children):
    """The manager's and workers' diagnostics go to the runtime log (never
    to a descriptor of whoever started it); `up` in the foreground shows
    that log on its stderr."""
    n = f"procmgr-test-cli-{os.getpid()}-{time.monotonic_ns()}"
    up = children.python("-m", "procmgr", "up", "--cores", "1", "--name", n,
                         stdin=subprocess.DEVNULL)
    try:
        assert up.stdout.readline().startswith(b"runtime"), up.stderr.read()
        manager = psutil.Process(up.pid).children()[0]
        worker = workers_of(manager.pid)[0]
        worker.kill()                            # the manager logs it
        log = os.path.join(runtime_dir(n), "runtime.log")
        deadline = time.monotonic() + 10
        while b"died" not in _read(log):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=30)
    assert up.returncode == 0 and b"spawnd.0 died" in err, err
    assert not os.path.exists(runtime_dir(n))


def test_bench_measures_output_from_the_shell():
    proc = run("bench", "output", "--quick")
    assert "100 MiB to stdout" in proc.stdout and "captured, LOG" in proc.stdout


def test_env_adds_to_the_runtimes_and_the_program_starts_here(name, tmp_path):
    """--env adds to the runtime's environment (this shell's is not copied:
    a large one no longer overflows the spawn), and a program starts in the
    shell's directory unless --cwd says another."""
    big = {**os.environ, "BIG": "x" * 4000}            # alone over a spawn's env limit
    proc = subprocess.run([sys.executable, "-m", "procmgr", "run", "--name", name,
                           "--env", "A=1", "--env", "B=two words", "--",
                           "/bin/sh", "-c", 'echo "$A|$B|${BIG:-unset}"; pwd'],
                          capture_output=True, text=True, timeout=60, env=big, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"1|two words|unset\n{tmp_path}\n"
    assert run("run", "--name", name, "--cwd", "/", "--", "pwd").stdout == "/\n"
    bad = run("run", "--name", name, "--cwd", str(tmp_path / "no"), "--", "pwd", check=False)
    assert bad.returncode == 1 and "No such file or directory" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_kill_with_a_signal_and_grace_and_signal_from_the_shell(name):
    prog = [sys.executable, "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGHUP, lambda *a: print('hup', flush=True))\n"
            "signal.signal(signal.SIGINT, lambda *a: (print('int', flush=True), sys.exit(0)))\n"
            "print('up', flush=True)\n"
            "while True: time.sleep(1)\n"]
    token = run("spawn", "--name", name, "--", *prog).stdout.split()[1]
    dom = token.split(":")[0]
    deadline = time.monotonic() + 10
    while "up" not in run("logs", "--name", name, dom).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    run("signal", "--name", name, token, "HUP")
    while "hup" not in run("logs", "--name", name, dom).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    run("kill", "--name", name, token, "--signal", "INT", "--grace", "5")
    assert run("logs", "--name", name, dom).stdout == "up\nhup\nint\n"
    bad = run("kill", "--name", name, token, "--signal", "NOPE", check=False)
    assert bad.returncode == 1 and "not a signal" in bad.stderr


def test_supervised_programs_from_the_shell(name):
    """supervise, ps with its programs, stop, restart, start -- as
    supervisorctl's -- and a bad name or an unknown program in one line."""
    info = json.loads(run("supervise", "--name", name, "--program", "web", "--restart",
                          "always", "--json", "--", "/bin/sleep", "30").stdout)
    assert info["name"] == "web" and info["state"] in ("STARTING", "RUNNING")
    deadline = time.monotonic() + 10
    while True:
        listing = json.loads(run("ps", "--name", name, "--json").stdout)
        programs = listing["programs"] if isinstance(listing, dict) else []
        if programs and programs[0]["state"] == "RUNNING":
            break
        assert time.monotonic() < deadline, listing
        time.sleep(0.05)
    assert [d["argv"] for d in listing["domains"]] == [["/bin/sleep", "30"]]
    assert "web" in run("ps", "--name", name).stdout
    pid = programs[0]["pid"]
    assert run("stop", "--name", name, "web").stdout.split() == ["web", "STOPPED"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert run("start", "--name", name, "web").stdout.split()[1] in ("STARTING", "RUNNING")
    assert run("restart", "--name", name, "web").stdout.split()[0] == "web"
    run("stop", "--name", name, "web")
    bad = run("stop", "--name", name, "nope", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "NO_SUCH_PROGRAM" in bad.stderr
    bad = run("supervise", "--name", name, "--program", "a/b", "--", "/bin/true", check=False)
    assert bad.returncode == 1 and "a program's name is" in bad.stderr


def test_ps_filters_and_a_programs_status_with_its_incarnations(name):
    """ps --state/--core/--program keep what matches, of domains and of
    programs alike; status NAME shows a program's last incarnations."""
    run("supervise", "--name", name, "--program", "web", "--restart", "always", "--",
        "/bin/sleep", "30")
    run("supervise", "--name", name, "--program", "crashy", "--backoff", "0",
        "--max-restarts", "2", "--core", "1", "--", "/bin/sh", "-c", "exit 3")
    other = json.loads(run("spawn", "--name", name, "--json", "--", "/bin/sleep", "30").stdout)
    deadline = time.monotonic() + 10
    while True:
        listing = json.loads(run("ps", "--name", name, "--json").stdout)
        states = {p["name"]: p["state"] for p in listing["programs"]}
        if states == {"web": "RUNNING", "crashy": "FATAL"}:
            break
        assert time.monotonic() < deadline, listing
        time.sleep(0.05)
    web_pid = [p["pid"] for p in listing["programs"] if p["name"] == "web"][0]
    fatal = json.loads(run("ps", "--name", name, "--state", "fatal", "--json").stdout)
    assert [p["name"] for p in fatal["programs"]] == ["crashy"] and fatal["domains"] == []
    mine = json.loads(run("ps", "--name", name, "--program", "w*", "--json").stdout)
    assert [p["name"] for p in mine["programs"]] == ["web"]
    assert [d["pids"] for d in mine["domains"]] == [[web_pid]]
    on1 = json.loads(run("ps", "--name", name, "--core", "1", "--all", "--json").stdout)
    assert {d["exit_status"] for d in on1["domains"]} == {3} and len(on1["domains"]) == 3
    assert [p["name"] for p in on1["programs"]] == ["crashy"]
    running = json.loads(run("ps", "--name", name, "--state", "RUNNING", "--json").stdout)
    assert sorted(d["id"] for d in running["domains"]) == sorted(
        [other["id"], *(d["id"] for d in mine["domains"])])
    text = run("status", "--name", name, "crashy").stdout
    assert "FATAL" in text and text.count("exit 3") == 4      # last exit, and 3 incarnations
    view = json.loads(run("status", "--name", name, "crashy", "--json").stdout)
    assert view["restarts"] == 2 and len(view["history"]) == 3
    bad = run("ps", "--name", name, "--state", "weird", check=False)
    assert bad.returncode == 1 and "unknown state 'weird'" in bad.stderr
    bad = run("status", "--name", name, "nope", check=False)
    assert bad.returncode == 1 and "NO_SUCH_PROGRAM" in bad.stderr
    top = run("top", "--name", name, "--count", "1").stdout
    assert "crashy" in top and "FATAL" in top


CONFIG = """
[programs.web]
argv = ["/bin/sleep", "30"]
numprocs = 2
restart = "always"
depends_on = ["db"]

[programs.db]
argv = ["/bin/sleep", "31"]
core = 1

[programs.batch]
argv = ["/bin/sh", "-c", "exit 0"]
autostart = false
"""


def _programs(name) -> dict:
    listing = json.loads(run("ps", "--name", name, "--json").stdout)
    return {p["name"]: p for p in (listing["programs"] if isinstance(listing, dict) else [])}


def test_a_config_file_up_reload_and_groups(tmp_path):
    """up --config starts what the file declares, reload applies a changed
    file touching only what changed, NAME:* reaches a numprocs group, and
    a bad file starts nothing."""
    name = f"procmgr-test-cfg-{os.getpid()}-{time.monotonic_ns()}"
    bad = tmp_path / "bad.toml"
    bad.write_text('[programs.a]\nargv = ["/bin/true"]\n\n[programs.b]\nargv = ["x"]\nrestrat = 1\n')
    out = run("up", "--name", name, "--cores", "2", "--detach", "--config", str(bad), check=False)
    assert out.returncode == 1 and f"{bad}:4: [programs.b]: unknown key 'restrat'" in out.stderr
    assert not os.path.exists(runtime_dir(name))                # nothing started
    path = tmp_path / "procmgr.toml"
    path.write_text(CONFIG)
    out = run("up", "--name", name, "--cores", "2", "--detach", "--config", str(path))
    try:
        assert "started db, web:0, web:1, batch" in out.stdout
        programs = _programs(name)
        assert programs["batch"]["state"] == "STOPPED"          # declared, not started
        assert programs["db"]["core"] == 1
        web_pid = programs["web:0"]["pid"]
        path.write_text(CONFIG.replace('"31"', '"32"').split("[programs.batch]")[0])
        done = json.loads(run("reload", "--name", name, "--config", str(path), "--json").stdout)
        assert done == {"started": [], "removed": ["batch"], "changed": ["db"],
                        "kept": ["web:0", "web:1"]}
        programs = _programs(name)
        assert set(programs) == {"db", "web:0", "web:1"}
        assert programs["web:0"]["pid"] == web_pid               # untouched
        stopped = json.loads(run("stop", "--name", name, "web:*", "--json").stdout)
        assert [(p["name"], p["state"]) for p in stopped] == [("web:0", "STOPPED"),
                                                               ("web:1", "STOPPED")]
    finally:
        run("down", "--name", name, check=False)
    assert not os.path.exists(runtime_dir(name))


def test_ps_all_shows_how_and_when_ended_domains_ended(name):
    run("run", "--name", name, "--", "/bin/sh", "-c", "exit 3", check=False)
    token = run("spawn", "--name", name, "--", "/bin/sleep", "30").stdout.split()[1]
    assert len(json.loads(run("ps", "--name", name, "--json").stdout)) == 1
    rows = json.loads(run("ps", "--name", name, "--all", "--json").stdout)
    ended, running = rows
    assert ended["exit_status"] == 3 and ended["state"] == "CLEANED"
    assert ended["started"] <= ended["ended"] <= time.time()
    assert running["ended"] is None and running["state"] == "RUNNING"
    assert "s ago" in run("ps", "--name", name, "--all").stdout
    run("kill", "--name", name, token)
