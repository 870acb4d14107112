/*
 * The Core type as Python sees it (procmgr.manager._core.Core): making and
 * freeing it, the calls manager.py makes (adding and dropping peers,
 * handing over messages Python decoded, answering the requests Python
 * answers, flushing), the views queries and tests read, and the module's
 * init, which also registers the loop's RingSet (_loop.c) and the pending
 * structures (_pending.c).
 *
 * Invariants kept here:
 * - A message Python decoded goes through the same handlers as one
 *   core_serve takes from a ring (handlers.c): each message has one
 *   implementation, whichever way it came in.
 * - A Core is initialised once. The views build new Python objects from
 *   the structs (a spawnd's pending structure, a Python object already, is
 *   the one thing handed out as it is): nothing Python holds points into
 *   them.
 * - What the other files share from here (the exceptions, the interned
 *   names; core.h) is made once, when the module is imported.
 */
#include "core.h"

#include <structmember.h>

PyObject *IllegalTransition;   /* a bug in a handler: answered INTERNAL */
PyObject *AnswerTwice;         /* the exactly-once check: stops the manager */

/* ---- arguments ------------------------------------------------------------------
 * What the manager's Python passes in, checked: a number too large for its
 * field is an error, never cut to fit (a client id 2**32 + 5 is not client 5). */

/* o into *out (a uint32_t) if it fits in `bits` bits. */
static int bits_arg(PyObject *o, uint32_t *out, int bits)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return 0;
    if (v >> bits) {
        PyErr_Format(PyExc_OverflowError, "%llu does not fit in %d bits", v, bits);
        return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

static int u32_arg(PyObject *o, void *out) { return bits_arg(o, out, 32); }
static int u16_arg(PyObject *o, void *out) { return bits_arg(o, out, 16); }
static int u8_arg(PyObject *o, void *out) { return bits_arg(o, out, 8); }

/* PEER_CLIENT or PEER_SPAWND, nothing else. */
static int kind_arg(PyObject *o, void *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    if (v != PEER_CLIENT && v != PEER_SPAWND) {
        PyErr_Format(PyExc_ValueError, "a peer kind is PEER_CLIENT or PEER_SPAWND, not %ld", v);
        return 0;
    }
    *(int *)out = (int)v;
    return 1;
}

/* ---- the Python type ------------------------------------------------------------ */

static int core_init(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pending", "reply_queue", "max_cores", "table_capacity",
                             "history", "events", NULL};
    const char *kind = "replyq";
    unsigned int reply_queue = 1024, max_cores = 1024, history = 4096, events = 8192;
    unsigned long long capacity = 1 << 20;
    if (self->spawnds != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|sIIKII", kwlist, &kind, &reply_queue,
                                     &max_cores, &capacity, &history, &events))
        return -1;
    int pending_kind = pending_kind_of(kind);
    if (pending_kind < 0)
        return -1;
    /* A bad size is said now, not at the first add_spawnd. */
    PyObject *probe = pending_new(pending_kind, reply_queue);
    if (probe == NULL)
        return -1;
    Py_DECREF(probe);
    if (max_cores == 0 || max_cores > 0x10000) {
        PyErr_Format(PyExc_ValueError, "max_cores must be 1..65536, got %u", max_cores);
        return -1;
    }
    if (history == 0) {
        PyErr_SetString(PyExc_ValueError, "history must be at least 1");
        return -1;
    }
    if (events == 0 || events > 1u << 24) {
        PyErr_Format(PyExc_ValueError, "events (how many are kept) must be 1..%u, got %u",
                     1u << 24, events);
        return -1;
    }
    self->spawnds = PyMem_Calloc(max_cores, sizeof *self->spawnds);
    self->table.cleaned = PyMem_Calloc(history, sizeof *self->table.cleaned);
    self->table.events.v = PyMem_Calloc(events, sizeof *self->table.events.v);
    self->table.events.cap = events;
    if (self->spawnds == NULL || self->table.cleaned == NULL || self->table.events.v == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->max_cores = max_cores;
    self->table.capacity = capacity;
    self->table.history = history;
    self->table.next_id = 1;
    self->table.next_nonce = NONCE_BATCH;
    self->reply_queue = reply_queue;
    self->pending_kind = pending_kind;
    return 0;
}

static void core_dealloc(CoreObject *self)
{
    for (struct domain *d = self->table.first; d != NULL;) {
        struct domain *next = d->next;
        map_del(&self->table.by_id, d->id);
        domain_free(d);
        d = next;
    }
    for (uint32_t i = 0; i < self->table.by_id.cap; i++)   /* the cleaned ones */
        if (self->table.by_id.keys[i] != 0)
            domain_free(self->table.by_id.vals[i]);
    map_free(&self->table.by_id);
    PyMem_Free(self->table.cleaned);
    for (uint32_t i = 0; self->table.events.v != NULL && i < self->table.events.cap; i++)
        Py_XDECREF(self->table.events.v[i].name);
    PyMem_Free(self->table.events.v);
    for (uint32_t i = 0; i < self->clients.cap; i++)
        if (self->clients.keys[i] != 0)
            client_free(self->clients.vals[i]);
    map_free(&self->clients);
    for (uint32_t i = 0; self->spawnds != NULL && i < self->max_cores; i++)
        if (self->spawnds[i] != NULL)
            spawnd_free(self->spawnds[i]);
    PyMem_Free(self->spawnds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* add_client(id, outbound, is_monitor): outbound is the ringbuf.Ring its
 * answers go into. */
static PyObject *core_add_client(CoreObject *self, PyObject *args)
{
    uint32_t id;
    PyObject *outbound;
    int is_monitor;
    if (!PyArg_ParseTuple(args, "O&Op", u32_arg, &id, &outbound, &is_monitor))
        return NULL;
    if (id == 0 || client_of(self, id) != NULL) {
        PyErr_Format(PyExc_ValueError, "client id %u is 0 or taken", id);
        return NULL;
    }
    struct client *cl = PyMem_Calloc(1, sizeof *cl);
    if (cl == NULL)
        return PyErr_NoMemory();
    if (peer_init(&cl->p, outbound, &self->backlogged) < 0) {
        PyMem_Free(cl);
        return NULL;
    }
    cl->id = id;
    cl->is_monitor = is_monitor;
    if (map_put(&self->clients, id, cl) < 0) {
        client_free(cl);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *core_client_gone(CoreObject *self, PyObject *arg)
{
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    client_gone(self, (uint32_t)id);
    Py_RETURN_NONE;
}

/* add_spawnd(core, outbound) -> Err: outbound is the ringbuf.Ring its
 * requests go into. */
static PyObject *core_add_spawnd(CoreObject *self, PyObject *args)
{
    uint32_t core;
    PyObject *outbound;
    if (!PyArg_ParseTuple(args, "O&O", u32_arg, &core, &outbound))
        return NULL;
    if (core >= self->max_cores)
        return PyLong_FromLong(E_INVALID_SPAWND);
    if (self->spawnds[core] != NULL)
        return PyLong_FromLong(E_SPAWND_EXISTS);
    struct spawnd *sd = PyMem_Calloc(1, sizeof *sd);
    if (sd == NULL)
        return PyErr_NoMemory();
    if (peer_init(&sd->p, outbound, &self->backlogged) < 0) {
        PyMem_Free(sd);
        return NULL;
    }
    sd->core = (uint16_t)core;
    sd->next_seq = 1;
    sd->pending = pending_new(self->pending_kind, self->reply_queue);
    if (sd->pending == NULL) {
        spawnd_free(sd);
        return NULL;
    }
    self->spawnds[core] = sd;
    return PyLong_FromLong(E_OK);
}

static PyObject *core_spawnd_died(CoreObject *self, PyObject *arg)
{
    unsigned long core = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (core < self->max_cores && spawnd_died(self, (uint16_t)core) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyTypeObject *msg_type;   /* procmgr.protocol._wire.Msg */

/* A Msg's header fields and payload (a new reference), for a handler; -1
 * with an exception set if it is not a Msg or a field does not fit. */
static int msg_fields_of(PyObject *msg, struct wire_header *h, PyObject **payload)
{
    if (!Py_IS_TYPE(msg, msg_type)) {
        PyErr_Format(PyExc_TypeError, "a message is a Msg, not %R",
                     Py_TYPE(msg));
        return -1;
    }
    MsgObject *m = (MsgObject *)msg;
    PyObject *fields[8] = {m->op, m->seq, m->core, m->dom, m->nonce, m->err, m->flags,
                           m->status};
    static const unsigned long long max[7] = {0xFF, UINT32_MAX, 0xFFFF, UINT32_MAX,
                                              UINT64_MAX, 0xFFFF, 0xFF};
    unsigned long long v[7];
    for (int i = 0; i < 7; i++) {
        v[i] = PyLong_AsUnsignedLongLong(fields[i]);
        if (PyErr_Occurred())
            return -1;
        if (v[i] > max[i]) {
            PyErr_Format(PyExc_OverflowError, "Msg field %R does not fit", fields[i]);
            return -1;
        }
    }
    long status = PyLong_AsLong(fields[7]);
    if (status == -1 && PyErr_Occurred())
        return -1;
    if (status < INT32_MIN || status > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Msg.status does not fit its field");
        return -1;
    }
    if (!PyBytes_Check(m->payload)) {
        PyErr_SetString(PyExc_TypeError, "a message's payload is bytes");
        return -1;
    }
    memset(h, 0, sizeof *h);
    h->op = (uint8_t)v[0];
    h->seq = (uint32_t)v[1];
    h->core = (uint16_t)v[2];
    h->dom = (uint32_t)v[3];
    h->nonce = v[4];
    h->err = (uint16_t)v[5];
    h->flags = (uint8_t)v[6];
    h->status = (int32_t)status;
    h->plen = (uint32_t)PyBytes_GET_SIZE(m->payload);
    *payload = Py_NewRef(m->payload);
    return 0;
}

/* dispatch_client(id, msg) -> True if the request is Python's to answer
 * (recorded as outstanding: answer it exactly once, with answer(), or
 * handler_failed()), else False. msg: a Msg Python decoded from that client. */
static PyObject *core_dispatch_client(CoreObject *self, PyObject *args)
{
    uint32_t id;
    PyObject *msg;
    if (!PyArg_ParseTuple(args, "O&O", u32_arg, &id, &msg))
        return NULL;
    struct client *cl = client_of(self, id);
    if (cl == NULL)
        Py_RETURN_FALSE;         /* gone earlier in this pass */
    struct req r = {.msg = msg};
    if (msg_fields_of(msg, &r.h, &r.payload) < 0)
        return NULL;
    int rc = dispatch_client(self, cl, &r);
    Py_DECREF(r.payload);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc == 1);
}

/* dispatch_spawnd(core, msg): one Msg Python decoded from that spawnd. */
static PyObject *core_dispatch_spawnd(CoreObject *self, PyObject *args)
{
    uint32_t core;
    PyObject *msg;
    if (!PyArg_ParseTuple(args, "O&O", u32_arg, &core, &msg))
        return NULL;
    struct spawnd *sd = spawnd_of(self, core);
    if (sd == NULL)
        Py_RETURN_NONE;
    struct reply m;
    PyObject *payload;
    if (msg_fields_of(msg, &m.h, &payload) < 0)
        return NULL;
    m.payload = PyBytes_AS_STRING(payload);
    m.plen = (uint32_t)PyBytes_GET_SIZE(payload);
    int rc = dispatch_spawnd(self, sd, &m);
    Py_DECREF(payload);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* undecodable(kind, key, op=0, seq=0, err=BAD_MESSAGE, detail=""): a message
 * from that peer Python could not decode. A client's is answered with err
 * and detail when its header said who asked (op and seq); a bare garbage
 * slot, or a spawnd's, is only counted. */
static PyObject *core_undecodable(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"kind", "key", "op", "seq", "err", "detail", NULL};
    int kind;
    uint32_t key, op = 0, seq = 0, err = E_BAD_MESSAGE;
    const char *detail = "";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&O&O&s", kwlist, kind_arg, &kind, u32_arg,
                                     &key, u8_arg, &op, u32_arg, &seq, u16_arg, &err, &detail))
        return NULL;
    if (kind == PEER_SPAWND) {
        struct spawnd *sd = spawnd_of(self, key);
        if (sd != NULL)
            sd->protocol_errors++;
        Py_RETURN_NONE;
    }
    struct client *cl = client_of(self, key);
    if (cl != NULL && client_protocol_error(self, cl, (uint8_t)op, seq, (uint16_t)err,
                                            detail) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* handler_failed(client_id, op, seq): a Python handler raised (a bug): the
 * request is answered INTERNAL if it still waits, and counted. */
static PyObject *core_handler_failed(CoreObject *self, PyObject *args)
{
    uint32_t id, op, seq;
    if (!PyArg_ParseTuple(args, "O&O&O&", u32_arg, &id, u8_arg, &op, u32_arg, &seq))
        return NULL;
    self->internal_errors++;
    struct client *cl = client_of(self, id);
    if (cl != NULL && map_get(&cl->outstanding, seq_key(seq)) != NULL &&
        answer_err(self, id, (uint8_t)op, seq, E_INTERNAL, 0, 0, 0, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The peer of (kind, key), or NULL. */
static struct peer *peer_of(CoreObject *self, int kind, uint32_t key)
{
    if (kind == PEER_CLIENT) {
        struct client *cl = client_of(self, key);
        return cl ? &cl->p : NULL;
    }
    struct spawnd *sd = spawnd_of(self, key);
    return sd ? &sd->p : NULL;
}

/* lost(kind, key) -> True once a send found that peer's ring closed or its
 * process gone (or it is not known). */
static PyObject *core_lost(CoreObject *self, PyObject *args)
{
    int kind;
    uint32_t key;
    if (!PyArg_ParseTuple(args, "O&O&", kind_arg, &kind, u32_arg, &key))
        return NULL;
    struct peer *p = peer_of(self, kind, key);
    return PyBool_FromLong(p == NULL || p->gone);
}

/* mid_message(kind, key, flag): Python's decoder holds the start of a
 * message from that peer (flag true): the core reads nothing of its ring
 * until it has been told the message is whole. */
static PyObject *core_mid_message(CoreObject *self, PyObject *args)
{
    int kind, flag;
    uint32_t key;
    if (!PyArg_ParseTuple(args, "O&O&p", kind_arg, &kind, u32_arg, &key, &flag))
        return NULL;
    struct peer *p = peer_of(self, kind, key);
    if (p != NULL)
        p->mid_message = flag;
    Py_RETURN_NONE;
}

/* answer(client_id, op, seq, err=0, status=0, flags=0, dom=0, nonce=0, core=0, payload=b"") */
static PyObject *core_answer(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"client_id", "op", "seq", "err", "status", "flags", "dom", "nonce",
                             "core", "payload", NULL};
    uint32_t client, op, seq, err = 0, flags = 0, dom = 0, core = 0;
    int status = 0;
    unsigned long long nonce = 0;
    Py_buffer payload = {.buf = NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&|O&iO&O&KO&y*", kwlist, u32_arg, &client,
                                     u8_arg, &op, u32_arg, &seq, u16_arg, &err, &status, u8_arg,
                                     &flags, u32_arg, &dom, &nonce, u16_arg, &core, &payload))
        return NULL;
    struct answer a = {.op = (uint8_t)op, .seq = seq, .err = (uint16_t)err, .status = status,
                       .flags = (uint8_t)flags, .dom = dom, .nonce = nonce,
                       .core = (uint16_t)core, .payload = payload.buf ? payload.buf : "",
                       .plen = payload.buf ? (uint32_t)payload.len : 0};
    int rc = answer(self, client, &a);
    if (payload.buf)
        PyBuffer_Release(&payload);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int kind_key(PyObject *args, int *kind, uint32_t *key)
{
    return PyArg_ParseTuple(args, "O&O&", kind_arg, kind, u32_arg, key) ? 0 : -1;
}

/* flush(kind, key) -> True once nothing waits in that peer's outbox. */
static PyObject *core_flush(CoreObject *self, PyObject *args)
{
    int kind;
    uint32_t key;
    if (kind_key(args, &kind, &key) < 0)
        return NULL;
    if (kind == PEER_CLIENT) {
        struct client *cl = client_of(self, key);
        return PyBool_FromLong(cl == NULL || peer_flush(&cl->p));
    }
    struct spawnd *sd = spawnd_of(self, key);
    if (sd != NULL && sd_flush(sd) < 0)
        return NULL;
    return PyBool_FromLong(sd == NULL || sd->p.outbox.n == 0);
}

static PyObject *core_backlogged_py(CoreObject *self, PyObject *args)
{
    int kind;
    uint32_t key;
    if (kind_key(args, &kind, &key) < 0)
        return NULL;
    return PyBool_FromLong(core_backlogged((PyObject *)self, kind, key));
}

/* ---- views, for queries and tests ---- */

static PyObject *cores_list(const struct coreset *s)
{
    PyObject *l = PyList_New(s->n);
    for (uint32_t i = 0; l != NULL && i < s->n; i++) {
        PyObject *x = PyLong_FromLong(s->v[i]);
        if (x == NULL) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, x);
    }
    return l;
}

static PyObject *owed_list(const struct owedvec *o)
{
    PyObject *l = PyList_New(o->n);
    for (uint32_t i = 0; l != NULL && i < o->n; i++) {
        PyObject *x = Py_BuildValue("(kk)", (unsigned long)o->v[i].client,
                                    (unsigned long)o->v[i].seq);
        if (x == NULL) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, x);
    }
    return l;
}

/* domain(id) -> dict of its fields (a copy), or None. */
static PyObject *core_domain(CoreObject *self, PyObject *arg)
{
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    struct domain *d = id <= UINT32_MAX ? table_by_id(&self->table, (uint32_t)id) : NULL;
    if (d == NULL)
        Py_RETURN_NONE;
    PyObject *cores = PyList_New(d->cores.n), *pids = PyDict_New();
    for (uint32_t i = 0; cores != NULL && pids != NULL && i < d->cores.n; i++) {
        PyObject *core = PyLong_FromLong(d->cores.v[i].core);
        PyObject *pid = PyLong_FromLong(d->cores.v[i].pid);
        if (core == NULL || pid == NULL || PyDict_SetItem(pids, core, pid) < 0) {
            Py_XDECREF(core);
            Py_XDECREF(pid);
            Py_CLEAR(cores);
            break;
        }
        PyList_SET_ITEM(cores, i, core);
        Py_DECREF(pid);
    }
    PyObject *deferred = PyList_New(d->deferred.n);
    for (uint32_t i = 0; deferred != NULL && i < d->deferred.n; i++) {
        struct deferred *e = &d->deferred.v[i];
        PyObject *x = Py_BuildValue("(ikkiO)", e->op, (unsigned long)e->client,
                                    (unsigned long)e->seq, e->status,
                                    e->signaled ? Py_True : Py_False);
        if (x == NULL) {
            Py_CLEAR(deferred);
            break;
        }
        PyList_SET_ITEM(deferred, i, x);
    }
    PyObject *argv = PySequence_List(d->argv);
    PyObject *res = NULL;
    if (cores && pids && deferred && argv) {
        res = Py_BuildValue(
            "{s:k,s:K,s:i,s:O,s:i,s:N,s:N,s:N,s:N,s:N,s:N,s:O,s:O,s:N,s:N,s:i,s:N,s:N,s:N,s:N,"
            "s:N,s:N}",
            "id", (unsigned long)d->id, "nonce", (unsigned long long)d->nonce,
            "state", d->state, "argv", argv, "home_core", d->home_core,
            "cores", Py_NewRef(cores), "pids", Py_NewRef(pids),
            "live", cores_list(&d->live), "held", cores_list(&d->held),
            "span_pending", cores_list(&d->span_pending),
            "exit_status", d->has_exit ? PyLong_FromLong(d->exit_status) : Py_NewRef(Py_None),
            "signaled", d->signaled ? Py_True : Py_False,
            "killed", d->killed ? Py_True : Py_False,
            "started_at", PyFloat_FromDouble(d->started_at),
            "ended_at", d->ended_at ? PyFloat_FromDouble(d->ended_at) : Py_NewRef(Py_None),
            "kills_in_flight", d->kills_in_flight,
            "kill_error", d->has_kill_error ? Py_BuildValue("(ii)", d->kill_err, d->kill_status)
                                            : Py_NewRef(Py_None),
            "killers", owed_list(&d->killers), "waiters", owed_list(&d->waiters),
            "deferred", Py_NewRef(deferred),
            "spawn_error", d->has_spawn_error
                               ? Py_BuildValue("(ii)", d->spawn_err, d->spawn_status)
                               : Py_NewRef(Py_None),
            "usage", d->has_usage ? Py_BuildValue("(KKk)", (unsigned long long)d->user_us,
                                                  (unsigned long long)d->system_us,
                                                  (unsigned long)d->max_rss_kib)
                                  : Py_NewRef(Py_None));
    }
    Py_XDECREF(cores);
    Py_XDECREF(pids);
    Py_XDECREF(deferred);
    Py_XDECREF(argv);
    return res;
}

/* domain_ids() -> ids of every domain not yet cleaned, in creation order. */
static PyObject *core_domain_ids(CoreObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *l = PyList_New(0);
    for (struct domain *d = self->table.first; l != NULL && d != NULL; d = d->next) {
        PyObject *x = PyLong_FromUnsignedLong(d->id);
        if (x == NULL || PyList_Append(l, x) < 0)
            Py_CLEAR(l);
        Py_XDECREF(x);
    }
    return l;
}

/* The first live domain with an id >= start. The live list is in id order
 * (ids are issued in creation order), so a page that ended at start - 1
 * goes on from that domain's successor in O(1) while it lives, and from
 * start itself if that one does; else (the domains around the cursor
 * ended meanwhile) the next few ids are tried, then the list is walked. */
#define CURSOR_PROBES 64
static struct domain *first_live_from(struct table *t, uint32_t start)
{
    struct domain *d;
    if (start == 0 || t->first == NULL || t->first->id >= start)
        return t->first;
    if ((d = table_by_id(t, start - 1)) != NULL && d->state != STATE_CLEANED)
        return d->next;
    for (uint32_t id = start; id - start < CURSOR_PROBES && id < t->next_id; id++)
        if ((d = table_by_id(t, id)) != NULL && d->state != STATE_CLEANED)
            return d;
    for (d = t->first; d != NULL && d->id < start; d = d->next)
        ;
    return d;
}

/* domain_ids_from(start, limit) -> (ids of up to `limit` domains not yet
 * cleaned whose id >= start, in id order; whether more follow). O(page)
 * unless the domains around the cursor ended meanwhile. */
static PyObject *core_domain_ids_from(CoreObject *self, PyObject *args)
{
    unsigned long start;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "kn", &start, &limit))
        return NULL;
    if (start > UINT32_MAX || limit < 1) {
        PyErr_SetString(PyExc_ValueError, "domain_ids_from(start <= 2**32 - 1, limit >= 1)");
        return NULL;
    }
    PyObject *l = PyList_New(0);
    struct domain *d = first_live_from(&self->table, (uint32_t)start);
    for (; l != NULL && d != NULL && PyList_GET_SIZE(l) < limit; d = d->next) {
        PyObject *x = PyLong_FromUnsignedLong(d->id);
        if (x == NULL || PyList_Append(l, x) < 0)
            Py_CLEAR(l);
        Py_XDECREF(x);
    }
    return l == NULL ? NULL : Py_BuildValue("(NO)", l, d != NULL ? Py_True : Py_False);
}

/* ended_ids_from(start, limit) -> (up to limit ids >= start of the ended
 * domains the history keeps, in id order, more?) */
static PyObject *core_ended_ids_from(CoreObject *self, PyObject *args)
{
    unsigned long start;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "kn", &start, &limit))
        return NULL;
    if (start > UINT32_MAX || limit < 1) {
        PyErr_SetString(PyExc_ValueError, "ended_ids_from(start <= 2**32 - 1, limit >= 1)");
        return NULL;
    }
    return table_ended_ids_from(&self->table, (uint32_t)start, limit);
}

/* record_event(kind, dom, core, pid, status, err, flags, name): a
 * program's event (the supervisor's), in the same log as the domains'. */
static PyObject *core_record_event(CoreObject *self, PyObject *args)
{
    unsigned char kind, flags;
    unsigned int dom;
    unsigned short core, err;
    int pid, status;
    PyObject *name;
    if (!PyArg_ParseTuple(args, "bIHiiHbS", &kind, &dom, &core, &pid, &status, &err, &flags,
                          &name))
        return NULL;
    if (kind < EVENT_STARTED || kind > EVENT_REMOVED ||
        PyBytes_GET_SIZE(name) > EVENT_NAME_MAX) {
        PyErr_Format(PyExc_ValueError, "record_event: a program's kind (%d..%d) and a name "
                     "of at most %d bytes", EVENT_STARTED, EVENT_REMOVED, EVENT_NAME_MAX);
        return NULL;
    }
    struct event e = {.time = wall_now(), .dom = dom,
                      .pid = pid, .status = status, .core = core, .err = err, .kind = kind,
                      .flags = flags, .name = name};
    event_record(&self->table.events, &e);
    Py_RETURN_NONE;
}

/* events_after(after, max_bytes) -> (EVENTS' payload, seq of its last event) */
static PyObject *core_events_after(CoreObject *self, PyObject *args)
{
    unsigned long long after;
    unsigned int max_bytes;
    if (!PyArg_ParseTuple(args, "KI", &after, &max_bytes))
        return NULL;
    if (max_bytes < EVENT_HEAD) {
        PyErr_Format(PyExc_ValueError, "events_after: max_bytes is at least %d", EVENT_HEAD);
        return NULL;
    }
    return events_after(&self->table.events, after, max_bytes);
}

/* Requests the workers hold or are yet to be sent, over every core: what
 * the supervisor's restarts give way to (procmgr/manager/supervisor.py). */
static PyObject *core_get_worker_requests(CoreObject *self, void *closure)
{
    (void)closure;
    unsigned long long n = 0;
    for (uint32_t i = 0; i < self->max_cores; i++) {
        struct spawnd *sd = self->spawnds[i];
        if (sd == NULL)
            continue;
        Py_ssize_t pending = PyObject_Length(sd->pending);
        if (pending < 0)
            return NULL;
        n += (unsigned long long)pending + sd->queued;
    }
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *core_get_last_event(CoreObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->table.events.last);
}

/* client(id) -> (received, answered, outstanding seqs as a set, answers in
 * its outbox), or None. */
static PyObject *core_client(CoreObject *self, PyObject *arg)
{
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    struct client *cl = id <= UINT32_MAX ? client_of(self, (uint32_t)id) : NULL;
    if (cl == NULL)
        Py_RETURN_NONE;
    PyObject *seqs = PySet_New(NULL);
    for (uint32_t i = 0; seqs != NULL && i < cl->outstanding.cap; i++) {
        if (cl->outstanding.keys[i] == 0)
            continue;
        PyObject *x = PyLong_FromUnsignedLongLong(cl->outstanding.keys[i] - 1);
        if (x == NULL || PySet_Add(seqs, x) < 0)
            Py_CLEAR(seqs);
        Py_XDECREF(x);
    }
    if (seqs == NULL)
        return NULL;
    return Py_BuildValue("(KKNI)", (unsigned long long)cl->received,
                         (unsigned long long)cl->answered, seqs, cl->p.outbox.n);
}

/* spawnd(core) -> dict of its figures and its pending structure, or None. */
static PyObject *core_spawnd(CoreObject *self, PyObject *arg)
{
    unsigned long core = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    struct spawnd *sd = spawnd_of(self, (uint32_t)(core > UINT32_MAX ? UINT32_MAX : core));
    if (sd == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("{s:I,s:K,s:K,s:K,s:k,s:O,s:I}", "queued", sd->queued,
                         "sent", (unsigned long long)sd->sent,
                         "replies", (unsigned long long)sd->replies,
                         "protocol_errors", (unsigned long long)sd->protocol_errors,
                         "next_seq", (unsigned long)sd->next_seq, "pending", sd->pending,
                         "backlog", sd->p.outbox.n);
}

/* set_next_seq(core, seq): where a spawnd's sequence numbers go on (tests
 * take them to the wrap). */
static PyObject *core_set_next_seq(CoreObject *self, PyObject *args)
{
    uint32_t core, seq;
    if (!PyArg_ParseTuple(args, "O&O&", u32_arg, &core, u32_arg, &seq))
        return NULL;
    struct spawnd *sd = spawnd_of(self, core);
    if (sd == NULL) {
        PyErr_Format(PyExc_KeyError, "no spawnd on core %u", core);
        return NULL;
    }
    sd->next_seq = seq;
    Py_RETURN_NONE;
}

static Py_ssize_t core_len(CoreObject *self)
{
    return (Py_ssize_t)self->table.nlive;
}

static PyObject *core_get_capacity(CoreObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->table.capacity);
}

/* missing(id) -> the error for an id the table does not hold */
static PyObject *core_missing(CoreObject *self, PyObject *arg)
{
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(missing_domain(&self->table, id > UINT32_MAX ? 0 : (uint32_t)id));
}

static int core_set_capacity(CoreObject *self, PyObject *v, void *closure)
{
    (void)closure;
    unsigned long long cap = v ? PyLong_AsUnsignedLongLong(v) : 0;
    if (v == NULL || PyErr_Occurred()) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "table_capacity cannot be deleted");
        return -1;
    }
    self->table.capacity = cap;
    return 0;
}

static PyMethodDef core_methods[] = {
    {"add_client", (PyCFunction)core_add_client, METH_VARARGS,
     "add_client(id, outbound, is_monitor)"},
    {"client_gone", (PyCFunction)core_client_gone, METH_O,
     "client_gone(id): drop what waits for it"},
    {"add_spawnd", (PyCFunction)core_add_spawnd, METH_VARARGS,
     "add_spawnd(core, outbound) -> Err"},
    {"spawnd_died", (PyCFunction)core_spawnd_died, METH_O,
     "spawnd_died(core): fail what waited on it; its domains lost their dispatchers there"},
    {"dispatch_client", (PyCFunction)core_dispatch_client, METH_VARARGS,
     "dispatch_client(id, msg) -> True if the request is Python's to answer"},
    {"dispatch_spawnd", (PyCFunction)core_dispatch_spawnd, METH_VARARGS,
     "dispatch_spawnd(core, msg): a Msg from that spawnd"},
    {"undecodable", (PyCFunction)(void (*)(void))core_undecodable, METH_VARARGS | METH_KEYWORDS,
     "undecodable(kind, key, op=0, seq=0, err=BAD_MESSAGE, detail=''): a message Python "
     "could not decode"},
    {"handler_failed", (PyCFunction)core_handler_failed, METH_VARARGS,
     "handler_failed(client_id, op, seq): a Python handler raised; answered INTERNAL"},
    {"lost", (PyCFunction)core_lost, METH_VARARGS,
     "lost(kind, key) -> True once that peer's ring was found closed"},
    {"mid_message", (PyCFunction)core_mid_message, METH_VARARGS,
     "mid_message(kind, key, flag): Python's decoder holds part of a message from it"},
    {"answer", (PyCFunction)(void (*)(void))core_answer, METH_VARARGS | METH_KEYWORDS,
     "answer(client_id, op, seq, err=0, status=0, flags=0, dom=0, nonce=0, core=0, "
     "payload=b''): exactly once"},
    {"flush", (PyCFunction)core_flush, METH_VARARGS,
     "flush(kind, key) -> True once nothing waits in the peer's outbox"},
    {"backlogged", (PyCFunction)core_backlogged_py, METH_VARARGS,
     "backlogged(kind, key) -> True if messages to the peer wait for room"},
    {"domain", (PyCFunction)core_domain, METH_O, "domain(id) -> dict of its fields, or None"},
    {"missing", (PyCFunction)core_missing, METH_O,
     "missing(id) -> DOMAIN_FORGOTTEN (issued, then forgotten) or DOMAIN_TABLE_FIND"},
    {"domain_ids_from", (PyCFunction)core_domain_ids_from, METH_VARARGS,
     "domain_ids_from(start, limit) -> (up to limit ids >= start not yet cleaned, more?)"},
    {"ended_ids_from", (PyCFunction)core_ended_ids_from, METH_VARARGS,
     "ended_ids_from(start, limit) -> (up to limit ids >= start of ended domains kept, more?)"},
    {"domain_ids", (PyCFunction)core_domain_ids, METH_NOARGS,
     "ids of the domains not yet cleaned, in creation order"},
    {"record_event", (PyCFunction)core_record_event, METH_VARARGS,
     "record_event(kind, dom, core, pid, status, err, flags, name): a program's event"},
    {"events_after", (PyCFunction)core_events_after, METH_VARARGS,
     "events_after(after, max_bytes) -> (EVENTS' answer payload, seq of its last event)"},
    {"client", (PyCFunction)core_client, METH_O,
     "client(id) -> (received, answered, outstanding seqs, outbox length), or None"},
    {"spawnd", (PyCFunction)core_spawnd, METH_O, "spawnd(core) -> dict, or None"},
    {"set_next_seq", (PyCFunction)core_set_next_seq, METH_VARARGS,
     "set_next_seq(core, seq)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"protocol_errors", T_ULONGLONG, offsetof(CoreObject, protocol_errors), 0,
     "requests that could not be read, and exit reports naming no domain"},
    {"internal_errors", T_ULONGLONG, offsetof(CoreObject, internal_errors), 0,
     "bugs caught in a handler"},
    {"answered_gone", T_ULONGLONG, offsetof(CoreObject, answered_gone), READONLY,
     "answers counted for clients since gone"},
    {"events_wanted", T_ULONGLONG, offsetof(CoreObject, events_wanted), 0,
     "the event seq requests waiting in Python wait for (0: none): the loop's wait "
     "returns to Python once it is recorded"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"table_capacity", (getter)core_get_capacity, (setter)core_set_capacity,
     "most domains live at once", NULL},
    {"last_event", (getter)core_get_last_event, NULL, "seq of the newest event (0: none)",
     NULL},
    {"worker_requests", (getter)core_get_worker_requests, NULL,
     "requests sent to the workers and not yet answered, or queued to be sent, over all cores",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods core_as_sequence = {.sq_length = (lenfunc)core_len};

static PyTypeObject CoreType;

int core_check(PyObject *o)
{
    return PyObject_TypeCheck(o, &CoreType);
}

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.manager._core.Core",
    .tp_doc = "Core(pending='replyq', "
              "reply_queue=1024, max_cores=1024, table_capacity=1<<20, history=4096, "
              "events=8192): "
              "the manager's state and handlers (see procmgr/manager/core/README.md)",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_getset = core_getset,
    .tp_as_sequence = &core_as_sequence,
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "procmgr.manager._core",
    "The manager's core (state and handlers) and its loop's ring work; see "
    "procmgr/manager/core/README.md.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&core_module);
    if (mod == NULL)
        return NULL;
    AnswerTwice = PyErr_NewExceptionWithDoc(
        "procmgr.manager._core.AnswerTwice", "A request was answered twice or answered without "
        "being received.", PyExc_AssertionError, NULL);
    IllegalTransition = PyErr_NewExceptionWithDoc(
        "procmgr.manager._core.IllegalTransition", "A handler tried an edge the domain state machine "
        "does not have: a bug.", PyExc_AssertionError, NULL);
    PyObject *wire = PyImport_ImportModule("procmgr.protocol._wire");
    msg_type = wire ? (PyTypeObject *)PyObject_GetAttrString(wire, "Msg") : NULL;
    Py_XDECREF(wire);
    if (msg_type == NULL) {
        Py_DECREF(mod);
        return NULL;
    }
    if (AnswerTwice == NULL || IllegalTransition == NULL ||
        pending_register(mod) < 0 ||
        PyModule_AddObjectRef(mod, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObjectRef(mod, "AnswerTwice", AnswerTwice) < 0 ||
        PyModule_AddObjectRef(mod, "IllegalTransition", IllegalTransition) < 0 ||
        PyModule_AddIntConstant(mod, "PEER_SPAWND", PEER_SPAWND) < 0 ||
        PyModule_AddIntConstant(mod, "PEER_CLIENT", PEER_CLIENT) < 0 ||
        PyModule_AddIntConstant(mod, "SERVE_BUDGET", SERVE_BUDGET) < 0 ||
        loop_register(mod) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
