/*
 * The domain table: small growable arrays and the sorted sets of cores
 * built on them, the domains, the table that holds them, the one
 * transition() every change of state goes through, the history of
 * cleaned domains that a late wait still finds, and the log of events
 * (a domain's start and end, recorded at its transition). The handlers (handlers.c)
 * decide when a domain moves; this file decides whether it may.
 *
 * Invariants kept here:
 * - A domain changes state only along an edge of the diagram below. Any
 *   other edge is a handler's bug: transition() refuses it with
 *   IllegalTransition (answered INTERNAL) and the state stays as it was.
 * - Ids are issued in creation order and never reused, so the live list,
 *   kept in creation order, is in id order too (module.c pages through it
 *   by id). An id the table no longer holds was issued and forgotten, or
 *   never issued (missing_domain): the one place that tells which.
 * - by_id holds every live domain and the last `history` cleaned ones.
 *   Retiring a domain frees the oldest cleaned one past the history, so a
 *   handler still holding a domain that has just retired may use it until
 *   the next retirement.
 * - A core counts once in a domain's sets, however many messages report it
 *   (docs/defects.md, defects 10 and 11), and the sets are sorted, so
 *   kills and cleanups go out in core order.
 * - A cap's nonce is 64 bits from the OS's CSPRNG, never derived.
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

static const char *const state_names[] = {"NIL", "RUNNING", "STOP_PEND", "STOPPED", "CLEANED"};

/* ---- small growable arrays ------------------------------------------------ */

int vec_reserve(void **v, uint32_t *cap, uint32_t need, size_t item)
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

int cs_has(const struct coreset *s, uint16_t core)
{
    for (uint32_t i = 0; i < s->n; i++)
        if (s->v[i] == core)
            return 1;
    return 0;
}

int cs_add(struct coreset *s, uint16_t core)
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
int cs_discard(struct coreset *s, uint16_t core)
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

void domain_free(struct domain *d)
{
    Py_XDECREF(d->argv);
    Py_XDECREF(d->payload);
    PyMem_Free(d->cores.v);
    PyMem_Free(d->live.v);
    PyMem_Free(d->held.v);
    PyMem_Free(d->span_pending.v);
    PyMem_Free(d->killers.v);
    PyMem_Free(d->waiters.v);
    PyMem_Free(d->signalers.v);
    PyMem_Free(d->deferred.v);
    PyMem_Free(d);
}

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

/* The only legal edges (bit per target state). */
static const uint8_t edges[5] = {
    [STATE_NIL] = 1 << STATE_RUNNING | 1 << STATE_CLEANED,
    [STATE_RUNNING] = 1 << STATE_STOP_PEND,
    /* back to RUNNING only when a kill failed where it still runs */
    [STATE_STOP_PEND] = 1 << STATE_STOPPED | 1 << STATE_RUNNING,
    [STATE_STOPPED] = 1 << STATE_CLEANED,
    [STATE_CLEANED] = 0,
};

/* Seconds since the epoch: when a domain started and ended, for ps. */
double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The event a change of state makes, if any: a start, an end (by itself
 * or by a kill), a spawn that failed. Stopping, a failed kill's way back
 * to RUNNING and the cleanup after an end make none. */
static void domain_event(struct table *t, const struct domain *d, uint8_t from, uint8_t to)
{
    struct event e = {.time = d->ended_at, .dom = d->id, .core = d->home_core,
                      .pid = d->cores.n ? d->cores.v[0].pid : 0};
    if (from == STATE_NIL && to == STATE_RUNNING) {
        e.kind = EVENT_SPAWNED;
        e.time = wall_now();
    } else if (to == STATE_STOPPED) {
        e.kind = d->killed ? EVENT_KILLED : EVENT_EXITED;
        e.status = d->exit_status;
        e.flags = (d->signaled ? FLAG_SIGNALED : 0) | (d->has_usage ? EVENT_USAGE : 0);
        e.user_us = d->user_us;
        e.system_us = d->system_us;
        e.max_rss_kib = d->max_rss_kib;
    } else if (from == STATE_NIL && to == STATE_CLEANED) {
        e.kind = EVENT_SPAWN_FAILED;
        e.err = d->spawn_err;
        e.status = d->spawn_status;
    } else {
        return;
    }
    event_record(&t->events, &e);
}

int transition(struct table *t, struct domain *d, uint8_t to)
{
    if (!(edges[d->state] & (1 << to))) {
        PyErr_Format(IllegalTransition, "domain %u: %s -> %s is not a legal transition",
                     d->id, state_names[d->state], state_names[to]);
        return -1;
    }
    uint8_t from = d->state;
    d->state = to;
    /* Its end: stopped, or cleaned without having run (a spawn that failed). */
    if ((to == STATE_STOPPED || to == STATE_CLEANED) && d->ended_at == 0)
        d->ended_at = wall_now();
    domain_event(t, d, from, to);
    return 0;
}

/* ---- events ----------------------------------------------------------------- */

/* One more event, the newest: it takes the place of the oldest once the
 * ring is full. Never fails: recording costs a copy, and an event nobody
 * asks for before `cap` more came is what a consumer is told it lost. */
void event_record(struct eventlog *log, const struct event *e)
{
    struct event *slot = &log->v[log->last % log->cap];
    PyObject *old = slot->name;
    *slot = *e;
    Py_XINCREF(slot->name);
    Py_XDECREF(old);
    log->last++;
}

/* EVENTS' answer (protocol.h, "Events"): the events after `after`
 * (EVENTS_FROM_NOW, or one not issued yet: the newest), as many as fit in
 * max_bytes, from the oldest kept; -> (payload, seq of the last in it, or
 * where it started if none). NULL with MemoryError. */
PyObject *events_after(const struct eventlog *log, uint64_t after, uint32_t max_bytes)
{
    if (after > log->last)
        after = log->last;
    uint64_t oldest = log->last >= log->cap ? log->last - log->cap + 1 : 1;
    uint64_t first = after + 1 > oldest ? after + 1 : oldest;
    uint64_t lost = first - (after + 1);
    uint32_t size = EVENT_HEAD;
    uint64_t end = first;
    for (; end <= log->last; end++) {
        const struct event *e = &log->v[(end - 1) % log->cap];
        uint32_t n = EVENT_FIXED + (e->name ? (uint32_t)PyBytes_GET_SIZE(e->name) : 0);
        if (size + n > max_bytes)
            break;
        size += n;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(p, &first, 8);
    memcpy(p + 8, &lost, 8);
    p += EVENT_HEAD;
    for (uint64_t seq = first; seq < end; seq++) {
        const struct event *e = &log->v[(seq - 1) % log->cap];
        uint16_t nlen = e->name ? (uint16_t)PyBytes_GET_SIZE(e->name) : 0;
        memcpy(p, &e->time, 8);
        memcpy(p + 8, &e->dom, 4);
        memcpy(p + 12, &e->pid, 4);
        memcpy(p + 16, &e->status, 4);
        memcpy(p + 20, &e->core, 2);
        memcpy(p + 22, &e->err, 2);
        p[24] = e->kind;
        p[25] = e->flags;
        memcpy(p + 26, &nlen, 2);
        memcpy(p + 28, &e->user_us, 8);
        memcpy(p + 36, &e->system_us, 8);
        memcpy(p + 44, &e->max_rss_kib, 4);
        if (nlen)
            memcpy(p + EVENT_FIXED, PyBytes_AS_STRING(e->name), nlen);
        p += EVENT_FIXED + nlen;
    }
    return Py_BuildValue("(NK)", out, (unsigned long long)(end - 1));
}

/* A new NIL entry with a fresh cap (the caller checked capacity). */
struct domain *table_create(struct table *t, PyObject *argv, uint16_t core,
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
    d->started_at = wall_now();
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
int table_retire(struct table *t, struct domain *d)
{
    if (transition(t, d, STATE_CLEANED) < 0)
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

/* Up to `limit` ids >= start of the cleaned domains the history keeps, in
 * id order, and whether more follow: O(history) a page -- bounded by the
 * history (4,096 by default), not by the table. NULL with MemoryError. */
PyObject *table_ended_ids_from(struct table *t, uint32_t start, Py_ssize_t limit)
{
    uint32_t *ids = PyMem_Malloc((t->ncleaned ? t->ncleaned : 1) * sizeof *ids);
    if (ids == NULL)
        return PyErr_NoMemory();
    uint32_t n = 0;
    for (uint32_t k = 0; k < t->ncleaned; k++) {
        uint32_t id = t->cleaned[(t->cleaned_head + k) % t->history];
        if (id >= start)
            ids[n++] = id;
    }
    qsort(ids, n, sizeof *ids, cmp_u32);
    PyObject *l = PyList_New(0);
    for (uint32_t k = 0; l != NULL && k < n && PyList_GET_SIZE(l) < limit; k++) {
        PyObject *x = PyLong_FromUnsignedLong(ids[k]);
        if (x == NULL || PyList_Append(l, x) < 0)
            Py_CLEAR(l);
        Py_XDECREF(x);
    }
    int more = l != NULL && (uint32_t)PyList_GET_SIZE(l) < n;
    PyMem_Free(ids);
    return l == NULL ? NULL : Py_BuildValue("(NO)", l, more ? Py_True : Py_False);
}

/* A spawn or span reply: a dispatcher of d runs on core. */
int dispatcher_started(struct table *t, struct domain *d, uint16_t core, int32_t pid)
{
    struct dispatcher disp = {core, pid};
    if (VEC_PUSH(&d->cores, disp) < 0 || cs_add(&d->live, core) < 0 ||
        cs_add(&d->held, core) < 0)
        return -1;
    /* After the push: its event names the pid. */
    if (d->state == STATE_NIL && transition(t, d, STATE_RUNNING) < 0)
        return -1;
    return 0;
}

/* core's dispatcher is gone; 0 if that was counted already. */
int dispatcher_stopped(struct domain *d, uint16_t core)
{
    return cs_discard(&d->live, core);
}

/* core released d; 1 when that made it CLEANED. */
int dispatcher_cleaned(struct table *t, struct domain *d, uint16_t core)
{
    cs_discard(&d->held, core);
    if (d->held.n == 0 && d->state == STATE_STOPPED)
        return table_retire(t, d) < 0 ? -1 : 1;
    return 0;
}

/* The error for a domain id not in the table: issued once and forgotten
 * since (past the history), or never issued. */
uint16_t missing_domain(const struct table *t, uint32_t dom)
{
    return dom != 0 && dom < t->next_id ? E_DOMAIN_FORGOTTEN : E_DOMAIN_TABLE_FIND;
}
