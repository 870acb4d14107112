/*
 * A ring handle as a C extension module receives it from Python: the one
 * way to turn a ringbuf.Ring (or its handle_addr, an int) into the struct
 * rb_handle * of _ring.h. The Ring object owns the handle and keeps it
 * valid while it is alive (a closed Ring's handle refuses every call), so
 * a module that keeps using a handle keeps the Ring too.
 *
 * Header-only; include after Python.h and _ring.h.
 */
#ifndef RINGBUF_RING_PY_H
#define RINGBUF_RING_PY_H

/* A Ring's handle_addr as a handle; NULL with an exception if it is not one
 * (not an int, negative, 0). */
static inline struct rb_handle *rb_handle_arg(PyObject *addr)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(addr);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (v == 0 || v > UINTPTR_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a ring handle");
        return NULL;
    }
    return (struct rb_handle *)(uintptr_t)v;
}

/* The handle of a ringbuf.Ring; NULL with an exception if it has none. */
static inline struct rb_handle *rb_handle_of(PyObject *ring)
{
    PyObject *addr = PyObject_GetAttrString(ring, "handle_addr");
    if (addr == NULL)
        return NULL;
    struct rb_handle *h = rb_handle_arg(addr);
    Py_DECREF(addr);
    return h;
}

#endif /* RINGBUF_RING_PY_H */
