"""ringbuf: a lock-free single-producer/single-consumer ring of fixed-size
slots in POSIX shared memory, written in C (``_ring.h``, ``_ring.c``) and
driven from Python through cffi. Every message of the runtime travels on one.
"""

from ringbuf.ring import (
    EFULL,
    HEADER_SIZE,
    LINE,
    Closed,
    Empty,
    Full,
    MessageTooLarge,
    PeerDied,
    Ring,
    RingError,
    RingException,
    orphaned_segments,
    segment_size,
    slot_dtype,
    unique_name,
)



def __getattr__(name: str):
    if name == "HEADER_DTYPE":          # made (with numpy) when first asked for
        from ringbuf import ring
        return ring.HEADER_DTYPE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EFULL", "HEADER_DTYPE", "HEADER_SIZE", "LINE", "Closed", "Empty", "Full",
    "MessageTooLarge", "PeerDied", "Ring", "RingError", "RingException",
    "orphaned_segments", "segment_size", "slot_dtype", "unique_name",
]
