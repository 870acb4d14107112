/*
 * The manager's core in C: the domain table and its state machine, what
 * each client is owed, what each spawnd was sent, and one handler per
 * message. manager.py and handlers.py are the Python around it: bindings,
 * the few requests answered in Python (add_spawnd, status, domain list,
 * stats), and the views tests and queries read.
 *
 * Why C: one at a time, a spawn + wait wakes the manager twice on the path
 * from a program's exit to the next fork (the exit's answer, the next
 * spawn's forward). In Python each of those turns cost ~45 us on a CPU the
 * programs had just left cold, and time on these turns costs about twice
 * itself (README, "Spawn"). Compiling the same Python (Cython) did not
 * shorten a cold turn; a prototype with the state in flat C structs and the
 * handlers in C made spawn + wait 1.09-1.10x faster. So the state is here,
 * in structs, and so is every handler that touches it: one implementation,
 * called from the loop's C (core_serve) for one-slot messages and from
 * Python (dispatch_client, dispatch_spawnd) for the rest.
 *
 * Behaviour is the one handlers.py documented, defect by defect
 * (BARRELFISH.md section 5); the comments at each handler say which.
 *
 * Ownership: a pending slot (_pending.c: reply queue or hashtable) belongs
 * to its structure from claim to release, and a reply handler runs between
 * match and release.
 *
 * In this file, in order: the protocol's numbers; small containers (the
 * hash map and list are in _map.h); domains and the table, with the one
 * transition() that refuses illegal edges; peers (clients, spawnds) and
 * their outboxes; answering, exactly once; sending to a spawnd; the stop
 * sequence; one handler per client request (client_handlers); one per
 * spawnd reply (reply_handler_of) and the exit report; peers coming and
 * going; core_serve, the loop's way in; the Python type and its views. Clients are known by
 * id: a waiter or a pending slot holds the id, not a pointer, so a client
 * that leaves frees nothing another record still points to.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "_core.h"
#include "_map.h"
#include "_wire.h"   /* and protocol.h */

/* The protocol's numbers (ops, flags, errors, states, limits) are
 * protocol.h's. */

/* Requests one client may have unanswered at once. Each costs the manager
 * a few dozen bytes until it is answered (a wait until its domain ends):
 * without a bound, one client parking waits under 2^32 sequence numbers
 * took the manager to 1.3 GB, and answering them all at its domain's end
 * stalled everyone for seconds. Past it a request is answered BUSY at
 * once. Far above what a pipelining client keeps in flight (tests keep
 * 40,000). */
#define MAX_IN_FLIGHT 65536

static const char *const state_names[] = {"NIL", "RUNNING", "STOP_PEND", "STOPPED", "CLEANED"};

/* A request sequence number as a map key: seqs are u32 and may be 0. */
static inline uint64_t seq_key(uint32_t seq) { return (uint64_t)seq + 1; }
static void *const PRESENT = (void *)1;
/* What a client's outstanding request is kept with: the domain it names
 * (never NULL; PRESENT is domain 0, none), so that a client leaving costs
 * what it owes, not the table (client_gone). */
static inline void *owed_on(uint32_t dom) { return (void *)(((uintptr_t)dom << 1) | 1); }
static inline uint32_t owed_dom(void *v) { return (uint32_t)((uintptr_t)v >> 1); }

/* ---- small growable arrays ------------------------------------------------ */

#define VEC(name, type) struct name { uint32_t n, cap; type *v; }

static int vec_reserve(void **v, uint32_t *cap, uint32_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    uint32_t c = *cap ? *cap * 2 : 4;
    while (c < need)
        c *= 2;
    void *p = PyMem_Realloc(*v, (size_t)c * item);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *v = p;
    *cap = c;
    return 0;
}

#define VEC_PUSH(vec, item) \
    (vec_reserve((void **)&(vec)->v, &(vec)->cap, (vec)->n + 1, sizeof *(vec)->v) < 0 \
         ? -1 : ((vec)->v[(vec)->n++] = (item), 0))

/* Cores, kept sorted: kills and cleanups go out in core order, as sorted()
 * made them in Python, so a test can name the order. */
VEC(coreset, uint16_t);

static int cs_has(const struct coreset *s, uint16_t core)
{
    for (uint32_t i = 0; i < s->n; i++)
        if (s->v[i] == core)
            return 1;
    return 0;
}

static int cs_add(struct coreset *s, uint16_t core)
{
    if (cs_has(s, core))
        return 0;
    if (vec_reserve((void **)&s->v, &s->cap, s->n + 1, sizeof *s->v) < 0)
        return -1;
    uint32_t i = s->n++;
    while (i > 0 && s->v[i - 1] > core) {
        s->v[i] = s->v[i - 1];
        i--;
    }
    s->v[i] = core;
    return 0;
}

/* 1 if it was there. */
static int cs_discard(struct coreset *s, uint16_t core)
{
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->v[i] == core) {
            memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof *s->v);
            s->n--;
            return 1;
        }
    }
    return 0;
}

/* A request answered later: who asked (client id), under which seq. */
struct owed {
    uint32_t client;
    uint32_t seq;
};
VEC(owedvec, struct owed);

/* A kill, exit or dispatcher exit that overtook its domain's spawn reply
 * (defect 15): carried out once the reply has come. client 0: nobody to
 * answer (an exit report, or an exit that was answered at once). */
struct deferred {
    uint8_t op;
    uint8_t signaled;
    uint32_t client;
    uint32_t seq;
    int32_t status;
};
VEC(defvec, struct deferred);

/* Every core a domain ran on, in order, and its dispatcher's pid there. */
struct dispatcher {
    uint16_t core;
    int32_t pid;
};
VEC(dispvec, struct dispatcher);

/* ---- domains and the table -------------------------------------------------
 *
 *     NIL --spawn reply ok--> RUNNING --kill/exit--> STOP_PEND --all cores
 *      |                         ^                      |     stopped--> STOPPED
 *      |                         +---- every kill failed+                  |
 *      | spawn failed                                              all cores
 *      v                                                            cleaned |
 *    CLEANED <---------------------------------------------------------------+
 *
 * An entry exists from the moment a spawn is accepted (NIL), so that an
 * exit, kill or wait that overtakes the spawn reply finds it (defect 15).
 * Stops and cleanups are counted by sets of cores, not counters: a core
 * counts once however many messages report it (defects 10 and 11). */

struct domain {
    uint32_t id;
    uint8_t state;
    uint8_t signaled;
    uint8_t has_exit;            /* exit_status is set */
    uint8_t has_kill_error;
    uint8_t has_spawn_error;
    uint16_t home_core;
    uint16_t kill_err, spawn_err;
    int32_t exit_status;
    int32_t kill_status, spawn_status;
    int32_t kills_in_flight;
    uint64_t nonce;
    PyObject *argv;              /* list of str, never changed */
    PyObject *payload;           /* bytes: what a span starts again */
    struct dispvec cores;        /* every core it ran on, in order */
    struct coreset live;         /* cores that may still run it */
    struct coreset held;         /* cores holding its resources */
    struct coreset span_pending; /* spans sent, not yet answered */
    struct owedvec killers;      /* answered at STOPPED */
    struct owedvec waiters;      /* answered at STOPPED */
    struct defvec deferred;
    struct domain *prev, *next;  /* the live list, in creation order */
};

static void domain_free(struct domain *d)
{
    Py_XDECREF(d->argv);
    Py_XDECREF(d->payload);
    PyMem_Free(d->cores.v);
    PyMem_Free(d->live.v);
    PyMem_Free(d->held.v);
    PyMem_Free(d->span_pending.v);
    PyMem_Free(d->killers.v);
    PyMem_Free(d->waiters.v);
    PyMem_Free(d->deferred.v);
    PyMem_Free(d);
}

#define NONCE_BATCH 512

struct table {
    struct map by_id;            /* every domain kept: live and cleaned */
    struct domain *first, *last; /* the live ones, oldest first */
    uint64_t nlive;
    uint64_t capacity;           /* most live domains at once */
    uint32_t history;            /* cleaned domains kept for a late wait */
    uint32_t *cleaned;           /* their ids, a FIFO of `history` */
    uint32_t cleaned_head, ncleaned;
    uint32_t next_id;
    uint64_t nonces[NONCE_BATCH];
    uint32_t next_nonce;
};

/* A fresh 64-bit nonce from the OS's CSPRNG, drawn 512 at a time. */
static int next_nonce(struct table *t, uint64_t *out)
{
    if (t->next_nonce == NONCE_BATCH) {
        size_t got = 0;
        while (got < sizeof t->nonces) {
            ssize_t r = getrandom((char *)t->nonces + got, sizeof t->nonces - got, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
            got += (size_t)r;
        }
        t->next_nonce = 0;
    }
    *out = t->nonces[t->next_nonce++];
    return 0;
}

static PyObject *str_partial, *str_argv, *str_caps;   /* interned attribute names */
static PyObject *IllegalTransition;   /* a bug in a handler: answered INTERNAL */
static PyObject *AnswerTwice;         /* the exactly-once check: stops the manager */

/* The only legal edges (bit per target state). */
static const uint8_t edges[5] = {
    [STATE_NIL] = 1 << STATE_RUNNING | 1 << STATE_CLEANED,
    [STATE_RUNNING] = 1 << STATE_STOP_PEND,
    /* back to RUNNING only when a kill failed where it still runs */
    [STATE_STOP_PEND] = 1 << STATE_STOPPED | 1 << STATE_RUNNING,
    [STATE_STOPPED] = 1 << STATE_CLEANED,
    [STATE_CLEANED] = 0,
};

static int transition(struct domain *d, uint8_t to)
{
    if (!(edges[d->state] & (1 << to))) {
        PyErr_Format(IllegalTransition, "domain %u: %s -> %s is not a legal transition",
                     d->id, state_names[d->state], state_names[to]);
        return -1;
    }
    d->state = to;
    return 0;
}

static struct domain *table_by_id(struct table *t, uint32_t id)
{
    return map_get(&t->by_id, id);
}

/* A new NIL entry with a fresh cap (the caller checked capacity). */
static struct domain *table_create(struct table *t, PyObject *argv, uint16_t core,
                                   PyObject *payload)
{
    struct domain *d = PyMem_Calloc(1, sizeof *d);
    if (d == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (next_nonce(t, &d->nonce) < 0) {
        PyMem_Free(d);
        return NULL;
    }
    d->id = t->next_id;
    d->home_core = core;
    d->argv = Py_NewRef(argv);
    d->payload = Py_NewRef(payload);
    if (map_put(&t->by_id, d->id, d) < 0) {
        domain_free(d);
        return NULL;
    }
    t->next_id++;
    DLIST_APPEND(t->first, t->last, d, prev, next);
    t->nlive++;
    return d;
}

/* -> CLEANED: off the live list, into the history (oldest dropped). */
static int table_retire(struct table *t, struct domain *d)
{
    if (transition(d, STATE_CLEANED) < 0)
        return -1;
    DLIST_UNLINK(t->first, t->last, d, prev, next);
    t->nlive--;
    /* What a late wait needs stays; what only a live domain needs goes. */
    Py_CLEAR(d->payload);
    /* history >= 1 (Core checks): a handler still holding d after it
     * retired is safe until the next retirement evicts it. */
    if (t->ncleaned == t->history) {
        struct domain *old = map_del(&t->by_id, t->cleaned[t->cleaned_head]);
        if (old != NULL)
            domain_free(old);
        t->cleaned[t->cleaned_head] = d->id;
        t->cleaned_head = (t->cleaned_head + 1) % t->history;
    } else {
        t->cleaned[(t->cleaned_head + t->ncleaned) % t->history] = d->id;
        t->ncleaned++;
    }
    return 0;
}

/* A spawn or span reply: a dispatcher of d runs on core. */
static int dispatcher_started(struct domain *d, uint16_t core, int32_t pid)
{
    if (d->state == STATE_NIL && transition(d, STATE_RUNNING) < 0)
        return -1;
    struct dispatcher disp = {core, pid};
    if (VEC_PUSH(&d->cores, disp) < 0 || cs_add(&d->live, core) < 0 ||
        cs_add(&d->held, core) < 0)
        return -1;
    return 0;
}

/* core's dispatcher is gone; 0 if that was counted already. */
static int dispatcher_stopped(struct domain *d, uint16_t core)
{
    return cs_discard(&d->live, core);
}

/* core released d; 1 when that made it CLEANED. */
static int dispatcher_cleaned(struct table *t, struct domain *d, uint16_t core)
{
    cs_discard(&d->held, core);
    if (d->held.n == 0 && d->state == STATE_STOPPED)
        return table_retire(t, d) < 0 ? -1 : 1;
    return 0;
}

/* ---- peers -------------------------------------------------------------------
 *
 * What goes out to a peer goes into its ring; what does not fit waits in its
 * outbox, in order, until the peer makes room (flush). Sending never blocks
 * the single-threaded manager. */

struct outmsg {
    struct outmsg *next;
    uint32_t nslots;
    uint8_t data[];          /* nslots * SLOT bytes: header, then continuation */
};

struct outbox {
    struct outmsg *head, *tail;
    uint32_t n;
};

struct peer {
    PyObject *channel;       /* channel.Channel: its rings, its peer_gone */
    PyObject *decoder;       /* channel.decoder: mid-message, C reads nothing */
    struct rb_handle *out;   /* channel.outbound's handle */
    struct outbox outbox;
    int gone;                /* its ring is closed: nothing more goes out */
};

struct client {
    struct peer p;
    uint32_t id;
    int is_monitor;
    struct map outstanding;  /* seq_key(seq) of requests not yet answered */
    uint64_t received, answered;
};

/* A request to a spawnd not yet in its ring, and whom to answer for it. */
struct outgoing {
    struct outgoing *next;
    uint32_t client, client_seq;
    int32_t extra;           /* the client's op, for a spawn */
    uint32_t nslots;
    uint8_t data[];
};

struct spawnd {
    struct peer p;
    uint16_t core;
    PyObject *pending;       /* a ReplyQueue or a HashTable (_pending.c) */
    struct outgoing *sendq_head, *sendq_tail;
    uint32_t queued;
    uint32_t next_seq;
    uint64_t sent, replies, protocol_errors;
};

typedef struct {
    PyObject_HEAD
    struct table table;
    struct map clients;      /* id -> struct client * */
    struct spawnd **spawnds; /* by core; NULL where none (or it died) */
    uint32_t max_cores;
    PyObject *pending_factory;   /* pending.make_pending */
    PyObject *pending_kind;
    uint32_t reply_queue;
    PyObject *python_op;     /* python_op(client_id, msg): the requests Python answers */
    PyObject *spawn_args;    /* SpawnArgs.decode, remembered (manager._spawn_args) */
    PyObject *protocol_error;    /* protocol.ProtocolError */
    uint64_t protocol_errors, internal_errors, answered_gone;
} CoreObject;

static PyTypeObject CoreType;

static void outbox_clear(struct outbox *b)
{
    struct outmsg *m = b->head;
    while (m != NULL) {
        struct outmsg *next = m->next;
        PyMem_Free(m);
        m = next;
    }
    b->head = b->tail = NULL;
    b->n = 0;
}

/* The peer's ring was closed or its process died: tell its channel, which
 * is how the loop learns to release what the peer held. */
static void peer_lost(struct peer *p)
{
    p->gone = 1;
    outbox_clear(&p->outbox);
    if (p->channel != NULL && PyObject_SetAttrString(p->channel, "peer_gone", Py_True) < 0)
        PyErr_Clear();   /* it is a Channel; nothing to report if not */
}

/* Push one whole message (all its slots or none). 1 pushed, 0 no room. */
static int push_whole(struct peer *p, const uint8_t *data, uint32_t nslots)
{
    int64_t rc;
    if (nslots == 1) {
        rc = rb_push(p->out, data, SLOT);
        if (rc == 0)
            return 1;
    } else {
        /* Its room, checked (rb_push_all), never the fill level the segment
         * reports (rb_len), which the peer writes: a lie there held a
         * message back for good, the loop spinning on a ring that looked
         * ready. */
        rc = rb_push_all(p->out, data, nslots, SLOT);
        if (rc == (int64_t)nslots)
            return 1;
    }
    if (rc == RB_EFULL || rc == 0)
        return 0;
    peer_lost(p);         /* closed, or its process died */
    return 1;             /* nothing will ever go out: as good as sent */
}

/* Send to a peer in order: into its ring if nothing waits before it and it
 * fits, else into the outbox. 0, or -1 with MemoryError. */
static int peer_send(struct peer *p, const uint8_t *data, uint32_t nslots)
{
    if (p->gone)
        return 0;
    if (p->outbox.n == 0 && push_whole(p, data, nslots))
        return 0;
    struct outmsg *m = PyMem_Malloc(sizeof *m + (size_t)nslots * SLOT);
    if (m == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    m->next = NULL;
    m->nslots = nslots;
    memcpy(m->data, data, (size_t)nslots * SLOT);
    if (p->outbox.tail)
        p->outbox.tail->next = m;
    else
        p->outbox.head = m;
    p->outbox.tail = m;
    p->outbox.n++;
    return 0;
}

/* Push what the outbox holds while it fits; 1 once it is empty. */
static int peer_flush(struct peer *p)
{
    struct outbox *b = &p->outbox;
    while (b->head != NULL) {
        if (!push_whole(p, b->head->data, b->head->nslots))
            return 0;
        if (p->gone)          /* push_whole emptied the outbox */
            return 1;
        struct outmsg *m = b->head;
        b->head = m->next;
        if (b->head == NULL)
            b->tail = NULL;
        b->n--;
        PyMem_Free(m);
    }
    return 1;
}

/* A message's slots: header, then the payload past INLINE in continuation
 * slots. buf holds at least 1 + MAX_FRAGS slots. The number of slots. */
#define MSG_BUF ((1 + MAX_FRAGS) * SLOT)

static uint32_t encode(uint8_t *buf, const struct wire_header *h, const char *payload,
                       uint32_t plen)
{
    struct wire_header w = *h;
    uint32_t inl = plen < INLINE ? plen : INLINE;
    uint32_t nfrag = frags_for(plen);
    w.plen = plen;
    w.nfrag = (uint16_t)nfrag;
    memset(w.inline_, 0, INLINE);
    if (inl)
        memcpy(w.inline_, payload, inl);
    memcpy(buf, &w, SLOT);
    if (nfrag) {
        memset(buf + SLOT, 0, (size_t)nfrag * SLOT);
        memcpy(buf + SLOT, payload + INLINE, plen - INLINE);
    }
    return 1 + nfrag;
}

static struct client *client_of(CoreObject *c, uint32_t id)
{
    return map_get(&c->clients, id);
}

static struct spawnd *spawnd_of(CoreObject *c, uint32_t core)
{
    return core < c->max_cores ? c->spawnds[core] : NULL;
}

/* ---- answering: exactly once ------------------------------------------------
 * Every request is recorded as outstanding when it arrives; answering
 * removes it. Answering twice, or a request never received, is a bug and
 * raises AnswerTwice at once. A client that has gone is answered into the
 * void: it is no longer known, and nothing is sent. */

struct answer {
    uint8_t op, flags;
    uint16_t err, core;
    uint32_t seq, dom;
    uint64_t nonce;
    int32_t status;
    const char *payload;
    uint32_t plen;
};

static int answer(CoreObject *c, uint32_t client_id, const struct answer *a)
{
    if (client_id == 0)
        return 0;            /* an internal request (cleanup, kill on exit) */
    if (a->plen > MAX_PAYLOAD) {   /* a handler's bug: said before anything is sent */
        PyErr_Format(PyExc_OverflowError, "an answer's payload of %u bytes is over the "
                     "%d-byte limit", a->plen, MAX_PAYLOAD);
        return -1;
    }
    struct client *cl = client_of(c, client_id);
    if (cl == NULL)
        return 0;            /* gone: nobody to tell */
    if (map_del(&cl->outstanding, seq_key(a->seq)) == NULL) {
        PyErr_Format(AnswerTwice, "<client %u>: request %u (op %u) answered twice or never "
                     "received", client_id, a->seq, a->op);
        return -1;
    }
    cl->answered++;
    struct wire_header h;
    memset(&h, 0, sizeof h);
    h.op = a->op;
    h.flags = a->flags | FLAG_REPLY;
    h.core = a->core;
    h.seq = a->seq;
    h.dom = a->dom;
    h.err = a->err;
    h.nonce = a->nonce;
    h.status = a->status;
    uint8_t one[SLOT];
    if (a->plen <= INLINE) {
        encode(one, &h, a->payload, a->plen);
        return peer_send(&cl->p, one, 1);
    }
    uint8_t *buf = PyMem_Malloc(MSG_BUF);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = peer_send(&cl->p, buf, encode(buf, &h, a->payload, a->plen));
    PyMem_Free(buf);
    return rc;
}

/* The common answers, spelled short. */
static int answer_err(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq, uint16_t err,
                      uint16_t core, uint32_t dom, uint64_t nonce, int32_t status)
{
    struct answer a = {.op = op, .seq = seq, .err = err, .core = core, .dom = dom,
                       .nonce = nonce, .status = status};
    return answer(c, client, &a);
}

static int answer_detail(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq,
                         uint16_t err, const char *detail)
{
    size_t n = strlen(detail);
    struct answer a = {.op = op, .seq = seq, .err = err, .payload = detail,
                       .plen = (uint32_t)(n > 256 ? 256 : n)};
    return answer(c, client, &a);
}

/* ---- sending to a spawnd ------------------------------------------------------
 * Invariant (checked, not assumed): each request to spawnd k gets exactly
 * one reply, in order. Every request carries the next sequence number of
 * that spawnd, and takes its pending slot as it goes into the ring or the
 * outbox: its place in the spawnd's order is fixed then. A request waits in
 * the send queue while the pending structure is full (backpressure: the
 * reply queue is preallocated) or while the outbox is not empty. */

/* Into the ring (or outbox), and claim its pending slot. */
static int sd_dispatch(struct spawnd *sd, const uint8_t *data, uint32_t nslots,
                       uint32_t client, uint32_t client_seq, int32_t extra)
{
    struct wire_header h;
    memcpy(&h, data, SLOT);
    if (peer_send(&sd->p, data, nslots) < 0)
        return -1;
    PendingSlotObject *slot = pending_claim(sd->pending, h.seq, h.op, h.dom);
    if (slot == NULL)
        return -1;
    slot->core = sd->core;
    slot->client = client;
    slot->client_seq = client_seq;
    slot->extra = extra;
    sd->sent++;
    return 0;
}

/* Move queued requests on while the outbox is empty and the pending
 * structure has room. */
static int sd_flush(struct spawnd *sd)
{
    peer_flush(&sd->p);
    while (sd->sendq_head != NULL && sd->p.outbox.n == 0) {
        if (!pending_has_room(sd->pending))
            return 0;
        struct outgoing *o = sd->sendq_head;
        sd->sendq_head = o->next;
        if (sd->sendq_head == NULL)
            sd->sendq_tail = NULL;
        sd->queued--;
        int rc = sd_dispatch(sd, o->data, o->nslots, o->client, o->client_seq, o->extra);
        PyMem_Free(o);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Send a request now if nothing is queued before it, else queue it. */
static int sd_send(struct spawnd *sd, uint8_t op, uint32_t dom, uint64_t nonce,
                   const char *payload, uint32_t plen,
                   uint32_t client, uint32_t client_seq, int32_t extra)
{
    struct wire_header h;
    memset(&h, 0, sizeof h);
    h.op = op;
    h.core = sd->core;
    h.seq = sd->next_seq;
    h.dom = dom;
    h.nonce = nonce;
    sd->next_seq++;          /* u32: wraps as the serial order expects */
    uint8_t one[SLOT], *buf = one;
    if (plen > INLINE && (buf = PyMem_Malloc(MSG_BUF)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t nslots = encode(buf, &h, payload, plen);
    int rc;
    if (sd->sendq_head == NULL && sd->p.outbox.n == 0 && pending_has_room(sd->pending)) {
        rc = sd_dispatch(sd, buf, nslots, client, client_seq, extra);
    } else {
        struct outgoing *o = PyMem_Malloc(sizeof *o + (size_t)nslots * SLOT);
        if (o == NULL) {
            PyErr_NoMemory();
            rc = -1;
        } else {
            o->next = NULL;
            o->client = client;
            o->client_seq = client_seq;
            o->extra = extra;
            o->nslots = nslots;
            memcpy(o->data, buf, (size_t)nslots * SLOT);
            if (sd->sendq_tail)
                sd->sendq_tail->next = o;
            else
                sd->sendq_head = o;
            sd->sendq_tail = o;
            sd->queued++;
            rc = sd_flush(sd);
        }
    }
    if (buf != one)
        PyMem_Free(buf);
    return rc;
}

static inline const char *bytes_of(PyObject *b) { return PyBytes_AS_STRING(b); }
static inline uint32_t len_of(PyObject *b) { return (uint32_t)PyBytes_GET_SIZE(b); }

/* ---- the stop sequence, shared by kill, exit, and dispatcher deaths ---------- */

static int maybe_stopped(CoreObject *c, struct domain *d);

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
        if (sd_send(sd, OP_SD_KILL, d->id, d->nonce, "", 0, 0, 0, 0) < 0)
            goto fail;
    }
    PyMem_Free(cores.v);
    return 0;
fail:
    PyMem_Free(cores.v);
    return -1;
}

/* RUNNING -> STOP_PEND: the status recorded once, every core told to stop. */
static int begin_stop(CoreObject *c, struct domain *d, int32_t status, int signaled)
{
    if (transition(d, STATE_STOP_PEND) < 0)
        return -1;
    d->has_exit = 1;
    d->exit_status = status;
    d->signaled = (uint8_t)signaled;
    if (send_kills(c, d) < 0)
        return -1;
    return maybe_stopped(c, d);
}

/* If no core runs d any more: STOPPED, everyone waiting answered, cleanup. */
static int maybe_stopped(CoreObject *c, struct domain *d)
{
    if (d->state != STATE_STOP_PEND || d->live.n != 0)
        return 0;
    if (transition(d, STATE_STOPPED) < 0)
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

struct req {
    struct wire_header h;
    PyObject *payload;       /* bytes */
    PyObject *msg;           /* the Msg, when Python decoded it; else NULL */
};

/* Answer a request with its own domain, nonce and core. */
static int answer_req(CoreObject *c, uint32_t client, const struct req *r, uint16_t err,
                      int32_t status, uint8_t flags)
{
    struct answer a = {.op = r->h.op, .seq = r->h.seq, .err = err, .status = status,
                       .flags = flags, .dom = r->h.dom, .nonce = r->h.nonce, .core = r->h.core};
    return answer(c, client, &a);
}

/* The error for a domain id not in the table: issued once and forgotten
 * since (past the history), or never issued. */
static uint16_t missing_domain(const struct table *t, uint32_t dom)
{
    return dom != 0 && dom < t->next_id ? E_DOMAIN_FORGOTTEN : E_DOMAIN_TABLE_FIND;
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

/* A ProtocolError raised while reading a request: answered with its code
 * and detail. Other exceptions are left set. */
static int fail_protocol(CoreObject *c, uint32_t client, const struct req *r)
{
    if (!PyErr_ExceptionMatches(c->protocol_error))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *detail = value ? PyObject_GetAttrString(value, "detail") : NULL;
    PyObject *code = value ? PyObject_GetAttrString(value, "code") : NULL;
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    const char *text = detail && PyUnicode_Check(detail) ? PyUnicode_AsUTF8(detail) : NULL;
    long err = code ? PyLong_AsLong(code) : E_BAD_MESSAGE;
    PyErr_Clear();
    int rc = answer_detail(c, client, r->h.op, r->h.seq, (uint16_t)err, text ? text : "");
    Py_XDECREF(detail);
    Py_XDECREF(code);
    return rc;
}

static int h_spawn(CoreObject *c, uint32_t client, const struct req *r)
{
    PyObject *args = PyObject_CallOneArg(c->spawn_args, r->payload);
    if (args == NULL)
        return fail_protocol(c, client, r);
    PyObject *argv = PyObject_GetAttr(args, str_argv);
    PyObject *caps = PyObject_GetAttr(args, str_caps);
    Py_DECREF(args);
    int rc = 0, has_caps = caps ? PyObject_IsTrue(caps) : -1;
    Py_XDECREF(caps);
    if (argv == NULL || has_caps < 0) {
        rc = -1;
    } else if (has_caps && r->h.op == OP_SPAWN) {
        rc = answer_detail(c, client, r->h.op, r->h.seq, E_BAD_MESSAGE,
                           "spawn carries caps: use spawn_with_caps");
    } else {
        struct spawnd *sd = spawnd_of(c, r->h.core);
        if (sd == NULL) {
            rc = answer_req(c, client, r, E_INVALID_SPAWND, 0, 0);
        } else if (c->table.nlive >= c->table.capacity) {
            rc = answer_req(c, client, r, E_CREATE_DOMAIN_CAP, 0, 0);
        } else {
            struct domain *d = table_create(&c->table, argv, r->h.core, r->payload);
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
        return answer_req(c, client, r, E_INVALID_SPAWND, 0, 0);
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
    struct owed me = {client, r->h.seq};
    switch (d->state) {
    case STATE_NIL: {
        struct deferred k = {OP_KILL, 0, client, r->h.seq, EXIT_STATUS_KILLED};
        return VEC_PUSH(&d->deferred, k);
    }
    case STATE_RUNNING:
        if (VEC_PUSH(&d->killers, me) < 0)
            return -1;
        return begin_stop(c, d, EXIT_STATUS_KILLED, 0);
    case STATE_STOP_PEND:          /* answered when it has stopped (defect 11) */
        return VEC_PUSH(&d->killers, me);
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

typedef int (*client_handler)(CoreObject *, uint32_t, const struct req *);

/* NULL: answered in Python (python_op). */
static const client_handler client_handlers[LAST_CLIENT_OP + 1] = {
    [OP_SPAWN] = h_spawn, [OP_SPAWN_WITH_CAPS] = h_spawn, [OP_SPAN] = h_span,
    [OP_KILL] = h_kill, [OP_EXIT] = h_exit, [OP_WAIT] = h_wait,
};

static int is_python_op(uint8_t op)
{
    return op == OP_GET_STATUS || op == OP_GET_DOMAINLIST || op == OP_ADD_SPAWND ||
           op == OP_GET_STATS;
}

/* A bug must not take the manager, and everyone else's answers, down:
 * report it, answer the request if it still waits, carry on. AnswerTwice
 * is the one exception let through: it is the exactly-once check itself. */
static int internal_error(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq)
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

static int dispatch_client(CoreObject *c, struct client *cl, const struct req *r)
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
        PyObject *res = PyObject_CallFunction(c->python_op, "kO", (unsigned long)id, r->msg);
        Py_XDECREF(res);
        rc = res == NULL ? -1 : 0;
    }
    if (rc < 0)
        return internal_error(c, id, op, r->h.seq);
    return 0;
}

/* ---- spawnd replies ------------------------------------------------------------
 * handler(c, sd, slot, reply), called between the pending structure's match
 * and release. */

struct slotv {               /* a pending slot's fields, read once */
    uint32_t seq, dom, client, client_seq;
    uint8_t op;
    int32_t extra;
};

static void read_slot(const PendingSlotObject *slot, struct slotv *s)
{
    s->seq = (uint32_t)slot->seq;
    s->op = slot->op;
    s->dom = slot->dom;
    s->client = slot->client;
    s->client_seq = slot->client_seq;
    s->extra = slot->extra;
}

struct reply {
    struct wire_header h;
    const char *payload;
    uint32_t plen;
};

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
    if (dispatcher_started(d, sd->core, m->h.status) < 0)
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
static int r_kill(CoreObject *c, struct spawnd *sd, const struct slotv *s,
                  const struct reply *m)
{
    struct domain *d = slot_domain(c, s);
    if (d == NULL)
        return -1;
    d->kills_in_flight--;
    uint16_t err = m->h.err;
    if (err == E_OK || err == E_NOT_FOUND || err == E_SPAWND_DIED) {
        dispatcher_stopped(d, sd->core);
        if (m->h.flags & FLAG_RELEASED)
            cs_discard(&d->held, sd->core);
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
            if (transition(d, STATE_RUNNING) < 0)
                return -1;
            d->has_exit = 0;
            d->exit_status = 0;
            d->signaled = 0;
        }
    }
    return 0;
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
    default: return NULL;
    }
}

/* The client request each spawnd request serves (spawn keeps its own in extra). */
static uint8_t client_op_of(const struct slotv *s)
{
    if (s->extra)
        return (uint8_t)s->extra;
    switch (s->op) {
    case OP_SD_SPAWN: return OP_SPAWN;
    case OP_SD_SPAN: return OP_SPAN;
    default: return OP_KILL;
    }
}

/* A request that will never get its reply: answered as if it failed. */
static int fail_pending(CoreObject *c, struct spawnd *sd, const struct slotv *s, uint16_t err)
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

/* SD_EXIT: a dispatcher of the domain on this core ended by itself. */
static int dispatcher_exit(CoreObject *c, struct spawnd *sd, const struct reply *m)
{
    struct domain *d = table_by_id(&c->table, m->h.dom);
    if (d == NULL || d->nonce != m->h.nonce) {
        c->protocol_errors++;
        return 0;
    }
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
static int dispatch_spawnd(CoreObject *c, struct spawnd *sd, const struct reply *m)
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

/* ---- peers coming and going ------------------------------------------------------ */

static void peer_init(struct peer *p, PyObject *channel, struct rb_handle *out)
{
    p->channel = Py_NewRef(channel);
    p->decoder = PyObject_GetAttrString(channel, "decoder");   /* NULL: checked by callers */
    p->out = out;
    p->outbox.head = p->outbox.tail = NULL;
    p->outbox.n = 0;
    p->gone = 0;
}

static void client_free(struct client *cl)
{
    Py_XDECREF(cl->p.channel);
    Py_XDECREF(cl->p.decoder);
    outbox_clear(&cl->p.outbox);
    map_free(&cl->outstanding);
    PyMem_Free(cl);
}

static void spawnd_free(struct spawnd *sd)
{
    Py_XDECREF(sd->p.channel);
    Py_XDECREF(sd->p.decoder);
    outbox_clear(&sd->p.outbox);
    Py_XDECREF(sd->pending);
    struct outgoing *o = sd->sendq_head;
    while (o != NULL) {
        struct outgoing *next = o->next;
        PyMem_Free(o);
        o = next;
    }
    PyMem_Free(sd);
}

/* The outbound ring's handle, from a Channel. */
static struct rb_handle *outbound_handle(PyObject *channel)
{
    PyObject *ring = PyObject_GetAttrString(channel, "outbound");
    if (ring == NULL)
        return NULL;
    struct rb_handle *h = handle_of(ring);
    Py_DECREF(ring);
    return h;
}

/* Client id is gone: it waits on and kills nothing of d any more. */
static void forget_owed(struct domain *d, uint32_t id)
{
    struct owedvec *lists[2] = {&d->waiters, &d->killers};
    for (int k = 0; k < 2; k++) {
        uint32_t keep = 0;
        for (uint32_t i = 0; i < lists[k]->n; i++)
            if (lists[k]->v[i].client != id)
                lists[k]->v[keep++] = lists[k]->v[i];
        lists[k]->n = keep;
    }
}

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The client died or disconnected: drop what waits for it. Its pending
 * spawnd requests stay in flight (their replies must still be matched) and
 * are answered into the void. */
static void client_gone(CoreObject *c, uint32_t id)
{
    struct client *cl = map_del(&c->clients, id);
    if (cl == NULL)
        return;
    c->answered_gone += cl->answered;
    /* Only the domains its unanswered requests name can hold it as a
     * waiter or killer: walking every live domain instead cost ~30 ms of
     * the manager's one thread at a million of them, for every departure.
     * (No memory for the list: every live domain, as before.) */
    uint32_t *doms = PyMem_Malloc(((size_t)cl->outstanding.n + 1) * sizeof *doms);
    if (doms == NULL) {
        for (struct domain *d = c->table.first; d != NULL; d = d->next)
            forget_owed(d, id);
    } else {
        uint32_t n = 0;
        for (uint32_t i = 0; i < cl->outstanding.cap; i++)
            if (cl->outstanding.keys[i] != 0 && owed_dom(cl->outstanding.vals[i]) != 0)
                doms[n++] = owed_dom(cl->outstanding.vals[i]);
        qsort(doms, n, sizeof *doms, compare_u32);
        for (uint32_t i = 0; i < n; i++) {
            struct domain *d = (i > 0 && doms[i] == doms[i - 1]) ? NULL
                               : table_by_id(&c->table, doms[i]);
            if (d != NULL)
                forget_owed(d, id);
        }
        PyMem_Free(doms);
    }
    client_free(cl);
}

/* The worker of core is gone: its domains lost their dispatchers there,
 * and what waited on it fails. A new worker may then take the core. */
static int spawnd_died(CoreObject *c, uint16_t core)
{
    struct spawnd *sd = spawnd_of(c, core);
    if (sd == NULL)
        return 0;
    c->spawnds[core] = NULL;
    int rc = 0;
    /* First the dispatchers: they died with their worker (PDEATHSIG). */
    struct domain *next;
    for (struct domain *d = c->table.first; d != NULL && rc == 0; d = next) {
        next = d->next;
        if (!cs_has(&d->live, core) && !cs_has(&d->held, core))
            continue;
        dispatcher_stopped(d, core);
        cs_discard(&d->held, core);
        if (d->state == STATE_RUNNING)
            rc = begin_stop(c, d, EXIT_STATUS_KILLED, 1);
        else if (d->state == STATE_STOP_PEND)
            rc = maybe_stopped(c, d);
        else if (d->state == STATE_STOPPED && d->held.n == 0)
            rc = dispatcher_cleaned(&c->table, d, core) < 0 ? -1 : 0;
    }
    if (rc < 0 && internal_error(c, 0, 0, 0) < 0)
        goto done;
    /* Then the requests it will never answer. */
    PyObject *drained = pending_drain(sd->pending);
    if (drained == NULL) {
        rc = internal_error(c, 0, 0, 0);
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(drained); i++) {
        PendingSlotObject *slot = (PendingSlotObject *)PyList_GET_ITEM(drained, i);
        struct slotv s;
        read_slot(slot, &s);
        rc = fail_pending(c, sd, &s, E_SPAWND_DIED);
        if (rc < 0 && (rc = internal_error(c, s.client, client_op_of(&s), s.client_seq)) < 0)
            break;
        if ((rc = pending_release(sd->pending, slot)) < 0)
            break;
    }
    Py_DECREF(drained);
    if (rc < 0)
        goto done;
    while (sd->sendq_head != NULL) {
        struct outgoing *o = sd->sendq_head;
        sd->sendq_head = o->next;
        sd->queued--;
        struct wire_header h;
        memcpy(&h, o->data, SLOT);
        struct slotv s = {h.seq, h.dom, o->client, o->client_seq, h.op, o->extra};
        PyMem_Free(o);
        if (fail_pending(c, sd, &s, E_SPAWND_DIED) < 0 && (rc = internal_error(c, 0, 0, 0)) < 0)
            break;
    }
    sd->sendq_tail = NULL;
done:
    spawnd_free(sd);
    return rc;
}

/* ---- messages straight from a ring ------------------------------------------------ */

static int decoder_partial(PyObject *decoder)
{
    PyObject *partial = PyObject_GetAttr(decoder, str_partial);
    if (partial == NULL)
        return -1;
    int p = PyObject_IsTrue(partial);
    Py_DECREF(partial);
    return p;
}

Py_ssize_t core_serve(PyObject *core, int kind, uint32_t key, struct rb_handle *in)
{
    CoreObject *c = (CoreObject *)core;
    struct client *cl = NULL;
    struct spawnd *sd = NULL;
    struct peer *p;
    if (kind == PEER_CLIENT) {
        if ((cl = client_of(c, key)) == NULL)
            return 0;
        p = &cl->p;
        /* Answers that did not fit go first; until they have, read no more. */
        if (p->outbox.n != 0 && !peer_flush(p))
            return 0;
    } else {
        if ((sd = spawnd_of(c, key)) == NULL)
            return 0;
        p = &sd->p;
    }
    int partial = decoder_partial(p->decoder);
    if (partial != 0)
        return partial < 0 ? -1 : 0;   /* the Python decoder is mid-message */
    Py_ssize_t handled = 0;
    while (handled < SERVE_BUDGET) {
        const uint8_t *slot;
        if (rb_peek(in, &slot) != SLOT)
            break;           /* empty, closed, or not a header: Python looks */
        struct wire_header h;
        if (!wire_read_one(slot, SLOT, &h))
            break;
        if (kind == PEER_CLIENT && is_python_op(h.op))
            break;
        rb_consume(in, 1);
        handled++;
        int rc;
        if (kind == PEER_CLIENT) {
            struct req r = {.h = h, .msg = NULL};
            r.payload = PyBytes_FromStringAndSize((const char *)h.inline_, h.plen);
            if (r.payload == NULL)
                return -1;
            rc = dispatch_client(c, cl, &r);
            Py_DECREF(r.payload);
            if (rc < 0)
                return -1;
            if ((cl = client_of(c, key)) == NULL || cl->p.outbox.n != 0)
                break;       /* gone, or its answers wait for room */
        } else {
            struct reply m = {.h = h, .plen = h.plen};
            m.payload = (const char *)m.h.inline_;    /* our copy: the slot is reused */
            rc = dispatch_spawnd(c, sd, &m);
            if (rc < 0)
                return -1;
            if ((sd = spawnd_of(c, key)) == NULL)
                break;
        }
    }
    /* A spawnd's replies may have made room for what waits to go to it. */
    if (sd != NULL && (sd->sendq_head != NULL || sd->p.outbox.n != 0) && sd_flush(sd) < 0)
        return -1;
    return handled;
}

int core_backlogged(PyObject *core, int kind, uint32_t key)
{
    CoreObject *c = (CoreObject *)core;
    if (kind == PEER_CLIENT) {
        struct client *cl = client_of(c, key);
        return cl != NULL && cl->p.outbox.n != 0;
    }
    struct spawnd *sd = spawnd_of(c, key);
    return sd != NULL && sd->p.outbox.n != 0;
}

/* ---- the Python type ------------------------------------------------------------ */

static int core_init(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"make_pending", "spawn_args", "protocol_error", "python_op",
                             "pending", "reply_queue", "max_cores", "table_capacity",
                             "history", NULL};
    PyObject *make_pending, *spawn_args, *protocol_error, *python_op, *kind = NULL;
    unsigned int reply_queue = 1024, max_cores = 1024, history = 4096;
    unsigned long long capacity = 1 << 20;
    if (self->spawnds != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|UIIKI", kwlist, &make_pending,
                                     &spawn_args, &protocol_error, &python_op, &kind,
                                     &reply_queue, &max_cores, &capacity, &history))
        return -1;
    if (max_cores == 0 || max_cores > 0x10000) {
        PyErr_Format(PyExc_ValueError, "max_cores must be 1..65536, got %u", max_cores);
        return -1;
    }
    if (history == 0) {
        PyErr_SetString(PyExc_ValueError, "history must be at least 1");
        return -1;
    }
    self->spawnds = PyMem_Calloc(max_cores, sizeof *self->spawnds);
    self->table.cleaned = PyMem_Calloc(history, sizeof *self->table.cleaned);
    if (self->spawnds == NULL || self->table.cleaned == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->max_cores = max_cores;
    self->table.capacity = capacity;
    self->table.history = history;
    self->table.next_id = 1;
    self->table.next_nonce = NONCE_BATCH;
    self->reply_queue = reply_queue;
    self->pending_factory = Py_NewRef(make_pending);
    self->pending_kind = kind ? Py_NewRef(kind) : PyUnicode_FromString("replyq");
    self->spawn_args = Py_NewRef(spawn_args);
    self->protocol_error = Py_NewRef(protocol_error);
    self->python_op = Py_NewRef(python_op);
    return self->pending_kind == NULL ? -1 : 0;
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
    for (uint32_t i = 0; i < self->clients.cap; i++)
        if (self->clients.keys[i] != 0)
            client_free(self->clients.vals[i]);
    map_free(&self->clients);
    for (uint32_t i = 0; self->spawnds != NULL && i < self->max_cores; i++)
        if (self->spawnds[i] != NULL)
            spawnd_free(self->spawnds[i]);
    PyMem_Free(self->spawnds);
    Py_XDECREF(self->pending_factory);
    Py_XDECREF(self->pending_kind);
    Py_XDECREF(self->spawn_args);
    Py_XDECREF(self->protocol_error);
    Py_XDECREF(self->python_op);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* add_client(id, channel, is_monitor) */
static PyObject *core_add_client(CoreObject *self, PyObject *args)
{
    unsigned int id;
    PyObject *channel;
    int is_monitor;
    if (!PyArg_ParseTuple(args, "IOp", &id, &channel, &is_monitor))
        return NULL;
    if (id == 0 || client_of(self, id) != NULL) {
        PyErr_Format(PyExc_ValueError, "client id %u is 0 or taken", id);
        return NULL;
    }
    struct rb_handle *out = outbound_handle(channel);
    if (out == NULL)
        return NULL;
    struct client *cl = PyMem_Calloc(1, sizeof *cl);
    if (cl == NULL)
        return PyErr_NoMemory();
    peer_init(&cl->p, channel, out);
    cl->id = id;
    cl->is_monitor = is_monitor;
    if (cl->p.decoder == NULL || map_put(&self->clients, id, cl) < 0) {
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

/* add_spawnd(core, channel) -> Err */
static PyObject *core_add_spawnd(CoreObject *self, PyObject *args)
{
    unsigned int core;
    PyObject *channel;
    if (!PyArg_ParseTuple(args, "IO", &core, &channel))
        return NULL;
    if (core >= self->max_cores)
        return PyLong_FromLong(E_INVALID_SPAWND);
    if (self->spawnds[core] != NULL)
        return PyLong_FromLong(E_SPAWND_EXISTS);
    struct rb_handle *out = outbound_handle(channel);
    if (out == NULL)
        return NULL;
    struct spawnd *sd = PyMem_Calloc(1, sizeof *sd);
    if (sd == NULL)
        return PyErr_NoMemory();
    peer_init(&sd->p, channel, out);
    sd->core = (uint16_t)core;
    sd->next_seq = 1;
    sd->pending = PyObject_CallFunction(self->pending_factory, "OI", self->pending_kind,
                                        self->reply_queue);
    if (sd->pending != NULL && !pending_check(sd->pending)) {
        PyErr_SetString(PyExc_TypeError, "make_pending must give a ReplyQueue or a HashTable");
        Py_CLEAR(sd->pending);
    }
    if (sd->pending == NULL || sd->p.decoder == NULL) {
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
        PyErr_Format(PyExc_TypeError, "a message is a Msg or a ProtocolError, not %R",
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

/* A request Python could not decode: answerable when its header said who
 * asked; a bare garbage slot has no request to answer, and is only counted. */
static int client_protocol_error(CoreObject *c, struct client *cl, PyObject *err)
{
    cl->received++;
    c->protocol_errors++;
    PyObject *op = PyObject_GetAttrString(err, "op");
    PyObject *seq = PyObject_GetAttrString(err, "seq");
    PyObject *code = PyObject_GetAttrString(err, "code");
    PyObject *detail = PyObject_GetAttrString(err, "detail");
    int rc = -1;
    if (op && seq && code && detail) {
        unsigned long o = PyLong_AsUnsignedLong(op), s = PyLong_AsUnsignedLong(seq);
        long e = PyLong_AsLong(code);
        const char *text = PyUnicode_Check(detail) ? PyUnicode_AsUTF8(detail) : "";
        if (!PyErr_Occurred() && text != NULL) {
            rc = 0;
            if (o && s && map_get(&cl->outstanding, seq_key((uint32_t)s)) == NULL) {
                /* An op the client's decoder would refuse too cannot be echoed. */
                uint8_t echo = o >= OP_SPAWN && o <= LAST_CLIENT_OP ? (uint8_t)o : OP_UNREADABLE;
                rc = map_put(&cl->outstanding, seq_key((uint32_t)s), PRESENT);
                if (rc == 0)
                    rc = answer_detail(c, cl->id, echo, (uint32_t)s, (uint16_t)e, text);
            }
        }
    }
    Py_XDECREF(op);
    Py_XDECREF(seq);
    Py_XDECREF(code);
    Py_XDECREF(detail);
    return rc;
}

/* dispatch_client(id, msg): one message Python decoded (a Msg or a
 * ProtocolError) from that client. */
static PyObject *core_dispatch_client(CoreObject *self, PyObject *args)
{
    unsigned int id;
    PyObject *msg;
    if (!PyArg_ParseTuple(args, "IO", &id, &msg))
        return NULL;
    struct client *cl = client_of(self, id);
    if (cl == NULL)
        Py_RETURN_NONE;          /* gone earlier in this pass */
    int rc;
    if (PyObject_TypeCheck(msg, (PyTypeObject *)self->protocol_error)) {
        rc = client_protocol_error(self, cl, msg);
    } else {
        struct req r = {.msg = msg};
        if (msg_fields_of(msg, &r.h, &r.payload) < 0)
            return NULL;
        rc = dispatch_client(self, cl, &r);
        Py_DECREF(r.payload);
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* dispatch_spawnd(core, msg): one message Python decoded from that spawnd. */
static PyObject *core_dispatch_spawnd(CoreObject *self, PyObject *args)
{
    unsigned int core;
    PyObject *msg;
    if (!PyArg_ParseTuple(args, "IO", &core, &msg))
        return NULL;
    struct spawnd *sd = spawnd_of(self, core);
    if (sd == NULL)
        Py_RETURN_NONE;
    if (PyObject_TypeCheck(msg, (PyTypeObject *)self->protocol_error)) {
        sd->protocol_errors++;
        Py_RETURN_NONE;
    }
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

/* answer(client_id, op, seq, err=0, status=0, flags=0, dom=0, nonce=0, core=0, payload=b"") */
static PyObject *core_answer(CoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"client_id", "op", "seq", "err", "status", "flags", "dom", "nonce",
                             "core", "payload", NULL};
    unsigned int client, op, seq, err = 0, flags = 0, dom = 0, core = 0;
    int status = 0;
    unsigned long long nonce = 0;
    Py_buffer payload = {.buf = NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "III|IiIIKIy*", kwlist, &client, &op, &seq,
                                     &err, &status, &flags, &dom, &nonce, &core, &payload))
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

static int kind_key(PyObject *args, int *kind, unsigned int *key)
{
    return PyArg_ParseTuple(args, "iI", kind, key) ? 0 : -1;
}

/* flush(kind, key) -> True once nothing waits in that peer's outbox. */
static PyObject *core_flush(CoreObject *self, PyObject *args)
{
    int kind;
    unsigned int key;
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
    unsigned int key;
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
            "{s:k,s:K,s:i,s:O,s:i,s:N,s:N,s:N,s:N,s:N,s:N,s:O,s:i,s:N,s:N,s:N,s:N,s:N}",
            "id", (unsigned long)d->id, "nonce", (unsigned long long)d->nonce,
            "state", d->state, "argv", argv, "home_core", d->home_core,
            "cores", Py_NewRef(cores), "pids", Py_NewRef(pids),
            "live", cores_list(&d->live), "held", cores_list(&d->held),
            "span_pending", cores_list(&d->span_pending),
            "exit_status", d->has_exit ? PyLong_FromLong(d->exit_status) : Py_NewRef(Py_None),
            "signaled", d->signaled ? Py_True : Py_False,
            "kills_in_flight", d->kills_in_flight,
            "kill_error", d->has_kill_error ? Py_BuildValue("(ii)", d->kill_err, d->kill_status)
                                            : Py_NewRef(Py_None),
            "killers", owed_list(&d->killers), "waiters", owed_list(&d->waiters),
            "deferred", Py_NewRef(deferred),
            "spawn_error", d->has_spawn_error
                               ? Py_BuildValue("(ii)", d->spawn_err, d->spawn_status)
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
    unsigned int core, seq;
    if (!PyArg_ParseTuple(args, "II", &core, &seq))
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
     "add_client(id, channel, is_monitor)"},
    {"client_gone", (PyCFunction)core_client_gone, METH_O,
     "client_gone(id): drop what waits for it"},
    {"add_spawnd", (PyCFunction)core_add_spawnd, METH_VARARGS,
     "add_spawnd(core, channel) -> Err"},
    {"spawnd_died", (PyCFunction)core_spawnd_died, METH_O,
     "spawnd_died(core): fail what waited on it; its domains lost their dispatchers there"},
    {"dispatch_client", (PyCFunction)core_dispatch_client, METH_VARARGS,
     "dispatch_client(id, msg): a Msg or ProtocolError from that client"},
    {"dispatch_spawnd", (PyCFunction)core_dispatch_spawnd, METH_VARARGS,
     "dispatch_spawnd(core, msg): a Msg or ProtocolError from that spawnd"},
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
    {"domain_ids", (PyCFunction)core_domain_ids, METH_NOARGS,
     "ids of the domains not yet cleaned, in creation order"},
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
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"table_capacity", (getter)core_get_capacity, (setter)core_set_capacity,
     "most domains live at once", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods core_as_sequence = {.sq_length = (lenfunc)core_len};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procmgr.manager._core.Core",
    .tp_doc = "Core(make_pending, spawn_args, protocol_error, python_op, pending='replyq', "
              "reply_queue=1024, max_cores=1024, table_capacity=1<<20, history=4096): "
              "the manager's state and handlers (see _core.c)",
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
    "The manager's core (state and handlers) and its loop's ring work; see _core.c "
    "and _loop.c.", -1, NULL, NULL, NULL, NULL, NULL,
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
    str_partial = PyUnicode_InternFromString("partial");
    str_argv = PyUnicode_InternFromString("argv");
    str_caps = PyUnicode_InternFromString("caps");
    if (AnswerTwice == NULL || IllegalTransition == NULL || str_partial == NULL ||
        str_argv == NULL || str_caps == NULL || pending_register(mod) < 0 ||
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
