/*
 * The header slot of the wire protocol (procmgr/protocol.py, HEADER_FIELDS),
 * as C sees it: shared by procmgr/_wire.c (the codec's hot path) and
 * spawnd_workers/_spawnd.c (the worker's), so there is one definition.
 * tests/unit/test_protocol.py checks it against HEADER_FIELDS.
 */
#ifndef PROCMGR_WIRE_H
#define PROCMGR_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define SLOT 64
#define INLINE 32
#define FLAG_REPLY 0x80

struct wire_header {
    uint8_t op;
    uint8_t flags;
    uint16_t core;
    uint32_t seq;
    uint32_t dom;
    uint16_t err;
    uint16_t nfrag;
    uint64_t nonce;
    int32_t status;
    uint32_t plen;
    uint8_t inline_[INLINE];
};

_Static_assert(sizeof(struct wire_header) == SLOT,
               "a header is exactly one 64-byte slot, no padding");
_Static_assert(offsetof(struct wire_header, nonce) == 16,
               "nonce at 16 as protocol.HEADER_FIELDS says");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the wire is little-endian and this code copies fields as they are");

#ifdef Py_PYTHON_H
/* The message object (_wire.c's Msg): nine attributes, each a Python
 * object, in this order. The manager's core (_core.c) reads a Msg's fields
 * here directly rather than by name. */
typedef struct {
    PyObject_HEAD
    PyObject *op, *seq, *core, *dom, *nonce, *err, *status, *flags, *payload;
} MsgObject;
#endif

#endif /* PROCMGR_WIRE_H */
