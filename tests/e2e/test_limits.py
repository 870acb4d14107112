"""Limits and identity per spawn (Client.spawn's limits, user, group,
umask): set before the program's first instruction, each as the program
sees it and as it bites; what cannot be had here is refused in words,
never left unset."""

from __future__ import annotations

import os
import signal
import sys

import pytest

import procmgr
from procmgr.errors import Err
from e2e_helpers import T, pm, rt  # noqa: F401  (fixtures)

ROOT = os.geteuid() == 0


def test_a_limit_is_in_place_when_the_program_starts(pm):
    r = pm.run([sys.executable, "-c",
                "import resource as r; print(r.getrlimit(r.RLIMIT_NOFILE), "
                "r.getrlimit(r.RLIMIT_CORE), r.getrlimit(r.RLIMIT_FSIZE))"],
               limits={"nofile": (32, 64), "core": 0, "fsize": None}, timeout=T)
    assert r.stdout == b"(32, 64) (0, 0) (-1, -1)\n"


def test_an_fd_limit_bites(pm):
    r = pm.run([sys.executable, "-c", """
import os
opened = []
try:
    while True:
        opened.append(os.open('/dev/null', os.O_RDONLY))
except OSError as e:
    print(len(opened) + 3, e.errno)
"""], limits={"nofile": 20}, timeout=T)
    assert r.stdout == b"20 24\n"          # EMFILE at the 20th descriptor


def test_a_memory_hog_fails_under_an_address_space_limit_as_under_ulimit(pm):
    hog = [sys.executable, "-c", """
try:
    block = bytearray(400 << 20)
except MemoryError:
    print('refused'); raise SystemExit(3)
print('got it')
"""]
    assert pm.run(hog, limits={"as": 300 << 20}, timeout=T).stdout == b"refused\n"
    assert pm.run(hog, timeout=T).stdout == b"got it\n"


def test_a_cpu_spinner_ends_by_sigxcpu_and_its_status_says_so(pm):
    d = pm.spawn([sys.executable, "-c", "while True: pass"], limits={"cpu": (1, 5)})
    assert pm.wait(d, timeout=T) == -signal.SIGXCPU
    info = pm.status(d, timeout=T)
    assert info.signaled and info.exit_status == signal.SIGXCPU and not info.killed
    d = pm.spawn([sys.executable, "-c", "while True: pass"], limits={"cpu": 1})
    assert pm.wait(d, timeout=T) == -signal.SIGKILL     # at the hard limit


@pytest.mark.skipif(not ROOT, reason="taking on a user needs a runtime running as root")
def test_user_group_and_umask(pm):
    r = pm.run(["/bin/sh", "-c", "id -u; id -g; id -G; umask"], user="nobody",
               group="nogroup", umask=0o027, timeout=T)
    uid, gid, groups, umask = r.stdout.decode().split("\n")[:4]
    import grp
    import pwd
    assert int(uid) == pwd.getpwnam("nobody").pw_uid
    assert int(gid) == grp.getgrnam("nogroup").gr_gid
    assert "0" not in groups.split()                   # root's groups are not kept
    assert umask == "0027"
    r = pm.run(["/bin/sh", "-c", "id -u"], user=pwd.getpwnam("nobody").pw_uid, timeout=T)
    assert int(r.stdout) == pwd.getpwnam("nobody").pw_uid


@pytest.mark.parametrize("options, words", [
    (dict(limits={"nofile": (64, 32)}), "soft 64 is over hard 32"),
    (dict(limits={"memory_max": 1 << 20}), "memory controller"),
    (dict(limits={"pids_max": 10}), "pids controller"),
    (dict(user="no-such-user-here"), "no user 'no-such-user-here'"),
    (dict(group="no-such-group-here"), "no group 'no-such-group-here'"),
])
def test_what_cannot_be_had_is_refused_in_words(pm, options, words):
    with pytest.raises(procmgr.ProcMgmtError, match=words) as err:
        pm.spawn(["/bin/true"], **options)
    assert err.value.code == Err.EXEC_FAILED
    assert pm.wait(pm.spawn(["/bin/true"]), timeout=T) == 0      # the core serves on


@pytest.mark.parametrize("options, error", [
    (dict(limits={"stack": 1}), "'stack' is not a limit"),
    (dict(limits={"nofile": -1}), "must be a number >= 0"),
    (dict(limits={"nofile": (1, 2, 3)}), "must be a number >= 0"),
    (dict(limits={"nofile": 1.5}), "must be a number >= 0"),
    (dict(limits=[("nofile", 1)]), "must be a dict"),
    (dict(user=-1), "user must be a name or a number"),
    (dict(group=""), "group must be a name or a number"),
    (dict(umask=0o1000), "umask must be a number from 0 to 0o777"),
    (dict(umask="022"), "umask must be a number from 0 to 0o777"),
])
def test_bad_settings_are_refused_before_sending(pm, options, error):
    with pytest.raises((ValueError, TypeError), match=error):
        pm.spawn(["/bin/true"], **options)


def test_the_cli_takes_limits_and_identity(rt):
    import subprocess
    out = subprocess.run([sys.executable, "-m", "procmgr", "run", "--name", rt.name,
                          "--limit", "nofile=40:50", "--umask", "077", "--", sys.executable,
                          "-c", "import os, resource as r; print(r.getrlimit(r.RLIMIT_NOFILE),"
                          " oct(os.umask(0)))"], capture_output=True, timeout=30)
    assert out.stdout == b"(40, 50) 0o77\n", out.stderr
    bad = subprocess.run([sys.executable, "-m", "procmgr", "spawn", "--name", rt.name,
                          "--limit", "nofile=lots", "--", "/bin/true"],
                         capture_output=True, timeout=30)
    assert bad.returncode != 0 and b"NAME=N, NAME=SOFT:HARD" in bad.stderr


def test_what_a_domain_used_is_in_its_status_once_it_ends(pm):
    d = pm.spawn([sys.executable, "-c", """
import time
block = bytearray(80 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1                      # resident, not only mapped
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
"""])
    running = pm.status(d, timeout=T)
    assert running.cpu_user is None and running.max_rss is None and running.wall is None
    assert pm.wait(d, timeout=T) == 0
    info = pm.status(d, timeout=T)
    assert 0.3 <= info.cpu_user + info.cpu_system < 5
    assert info.max_rss >= 80 << 20
    assert info.wall >= 0.3
    # a kill's end says it too; a program below the worker's own size has no peak to tell
    d = pm.spawn(["/bin/sleep", "30"])
    pm.kill(d, timeout=T)
    info = pm.status(d, timeout=T)
    assert info.cpu_user is not None and info.cpu_user < 1 and info.max_rss is None
