/*
 * What the manager loop (_loop.c) and the manager's core (_core.c) call in
 * each other. Both are one extension module, procmgr._core.
 */
#ifndef PROCMGR_CORE_H
#define PROCMGR_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_ring.h"

/* Which kind of peer a ring pair belongs to. */
#define PEER_SPAWND 0
#define PEER_CLIENT 1

/* Handle, in C, what can be handled at the head of a peer's inbound ring:
 * one-slot messages the core serves itself (for a client: every request
 * but the few Python answers; for a spawnd: everything). Stops in front of
 * anything else -- a message with continuation slots, a slot that is not a
 * valid header, a request Python answers -- which stays in the ring for
 * Python to decode (channel.receive) and pass on. The number handled, or -1
 * with an exception set. */
Py_ssize_t core_serve(PyObject *core, int kind, uint32_t key, struct rb_handle *in);

/* 1 if the peer's outbound messages wait in the core's backlog (its ring
 * was full): the loop then waits for room there, not for its requests. */
int core_backlogged(PyObject *core, int kind, uint32_t key);

/* Adds RingSet to the module (_loop.c). */
int loop_register(PyObject *module);

#endif /* PROCMGR_CORE_H */
