"""Small Linux facilities the runtime's processes share."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import select
import shutil
import signal
import stat
import time

from procmgr.errors import RuntimeDirUnsafe

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send us ``sig`` when our parent dies, then check that
    the parent did not die before the request took effect (it would never
    fire). ``parent``: the pid the parent gave us as it started us; without
    it the parent is read here, and one that died while we were starting
    (an interpreter takes a while) would go unseen -- its successor, a
    subreaper or init, read as the parent (workers outlived their manager
    so). The manager and the workers ask for SIGTERM: they still have
    processes to end (their domains) before they go."""
    if parent is None:
        parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(1)


PR_SET_DUMPABLE = 4


def refuse_ptrace() -> None:
    """Make this process non-dumpable: no other process of the user may
    ptrace it or open what /proc shows of it (/proc/PID/fd, mem, maps) --
    only root may. The manager and the workers hold every client's rings,
    domain caps and the workers' rings: through /proc any process of the
    user could read caps from a ring's slots, or write a forged exit into
    a worker's replies. A program a worker starts is dumpable again (exec
    resets it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
    # A tracer that attached before (an interpreter takes a while to get
    # here) stays attached, and follows every fork: refuse to run traced.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                tracer = int(line.split()[1])
                if tracer:
                    raise PermissionError(f"process {os.getpid()} is traced by process "
                                          f"{tracer}: refusing to run")
                break


def set_cmdline(args: list[str]) -> bool:
    """Show ``args`` as our command line (``ps``, /proc/PID/cmdline): a
    process forked without exec -- a worker from its template -- would
    otherwise show its template's. Written over the memory the kernel
    shows (arg_start..arg_end of /proc/self/stat), which cannot grow:
    False, and nothing written, when ``args`` need more room.

    Written the way setproctitle(3) does: one string, arguments joined by
    spaces, and the area's last byte not a NUL, which tells the kernel to
    show the string only up to its end -- not the area, NULs and all
    (psutil splits such a line at its spaces)."""
    with open("/proc/self/stat", "rb") as f:
        stat_line = f.read()
    # Fields from the state on (the name before it may hold spaces): arg_start
    # and arg_end are the 48th and 49th of proc(5).
    fields = stat_line[stat_line.rindex(b")") + 2:].split()
    start, end = int(fields[48 - 3]), int(fields[49 - 3])
    title = b" ".join(os.fsencode(a) for a in args) + b"\0"
    if not start or len(title) + 1 > end - start:
        return False
    ctypes.memmove(start, title.ljust(end - start - 1, b"\0") + b" ", end - start)
    return True


def watch_doorbell(epoll: select.epoll, doorbell: int) -> None:
    """Sleep on ``doorbell`` (an eventfd peers write to wake us) in ``epoll``,
    edge-triggered: every write reports one event, so the counter never
    needs reading back -- a read is a system call per wake-up, and system
    calls cost ~10 µs each on this kind of VM. The counter only grows; at a
    million wake-ups a second it would take 500,000 years to fill."""
    epoll.register(doorbell, select.EPOLLIN | select.EPOLLET)


def raise_fd_limit() -> int:
    """This process's soft descriptor limit raised to its hard one, and the
    new soft limit: a worker holds a pidfd for each live domain, the
    manager a few descriptors for each client, and the usual soft limit
    (1,024) is far below what either may need -- and what the hard limit
    allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


def wait_readable(fd: int, timeout: float | None = None) -> bool:
    """Wait until ``fd`` is readable (a pidfd: its process ended), at most
    ``timeout`` seconds (None: as long as it takes). poll, never select:
    select cannot take a descriptor numbered 1024 or more, which a worker
    holding a thousand domains' pidfds, or a process holding many
    clients, reaches (a worker died of it)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return bool(poller.poll(None if left is None else left * 1000))
        except InterruptedError:
            continue


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group; a group that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def runtime_dir(name: str) -> str:
    """Where runtime ``name`` keeps its socket: a directory only we can enter.

    The runtimes' sockets and logs live in ``procmgr-UID`` under
    $XDG_RUNTIME_DIR, or under /tmp, where anyone may create any name
    first: a symlink to a directory of theirs, or a directory they can
    enter, would let another user see or take over every runtime's socket.
    So it is made by us with mode 0700, or, if it exists, looked at itself
    (lstat: never through a link) and refused unless it is a directory of
    ours that nobody else can enter."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a runtime name: it must be one path component")
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    root = os.path.join(base, f"procmgr-{os.getuid()}")
    try:
        os.makedirs(root, mode=0o700)
    except FileExistsError:
        pass            # ours from before, or planted: looked at next
    st = os.lstat(root)
    fix = "remove it" if os.environ.get("XDG_RUNTIME_DIR") else \
        "remove it, or set XDG_RUNTIME_DIR to a directory of your own"
    if stat.S_ISLNK(st.st_mode):
        wrong = f"is a symbolic link (to {os.readlink(root)})"
    elif not stat.S_ISDIR(st.st_mode):
        wrong = "is not a directory"
    elif st.st_uid != os.getuid():
        wrong = f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    elif st.st_mode & 0o077:
        wrong = f"has mode {stat.S_IMODE(st.st_mode):04o}: other users can enter it"
        fix = f"chmod 700 it, or {fix}"
    else:
        return os.path.join(root, name)
    raise RuntimeDirUnsafe(f"unsafe runtime directory {root}: it {wrong}; {fix}")


def runtime_dir_in_use(path: str) -> bool:
    """Whether a live manager holds runtime directory ``path`` (its lock,
    claim_runtime_dir). False for a directory a runtime that is gone left,
    for none, and for what is not a directory (a link is never followed)."""
    fd = _open_dir(path)
    if fd < 0:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)        # and with it the probe's lock


# How long a starting manager tries for a directory's lock: a probe
# (runtime_dir_in_use) or a sweep of the dead runtime before it holds the
# lock for a moment; a live manager holds it for good.
CLAIM_PATIENCE = 1.0


def claim_runtime_dir(path: str) -> int:
    """Runtime directory ``path`` made ours for as long as we live: created
    (mode 0700), or taken over from a runtime that is gone -- emptied of
    what it left. Returns a descriptor of it holding its lock (flock,
    exclusive), which the kernel lets go when we end however we end: so a
    directory whose lock can be taken belongs to no live runtime, and two
    starters never both take one. FileExistsError if a live runtime holds
    it, or if a link or a file has its name (never followed: everything is
    done through the descriptor)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = _open_dir(path)
    if fd < 0:
        raise FileExistsError(errno.EEXIST, f"{path} is not a directory of ours "
                              f"({os.strerror(-fd)}): remove it", path)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise FileExistsError(errno.EEXIST, f"{path} belongs to uid {st.st_uid} with mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}, not to us alone", path)
        deadline = time.monotonic() + CLAIM_PATIENCE
        while not _locked(fd):
            if time.monotonic() >= deadline:
                raise FileExistsError(errno.EEXIST, f"a runtime holds {path}: it is running",
                                      path)
            time.sleep(0.01)
        _empty(fd)                  # what a runtime that is gone left: ours now
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove_dead_runtime_dir(path: str, expect: tuple[int, int] | None = None) -> bool:
    """Remove runtime directory ``path`` if no live manager holds it (and,
    with ``expect``, only if it is still that (st_dev, st_ino): the one a
    runtime of ours had, not one taken over since). Holds its lock while
    it removes, through its descriptor, so a runtime claiming it meanwhile
    waits and a link swapped in is never followed. Whether it removed it."""
    fd = _open_dir(path)
    if fd < 0:
        return False
    try:
        st = os.fstat(fd)
        if (expect is not None and (st.st_dev, st.st_ino) != expect) or not _locked(fd):
            return False
        _empty(fd)
        try:
            here = os.lstat(path)
            if (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
                os.rmdir(path)
        except OSError:
            return False            # gone, swapped or filled meanwhile: not ours to remove
        return True
    finally:
        os.close(fd)


def _open_dir(path: str) -> int:
    """A descriptor of directory ``path`` (never through a link), or -errno."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:        # none, a link (ELOOP), a file (ENOTDIR)
        return -(e.errno or errno.EIO)


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _empty(fd: int) -> None:
    """Everything in the directory ``fd`` removed, through it: a link in it
    is removed, never followed (shutil.rmtree with dir_fd walks by
    descriptors too)."""
    for entry in os.listdir(fd):
        try:
            if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                shutil.rmtree(entry, dir_fd=fd)
            else:
                os.unlink(entry, dir_fd=fd)
        except FileNotFoundError:
            pass


PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def become_subreaper(on: bool = True) -> bool:
    """Orphans among our descendants are re-parented to us, not to init, so
    that we can end and reap them (see reap_strays); ``on=False`` undoes it.
    Returns whether we were a subreaper before."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    return bool(was.value)


def children_of(pid: int | None = None) -> list[int]:
    """Pids whose parent is ``pid`` (default: us; re-parented orphans
    included) -- those that can be read now: at the descriptor limit
    (EMFILE) the list is short, and a caller looking for strays looks
    again later, rather than ending a worker over it."""
    me = os.getpid() if pid is None else pid
    found = []
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


def end_and_reap(pids) -> None:
    """SIGKILL each of our children in ``pids`` and the process group it
    leads (a domain's group: its own descendants), then reap it."""
    for pid in pids:
        kill_group(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass          # not ours after all, or reaped meanwhile


def reap_strays(keep) -> int:
    """Reap every exited child of ours not in ``keep`` (orphans a subreaper
    inherited); the children in ``keep`` are someone else's to reap.

    Asked after every SIGCHLD, so the common answer must be cheap: the
    kernel names an exited child (waitid with WNOWAIT, which leaves it a
    zombie) until none is left -- one system call when the child that
    exited was already reaped by its owner. Only when it names a child in
    ``keep``, which may hide others behind it, are all our children listed
    from /proc (a dozen system calls: ~150 µs on this VM)."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped       # no children at all
        if info is None:
            return reaped       # none has exited
        if info.si_pid in keep:
            break
        try:
            os.waitpid(info.si_pid, os.WNOHANG)
            reaped += 1
        except ChildProcessError:
            pass
    for pid in children_of():
        if pid in keep:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                reaped += 1
        except ChildProcessError:
            pass
    return reaped


class ChildWatch:
    """A descriptor that becomes readable when a child of ours changes state:
    SIGCHLD through Python's wakeup fd, for an epoll loop. The handler does
    nothing; the loop reaps (no work in signal context, no races).

    The manager's (its children exit rarely: workers, orphans). A worker,
    whose dispatchers exit all the time, uses a signalfd instead
    (``_spawnd.child_signals``): no handler at all, but every thread must
    block SIGCHLD from before any starts, which a worker arranges first
    thing and the manager, importing numpy with the package, cannot."""

    def __init__(self):
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
