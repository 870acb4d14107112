"""The ring where a second process is the test: a crash the ring must not
have (run in a child, so that a segfault is a failed test, not a dead
pytest), and what a crashed creator leaves."""

from __future__ import annotations

import os

import posix_ipc

import ringbuf
from ringbuf import Ring


def test_peer_pid_of_a_closed_handle_does_not_crash(shm_name, children):
    # Run in a child: the bug is a segfault, which would take pytest down.
    code = (
        "import sys, ringbuf\n"
        "r = ringbuf.Ring.create(sys.argv[1], 4)\n"
        "a = ringbuf.Ring.attach(sys.argv[1])\n"
        "a.close(); r.close(); r.unlink()\n"
        "try:\n"
        "    print('pid', r.peer_pid)\n"
        "except ringbuf.Closed as e:\n"
        "    print('Closed', e)\n"
    )
    proc = children.python("-c", code, shm_name)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (proc.returncode, err)
    text = out.decode().strip()
    # Either answer is fine once it no longer crashes: the pid it had, or Closed.
    assert text == f"pid {proc.pid}" or (text.startswith("Closed") and "this process" in text)


def test_orphaned_segments_lists_only_those_whose_creator_is_gone(children):
    # A child makes a segment under its own pid and exits without unlinking it,
    # as a crashed run would.
    dead = children.python("-c", "import os, ringbuf; r = ringbuf.Ring.create("
                           "ringbuf.unique_name('procmgr-test'), 4); print(r.name); os._exit(0)")
    out, _ = dead.communicate(timeout=30)
    left = out.decode().strip().lstrip("/")
    with Ring.create(ringbuf.unique_name("procmgr-test"), 4) as mine:
        try:
            found = ringbuf.orphaned_segments("procmgr-test")
            assert left in found
            assert mine.name.lstrip("/") not in found  # its creator (we) lives
            assert mine.name.lstrip("/") in ringbuf.orphaned_segments(
                "procmgr-test", also_pid=os.getpid())
        finally:
            posix_ipc.unlink_shared_memory("/" + left)
    assert left not in ringbuf.orphaned_segments("procmgr-test")


# ---- batched wakes ------------------------------------------------------------
