/*
 * Peers coming and going, and messages straight from a ring.
 *
 * A client that leaves (client_gone) and a worker that dies (spawnd_died)
 * change the state as a message would: what waited for the client is
 * dropped, and what waited on the worker fails, its domains having lost
 * their dispatchers with it. core_serve is the loop's way in (_core.h,
 * _loop.c): the one-slot messages the core handles without Python.
 *
 * Invariants kept here:
 * - A client leaving costs what it owes, not the table: only the domains
 *   its unanswered requests name are visited. Its requests to spawnds stay
 *   in flight, since their replies must still be matched, and are
 *   answered into the void.
 * - A worker that dies fails everything it will never answer, in order:
 *   first its domains' dispatchers there, then the requests it was sent,
 *   then those still queued for it. Only then may a new worker take the
 *   core.
 * - core_serve takes from a ring only what C can finish: a valid one-slot
 *   header at its head, and nothing while the peer's Python decoder is
 *   mid-message. Everything else stays in the ring for Python to decode,
 *   so the error a bad slot earns is decided in one place. It takes at
 *   most SERVE_BUDGET messages from one peer per call, and none from a
 *   client whose answers wait in its outbox: they go out first.
 */
#include "core.h"

#include <stdlib.h>

/* ---- peers coming and going ------------------------------------------------------ */

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
void client_gone(CoreObject *c, uint32_t id)
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
int spawnd_died(CoreObject *c, uint16_t core)
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
    if (p->mid_message)
        return 0;            /* the Python decoder holds the start of a message */
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

int core_any_backlogged(PyObject *core)
{
    return ((CoreObject *)core)->backlogged != 0;
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

int core_events_due(PyObject *core)
{
    CoreObject *c = (CoreObject *)core;
    return c->events_wanted != 0 && c->table.events.last >= c->events_wanted;
}
