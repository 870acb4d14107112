"""Containment: what a kill, a domain's own end and the runtime's end reach.

A program may fork, and what it forks may leave the program's process
group (``setsid``), double-fork so that its parent is gone, and clear its
environment: a kill that signals the process group misses all of that.
Two modes, chosen when a runtime starts (``Runtime(containment=)``):

``cgroup``
    Where the cgroup v2 hierarchy is writable. The runtime has a cgroup of
    its own under its owner's (``procmgr-PID-RANDOM-NAME``); each worker one
    below it (``coreN.PID``), and each dispatcher one below that (``gN``,
    kept for the next dispatcher once empty, unless it was killed:
    spawnd_workers/_spawnd.c, "the domains' cgroups"). A new program
    starts in its group, so whatever it forks is in there, whatever it
    does: a kill signals every process of the group, and ends it with
    ``cgroup.kill``; a domain's own end kills what is left of it; the
    runtime's end kills the runtime's group. Only the v2 hierarchy is ever
    written to: v1 controllers' groups (where a machine's own limits often
    live) are never touched, and no process but a domain's is moved. What
    it assumes: a domain cannot write the cgroup tree -- one running as
    the runtime's user (root) could move a process of its own out of its
    group; ``user=`` takes that away.

``tree``
    No writable cgroup v2 (or asked for). The worker is a subreaper: what
    a domain leaves behind is re-parented to it. A kill stops (SIGSTOP)
    the dispatcher's process group and every descendant it can see --
    through ``/proc``'s lists of children, across ``setsid`` -- again until
    no new one appears, so a tree that keeps forking cannot outrun it, then
    kills them all. The descendants seen are remembered (by pid and start
    time), and looked for again at the domain's end: a daemon that was
    re-parented to the worker after it was seen is still ended with its
    domain, and so is an orphan whose process group or session is
    numbered after one of the domain's processes. One that left its
    process group and session and lost its parent before the worker ever
    saw it cannot be told apart from another domain's: it lives until the
    runtime ends, when the worker ends every process re-parented to it.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import secrets
import signal
import time

from procmgr.osutil import children_of

CGROUP = "cgroup"
TREE = "tree"
MODES = ("auto", CGROUP, TREE)
# How long an end waits for a killed group to empty (cgroup.kill is
# asynchronous: the processes die as each is next scheduled).
EMPTY_TIMEOUT = 2.0
_RUNTIME_GROUP = re.compile(r"procmgr-(\d+)-.*")


class ContainmentUnavailable(OSError):
    """The containment asked for cannot be had here (the message says why)."""


@functools.lru_cache(maxsize=1)
def v2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (None: it is not), from
    /proc/self/mountinfo -- on its own (/sys/fs/cgroup) or beside v1
    controllers (/sys/fs/cgroup/unified). Read once: a listing asks for
    every domain."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split(" ")[4].replace("\\040", " ")
    except OSError:
        pass
    return None


def cgroup_of(pid: int | str = "self") -> str | None:
    """The v2 cgroup of a process, as /proc/PID/cgroup names it ("0::/a/b");
    None if it has none (or is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def choose(asked: str = "auto") -> tuple[str, str | None]:
    """The mode to run in and, for ``cgroup``, the directory under which a
    runtime's cgroup goes (the caller's own cgroup). ``auto``: cgroup
    where that directory can be written, else tree. ``cgroup`` where it
    cannot: ContainmentUnavailable, saying why."""
    if asked not in MODES:
        raise ValueError(f"containment must be one of {', '.join(MODES)}, not {asked!r}")
    if asked == TREE:
        return TREE, None
    mount, own = v2_mount(), cgroup_of()
    if mount is None or own is None:
        why = "the cgroup v2 hierarchy is not mounted" if mount is None else \
            "this process is in no cgroup v2 group"
    else:
        parent = os.path.normpath(mount + own)
        if os.access(parent, os.W_OK) and os.path.exists(os.path.join(parent, "cgroup.procs")):
            return CGROUP, parent
        why = f"{parent} cannot be written by this user"
    if asked == CGROUP:
        raise ContainmentUnavailable(errno.EACCES, f"cgroup containment is not available: {why}")
    return TREE, None


def make_runtime_group(parent: str, name: str) -> str:
    """A new cgroup for a runtime named ``name`` owned by this process,
    under ``parent``; the groups there of runtimes whose owner is gone
    (killed before it could end theirs) are ended and removed first."""
    sweep_stale(parent)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]
    # Never one that exists: two runtimes of one owner may share a name
    # for a moment (the second is refused by the first's directory).
    path = os.path.join(parent, f"procmgr-{os.getpid()}-{secrets.token_hex(3)}-{safe}")
    os.mkdir(path)
    return path


def sweep_stale(parent: str) -> None:
    """End and remove every runtime group in ``parent`` whose owner is dead."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for entry in names:
        m = _RUNTIME_GROUP.fullmatch(entry)
        if m is None or _alive(int(m.group(1))):
            continue
        end_group(os.path.join(parent, entry))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def populated(path: str) -> bool:
    """Does the group (or one below it) hold a live process? An unreadable
    group counts as no: it is gone."""
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return False


def _groups_below(path: str) -> list[str]:
    """The group and every group below it, parents first. Walked with a
    list, not recursion (os.walk recurses in Python 3.11): a domain that
    may write its group can nest a thousand groups in it."""
    found, todo = [], [path]
    while todo:
        top = todo.pop()
        found.append(top)
        try:
            with os.scandir(top) as entries:
                todo += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            pass
    return found


def members(path: str) -> list[int]:
    """Every live process in the group and the groups below it."""
    found: list[int] = []
    for top in _groups_below(path):
        try:
            with open(os.path.join(top, "cgroup.procs")) as f:
                found += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            pass
    return found


def signal_group(path: str, sig: int) -> None:
    """``sig`` to every process of the group. SIGKILL through cgroup.kill:
    the kernel's, so nothing forked meanwhile escapes it; on a kernel
    without it (before 5.14), the group is frozen, each member killed, and
    thawed."""
    if sig == signal.SIGKILL:
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
            return
        except FileNotFoundError:
            if not os.path.isdir(path):
                return
        _write(path, "cgroup.freeze", "1")
        deadline = time.monotonic() + EMPTY_TIMEOUT
        while time.monotonic() < deadline and not _frozen(path):
            time.sleep(0.001)
    for pid in members(path):
        _kill(pid, sig)
    if sig == signal.SIGKILL:
        _write(path, "cgroup.freeze", "0")


def _write(path: str, name: str, text: str) -> None:
    try:
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    except OSError:
        pass


def _frozen(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "frozen 1" in f.read()
    except OSError:
        return True


def wait_empty(path: str, timeout: float = EMPTY_TIMEOUT, between=None) -> bool:
    """Until no live process is left in the group (a killed one takes a
    moment to die); ``between()`` is called while waiting (a subreaper
    reaps there). Whether it emptied within ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.0002
    while populated(path):
        if time.monotonic() >= deadline:
            return False
        if between is not None:
            between()
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True


def remove(path: str) -> bool:
    """Remove the group and every group below it (they must be empty):
    whether it is gone."""
    if not os.path.isdir(path):
        return True
    for top in reversed(_groups_below(path)):      # children before their parent
        try:
            os.rmdir(top)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def end_group(path: str, timeout: float = EMPTY_TIMEOUT, between=None) -> bool:
    """Kill everything in the group, wait for it to empty, remove it:
    whether it is gone."""
    signal_group(path, signal.SIGKILL)
    wait_empty(path, timeout, between)
    return remove(path)


# ---- tree containment ----

def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree."""
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def gone(pids, timeout: float, between=None) -> bool:
    """Until none of ``pids`` is alive (zombies count as gone: ours are
    reaped by ``between()``, called while waiting); whether that came
    within ``timeout``."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while True:
        left = [p for p in left if _running(p)]
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        if between is not None:
            between()
        time.sleep(0.001)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def started(pid: int) -> int | None:
    """When a process started (clock ticks since boot: /proc/PID/stat's
    22nd field) -- with its pid, what tells it from a later process under
    the same pid. None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def group_and_session(pid: int) -> tuple[int, int] | None:
    """A process's process group and session (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[2]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def orphans_of(seen: dict[int, int | None], candidates) -> list[int]:
    """Those of ``candidates`` (orphans re-parented to a worker) whose
    process group or session is numbered after a process of a domain:
    ``seen`` (pid -> start time), the zombies it did not reap among them
    -- a daemon that left with ``setsid`` after a fork keeps its session's
    number, its parent's pid. A pid seen that now names another process
    (reused) names nothing of the domain's; one gone may still number a
    group or session (a number in use as one is not given to a new
    process)."""
    known = set()
    for pid, then in seen.items():
        now = started(pid)
        if now is None or now == then:
            known.add(pid)
    found = []
    for pid in candidates:
        ids = group_and_session(pid)
        if ids is not None and (ids[0] in known or ids[1] in known):
            found.append(pid)
    return found


def processes_of(dispatchers) -> list[int]:
    """Every live process of a domain whose dispatchers are ``dispatchers``
    (pids; 0 for one not started), each counted once."""
    return sorted({p for pid in dispatchers if pid > 0 for p in domain_pids(pid)})


def domain_pids(pid: int) -> list[int]:
    """Every live process of the domain whose dispatcher is ``pid``: its
    cgroup's members under cgroup containment (the dispatcher's group
    is a runtime's: it lies below a procmgr-* group), else the
    dispatcher and its descendants."""
    group = cgroup_of(pid)
    mount = v2_mount()
    if group and mount and "/procmgr-" in group:
        found = members(os.path.normpath(mount + group))
        if found:
            return sorted(found)
    if started(pid) is None:
        return []
    return [pid] + sorted(descendants(pid))


def signal_tree(roots, seen: dict[int, int | None] | None, sig: int,
                freeze: bool = True) -> list[int]:
    """``sig`` to ``roots`` (live pids) and every descendant of theirs, and
    to those of ``seen`` (pid -> start time, as ``started`` gives it) that
    are still the processes seen (never a pid since reused), with theirs.
    Each is stopped first, and the tree looked at again until no new
    process appears -- a tree that keeps forking cannot outrun it -- then
    all get ``sig`` and, unless it ends or stops them, SIGCONT.
    ``freeze=False``: none is stopped (a signal that does not end the
    domain must not wake a process its user stopped); one forked
    meanwhile may miss it. The pids signalled."""
    stopped: set[int] = set()
    todo = list(roots) + [p for p, t in (seen or {}).items()
                          if t is not None and started(p) == t]
    for _round in range(1000):
        new = []
        for pid in todo:
            for p in [pid] + descendants(pid):
                if p not in stopped:
                    stopped.add(p)
                    new.append(p)
                    if freeze:
                        _kill(p, signal.SIGSTOP)
        if not new or not freeze:
            break
        todo = new
    try:
        for p in stopped:
            _kill(p, sig)
    finally:
        if freeze and sig not in (signal.SIGKILL, signal.SIGSTOP):
            for p in stopped:
                _kill(p, signal.SIGCONT)
    return sorted(stopped)


def _kill(pid: int, sig: int) -> None:
    """``sig`` to ``pid``; one gone, or not ours to signal (a setuid
    program, for a runtime that is not root), is passed over."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
