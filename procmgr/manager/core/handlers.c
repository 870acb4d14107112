/*
 * What the core does with each message: one handler per client request
 * (client_handlers, by op), one per spawnd reply (reply_handler_of, by
 * op), one for the exit report a spawnd sends when a dispatcher ends by
 * itself (dispatcher_exit), and the stop sequence they share (begin_stop,
 * maybe_stopped). dispatch_client and dispatch_spawnd are the two ways in,
 * from the rings (serve.c) and from Python (module.c) alike.
 *
 * Behaviour is the one handlers.py documented, defect by defect
 * (docs/defects.md); the comments at each handler say which.
 *
 * Invariants kept here:
 * - Every path answers its request exactly once, now or later, and a later
 *   answer is owned by one record: a pending slot, a domain's waiters or
 *   killers, or its deferred list.
 * - A reply handler runs between the pending structure's match and its
 *   release, so a request it sends meanwhile can never be given the slot
 *   it is still reading (_pending.c).
 * - A bug in a handler does not take the manager, and everyone else's
 *   answers, down: it is counted, printed and answered INTERNAL
 *   (internal_error). AnswerTwice, the exactly-once check itself, is the
 *   one exception let through.
 * - A client has at most MAX_IN_FLIGHT requests unanswered; past that, a
 *   request is answered BUSY at once.
 */
#include "core.h"
#include "spawn_payload.h"   /* the one reader of a spawn's payload */

/* Requests one client may have unanswered at once. Each costs the manager
 * a few dozen bytes until it is answered (a wait until its domain ends):
 * without a bound, one client parking waits under 2^32 sequence numbers
 * took the manager to 1.3 GB, and answering them all at its domain's end
 * stalled everyone for seconds. Past it a request is answered BUSY at
 * once. Far above what a pipelining client keeps in flight (tests keep
 * 40,000). */
#define MAX_IN_FLIGHT 65536

static inline const char *bytes_of(PyObject *b) { return PyBytes_AS_STRING(b); }
static inline uint32_t len_of(PyObject *b) { return (uint32_t)PyBytes_GET_SIZE(b); }

/* ---- the stop sequence, shared by kill, exit, and dispatcher deaths ---------- */

/* A kill to every core still running d. */
static int send_kills(CoreObject *c, struct domain *d)
{
    d->has_kill_error = 0;
    struct coreset cores = {0, 0, NULL};
    for (uint32_t i = 0; i < d->live.n; i++)
        if (cs_add(&cores, d->live.v[i]) < 0)
            goto fail;
    for (uint32_t i = 0; i < cores.n; i++) {
        uint16_t core = cores.v[i];
        struct spawnd *sd = spawnd_of(c, core);
        if (sd == NULL) {     /* its worker is gone, and its processes with it */
            dispatcher_stopped(d, core);
            cs_discard(&d->held, core);
            continue;
        }
        d->kills_in_flight++;
        /* The signal and grace a killer asked for; nothing for the defaults. */
        uint32_t how[2] = {d->stop_signal, d->stop_grace_ms};
        int asked = d->stop_asked && (d->stop_signal != 0 || how[1] != KILL_GRACE_DEFAULT);
        if (sd_send(sd, OP_SD_KILL, d->id, d->nonce, asked ? (const char *)how : "",
                    asked ? sizeof how : 0, 0, 0, 0) < 0)
            goto fail;
    }
    PyMem_Free(cores.v);
    return 0;
fail:
    PyMem_Free(cores.v);
    return -1;
}

/* RUNNING -> STOP_PEND: the status recorded once, every core told to stop. */
int begin_stop(CoreObject *c, struct domain *d, int32_t status, int signaled)
{
    if (transition(&c->table, d, STATE_STOP_PEND) < 0)
        return -1;
    d->has_exit = 1;
    d->exit_status = status;
    d->signaled = (uint8_t)signaled;
    if (send_kills(c, d) < 0)
        return -1;
    return maybe_stopped(c, d);
}

/* If no core runs d any more: STOPPED, everyone waiting answered, cleanup. */
int maybe_stopped(CoreObject *c, struct domain *d)
{
    if (d->state != STATE_STOP_PEND || d->live.n != 0)
        return 0;
    if (transition(&c->table, d, STATE_STOPPED) < 0)
        return -1;
    uint8_t flags = d->signaled ? FLAG_SIGNALED : 0;
    struct owedvec killers = d->killers, waiters = d->waiters;
    memset(&d->killers, 0, sizeof d->killers);
    memset(&d->waiters, 0, sizeof d->waiters);
    int rc = 0;
    for (uint32_t i = 0; i < killers.n && rc == 0; i++)
        rc = answer_err(c, killers.v[i].client, OP_KILL, killers.v[i].seq, E_OK, 0, d->id,
                        d->nonce, 0);
    for (uint32_t i = 0; i < waiters.n && rc == 0; i++) {
        struct answer a = {.op = OP_WAIT, .seq = waiters.v[i].seq, .status = d->exit_status,
                           .flags = flags, .dom = d->id, .nonce = d->nonce};
        rc = answer(c, waiters.v[i].client, &a);
    }
    PyMem_Free(killers.v);
    PyMem_Free(waiters.v);
    if (rc < 0)
        return -1;
    struct coreset held = {0, 0, NULL};
    for (uint32_t i = 0; i < d->held.n; i++)
        if (cs_add(&held, d->held.v[i]) < 0) {
            PyMem_Free(held.v);
            return -1;
        }
    for (uint32_t i = 0; i < held.n && rc == 0; i++) {
        struct spawnd *sd = spawnd_of(c, held.v[i]);
        if (sd == NULL)
            cs_discard(&d->held, held.v[i]);
        else
            rc = sd_send(sd, OP_SD_CLEANUP, d->id, d->nonce, "", 0, 0, 0, 0);
    }
    PyMem_Free(held.v);
    if (rc < 0)
        return -1;
    if (d->held.n == 0)
        return dispatcher_cleaned(&c->table, d, d->home_core) < 0 ? -1 : 0;
    return 0;
}

/* ---- client requests -----------------------------------------------------------
 * One short function per request; every path answers it exactly once, now
 * or later (a later answer is owned by a pending slot, a domain's waiters or
 * killers, or its deferred list). */

/* Answer a request with its own domain, nonce and core. */
static int answer_req(CoreObject *c, uint32_t client, const struct req *r, uint16_t err,
                      int32_t status, uint8_t flags)
{
    struct answer a = {.op = r->h.op, .seq = r->h.seq, .err = err, .status = status,
                       .flags = flags, .dom = r->h.dom, .nonce = r->h.nonce, .core = r->h.core};
    return answer(c, client, &a);
}

/* INVALID_SPAWND, saying which cores are served ("cores 0-3, 5"): the
 * client knows the number it sent, not the runtime's cores. */
static int answer_no_spawnd(CoreObject *c, uint32_t client, const struct req *r)
{
    char text[256];
    int n = snprintf(text, sizeof text, "core %u; cores served: ", r->h.core);
    int any = 0;
    for (uint32_t k = 0; k < c->max_cores && n < (int)sizeof text - 24; k++) {
        if (c->spawnds[k] == NULL || (k > 0 && c->spawnds[k - 1] != NULL))
            continue;            /* not the first of a run */
        uint32_t last = k;
        while (last + 1 < c->max_cores && c->spawnds[last + 1] != NULL)
            last++;
        n += last == k ? snprintf(text + n, sizeof text - (size_t)n, "%s%u", any ? ", " : "", k)
                       : snprintf(text + n, sizeof text - (size_t)n, "%s%u-%u", any ? ", " : "",
                                  k, last);
        any = 1;
    }
    if (!any)
        snprintf(text + n, sizeof text - (size_t)n, "none");
    return answer_detail(c, client, r->h.op, r->h.seq, E_INVALID_SPAWND, text);
}

/* The domain a request's cap names, or NULL with its error answered
 * (*err < 0: an exception). */
static struct domain *req_domain(CoreObject *c, uint32_t client, const struct req *r, int *rc)
{
    struct domain *d = table_by_id(&c->table, r->h.dom);
    *rc = 0;
    if (d == NULL)
        *rc = answer_req(c, client, r, missing_domain(&c->table, r->h.dom), 0, 0);
    else if (d->nonce != r->h.nonce)
        *rc = answer_req(c, client, r, E_BAD_CAP, 0, 0);
    else
        return d;
    return NULL;
}

/* A spawn is read here, by the one reader of its payload (spawn_payload.h):
 * a payload that breaks a rule is answered with what is wrong, and nothing
 * is created or sent. */
static int h_spawn(CoreObject *c, uint32_t client, const struct req *r)
{
    struct spawn_refusal why;
    PyObject *args = spawn_decode((const uint8_t *)bytes_of(r->payload), len_of(r->payload),
                                  &why);
    if (args == NULL) {
        if (why.detail == NULL)
            return -1;       /* out of memory */
        const char *text = PyUnicode_AsUTF8(why.detail);
        int rc = text == NULL ? -1 : answer_detail(c, client, r->h.op, r->h.seq, why.code, text);
        Py_DECREF(why.detail);
        return rc;
    }
    /* The argv kept with the domain -- for status and ps, for as long as
     * the table remembers it, ended too -- is what status shows: cut at
     * ARG_LIMIT, whole items. Kept whole, a MiB of two-byte arguments
     * held 24 MiB of str objects per ended domain. */
    PyObject *full = PyTuple_GET_ITEM(args, 1);
    Py_ssize_t keep = 0, size = 0;
    while (keep < PyList_GET_SIZE(full) &&
           (size += PyUnicode_GET_LENGTH(PyList_GET_ITEM(full, keep)) + 1) <= ARG_LIMIT)
        keep++;
    PyObject *argv = PyList_GetSlice(full, 0, keep);
    if (argv == NULL) {
        Py_DECREF(args);
        return -1;
    }
    int rc = 0, has_caps = PyList_GET_SIZE(PyTuple_GET_ITEM(args, 3)) != 0;
    /* How it is stopped, if the spawn says: (signal, grace ms), checked. */
    PyObject *stop = PyTuple_GET_ITEM(args, 6);
    long stop_signal = 0;
    unsigned long stop_grace = KILL_GRACE_DEFAULT;
    if (stop != Py_None) {
        stop_signal = PyLong_AsLong(PyTuple_GET_ITEM(stop, 0));
        stop_grace = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(stop, 1));
    }
    Py_DECREF(args);
    if (has_caps && r->h.op == OP_SPAWN) {
        rc = answer_detail(c, client, r->h.op, r->h.seq, E_BAD_MESSAGE,
                           "spawn carries caps: use spawn_with_caps");
    } else {
        struct spawnd *sd = spawnd_of(c, r->h.core);
        if (sd == NULL) {
            rc = answer_no_spawnd(c, client, r);
        } else if (c->table.nlive >= c->table.capacity) {
            rc = answer_req(c, client, r, E_CREATE_DOMAIN_CAP, 0, 0);
        } else {
            struct domain *d = table_create(&c->table, argv, r->h.core, r->payload);
            if (d != NULL && stop != Py_None) {
                d->stop_asked = 1;
                d->stop_signal = (uint8_t)stop_signal;
                d->stop_grace_ms = (uint32_t)stop_grace;
            }
            rc = d == NULL ? -1
                 : sd_send(sd, OP_SD_SPAWN, d->id, d->nonce, bytes_of(r->payload),
                           len_of(r->payload), client, r->h.seq, r->h.op);
        }
    }
    Py_XDECREF(argv);
    return rc;
}

static int h_span(CoreObject *c, uint32_t client, const struct req *r)
{
    int rc;
    struct domain *d = req_domain(c, client, r, &rc);
    if (d == NULL)
        return rc;
    if (d->state != STATE_RUNNING)
        return answer_req(c, client, r, E_DOMAIN_NOT_RUNNING, 0, 0);
    /* Every core it ever ran on, not only those holding it: a core whose
     * dispatcher ended and released it is not spanned to again. */
    for (uint32_t i = 0; i < d->cores.n; i++)
        if (d->cores.v[i].core == r->h.core)
            return answer_req(c, client, r, E_ALREADY_SPANNED, 0, 0);
    if (cs_has(&d->span_pending, r->h.core))
        return answer_req(c, client, r, E_ALREADY_SPANNED, 0, 0);
    struct spawnd *sd = spawnd_of(c, r->h.core);
    if (sd == NULL)
        return answer_no_spawnd(c, client, r);
    /* Counted as running from now on, so a kill sent meanwhile also goes to
     * this core -- after the span in that spawnd's order, so it finds it. */
    if (cs_add(&d->span_pending, r->h.core) < 0 || cs_add(&d->live, r->h.core) < 0)
        return -1;
    PyObject *payload = d->payload;
    return sd_send(sd, OP_SD_SPAN, d->id, d->nonce, bytes_of(payload), len_of(payload),
                   client, r->h.seq, 0);
}

static int h_kill(CoreObject *c, uint32_t client, const struct req *r)
{
    int rc;
    struct domain *d = req_domain(c, client, r, &rc);
    if (d == NULL)
        return rc;
    /* How: a signal (status) and a grace in ms (an optional u32 payload). */
    uint32_t plen = len_of(r->payload);
    if (r->h.status < 0 || r->h.status > KILL_MAX_SIGNAL || (plen != 0 && plen != 4))
        return answer_detail(c, client, r->h.op, r->h.seq, E_BAD_MESSAGE,
                             "a kill's status is a signal number (0: the runtime's) and "
                             "its payload nothing or a 4-byte grace in ms");
    struct owed me = {client, r->h.seq};
    int says_how = r->h.status != 0 || plen == 4;
    if (d->state == STATE_NIL || d->state == STATE_RUNNING ||
        (d->state == STATE_STOP_PEND && says_how)) {
        /* The stop goes the way the kill says, where it says; elsewhere
         * the spawn's, or the worker's. A kill while it is stopping that
         * says how is sent on too: its signal, and a grace that may end
         * the stop sooner (never later: spawnd_workers/worker.py). */
        if (!d->stop_asked) {
            d->stop_asked = 1;
            d->stop_signal = 0;
            d->stop_grace_ms = KILL_GRACE_DEFAULT;
        }
        if (r->h.status != 0)
            d->stop_signal = (uint8_t)r->h.status;
        if (plen == 4)
            memcpy(&d->stop_grace_ms, bytes_of(r->payload), 4);
    }
    switch (d->state) {
    case STATE_NIL: {
        struct deferred k = {OP_KILL, 0, client, r->h.seq, EXIT_STATUS_KILLED};
        return VEC_PUSH(&d->deferred, k);
    }
    case STATE_RUNNING:
        if (VEC_PUSH(&d->killers, me) < 0)
            return -1;
        d->killed = 1;
        return begin_stop(c, d, EXIT_STATUS_KILLED, 0);
    case STATE_STOP_PEND:          /* answered when it has stopped (defect 11) */
        if (VEC_PUSH(&d->killers, me) < 0)
            return -1;
        if (!says_how)
            return 0;
        return send_kills(c, d) < 0 ? -1 : maybe_stopped(c, d);
    default:                 /* defect 10 */
        return answer_req(c, client, r, E_DOMAIN_NOT_RUNNING, 0, 0);
    }
}

/* The domain itself says it exits with status; acknowledged at once (defect 13). */
static int h_exit(CoreObject *c, uint32_t client, const struct req *r)
{
    int rc;
    struct domain *d = req_domain(c, client, r, &rc);
    if (d == NULL)
        return rc;
    if (d->state == STATE_NIL) {
        struct deferred e = {OP_EXIT, 0, 0, 0, r->h.status};
        if (VEC_PUSH(&d->deferred, e) < 0)
            return -1;
    } else if (d->state == STATE_RUNNING) {
        if (begin_stop(c, d, r->h.status, 0) < 0)
            return -1;
    } else {
        return answer_req(c, client, r, E_DOMAIN_NOT_RUNNING, 0, 0);
    }
    return answer_req(c, client, r, E_OK, 0, 0);
}

/* Answered at once on STOPPED or CLEANED (defect 8); nohang never touches
 * the exit status. */
static int h_wait(CoreObject *c, uint32_t client, const struct req *r)
{
    int rc;
    struct domain *d = req_domain(c, client, r, &rc);
    if (d == NULL)
        return rc;
    if (d->has_spawn_error)
        return answer_req(c, client, r, d->spawn_err, d->spawn_status, 0);
    if (d->state == STATE_STOPPED || d->state == STATE_CLEANED)
        return answer_req(c, client, r, E_OK, d->has_exit ? d->exit_status : 0,
                          d->signaled ? FLAG_SIGNALED : 0);
    if (r->h.flags & FLAG_NOHANG)
        return answer_req(c, client, r, E_OK, 0, FLAG_STILL_RUNNING);
    struct owed me = {client, r->h.seq};
    return VEC_PUSH(&d->waiters, me);
}

/* A signal to every core that runs the domain, answered once every one
 * has answered: OK (or its first error). Ending it is kill's; a domain
 * that is not RUNNING is not signalled. */
static int h_signal(CoreObject *c, uint32_t client, const struct req *r)
{
    int rc;
    struct domain *d = req_domain(c, client, r, &rc);
    if (d == NULL)
        return rc;
    if (r->h.status <= 0 || r->h.status > KILL_MAX_SIGNAL || len_of(r->payload) != 0)
        return answer_detail(c, client, r->h.op, r->h.seq, E_BAD_MESSAGE,
                             "a signal's status is a signal number and it has no payload");
    if (d->state != STATE_RUNNING && d->state != STATE_STOP_PEND)
        return answer_req(c, client, r, E_DOMAIN_NOT_RUNNING, 0, 0);
    struct coreset cores = {0, 0, NULL};
    for (uint32_t i = 0; i < d->live.n; i++)
        if (cs_add(&cores, d->live.v[i]) < 0) {
            PyMem_Free(cores.v);
            return -1;
        }
    uint32_t sig = (uint32_t)r->h.status;
    int sent = 0;
    rc = 0;
    for (uint32_t i = 0; i < cores.n && rc == 0; i++) {
        struct spawnd *sd = spawnd_of(c, cores.v[i]);
        if (sd == NULL)
            continue;             /* its worker is gone, and its processes with it */
        rc = sd_send(sd, OP_SD_SIGNAL, d->id, d->nonce, (const char *)&sig, sizeof sig, 0, 0,
                     0);
        d->signals_in_flight += rc == 0;
        sent += rc == 0;
    }
    PyMem_Free(cores.v);
    if (rc < 0)
        return -1;
    if (sent == 0)
        return answer_req(c, client, r, E_DOMAIN_NOT_RUNNING, 0, 0);
    struct owed me = {client, r->h.seq};
    return VEC_PUSH(&d->signalers, me);
}

typedef int (*client_handler)(CoreObject *, uint32_t, const struct req *);

/* NULL: answered in Python (is_python_op). */
static const client_handler client_handlers[LAST_CLIENT_OP + 1] = {
    [OP_SPAWN] = h_spawn, [OP_SPAWN_WITH_CAPS] = h_spawn, [OP_SPAN] = h_span,
    [OP_KILL] = h_kill, [OP_EXIT] = h_exit, [OP_WAIT] = h_wait, [OP_SIGNAL] = h_signal,
};

/* A bug must not take the manager, and everyone else's answers, down:
 * report it, answer the request if it still waits, carry on. AnswerTwice
 * is the one exception let through: it is the exactly-once check itself. */
int internal_error(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq)
{
    /* KeyboardInterrupt and SystemExit are not bugs: they go on up. */
    if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(AnswerTwice))
        return -1;
    c->internal_errors++;
    PyErr_Print();
    struct client *cl = client_of(c, client);
    if (cl != NULL && map_get(&cl->outstanding, seq_key(seq)) != NULL)
        return answer_err(c, client, op, seq, E_INTERNAL, 0, 0, 0, 0);
    return 0;
}

int dispatch_client(CoreObject *c, struct client *cl, const struct req *r)
{
    cl->received++;
    uint32_t id = cl->id;
    if (map_get(&cl->outstanding, seq_key(r->h.seq)) != NULL) {
        c->protocol_errors++;    /* a second request under a seq still pending */
        return 0;
    }
    if (map_put(&cl->outstanding, seq_key(r->h.seq), owed_on(r->h.dom)) < 0)
        return -1;
    uint8_t op = r->h.op;
    int rc;
    if (cl->outstanding.n > MAX_IN_FLIGHT) {
        rc = answer_req(c, id, r, E_BUSY, 0, 0);
    } else if (op > LAST_CLIENT_OP || (r->h.flags & FLAG_REPLY) ||
        (client_handlers[op] == NULL && !is_python_op(op))) {
        rc = answer_req(c, id, r, E_UNKNOWN_OP, 0, 0);
    } else if (client_handlers[op] != NULL) {
        rc = client_handlers[op](c, id, r);
    } else {
        return 1;            /* Python's to answer: recorded, and left to it */
    }
    if (rc < 0)
        return internal_error(c, id, op, r->h.seq);
    return 0;
}

/* A request Python could not decode: answerable when its header said who
 * asked; a bare garbage slot has no request to answer, and is only counted. */
int client_protocol_error(CoreObject *c, struct client *cl, uint8_t op, uint32_t seq,
                          uint16_t err, const char *detail)
{
    cl->received++;
    c->protocol_errors++;
    if (op == 0 || seq == 0 || map_get(&cl->outstanding, seq_key(seq)) != NULL)
        return 0;
    /* An op the client's decoder would refuse too cannot be echoed. */
    uint8_t echo = op >= FIRST_CLIENT_OP && op <= LAST_CLIENT_OP ? op : OP_UNREADABLE;
    if (map_put(&cl->outstanding, seq_key(seq), PRESENT) < 0)
        return -1;
    return answer_detail(c, cl->id, echo, seq, err, detail);
}

/* ---- spawnd replies ------------------------------------------------------------
 * handler(c, sd, slot, reply), called between the pending structure's match
 * and release. */

void read_slot(const PendingSlotObject *slot, struct slotv *s)
{
    s->seq = (uint32_t)slot->seq;
    s->op = slot->op;
    s->dom = slot->dom;
    s->client = slot->client;
    s->client_seq = slot->client_seq;
    s->extra = slot->extra;
}

static struct domain *slot_domain(CoreObject *c, const struct slotv *s)
{
    struct domain *d = table_by_id(&c->table, s->dom);
    if (d == NULL)
        PyErr_Format(PyExc_RuntimeError, "a pending request names domain %u, "
                     "which the table does not have", s->dom);
    return d;
}

/* Whoever waited on a domain whose spawn failed gets the spawn's error. */
static int spawn_never_ran(CoreObject *c, struct domain *d, uint16_t err, int32_t status)
{
    struct defvec deferred = d->deferred;
    struct owedvec waiters = d->waiters;
    memset(&d->deferred, 0, sizeof d->deferred);
    memset(&d->waiters, 0, sizeof d->waiters);
    int rc = 0;
    for (uint32_t i = 0; i < deferred.n && rc == 0; i++)
        if (deferred.v[i].client != 0)
            rc = answer_err(c, deferred.v[i].client, deferred.v[i].op, deferred.v[i].seq, err,
                            0, d->id, d->nonce, status);
    for (uint32_t i = 0; i < waiters.n && rc == 0; i++)
        rc = answer_err(c, waiters.v[i].client, OP_WAIT, waiters.v[i].seq, err, 0, d->id,
                        d->nonce, status);
    PyMem_Free(deferred.v);
    PyMem_Free(waiters.v);
    if (rc < 0)
        return -1;
    d->has_spawn_error = 1;
    d->spawn_err = err;
    d->spawn_status = status;
    return table_retire(&c->table, d);
}

static int r_spawn(CoreObject *c, struct spawnd *sd, const struct slotv *s,
                   const struct reply *m)
{
    struct domain *d = slot_domain(c, s);
    if (d == NULL)
        return -1;
    uint8_t client_op = (uint8_t)s->extra;
    if (m->h.err != E_OK) {
        struct answer a = {.op = client_op, .seq = s->client_seq, .err = m->h.err,
                           .status = m->h.status, .core = sd->core, .payload = m->payload,
                           .plen = m->plen};
        if (answer(c, s->client, &a) < 0)
            return -1;
        return spawn_never_ran(c, d, m->h.err, m->h.status);
    }
    if (dispatcher_started(&c->table, d, sd->core, m->h.status) < 0)
        return -1;
    if (answer_err(c, s->client, client_op, s->client_seq, E_OK, sd->core, d->id, d->nonce,
                   m->h.status) < 0)
        return -1;
    /* What overtook the reply (defect 15), carried out now, in order. */
    struct defvec deferred = d->deferred;
    memset(&d->deferred, 0, sizeof d->deferred);
    int rc = 0;
    for (uint32_t i = 0; i < deferred.n && rc == 0; i++) {
        struct deferred *e = &deferred.v[i];
        if (e->op == OP_SD_EXIT)
            dispatcher_stopped(d, sd->core);
        if (e->op == OP_KILL) {
            struct owed k = {e->client, e->seq};
            if (VEC_PUSH(&d->killers, k) < 0) {   /* answered at STOPPED */
                rc = -1;
                break;
            }
            d->killed |= d->state == STATE_RUNNING;
        }
        rc = d->state == STATE_RUNNING ? begin_stop(c, d, e->status, e->signaled)
                                 : maybe_stopped(c, d);
    }
    PyMem_Free(deferred.v);
    return rc;
}

/* Span is answered once, after the spawnd's reply (defect 4), and recorded
 * so kill and cleanup reach the new core (defect 5). */
static int r_span(CoreObject *c, struct spawnd *sd, const struct slotv *s,
                  const struct reply *m)
{
    struct domain *d = slot_domain(c, s);
    if (d == NULL)
        return -1;
    cs_discard(&d->span_pending, sd->core);
    if (m->h.err == E_OK) {
        struct dispatcher disp = {sd->core, m->h.status};
        if (VEC_PUSH(&d->cores, disp) < 0 || cs_add(&d->held, sd->core) < 0)
            return -1;
        return answer_err(c, s->client, OP_SPAN, s->client_seq, E_OK, sd->core, d->id,
                          d->nonce, m->h.status);
    }
    cs_discard(&d->live, sd->core);
    if (answer_err(c, s->client, OP_SPAN, s->client_seq, m->h.err, sd->core, d->id, d->nonce,
                   m->h.status) < 0)
        return -1;
    return maybe_stopped(c, d);
}

/* A kill reply counts a core once, however the stop is reported; a failed
 * kill answers every killer with the error and puts the domain back to
 * RUNNING, so its own exit still counts (defect 12). Done means killed,
 * NOT_FOUND (it had exited already) or SPAWND_DIED (it died with its worker). */
static void take_usage(struct domain *d, const struct reply *m);

static int r_kill(CoreObject *c, struct spawnd *sd, const struct slotv *s,
                  const struct reply *m)
{
    struct domain *d = slot_domain(c, s);
    if (d == NULL)
        return -1;
    d->kills_in_flight--;
    uint16_t err = m->h.err;
    if (err == E_OK && (m->h.flags & FLAG_STOPPING)) {
        /* Signalled, still in its grace: its SD_EXIT counts the core. */
    } else if (err == E_OK || err == E_NOT_FOUND || err == E_SPAWND_DIED) {
        dispatcher_stopped(d, sd->core);
        if (m->h.flags & FLAG_RELEASED) {
            cs_discard(&d->held, sd->core);
            take_usage(d, m);
        }
    } else {
        d->has_kill_error = 1;
        d->kill_err = err;
        d->kill_status = m->h.status;
    }
    if (d->live.n == 0)
        return maybe_stopped(c, d);
    if (d->kills_in_flight == 0 && d->has_kill_error) {
        /* It still runs somewhere: not stopped. Every killer hears why. */
        struct owedvec killers = d->killers;
        memset(&d->killers, 0, sizeof d->killers);
        int rc = 0;
        for (uint32_t i = 0; i < killers.n && rc == 0; i++)
            rc = answer_err(c, killers.v[i].client, OP_KILL, killers.v[i].seq, d->kill_err, 0,
                            d->id, d->nonce, d->kill_status);
        PyMem_Free(killers.v);
        if (rc < 0)
            return -1;
        if (d->state == STATE_STOP_PEND) {
            if (transition(&c->table, d, STATE_RUNNING) < 0)
                return -1;
            d->has_exit = 0;
            d->exit_status = 0;
            d->signaled = 0;
            d->killed = 0;
        }
    }
    return 0;
}

/* Every signaller answered once the last core has: a dispatcher that had
 * ended there meanwhile (NOT_FOUND), or died with its worker, was no
 * failure to signal it. */
static int r_signal(CoreObject *c, struct spawnd *sd, const struct slotv *s,
                    const struct reply *m)
{
    (void)sd;
    struct domain *d = slot_domain(c, s);
    if (d == NULL)
        return -1;
    d->signals_in_flight--;
    uint16_t err = m->h.err;
    if (err != E_OK && err != E_NOT_FOUND && err != E_SPAWND_DIED && d->signal_err == E_OK)
        d->signal_err = err;
    if (d->signals_in_flight > 0)
        return 0;
    struct owedvec signalers = d->signalers;
    memset(&d->signalers, 0, sizeof d->signalers);
    err = d->signal_err;
    d->signal_err = E_OK;
    int rc = 0;
    for (uint32_t i = 0; i < signalers.n && rc == 0; i++)
        rc = answer_err(c, signalers.v[i].client, OP_SIGNAL, signalers.v[i].seq, err, 0, d->id,
                        d->nonce, 0);
    PyMem_Free(signalers.v);
    return rc;
}

static int r_cleanup(CoreObject *c, struct spawnd *sd, const struct slotv *s,
                     const struct reply *m)
{
    (void)m;
    struct domain *d = table_by_id(&c->table, s->dom);
    if (d != NULL && dispatcher_cleaned(&c->table, d, sd->core) < 0)
        return -1;
    return 0;
}

typedef int (*reply_handler)(CoreObject *, struct spawnd *, const struct slotv *,
                             const struct reply *);

static reply_handler reply_handler_of(uint8_t op)
{
    switch (op) {
    case OP_SD_SPAWN: return r_spawn;
    case OP_SD_SPAN: return r_span;
    case OP_SD_KILL: return r_kill;
    case OP_SD_CLEANUP: return r_cleanup;
    case OP_SD_SIGNAL: return r_signal;
    default: return NULL;
    }
}

/* The client request each spawnd request serves (spawn keeps its own in extra). */
uint8_t client_op_of(const struct slotv *s)
{
    if (s->extra)
        return (uint8_t)s->extra;
    switch (s->op) {
    case OP_SD_SPAWN: return OP_SPAWN;
    case OP_SD_SPAN: return OP_SPAN;
    case OP_SD_SIGNAL: return OP_SIGNAL;
    default: return OP_KILL;
    }
}

/* A request that will never get its reply: answered as if it failed. */
int fail_pending(CoreObject *c, struct spawnd *sd, const struct slotv *s, uint16_t err)
{
    struct reply m;
    memset(&m, 0, sizeof m);
    m.h.op = s->op;
    m.h.seq = s->seq;
    m.h.dom = s->dom;
    m.h.err = err;
    m.payload = "";
    return reply_handler_of(s->op)(c, sd, s, &m);
}

/* A dispatcher's usage, from the message that says it ended, added to its
 * domain's. A worker's word: any other length is none, and sums saturate. */
static void take_usage(struct domain *d, const struct reply *m)
{
    if (m->plen != USAGE_BYTES)
        return;
    uint64_t user, sys;
    uint32_t rss;
    memcpy(&user, m->payload, 8);
    memcpy(&sys, m->payload + 8, 8);
    memcpy(&rss, m->payload + 16, 4);
    d->user_us = d->user_us + user < d->user_us ? UINT64_MAX : d->user_us + user;
    d->system_us = d->system_us + sys < d->system_us ? UINT64_MAX : d->system_us + sys;
    if (rss > d->max_rss_kib)
        d->max_rss_kib = rss;
    d->has_usage = 1;
}

/* SD_EXIT: a dispatcher of the domain on this core ended by itself. */
static int dispatcher_exit(CoreObject *c, struct spawnd *sd, const struct reply *m)
{
    struct domain *d = table_by_id(&c->table, m->h.dom);
    if (d == NULL || d->nonce != m->h.nonce) {
        c->protocol_errors++;
        return 0;
    }
    take_usage(d, m);
    int signaled = (m->h.flags & FLAG_SIGNALED) != 0;
    if (d->state == STATE_NIL) {
        /* Overtook its own spawn reply: counted once the reply has made it
         * a running dispatcher. */
        struct deferred e = {OP_SD_EXIT, (uint8_t)signaled, 0, 0, m->h.status};
        return VEC_PUSH(&d->deferred, e);
    }
    if (!dispatcher_stopped(d, sd->core))
        return 0;            /* a kill reply already counted this core */
    if (m->h.flags & FLAG_RELEASED)
        cs_discard(&d->held, sd->core);
    if (d->state == STATE_RUNNING) {
        if (sd->core == d->home_core || d->live.n == 0)
            return begin_stop(c, d, m->h.status, signaled);
        return 0;            /* a spanned dispatcher ended; it runs on elsewhere */
    }
    return maybe_stopped(c, d);
}

/* One message from a spawnd: a reply (matched) or an exit report. */
int dispatch_spawnd(CoreObject *c, struct spawnd *sd, const struct reply *m)
{
    if (m->h.op == OP_SD_EXIT) {
        if (dispatcher_exit(c, sd, m) < 0)
            return internal_error(c, 0, 0, 0);
        return 0;
    }
    reply_handler handler = reply_handler_of(m->h.op);
    if (!(m->h.flags & FLAG_REPLY) || handler == NULL) {
        sd->protocol_errors++;
        return 0;
    }
    Py_ssize_t nlost;
    PendingSlotObject *slot = pending_match(sd->pending, m->h.seq, m->h.op, m->h.dom, &nlost);
    /* Their replies never came: fail them loudly, in order (defect 16). */
    for (Py_ssize_t i = 0; i < nlost; i++) {
        struct slotv s;
        PendingSlotObject *old = pending_lost(sd->pending, 0);   /* the oldest, each time */
        read_slot(old, &s);
        if (fail_pending(c, sd, &s, E_REPLY_OUT_OF_ORDER) < 0 &&
            internal_error(c, s.client, client_op_of(&s), s.client_seq) < 0)
            return -1;
        if (pending_release(sd->pending, old) < 0)
            return -1;       /* the structure is broken: nothing sane to do */
        sd->protocol_errors++;
    }
    if (slot == NULL) {
        sd->protocol_errors++;   /* duplicate, stale or unknown reply */
        return 0;
    }
    sd->replies++;
    struct slotv s;
    read_slot(slot, &s);
    int rc = handler(c, sd, &s, m);
    if (rc < 0)
        rc = internal_error(c, s.client, client_op_of(&s), s.client_seq);
    if (pending_release(sd->pending, slot) < 0)
        return -1;
    return rc;
}
