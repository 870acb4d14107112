"""Small Linux facilities the runtime's processes share."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when our parent dies, then check that the
    parent did not die before the request took effect (it would never fire)."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(1)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group; a group that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def runtime_dir(name: str) -> str:
    """Where runtime ``name`` keeps its socket: a directory only we can enter."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    root = os.path.join(base, f"procmgr-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.lstat(root)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{root} must be a directory owned by you with mode 0700")
    return os.path.join(root, name)
