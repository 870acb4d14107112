/*
 * The wire protocol, defined once: every op, flag, error code, domain state
 * and limit, and the layout of the header slot. The C of the manager
 * (procmgr/manager/core/), the codec (procmgr/protocol/_wire.c) and the
 * worker (spawnd_workers/_spawnd.c) include this file; Python reads the same
 * text through cffi (procmgr/protocol/build.py compiles the block between
 * CDEF-BEGIN and CDEF-END into procmgr.protocol._defs, from which
 * procmgr/protocol/numbers.py makes Op, Flag, Err, State and the limits).
 * A number changed here changes everywhere at the next build; there is no
 * second list to keep in step.
 *
 * Every message is one 64-byte header slot, followed by `nfrag` raw
 * continuation slots when its payload is longer than the 32 bytes that fit
 * inline. A sender pushes all of a message's slots in one batch, so a
 * reader never sees two messages' fragments interleaved -- but for a spawn
 * longer than MAX_PAYLOAD (a long argv or env, up to SPAWN_MAX_PAYLOAD),
 * which may be longer than the ring: that one goes in pieces as the reader
 * makes room, and since each ring has one producer, which sends nothing
 * else until the last piece is in, its slots still follow each other
 * (procmgr/protocol/messages.py, "Long spawns"). Little-endian.
 *
 *   offset  field   type  meaning
 *        0  op      u8    operation (enum op)
 *        1  flags   u8    FLAG_* bits
 *        2  core    u16   target core (requests) / reporting core (spawnd)
 *        4  seq     u32   request sequence number, echoed by the reply
 *        8  dom     u32   domain id
 *       12  err     u16   error code (enum err), 0 in requests
 *       14  nfrag   u16   continuation slots after this one
 *       16  nonce   u64   domain cap nonce
 *       24  status  i32   exit status / state / errno, by op
 *       28  plen    u32   payload length in bytes (inline + continuation)
 *       32  inline  32B   first 32 bytes of the payload
 *
 * Only literals between the markers: cffi's parser reads that block as it
 * is. Relations between the numbers are checked below it, at compile time.
 */
#ifndef PROCMGR_PROTOCOL_H
#define PROCMGR_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */

#define SLOT 64
#define INLINE 32
/* The original interface limits each of path, argv and env to 2048 bytes;
 * a path and the caps (with the working directory) still are. */
#define ARG_LIMIT 2048
/* Largest payload of every message but a spawn's (and of any spawn whose
 * fields fit the original's limits), and its continuation slots. */
#define MAX_PAYLOAD 8208
#define MAX_FRAGS 128
/* argv and env may each be up to 1 MiB: eight times what one argument of
 * execve may be (MAX_ARG_STRLEN, 128 KiB), and together what it takes by
 * default (a quarter of the 8 MiB stack). What the OS refuses of that is
 * its EXEC_FAILED (E2BIG). A spawn that long travels as a long message:
 * SPAWN, SPAWN_WITH_CAPS, SD_SPAWN and SD_SPAN may carry up to
 * SPAWN_MAX_PAYLOAD bytes (spawn_payload.h's wide layout). */
#define LONG_ARG_LIMIT 1048576
#define SPAWN_MAX_PAYLOAD 2101268
/* A program request (OP_PROGRAM) carries a spawn's payload after its own
 * words (JSON, at most this many bytes, and their u32 length). */
#define PROGRAM_WORDS_MAX 4096
/* The client requests are the ops FIRST_CLIENT_OP..LAST_CLIENT_OP. */
#define FIRST_CLIENT_OP 1
#define LAST_CLIENT_OP 13
/* The exit status of a domain the runtime killed. */
#define EXIT_STATUS_KILLED 9
/* A kill's signal (KILL's status; 0: the runtime's, SIGTERM) is at most
 * this; its grace, in ms, is the optional u32 payload (none: the
 * runtime's). SD_KILL carries both as its payload, u32 signal and u32
 * grace in ms (KILL_GRACE_DEFAULT: the worker's), or nothing for both
 * defaults. */
#define KILL_MAX_SIGNAL 64
#define KILL_GRACE_DEFAULT 4294967295
/* What a dispatcher used, carried by the message that says it ended (an
 * SD_EXIT, a RELEASED reply to SD_KILL): u64 user CPU us, u64 system CPU
 * us, u32 peak resident set in KiB -- its rusage, which counts the
 * children it waited for, as time(1) does. */
#define USAGE_BYTES 20
/* A captured stream's bounds (a "log" cap's MAX_BYTES:BACKUPS) unless the
 * runtime or the spawn says otherwise, and what they may be: a rotation
 * cuts whole blocks out of the file, and renames every backup (kept few). */
#define LOG_MAX_BYTES 1048576
#define LOG_BACKUPS 1
#define LOG_MIN_BYTES 4096
#define LOG_MAX_BACKUPS 32

enum op {
    /* client -> manager (answered with the same op) */
    OP_SPAWN = 1,
    OP_SPAWN_WITH_CAPS = 2,
    OP_SPAN = 3,
    OP_KILL = 4,
    OP_EXIT = 5,
    OP_WAIT = 6,
    OP_GET_STATUS = 7,
    OP_GET_DOMAINLIST = 8,
    OP_ADD_SPAWND = 9,
    OP_GET_STATS = 10,        /* the manager's own figures (JSON), for `procmgr top` */
    OP_SIGNAL = 11,           /* status (1..KILL_MAX_SIGNAL) to every dispatcher's group */
    OP_PROGRAM = 12,          /* a supervised program's request (procmgr/manager/supervisor.py) */
    OP_EVENTS = 13,           /* the events after a sequence number (below, "Events") */
    /* manager -> client only: the answer to a request whose op it could not
     * read (an unknown op byte), so the client can still decode it and
     * match it by seq; err says why */
    OP_UNREADABLE = 14,
    /* manager -> spawnd (each answered by one SD_REPLY, in order) */
    OP_SD_SPAWN = 16,
    OP_SD_SPAN = 17,
    OP_SD_KILL = 18,
    OP_SD_CLEANUP = 19,
    OP_SD_SIGNAL = 20,        /* payload: u32 signal; answered OK or NOT_FOUND */
    /* spawnd -> manager */
    OP_SD_REPLY = 24,
    OP_SD_EXIT = 25,          /* a dispatcher ended by itself; status = wait status;
                                 payload: its usage (USAGE_BYTES) */
};

/* Bits of the flags byte. */
enum flag {
    FLAG_NONE = 0,
    FLAG_NOHANG = 1,          /* wait: answer at once if the domain has not stopped */
    FLAG_SIGNALED = 2,        /* SD_EXIT / wait: status is the number of a killing signal */
    FLAG_STILL_RUNNING = 4,   /* wait with NOHANG: the domain has not stopped yet */
    /* SD_EXIT, and the reply to SD_KILL: the worker has reaped the
     * dispatcher and holds nothing of the domain any more, so this core
     * needs no SD_CLEANUP (our worker always releases at once; a spawnd
     * that keeps a domain's resources until told -- Barrelfish's -- leaves
     * it clear). */
    FLAG_RELEASED = 8,
    /* The reply to SD_KILL: the signal is sent and the dispatcher still
     * runs (its grace is not over); its end comes as an SD_EXIT, once its
     * process group is gone. */
    FLAG_STOPPING = 16,
    /* GET_DOMAINLIST: list the ended domains the history keeps, not the live */
    FLAG_ENDED = 32,
    FLAG_REPLY = 128,         /* every reply carries its request's op with this bit */
};

/* Error codes, in the err field. Names taken from Barrelfish's
 * PROC_MGMT_ERR_* keep their meaning; the rest are what a runtime of real
 * processes and shared-memory rings needs on top. procmgr/errors.py words
 * each one for people. */
enum err {
    E_OK = 0,
    /* -- from the original interface (PROC_MGMT_ERR_*) -- */
    E_INVALID_SPAWND = 1,     /* no spawnd serves that core */
    E_CREATE_DOMAIN_CAP = 2,  /* the domain table is full */
    E_DOMAIN_CAP_HASH = 3,    /* (original: cap identify failed) kept for numbering */
    E_DOMAIN_TABLE_FIND = 4,  /* no domain with that id */
    E_DOMAIN_NOT_RUNNING = 5, /* span/kill/exit of a domain that is not RUNNING */
    E_ALREADY_SPANNED = 6,    /* the domain already runs on that core */
    E_SPAWND_EXISTS = 7,      /* add_spawnd for a core that has one */
    E_NOT_MONITOR = 8,        /* add_spawnd from a binding that is not the monitor */
    E_CLIENTS_TABLE_FIND = 9, /* hashtable strategy: a reply matched no pending client */
    /* -- this runtime -- */
    E_BAD_MESSAGE = 20,       /* malformed, truncated or inconsistent message */
    E_UNKNOWN_OP = 21,        /* op code this end does not serve */
    E_ARG_TOO_LONG = 22,      /* path/argv/env over the limit */
    E_BAD_CAP = 23,           /* the cap's nonce does not match: forged or stale */
    E_SPAWND_DIED = 24,       /* the worker of that core died with the request */
    E_REPLY_OUT_OF_ORDER = 25,/* a spawnd reply's sequence number did not match */
    E_EXEC_FAILED = 26,       /* the program could not be started; status = errno */
    E_KILL_FAILED = 27,       /* the worker could not end the domain; status = errno */
    E_CLIENT_GONE = 28,       /* the requesting client disconnected */
    E_BUSY = 29,              /* too many requests in flight for this client */
    E_NOT_FOUND = 30,         /* spawnd: no dispatcher of that domain on this core */
    E_SHUTTING_DOWN = 31,     /* the manager is stopping */
    E_INTERNAL = 32,          /* a bug in the manager; the manager carries on */
    E_OPEN_FAILED = 33,       /* a file the domain was to get (stdout=, caps) would not open */
    E_DOMAIN_FORGOTTEN = 34,  /* the domain ended long enough ago to be out of the history */
    E_PROGRAM_EXISTS = 35,    /* supervise: a program of that name is supervised already */
    E_NO_SUCH_PROGRAM = 36,   /* no supervised program of that name */
    /* procmgr.cluster's, never a manager's: the node of the domain died, or
     * its agent (and with it the node's runtime and its domains) ended */
    E_NODE_DIED = 37,
};

/* Events (procmgr/manager/events.py): what happened to domains and
 * programs, numbered 1, 2, ... in the order it happened. EVENTS asks for
 * those after the header's nonce (EVENTS_FROM_NOW: after the newest),
 * waiting up to its status in ms (at most EVENTS_WAIT_MAX_MS) for one to
 * come. The answer's payload: u64 seq of its first event, u64 events lost
 * before it (older than the manager keeps), then each event: f64 time
 * (epoch s), u32 domain, i32 pid, i32 status, u16 core, u16 err, u8 kind,
 * u8 flags, u16 length of a program's name, what the domain used as its
 * end's USAGE_BYTES say it (an EXITED or KILLED event whose flags have
 * EVENT_USAGE; zeros otherwise), the name. */
#define EVENTS_FROM_NOW 0xFFFFFFFFFFFFFFFF
#define EVENTS_WAIT_MAX_MS 60000
#define EVENT_HEAD 16
#define EVENT_FIXED 48
#define EVENT_USAGE 8             /* an event's flags: it carries the domain's usage */
/* A program's name in an event: NAME_MAX characters of UTF-8 fit. */
#define EVENT_NAME_MAX 512

enum event_kind {
    /* a domain's: status is its pid's exit code or signal (flags), its
     * spawn's errno for SPAWN_FAILED (err says why) */
    EVENT_SPAWNED = 1,
    EVENT_EXITED = 2,         /* it ended by itself */
    EVENT_KILLED = 3,         /* a kill ended it; status 9 */
    EVENT_SPAWN_FAILED = 4,
    /* a supervised program's (the name is its): status is its restarts */
    EVENT_STARTED = 5,        /* an incarnation runs (domain) */
    EVENT_RESTARTED = 6,      /* an incarnation runs, started again after an end */
    EVENT_BACKOFF = 7,        /* it ended and waits to start again */
    EVENT_STOPPED = 8,        /* stopped by a user */
    EVENT_FINISHED = 9,       /* it ended and its policy says not to start it again */
    EVENT_GIVEN_UP = 10,      /* FATAL: it ended too often, or could not be started */
    EVENT_REMOVED = 11,       /* no longer supervised */
};

/* A domain's state (procmgr/manager/domain.py draws the machine). */
enum state {
    STATE_NIL = 0,
    STATE_RUNNING = 1,
    STATE_STOP_PEND = 2,
    STATE_STOPPED = 3,
    STATE_CLEANED = 4,
};

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
    uint8_t inline_[32];
};

/* CDEF-END */

_Static_assert(sizeof(struct wire_header) == SLOT, "a header is exactly one slot, no padding");
_Static_assert(sizeof(((struct wire_header *)0)->inline_) == INLINE, "inline is INLINE bytes");
_Static_assert(offsetof(struct wire_header, inline_) == SLOT - INLINE, "inline ends the slot");
_Static_assert(MAX_PAYLOAD == 4 * ARG_LIMIT + 16, "path, argv, env, caps and their lengths");
_Static_assert(MAX_FRAGS == (MAX_PAYLOAD - INLINE + SLOT - 1) / SLOT,
               "continuation slots of the largest payload");
_Static_assert(SPAWN_MAX_PAYLOAD == 20 + 2 * ARG_LIMIT + 2 * LONG_ARG_LIMIT,
               "a wide spawn's lengths, path, argv, env and caps");
_Static_assert((SPAWN_MAX_PAYLOAD + 4 + PROGRAM_WORDS_MAX - INLINE + SLOT - 1) / SLOT <= 0xFFFF,
               "a long spawn's continuation slots fit nfrag, in a program request too");
_Static_assert(FIRST_CLIENT_OP == OP_SPAWN && LAST_CLIENT_OP == OP_EVENTS,
               "the client requests are one run of ops");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the wire is little-endian and this code copies fields as they are");

/* 1 if the op byte names an op. A switch over the enum, so that an op added
 * above and forgotten here is a compiler warning (-Wswitch), an error in
 * this project's build. */
static inline int op_is_known(uint8_t op)
{
    switch ((enum op)op) {
    case OP_SPAWN: case OP_SPAWN_WITH_CAPS: case OP_SPAN: case OP_KILL: case OP_EXIT:
    case OP_WAIT: case OP_GET_STATUS: case OP_GET_DOMAINLIST: case OP_ADD_SPAWND:
    case OP_GET_STATS: case OP_SIGNAL: case OP_PROGRAM: case OP_EVENTS: case OP_UNREADABLE:
    case OP_SD_SPAWN: case OP_SD_SPAN: case OP_SD_KILL: case OP_SD_CLEANUP: case OP_SD_SIGNAL:
    case OP_SD_REPLY: case OP_SD_EXIT:
        return 1;
    }
    return 0;
}

/* Continuation slots a payload of plen bytes takes. */
static inline uint32_t frags_for(uint32_t plen)
{
    return plen <= INLINE ? 0 : (plen - INLINE + SLOT - 1) / SLOT;
}

/* Read a slot as a header. 1 if it is a whole message on its own -- a known
 * op, no continuation slots, a payload that fits inline -- which C code
 * may serve from the ring; 0 if not (a message with continuation slots, or
 * not a valid header), which is left to the Python decoder, the one reader
 * of everything else (procmgr/protocol/messages.py says why it refuses).
 * The one place C reads a slot from a peer. */
static inline int wire_read_one(const uint8_t *slot, int len, struct wire_header *h)
{
    if (len != SLOT)
        return 0;
    __builtin_memcpy(h, slot, SLOT);   /* one copy: the peer may write the slot meanwhile */
    return op_is_known(h->op) && h->nfrag == 0 && h->plen <= INLINE;
}

/* The reply to a request header: same op, seq, core, domain and nonce, the
 * REPLY flag set, no payload. */
static inline struct wire_header wire_reply_to(const struct wire_header *req)
{
    struct wire_header r;
    __builtin_memset(&r, 0, sizeof r);
    r.op = req->op;
    r.flags = FLAG_REPLY;
    r.core = req->core;
    r.seq = req->seq;
    r.dom = req->dom;
    r.nonce = req->nonce;
    return r;
}

#endif /* PROCMGR_PROTOCOL_H */
