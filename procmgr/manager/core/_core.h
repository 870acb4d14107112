/*
 * What the manager loop (_loop.c), the pending structures (_pending.c) and
 * the manager's core (table.c, peers.c, handlers.c, serve.c, module.c; its
 * own files share core.h) call in each other. All are one extension module,
 * procmgr.manager._core.
 */
#ifndef PROCMGR_CORE_H
#define PROCMGR_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_ring.h"
#include "_ring_py.h"   /* a Ring object's handle */

/* Which kind of peer a ring pair belongs to. */
#define PEER_SPAWND 0
#define PEER_CLIENT 1

/* Messages core_serve takes from one peer at a time: a peer that never
 * stops sending waits its turn behind the others (procmgr/manager/core/_loop.c). */
#define SERVE_BUDGET 64

/* Handle, in C, what can be handled at the head of a peer's inbound ring:
 * one-slot messages the core serves itself (for a client: every request
 * but the few Python answers; for a spawnd: everything). Stops in front of
 * anything else -- a message with continuation slots, a slot that is not a
 * valid header, a request Python answers -- which stays in the ring for
 * Python to decode (channel.receive) and pass on -- or after SERVE_BUDGET.
 * The number handled, or -1 with an exception set. */
Py_ssize_t core_serve(PyObject *core, int kind, uint32_t key, struct rb_handle *in);

/* 1 if any peer's outbound messages wait in the core's backlog: O(1), so
 * that the loop asks each peer (core_backlogged) only then. */
int core_any_backlogged(PyObject *core);

/* 1 if the core has recorded an event that requests waiting in Python
 * for one should have (procmgr/manager/events.py sets events_wanted): the
 * loop then returns to Python instead of sleeping again. */
int core_events_due(PyObject *core);

/* 1 if o is a Core (module.c). */
int core_check(PyObject *o);

/* 1 if the peer's outbound messages wait in the core's backlog (its ring
 * was full): the loop then waits for room there, not for its requests. */
int core_backlogged(PyObject *core, int kind, uint32_t key);

/* Adds RingSet to the module (_loop.c). */
int loop_register(PyObject *module);

/* ---- pending clients (_pending.c) ----
 * A request sent to a spawnd and not yet answered by it: one slot. The
 * core reads and writes the fields directly; Python sees them as
 * attributes (pending.py). */
typedef struct PendingSlotObject {
    PyObject_HEAD
    int64_t seq;             /* -1 while free */
    uint32_t dom;
    uint32_t client;         /* the client to answer (its id), 0: internal */
    uint32_t client_seq;
    int32_t extra;           /* what the reply handler needs back: a spawn's op */
    uint16_t core;
    uint8_t op;
    /* HashTable only: its chain (same op and domain) and claim order. */
    struct PendingSlotObject *chain_next, *order_prev, *order_next;
} PendingSlotObject;

/* 1 if p is a ReplyQueue or a HashTable. */
int pending_check(PyObject *p);
/* The strategies: a reply queue or a hashtable. */
enum { PENDING_REPLYQ = 0, PENDING_HASHTABLE = 1 };
/* PENDING_* of a strategy's name ("replyq", "hashtable"), or -1 with
 * ValueError naming them. */
int pending_kind_of(const char *name);
/* A new structure of that kind and capacity, or NULL with an exception. */
PyObject *pending_new(int kind, unsigned int capacity);
int pending_has_room(PyObject *p);
/* The next slot (borrowed: the structure owns it until release), or NULL
 * with OverflowError if full. */
PendingSlotObject *pending_claim(PyObject *p, uint32_t seq, uint8_t op, uint32_t dom);
/* The slot a reply answers, or NULL (no exception) if none. *nlost: how
 * many older slots lost their replies -- pending_lost(p, 0..nlost-1). */
PendingSlotObject *pending_match(PyObject *p, uint32_t seq, uint8_t op, uint32_t dom,
                                 Py_ssize_t *nlost);
PendingSlotObject *pending_lost(PyObject *p, Py_ssize_t i);
/* 0, or -1 with AssertionError (not the oldest, nothing pending) or KeyError. */
int pending_release(PyObject *p, PendingSlotObject *slot);
/* Every pending slot, oldest (first claimed) first: a new list. */
PyObject *pending_drain(PyObject *p);
int pending_register(PyObject *module);

#endif /* PROCMGR_CORE_H */
