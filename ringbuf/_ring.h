/*
 * ringbuf: a lock-free single-producer/single-consumer ring of fixed-size
 * slots in one POSIX shared-memory segment.
 *
 * Contract: one producer process, one consumer process; neither ever blocks
 * the other. A side that must wait (empty ring, full ring) spins briefly and
 * then sleeps on a futex word in the segment. rb_wait sleeps at most one
 * slice (50 ms) per call and then returns RB_EAGAIN: the caller loops, and
 * between calls it runs the signal handlers that came in meanwhile (a signal
 * that lands during the spin or between slices interrupts no system call,
 * so only this bound makes it count). Every slice also checks whether the
 * peer closed or died.
 *
 * Segment layout (every row of the header is one 64-byte cache line):
 *
 *   offset  line / field                   written by            read by
 *   ------  -----------------------------  --------------------  ---------------
 *        0  geometry: magic, version,      rb_init, once         both, rb_check
 *           slot_size, capacity, offsets,
 *           segment_size, creator_pid
 *       64  prod_tail  (published: slots   producer              consumer
 *           written so far)
 *      128  cons_head  (published: slots   consumer              producer
 *           consumed so far)
 *      192  (unused: the cached copies of  -                     -
 *      256  the peer's index live in each side's own handle;
 *           an older build keeps its own copy here, which no
 *           other party reads, so the two still work together)
 *      320  cons_sleep (the consumer is,   consumer sets 1 or 2, producer
 *           or is about to be, asleep on   producer clears 0
 *           an empty ring: 1 on this       when it wakes it
 *           futex word, 2 on a doorbell)
 *      384  prod_sleep (futex word: same   producer sets 1,      consumer
 *           for the producer, full ring)   consumer clears 0
 *      448  lifecycle: creator_closed,     the named party, at   the other party
 *           attacher_pid, attacher_closed  attach and close
 *      512  lens[capacity]  (uint32 byte   producer              consumer
 *           length of each slot's message,
 *           rounded up to a cache line)
 *   slots_offset  slots[capacity]          producer              consumer
 *           (slot_size bytes each, a
 *           multiple of 64)
 *
 * Counters: prod_tail and cons_head run free as uint64 and are never reset;
 * the slot of counter c is c & (capacity - 1). Because capacity is a power of
 * two it divides 2**64, so masking stays consistent when a counter wraps, and
 * the fill level prod_tail - cons_head is correct in unsigned arithmetic
 * across the wrap. rb_init can start both counters anywhere (a test hook to
 * drive them across 2**64).
 *
 * Cached copies: each side keeps the other side's index as it last read it.
 * A stale copy only ever under-estimates the other side's progress, so it is
 * always safe; the hot path reloads the other side's line only when the
 * cached copy says "full" (producer) or "empty" (consumer).
 *
 * Trust: the segment is mapped writable by both parties, so every word in
 * it may be written by the peer -- a broken one, or a hostile one of the
 * same user. So a side keeps its own index and its cached copy of the
 * peer's in its process-local handle, and only publishes its index to the
 * segment; the shared copy of its own index is never read back. The one
 * index it reads is the peer's, and each load is checked: 0 <= tail - head
 * <= capacity, in the free-running arithmetic, or the ring is corrupt. A
 * length word is checked against the slot size before a slot is read.
 * Geometry is read once, at open, and checked there. A corrupt ring stays
 * so: every later call on the handle returns RB_ECORRUPT (a waiter wakes
 * with it), and its user drops that peer. The sleep and lifecycle words
 * are only compared, never used as an index or a size: a lying one costs
 * a spurious wake-up, or sees the peer as closed or gone, and nothing else.
 *
 * Sleeping: a side that waits on this ring alone sleeps on its sleep word
 * as a futex (value 1). A process that consumes many rings (the manager)
 * cannot: it arms each ring instead (value 2) and sleeps on one eventfd,
 * its doorbell, which every producer was given (rb_set_doorbell) and
 * writes when it finds the word at 2. Either way the hot path makes no
 * system call: a producer looks at the word and wakes only a sleeper.
 *
 * Batched wakes: a producer that sends many messages in one go (the
 * manager, answering a pass's worth of requests) can ask that pushes not
 * wake the consumer (rb_set_batch_wakes) and wake it once at the end
 * (rb_wake_consumer). On a machine with fewer CPUs than busy processes, a
 * consumer woken by the first message of a batch preempts its producer and
 * then sleeps again after that one message: a wake-up per message instead
 * of per batch. A forgotten rb_wake_consumer costs latency, not a hang: a
 * sleeper re-checks the ring after every slice. A rb_wake_consumer with
 * nothing published since the last one rings nobody: every earlier publish
 * was paired already, and a second ring would only wake the consumer to an
 * empty ring (a whole pass of its loop, for nothing).
 *
 * Parties: the creator and the attacher of the segment. Either may be the
 * producer. Each waiting side watches the other party: its closed word and
 * its pid (a pidfd, so a dead-but-unreaped child counts as dead).
 *
 * Errors: every function returns 0 (or a count/length >= 0) or a negative
 * RB_E* code. The Python wrapper maps codes to exceptions in one place.
 *
 * The block between CDEF-BEGIN and CDEF-END is read by build.py as the cffi
 * declarations, so it holds only what cffi's parser accepts: plain structs
 * with literal array sizes, integer #defines, prototypes.
 */
#ifndef RINGBUF_RING_H
#define RINGBUF_RING_H

#include <stdint.h>
#include <stddef.h>

/* CDEF-BEGIN */
#define RB_MAGIC 0x474e495252474d50
#define RB_VERSION 1
#define RB_LINE 64
#define RB_HEADER_SIZE 512
#define RB_MAX_SLOT_SIZE 1048576

#define RB_OK 0
#define RB_EFULL -1
#define RB_EEMPTY -2
#define RB_ECLOSED -3
#define RB_EPEERDIED -4
#define RB_ETOOBIG -5
#define RB_EINTR -6
#define RB_EBADMAGIC -7
#define RB_EBADVERSION -8
#define RB_EBADGEOMETRY -9
#define RB_ESEGMENT -10
#define RB_EINVAL -11
#define RB_ECORRUPT -12
#define RB_ESYS -13
#define RB_EAGAIN -14

#define RB_CREATOR 0
#define RB_ATTACHER 1

#define RB_WAIT_DATA 0
#define RB_WAIT_SPACE 1

#define RB_SLEEP_FUTEX 1
#define RB_SLEEP_DOORBELL 2

struct rb_geometry {
    uint64_t magic;            /* RB_MAGIC: "PMGRRING" little-endian */
    uint32_t version;          /* RB_VERSION */
    uint32_t slot_size;        /* bytes per slot, multiple of RB_LINE */
    uint64_t capacity;         /* slots, power of two >= 2 */
    uint64_t lens_offset;      /* from the segment start */
    uint64_t slots_offset;     /* from the segment start */
    uint64_t segment_size;     /* bytes the layout needs */
    int32_t creator_pid;
    uint32_t _pad0;
    uint64_t _pad1;
};

struct rb_lifecycle {
    uint32_t creator_closed;   /* written by the creator at close */
    int32_t attacher_pid;      /* written by the attacher at attach */
    uint32_t attacher_closed;  /* written by the attacher at attach/close */
    uint8_t _pad[52];
};

struct rb_header {
    struct rb_geometry geo;
    uint64_t prod_tail;
    uint8_t _pad_prod_tail[56];
    uint64_t cons_head;
    uint8_t _pad_cons_head[56];
    uint8_t _pad_unused_line3[64];
    uint8_t _pad_unused_line4[64];
    uint32_t cons_sleep;
    uint8_t _pad_cons_sleep[60];
    uint32_t prod_sleep;
    uint8_t _pad_prod_sleep[60];
    struct rb_lifecycle life;
};

/* Process-local view of a ring: caller-allocated, never shared. */
struct rb_handle {
    struct rb_header *hdr;
    uint32_t *lens;
    uint8_t *slots;
    uint64_t mask;             /* capacity - 1 */
    uint32_t slot_size;
    int32_t side;              /* RB_CREATOR or RB_ATTACHER */
    int32_t closed;            /* this handle was closed */
    int32_t self_pid;
    int32_t peer_pid;          /* pid peer_pidfd refers to, 0 if none */
    int32_t peer_pidfd;        /* -1 until the peer is first checked */
    int64_t spin_ns;           /* how long a waiter spins before sleeping, at most */
    int64_t spin_next;         /* how long the next wait spins (adaptive, <= spin_ns) */
    int64_t slice_ns;          /* longest single futex sleep */
    int32_t doorbell_fd;       /* eventfd to ring for a peer armed on a doorbell */
    int32_t batch_wakes;       /* pushes do not wake a sleeping consumer;
                                  rb_wake_consumer does, once per batch */
    int32_t unannounced;       /* published since the last rb_wake_consumer */
    int32_t corrupt;           /* the peer broke the ring: RB_ECORRUPT from now on */
    /* The indices, this side's own: never read back from the segment. */
    uint64_t tail;             /* producer: slots published */
    uint64_t head;             /* consumer: slots consumed */
    uint64_t cached_head;      /* producer: cons_head as last read, checked */
    uint64_t cached_tail;      /* consumer: prod_tail as last read, checked */
};

int rb_segment_size(uint64_t capacity, uint32_t slot_size, uint64_t *out);
int rb_init(void *mem, uint64_t mem_size, uint64_t capacity,
            uint32_t slot_size, uint64_t start_index, int32_t creator_pid);
int rb_check(const void *mem, uint64_t mem_size);
int rb_open(struct rb_handle *h, void *mem, uint64_t mem_size, int32_t side);
void rb_close(struct rb_handle *h);

int rb_push(struct rb_handle *h, const void *data, uint32_t len);
int rb_pop(struct rb_handle *h, void *out, uint32_t out_size);
int64_t rb_push_many(struct rb_handle *h, const void *src, uint64_t n,
                     uint32_t itemsize);
int64_t rb_pop_many(struct rb_handle *h, void *dst, uint64_t max_n,
                    uint32_t itemsize);
/* Up to max_n messages that fill their slots, whole, into dst; stops in
 * front of a shorter one (left for rb_pop, which gives it as it is). For a
 * message spread over many slots, taken in bulk without losing the word
 * a short slot says. */
int64_t rb_pop_whole(struct rb_handle *h, void *dst, uint64_t max_n);
int rb_peek(struct rb_handle *h, const uint8_t **slot);
int rb_consume(struct rb_handle *h, uint64_t n);
int rb_wait(struct rb_handle *h, int32_t what, int64_t timeout_ns, int32_t spin);
/* 1 if there is data (room, for RB_WAIT_SPACE) or the peer closed; never waits. */
int rb_ready(struct rb_handle *h, int32_t what);
int rb_arm(struct rb_handle *h, int32_t what);
/* rb_arm for many rings with one fence (the manager arms every peer's):
 * rb_arm_mark each, then rb_arm_fence once, then rb_arm_check each -- the
 * same store, seq_cst fence, load pairing as rb_arm, the fence shared. */
void rb_arm_mark(struct rb_handle *h, int32_t what);
void rb_arm_fence(void);
int rb_arm_check(struct rb_handle *h, int32_t what);
void rb_disarm(struct rb_handle *h, int32_t what);
void rb_set_doorbell(struct rb_handle *h, int32_t fd);
void rb_set_batch_wakes(struct rb_handle *h, int32_t on);
void rb_wake_consumer(struct rb_handle *h);
/* A snapshot of the fill level for reporting: both indices as the segment
 * has them, clamped to capacity -- never a producer's room (rb_room). */
uint64_t rb_len(const struct rb_handle *h);
/* Free slots as the producer sees them -- at least `want` if there are
 * (the consumer's index is reloaded, and checked, only when the cached
 * copy shows fewer) -- or RB_ECORRUPT / RB_ECLOSED. */
int64_t rb_room(struct rb_handle *h, uint64_t want);
/* All n items published together, or none: n, 0 if they do not fit, or
 * a negative RB_E* code. A message of several slots goes this way, so its
 * fragments never interleave with another's. */
int64_t rb_push_all(struct rb_handle *h, const void *src, uint64_t n, uint32_t itemsize);
int rb_peer_alive(struct rb_handle *h);
/* CDEF-END */

_Static_assert(sizeof(struct rb_geometry) == RB_LINE,
               "geometry is exactly one cache line, written once");
_Static_assert(sizeof(struct rb_lifecycle) == RB_LINE,
               "lifecycle words share one rarely-written line");
_Static_assert(offsetof(struct rb_header, prod_tail) == 1 * RB_LINE,
               "prod_tail owns line 1: only the producer writes it");
_Static_assert(offsetof(struct rb_header, cons_head) == 2 * RB_LINE,
               "cons_head owns line 2: only the consumer writes it");
_Static_assert(offsetof(struct rb_header, _pad_unused_line3) == 3 * RB_LINE,
               "lines 3 and 4 held the cached copies: the layout does not move");
_Static_assert(offsetof(struct rb_header, cons_sleep) == 5 * RB_LINE,
               "futex words get their own lines: FUTEX_WAKE dirties them");
_Static_assert(offsetof(struct rb_header, prod_sleep) == 6 * RB_LINE,
               "futex words get their own lines: FUTEX_WAKE dirties them");
_Static_assert(offsetof(struct rb_header, life) == 7 * RB_LINE,
               "lifecycle is the last header line");
_Static_assert(sizeof(struct rb_header) == RB_HEADER_SIZE,
               "lens[] starts right after the header, on a line boundary");
_Static_assert(RB_HEADER_SIZE % RB_LINE == 0,
               "slots and lens start on cache-line boundaries");

#endif /* RINGBUF_RING_H */
