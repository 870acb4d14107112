/*
 * The manager loop's ring work in C: which peers have something, serving
 * what the core can serve straight from the rings, sleeping until a peer
 * has something, and waking the peers a pass answered.
 *
 * Why: a spawn + wait wakes the manager three times, and two of those
 * wake-ups are on the path the client waits on. Timed inside the manager
 * (docs/performance.md, "Spawn"), each wake-up ran ~46 us of Python around
 * the ~17 us its handler needed: disarming every ring, visiting every
 * peer's channel to find the one with a message, an empty pass to make
 * sure, listing what to wait for and arming every ring again. Here it is
 * one call per pass.
 * Since the core's handlers are C too (handlers.c, reached from the rings
 * through core_serve in serve.c), a one-slot message is handled here
 * without Python at all, and a pass that leaves nothing for Python goes
 * back to sleep without returning.
 *
 * RingSet holds, in the loop's visiting order, each peer's inbound ring
 * (the manager consumes it) and outbound ring (the manager produces it),
 * as the ringbuf.Ring objects, with the peer's kind and key (core or
 * client id) in the core: it keeps the rings alive, so their handles are
 * valid for as long as it may use them (a closed Ring's handle refuses
 * every call).
 *
 *   wait(timeout)  arm the rings of the peers to look at, sleep on the
 *                  epoll descriptor if none is ready, serve in C what the
 *                  core can serve, wake who was answered, and return which
 *                  peers have something left for Python and which watched
 *                  descriptors fired. A peer whose answers wait in the
 *                  core's outbox (its ring was full) is waited on for room
 *                  in that ring, not for its requests (loop.py says why).
 *
 * Which peers a pass looks at: a peer with a doorbell of its own (an
 * eventfd it rings, in the epoll set: every client and worker of the
 * manager process) is looked at when it rang, and in the pass after it was
 * busy, and then stays armed: an idle one costs a pass nothing. Every 100
 * ms all are looked at anyway (a peer writes its ring's sleep word, and a
 * lie there must not leave it unheard for good). A peer without one (the
 * in-process runtime's, pumped without sleeping) is looked at in every
 * pass. With 1,000 idle clients connected the manager's CPU per request
 * was ~1.5x that with none when every pass armed every ring; it is ~1.05x
 * now (docs/performance.md, "Scale").
 *   wake()         rb_wake_consumer on every outbound ring: each rings its
 *                  peer only if something was published since its last
 *                  wake (ringbuf/_ring.h, "Batched wakes").
 *   interrupt()    make a wait() in progress return to Python (stop, a
 *                  call from another thread); safe from any thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/epoll.h>

#include <time.h>
#include <unistd.h>

#include "_core.h"

#define MAX_EVENTS 64
/* Liveness under load: however busy the rings keep the loop, the other
 * descriptors (the socket, worker and client pidfds, the child watch) are
 * looked at least this often, and Python (handshake deadlines, messages
 * only it decodes) gets its turn at least this often. */
#define LOOK_NS 2000000LL
#define SERVE_SLICE_NS 2000000LL

/* A peer with a doorbell of its own is looked at only when it rang, or
 * was busy lately; all of them are looked at this often anyway, in case a
 * ring (its sleep word is the peer's to write) said nothing. */
#define SWEEP_NS 100000000LL

/* A peer's state (RingSet.space[i]). */
#define WAITS_ROOM 1    /* its answers wait in the core's outbox: wait for room */
#define MORE_FOR_C 2    /* the core stopped at its budget in front of more it serves */
#define VISIT 4         /* looked at in this pass (own doorbell: rang, or busy lately) */
#define NEXT 8          /* to be looked at in the next pass */

typedef struct {
    PyObject_HEAD
    int epoll_fd;
    int doorbell_fd;            /* an event on it is only a wake-up */
    PyObject *core;             /* _core.Core */
    PyObject *rings;            /* tuple of (inbound Ring, outbound Ring, kind, key, doorbell) */
    struct rb_handle **in, **out;
    int *kind;
    uint32_t *key;
    int *bell;                  /* its own doorbell, or -1: looked at in every pass */
    uint8_t *space;             /* per peer: WAITS_ROOM, MORE_FOR_C, VISIT, NEXT */
    Py_ssize_t n;
    Py_ssize_t *visit;          /* the peers looked at in this pass (VISIT set) */
    Py_ssize_t nvisit;
    Py_ssize_t *next_;          /* the peers to look at in the next (NEXT set) */
    Py_ssize_t nnext;
    Py_ssize_t *shared;         /* the peers with no doorbell of their own */
    Py_ssize_t nshared;
    uint8_t *armed_empty;       /* per visit entry: armed and found empty this pass */
    Py_ssize_t *bell_peer;      /* doorbell fd -> peer, -1; nbell entries */
    int nbell;
    int any_waits_room;         /* some peer has WAITS_ROOM set */
    long long swept_ns;         /* when every peer was last looked at */
    int interrupted;            /* interrupt() was called: return to Python */
    unsigned long long sleeps;  /* times wait() slept */
    unsigned long long served;  /* messages the core served in C */
    unsigned long long looked;  /* peers looked at, over all passes */
    long long looked_ns;        /* when epoll was last asked (CLOCK_MONOTONIC) */
    size_t turn;                /* passes served: where the next one starts */
} RingSetObject;

static long long mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void ringset_free_handles(RingSetObject *self)
{
    PyMem_Free(self->in);
    PyMem_Free(self->out);
    PyMem_Free(self->space);
    PyMem_Free(self->kind);
    PyMem_Free(self->key);
    PyMem_Free(self->bell);
    PyMem_Free(self->visit);
    PyMem_Free(self->next_);
    PyMem_Free(self->shared);
    PyMem_Free(self->armed_empty);
    PyMem_Free(self->bell_peer);
    self->in = self->out = NULL;
    self->space = NULL;
    self->kind = NULL;
    self->key = NULL;
    self->bell = NULL;
    self->visit = self->next_ = self->shared = NULL;
    self->armed_empty = NULL;
    self->bell_peer = NULL;
    self->n = self->nvisit = self->nnext = self->nshared = 0;
    self->nbell = 0;
    Py_CLEAR(self->rings);
}

static int ringset_init(RingSetObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"epoll_fd", "doorbell_fd", "core", NULL};
    PyObject *core;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiO", kwlist, &self->epoll_fd,
                                     &self->doorbell_fd, &core))
        return -1;
    if (!core_check(core)) {
        PyErr_Format(PyExc_TypeError, "RingSet serves a Core, not %R", Py_TYPE(core));
        return -1;
    }
    ringset_free_handles(self);
    Py_XSETREF(self->core, Py_NewRef(core));
    self->sleeps = self->served = self->looked = 0;
    return 0;
}

static void ringset_dealloc(RingSetObject *self)
{
    ringset_free_handles(self);
    Py_XDECREF(self->core);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set(peers): [(inbound Ring, outbound Ring, kind, key, doorbell), ...] in
 * visiting order; doorbell: the peer's own eventfd (registered in the epoll
 * set by the caller), or -1 for a peer that rings the shared one. */
static PyObject *ringset_set(RingSetObject *self, PyObject *pairs)
{
    PyObject *rings = PySequence_Tuple(pairs);
    if (rings == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(rings);
    struct rb_handle **in = PyMem_Calloc((size_t)n + 1, sizeof *in);
    struct rb_handle **out = PyMem_Calloc((size_t)n + 1, sizeof *out);
    uint8_t *space = PyMem_Calloc((size_t)n + 1, 1);
    int *kind = PyMem_Calloc((size_t)n + 1, sizeof *kind);
    uint32_t *key = PyMem_Calloc((size_t)n + 1, sizeof *key);
    int *bell = PyMem_Calloc((size_t)n + 1, sizeof *bell);
    Py_ssize_t *visit = PyMem_Calloc((size_t)n + 1, sizeof *visit);
    Py_ssize_t *next_ = PyMem_Calloc((size_t)n + 1, sizeof *next_);
    Py_ssize_t *shared = PyMem_Calloc((size_t)n + 1, sizeof *shared);
    uint8_t *armed_empty = PyMem_Calloc((size_t)n + 1, 1);
    Py_ssize_t *bell_peer = NULL, nshared = 0;
    int nbell = 0;
    if (in == NULL || out == NULL || space == NULL || kind == NULL || key == NULL ||
        bell == NULL || visit == NULL || next_ == NULL || shared == NULL || armed_empty == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(rings, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) < 4 || PyTuple_GET_SIZE(pair) > 5) {
            PyErr_SetString(PyExc_TypeError,
                            "set() takes (inbound, outbound, kind, key[, doorbell]) tuples");
            goto fail;
        }
        bell[i] = PyTuple_GET_SIZE(pair) == 5 ? (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 4)) : -1;
        if (bell[i] < -1 || bell[i] > (1 << 24)) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "peer %zd: doorbell %d is not a descriptor", i,
                             bell[i]);
            goto fail;
        }
        if (bell[i] >= nbell)
            nbell = bell[i] + 1;
        kind[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(pair, 2));
        unsigned long k = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(pair, 3));
        if (PyErr_Occurred())
            goto fail;
        if ((kind[i] != PEER_CLIENT && kind[i] != PEER_SPAWND) || k > UINT32_MAX) {
            PyErr_Format(PyExc_ValueError, "peer %zd: kind %d key %lu: a kind is PEER_CLIENT "
                         "or PEER_SPAWND, a key 32 bits", i, kind[i], k);
            goto fail;
        }
        key[i] = (uint32_t)k;
        if ((in[i] = rb_handle_of(PyTuple_GET_ITEM(pair, 0))) == NULL ||
            (out[i] = rb_handle_of(PyTuple_GET_ITEM(pair, 1))) == NULL)
            goto fail;
        space[i] = NEXT;          /* every peer is looked at (and armed) first */
        next_[i] = i;
        if (bell[i] < 0)
            shared[nshared++] = i;
    }
    if (nbell > 0) {
        bell_peer = PyMem_Malloc((size_t)nbell * sizeof *bell_peer);
        if (bell_peer == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (int f = 0; f < nbell; f++)
            bell_peer[f] = -1;
        for (Py_ssize_t i = 0; i < n; i++)
            if (bell[i] >= 0)
                bell_peer[bell[i]] = i;
    }
    ringset_free_handles(self);
    self->rings = rings;
    self->in = in;
    self->out = out;
    self->space = space;
    self->kind = kind;
    self->key = key;
    self->bell = bell;
    self->visit = visit;
    self->next_ = next_;
    self->nnext = n;
    self->shared = shared;
    self->nshared = nshared;
    self->armed_empty = armed_empty;
    self->bell_peer = bell_peer;
    self->nbell = nbell;
    self->n = n;
    self->any_waits_room = 0;
    Py_RETURN_NONE;
fail:
    PyMem_Free(in);
    PyMem_Free(out);
    PyMem_Free(space);
    PyMem_Free(kind);
    PyMem_Free(key);
    PyMem_Free(bell);
    PyMem_Free(visit);
    PyMem_Free(next_);
    PyMem_Free(shared);
    PyMem_Free(armed_empty);
    PyMem_Free(bell_peer);
    Py_DECREF(rings);
    return NULL;
}

/* Which ring of peer i the manager waits on, and for what. Two functions
 * of no side effect, not one with an out-parameter: as
 * f(waited(..., &what), what), the order C evaluates arguments in is
 * unspecified, and the build read `what` first -- a peer waiting for room
 * was armed for data on its answers' ring, the room it made woke nobody,
 * and a long spawn's next piece waited for the loop's 1 s timeout. */
static inline struct rb_handle *waited(RingSetObject *self, Py_ssize_t i,
                                       const uint8_t *space)
{
    return space[i] & WAITS_ROOM ? self->out[i] : self->in[i];
}

static inline int32_t waited_for(const uint8_t *space, Py_ssize_t i)
{
    return space[i] & WAITS_ROOM ? RB_WAIT_SPACE : RB_WAIT_DATA;
}

/* Peer i has something for the loop: what it waits on is ready, or either
 * ring broke (a corrupt ring, its answers' too, found while sending: the
 * loop drops the peer -- procmgr/manager/channel.py). A handle closed by this
 * process counts as ready too: visiting it is how the loop finds out
 * (Closed). */
static int peer_ready(RingSetObject *self, Py_ssize_t i, const uint8_t *space)
{
    return rb_ready(waited(self, i, space), waited_for(space, i)) != 0 ||
           self->in[i]->corrupt || self->out[i]->corrupt;
}

/* The indexes of the ready peers, for Python. Data found stays until the
 * manager takes it, so a ring that was ready while being armed still is.
 * Not a peer the core left at its budget in front of more it serves: the
 * next wait() serves that in C, in turn with the others -- handed to
 * Python, a batch of it would be decoded there at several times the cost,
 * and every other peer wait behind it (a flooding client did that to the
 * others' latency: bench/fairness.py). */
static PyObject *ready_list(RingSetObject *self, const uint8_t *space)
{
    PyObject *ready = PyList_New(0);
    if (ready == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < self->nvisit; k++) {
        Py_ssize_t i = self->visit[k];
        int more_for_c = (space[i] & MORE_FOR_C) && !self->in[i]->corrupt &&
                         !self->out[i]->corrupt;
        if (!more_for_c && peer_ready(self, i, space)) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(ready, index) < 0) {
                Py_XDECREF(index);
                Py_DECREF(ready);
                return NULL;
            }
            Py_DECREF(index);
        }
    }
    return ready;
}

/* Serve in C what the core can serve from every peer looked at with data
 * (not one that waits for room), SERVE_BUDGET each (MORE_FOR_C if it used
 * it all). The number served, or -1 with an exception set. */
/* Each pass starts at another place in the list, serving and waking: in a
 * fixed order the peers served first every pass are answered first every
 * pass, and with 256 busy clients the first connected got ~25% more done
 * than the last (docs/performance.md, "Many active clients"). Not where
 * peers share the loop's doorbell -- the in-process runtime, whose tests
 * script every interleaving and count on the order peers joined in. */
static Py_ssize_t first_of(RingSetObject *self, Py_ssize_t n)
{
    return (n == 0 || self->nshared != 0) ? 0 : (Py_ssize_t)(self->turn % (size_t)n);
}

static Py_ssize_t serve_ready(RingSetObject *self, uint8_t *space)
{
    Py_ssize_t served = 0;
    Py_ssize_t first = first_of(self, self->nvisit);
    for (Py_ssize_t j = 0; j < self->nvisit; j++) {
        Py_ssize_t k = first + j < self->nvisit ? first + j : first + j - self->nvisit;
        Py_ssize_t i = self->visit[k];
        space[i] &= (uint8_t)~MORE_FOR_C;
        if ((space[i] & WAITS_ROOM) || rb_ready(self->in[i], RB_WAIT_DATA) == 0)
            continue;
        Py_ssize_t got = core_serve(self->core, self->kind[i], self->key[i], self->in[i]);
        if (got < 0)
            return -1;
        if (got == SERVE_BUDGET)
            space[i] |= MORE_FOR_C;
        served += got;
    }
    self->served += (unsigned long long)served;
    return served;
}

static void visit_add(RingSetObject *self, Py_ssize_t i)
{
    if (!(self->space[i] & VISIT)) {
        self->space[i] |= VISIT;
        self->visit[self->nvisit++] = i;
    }
}

static void next_add(RingSetObject *self, Py_ssize_t i)
{
    if (!(self->space[i] & NEXT)) {
        self->space[i] |= NEXT;
        self->next_[self->nnext++] = i;
    }
}

/* Start a pass: look at the peers carried over from the last one, every
 * peer without a doorbell of its own, and -- once per SWEEP_NS -- every
 * peer. A peer whose answers wait in the core's outbox waits for room in
 * its ring instead (WAITS_ROOM); a change of that is looked at too. */
static void begin_pass(RingSetObject *self)
{
    uint8_t *space = self->space;
    for (Py_ssize_t k = 0; k < self->nvisit; k++)
        space[self->visit[k]] &= (uint8_t)~VISIT;
    Py_ssize_t *t = self->visit;
    self->visit = self->next_;
    self->next_ = t;
    self->nvisit = 0;
    Py_ssize_t carried = self->nnext;
    self->nnext = 0;
    for (Py_ssize_t k = 0; k < carried; k++) {
        Py_ssize_t i = self->visit[k];
        space[i] &= (uint8_t)~NEXT;
        visit_add(self, i);
    }
    for (Py_ssize_t k = 0; k < self->nshared; k++)
        visit_add(self, self->shared[k]);
    long long now = mono_ns();
    if (now - self->swept_ns >= SWEEP_NS) {
        self->swept_ns = now;
        for (Py_ssize_t i = 0; i < self->n; i++)
            visit_add(self, i);
    }
    if (core_any_backlogged(self->core)) {
        self->any_waits_room = 1;
        for (Py_ssize_t i = 0; i < self->n; i++) {
            uint8_t room = (uint8_t)core_backlogged(self->core, self->kind[i], self->key[i]);
            if (room != (space[i] & WAITS_ROOM)) {
                space[i] = (uint8_t)((space[i] & ~WAITS_ROOM) | room);
                visit_add(self, i);
            }
        }
    } else if (self->any_waits_room) {
        self->any_waits_room = 0;
        for (Py_ssize_t i = 0; i < self->n; i++)
            if (space[i] & WAITS_ROOM) {
                space[i] &= (uint8_t)~WAITS_ROOM;
                visit_add(self, i);
            }
    }
}

/* End a pass: which of the peers looked at are looked at in the next one
 * too -- each that had something (served, rang, left for Python, past its
 * budget) or was not left armed. One that is armed and empty is not: it
 * rings its doorbell when it has something. armed_empty[k]: visit[k] was. */
static void end_pass(RingSetObject *self, const uint8_t *armed_empty)
{
    for (Py_ssize_t k = 0; k < self->nvisit; k++) {
        Py_ssize_t i = self->visit[k];
        if (self->bell[i] < 0)
            continue;                  /* looked at in every pass anyway */
        if (!armed_empty[k] || (self->space[i] & MORE_FOR_C) ||
            peer_ready(self, i, self->space))
            next_add(self, i);
    }
}

static void wake_all(RingSetObject *self)
{
    Py_ssize_t first = first_of(self, self->n);
    for (Py_ssize_t j = 0; j < self->n; j++)
        rb_wake_consumer(self->out[first + j < self->n ? first + j : first + j - self->n]);
    self->turn++;
}

/* wait(timeout) -> (ready peer indexes, [(fd, events), ...]) */
static PyObject *ringset_wait(RingSetObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "wait(timeout)");
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[0]);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    int timeout_ms = timeout < 0 ? -1 : timeout > 86400.0 ? 86400000 : (int)ceil(timeout * 1e3);
    uint8_t *space = self->space;     /* allocated by set(): none per pass */
    struct epoll_event events[MAX_EVENTS];
    int nev = 0;
    /* However long the core serves without Python, the call returns by the
     * timeout: the loop's caller has its own rounds to make (handshake
     * deadlines), as it had before serving was C. */
    long long start = mono_ns();
again:
    begin_pass(self);
    self->looked += (unsigned long long)self->nvisit;
    /* Arm the rings of the peers looked at, with one fence for them all
     * (rb_arm_mark, _fence, _check); one found ready cancels the sleep
     * (ready_list then looks at the others). A peer with a doorbell of its
     * own stays armed after the pass: it rings when it has something, and
     * is looked at again only then. */
    for (Py_ssize_t k = 0; k < self->nvisit; k++) {
        Py_ssize_t i = self->visit[k];
        rb_arm_mark(waited(self, i, space), waited_for(space, i));
    }
    rb_arm_fence();
    Py_ssize_t armed = self->nvisit;
    int any_ready = 0;
    for (Py_ssize_t k = 0; k < armed; k++) {
        Py_ssize_t i = self->visit[k];
        int ready = rb_arm_check(waited(self, i, space), waited_for(space, i)) != 0 ||
                    self->in[i]->corrupt || self->out[i]->corrupt;
        self->armed_empty[k] = !ready;
        any_ready |= ready;
    }
    int err = 0;
    nev = 0;
    long long now = mono_ns();
    if (!any_ready && !__atomic_load_n(&self->interrupted, __ATOMIC_ACQUIRE)) {
        Py_BEGIN_ALLOW_THREADS
        nev = epoll_wait(self->epoll_fd, events, MAX_EVENTS, timeout_ms);
        err = errno;
        Py_END_ALLOW_THREADS
        self->looked_ns = mono_ns();
        if (timeout_ms != 0)
            self->sleeps++;     /* a zero timeout only looked */
    } else if (now - self->looked_ns >= LOOK_NS || self->nshared < self->n) {
        /* Rings kept us from sleeping: look at the rest without waiting --
         * at once when peers ring doorbells of their own (they say who has
         * something), else every LOOK_NS. */
        nev = epoll_wait(self->epoll_fd, events, MAX_EVENTS, 0);
        err = errno;
        self->looked_ns = now;
    }
    /* The shared doorbell's peers are disarmed (armed again next pass);
     * those with their own stay armed. */
    for (Py_ssize_t k = 0; k < armed; k++) {
        Py_ssize_t i = self->visit[k];
        if (self->bell[i] < 0) {
            rb_disarm(waited(self, i, space), waited_for(space, i));
        }
    }
    if (nev < 0) {
        if (err != EINTR) {
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        nev = 0;
        if (PyErr_CheckSignals() < 0)   /* a handler raised (KeyboardInterrupt) */
            return NULL;
    }
    /* A peer's own doorbell: drained, and that peer looked at (it rang: its
     * ring is no longer armed). Everything else is Python's, but for the
     * shared doorbell, only a wake-up. */
    int others = 0, nfired = 0;
    struct epoll_event fired_ev[MAX_EVENTS];
    for (int k = 0; k < nev; k++) {
        int fd = events[k].data.fd;
        if (fd == self->doorbell_fd)
            continue;
        if (fd >= 0 && fd < self->nbell && self->bell_peer[fd] >= 0) {
            uint64_t count;
            ssize_t r = read(fd, &count, sizeof count);
            (void)r;              /* EAGAIN: drained already */
            Py_ssize_t i = self->bell_peer[fd];
            Py_ssize_t before = self->nvisit;
            visit_add(self, i);
            if (self->nvisit > before)
                self->armed_empty[before] = 0;
            else
                for (Py_ssize_t k2 = 0; k2 < armed; k2++)
                    if (self->visit[k2] == i)
                        self->armed_empty[k2] = 0;
            continue;
        }
        others = 1;
        fired_ev[nfired++] = events[k];
    }
    Py_ssize_t served = serve_ready(self, space);
    if (served < 0)
        return NULL;
    if (served > 0)
        wake_all(self);
    /* Served something, or woken by doorbells alone for nothing (a
     * producer's stale wake -- or a peer ringing it on purpose, thousands
     * of times a second: each would cost a pass of Python): */
    if (served > 0 || nev > 0) {
        /* Nothing left for Python, no descriptor but doorbells fired, and
         * nobody asked for Python (nor waits for an event recorded in
         * this pass): sleep again right here. */
        int left = 0;
        for (Py_ssize_t k = 0; k < self->nvisit && !left; k++)
            left = peer_ready(self, self->visit[k], space);
        long long spent_ns = mono_ns() - start;
        if (!others && timeout_ms != 0 && !core_events_due(self->core) &&
            !__atomic_load_n(&self->interrupted, __ATOMIC_ACQUIRE)) {
            /* A signal that came while serving runs its handler now, not
             * after a stretch of traffic that never needs Python. */
            if (PyErr_CheckSignals() < 0)
                return NULL;
            int remaining = timeout_ms;
            if (timeout_ms > 0) {
                long long spent = spent_ns / 1000000LL;
                remaining = spent >= timeout_ms ? 0 : timeout_ms - (int)spent;
            }
            /* Nothing left: sleep again right here. Something left (a peer
             * past its budget, SERVE_BUDGET): serve on, every peer in
             * turn, for one slice; then Python has its turn. */
            if (remaining != 0 && (!left || (served > 0 && spent_ns < SERVE_SLICE_NS)) &&
                !__atomic_load_n(&self->interrupted, __ATOMIC_ACQUIRE)) {
                timeout_ms = remaining;
                end_pass(self, self->armed_empty);
                goto again;
            }
        }
    }
    __atomic_store_n(&self->interrupted, 0, __ATOMIC_RELEASE);
    PyObject *ready = ready_list(self, space);
    if (ready == NULL)
        return NULL;
    end_pass(self, self->armed_empty);
    PyObject *fired = PyList_New(0);
    if (fired == NULL) {
        Py_DECREF(ready);
        return NULL;
    }
    for (int k = 0; k < nfired; k++) {
        PyObject *ev = Py_BuildValue("(iI)", fired_ev[k].data.fd, fired_ev[k].events);
        if (ev == NULL || PyList_Append(fired, ev) < 0) {
            Py_XDECREF(ev);
            Py_DECREF(ready);
            Py_DECREF(fired);
            return NULL;
        }
        Py_DECREF(ev);
    }
    return Py_BuildValue("(NN)", ready, fired);
}

/* interrupt(): a wait() in progress, or the next one, returns to Python. */
static PyObject *ringset_interrupt(RingSetObject *self, PyObject *unused)
{
    (void)unused;
    __atomic_store_n(&self->interrupted, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t w;
    Py_BEGIN_ALLOW_THREADS
    w = write(self->doorbell_fd, &one, sizeof one);
    Py_END_ALLOW_THREADS
    (void)w;     /* EAGAIN: the counter is full, so it is readable already */
    Py_RETURN_NONE;
}

static PyObject *ringset_wake(RingSetObject *self, PyObject *unused)
{
    (void)unused;
    wake_all(self);
    Py_RETURN_NONE;
}

static PyObject *ringset_get_sleeps(RingSetObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->sleeps);
}

static PyObject *ringset_get_served(RingSetObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->served);
}

static PyObject *ringset_get_looked(RingSetObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->looked);
}

static PyMethodDef ringset_methods[] = {
    {"set", (PyCFunction)ringset_set, METH_O,
     "set(peers): (inbound Ring, outbound Ring, kind, key) per peer, in visiting order"},
    {"wait", (PyCFunction)(void (*)(void))ringset_wait, METH_FASTCALL,
     "wait(timeout) -> (ready peer indexes, [(fd, events)]): arm, sleep if nothing is "
     "ready, disarm, serve what C can serve"},
    {"interrupt", (PyCFunction)ringset_interrupt, METH_NOARGS,
     "make wait() return to Python; safe from any thread"},
    {"wake", (PyCFunction)ringset_wake, METH_NOARGS,
     "wake every peer that was sent something since its last wake"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ringset_getset[] = {
    {"sleeps", (getter)ringset_get_sleeps, NULL, "how many times wait() slept (a zero timeout only looks)", NULL},
    {"served", (getter)ringset_get_served, NULL, "messages the core served straight from the rings", NULL},
    {"looked", (getter)ringset_get_looked, NULL, "peers looked at, over all passes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingSetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.manager._core.RingSet",
    .tp_doc = "RingSet(epoll_fd, doorbell_fd, core): the manager's peers' rings (see _loop.c).",
    .tp_basicsize = sizeof(RingSetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ringset_init,
    .tp_dealloc = (destructor)ringset_dealloc,
    .tp_methods = ringset_methods,
    .tp_getset = ringset_getset,
};

int loop_register(PyObject *module)
{
    if (PyType_Ready(&RingSetType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "RingSet", (PyObject *)&RingSetType);
}
