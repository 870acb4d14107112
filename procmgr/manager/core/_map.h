/*
 * The containers of the manager's core, header-only, included by core.h
 * and _pending.c: a hash map of 64-bit keys to pointers (domains by id,
 * clients by id, a client's outstanding requests, the hashtable strategy's
 * chains), and an intrusive doubly linked list (the live domains, the
 * hashtable's claim order), both in creation order.
 */
#ifndef PROCMGR_MAP_H
#define PROCMGR_MAP_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- a hash map of 64-bit keys (0 is "empty") ----------------------------
 * Open addressing, linear probing, deletion by backward shift: no
 * tombstones, so a table that sees millions of ids come and go stays as
 * fast as a fresh one. */

struct map {
    uint64_t *keys;
    void **vals;
    uint32_t cap;       /* a power of two, or 0 */
    uint32_t n;
};

static inline uint32_t map_slot(const struct map *m, uint64_t key)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (m->cap - 1);
}

static inline void *map_get(const struct map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (uint32_t i = map_slot(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key)
            return m->vals[i];
        if (m->keys[i] == 0)
            return NULL;
    }
}

static inline int map_grow(struct map *m)
{
    uint32_t cap = m->cap ? m->cap * 2 : 16;
    uint64_t *keys = PyMem_Calloc(cap, sizeof *keys);
    void **vals = PyMem_Calloc(cap, sizeof *vals);
    if (keys == NULL || vals == NULL) {
        PyMem_Free(keys);
        PyMem_Free(vals);
        PyErr_NoMemory();
        return -1;
    }
    struct map old = *m;
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    for (uint32_t i = 0; i < old.cap; i++) {
        if (old.keys[i] == 0)
            continue;
        uint32_t j = map_slot(m, old.keys[i]);
        while (keys[j] != 0)
            j = (j + 1) & (cap - 1);
        keys[j] = old.keys[i];
        vals[j] = old.vals[i];
    }
    PyMem_Free(old.keys);
    PyMem_Free(old.vals);
    return 0;
}

/* Insert or replace; val must not be NULL. 0, or -1 with MemoryError. */
static inline int map_put(struct map *m, uint64_t key, void *val)
{
    if ((m->n + 1) * 2 > m->cap && map_grow(m) < 0)
        return -1;
    uint32_t i = map_slot(m, key);
    while (m->keys[i] != 0 && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    if (m->keys[i] == 0)
        m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
    return 0;
}

/* Remove; the value it had, or NULL. */
static inline void *map_del(struct map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    uint32_t mask = m->cap - 1, i = map_slot(m, key);
    while (m->keys[i] != key) {
        if (m->keys[i] == 0)
            return NULL;
        i = (i + 1) & mask;
    }
    void *val = m->vals[i];
    /* Shift back every later entry of the run that may sit past its home. */
    for (uint32_t j = (i + 1) & mask; m->keys[j] != 0; j = (j + 1) & mask) {
        uint32_t home = map_slot(m, m->keys[j]);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
    m->n--;
    return val;
}

static inline void map_free(struct map *m)
{
    PyMem_Free(m->keys);
    PyMem_Free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- an intrusive doubly linked list ----
 * first/last: the list's ends; prev/next: the names of the node's links. */

#define DLIST_APPEND(first, last, node, prev, next) \
    do {                                            \
        (node)->prev = (last);                      \
        (node)->next = NULL;                        \
        if (last)                                   \
            (last)->next = (node);                  \
        else                                        \
            (first) = (node);                       \
        (last) = (node);                            \
    } while (0)

#define DLIST_UNLINK(first, last, node, prev, next) \
    do {                                            \
        if ((node)->prev)                           \
            (node)->prev->next = (node)->next;      \
        else                                        \
            (first) = (node)->next;                 \
        if ((node)->next)                           \
            (node)->next->prev = (node)->prev;      \
        else                                        \
            (last) = (node)->prev;                  \
        (node)->prev = (node)->next = NULL;         \
    } while (0)

#endif /* PROCMGR_MAP_H */
