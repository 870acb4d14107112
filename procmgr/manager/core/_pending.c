/*
 * Pending clients: requests sent to a spawnd and not yet answered by it.
 * Two strategies behind one interface, so they can be measured side by
 * side (pending="replyq" | "hashtable"); pending.py says what each is.
 *
 * In C because the core claims a slot for every request it sends
 * (peers.c) and matches every reply (handlers.c) on the manager's critical
 * turns; through Python methods that was four interpreter entries per
 * spawn + wait. Both strategies are here, so the comparison stays like for
 * like.
 *
 * Ownership (STYLE rule 10): a slot belongs to the structure from claim
 * until release. The reply handler runs *between* match and release, so a
 * request it sends meanwhile can never be given the slot it is still
 * reading (the shape of Barrelfish defect 1, a use-after-free).
 */
#include "_core.h"
#include "_map.h"

#include <structmember.h>
#include <time.h>

static PyTypeObject PendingSlotType, ReplyQueueType, HashTableType;

/* ---- the slot ---- */

static void slot_clear(PendingSlotObject *s)
{
    s->seq = -1;
    s->op = 0;
    s->dom = 0;
    s->core = 0;
    s->client = 0;
    s->client_seq = 0;
    s->extra = 0;
    s->chain_next = s->order_prev = s->order_next = NULL;
}

static PendingSlotObject *slot_new(void)
{
    PendingSlotObject *s = PyObject_New(PendingSlotObject, &PendingSlotType);
    if (s != NULL)
        slot_clear(s);
    return s;
}

static PyObject *slot_tp_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)type;
    if (!_PyArg_NoPositional("PendingSlot", args) || !_PyArg_NoKeywords("PendingSlot", kw))
        return NULL;
    return (PyObject *)slot_new();
}

static PyObject *slot_repr(PendingSlotObject *s)
{
    return PyUnicode_FromFormat("<PendingSlot seq=%lld op=%u dom=%u core=%u client=%u>",
                                (long long)s->seq, s->op, s->dom, s->core, s->client);
}

static PyMemberDef slot_members[] = {
    /* What the structure files the slot under: set by claim, read-only. */
    {"seq", T_LONGLONG, offsetof(PendingSlotObject, seq), READONLY,
     "the request's sequence number to that spawnd; -1 while free"},
    {"op", T_UBYTE, offsetof(PendingSlotObject, op), READONLY, "the request's op"},
    {"dom", T_UINT, offsetof(PendingSlotObject, dom), READONLY, "the domain it is about"},
    {"core", T_USHORT, offsetof(PendingSlotObject, core), 0, "the spawnd's core"},
    {"client", T_UINT, offsetof(PendingSlotObject, client), 0,
     "the id of the client to answer; 0: an internal request"},
    {"client_seq", T_UINT, offsetof(PendingSlotObject, client_seq), 0,
     "the client's request seq"},
    {"extra", T_INT, offsetof(PendingSlotObject, extra), 0,
     "what the reply handler needs back (a spawn's client op)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject PendingSlotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.manager._core.PendingSlot",
    .tp_doc = "One request awaiting its spawnd reply. Reused by the reply queue; never shared.",
    .tp_basicsize = sizeof(PendingSlotObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = slot_tp_new,
    .tp_repr = (reprfunc)slot_repr,
    .tp_members = slot_members,
};

/* Serial-number order for u32 sequence numbers that wrap. */
static inline int seq_before(uint32_t a, uint32_t b)
{
    return a != b && (uint32_t)(b - a) < 0x80000000u;
}

static inline int slot_is(const PendingSlotObject *s, uint32_t seq, uint8_t op, uint32_t dom)
{
    return s->seq == (int64_t)seq && s->op == op && s->dom == dom;
}

/* ---- ReplyQueue: a preallocated FIFO of slots ----
 * Sending claims the next slot; the n-th reply matches the oldest. The
 * invariant -- each request gets exactly one reply, in order -- is checked:
 * the reply echoes seq, op and domain, and a mismatch fails the affected
 * clients loudly instead of shifting every later match (defect 16). */

typedef struct {
    PyObject_HEAD
    PendingSlotObject **slots;
    uint64_t mask, head, tail;   /* head: oldest pending; tail: next to claim */
    uint32_t capacity;
} ReplyQueueObject;

static int rq_init(ReplyQueueObject *q, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"capacity", NULL};
    long long cap = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|L", kwlist, &cap))
        return -1;
    if (q->slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ReplyQueue is initialised once");
        return -1;
    }
    if (cap < 1 || cap > (1LL << 30) || (cap & (cap - 1))) {
        PyErr_Format(PyExc_ValueError, "reply queue capacity must be a power of two, got %lld",
                     cap);
        return -1;
    }
    q->slots = PyMem_Calloc((size_t)cap, sizeof *q->slots);
    if (q->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (long long i = 0; i < cap; i++)
        if ((q->slots[i] = slot_new()) == NULL)
            return -1;
    q->capacity = (uint32_t)cap;
    q->mask = (uint64_t)cap - 1;
    q->head = q->tail = 0;
    return 0;
}

static void rq_dealloc(ReplyQueueObject *q)
{
    for (uint32_t i = 0; q->slots != NULL && i < q->capacity; i++)
        Py_XDECREF(q->slots[i]);
    PyMem_Free(q->slots);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

static PendingSlotObject *rq_claim(ReplyQueueObject *q, uint32_t seq, uint8_t op, uint32_t dom)
{
    if (q->tail - q->head >= q->capacity) {
        PyErr_SetString(PyExc_OverflowError,
                        "reply queue full: the caller must check has_room()");
        return NULL;
    }
    PendingSlotObject *s = q->slots[q->tail & q->mask];
    q->tail++;
    s->seq = seq;
    s->op = op;
    s->dom = dom;
    return s;
}

/* In order, the reply answers the oldest slot. If it names a younger one,
 * the older ones lost their replies (*nlost of them, from the oldest). A
 * reply older than every pending slot (a duplicate) or naming none matches
 * nothing. */
static PendingSlotObject *rq_match(ReplyQueueObject *q, uint32_t seq, uint8_t op, uint32_t dom,
                                   Py_ssize_t *nlost)
{
    *nlost = 0;
    if (q->head == q->tail)
        return NULL;
    PendingSlotObject *oldest = q->slots[q->head & q->mask];
    if (oldest->seq == (int64_t)seq)
        return slot_is(oldest, seq, op, dom) ? oldest : NULL;
    if (seq_before(seq, (uint32_t)oldest->seq))
        return NULL;         /* duplicate or stale reply */
    for (uint64_t k = q->head; k != q->tail; k++) {
        PendingSlotObject *s = q->slots[k & q->mask];
        if (s->seq == (int64_t)seq) {
            if (!slot_is(s, seq, op, dom))
                return NULL;
            *nlost = (Py_ssize_t)(k - q->head);
            return s;
        }
    }
    return NULL;             /* from the future: matches nothing */
}

static int rq_release(ReplyQueueObject *q, PendingSlotObject *s)
{
    if (q->head == q->tail) {
        PyErr_SetString(PyExc_AssertionError, "reply queue release with nothing pending");
        return -1;
    }
    if (s != q->slots[q->head & q->mask]) {
        PyErr_SetString(PyExc_AssertionError, "reply queue released out of order");
        return -1;
    }
    slot_clear(s);
    q->head++;
    return 0;
}

/* ---- HashTable: the design before the reply queue ----
 * Records keyed by (op, domain), chained when several requests share a key
 * (concurrent killers, spans), found by the reply's key and then by its
 * sequence number. A fresh slot per request. */

typedef struct {
    PyObject_HEAD
    struct map chains;       /* key -> the first slot of its chain (_map.h) */
    PendingSlotObject *first, *last;   /* claim order; owns a reference to each */
    uint32_t n, capacity;
} HashTableObject;

static inline uint64_t ht_key(uint8_t op, uint32_t dom)
{
    return ((uint64_t)op << 32 | dom) + 1;   /* never 0, the map's empty key */
}

static int ht_init(HashTableObject *h, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"capacity", NULL};
    long long cap = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|L", kwlist, &cap))
        return -1;
    if (cap < 1 || cap > (1LL << 30)) {
        PyErr_Format(PyExc_ValueError, "pending table capacity must be 1..2**30, got %lld", cap);
        return -1;
    }
    if (h->capacity != 0) {
        PyErr_SetString(PyExc_RuntimeError, "HashTable is initialised once");
        return -1;
    }
    h->capacity = (uint32_t)cap;
    return 0;
}

static void ht_dealloc(HashTableObject *h)
{
    PendingSlotObject *s = h->first;
    while (s != NULL) {
        PendingSlotObject *next = s->order_next;
        slot_clear(s);
        Py_DECREF(s);
        s = next;
    }
    map_free(&h->chains);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PendingSlotObject *ht_claim(HashTableObject *h, uint32_t seq, uint8_t op, uint32_t dom)
{
    if (h->n >= h->capacity) {
        PyErr_SetString(PyExc_OverflowError,
                        "pending table full: the caller must check has_room()");
        return NULL;
    }
    PendingSlotObject *s = slot_new();
    if (s == NULL)
        return NULL;
    s->seq = seq;
    s->op = op;
    s->dom = dom;
    uint64_t key = ht_key(op, dom);
    PendingSlotObject *t = map_get(&h->chains, key);
    if (t == NULL) {
        if (map_put(&h->chains, key, s) < 0) {
            Py_DECREF(s);
            return NULL;
        }
    } else {
        while (t->chain_next != NULL)
            t = t->chain_next;
        t->chain_next = s;
    }
    DLIST_APPEND(h->first, h->last, s, order_prev, order_next);
    h->n++;
    return s;                /* the table's reference */
}

static PendingSlotObject *ht_match(HashTableObject *h, uint32_t seq, uint8_t op, uint32_t dom)
{
    for (PendingSlotObject *s = map_get(&h->chains, ht_key(op, dom)); s != NULL;
         s = s->chain_next)
        if (s->seq == (int64_t)seq)
            return s;
    return NULL;
}

static int ht_release(HashTableObject *h, PendingSlotObject *s)
{
    uint64_t key = ht_key(s->op, s->dom);
    PendingSlotObject *first = map_get(&h->chains, key), *prev = NULL, *t = first;
    while (t != NULL && t != s) {
        prev = t;
        t = t->chain_next;
    }
    if (t == NULL) {
        PyErr_SetString(PyExc_KeyError, "pending table release of a slot it does not hold");
        return -1;
    }
    if (prev != NULL)
        prev->chain_next = s->chain_next;
    else if (s->chain_next != NULL)
        map_put(&h->chains, key, s->chain_next);    /* the key is there: no allocation */
    else
        map_del(&h->chains, key);
    DLIST_UNLINK(h->first, h->last, s, order_prev, order_next);
    h->n--;
    slot_clear(s);
    Py_DECREF(s);
    return 0;
}

static Py_ssize_t rq_len(ReplyQueueObject *q) { return (Py_ssize_t)(q->tail - q->head); }
static Py_ssize_t ht_len(HashTableObject *h) { return h->n; }

static Py_ssize_t len_of_pending(PyObject *p)
{
    return Py_IS_TYPE(p, &ReplyQueueType) ? rq_len((ReplyQueueObject *)p)
                                          : ht_len((HashTableObject *)p);
}

/* ---- the interface the core uses ---- */

int pending_check(PyObject *p)
{
    return Py_IS_TYPE(p, &ReplyQueueType) || Py_IS_TYPE(p, &HashTableType);
}

int pending_has_room(PyObject *p)
{
    if (Py_IS_TYPE(p, &ReplyQueueType)) {
        ReplyQueueObject *q = (ReplyQueueObject *)p;
        return q->tail - q->head < q->capacity;
    }
    HashTableObject *h = (HashTableObject *)p;
    return h->n < h->capacity;
}

PendingSlotObject *pending_claim(PyObject *p, uint32_t seq, uint8_t op, uint32_t dom)
{
    return Py_IS_TYPE(p, &ReplyQueueType) ? rq_claim((ReplyQueueObject *)p, seq, op, dom)
                                          : ht_claim((HashTableObject *)p, seq, op, dom);
}

PendingSlotObject *pending_match(PyObject *p, uint32_t seq, uint8_t op, uint32_t dom,
                                 Py_ssize_t *nlost)
{
    *nlost = 0;
    return Py_IS_TYPE(p, &ReplyQueueType) ? rq_match((ReplyQueueObject *)p, seq, op, dom, nlost)
                                          : ht_match((HashTableObject *)p, seq, op, dom);
}

PendingSlotObject *pending_lost(PyObject *p, Py_ssize_t i)
{
    ReplyQueueObject *q = (ReplyQueueObject *)p;   /* only a reply queue loses replies */
    return q->slots[(q->head + (uint64_t)i) & q->mask];
}

int pending_release(PyObject *p, PendingSlotObject *slot)
{
    return Py_IS_TYPE(p, &ReplyQueueType) ? rq_release((ReplyQueueObject *)p, slot)
                                          : ht_release((HashTableObject *)p, slot);
}

PyObject *pending_drain(PyObject *p)
{
    PyObject *l = PyList_New(0);
    if (l == NULL)
        return NULL;
    if (Py_IS_TYPE(p, &ReplyQueueType)) {
        ReplyQueueObject *q = (ReplyQueueObject *)p;
        for (uint64_t k = q->head; k != q->tail; k++)
            if (PyList_Append(l, (PyObject *)q->slots[k & q->mask]) < 0)
                goto fail;
    } else {
        for (PendingSlotObject *s = ((HashTableObject *)p)->first; s != NULL; s = s->order_next)
            if (PyList_Append(l, (PyObject *)s) < 0)
                goto fail;
    }
    return l;
fail:
    Py_DECREF(l);
    return NULL;
}

/* ---- the Python methods, shared by both types ---- */

static int parse_key(PyObject *const *args, Py_ssize_t nargs, uint32_t *seq, uint8_t *op,
                     uint32_t *dom)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "takes (seq, op, dom)");
        return -1;
    }
    unsigned long long v[3];
    for (int i = 0; i < 3; i++) {
        v[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (PyErr_Occurred())
            return -1;
    }
    if (v[0] > UINT32_MAX || v[1] > 0xFF || v[2] > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "seq and dom are u32, op u8");
        return -1;
    }
    *seq = (uint32_t)v[0];
    *op = (uint8_t)v[1];
    *dom = (uint32_t)v[2];
    return 0;
}

static PyObject *py_claim(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t seq, dom;
    uint8_t op;
    if (parse_key(args, nargs, &seq, &op, &dom) < 0)
        return NULL;
    PendingSlotObject *s = pending_claim(self, seq, op, dom);
    return s == NULL ? NULL : Py_NewRef((PyObject *)s);
}

/* match(seq, op, dom) -> (slot or None, slots whose reply was lost) */
static PyObject *py_match(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t seq, dom;
    uint8_t op;
    Py_ssize_t nlost;
    if (parse_key(args, nargs, &seq, &op, &dom) < 0)
        return NULL;
    PendingSlotObject *s = pending_match(self, seq, op, dom, &nlost);
    if (s == NULL || nlost == 0)
        return Py_BuildValue("(O())", s ? (PyObject *)s : Py_None);
    PyObject *lost = PyList_New(nlost);
    if (lost == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nlost; i++)
        PyList_SET_ITEM(lost, i, Py_NewRef((PyObject *)pending_lost(self, i)));
    return Py_BuildValue("(ON)", (PyObject *)s, lost);
}

static PyObject *py_release(PyObject *self, PyObject *slot)
{
    if (!Py_IS_TYPE(slot, &PendingSlotType)) {
        PyErr_SetString(PyExc_TypeError, "release() takes a PendingSlot");
        return NULL;
    }
    if (pending_release(self, (PendingSlotObject *)slot) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_has_room(PyObject *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(pending_has_room(self));
}

static PyObject *py_drain(PyObject *self, PyObject *unused)
{
    (void)unused;
    return pending_drain(self);
}


static PyMethodDef pending_methods[] = {
    {"claim", (PyCFunction)(void (*)(void))py_claim, METH_FASTCALL,
     "claim(seq, op, dom) -> slot: for a request about to be pushed to the spawnd"},
    {"match", (PyCFunction)(void (*)(void))py_match, METH_FASTCALL,
     "match(seq, op, dom) -> (slot or None, slots whose reply was lost)"},
    {"release", (PyCFunction)py_release, METH_O, "release(slot): the reply handler is done"},
    {"has_room", (PyCFunction)py_has_room, METH_NOARGS, "room for one more request"},
    {"drain", (PyCFunction)py_drain, METH_NOARGS,
     "every pending slot, oldest first (the spawnd died); the caller releases"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rq_members[] = {
    {"capacity", T_UINT, offsetof(ReplyQueueObject, capacity), READONLY, "slots"},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef ht_members[] = {
    {"capacity", T_UINT, offsetof(HashTableObject, capacity), READONLY, "most records"},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods rq_as_sequence = {.sq_length = (lenfunc)rq_len};
static PySequenceMethods ht_as_sequence = {.sq_length = (lenfunc)ht_len};

static PyTypeObject ReplyQueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.manager._core.ReplyQueue",
    .tp_doc = "ReplyQueue(capacity=1024): a preallocated FIFO of pending-client slots "
              "for one spawnd.",
    .tp_basicsize = sizeof(ReplyQueueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rq_init,
    .tp_dealloc = (destructor)rq_dealloc,
    .tp_methods = pending_methods,
    .tp_members = rq_members,
    .tp_as_sequence = &rq_as_sequence,
};

static PyTypeObject HashTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.manager._core.HashTable",
    .tp_doc = "HashTable(capacity=1024): the pre-reply-queue design, records by "
              "(op, domain), chained.",
    .tp_basicsize = sizeof(HashTableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ht_init,
    .tp_dealloc = (destructor)ht_dealloc,
    .tp_methods = pending_methods,
    .tp_members = ht_members,
    .tp_as_sequence = &ht_as_sequence,
};

/* The strategies by name, in PENDING_* order (_core.h). */
static const char *const pending_kinds[] = {"replyq", "hashtable"};

int pending_kind_of(const char *name)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(name, pending_kinds[i]) == 0)
            return i;
    PyErr_Format(PyExc_ValueError, "pending must be one of %s, %s, got '%s'", pending_kinds[0],
                 pending_kinds[1], name);
    return -1;
}

PyObject *pending_new(int kind, unsigned int capacity)
{
    PyTypeObject *type = kind == PENDING_HASHTABLE ? &HashTableType : &ReplyQueueType;
    return PyObject_CallFunction((PyObject *)type, "I", capacity);
}

static PyObject *py_seq_before(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    unsigned long long a, b;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seq_before(a, b)");
        return NULL;
    }
    a = PyLong_AsUnsignedLongLong(args[0]);
    b = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (a > UINT32_MAX || b > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "sequence numbers are u32");
        return NULL;
    }
    return PyBool_FromLong(seq_before((uint32_t)a, (uint32_t)b));
}

/* churn(pending, in_flight, rounds) -> ns per request: with in_flight
 * requests standing, claim one, match the oldest's reply, release it,
 * `rounds` times -- what the core does per request, timed in C, so that
 * the strategies' own cost is measured and not the cost of calling them
 * from Python (bench/test_pending_bench.py). */
static PyObject *py_churn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3 || !pending_check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "churn(pending, in_flight, rounds)");
        return NULL;
    }
    PyObject *p = args[0];
    long in_flight = PyLong_AsLong(args[1]), rounds = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (in_flight < 0 || rounds < 1 || len_of_pending(p) != 0) {
        PyErr_SetString(PyExc_ValueError, "churn needs an empty structure, in_flight >= 0 "
                        "and rounds >= 1");
        return NULL;
    }
    uint32_t seq = 0, oldest = 1;
    for (long i = 0; i < in_flight; i++) {
        seq++;
        if (pending_claim(p, seq, 16, seq) == NULL)
            return NULL;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        seq++;
        Py_ssize_t nlost;
        if (pending_claim(p, seq, 16, seq) == NULL)
            return NULL;
        PendingSlotObject *s = pending_match(p, oldest, 16, oldest, &nlost);
        if (s == NULL || nlost != 0) {
            PyErr_SetString(PyExc_AssertionError, "churn: an in-order reply did not match");
            return NULL;
        }
        if (pending_release(p, s) < 0)
            return NULL;
        oldest++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    while (len_of_pending(p) != 0) {          /* leave it empty, as it came */
        Py_ssize_t nlost;
        PendingSlotObject *s = pending_match(p, oldest, 16, oldest, &nlost);
        if (s == NULL || pending_release(p, s) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AssertionError, "churn: a standing request was lost");
            return NULL;
        }
        oldest++;
    }
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    return PyFloat_FromDouble(ns / (double)rounds);
}

static PyMethodDef pending_functions[] = {
    {"churn", (PyCFunction)(void (*)(void))py_churn, METH_FASTCALL,
     "churn(pending, in_flight, rounds) -> ns per request (claim, match, release), in C"},
    {"seq_before", (PyCFunction)(void (*)(void))py_seq_before, METH_FASTCALL,
     "seq_before(a, b): a comes before b in serial-number order (u32, wrapping)"},
    {NULL, NULL, 0, NULL},
};

int pending_register(PyObject *module)
{
    if (PyModule_AddFunctions(module, pending_functions) < 0)
        return -1;
    PyTypeObject *types[3] = {&PendingSlotType, &ReplyQueueType, &HashTableType};
    const char *kinds[3] = {NULL, pending_kinds[PENDING_REPLYQ], pending_kinds[PENDING_HASHTABLE]};
    for (int i = 0; i < 3; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        if (kinds[i] != NULL) {
            PyObject *kind = PyUnicode_FromString(kinds[i]);
            int rc = kind == NULL ? -1 : PyDict_SetItemString(types[i]->tp_dict, "kind", kind);
            Py_XDECREF(kind);
            if (rc < 0)
                return -1;
            PyType_Modified(types[i]);
        }
        const char *name = strrchr(types[i]->tp_name, '.') + 1;
        if (PyModule_AddObjectRef(module, name, (PyObject *)types[i]) < 0)
            return -1;
    }
    return 0;
}
