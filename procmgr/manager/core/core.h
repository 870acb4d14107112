/*
 * The manager's core, for its own files: the structs they share, the names
 * made once at import, and the functions one of them calls in another.
 * _core.h is still what the loop (_loop.c) and the pending structures
 * (_pending.c) see; this header includes it. README.md in this folder maps
 * the files, and says where each message is handled.
 *
 * The core keeps the domain table and its state machine (table.c), what
 * each client is owed and what each spawnd was sent (peers.c), and one
 * handler per message (handlers.c), reached from the loop's C (serve.c)
 * and from Python (module.c). manager.py and handlers.py are the Python
 * around it: bindings, the few requests answered in Python (add_spawnd,
 * status, domain list, stats), and the views tests and queries read.
 *
 * Why C: one at a time, a spawn + wait wakes the manager twice on the path
 * from a program's exit to the next fork (the exit's answer, the next
 * spawn's forward). In Python each of those turns cost ~45 us on a CPU the
 * programs had just left cold, and time on these turns costs about twice
 * itself (docs/performance.md, "Spawn"). Compiling the same Python
 * (Cython) did not shorten a cold turn; a prototype with the state in flat
 * C structs and the handlers in C made spawn + wait 1.09-1.10x faster. So
 * the state is here, in structs, and so is every handler that touches it:
 * one implementation, called from the loop's C (core_serve) for one-slot
 * messages and from Python (dispatch_client, dispatch_spawnd) for the rest.
 *
 * Several files, one hot path: the core was measured as one translation
 * unit, so the module is built with -flto (setup.py) and everything
 * declared below is hidden from outside the module. Hidden, a call from
 * one file into another may be inlined as it was within one file (a
 * symbol the module exports could be interposed, so the compiler may
 * not), and no other library's symbol of the same name can stand in for
 * one of these. The lookups every message makes (table_by_id, client_of,
 * spawnd_of) are inline here.
 *
 * Clients are known by id: a waiter or a pending slot holds the id, not a
 * pointer, so a client that leaves frees nothing another record still
 * points to.
 */
#ifndef PROCMGR_CORE_INTERNAL_H
#define PROCMGR_CORE_INTERNAL_H

#include "_core.h"   /* Python.h first, the ring, and the core's side of _pending.c */
#include "_map.h"
#include "_wire.h"   /* and protocol.h */

#include <string.h>

#pragma GCC visibility push(hidden)

/* The protocol's numbers (ops, flags, errors, states, limits) are
 * protocol.h's. */

/* A request sequence number as a map key: seqs are u32 and may be 0. */
static inline uint64_t seq_key(uint32_t seq) { return (uint64_t)seq + 1; }
static void *const PRESENT = (void *)1;
/* What a client's outstanding request is kept with: the domain it names
 * (never NULL; PRESENT is domain 0, none), so that a client leaving costs
 * what it owes, not the table (client_gone). */
static inline void *owed_on(uint32_t dom) { return (void *)(((uintptr_t)dom << 1) | 1); }
static inline uint32_t owed_dom(void *v) { return (uint32_t)((uintptr_t)v >> 1); }

/* ---- small growable arrays (table.c) ---------------------------------------- */

#define VEC(name, type) struct name { uint32_t n, cap; type *v; }

int vec_reserve(void **v, uint32_t *cap, uint32_t need, size_t item);

#define VEC_PUSH(vec, item) \
    (vec_reserve((void **)&(vec)->v, &(vec)->cap, (vec)->n + 1, sizeof *(vec)->v) < 0 \
         ? -1 : ((vec)->v[(vec)->n++] = (item), 0))

/* Cores, kept sorted: kills and cleanups go out in core order, as sorted()
 * made them in Python, so a test can name the order. */
VEC(coreset, uint16_t);

int cs_has(const struct coreset *s, uint16_t core);
int cs_add(struct coreset *s, uint16_t core);
int cs_discard(struct coreset *s, uint16_t core);

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

/* ---- domains and the table (table.c: the state diagram) ---------------------- */

struct domain {
    uint32_t id;
    uint8_t state;
    uint8_t signaled;
    uint8_t killed;              /* its stop was a kill's (its exit_status is then 9) */
    uint8_t has_exit;            /* exit_status is set */
    uint8_t has_kill_error;
    uint8_t has_spawn_error;
    uint16_t home_core;
    uint16_t kill_err, spawn_err;
    int32_t exit_status;
    int32_t kill_status, spawn_status;
    int32_t kills_in_flight;
    int32_t signals_in_flight;   /* SD_SIGNALs not yet answered */
    uint16_t signal_err;         /* the first error one was answered with */
    uint8_t stop_asked;          /* a killer said how (the two below) */
    uint8_t stop_signal;         /* the signal it asked for; 0: the worker's */
    uint32_t stop_grace_ms;      /* its grace; KILL_GRACE_DEFAULT: the worker's */
    uint64_t nonce;
    double started_at, ended_at; /* wall clock, s; ended_at 0 until it has ended */
    /* What its dispatchers used, summed as their ends said (USAGE_BYTES):
     * CPU in us, the largest peak resident set in KiB. */
    uint64_t user_us, system_us;
    uint32_t max_rss_kib;
    uint8_t has_usage;
    PyObject *argv;              /* list of str, never changed */
    PyObject *payload;           /* bytes: what a span starts again */
    struct dispvec cores;        /* every core it ran on, in order */
    struct coreset live;         /* cores that may still run it */
    struct coreset held;         /* cores holding its resources */
    struct coreset span_pending; /* spans sent, not yet answered */
    struct owedvec killers;      /* answered at STOPPED */
    struct owedvec waiters;      /* answered at STOPPED */
    struct owedvec signalers;    /* answered when signals_in_flight is back to 0 */
    struct defvec deferred;
    struct domain *prev, *next;  /* the live list, in creation order */
};

#define NONCE_BATCH 512

/* What happened, for EVENTS (protocol.h, "Events"): a domain's start and
 * end, recorded by transition(), and a program's, recorded by the
 * supervisor (Core.record_event). Kept in a ring of the newest `cap`;
 * event seq is at v[(seq - 1) % cap]. */
struct event {
    double time;
    uint32_t dom;
    int32_t pid, status;
    uint16_t core, err;
    uint8_t kind, flags;
    uint64_t user_us, system_us; /* an end's: the domain's usage (flags: EVENT_USAGE) */
    uint32_t max_rss_kib;
    PyObject *name;              /* bytes: a program's name; NULL for a domain's */
};

struct eventlog {
    struct event *v;
    uint32_t cap;
    uint64_t last;               /* seq of the newest; 0 before the first */
};

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
    struct eventlog events;
};

void domain_free(struct domain *d);
double wall_now(void);
int transition(struct table *t, struct domain *d, uint8_t to);
void event_record(struct eventlog *log, const struct event *e);
PyObject *events_after(const struct eventlog *log, uint64_t after, uint32_t max_bytes);
struct domain *table_create(struct table *t, PyObject *argv, uint16_t core, PyObject *payload);
int table_retire(struct table *t, struct domain *d);
PyObject *table_ended_ids_from(struct table *t, uint32_t start, Py_ssize_t limit);
int dispatcher_started(struct table *t, struct domain *d, uint16_t core, int32_t pid);
int dispatcher_stopped(struct domain *d, uint16_t core);
int dispatcher_cleaned(struct table *t, struct domain *d, uint16_t core);
uint16_t missing_domain(const struct table *t, uint32_t dom);

static inline struct domain *table_by_id(struct table *t, uint32_t id)
{
    return map_get(&t->by_id, id);
}

/* ---- peers and the core (peers.c) ------------------------------------------- */

struct outmsg {
    struct outmsg *next;
    uint32_t nslots;
    uint32_t done;           /* slots of it in the ring already: a long one goes in pieces */
    uint8_t data[];          /* nslots * SLOT bytes: header, then continuation */
};

struct outbox {
    struct outmsg *head, *tail;
    uint32_t n;
    uint32_t *backlogged;    /* the core's count of peers whose outbox is not empty */
};

struct peer {
    PyObject *outbound;      /* the ringbuf.Ring to the peer: held, so its handle stays valid */
    struct rb_handle *out;   /* its handle */
    struct outbox outbox;
    int gone;                /* its ring is closed: nothing more goes out (Core.lost) */
    int mid_message;         /* Python's decoder holds part of a message from it
                              * (Core.mid_message): C reads nothing of its ring */
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
    int pending_kind;        /* PENDING_REPLYQ or PENDING_HASHTABLE (_core.h) */
    uint32_t reply_queue;
    uint64_t protocol_errors, internal_errors, answered_gone;
    uint32_t backlogged;     /* peers with answers in their outbox: the loop asks
                              * each peer only when there are any (core_backlogged) */
    uint64_t events_wanted;  /* the event seq Python waits for (0: none; core_events_due) */
} CoreObject;

static inline struct client *client_of(CoreObject *c, uint32_t id)
{
    return map_get(&c->clients, id);
}

static inline struct spawnd *spawnd_of(CoreObject *c, uint32_t core)
{
    return core < c->max_cores ? c->spawnds[core] : NULL;
}

int peer_init(struct peer *p, PyObject *outbound, uint32_t *backlogged);
void client_free(struct client *cl);
void spawnd_free(struct spawnd *sd);
int peer_flush(struct peer *p);

/* Answering, exactly once. */
struct answer {
    uint8_t op, flags;
    uint16_t err, core;
    uint32_t seq, dom;
    uint64_t nonce;
    int32_t status;
    const char *payload;
    uint32_t plen;
};

int answer(CoreObject *c, uint32_t client_id, const struct answer *a);
int answer_err(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq, uint16_t err,
               uint16_t core, uint32_t dom, uint64_t nonce, int32_t status);
int answer_detail(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq, uint16_t err,
                  const char *detail);

/* Sending to a spawnd. */
int sd_flush(struct spawnd *sd);
int sd_send(struct spawnd *sd, uint8_t op, uint32_t dom, uint64_t nonce, const char *payload,
            uint32_t plen, uint32_t client, uint32_t client_seq, int32_t extra);

/* ---- the handlers (handlers.c) ----------------------------------------------- */

struct req {
    struct wire_header h;
    PyObject *payload;       /* bytes */
    PyObject *msg;           /* the Msg, when Python decoded it; else NULL */
};

/* The requests Python answers: core_serve leaves them in the ring, and
 * dispatch_client records them and tells its caller (Core.dispatch_client
 * returns True) that they are Python's to answer. */
static inline int is_python_op(uint8_t op)
{
    return op == OP_GET_STATUS || op == OP_GET_DOMAINLIST || op == OP_ADD_SPAWND ||
           op == OP_GET_STATS || op == OP_PROGRAM || op == OP_EVENTS;
}

struct slotv {               /* a pending slot's fields, read once */
    uint32_t seq, dom, client, client_seq;
    uint8_t op;
    int32_t extra;
};

struct reply {
    struct wire_header h;
    const char *payload;
    uint32_t plen;
};

int begin_stop(CoreObject *c, struct domain *d, int32_t status, int signaled);
int maybe_stopped(CoreObject *c, struct domain *d);
int internal_error(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq);
int dispatch_client(CoreObject *c, struct client *cl, const struct req *r);
int client_protocol_error(CoreObject *c, struct client *cl, uint8_t op, uint32_t seq,
                          uint16_t err, const char *detail);
void read_slot(const PendingSlotObject *slot, struct slotv *s);
uint8_t client_op_of(const struct slotv *s);
int fail_pending(CoreObject *c, struct spawnd *sd, const struct slotv *s, uint16_t err);
int dispatch_spawnd(CoreObject *c, struct spawnd *sd, const struct reply *m);

/* ---- peers coming and going (serve.c) ----------------------------------------- */

void client_gone(CoreObject *c, uint32_t id);
int spawnd_died(CoreObject *c, uint16_t core);

/* ---- made at import (module.c) ------------------------------------------------ */

extern PyObject *IllegalTransition;   /* a bug in a handler: answered INTERNAL */
extern PyObject *AnswerTwice;         /* the exactly-once check: stops the manager */

#pragma GCC visibility pop

#endif /* PROCMGR_CORE_INTERNAL_H */
