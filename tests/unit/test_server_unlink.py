"""The manager process unlinks a worker's ring names once the worker has
mapped them. A worker that died first leaves its rings closed (the manager
closes them when it retires the core); they must be unlinked too, not
crash the manager (it did, once the loop could serve for long stretches
without returning: the dead worker's rings were still waiting)."""

from types import SimpleNamespace

import posix_ipc

from procmgr.server import Server
from ringbuf import Ring


def test_rings_of_a_worker_that_died_are_unlinked_not_fatal(shm_name):
    attached = Ring.create(shm_name + "-a", 8)
    peer = Ring.attach(attached.name)           # its worker mapped it
    waiting = Ring.create(shm_name + "-w", 8)   # nobody mapped this one yet
    dead = Ring.create(shm_name + "-d", 8)      # its worker died: closed by the manager
    dead.close()
    server = SimpleNamespace(_to_unlink=[attached, waiting, dead])
    try:
        Server.unlink_attached(server)
        assert server._to_unlink == [waiting]
        for ring in (attached, dead):
            try:
                posix_ipc.SharedMemory(ring.name)
                raise AssertionError(f"{ring.name} is still in /dev/shm")
            except posix_ipc.ExistentialError:
                pass
    finally:
        for ring in (peer, attached, waiting):
            ring.close()
        waiting.unlink()
