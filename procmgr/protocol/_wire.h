/*
 * The message object of procmgr/protocol/_wire.c (Msg) as the manager's
 * core sees it: it reads a Msg's fields here directly rather than by name.
 * The header slot itself is protocol.h's.
 */
#ifndef PROCMGR_WIRE_H
#define PROCMGR_WIRE_H

#include "protocol.h"

#ifdef Py_PYTHON_H
/* Nine attributes, each a Python object, in this order. */
typedef struct {
    PyObject_HEAD
    PyObject *op, *seq, *core, *dom, *nonce, *err, *status, *flags, *payload;
} MsgObject;
#endif

#endif /* PROCMGR_WIRE_H */
