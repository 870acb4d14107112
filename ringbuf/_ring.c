/*
 * ringbuf: implementation. Layout, contract and ownership of every field are
 * in _ring.h; read that first.
 *
 * Memory ordering, in one place:
 *   - producer: write slot + lens[i] (plain), then store-release prod_tail.
 *     Pairs with the consumer's load-acquire of prod_tail, which therefore
 *     sees the slot bytes.
 *   - consumer: read slot + lens[i] (plain), then store-release cons_head.
 *     Pairs with the producer's load-acquire of cons_head, so the producer
 *     never overwrites a slot the consumer is still reading.
 *   - sleeping (Dekker pattern): a waiter stores its sleep word = 1, issues a
 *     seq_cst fence, then re-reads the index it waits on. The other side
 *     stores its index, issues a seq_cst fence, then reads the sleep word.
 *     The two fences guarantee that at least one of them sees the other's
 *     store: either the waiter sees the new index and does not sleep, or the
 *     other side sees sleep == 1 and wakes it. The waker clears the word to 0
 *     before FUTEX_WAKE, so a waiter that has not yet reached FUTEX_WAIT gets
 *     EAGAIN from it instead of sleeping through the wake.
 */
#define _GNU_SOURCE
#include "_ring.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define RB_DEFAULT_SPIN_NS 30000      /* tens of µs: covers a peer's turn-around */
#define RB_DEFAULT_SLICE_NS 50000000  /* 50 ms: bounds peer-death detection */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t round_up_line(uint64_t n)
{
    return (n + RB_LINE - 1) & ~(uint64_t)(RB_LINE - 1);
}

int rb_segment_size(uint64_t capacity, uint32_t slot_size, uint64_t *out)
{
    if (capacity < 2 || (capacity & (capacity - 1)) != 0)
        return RB_EINVAL;
    if (slot_size < RB_LINE || slot_size % RB_LINE != 0 ||
        slot_size > RB_MAX_SLOT_SIZE)
        return RB_EINVAL;
    if (capacity > (UINT64_MAX / 2) / (slot_size + sizeof(uint32_t)))
        return RB_EINVAL;
    *out = RB_HEADER_SIZE + round_up_line(capacity * sizeof(uint32_t)) +
           capacity * slot_size;
    return RB_OK;
}

int rb_init(void *mem, uint64_t mem_size, uint64_t capacity,
            uint32_t slot_size, uint64_t start_index, int32_t creator_pid)
{
    uint64_t need;
    int rc = rb_segment_size(capacity, slot_size, &need);
    if (rc != RB_OK)
        return rc;
    if (mem_size < need)
        return RB_ESEGMENT;

    struct rb_header *hdr = mem;
    memset(hdr, 0, RB_HEADER_SIZE);
    hdr->geo.version = RB_VERSION;
    hdr->geo.slot_size = slot_size;
    hdr->geo.capacity = capacity;
    hdr->geo.lens_offset = RB_HEADER_SIZE;
    hdr->geo.slots_offset =
        RB_HEADER_SIZE + round_up_line(capacity * sizeof(uint32_t));
    hdr->geo.segment_size = need;
    hdr->geo.creator_pid = creator_pid;
    hdr->prod_tail = start_index;
    hdr->cons_head = start_index;
    /* Release: the magic is written last, so a process that sees it (with
     * an acquire load in rb_check) sees the whole geometry. */
    __atomic_store_n(&hdr->geo.magic, (uint64_t)RB_MAGIC, __ATOMIC_RELEASE);
    return RB_OK;
}

/* The segment's geometry and indices, each word read once into *geo,
 * *tail and *head, and checked there: what is used is what was checked,
 * whatever the peer writes meanwhile (_ring.h, "Trust"). */
static int check_copy(const void *mem, uint64_t mem_size, struct rb_geometry *geo,
                      uint64_t *tail, uint64_t *head)
{
    const struct rb_header *hdr = mem;
    if (mem_size < RB_HEADER_SIZE)
        return RB_ESEGMENT;
    /* Acquire: pairs with the release store of magic in rb_init. */
    if (__atomic_load_n(&hdr->geo.magic, __ATOMIC_ACQUIRE) != RB_MAGIC)
        return RB_EBADMAGIC;
    geo->version = __atomic_load_n(&hdr->geo.version, __ATOMIC_RELAXED);
    geo->slot_size = __atomic_load_n(&hdr->geo.slot_size, __ATOMIC_RELAXED);
    geo->capacity = __atomic_load_n(&hdr->geo.capacity, __ATOMIC_RELAXED);
    geo->lens_offset = __atomic_load_n(&hdr->geo.lens_offset, __ATOMIC_RELAXED);
    geo->slots_offset = __atomic_load_n(&hdr->geo.slots_offset, __ATOMIC_RELAXED);
    geo->segment_size = __atomic_load_n(&hdr->geo.segment_size, __ATOMIC_RELAXED);
    if (geo->version != RB_VERSION)
        return RB_EBADVERSION;
    uint64_t need;
    if (rb_segment_size(geo->capacity, geo->slot_size, &need) != RB_OK)
        return RB_EBADGEOMETRY;
    if (geo->segment_size != need || geo->lens_offset != RB_HEADER_SIZE ||
        geo->slots_offset != RB_HEADER_SIZE + round_up_line(geo->capacity * sizeof(uint32_t)))
        return RB_EBADGEOMETRY;
    if (mem_size < need)
        return RB_ESEGMENT;
    /* Acquire loads: the indices are read across processes; a torn view is
     * impossible for aligned 64-bit words. Counters are free-running, so the
     * only invariant is the fill level. */
    *tail = __atomic_load_n(&hdr->prod_tail, __ATOMIC_ACQUIRE);
    *head = __atomic_load_n(&hdr->cons_head, __ATOMIC_ACQUIRE);
    if (*tail - *head > geo->capacity)
        return RB_ECORRUPT;
    return RB_OK;
}

int rb_check(const void *mem, uint64_t mem_size)
{
    struct rb_geometry geo;
    uint64_t tail, head;
    return check_copy(mem, mem_size, &geo, &tail, &head);
}

int rb_open(struct rb_handle *h, void *mem, uint64_t mem_size, int32_t side)
{
    struct rb_geometry geo;
    uint64_t tail, head;
    int rc = check_copy(mem, mem_size, &geo, &tail, &head);
    if (rc != RB_OK)
        return rc;
    if (side != RB_CREATOR && side != RB_ATTACHER)
        return RB_EINVAL;
    struct rb_header *hdr = mem;
    memset(h, 0, sizeof(*h));
    h->hdr = hdr;
    h->lens = (uint32_t *)((uint8_t *)mem + geo.lens_offset);
    h->slots = (uint8_t *)mem + geo.slots_offset;
    h->mask = geo.capacity - 1;
    h->slot_size = geo.slot_size;
    h->side = side;
    h->self_pid = (int32_t)getpid();
    h->peer_pidfd = -1;
    h->spin_ns = h->spin_next = RB_DEFAULT_SPIN_NS;
    h->slice_ns = RB_DEFAULT_SLICE_NS;
    h->doorbell_fd = -1;
    /* The copies check_copy checked: 0 <= tail - head <= capacity. */
    h->tail = h->cached_tail = tail;
    h->head = h->cached_head = head;
    if (side == RB_ATTACHER) {
        /* Relaxed: the attacher is the only writer; a waiter reads these
         * once per sleep slice and tolerates a stale value for one slice. */
        __atomic_store_n(&hdr->life.attacher_closed, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&hdr->life.attacher_pid, h->self_pid, __ATOMIC_RELEASE);
    }
    return RB_OK;
}

static void wake_word(const struct rb_handle *h, uint32_t *word)
{
    /* Exchange to 0 before waking: see the Dekker note at the top. */
    uint32_t how = __atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST);
    if (how == RB_SLEEP_DOORBELL && h->doorbell_fd >= 0) {
        uint64_t one = 1;
        /* An eventfd counter cannot overflow from wakes in practice, and a
         * failed write (EAGAIN at 2**64-2) still leaves it readable. */
        ssize_t r = write(h->doorbell_fd, &one, sizeof(one));
        (void)r;
    } else if (how != 0) {
        syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    }
}

void rb_close(struct rb_handle *h)
{
    if (h->hdr == NULL || h->closed)
        return;
    h->closed = 1;
    uint32_t *mine = h->side == RB_CREATOR ? &h->hdr->life.creator_closed
                                           : &h->hdr->life.attacher_closed;
    /* Release: pairs with peer_closed()'s acquire; whatever this side pushed
     * before closing is visible to a peer that sees the flag. */
    __atomic_store_n(mine, 1, __ATOMIC_RELEASE);
    /* The peer may be asleep waiting for data or for space: wake both. The
     * word may be 0 while the peer is between its check and FUTEX_WAIT, so
     * wake unconditionally here (close is rare). */
    __atomic_store_n(&h->hdr->cons_sleep, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->hdr->prod_sleep, 0, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &h->hdr->cons_sleep, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    syscall(SYS_futex, &h->hdr->prod_sleep, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    if (h->doorbell_fd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(h->doorbell_fd, &one, sizeof(one));
        (void)r;
    }
    if (h->peer_pidfd >= 0) {
        close(h->peer_pidfd);
        h->peer_pidfd = -1;
    }
}

static int peer_closed(const struct rb_handle *h)
{
    const uint32_t *theirs = h->side == RB_CREATOR
                                 ? &h->hdr->life.attacher_closed
                                 : &h->hdr->life.creator_closed;
    /* Acquire: pairs with the release store in rb_close. */
    return __atomic_load_n(theirs, __ATOMIC_ACQUIRE) != 0;
}

int rb_peer_alive(struct rb_handle *h)
{
    int32_t pid = h->side == RB_CREATOR
                      /* Acquire: pairs with rb_open's release of attacher_pid. */
                      ? __atomic_load_n(&h->hdr->life.attacher_pid, __ATOMIC_ACQUIRE)
                      : h->hdr->geo.creator_pid;
    if (pid <= 0 || pid == h->self_pid)
        return 1; /* not attached yet, or both ends are in this process */
    if (pid != h->peer_pid) {
        /* A new peer (first check, or a re-attach): follow it by pidfd, which
         * also reports a dead child that has not been reaped yet. */
        if (h->peer_pidfd >= 0)
            close(h->peer_pidfd);
        h->peer_pid = pid;
        h->peer_pidfd = (int32_t)syscall(SYS_pidfd_open, pid, 0);
        if (h->peer_pidfd < 0) {
            if (errno == ESRCH)
                return 0;
            /* No pidfd support: fall back to signal 0 (misses zombies). */
            return !(kill(pid, 0) < 0 && errno == ESRCH);
        }
    }
    if (h->peer_pidfd < 0)
        return !(kill(pid, 0) < 0 && errno == ESRCH);
    struct pollfd p = {.fd = h->peer_pidfd, .events = POLLIN};
    /* A pidfd polls readable once the process has exited. Only that counts
     * as death: poll fails with EINTR when a signal is pending, even with a
     * zero timeout, and a failure says nothing about the peer. */
    int n;
    do {
        n = poll(&p, 1, 0);
    } while (n < 0 && errno == EINTR);
    return !(n > 0 && (p.revents & POLLIN));
}

/* ---- producer side ---- */

/* Free slots as the producer sees them, reloading cons_head only when the
 * cached copy says there is not enough room for `want`. The peer's word is
 * checked as it is loaded (_ring.h, "Trust"): 0 if it lies, and the ring
 * is corrupt from then on. */
static uint64_t producer_room(struct rb_handle *h, uint64_t want)
{
    uint64_t cap = h->mask + 1;
    uint64_t room = cap - (h->tail - h->cached_head);
    if (room < want && !h->corrupt) {
        /* Acquire: pairs with the consumer's release of cons_head; the slots
         * it frees are no longer being read. */
        uint64_t head = __atomic_load_n(&h->hdr->cons_head, __ATOMIC_ACQUIRE);
        if (h->tail - head > cap) {        /* ahead of the tail, or too far behind */
            h->corrupt = 1;
            return 0;
        }
        h->cached_head = head;
        room = cap - (h->tail - head);
    }
    return room;
}

static void publish_tail(struct rb_handle *h, uint64_t tail)
{
    /* Release: pairs with the consumer's acquire of prod_tail; the slot bytes
     * and lens written before this are visible to it. */
    h->tail = tail;
    __atomic_store_n(&h->hdr->prod_tail, tail, __ATOMIC_RELEASE);
    h->unannounced = 1;
    if (!h->batch_wakes)
        rb_wake_consumer(h);
}

void rb_wake_consumer(struct rb_handle *h)
{
    /* Nothing published since the last call: that call paired with it. */
    if (h->closed || !h->unannounced)
        return;
    h->unannounced = 0;
    /* Seq_cst fence, then read cons_sleep: the Dekker pairing with the
     * consumer's sleep path (cons_sleep = 1; fence; reload prod_tail). Run
     * after the publish it follows, however much later, it still pairs:
     * a consumer that armed before that publish is seen asleep here. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->hdr->cons_sleep, __ATOMIC_RELAXED))
        wake_word(h, &h->hdr->cons_sleep);
}

void rb_set_batch_wakes(struct rb_handle *h, int32_t on)
{
    h->batch_wakes = on;
    if (!on)
        rb_wake_consumer(h);   /* whatever the batch left unannounced */
}

static int try_push(struct rb_handle *h, const void *data, uint32_t len)
{
    if (h->closed)
        return RB_ECLOSED;
    if (h->corrupt)
        return RB_ECORRUPT;      /* for good: a corrupt ring is never used again */
    if (len > h->slot_size)
        return RB_ETOOBIG;
    if (peer_closed(h))
        return RB_ECLOSED;
    if (producer_room(h, 1) == 0)
        return h->corrupt ? RB_ECORRUPT : RB_EFULL;
    uint64_t i = h->tail & h->mask;
    memcpy(h->slots + i * h->slot_size, data, len);
    h->lens[i] = len;
    publish_tail(h, h->tail + 1);
    return RB_OK;
}

int64_t rb_push_many(struct rb_handle *h, const void *src, uint64_t n,
                     uint32_t itemsize)
{
    if (h->closed)
        return RB_ECLOSED;
    if (h->corrupt)
        return RB_ECORRUPT;
    if (itemsize > h->slot_size || itemsize == 0)
        return RB_ETOOBIG;
    if (peer_closed(h))
        return RB_ECLOSED;
    uint64_t tail = h->tail;
    uint64_t room = producer_room(h, n);
    if (h->corrupt)
        return RB_ECORRUPT;
    if (n > room)
        n = room;
    if (n == 0)
        return 0;
    const uint8_t *in = src;
    uint64_t first = tail & h->mask;
    if (itemsize == h->slot_size) {
        /* Whole slots: at most two memcpys, split where the ring wraps. */
        uint64_t upto_end = h->mask + 1 - first;
        uint64_t a = n < upto_end ? n : upto_end;
        memcpy(h->slots + first * h->slot_size, in, a * itemsize);
        if (n > a)
            memcpy(h->slots, in + a * itemsize, (n - a) * itemsize);
    } else {
        for (uint64_t k = 0; k < n; k++)
            memcpy(h->slots + ((first + k) & h->mask) * h->slot_size,
                   in + k * itemsize, itemsize);
    }
    for (uint64_t k = 0; k < n; k++)
        h->lens[(first + k) & h->mask] = itemsize;
    publish_tail(h, tail + n);
    return (int64_t)n;
}

/* ---- consumer side ---- */

/* Filled slots as the consumer sees them, reloading prod_tail only when the
 * cached copy says there are fewer than `want`; checked as in
 * producer_room. */
static uint64_t consumer_avail(struct rb_handle *h, uint64_t want)
{
    uint64_t avail = h->cached_tail - h->head;
    if (avail < want && !h->corrupt) {
        /* Acquire: pairs with publish_tail's release of prod_tail. */
        uint64_t tail = __atomic_load_n(&h->hdr->prod_tail, __ATOMIC_ACQUIRE);
        if (tail - h->head > h->mask + 1) {   /* behind the head, or too far ahead */
            h->corrupt = 1;
            return 0;
        }
        h->cached_tail = tail;
        avail = tail - h->head;
    }
    return avail;
}

static void publish_head(struct rb_handle *h, uint64_t head)
{
    /* Release: pairs with producer_room's acquire of cons_head; the slots
     * just read may now be overwritten. */
    h->head = head;
    __atomic_store_n(&h->hdr->cons_head, head, __ATOMIC_RELEASE);
    /* Dekker pairing with the producer's sleep path, as in publish_tail. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->hdr->prod_sleep, __ATOMIC_RELAXED))
        wake_word(h, &h->hdr->prod_sleep);
}

int rb_peek(struct rb_handle *h, const uint8_t **slot)
{
    if (h->closed)
        return RB_ECLOSED;
    if (h->corrupt)
        return RB_ECORRUPT;
    if (consumer_avail(h, 1) == 0)
        return h->corrupt ? RB_ECORRUPT : peer_closed(h) ? RB_ECLOSED : RB_EEMPTY;
    uint64_t i = h->head & h->mask;
    /* Read once: the peer may change it between a check and a use. */
    uint32_t len = __atomic_load_n(&h->lens[i], __ATOMIC_RELAXED);
    if (len > h->slot_size) {
        h->corrupt = 1;
        return RB_ECORRUPT;
    }
    *slot = h->slots + i * h->slot_size;
    return (int)len;
}

int rb_consume(struct rb_handle *h, uint64_t n)
{
    if (h->closed)
        return RB_ECLOSED;
    if (h->corrupt)
        return RB_ECORRUPT;
    /* Only what rb_peek (or an earlier wait) has seen can be consumed. */
    if (h->cached_tail - h->head < n)
        return RB_EINVAL;
    publish_head(h, h->head + n);
    return RB_OK;
}

static int try_pop(struct rb_handle *h, void *out, uint32_t out_size)
{
    const uint8_t *slot;
    int len = rb_peek(h, &slot);
    if (len < 0)
        return len;
    if ((uint32_t)len > out_size)
        return RB_EINVAL;
    memcpy(out, slot, (size_t)len);
    publish_head(h, h->head + 1);
    return len;
}

/* How many of at most max_n messages a batch pop may take now (> 0), or
 * what it returns instead: 0 (empty) or an error. */
static int64_t pop_avail(struct rb_handle *h, uint64_t max_n)
{
    if (h->closed)
        return RB_ECLOSED;
    if (h->corrupt)
        return RB_ECORRUPT;
    uint64_t n = consumer_avail(h, max_n);
    if (h->corrupt)
        return RB_ECORRUPT;
    if (n > max_n)
        n = max_n;
    if (n == 0)
        return (max_n > 0 && peer_closed(h)) ? RB_ECLOSED : 0;
    return (int64_t)n;
}

int64_t rb_pop_many(struct rb_handle *h, void *dst, uint64_t max_n,
                    uint32_t itemsize)
{
    if (!h->closed && !h->corrupt && (itemsize > h->slot_size || itemsize == 0))
        return RB_EINVAL;
    int64_t avail = pop_avail(h, max_n);
    if (avail <= 0)
        return avail;
    uint64_t head = h->head, n = (uint64_t)avail;
    uint8_t *outp = dst;
    uint64_t first = head & h->mask;
    if (itemsize == h->slot_size) {
        uint64_t upto_end = h->mask + 1 - first;
        uint64_t a = n < upto_end ? n : upto_end;
        memcpy(outp, h->slots + first * h->slot_size, a * itemsize);
        if (n > a)
            memcpy(outp + a * itemsize, h->slots, (n - a) * itemsize);
    } else {
        for (uint64_t k = 0; k < n; k++)
            memcpy(outp + k * itemsize,
                   h->slots + ((first + k) & h->mask) * h->slot_size, itemsize);
    }
    publish_head(h, head + n);
    return (int64_t)n;
}

int64_t rb_pop_whole(struct rb_handle *h, void *dst, uint64_t max_n)
{
    int64_t avail = pop_avail(h, max_n);
    if (avail <= 0)
        return avail;
    uint64_t head = h->head, n = (uint64_t)avail;
    uint8_t *outp = dst;
    uint64_t k = 0;
    for (; k < n; k++) {
        uint64_t i = (head + k) & h->mask;
        /* Read once: the peer may change it between a check and a use. */
        uint32_t len = __atomic_load_n(&h->lens[i], __ATOMIC_RELAXED);
        if (len > h->slot_size) {
            h->corrupt = 1;
            return RB_ECORRUPT;
        }
        if (len != h->slot_size)
            break;              /* a short message: rb_pop's to give, as it is */
        memcpy(outp + k * h->slot_size, h->slots + i * h->slot_size, h->slot_size);
    }
    if (k)
        publish_head(h, head + k);
    return (int64_t)k;
}

/* ---- waiting ---- */

/* Ready for `what`; a corrupt ring counts as ready: a waiter wakes to its
 * error. */
static int ready(struct rb_handle *h, int32_t what)
{
    uint64_t n = what == RB_WAIT_DATA ? consumer_avail(h, 1) : producer_room(h, 1);
    return n > 0 || h->corrupt;
}

/* Adaptive spin, after a wait that had to sleep (`waited`: until the data or
 * room came). A spin pays only when the peer answers within it; spinning
 * otherwise takes a CPU that, on a small machine, the peer itself or the
 * program it starts may need (a client waiting on a spawn and on an exit
 * burned ~30 µs of CPU per spawn that way). So: an answer that came within
 * spin_ns would have been caught by a full spin -- spin fully next time; a
 * later one means the spin was wasted -- halve the next spin, down to none
 * after a few. A wait caught by the spin leaves it as it is. */
static void adapt_spin(struct rb_handle *h, int64_t waited)
{
    if (waited <= h->spin_ns)
        h->spin_next = h->spin_ns;
    else if ((h->spin_next /= 2) < 1000)
        h->spin_next = 0;
}

int rb_wait(struct rb_handle *h, int32_t what, int64_t timeout_ns, int32_t spin)
{
    if (h->closed)
        return RB_ECLOSED;
    if (what != RB_WAIT_DATA && what != RB_WAIT_SPACE)
        return RB_EINVAL;
    int64_t start = now_ns();
    int64_t deadline = (timeout_ns < 0 || timeout_ns > INT64_MAX - start)
                           ? INT64_MAX
                           : start + timeout_ns;
    uint32_t *word = what == RB_WAIT_DATA ? &h->hdr->cons_sleep
                                          : &h->hdr->prod_sleep;

    /* Spin phase (first call of a wait only): the common case is a peer
     * that answers within a few µs; sleeping would cost a futex round trip
     * and a scheduler wake-up. How long: see adapt_spin. */
    int64_t spin_for = h->spin_next < h->spin_ns ? h->spin_next : h->spin_ns;
    int64_t spin_end = spin ? start + spin_for : start;
    if (spin_end > deadline)
        spin_end = deadline;
    for (unsigned k = 0;; k++) {
        if (ready(h, what))
            return h->corrupt ? RB_ECORRUPT : RB_OK;
        if (peer_closed(h))
            return RB_ECLOSED;
        if (spin_end <= start || ((k & 63) == 63 && now_ns() >= spin_end))
            break;
        cpu_relax();
    }

    /* One sleep slice. Relaxed store + seq_cst fence + re-check: the Dekker
     * pairing with publish_tail/publish_head (see the top of this file). */
    __atomic_store_n(word, RB_SLEEP_FUTEX, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int rc = RB_EAGAIN;
    int64_t now = now_ns();
    if (ready(h, what)) {
        rc = RB_OK;
    } else if (peer_closed(h)) {
        rc = RB_ECLOSED;
    } else if (!(spin && deadline - now > h->slice_ns) && !rb_peer_alive(h)) {
        /* Liveness costs a poll() on the peer's pidfd -- a system call, ~10
         * µs on a VM -- and a wait usually ends in its first slice. So the
         * first slice of a wait that lasts longer than one slice skips it:
         * a dead peer is seen one slice later. A wait that ends within its
         * first slice still checks, so it never times out on a dead peer. */
        rc = RB_EPEERDIED;
    } else if (now >= deadline) {
        rc = what == RB_WAIT_DATA ? RB_EEMPTY : RB_EFULL;
    } else {
        int64_t slice = deadline - now;
        if (slice > h->slice_ns)
            slice = h->slice_ns;
        struct timespec ts = {.tv_sec = slice / 1000000000LL,
                              .tv_nsec = slice % 1000000000LL};
        /* Shared (non-PRIVATE) futex: the word lives in a MAP_SHARED segment
         * and the waker is another process. Returns at once (EAGAIN) if the
         * waker already cleared the word. */
        long r = syscall(SYS_futex, word, FUTEX_WAIT, RB_SLEEP_FUTEX, &ts, NULL, 0);
        if (r < 0 && errno == EINTR)
            rc = RB_EINTR;
        else if (ready(h, what))
            rc = RB_OK;
    }
    __atomic_store_n(word, 0, __ATOMIC_RELAXED);
    if (spin)
        adapt_spin(h, rc == RB_OK ? now_ns() - start : INT64_MAX);
    return rc == RB_OK && h->corrupt ? RB_ECORRUPT : rc;
}

int rb_ready(struct rb_handle *h, int32_t what)
{
    if (h->closed)
        return RB_ECLOSED;
    return ready(h, what) || peer_closed(h);
}

int rb_arm(struct rb_handle *h, int32_t what)
{
    if (h->closed)
        return RB_ECLOSED;
    /* The sleep path of rb_wait, minus the sleep: the caller sleeps on its
     * doorbell instead. Same Dekker pairing with publish_tail/publish_head. */
    rb_arm_mark(h, what);
    rb_arm_fence();
    return rb_arm_check(h, what);
}

void rb_arm_mark(struct rb_handle *h, int32_t what)
{
    if (h->closed)
        return;
    uint32_t *word = what == RB_WAIT_DATA ? &h->hdr->cons_sleep : &h->hdr->prod_sleep;
    __atomic_store_n(word, RB_SLEEP_DOORBELL, __ATOMIC_RELAXED);
}

void rb_arm_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int rb_arm_check(struct rb_handle *h, int32_t what)
{
    if (h->closed)
        return RB_ECLOSED;
    if (rb_ready(h, what)) {
        uint32_t *word = what == RB_WAIT_DATA ? &h->hdr->cons_sleep : &h->hdr->prod_sleep;
        __atomic_store_n(word, 0, __ATOMIC_RELAXED);
        return 1;
    }
    return 0;
}

void rb_disarm(struct rb_handle *h, int32_t what)
{
    if (h->closed)
        return;
    uint32_t *word = what == RB_WAIT_DATA ? &h->hdr->cons_sleep : &h->hdr->prod_sleep;
    /* Relaxed: a producer that still sees 2 rings a doorbell nobody needs,
     * which costs one spurious wake-up and nothing else. */
    __atomic_store_n(word, 0, __ATOMIC_RELAXED);
}

void rb_set_doorbell(struct rb_handle *h, int32_t fd)
{
    h->doorbell_fd = fd;
}

/* ---- single-message operations (never wait: callers loop on rb_wait) ---- */

int rb_push(struct rb_handle *h, const void *data, uint32_t len)
{
    return try_push(h, data, len);
}

int rb_pop(struct rb_handle *h, void *out, uint32_t out_size)
{
    return try_pop(h, out, out_size);
}

int64_t rb_room(struct rb_handle *h, uint64_t want)
{
    if (h->closed)
        return RB_ECLOSED;
    uint64_t room = producer_room(h, want);
    return h->corrupt ? RB_ECORRUPT : (int64_t)room;
}

int64_t rb_push_all(struct rb_handle *h, const void *src, uint64_t n, uint32_t itemsize)
{
    int64_t room = rb_room(h, n);
    if (room < 0)
        return room;
    if ((uint64_t)room < n)
        return 0;
    /* Only this side produces: the room seen can only grow until it pushes. */
    return rb_push_many(h, src, n, itemsize);
}

uint64_t rb_len(const struct rb_handle *h)
{
    /* Acquire both: a snapshot for reporting; it may be stale the moment it
     * returns, but it is never more than capacity. */
    uint64_t head = __atomic_load_n(&h->hdr->cons_head, __ATOMIC_ACQUIRE);
    uint64_t tail = __atomic_load_n(&h->hdr->prod_tail, __ATOMIC_ACQUIRE);
    uint64_t n = tail - head;
    return n > h->mask + 1 ? h->mask + 1 : n;
}
