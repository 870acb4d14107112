/*
 * The wire protocol's hot path in C: the message object, and sending and
 * taking one-slot messages straight between a ring slot and that object.
 *
 * Why: every request crosses four rings (client -> manager -> spawnd ->
 * manager -> client), so the manager, the workers and the clients each pay
 * the codec several times per request. In Python a decode (pop, unpack,
 * checks, a dataclass) costs ~2 us and a reply plus encode plus push ~3 us;
 * here the same work is a few hundred ns, which is what lets the control
 * plane pass 100,000 requests/s on two CPUs (docs/performance.md, "Scale").
 *
 * What stays in Python (messages.py): messages whose payload does not fit
 * inline (they continue in raw slots), and every slot this code declines to
 * read -- a bad header, a truncated slot. `take` stops in front of such a
 * slot and leaves it in the ring, so the Python Decoder gives it exactly the
 * treatment it always did (ProtocolError with who to answer). What is valid
 * and the header's layout are protocol.h's (wire_read_one).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <string.h>

#include "_ring.h"
#include "_ring_py.h"
#include "_wire.h"
#include "spawn_payload.h"

/* What `take` reports besides a negative RB_E* code from the ring. */
#define TAKE_EMPTY 0      /* nothing more in the ring now */
#define TAKE_LIMIT 1      /* `limit` messages taken */
#define TAKE_DECLINED 2   /* the next slot is for the Python decoder */

/* What `send` reports besides 0 (in the ring) and RB_E* codes. */
#define SEND_NOT_INLINE 1 /* payload longer than inline: Python encodes it */

/* ---- Msg --------------------------------------------------------------- */

/* MsgObject: _wire.h */

#define MSG_NFIELDS 9
static const char *const field_names[MSG_NFIELDS] = {
    "op", "seq", "core", "dom", "nonce", "err", "status", "flags", "payload",
};

static PyTypeObject MsgType;
static PyObject *empty_bytes;   /* the default payload */
static PyObject *zero;          /* the default of every number */

static inline PyObject **msg_fields(MsgObject *m)
{
    return &m->op;   /* the nine fields are consecutive pointers */
}

static MsgObject *msg_alloc(void)
{
    MsgObject *m = PyObject_GC_New(MsgObject, &MsgType);
    if (m == NULL)
        return NULL;
    PyObject **f = msg_fields(m);
    for (int i = 0; i < MSG_NFIELDS - 1; i++)
        f[i] = Py_NewRef(zero);
    m->payload = Py_NewRef(empty_bytes);
    return m;
}

static int field_index(PyObject *name)
{
    for (int i = 0; i < MSG_NFIELDS; i++)
        if (PyUnicode_CompareWithASCIIString(name, field_names[i]) == 0)
            return i;
    return -1;
}

/* Msg(op, seq=0, core=0, dom=0, nonce=0, err=0, status=0, flags=0, payload=b"") */
static PyObject *msg_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    (void)type;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > MSG_NFIELDS) {
        PyErr_Format(PyExc_TypeError, "Msg takes at most %d arguments (%zd given)",
                     MSG_NFIELDS, nargs);
        return NULL;
    }
    MsgObject *m = msg_alloc();
    if (m == NULL)
        return NULL;
    PyObject **f = msg_fields(m);
    uint32_t given = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_SETREF(f[i], Py_NewRef(args[i]));
        given |= 1u << i;
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i = field_index(name);
        if (i < 0 || (given & (1u << i))) {
            PyErr_Format(PyExc_TypeError, i < 0 ? "Msg got an unexpected keyword %R"
                                                : "Msg got %R twice", name);
            Py_DECREF(m);
            return NULL;
        }
        Py_SETREF(f[i], Py_NewRef(args[nargs + k]));
        given |= 1u << i;
    }
    if (!(given & 1)) {
        PyErr_SetString(PyExc_TypeError, "Msg needs an op");
        Py_DECREF(m);
        return NULL;
    }
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

static PyObject *msg_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    /* The tuple/dict entry (used by e.g. functools.partial): same rules. */
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    Py_ssize_t nkw = kw ? PyDict_GET_SIZE(kw) : 0;
    PyObject *stack[MSG_NFIELDS * 2];
    if (n + nkw > MSG_NFIELDS * 2) {
        PyErr_SetString(PyExc_TypeError, "Msg: too many arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        stack[i] = PyTuple_GET_ITEM(args, i);
    PyObject *kwnames = NULL;
    if (nkw) {
        kwnames = PyTuple_New(nkw);
        if (kwnames == NULL)
            return NULL;
        Py_ssize_t pos = 0, k = 0;
        PyObject *key, *value;
        while (PyDict_Next(kw, &pos, &key, &value)) {
            PyTuple_SET_ITEM(kwnames, k, Py_NewRef(key));
            stack[n + k++] = value;
        }
    }
    PyObject *m = msg_vectorcall((PyObject *)type, stack, (size_t)n, kwnames);
    Py_XDECREF(kwnames);
    return m;
}

static int msg_traverse(MsgObject *m, visitproc visit, void *arg)
{
    PyObject **f = msg_fields(m);
    for (int i = 0; i < MSG_NFIELDS; i++)
        Py_VISIT(f[i]);
    return 0;
}

static int msg_clear(MsgObject *m)
{
    PyObject **f = msg_fields(m);
    for (int i = 0; i < MSG_NFIELDS; i++)
        Py_CLEAR(f[i]);
    return 0;
}

static void msg_dealloc(MsgObject *m)
{
    PyObject_GC_UnTrack(m);
    msg_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *msg_repr(MsgObject *m)
{
    return PyUnicode_FromFormat(
        "Msg(op=%R, seq=%R, core=%R, dom=%R, nonce=%R, err=%R, status=%R, flags=%R, "
        "payload=%R)", m->op, m->seq, m->core, m->dom, m->nonce, m->err, m->status,
        m->flags, m->payload);
}

static PyObject *msg_richcompare(PyObject *a, PyObject *b, int op)
{
    if ((op != Py_EQ && op != Py_NE) || !PyObject_TypeCheck(b, &MsgType))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject **fa = msg_fields((MsgObject *)a), **fb = msg_fields((MsgObject *)b);
    for (int i = 0; i < MSG_NFIELDS; i++) {
        int eq = PyObject_RichCompareBool(fa[i], fb[i], Py_EQ);
        if (eq < 0)
            return NULL;
        if (!eq)
            return PyBool_FromLong(op == Py_NE);
    }
    return PyBool_FromLong(op == Py_EQ);
}

/* m.reply(err=0, status=0, flags=0, *, dom=, nonce=, core=, payload=):
 * the answer to this request: same op, seq, core, domain and nonce unless
 * given, err as a plain int, the REPLY flag set. */
static PyObject *msg_reply(MsgObject *self, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "reply(err=0, status=0, flags=0, **fields)");
        return NULL;
    }
    PyObject *err = nargs > 0 ? args[0] : zero;
    PyObject *status = nargs > 1 ? args[1] : zero;
    PyObject *flags = nargs > 2 ? args[2] : zero;
    MsgObject *r = msg_alloc();
    if (r == NULL)
        return NULL;
    Py_SETREF(r->op, Py_NewRef(self->op));
    Py_SETREF(r->seq, Py_NewRef(self->seq));
    Py_SETREF(r->core, Py_NewRef(self->core));
    Py_SETREF(r->dom, Py_NewRef(self->dom));
    Py_SETREF(r->nonce, Py_NewRef(self->nonce));
    Py_SETREF(r->status, Py_NewRef(status));
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k), *value = args[nargs + k];
        int i = field_index(name);
        if (i == 0 || i == 1 || i < 0) {
            PyErr_Format(PyExc_TypeError, "reply() cannot set %R", name);
            goto fail;
        }
        if (i == 5)
            err = value;
        else if (i == 6)
            Py_SETREF(r->status, Py_NewRef(value));
        else if (i == 7)
            flags = value;
        else
            Py_SETREF(msg_fields(r)[i], Py_NewRef(value));
    }
    /* err as a plain int (an Err member would print as one, not as a number) */
    Py_SETREF(r->err, PyNumber_Long(err));
    if (r->err == NULL)
        goto fail;
    long fl = PyLong_AsLong(flags);
    if (fl == -1 && PyErr_Occurred())
        goto fail;
    Py_SETREF(r->flags, PyLong_FromLong(fl | FLAG_REPLY));
    if (r->flags == NULL)
        goto fail;
    PyObject_GC_Track(r);
    return (PyObject *)r;
fail:
    PyObject_GC_Track(r);
    Py_DECREF(r);
    return NULL;
}

static PyObject *msg_is_reply(MsgObject *self, void *closure)
{
    (void)closure;
    long fl = PyLong_AsLong(self->flags);
    if (fl == -1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(fl & FLAG_REPLY);
}

static PyMemberDef msg_members[] = {
    {"op", T_OBJECT_EX, offsetof(MsgObject, op), 0, "operation (protocol.Op)"},
    {"seq", T_OBJECT_EX, offsetof(MsgObject, seq), 0, "sequence number, echoed by the reply"},
    {"core", T_OBJECT_EX, offsetof(MsgObject, core), 0, "target or reporting core"},
    {"dom", T_OBJECT_EX, offsetof(MsgObject, dom), 0, "domain id"},
    {"nonce", T_OBJECT_EX, offsetof(MsgObject, nonce), 0, "domain cap nonce"},
    {"err", T_OBJECT_EX, offsetof(MsgObject, err), 0, "error code (errors.Err)"},
    {"status", T_OBJECT_EX, offsetof(MsgObject, status), 0, "exit status / state / errno"},
    {"flags", T_OBJECT_EX, offsetof(MsgObject, flags), 0, "protocol.Flag bits"},
    {"payload", T_OBJECT_EX, offsetof(MsgObject, payload), 0, "payload bytes"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef msg_getset[] = {
    {"is_reply", (getter)msg_is_reply, NULL, "True for an answer (REPLY flag)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef msg_methods[] = {
    {"reply", (PyCFunction)(void (*)(void))msg_reply, METH_FASTCALL | METH_KEYWORDS,
     "reply(err=0, status=0, flags=0, **fields) -> the answer to this request"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MsgType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.protocol.Msg",
    .tp_doc = "One protocol message: Msg(op, seq=0, core=0, dom=0, nonce=0, err=0, "
              "status=0, flags=0, payload=b'').",
    .tp_basicsize = sizeof(MsgObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = msg_new,
    .tp_vectorcall = msg_vectorcall,
    .tp_dealloc = (destructor)msg_dealloc,
    .tp_traverse = (traverseproc)msg_traverse,
    .tp_clear = (inquiry)msg_clear,
    .tp_repr = (reprfunc)msg_repr,
    .tp_richcompare = msg_richcompare,
    .tp_hash = PyObject_HashNotImplemented,   /* mutable, like the dataclass was */
    .tp_members = msg_members,
    .tp_getset = msg_getset,
    .tp_methods = msg_methods,
};

/* ---- slot <-> Msg -------------------------------------------------------- */

/* One field into [0, max], or a clear error naming it. */
static int field_u64(PyObject *v, const char *name, uint64_t max, uint64_t *out)
{
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError) ||
            PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_OverflowError, "Msg.%s = %R does not fit its field", name, v);
        }
        return -1;
    }
    if (x > max) {
        PyErr_Format(PyExc_OverflowError, "Msg.%s = %R does not fit its field", name, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* send(handle_addr, msg) -> 0 (in the ring), SEND_NOT_INLINE, or RB_E*
 * (RB_EFULL: no room; nothing was written). Never waits. */
static PyObject *wire_send(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 2 || !PyObject_TypeCheck(args[1], &MsgType)) {
        PyErr_SetString(PyExc_TypeError, "send(handle_addr, msg: Msg)");
        return NULL;
    }
    struct rb_handle *h = rb_handle_arg(args[0]);
    if (h == NULL && PyErr_Occurred())
        return NULL;
    MsgObject *m = (MsgObject *)args[1];
    if (!PyBytes_Check(m->payload))
        return PyLong_FromLong(SEND_NOT_INLINE);   /* Python says what is wrong */
    Py_ssize_t plen = PyBytes_GET_SIZE(m->payload);
    if (plen > INLINE)
        return PyLong_FromLong(SEND_NOT_INLINE);
    struct wire_header w;
    memset(&w, 0, sizeof w);
    uint64_t op, flags, core, seq, dom, err, nonce, status;
    if (field_u64(m->op, "op", 0xFF, &op) || field_u64(m->flags, "flags", 0xFF, &flags) ||
        field_u64(m->core, "core", 0xFFFF, &core) ||
        field_u64(m->seq, "seq", 0xFFFFFFFF, &seq) ||
        field_u64(m->dom, "dom", 0xFFFFFFFF, &dom) ||
        field_u64(m->err, "err", 0xFFFF, &err) ||
        field_u64(m->nonce, "nonce", UINT64_MAX, &nonce))
        return NULL;
    long st = PyLong_AsLong(m->status);
    if ((st == -1 && PyErr_Occurred()) || st < INT32_MIN || st > INT32_MAX) {
        PyErr_Clear();
        PyErr_Format(PyExc_OverflowError, "Msg.status = %R does not fit its field", m->status);
        return NULL;
    }
    status = (uint64_t)st;
    w.op = (uint8_t)op;
    w.flags = (uint8_t)flags;
    w.core = (uint16_t)core;
    w.seq = (uint32_t)seq;
    w.dom = (uint32_t)dom;
    w.err = (uint16_t)err;
    w.nfrag = 0;
    w.nonce = nonce;
    w.status = (int32_t)status;
    w.plen = (uint32_t)plen;
    memcpy(w.inline_, PyBytes_AS_STRING(m->payload), (size_t)plen);
    return PyLong_FromLong(rb_push(h, &w, SLOT));
}

/* The slot as a Msg, or NULL with no error set if it is not a valid
 * one-slot message (the Python decoder will say why). */
static PyObject *msg_from_slot(const uint8_t *slot, int len, int *declined)
{
    struct wire_header w;
    *declined = !wire_read_one(slot, len, &w);
    if (*declined)
        return NULL;
    MsgObject *m = PyObject_GC_New(MsgObject, &MsgType);
    if (m == NULL)
        return NULL;
    m->op = PyLong_FromUnsignedLong(w.op);
    m->seq = PyLong_FromUnsignedLong(w.seq);
    m->core = PyLong_FromUnsignedLong(w.core);
    m->dom = PyLong_FromUnsignedLong(w.dom);
    m->nonce = PyLong_FromUnsignedLongLong(w.nonce);
    m->err = PyLong_FromUnsignedLong(w.err);
    m->status = PyLong_FromLong(w.status);
    m->flags = PyLong_FromUnsignedLong(w.flags);
    m->payload = w.plen ? PyBytes_FromStringAndSize((const char *)w.inline_, w.plen)
                        : Py_NewRef(empty_bytes);
    PyObject **f = msg_fields(m);
    for (int i = 0; i < MSG_NFIELDS; i++) {
        if (f[i] == NULL) {
            for (int j = 0; j < MSG_NFIELDS; j++)
                if (f[j] == NULL)
                    f[j] = Py_NewRef(zero);
            Py_DECREF(m);   /* not tracked yet: dealloc untracks harmlessly */
            return NULL;
        }
    }
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

/* take(handle_addr, limit, out: list) -> TAKE_* or RB_E*
 * Appends up to `limit` one-slot messages now in the ring to `out`, each
 * consumed as it is read. Stops (leaving the slot in the ring) in front of
 * a slot that is not a valid one-slot message. Never waits. */
static PyObject *wire_take(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3 || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "take(handle_addr, limit, out: list)");
        return NULL;
    }
    struct rb_handle *h = rb_handle_arg(args[0]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *out = args[2];
    for (Py_ssize_t n = 0; n < limit; n++) {
        const uint8_t *slot;
        int len = rb_peek(h, &slot);
        if (len == RB_EEMPTY)
            return PyLong_FromLong(TAKE_EMPTY);
        if (len < 0)
            return PyLong_FromLong(len);
        int declined;
        PyObject *m = msg_from_slot(slot, len, &declined);
        if (m == NULL)
            return declined ? PyLong_FromLong(TAKE_DECLINED) : NULL;
        rb_consume(h, 1);
        int rc = PyList_Append(out, m);
        Py_DECREF(m);
        if (rc < 0)
            return NULL;
    }
    return PyLong_FromLong(TAKE_LIMIT);
}

/* decode_spawn(payload: bytes) -> (path, argv, env, caps), or (code, detail)
 * when the payload breaks a rule (spawn_payload.h). */
static PyObject *wire_decode_spawn(PyObject *mod, PyObject *payload)
{
    (void)mod;
    Py_buffer view;
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    struct spawn_refusal why;
    PyObject *fields = spawn_decode((const uint8_t *)view.buf, view.len, &why);
    PyBuffer_Release(&view);
    if (fields != NULL || why.detail == NULL)
        return fields;
    return Py_BuildValue("(iN)", why.code, why.detail);
}

/* cap_problem(fd, mode, text) -> what is wrong with that cap, or None:
 * the reader's rule, for the writer (payloads.py) to refuse in words. */
static PyObject *wire_cap_problem(PyObject *mod, PyObject *args)
{
    (void)mod;
    long fd;
    const char *mode;
    PyObject *text;
    if (!PyArg_ParseTuple(args, "lsU:cap_problem", &fd, &mode, &text))
        return NULL;
    PyObject *raw = spawn_bytes(text);
    if (raw == NULL)
        return NULL;
    PyObject *problem = spawn_cap_problem(fd, mode, PyBytes_AS_STRING(raw),
                                          PyBytes_GET_SIZE(raw), text);
    Py_DECREF(raw);
    if (problem == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return problem;
}

static PyMethodDef wire_methods[] = {
    {"send", (PyCFunction)(void (*)(void))wire_send, METH_FASTCALL,
     "send(handle_addr, msg) -> 0, SEND_NOT_INLINE or a negative RB_E* code"},
    {"take", (PyCFunction)(void (*)(void))wire_take, METH_FASTCALL,
     "take(handle_addr, limit, out) -> TAKE_EMPTY, TAKE_LIMIT, TAKE_DECLINED or RB_E*"},
    {"cap_problem", wire_cap_problem, METH_VARARGS,
     "cap_problem(fd, mode, text) -> what is wrong with that cap, or None"},
    {"decode_spawn", wire_decode_spawn, METH_O,
     "decode_spawn(payload) -> SpawnArgs' fields, or (code, detail) if refused"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT, "procmgr.protocol._wire",
    "The wire protocol's hot path (see messages.py).", -1, wire_methods,
    NULL, NULL, NULL, NULL,
};

/* CAP_MODES: the modes a cap may have, as spawn_payload.h reads them. */
static int add_cap_modes(PyObject *mod)
{
    size_t n = sizeof spawn_cap_modes / sizeof *spawn_cap_modes;
    PyObject *modes = PyTuple_New((Py_ssize_t)n);
    for (size_t i = 0; modes != NULL && i < n; i++) {
        PyObject *m = PyUnicode_FromString(spawn_cap_modes[i]);
        if (m == NULL)
            Py_CLEAR(modes);
        else
            PyTuple_SET_ITEM(modes, (Py_ssize_t)i, m);
    }
    int rc = modes == NULL ? -1 : PyModule_AddObjectRef(mod, "CAP_MODES", modes);
    Py_XDECREF(modes);
    return rc;
}

PyMODINIT_FUNC PyInit__wire(void)
{
    if (PyType_Ready(&MsgType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&wire_module);
    if (mod == NULL)
        return NULL;
    empty_bytes = PyBytes_FromStringAndSize("", 0);
    zero = PyLong_FromLong(0);
    if (empty_bytes == NULL || zero == NULL ||
        PyModule_AddObjectRef(mod, "Msg", (PyObject *)&MsgType) < 0 ||
        PyModule_AddIntConstant(mod, "TAKE_EMPTY", TAKE_EMPTY) < 0 ||
        PyModule_AddIntConstant(mod, "TAKE_LIMIT", TAKE_LIMIT) < 0 ||
        PyModule_AddIntConstant(mod, "TAKE_DECLINED", TAKE_DECLINED) < 0 ||
        PyModule_AddIntConstant(mod, "SEND_NOT_INLINE", SEND_NOT_INLINE) < 0 ||
        add_cap_modes(mod) < 0 ||
        PyModule_AddIntConstant(mod, "SLOT", SLOT) < 0 ||
        PyModule_AddIntConstant(mod, "INLINE", INLINE) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
