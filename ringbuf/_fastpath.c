/*
 * The single-message hot path as plain CPython vectorcall functions.
 *
 * Why this exists beside the cffi module: on the machines we measure on, a
 * cffi call with more than one argument costs ~400 ns (argument tuple,
 * unpacking, GIL release and re-acquire), ten times what push+pop cost in C
 * (~40 ns). These two functions take their arguments by METH_FASTCALL, keep
 * the GIL while the ring is ready (the C fast path never blocks), and
 * release it only to wait. pop builds the result bytes straight from the
 * slot, so a message is copied once.
 *
 * Everything else (init, attach, batches, checks) stays in cffi.
 * Return values follow _ring.h: a negative RB_E* code is returned as an
 * int for ring.py to map to an exception, in its one place for that. A
 * signal handler that raises (Ctrl-C) propagates as that exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <time.h>

#include "_ring.h"
#include "_ring_py.h"

/* A Python exception is set (a signal handler raised). */
#define FP_RAISED 1

static int64_t fp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Wait until the ring is ready for `what`, without the GIL, one bounded
 * slice at a time; between slices run the signal handlers that arrived.
 * Returns RB_OK, a negative RB_E* code, or FP_RAISED. */
static int fp_wait(struct rb_handle *h, int what, long long timeout_ns)
{
    int64_t deadline = timeout_ns < 0 ? -1 : fp_now_ns() + timeout_ns;
    int spin = 1;
    for (;;) {
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - fp_now_ns();
            if (left < 0)
                left = 0;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = rb_wait(h, what, left, spin);
        Py_END_ALLOW_THREADS
        spin = 0;
        if (rc != RB_EAGAIN && rc != RB_EINTR)
            return rc;
        if (PyErr_CheckSignals() < 0)
            return FP_RAISED;
    }
}

/* push(handle_addr, data, timeout_ns) -> 0 or RB_E* */
static PyObject *fp_push(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push(handle_addr, data, timeout_ns)");
        return NULL;
    }
    struct rb_handle *h = rb_handle_arg(args[0]);
    long long timeout_ns = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc;
    if ((size_t)view.len > UINT32_MAX) {
        rc = RB_ETOOBIG;
    } else {
        rc = rb_push(h, view.buf, (uint32_t)view.len);
        /* Single producer: once rb_wait saw room, the push cannot fail. */
        if (rc == RB_EFULL && timeout_ns != 0) {
            rc = fp_wait(h, RB_WAIT_SPACE, timeout_ns);
            if (rc == RB_OK)
                rc = rb_push(h, view.buf, (uint32_t)view.len);
        }
    }
    PyBuffer_Release(&view);
    if (rc == FP_RAISED)
        return NULL;
    return PyLong_FromLong(rc);
}

/* pop(handle_addr, timeout_ns) -> bytes, or an int RB_E* code */
static PyObject *fp_pop(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pop(handle_addr, timeout_ns)");
        return NULL;
    }
    struct rb_handle *h = rb_handle_arg(args[0]);
    long long timeout_ns = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    const uint8_t *slot;
    int len = rb_peek(h, &slot);
    if (len == RB_EEMPTY && timeout_ns != 0) {
        int rc = fp_wait(h, RB_WAIT_DATA, timeout_ns);
        if (rc == FP_RAISED)
            return NULL;
        if (rc != RB_OK)
            return PyLong_FromLong(rc);
        len = rb_peek(h, &slot);
    }
    if (len < 0)
        return PyLong_FromLong(len);
    /* Copy out of the slot before releasing it to the producer. */
    PyObject *msg = PyBytes_FromStringAndSize((const char *)slot, len);
    if (msg == NULL)
        return NULL;
    rb_consume(h, 1);
    return msg;
}

/* wait(handle_addr, what, timeout_ns) -> RB_OK or a negative RB_E* code
 * (RB_EFULL / RB_EEMPTY: timed out). Ring.wait_data, wait_space and the
 * batch calls wait here: one wait loop for every caller. */
static PyObject *fp_wait_py(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "wait(handle_addr, what, timeout_ns)");
        return NULL;
    }
    struct rb_handle *h = rb_handle_arg(args[0]);
    long what = PyLong_AsLong(args[1]);
    long long timeout_ns = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    int rc = fp_wait(h, (int)what, timeout_ns);
    return rc == FP_RAISED ? NULL : PyLong_FromLong(rc);
}

static PyMethodDef fastpath_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))fp_wait_py, METH_FASTCALL,
     "wait(handle_addr, what, timeout_ns) -> RB_OK or a negative RB_E* code"},
    {"push", (PyCFunction)(void (*)(void))fp_push, METH_FASTCALL,
     "push(handle_addr, data, timeout_ns) -> 0 or a negative RB_E* code"},
    {"pop", (PyCFunction)(void (*)(void))fp_pop, METH_FASTCALL,
     "pop(handle_addr, timeout_ns) -> bytes, or a negative RB_E* code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "ringbuf._fastpath",
    "Single-message hot path of ringbuf (see ring.py).", -1, fastpath_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    return PyModule_Create(&fastpath_module);
}
