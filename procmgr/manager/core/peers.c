/*
 * Peers -- clients and spawnd workers -- as the core sends to them: each
 * one's outbox, answering a client exactly once, and sending a request to
 * a spawnd. Making and freeing a peer is here too, since its outbox and
 * its send queue are what there is to free.
 *
 * Invariants kept here:
 * - Sending never blocks the single-threaded manager. A message goes into
 *   the peer's ring whole, or waits whole in its outbox behind what came
 *   before it; nothing overtakes the outbox. A long one (a spawn past
 *   MAX_PAYLOAD, which may be longer than the ring) goes in pieces as the
 *   peer makes room, the rest waiting at the outbox's head: nothing else
 *   goes to that peer until its last piece is in (protocol.h).
 * - A peer whose ring was closed, or whose process died, is sent nothing
 *   more, and is marked gone; the loop asks (Core.lost) and releases what
 *   the peer held.
 * - Every request is answered exactly once. answer() takes it off the
 *   client's outstanding requests; one that is not there (answered
 *   already, or never received) raises AnswerTwice, which stops the
 *   manager. A client that has gone is answered into the void.
 * - Each request to a spawnd gets exactly one reply, in order, and that
 *   is checked rather than assumed: the request carries the spawnd's next
 *   sequence number and claims its pending slot (_pending.c) as it goes
 *   into the ring or the outbox. A pending slot belongs to its structure
 *   from that claim until its release (handlers.c).
 */
#include "core.h"

/* ---- peers -------------------------------------------------------------------
 *
 * What goes out to a peer goes into its ring; what does not fit waits in its
 * outbox, in order, until the peer makes room (flush). Sending never blocks
 * the single-threaded manager. */

static void outbox_clear(struct outbox *b)
{
    if (b->n != 0 && b->backlogged != NULL)
        (*b->backlogged)--;
    struct outmsg *m = b->head;
    while (m != NULL) {
        struct outmsg *next = m->next;
        PyMem_Free(m);
        m = next;
    }
    b->head = b->tail = NULL;
    b->n = 0;
}

/* The peer's ring was closed or its process died: nothing more goes out.
 * The loop learns it from Core.lost, and releases what the peer held. */
static void peer_lost(struct peer *p)
{
    p->gone = 1;
    outbox_clear(&p->outbox);
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

/* Push what fits of a long message, from slot *done on; 1 once all of it
 * is in (or the peer is lost), 0 while some waits for room. */
static int push_piece(struct peer *p, const uint8_t *data, uint32_t nslots, uint32_t *done)
{
    int64_t rc = rb_push_many(p->out, data + (size_t)*done * SLOT, nslots - *done, SLOT);
    if (rc == RB_EFULL)
        return 0;
    if (rc < 0) {
        peer_lost(p);     /* closed, or its process died */
        return 1;
    }
    *done += (uint32_t)rc;
    return *done == nslots;
}

/* Push a message now: whole, or (a long one) what fits of it. */
static int push_now(struct peer *p, const uint8_t *data, uint32_t nslots, uint32_t *done)
{
    return nslots <= 1 + MAX_FRAGS ? push_whole(p, data, nslots)
                                   : push_piece(p, data, nslots, done);
}

/* Send to a peer in order: into its ring if nothing waits before it and it
 * fits, else into the outbox. 0, or -1 with MemoryError. */
static int peer_send(struct peer *p, const uint8_t *data, uint32_t nslots)
{
    if (p->gone)
        return 0;
    uint32_t done = 0;
    if (p->outbox.n == 0 && push_now(p, data, nslots, &done))
        return 0;
    struct outmsg *m = PyMem_Malloc(sizeof *m + (size_t)nslots * SLOT);
    if (m == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    m->next = NULL;
    m->nslots = nslots;
    m->done = done;
    memcpy(m->data, data, (size_t)nslots * SLOT);
    if (p->outbox.tail)
        p->outbox.tail->next = m;
    else
        p->outbox.head = m;
    p->outbox.tail = m;
    if (p->outbox.n++ == 0)
        (*p->outbox.backlogged)++;
    return 0;
}

/* Push what the outbox holds while it fits; 1 once it is empty. */
int peer_flush(struct peer *p)
{
    struct outbox *b = &p->outbox;
    while (b->head != NULL) {
        if (!push_now(p, b->head->data, b->head->nslots, &b->head->done))
            return 0;
        if (p->gone)          /* push_whole emptied the outbox */
            return 1;
        struct outmsg *m = b->head;
        b->head = m->next;
        if (b->head == NULL)
            b->tail = NULL;
        if (--b->n == 0)
            (*b->backlogged)--;
        PyMem_Free(m);
    }
    return 1;
}

/* A message's slots: header, then the payload past INLINE in continuation
 * slots. buf holds at least msg_bytes(plen). The number of slots. */
static size_t msg_bytes(uint32_t plen)
{
    return (1 + (size_t)frags_for(plen)) * SLOT;
}

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

/* A peer's making and freeing: module.c adds peers, serve.c drops them. */

/* 0, or -1 with an exception (not a ring). */
int peer_init(struct peer *p, PyObject *outbound, uint32_t *backlogged)
{
    if ((p->out = rb_handle_of(outbound)) == NULL)
        return -1;
    p->outbound = Py_NewRef(outbound);
    p->outbox.head = p->outbox.tail = NULL;
    p->outbox.n = 0;
    p->outbox.backlogged = backlogged;
    p->gone = p->mid_message = 0;
    return 0;
}

void client_free(struct client *cl)
{
    Py_XDECREF(cl->p.outbound);
    outbox_clear(&cl->p.outbox);
    map_free(&cl->outstanding);
    PyMem_Free(cl);
}

void spawnd_free(struct spawnd *sd)
{
    Py_XDECREF(sd->p.outbound);
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
/* ---- answering: exactly once ------------------------------------------------
 * Every request is recorded as outstanding when it arrives; answering
 * removes it. Answering twice, or a request never received, is a bug and
 * raises AnswerTwice at once. A client that has gone is answered into the
 * void: it is no longer known, and nothing is sent. */

int answer(CoreObject *c, uint32_t client_id, const struct answer *a)
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
    uint8_t *buf = PyMem_Malloc(msg_bytes(a->plen));
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = peer_send(&cl->p, buf, encode(buf, &h, a->payload, a->plen));
    PyMem_Free(buf);
    return rc;
}

/* The common answers, spelled short. */
int answer_err(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq, uint16_t err,
                      uint16_t core, uint32_t dom, uint64_t nonce, int32_t status)
{
    struct answer a = {.op = op, .seq = seq, .err = err, .core = core, .dom = dom,
                       .nonce = nonce, .status = status};
    return answer(c, client, &a);
}

int answer_detail(CoreObject *c, uint32_t client, uint8_t op, uint32_t seq,
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
int sd_flush(struct spawnd *sd)
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
int sd_send(struct spawnd *sd, uint8_t op, uint32_t dom, uint64_t nonce,
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
    if (plen > INLINE && (buf = PyMem_Malloc(msg_bytes(plen))) == NULL) {
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
