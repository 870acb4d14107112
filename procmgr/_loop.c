/*
 * The manager loop's ring work in C: which peers have something, sleeping
 * until one does, and waking the peers a pass answered.
 *
 * Why: a spawn + wait wakes the manager three times, and two of those
 * wake-ups are on the path the client waits on. Timed inside the manager
 * (README, "Spawn"), each wake-up ran ~46 us of Python around the ~17 us
 * its handler needed: disarming every ring, visiting every peer's channel
 * to find the one with a message, an empty pass to make sure, listing what
 * to wait for and arming every ring again -- a handful of calls per peer,
 * each slow with caches the programs just started had emptied. Here it is
 * one call per pass, and the Python that remains visits only the peers
 * that have something.
 *
 * RingSet holds, in the loop's visiting order, each peer's inbound ring
 * (the manager consumes it) and outbound ring (the manager produces it),
 * as the ringbuf.Ring objects: it keeps them alive, so their handles are
 * valid for as long as it may use them (a closed Ring's handle refuses
 * every call).
 *
 *   wait(timeout, space)  arm every ring, sleep on the epoll descriptor if
 *                         none is ready, disarm, and return which peers are
 *                         ready and which watched descriptors fired. A peer
 *                         whose index is in `space` has answers that did not
 *                         fit: the loop waits for room in its outbound ring,
 *                         not for its requests (loop.py says why).
 *   wake()                rb_wake_consumer on every outbound ring: each rings
 *                         its peer only if something was published since
 *                         its last wake (ringbuf/_ring.h, "Batched wakes").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/epoll.h>

#include "_ring.h"

#define MAX_EVENTS 64

typedef struct {
    PyObject_HEAD
    int epoll_fd;
    int doorbell_fd;            /* an event on it is only a wake-up */
    PyObject *rings;            /* tuple of (inbound Ring, outbound Ring) */
    struct rb_handle **in, **out;
    uint8_t *space;             /* per peer, for wait(): 1 if it waits for room */
    Py_ssize_t n;
    unsigned long long sleeps;  /* times wait() slept */
} RingSetObject;

static void ringset_free_handles(RingSetObject *self)
{
    PyMem_Free(self->in);
    PyMem_Free(self->out);
    PyMem_Free(self->space);
    self->in = self->out = NULL;
    self->space = NULL;
    self->n = 0;
    Py_CLEAR(self->rings);
}

static int ringset_init(RingSetObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"epoll_fd", "doorbell_fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii", kwlist, &self->epoll_fd,
                                     &self->doorbell_fd))
        return -1;
    ringset_free_handles(self);
    self->sleeps = 0;
    return 0;
}

static void ringset_dealloc(RingSetObject *self)
{
    ringset_free_handles(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static struct rb_handle *handle_of(PyObject *ring)
{
    PyObject *addr = PyObject_GetAttrString(ring, "handle_addr");
    if (addr == NULL)
        return NULL;
    struct rb_handle *h = PyLong_AsVoidPtr(addr);
    Py_DECREF(addr);
    if (h == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a ring with no handle");
    return h;
}

/* set(pairs): [(inbound Ring, outbound Ring), ...] in visiting order. */
static PyObject *ringset_set(RingSetObject *self, PyObject *pairs)
{
    PyObject *rings = PySequence_Tuple(pairs);
    if (rings == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(rings);
    struct rb_handle **in = PyMem_Calloc((size_t)n + 1, sizeof *in);
    struct rb_handle **out = PyMem_Calloc((size_t)n + 1, sizeof *out);
    uint8_t *space = PyMem_Calloc((size_t)n + 1, 1);
    if (in == NULL || out == NULL || space == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(rings, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "set() takes (inbound, outbound) ring pairs");
            goto fail;
        }
        if ((in[i] = handle_of(PyTuple_GET_ITEM(pair, 0))) == NULL ||
            (out[i] = handle_of(PyTuple_GET_ITEM(pair, 1))) == NULL)
            goto fail;
    }
    ringset_free_handles(self);
    self->rings = rings;
    self->in = in;
    self->out = out;
    self->space = space;
    self->n = n;
    Py_RETURN_NONE;
fail:
    PyMem_Free(in);
    PyMem_Free(out);
    PyMem_Free(space);
    Py_DECREF(rings);
    return NULL;
}

/* Which ring of peer i the manager waits on, and for what. */
static inline struct rb_handle *waited(RingSetObject *self, Py_ssize_t i,
                                       const uint8_t *space, int32_t *what)
{
    *what = space[i] ? RB_WAIT_SPACE : RB_WAIT_DATA;
    return space[i] ? self->out[i] : self->in[i];
}

/* The indexes of the ready peers. A handle closed by this process counts
 * as ready: visiting it is how the loop finds out (Closed). Data found
 * stays until the manager takes it, so a ring that was ready while being
 * armed still is. */
static PyObject *ready_list(RingSetObject *self, const uint8_t *space)
{
    PyObject *ready = PyList_New(0);
    if (ready == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        int32_t what;
        struct rb_handle *h = waited(self, i, space, &what);
        if (rb_ready(h, what) != 0) {
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

/* wait(timeout, space) -> (ready peer indexes, [(fd, events), ...]) */
static PyObject *ringset_wait(RingSetObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait(timeout, space)");
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[0]);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    int timeout_ms = timeout < 0 ? -1 : timeout > 86400.0 ? 86400000 : (int)ceil(timeout * 1e3);
    Py_ssize_t n = self->n;
    uint8_t *space = self->space;     /* allocated by set(): none per pass */
    if (n > 0)
        memset(space, 0, (size_t)n);
    PyObject *indexes = PyObject_GetIter(args[1]), *item;
    if (indexes == NULL)
        return NULL;
    while ((item = PyIter_Next(indexes)) != NULL) {
        Py_ssize_t i = PyLong_AsSsize_t(item);
        Py_DECREF(item);
        if (i < 0 || i >= n) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_IndexError, "space: no peer %zd", i);
            break;
        }
        space[i] = 1;
    }
    Py_DECREF(indexes);
    if (PyErr_Occurred())
        return NULL;

    /* Arm every ring; one found ready cancels the sleep (ready_list then
     * looks at the others). */
    Py_ssize_t armed = 0;
    int any_ready = 0;
    for (Py_ssize_t i = 0; i < n && !any_ready; i++) {
        int32_t what;
        struct rb_handle *h = waited(self, i, space, &what);
        if (rb_arm(h, what) != 0)
            any_ready = 1;
        else
            armed = i + 1;
    }
    struct epoll_event events[MAX_EVENTS];
    int nev = 0, err = 0;
    if (!any_ready) {
        Py_BEGIN_ALLOW_THREADS
        nev = epoll_wait(self->epoll_fd, events, MAX_EVENTS, timeout_ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (timeout_ms != 0)
            self->sleeps++;     /* a zero timeout only looked */
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

static PyObject *ringset_wake(RingSetObject *self, PyObject *unused)
{
    (void)unused;
    for (Py_ssize_t i = 0; i < self->n; i++)
        rb_wake_consumer(self->out[i]);
    Py_RETURN_NONE;
}

static PyObject *ringset_get_sleeps(RingSetObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->sleeps);
}

static PyMethodDef ringset_methods[] = {
    {"set", (PyCFunction)ringset_set, METH_O,
     "set(pairs): the peers' (inbound Ring, outbound Ring) pairs, in visiting order"},
    {"wait", (PyCFunction)(void (*)(void))ringset_wait, METH_FASTCALL,
     "wait(timeout, space) -> (ready peer indexes, [(fd, events)]): arm, sleep if "
     "nothing is ready, disarm"},
    {"wake", (PyCFunction)ringset_wake, METH_NOARGS,
     "wake every peer that was sent something since its last wake"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ringset_getset[] = {
    {"sleeps", (getter)ringset_get_sleeps, NULL, "how many times wait() slept (a zero timeout only looks)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingSetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr._loop.RingSet",
    .tp_doc = "RingSet(epoll_fd, doorbell_fd): the manager's peers' rings (see _loop.c).",
    .tp_basicsize = sizeof(RingSetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ringset_init,
    .tp_dealloc = (destructor)ringset_dealloc,
    .tp_methods = ringset_methods,
    .tp_getset = ringset_getset,
};

static struct PyModuleDef loop_module = {
    PyModuleDef_HEAD_INIT, "procmgr._loop",
    "The manager loop's ring work (see loop.py).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__loop(void)
{
    if (PyType_Ready(&RingSetType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&loop_module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "RingSet", (PyObject *)&RingSetType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
