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
 *   wait(timeout)  arm every ring, sleep on the epoll descriptor if none is
 *                  ready, disarm, serve in C what the core can serve, wake
 *                  who was answered, and return which peers have something
 *                  left for Python and which watched descriptors fired. A
 *                  peer whose answers wait in the core's outbox (its ring
 *                  was full) is waited on for room in that ring, not for
 *                  its requests (loop.py says why).
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

/* A peer's state in a pass (RingSet.space[i]). */
#define WAITS_ROOM 1    /* its answers wait in the core's outbox: wait for room */
#define MORE_FOR_C 2    /* the core stopped at its budget in front of more it serves */

typedef struct {
    PyObject_HEAD
    int epoll_fd;
    int doorbell_fd;            /* an event on it is only a wake-up */
    PyObject *core;             /* _core.Core */
    PyObject *rings;            /* tuple of (inbound Ring, outbound Ring, kind, key) */
    struct rb_handle **in, **out;
    int *kind;
    uint32_t *key;
    uint8_t *space;             /* per peer, for wait(): WAITS_ROOM, MORE_FOR_C */
    Py_ssize_t n;
    int interrupted;            /* interrupt() was called: return to Python */
    unsigned long long sleeps;  /* times wait() slept */
    unsigned long long served;  /* messages the core served in C */
    long long looked_ns;        /* when epoll was last asked (CLOCK_MONOTONIC) */
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
    self->in = self->out = NULL;
    self->space = NULL;
    self->kind = NULL;
    self->key = NULL;
    self->n = 0;
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
    self->sleeps = self->served = 0;
    return 0;
}

static void ringset_dealloc(RingSetObject *self)
{
    ringset_free_handles(self);
    Py_XDECREF(self->core);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set(peers): [(inbound Ring, outbound Ring, kind, key), ...] in visiting order. */
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
    if (in == NULL || out == NULL || space == NULL || kind == NULL || key == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(rings, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 4) {
            PyErr_SetString(PyExc_TypeError, "set() takes (inbound, outbound, kind, key) tuples");
            goto fail;
        }
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
    }
    ringset_free_handles(self);
    self->rings = rings;
    self->in = in;
    self->out = out;
    self->space = space;
    self->kind = kind;
    self->key = key;
    self->n = n;
    Py_RETURN_NONE;
fail:
    PyMem_Free(in);
    PyMem_Free(out);
    PyMem_Free(space);
    PyMem_Free(kind);
    PyMem_Free(key);
    Py_DECREF(rings);
    return NULL;
}

/* Which ring of peer i the manager waits on, and for what. */
static inline struct rb_handle *waited(RingSetObject *self, Py_ssize_t i,
                                       const uint8_t *space, int32_t *what)
{
    *what = space[i] & WAITS_ROOM ? RB_WAIT_SPACE : RB_WAIT_DATA;
    return space[i] & WAITS_ROOM ? self->out[i] : self->in[i];
}

/* Peer i has something for the loop: what it waits on is ready, or either
 * ring broke (a corrupt ring, its answers' too, found while sending: the
 * loop drops the peer -- procmgr/manager/channel.py). A handle closed by this
 * process counts as ready too: visiting it is how the loop finds out
 * (Closed). */
static int peer_ready(RingSetObject *self, Py_ssize_t i, const uint8_t *space)
{
    int32_t what;
    struct rb_handle *h = waited(self, i, space, &what);
    return rb_ready(h, what) != 0 || self->in[i]->corrupt || self->out[i]->corrupt;
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
    for (Py_ssize_t i = 0; i < self->n; i++) {
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

/* Serve in C what the core can serve from every peer with data (not one
 * that waits for room), SERVE_BUDGET each (MORE_FOR_C if it used it all).
 * The number served, or -1 with an exception set. */
static Py_ssize_t serve_ready(RingSetObject *self, uint8_t *space)
{
    Py_ssize_t served = 0;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        space[i] &= (uint8_t)~MORE_FOR_C;
        if ((space[i] & WAITS_ROOM) || rb_ready(self->in[i], RB_WAIT_DATA) == 0)
            continue;
        Py_ssize_t k = core_serve(self->core, self->kind[i], self->key[i], self->in[i]);
        if (k < 0)
            return -1;
        if (k == SERVE_BUDGET)
            space[i] |= MORE_FOR_C;
        served += k;
    }
    self->served += (unsigned long long)served;
    return served;
}

static void wake_all(RingSetObject *self)
{
    for (Py_ssize_t i = 0; i < self->n; i++)
        rb_wake_consumer(self->out[i]);
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
    Py_ssize_t n = self->n;
    uint8_t *space = self->space;     /* allocated by set(): none per pass */
    struct epoll_event events[MAX_EVENTS];
    int nev = 0;
    /* However long the core serves without Python, the call returns by the
     * timeout: the loop's caller has its own rounds to make (handshake
     * deadlines), as it had before serving was C. */
    long long start = mono_ns();
again:
    /* A peer whose answers do not fit is not read from: wait for it to
     * make room, not for its requests, which may already be waiting --
     * armed for them, the loop would never sleep. */
    for (Py_ssize_t i = 0; i < n; i++)
        space[i] = (uint8_t)core_backlogged(self->core, self->kind[i], self->key[i]);

    /* Arm every ring; one found ready cancels the sleep (ready_list then
     * looks at the others). */
    Py_ssize_t armed = 0;
    int any_ready = 0;
    for (Py_ssize_t i = 0; i < n && !any_ready; i++) {
        int32_t what;
        struct rb_handle *h = waited(self, i, space, &what);
        if (rb_arm(h, what) != 0 || self->in[i]->corrupt || self->out[i]->corrupt)
            any_ready = 1;
        armed = i + 1;
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
    } else if (now - self->looked_ns >= LOOK_NS) {
        /* Rings kept us from sleeping: look at the rest without waiting. */
        nev = epoll_wait(self->epoll_fd, events, MAX_EVENTS, 0);
        err = errno;
        self->looked_ns = now;
    }
    for (Py_ssize_t i = 0; i < armed; i++) {
        int32_t what;
        struct rb_handle *h = waited(self, i, space, &what);
        rb_disarm(h, what);
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
    Py_ssize_t served = serve_ready(self, space);
    if (served < 0)
        return NULL;
    if (served > 0)
        wake_all(self);
    /* Served something, or woken by the doorbell alone for nothing (a
     * producer's stale wake -- or a peer ringing it on purpose, thousands
     * of times a second: each would cost a pass of Python): */
    if (served > 0 || nev > 0) {
        /* Nothing left for Python, no descriptor but the doorbell fired, and
         * nobody asked for Python: sleep again right here. */
        int others = 0;
        for (int k = 0; k < nev; k++)
            if (events[k].data.fd != self->doorbell_fd)
                others = 1;
        int left = 0;
        for (Py_ssize_t i = 0; i < n && !left; i++)
            left = peer_ready(self, i, space);
        long long spent_ns = mono_ns() - start;
        if (!others && timeout_ms != 0 &&
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
                goto again;
            }
        }
    }
    __atomic_store_n(&self->interrupted, 0, __ATOMIC_RELEASE);
    PyObject *ready = ready_list(self, space);
    if (ready == NULL)
        return NULL;
    PyObject *fired = PyList_New(0);
    if (fired == NULL) {
        Py_DECREF(ready);
        return NULL;
    }
    for (int k = 0; k < nev; k++) {
        if (events[k].data.fd == self->doorbell_fd)
            continue;
        PyObject *ev = Py_BuildValue("(iI)", events[k].data.fd, events[k].events);
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
