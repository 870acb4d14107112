"""Python face of the C ring: segment lifetime, errors, numpy batches.

The C side (``_ring.h``) owns the layout and the concurrency; this module
owns the POSIX shared-memory segment and the mmap, and is the one place where
C return codes become exceptions (``_raise_for``).
"""

from __future__ import annotations

import fcntl
import functools
import mmap
import os
import queue
import secrets

import posix_ipc

from ringbuf import _fastpath
from ringbuf._cffi_ring import ffi, lib

# ---- exceptions -----------------------------------------------------------


class RingException(Exception):
    """Base of everything this package raises."""


class Full(RingException, queue.Full):
    """The ring stayed full for the whole timeout."""


class Empty(RingException, queue.Empty):
    """The ring stayed empty for the whole timeout."""


class Closed(RingException):
    """This handle, or the peer's, has been closed."""


class PeerDied(Closed):
    """The process at the other end exited without closing its end."""


class MessageTooLarge(RingException, ValueError):
    """A message does not fit in one slot; fragmenting is the caller's job."""


class RingError(RingException):
    """The segment is not a usable ring: missing, foreign, damaged, too small."""


_ATTACH_ERRORS = {
    lib.RB_EBADMAGIC: "is not a ring (bad magic number)",
    lib.RB_EBADVERSION: "was made by another ringbuf version",
    lib.RB_EBADGEOMETRY: "has an impossible geometry (slot size/capacity/offsets)",
    lib.RB_ESEGMENT: "segment is smaller than its layout needs",
    lib.RB_ECORRUPT: "is corrupt: its peer wrote an index or a length that cannot be "
                     "(more filled slots than capacity, or a message longer than a slot)",
}


def _raise_for(rc: int, ring: Ring | None, what: str) -> None:
    """Map a negative RB_E* code to an exception. Never returns."""
    name = ring.name if ring is not None else "?"
    if rc == lib.RB_EFULL:
        raise Full(f"{what}: ring {name} is full")
    if rc == lib.RB_EEMPTY:
        raise Empty(f"{what}: ring {name} is empty")
    if rc == lib.RB_ECLOSED:
        if ring is not None and ring._closed:
            raise Closed(f"{what}: ring {name} was closed by this process")
        raise Closed(f"{what}: the peer closed ring {name}")
    if rc == lib.RB_EPEERDIED:
        pid = ring.peer_pid if ring is not None else "?"
        raise PeerDied(f"{what}: the peer process (pid {pid}) of ring {name} died")
    if rc == lib.RB_ETOOBIG:
        raise MessageTooLarge(
            f"{what}: message does not fit a {ring.slot_size}-byte slot of ring {name}"
        )
    if rc == lib.RB_EINVAL:
        raise ValueError(f"{what}: invalid argument for ring {name}")
    if rc in _ATTACH_ERRORS:
        raise RingError(f"{what}: ring {name} {_ATTACH_ERRORS[rc]}")
    raise RingError(f"{what}: ring {name}: unexpected error code {rc}")


# A sealed ring's memory file can neither shrink nor grow (create_sealed).
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW

# ---- layout, derived from the C structs -----------------------------------

LINE = lib.RB_LINE
HEADER_SIZE = lib.RB_HEADER_SIZE

_C_TO_NUMPY = {"uint64_t": "<u8", "uint32_t": "<u4", "int32_t": "<i4"}


@functools.cache
def _header_dtype() -> np.dtype:
    """The header's numpy dtype, read off the C struct (no second copy)."""
    import numpy as np

    names, formats, offsets = [], [], []
    for outer, ftype in ffi.typeof("struct rb_header").fields:
        base = ffi.offsetof("struct rb_header", outer)
        inner = ftype.type
        members = inner.fields if inner.kind == "struct" else [(outer, ftype)]
        for field, ft in members:
            if field.startswith("_pad") or ft.type.kind == "array":
                continue
            off = base + (ffi.offsetof(inner, field) if inner.kind == "struct" else 0)
            names.append(field)
            formats.append(_C_TO_NUMPY[ft.type.cname])
            offsets.append(off)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": HEADER_SIZE}
    )


def __getattr__(name: str):
    # numpy is imported when the batch calls or the header's dtype need it,
    # not by every process that only pushes and pops: a spawnd worker, for
    # one, was ~14 MB of numpy out of its ~18 MB of its own memory.
    if name == "HEADER_DTYPE":
        return _header_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def slot_dtype(slot_size: int = LINE) -> np.dtype:
    """The numpy dtype of one slot: ``slot_size`` raw bytes (a multiple of a line)."""
    import numpy as np

    if slot_size < LINE or slot_size % LINE:
        raise ValueError(f"slot_size must be a positive multiple of {LINE}, got {slot_size}")
    return np.dtype((np.void, slot_size))


def segment_size(capacity: int, slot_size: int = LINE) -> int:
    """Bytes a ring of this geometry needs; ValueError says what is wrong."""
    if capacity < 2 or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two >= 2, got {capacity}")
    slot_dtype(slot_size)
    if slot_size > lib.RB_MAX_SLOT_SIZE:
        raise ValueError(f"slot_size must be at most {lib.RB_MAX_SLOT_SIZE}, got {slot_size}")
    out = ffi.new("uint64_t *")
    if lib.rb_segment_size(capacity, slot_size, out) != lib.RB_OK:
        raise ValueError(f"ring of {capacity} x {slot_size}-byte slots is too large")
    return out[0]


def unique_name(prefix: str = "procmgr") -> str:
    """A fresh segment name under a prefix that cleanup tools can find."""
    return f"/{prefix}-{os.getpid()}-{secrets.token_hex(6)}"


def orphaned_segments(prefix: str = "procmgr", also_pid: int | None = None) -> list[str]:
    """Entries of /dev/shm named by unique_name under ``prefix`` whose creator
    process is gone (or is ``also_pid``): what a crashed run left behind.

    The creator's pid is in the name, so no registry is needed; a segment of
    another live run is never listed."""
    found = []
    for entry in sorted(os.listdir("/dev/shm")):
        parts = entry.rsplit("-", 2)
        if not (entry.startswith(prefix) and len(parts) == 3 and parts[1].isdigit()):
            continue
        pid = int(parts[1])
        if pid == also_pid or not _pid_alive(pid):
            found.append(entry)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _shm_name(name: str) -> str:
    return name if name.startswith("/") else "/" + name


def _timeout_ns(timeout: float | None) -> int:
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError("timeout must be None or a non-negative number of seconds")
    # Beyond ~292 years a finite timeout is "forever" in int64 nanoseconds.
    return min(int(timeout * 1e9), _NS_MAX)


_NS_MAX = 2**63 - 1


_push = _fastpath.push
_pop = _fastpath.pop
_fp_wait = _fastpath.wait
# What a C call on a ring (here, or a C codec using handle_addr) returns when
# the ring has no room.
EFULL = _EFULL = lib.RB_EFULL
_EEMPTY = lib.RB_EEMPTY


class Ring:
    """One end of a single-producer/single-consumer shared-memory ring.

    Create it in one process (``Ring.create``) and attach in another
    (``Ring.attach``); either end may produce. Messages are bytes of at most
    ``slot_size`` and come out exactly as they went in.
    """

    __slots__ = (
        "name", "capacity", "slot_size", "_h", "_addr", "handle_addr", "_mmap", "_mem",
        "_closed", "_creator", "_fd", "__weakref__",
    )

    def __init__(self, name: str, mm: mmap.mmap, side: int):
        self.name = name
        self._mmap = mm
        self._mem = ffi.from_buffer(mm)
        self._h = ffi.new("struct rb_handle *")
        self._closed = False
        self._creator = side == lib.RB_CREATOR
        self._fd = -1
        rc = lib.rb_open(self._h, self._mem, len(mm), side)
        if rc != lib.RB_OK:
            self._unmap()
            _raise_for(rc, self, "attach")
        self.capacity = self._h.mask + 1
        self.slot_size = self._h.slot_size
        # The fast path takes the handle by address; self._h keeps it alive.
        self._addr = self.handle_addr = int(ffi.cast("uintptr_t", self._h))

    # ---- lifetime ----

    @classmethod
    def create(cls, name: str, capacity: int = 1024, slot_size: int = LINE,
               *, _start_index: int = 0) -> Ring:
        """Create a new owner-only segment and initialise a ring in it.

        ``_start_index`` is a test hook: both counters start there, so a test
        can drive them across 2**64.
        """
        name = _shm_name(name)
        size = segment_size(capacity, slot_size)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError:
            raise RingError(f"create: ring {name} already exists") from None
        try:
            try:
                mm = mmap.mmap(shm.fd, size)
            finally:
                shm.close_fd()
            return cls._initialised(name, mm, capacity, slot_size, _start_index)
        except BaseException:
            # Whatever failed after the segment existed, leave no name behind.
            posix_ipc.unlink_shared_memory(name)
            raise

    @classmethod
    def _initialised(cls, name: str, mm: mmap.mmap, capacity: int, slot_size: int,
                     start: int) -> Ring:
        """A ring laid out in the fresh mapping ``mm``, this process its creator."""
        try:
            mem = ffi.from_buffer(mm)
            try:
                rc = lib.rb_init(mem, len(mm), capacity, slot_size, start, os.getpid())
            finally:
                ffi.release(mem)
            if rc != lib.RB_OK:
                _raise_for(rc, None, f"create {name}")
            return cls(name, mm, lib.RB_CREATOR)
        except BaseException:
            mm.close()
            raise

    @classmethod
    def create_sealed(cls, capacity: int = 1024, slot_size: int = LINE, *,
                      label: str = "ring") -> Ring:
        """A ring in an anonymous memory file (memfd) sealed against
        shrinking and growing, to hand to the peer as a descriptor
        (``fileno``, sent with SCM_RIGHTS or inherited; ``attach_fd`` there).

        Why: every party that can reach a segment's file -- the peer, or any
        process of the user through /proc/PID/fd -- could shrink it, and the
        next access of a process mapping it past the new end is SIGBUS,
        which kills it. Sealed, nobody can (F_SEAL_SHRINK holds for the
        creator too). And no name is made: nothing to unlink, nothing left
        in /dev/shm however the processes end. The ``name`` is only a label
        for messages."""
        size = segment_size(capacity, slot_size)
        fd = os.memfd_create(f"ringbuf-{label}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.fchmod(fd, 0o600)        # owner-only, as a named ring is
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
            ring = cls._initialised(f"memfd:{label}", mmap.mmap(fd, size), capacity,
                                    slot_size, 0)
        except BaseException:
            os.close(fd)
            raise
        ring._fd = fd
        return ring

    @classmethod
    def attach_fd(cls, fd: int, label: str = "ring") -> Ring:
        """Map the ring in memory file ``fd`` (made by ``create_sealed``;
        the descriptor is this ring's from now on, closed here, whatever
        happens). RingError if it is not sealed against shrinking -- a
        segment someone can shrink is one that can kill this process."""
        name = f"memfd:{label}"
        try:
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                seals = 0         # not a memfd at all
            if seals & _SEALS != _SEALS:
                raise RingError(f"attach: ring {name} is not in a sealed memory file "
                                "(anyone could shrink it under this process)")
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise RingError(f"attach: ring {name} segment is {size} bytes, smaller "
                                f"than the {HEADER_SIZE}-byte header")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)          # the mapping holds the file
        return cls(name, mm, lib.RB_ATTACHER)

    def fileno(self) -> int:
        """The memory file of a ring made by ``create_sealed``, to hand to
        the peer; -1 once ``release_fd`` let it go (the mapping stays)."""
        return self._fd

    def release_fd(self) -> None:
        """Close the descriptor ``fileno`` gave, once the peer has its copy:
        a process that holds many rings need not hold a descriptor more for
        each. Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @classmethod
    def attach(cls, name: str) -> Ring:
        """Map an existing ring by name; RingError says why it cannot be used."""
        name = _shm_name(name)
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise RingError(f"attach: no ring named {name}") from None
        except posix_ipc.PermissionsError:
            raise RingError(f"attach: ring {name} belongs to another user") from None
        try:
            if shm.size < HEADER_SIZE:
                raise RingError(
                    f"attach: ring {name} segment is {shm.size} bytes, "
                    f"smaller than the {HEADER_SIZE}-byte header"
                )
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        return cls(name, mm, lib.RB_ATTACHER)

    def close(self) -> None:
        """Close this end: wakes the peer, which then sees Closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        lib.rb_close(self._h)
        self._unmap()
        self.release_fd()

    def shut(self) -> None:
        """Close this end for both sides and keep the mapping: the peer and
        any thread of this process waiting on the ring wake and see Closed,
        and no call touches the segment again -- for a ring other threads
        may be inside, which ``close`` (unmapping) then follows once they
        have left. Idempotent."""
        if not self._closed:
            lib.rb_close(self._h)

    def _unmap(self) -> None:
        ffi.release(self._mem)
        self._mmap.close()

    def unlink(self) -> None:
        """Remove the name; mappings stay valid until closed. Idempotent;
        nothing to do for a sealed ring, which has no name."""
        if self.name.startswith("memfd:"):
            return
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc) -> None:
        """Close; the creator also unlinks, so a `with` block leaves nothing."""
        self.close()
        if self._creator:
            self.unlink()

    def __del__(self):
        # Best effort: a forgotten ring still tells its peer it is gone.
        if getattr(self, "_closed", True) is False:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)}/{self.capacity}"
        return f"<Ring {self.name} {state} x {self.slot_size}B>"

    # ---- for C extensions that work on the ring directly ----

    # ``handle_addr`` (an attribute: read on every message) is the address of
    # this end's ``struct rb_handle`` (``_ring.h``), for a C extension that
    # reads and writes slots in place (procmgr.protocol._wire). It stays valid while
    # this object lives; after ``close`` the handle says closed and every
    # function of ``_ring.h`` answers RB_ECLOSED.

    def raise_code(self, rc: int, what: str) -> None:
        """Raise the exception for a negative RB_E* code such an extension got."""
        _raise_for(rc, self, what)

    # ---- single messages ----

    def push(self, data, timeout: float | None = None) -> None:
        """Append one message, waiting up to ``timeout`` s (None: forever) for room."""
        rc = _push(self._addr, data, -1 if timeout is None else _timeout_ns(timeout))
        if rc:
            _raise_for(rc, self, "push")

    def try_push(self, data) -> bool:
        """Append one message if there is room; False if the ring is full."""
        rc = _push(self._addr, data, 0)
        if rc == 0:
            return True
        if rc == _EFULL:
            return False
        _raise_for(rc, self, "try_push")

    def pop(self, timeout: float | None = None) -> bytes:
        """Remove the oldest message, waiting up to ``timeout`` s (None: forever)."""
        msg = _pop(self._addr, -1 if timeout is None else _timeout_ns(timeout))
        if msg.__class__ is int:
            _raise_for(msg, self, "pop")
        return msg

    def try_pop(self) -> bytes | None:
        """Remove the oldest message if there is one, else None."""
        msg = _pop(self._addr, 0)
        if msg.__class__ is not int:
            return msg
        if msg == _EEMPTY:
            return None
        _raise_for(msg, self, "try_pop")

    # ---- batches ----

    def push_many(self, array, timeout: float | None = 0) -> int:
        """Append as many rows of ``array`` as fit, publishing once; return how many.

        ``array`` is a 1-D array whose items are at most ``slot_size`` bytes
        (e.g. of ``slot_dtype()`` or a record dtype), or a 2-D uint8 array of
        rows. With a non-zero ``timeout`` a full ring is first waited on until
        at least one row fits (None: forever); 0 is returned if none fit in time.
        """
        import numpy as np

        if self._closed:
            raise Closed(f"push_many: ring {self.name} was closed by this process")
        arr = np.ascontiguousarray(array)
        if arr.dtype.hasobject:
            raise TypeError("push_many cannot send Python objects, only plain data rows")
        if arr.ndim == 2 and arr.dtype == np.uint8:
            n, itemsize = arr.shape
        elif arr.ndim == 1:
            n, itemsize = arr.shape[0], arr.dtype.itemsize
        else:
            raise ValueError("push_many takes a 1-D array or a 2-D uint8 array of rows")
        if n == 0:
            return 0
        if itemsize == 0:
            raise ValueError("push_many rows must be at least one byte wide")
        src = ffi.from_buffer(arr)
        pushed = lib.rb_push_many(self._h, src, n, itemsize)
        if pushed == 0 and timeout != 0:
            rc = self._wait(lib.RB_WAIT_SPACE, timeout, "push_many")
            pushed = lib.rb_push_many(self._h, src, n, itemsize) if rc == 0 else 0
        if pushed < 0:
            _raise_for(pushed, self, "push_many")
        return pushed

    def try_push_all(self, data) -> bool:
        """Push whole slots (``len(data)`` a multiple of ``slot_size``) all at
        once, published together, or none of them; False if they do not fit.

        This is how a message spread over several slots is sent without its
        fragments ever interleaving with another message's.
        """
        n, rest = divmod(len(data), self.slot_size)
        if rest or n == 0:
            raise ValueError(
                f"try_push_all takes a whole number of {self.slot_size}-byte slots, "
                f"got {len(data)} bytes")
        if n == 1:
            return self.try_push(data)
        # Its room, checked (rb_push_all) -- not len(), which the peer's
        # word can make lie.
        pushed = lib.rb_push_all(self._h, ffi.from_buffer(data), n, self.slot_size)
        if pushed < 0:
            _raise_for(pushed, self, "try_push_all")
        assert pushed in (0, n), "all or none; a second producer would break this"
        return pushed == n

    def push_slots(self, data) -> int:
        """Push as many of ``data``'s whole slots as there is room for now,
        published together; return how many. Never waits. For a message
        longer than the ring, sent in pieces (its one producer sends
        nothing else in between); without numpy, which push_many needs."""
        n, rest = divmod(len(data), self.slot_size)
        if rest:
            raise ValueError(f"push_slots takes whole {self.slot_size}-byte slots, "
                             f"got {len(data)} bytes")
        if n == 0:
            return 0
        pushed = lib.rb_push_many(self._h, ffi.from_buffer(data), n, self.slot_size)
        if pushed < 0:
            if pushed == _EFULL:
                return 0
            _raise_for(pushed, self, "push_slots")
        return pushed

    @property
    def produced(self) -> int:
        """Producer: slots pushed through this handle so far (its own
        index, in this process's memory: how far a message sent in
        pieces got, even across an exception between two pieces)."""
        return self._h.tail

    def pop_slots(self, max_n: int) -> bytes:
        """Up to ``max_n`` messages that fill their slots, as one bytes
        object (b"": none, or the next is shorter -- try_pop gives that one
        as it is). Never waits. Raises Closed only once the ring is empty,
        as try_pop does."""
        buf = bytearray(max_n * self.slot_size)
        got = lib.rb_pop_whole(self._h, ffi.from_buffer(buf), max_n)
        if got < 0:
            _raise_for(got, self, "pop_slots")
        del buf[got * self.slot_size:]
        return bytes(buf)

    def pop_many(self, max_n: int, timeout: float | None = 0) -> np.ndarray:
        """Remove up to ``max_n`` messages as an array of ``slot_dtype(slot_size)``."""
        import numpy as np

        out = np.empty(max_n, dtype=slot_dtype(self.slot_size))
        return out[: self.pop_many_into(out, timeout)]

    def pop_many_into(self, out: np.ndarray, timeout: float | None = 0) -> int:
        """Fill the leading rows of a caller's C-contiguous array; return how many.

        Each row gets the first ``out.itemsize`` bytes of a slot (rows of a 2-D
        uint8 array: ``out.shape[1]`` bytes). With a non-zero ``timeout`` an
        empty ring is waited on until at least one message arrives.
        """
        import numpy as np

        if self._closed:
            raise Closed(f"pop_many: ring {self.name} was closed by this process")
        if not out.flags.c_contiguous:
            raise ValueError("pop_many_into needs a C-contiguous array")
        if out.ndim == 2 and out.dtype == np.uint8:
            max_n, itemsize = out.shape
        elif out.ndim == 1:
            max_n, itemsize = out.shape[0], out.dtype.itemsize
        else:
            raise ValueError("pop_many_into takes a 1-D array or a 2-D uint8 array of rows")
        if itemsize > self.slot_size:
            raise ValueError(
                f"rows of {itemsize} bytes are larger than the {self.slot_size}-byte slots"
            )
        if max_n == 0:
            return 0
        dst = ffi.from_buffer(out, require_writable=True)
        got = lib.rb_pop_many(self._h, dst, max_n, itemsize)
        if got == 0 and timeout != 0:
            if self._wait(lib.RB_WAIT_DATA, timeout, "pop_many") == 0:
                got = lib.rb_pop_many(self._h, dst, max_n, itemsize)
        if got < 0:
            _raise_for(got, self, "pop_many")
        return got

    def wait_data(self, timeout: float | None = None) -> bool:
        """Block until a message is there (True) or ``timeout`` passes (False)."""
        return self._wait(lib.RB_WAIT_DATA, timeout, "wait_data") == 0

    def wait_space(self, timeout: float | None = None) -> bool:
        """Block until a slot is free (True) or ``timeout`` passes (False)."""
        return self._wait(lib.RB_WAIT_SPACE, timeout, "wait_space") == 0

    def _wait(self, what: int, timeout: float | None, where: str) -> int:
        """Wait for data or room; 0 when ready, 1 on timeout, raises otherwise.

        The wait is _fastpath's, the one push and pop use: one bounded
        slice at a time without the GIL, running the signal handlers that
        arrived in between (Ctrl-C ends the wait).
        """
        rc = _fp_wait(self._addr, what, -1 if timeout is None else _timeout_ns(max(0.0, timeout)))
        if rc == lib.RB_OK:
            return 0
        if rc in (_EFULL, _EEMPTY):
            return 1
        _raise_for(rc, self, where)

    # ---- sleeping on many rings at once ----

    def set_doorbell(self, fd: int) -> None:
        """Give this end the peer's doorbell (an eventfd): when the peer armed
        the ring and this end makes progress for it, the doorbell is rung."""
        lib.rb_set_doorbell(self._h, fd)

    def batch_wakes(self, on: bool = True) -> None:
        """Producer: let pushes not wake a sleeping consumer; ``wake_consumer``
        does, once per batch (see "Batched wakes" in ``_ring.h``). Turning it
        off wakes the consumer for whatever is unannounced."""
        lib.rb_set_batch_wakes(self._h, 1 if on else 0)

    def wake_consumer(self) -> None:
        """Producer: wake the consumer if it sleeps (no system call if not)."""
        lib.rb_wake_consumer(self._h)

    def arm(self, for_space: bool = False) -> bool:
        """Before sleeping on a doorbell: mark this end as asleep on it.

        Returns True (and stays unarmed) if there is already data (room, with
        ``for_space``) or the peer closed -- then do not sleep. Otherwise the
        peer rings the doorbell when it changes that.
        """
        rc = lib.rb_arm(self._h, lib.RB_WAIT_SPACE if for_space else lib.RB_WAIT_DATA)
        if rc < 0:
            _raise_for(rc, self, "arm")
        return bool(rc)

    def disarm(self, for_space: bool = False) -> None:
        lib.rb_disarm(self._h, lib.RB_WAIT_SPACE if for_space else lib.RB_WAIT_DATA)

    # ---- introspection ----

    def __len__(self) -> int:
        if self._closed:
            raise Closed(f"len: ring {self.name} was closed by this process")
        return lib.rb_len(self._h)

    @property
    def corrupt(self) -> bool:
        """The peer broke the ring (an impossible index or length): every
        call raises RingError from then on (ringbuf/_ring.h, "Trust")."""
        return bool(self._h.corrupt)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_pid(self) -> int:
        """Pid of the other party (0 if nobody has attached yet)."""
        if self._closed:
            raise Closed(f"peer_pid: ring {self.name} was closed by this process")
        hdr = self._h.hdr
        return hdr.life.attacher_pid if self._creator else hdr.geo.creator_pid

    def peer_alive(self) -> bool:
        """False once the other party's process has exited."""
        if self._closed:
            raise Closed(f"peer_alive: ring {self.name} was closed by this process")
        return bool(lib.rb_peer_alive(self._h))

    def header(self) -> np.void:
        """A snapshot of the shared header as one HEADER_DTYPE record."""
        if self._closed:
            raise Closed(f"header: ring {self.name} was closed by this process")
        import numpy as np

        return np.frombuffer(self._mmap, _header_dtype(), count=1)[0].copy()

    def check(self) -> None:
        """Raise RingError if the shared header is not sane (usable after a crash)."""
        if self._closed:
            raise Closed(f"check: ring {self.name} was closed by this process")
        rc = lib.rb_check(self._mem, len(self._mmap))
        if rc != lib.RB_OK:
            _raise_for(rc, self, "check")
