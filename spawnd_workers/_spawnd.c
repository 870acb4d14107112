/*
 * The spawnd worker's hot path in C: start a program, report its exit.
 *
 * Why: one spawn + wait crosses the worker twice, and the program waits
 * for it both times -- a program inherits its worker's CPU, so it runs only
 * once the worker sleeps again. Traced with `perf sched` (docs/performance.md, "Spawn"),
 * the Python worker ran ~140 us between its wake-up and posix_spawn, ~90 us
 * after it, and ~55 us between a program's exit and the manager's wake-up:
 * little of it work, most of it the interpreter with caches the program had
 * just emptied. Here those stretches are a few microseconds plus the
 * system calls themselves.
 *
 * What is here:
 *   Prepared  one program as posix_spawn takes it (path, argv, envp, file
 *             actions), built once from a decoded, checked SpawnArgs and
 *             reused for every spawn of the same payload.
 *   HotPath   the worker's dispatcher table; `start` (posix_spawn, pidfd,
 *             epoll), the one way a dispatcher is started; and `run_once`:
 *             serve the requests at the head of the ring that are spawns
 *             of a Prepared payload, sleep, report the exits that woke it,
 *             and round again -- the worker's loop, without Python, until
 *             something needs Python.
 *
 * What stays in Python (worker.py): decoding and checking payloads, kills,
 * cleanups, every error reply, strays, shutdown. run_once stops in front of
 * a request it does not serve and leaves it in the ring (as procmgr/protocol/_wire.c's
 * take does), so Python serves it and replies stay in request order. A spawn
 * that fails here is left in the ring too: Python tries it again and words
 * the error. Ops and flags are procmgr/protocol/protocol.h's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_rotator.h"
#include "_ring.h"
#include "_ring_py.h"
#include "protocol.h"

/* What run_once reports (bits). */
#define RUN_IDLE 0        /* timed out, a signal, or a wake-up with nothing for C */
#define RUN_DECLINED 1    /* the request at the head of the ring is Python's */
#define RUN_CHILDREN 2    /* a child that is not a dispatcher exited: reap strays */
#define RUN_FULL 4        /* the reply ring is full: wait for room, then again */

/* A new program's stack until its exec (spawn_program). */
#define CHILD_STACK (256 * 1024)
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
/* Where a dispatcher's pidfd is moved to: out of the low numbers a new
 * program's descriptor table is copied from (spawn_program). */
#define PIDFD_BASE 256
/* A stray's exit is looked for at most this often while every SIGCHLD
 * names a dispatcher (stray_exited). */
#define STRAY_LOOK_NS 50000000LL

/* Per-spawn variables at the end of every envp (worker.py documents them). */
#define IDENT_VARS 4

static PyTypeObject *DispatcherType;   /* a struct sequence */

static PyStructSequence_Field dispatcher_fields[] = {
    {"dom", "domain id"},
    {"nonce", "the domain cap's nonce"},
    {"pid", "process id (also its process group: it leads one)"},
    {"pidfd", "readable once the process has exited"},
    {"span", "True for a dispatcher started by span"},
    {"logs", "rotator slots of its captured streams (a tuple; emptied once ended)"},
    {"cgroup", "its cgroup, g<N> in the core's cgroup directory (-1: none)"},
    {"cgroup_slot", "where the worker keeps its cgroup open (-1: none)"},
    {NULL, NULL},
};

static PyStructSequence_Desc dispatcher_desc = {
    "spawnd_workers._spawnd.Dispatcher",
    "One running dispatcher of a domain on this core.",
    dispatcher_fields, 8,
};

/* ---- Prepared ------------------------------------------------------------ */

/* What a dispatcher's descriptor `fd` is made, in order (dups last: they
 * copy what the others made). Made here, for each spawn ("per spawn"), and
 * handed to the program: a log file (named after the domain), an inherited
 * descriptor, and a file a caller named -- opened without waiting, so a
 * FIFO nobody reads is an error and not a worker stuck in posix_spawn
 * (whose child opens its files before the worker goes on). Only /dev/null
 * is left for the program to open itself. */
enum { ACT_OPEN, ACT_LOG, ACT_INHERIT, ACT_DUP };
#define MAX_PER_SPAWN 1024    /* descriptors a spawn may name: 0..1023 */
#define FAILED_CWD (-2)       /* *failed_fd: the working directory, not a descriptor */
#define FAILED_CGROUP (-3)    /* ... entering the domain's cgroup */
#define FAILED_IDENTITY (-4)  /* ... taking on its user, groups or umask */
#define FAILED_LIMIT (-16)    /* ... its limit i: FAILED_LIMIT - i */
#define GROUP_KILLED (-1000)  /* spawn_program: the group killed what started in it */
#define MAX_LIMITS 16         /* rlimits a spawn may set */
#define MAX_GROUPS 256        /* supplementary groups a spawn may take on */
#define SERVE_BATCH 32        /* spawns started between two looks at run_once's clock */

struct action {
    int kind, fd;
    char *path;               /* ACT_OPEN */
    int flags, mode;          /* ACT_OPEN */
    int per_spawn;            /* ACT_OPEN of anything but /dev/null; ACT_LOG, ACT_INHERIT */
    int src;                  /* ACT_DUP: the descriptor copied; ACT_INHERIT: the caller's */
    pid_t pid;                /* ACT_INHERIT: the caller */
    uint64_t max_bytes;       /* ACT_LOG */
    uint32_t backups;         /* ACT_LOG */
};

typedef struct {
    PyObject_HEAD
    PyObject *path;       /* as given: for error messages */
    PyObject *given;      /* the actions as given: for error messages */
    PyObject *keep;       /* list of the bytes the arrays below point into */
    char *file;
    PyObject *cwd_given;  /* as given (None: the worker's): for error messages */
    char *cwd;            /* NULL: the worker's */
    char **argv;          /* NULL-terminated */
    char **envp;          /* nenv entries, IDENT_VARS slots, NULL */
    Py_ssize_t nenv;
    struct action *actions;
    Py_ssize_t nactions;
    int nlogs;            /* ACT_LOG entries */
    int nper_spawn;       /* entries made per spawn */
    /* What the program's process is made before its exec, from the
     * spawn's settings (worker.py resolves and checks them). */
    PyObject *settings_given;      /* as given: for error messages */
    int nlimits;
    int limit_resource[MAX_LIMITS];
    struct rlimit limit[MAX_LIMITS];
    long uid, gid;                 /* -1: the worker's */
    int ngroups;                   /* -1: the worker's supplementary groups */
    gid_t groups[MAX_GROUPS];
    long umask;                    /* -1: the worker's */
} PreparedObject;

/* The bytes of a str or bytes (via the file-system encoding, as os.posix_spawn
 * does), kept alive in `keep`; NULL with ValueError on an embedded NUL. */
static char *keep_fs_bytes(PyObject *keep, PyObject *text)
{
    PyObject *b = NULL;
    if (!PyUnicode_FSConverter(text, &b))
        return NULL;
    int rc = PyList_Append(keep, b);
    Py_DECREF(b);
    return rc < 0 ? NULL : PyBytes_AS_STRING(b);
}

static char **string_array(PyObject *keep, PyObject *seq, Py_ssize_t spare,
                           Py_ssize_t *count, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **arr = PyMem_Calloc((size_t)(n + spare + 1), sizeof(char *));
    if (arr == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        arr[i] = keep_fs_bytes(keep, PySequence_Fast_GET_ITEM(fast, i));
        if (arr[i] == NULL) {
            PyMem_Free(arr);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    if (count)
        *count = n;
    return arr;
}

/* Adds the descriptor actions to fa; made[i] is the descriptor made for
 * the i-th per-spawn action (NULL: there are none). 0, or an errno. */
/* What the new process does to its descriptors before the exec, in order. */
enum { OP_DUP2, OP_OPEN };
struct child_op {
    int kind, fd, src;        /* OP_DUP2: src onto fd (src == fd: keep fd open across exec) */
    const char *path;         /* OP_OPEN: path opened at fd */
    int flags, mode;
};

/* p's actions as the new process applies them: the per-spawn descriptors
 * (made[], in order) put in place, /dev/null opened, copies made. */
static int child_ops(PreparedObject *p, const int *made, struct child_op *ops)
{
    int k = 0;
    for (Py_ssize_t i = 0; i < p->nactions; i++) {
        struct action *a = &p->actions[i];
        struct child_op *o = &ops[i];
        o->fd = a->fd;
        if (a->per_spawn) {
            o->kind = OP_DUP2;
            o->src = made[k++];
        } else if (a->kind == ACT_OPEN) {
            o->kind = OP_OPEN;
            o->path = a->path;
            o->flags = a->flags;
            o->mode = a->mode;
        } else {
            o->kind = OP_DUP2;
            o->src = a->src;
        }
    }
    return (int)p->nactions;
}

/* The settings of a Prepared into p: (limits, uid, gid, groups, umask) --
 * limits a sequence of (resource, soft, hard) as setrlimit takes them
 * (RLIM_INFINITY for none), uid/gid/umask an int or -1 (the worker's),
 * groups a sequence of gids or None (the worker's). 0, or -1 with an
 * exception set. */
static int prepared_settings(PreparedObject *p, PyObject *settings)
{
    p->uid = p->gid = p->umask = -1;
    p->ngroups = -1;
    p->settings_given = Py_NewRef(settings);
    if (settings == Py_None)
        return 0;
    PyObject *limits, *groups;
    if (!PyArg_ParseTuple(settings, "OllOl:settings", &limits, &p->uid, &p->gid, &groups,
                          &p->umask))
        return -1;
    PyObject *fast = PySequence_Fast(limits, "limits must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_LIMITS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d limits", MAX_LIMITS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iKK:limit",
                              &p->limit_resource[i], &soft, &hard)) {
            Py_DECREF(fast);
            return -1;
        }
        p->limit[i].rlim_cur = (rlim_t)soft;
        p->limit[i].rlim_max = (rlim_t)hard;
    }
    p->nlimits = (int)n;
    Py_DECREF(fast);
    if (groups != Py_None) {
        fast = PySequence_Fast(groups, "groups must be a sequence");
        if (fast == NULL)
            return -1;
        n = PySequence_Fast_GET_SIZE(fast);
        if (n > MAX_GROUPS) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "at most %d supplementary groups", MAX_GROUPS);
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            long g = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
            if (g < 0) {
                Py_DECREF(fast);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "a group id is negative");
                return -1;
            }
            p->groups[i] = (gid_t)g;
        }
        p->ngroups = (int)n;
        Py_DECREF(fast);
    }
    if (p->umask > 0777) {
        PyErr_SetString(PyExc_ValueError, "umask is over 0o777");
        return -1;
    }
    return 0;
}

/* Prepared(path, argv, env, actions, cwd=None, settings=None): env is the whole environment
 * but for the per-spawn variables; cwd the directory it starts in (None:
 * the worker's); actions say what each descriptor the program
 * starts with is, in order: ("open", fd, path, flags, mode), ("log", fd,
 * max_bytes, backups) -- the domain's log file, bounded by the rotator --,
 * ("inherit", fd, pid, src) -- process pid's descriptor src -- or ("dup",
 * fd, src). settings: its limits and identity (prepared_settings).
 * No other descriptor is passed on. */
static PyObject *prepared_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "argv", "env", "actions", "cwd", "settings", NULL};
    PyObject *path, *argv, *env, *actions, *cwd = Py_None, *settings = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OO:Prepared", kwlist,
                                     &path, &argv, &env, &actions, &cwd, &settings))
        return NULL;
    PreparedObject *p = (PreparedObject *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->path = Py_NewRef(path);
    p->cwd_given = Py_NewRef(cwd);
    if (prepared_settings(p, settings) < 0)
        goto fail;
    p->keep = PyList_New(0);
    if (p->keep == NULL || (p->file = keep_fs_bytes(p->keep, path)) == NULL)
        goto fail;
    if (cwd != Py_None && (p->cwd = keep_fs_bytes(p->keep, cwd)) == NULL)
        goto fail;
    p->argv = string_array(p->keep, argv, 0, NULL, "argv must be a sequence");
    if (p->argv == NULL)
        goto fail;
    p->envp = string_array(p->keep, env, IDENT_VARS, &p->nenv, "env must be a sequence");
    if (p->envp == NULL)
        goto fail;
    p->given = PySequence_Tuple(actions);
    if (p->given == NULL)
        goto fail;
    PyObject *fast = PySequence_Fast(actions, "actions must be a sequence");
    if (fast == NULL)
        goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    p->actions = PyMem_Calloc((size_t)n + 1, sizeof *p->actions);
    if (p->actions == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        goto fail;
    }
    int logged = 0;       /* the streams captured so far, a bit each */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        struct action *a = &p->actions[i];
        const char *kind;
        PyObject *file;
        unsigned long long max_bytes;
        unsigned int backups;
        int ok = PyTuple_Check(item) && PyTuple_GET_SIZE(item) > 0;
        kind = ok ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(item, 0)) : NULL;
        if (kind == NULL) {
            ok = 0;
        } else if (strcmp(kind, "open") == 0) {
            a->kind = ACT_OPEN;
            ok = PyArg_ParseTuple(item, "siOii:actions entry", &kind, &a->fd, &file,
                                  &a->flags, &a->mode) &&
                 (a->path = keep_fs_bytes(p->keep, file)) != NULL;
        } else if (strcmp(kind, "log") == 0) {
            a->kind = ACT_LOG;
            ok = PyArg_ParseTuple(item, "siKI:actions entry", &kind, &a->fd, &max_bytes,
                                  &backups);
            a->max_bytes = max_bytes;
            a->backups = backups;
            /* Captured: stdout or stderr, once each (a spawn keeps one
             * spare per stream: struct made). */
            if (ok && a->fd != 1 && a->fd != 2) {
                PyErr_Format(PyExc_ValueError, "only descriptors 1 and 2 can be captured, "
                             "not %d", a->fd);
                ok = 0;
            } else if (ok && (logged & (1 << a->fd))) {
                PyErr_Format(PyExc_ValueError, "descriptor %d is captured twice", a->fd);
                ok = 0;
            }
            if (ok)
                logged |= 1 << a->fd;
            p->nlogs += ok;
        } else if (strcmp(kind, "inherit") == 0) {
            a->kind = ACT_INHERIT;
            ok = PyArg_ParseTuple(item, "siii:actions entry", &kind, &a->fd, &a->pid, &a->src);
        } else if (strcmp(kind, "dup") == 0) {
            a->kind = ACT_DUP;
            ok = PyArg_ParseTuple(item, "sii:actions entry", &kind, &a->fd, &a->src);
        } else {
            PyErr_Format(PyExc_ValueError, "unknown descriptor action %R", item);
            ok = 0;
        }
        if (ok && (a->fd < 0 || (a->kind == ACT_DUP && a->src < 0))) {
            PyErr_SetString(PyExc_ValueError, "a descriptor number is negative");
            ok = 0;
        }
        if (!ok) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "actions entry %R is not a tuple "
                             "(\"open\"|\"log\"|\"inherit\"|\"dup\", fd, ...)", item);
            Py_DECREF(fast);
            goto fail;
        }
        if (ok) {
            a->per_spawn = a->kind == ACT_LOG || a->kind == ACT_INHERIT ||
                           (a->kind == ACT_OPEN && strcmp(a->path, "/dev/null") != 0);
            if (a->per_spawn && ++p->nper_spawn > MAX_PER_SPAWN) {
                PyErr_SetString(PyExc_ValueError, "too many descriptors");
                Py_DECREF(fast);
                goto fail;
            }
        }
        p->nactions = i + 1;
    }
    Py_DECREF(fast);
    return (PyObject *)p;
fail:
    Py_DECREF(p);
    return NULL;
}

static void prepared_dealloc(PreparedObject *p)
{
    PyMem_Free(p->actions);
    PyMem_Free(p->argv);
    PyMem_Free(p->envp);
    Py_XDECREF(p->path);
    Py_XDECREF(p->cwd_given);
    Py_XDECREF(p->given);
    Py_XDECREF(p->keep);
    Py_XDECREF(p->settings_given);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMemberDef prepared_members[] = {
    {"path", T_OBJECT_EX, offsetof(PreparedObject, path), READONLY, "the program's path"},
    {"cwd", T_OBJECT_EX, offsetof(PreparedObject, cwd_given), READONLY,
     "the directory it starts in, as given (None: the worker's)"},
    {"actions", T_OBJECT_EX, offsetof(PreparedObject, given), READONLY,
     "the descriptor actions, as given (a tuple)"},
    {"settings", T_OBJECT_EX, offsetof(PreparedObject, settings_given), READONLY,
     "(limits, uid, gid, groups, umask) as given, or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject PreparedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "spawnd_workers._spawnd.Prepared",
    .tp_doc = "Prepared(path, argv, env, actions): a program, ready to start.",
    .tp_basicsize = sizeof(PreparedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = prepared_new,
    .tp_dealloc = (destructor)prepared_dealloc,
    .tp_members = prepared_members,
};

/* ---- the domains' cgroups ------------------------------------------------
 *
 * Under cgroup containment (procmgr/containment.py) every dispatcher runs
 * in a cgroup of its own, g<N> in the core's cgroup directory: all it
 * forks stays in there, whatever it does (setsid, double forks, a cleared
 * environment), so its end and a kill reach all of it (cgroup.kill).
 * Making and removing a cgroup per spawn costs ~100 us (mkdir and rmdir:
 * docs/performance.md, "Containment: what a cgroup per domain costs"), a
 * sixth of a spawn, so the groups
 * are kept: an empty one is taken again by the next spawn. One that was
 * killed (cgroup.kill) is not: the kernel here (6.18) SIGKILLs every
 * process clone3 starts in a group killed before -- it compares the
 * group's count of kills with its parent's group's, not the group's own
 * -- so a killed group is left to drain and then removed, and a new one
 * made in its place. */

/* CPU time a group's processes have used, all of them, waited for or not
 * (cpu.stat: cgroup v2 keeps it without any controller). */
struct cpu_used {
    uint64_t user_us, system_us;
};

/* The groups of the first KEPT_GROUPS slots are kept open -- their
 * directory (a new process starts in it), cgroup.events and cpu.stat --
 * at numbers above PIDFD_BASE, which a new program's descriptor table is
 * not copied from: a read through a kept descriptor costs ~1 us, opening,
 * reading and closing ~6 us, and each spawn and end reads them. Not all:
 * three descriptors for each of thousands of live domains would take
 * the room of the pidfds (RLIMIT_NOFILE; the others are opened for each
 * use, group_file). */
#define KEPT_GROUPS 256

struct group {
    int g;              /* its name: g<g> */
    int dir, events, cpu;   /* kept open; -1: not (opened for each use) */
    struct cpu_used used;   /* its cpu.stat when it was last given back */
    int ending;             /* an end told once it is empty waits on it: not removed */
};

struct cgroups {
    int dirfd;          /* the core's cgroup directory; -1: no cgroup containment */
    int no_clone3;      /* clone3 cannot start a process in a cgroup here: migrate it */
    struct group *slots;    /* the groups that exist, by slot; a slot is found by ... */
    int nslots;         /* ... number below nslots, and is in use unless in `unused` */
    int *unused;        /* slots holding no group, to be filled again */
    int nunused;
    int *free;          /* slots of empty groups, ready */
    int nfree;
    int *draining;      /* slots of killed groups: removed once empty, never taken again */
    int ndraining;
    int made;           /* groups made so far: the next is g<made> */
    int cap;            /* each array holds up to cap >= nslots */
};

/* fd moved to a number from PIDFD_BASE up where one is free (and closed
 * below); fd itself otherwise, or if it is < 0. */
static int above_base(int fd)
{
    if (fd < 0 || fd >= PIDFD_BASE)
        return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, PIDFD_BASE);
    if (high < 0)
        return fd;
    close(fd);
    return high;
}

/* The group in slot s's file `name` ("": its directory): `kept` if it is
 * kept open, else opened (`flags`) -- group_done closes it then. -1 with
 * errno if it cannot be. */
static int group_file(const struct cgroups *cg, int s, int kept, const char *name, int flags)
{
    if (kept >= 0)
        return kept;
    char path[48];
    snprintf(path, sizeof path, "g%d%s%s", cg->slots[s].g, *name ? "/" : "", name);
    return openat(cg->dirfd, path, flags | O_CLOEXEC);
}

static void group_done(int fd, int kept)
{
    if (fd != kept && fd >= 0)
        close(fd);
}

/* All of the group in slot s's file `name` that fits in buf (a string):
 * its length, or -1 with errno (ENOENT or ENODEV: the group is gone). */
static ssize_t group_read(const struct cgroups *cg, int s, int kept, const char *name,
                          char *buf, size_t size)
{
    int fd = group_file(cg, s, kept, name, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : pread(fd, buf, size - 1, 0);
    int err = errno;
    group_done(fd, kept);
    buf[n < 0 ? 0 : n] = '\0';
    errno = err;
    return n;
}

/* What cgroup.events says of the group in slot s: GROUP_* bits. A live
 * process in it (a zombie does not count), or frozen (cgroup.freeze: a
 * domain may write its own, and a process started in it would never
 * run); gone (removed by whoever may write our groups); or unreadable
 * (errno says why: EMFILE at the descriptor limit), which is none of
 * those for sure. */
#define GROUP_POPULATED 1
#define GROUP_FROZEN 2
#define GROUP_GONE 4
#define GROUP_UNKNOWN 8

static int cgroup_state(const struct cgroups *cg, int s)
{
    char buf[128];
    ssize_t n = group_read(cg, s, cg->slots[s].events, "cgroup.events", buf, sizeof buf);
    if (n < 0 && (errno == ENODEV || errno == ENOENT))
        return GROUP_GONE;
    if (n <= 0)
        return GROUP_UNKNOWN;
    return (strstr(buf, "populated 0") ? 0 : GROUP_POPULATED) |
           (strstr(buf, "frozen 1") ? GROUP_FROZEN : 0);
}

/* The group in slot s's cpu.stat: 0, or -1 (nothing read: *used is zeros). */
static int cgroup_cpu(const struct cgroups *cg, int s, struct cpu_used *used)
{
    char buf[512];
    memset(used, 0, sizeof *used);
    if (group_read(cg, s, cg->slots[s].cpu, "cpu.stat", buf, sizeof buf) <= 0)
        return -1;
    const char *user = strstr(buf, "user_usec "), *sys = strstr(buf, "system_usec ");
    if (user == NULL || sys == NULL)
        return -1;
    used->user_us = strtoull(user + 10, NULL, 10);
    used->system_us = strtoull(sys + 12, NULL, 10);
    return 0;
}

/* Write `text` to the group in slot s's file `name`: 0, or -errno. */
static int cgroup_write(const struct cgroups *cg, int s, const char *name, const char *text)
{
    int fd = group_file(cg, s, -1, name, O_WRONLY);
    if (fd < 0)
        return -errno;
    int rc = write(fd, text, strlen(text)) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* The group in slot s closed, and removed if `remove` (it is empty or
 * gone); its slot unused. */
static void cgroup_drop(struct cgroups *cg, int s, int remove)
{
    struct group *gr = &cg->slots[s];
    for (int i = 0; i < 3; i++)
        group_done((int[]){gr->dir, gr->events, gr->cpu}[i], -1);
    gr->dir = gr->events = gr->cpu = -1;
    if (remove) {
        char name[24];
        snprintf(name, sizeof name, "g%d", gr->g);
        unlinkat(cg->dirfd, name, AT_REMOVEDIR);
    }
    cg->unused[cg->nunused++] = s;
}

/* Group g<made> made (or found) and opened in a slot of its own: the
 * slot, or -errno (nothing kept). */
static int cgroup_make(struct cgroups *cg)
{
    if (cg->nunused == 0 && cg->nslots == cg->cap) {    /* room in each array for every slot */
        int cap = cg->cap ? 2 * cg->cap : 64;
        struct group *slots = PyMem_Realloc(cg->slots, (size_t)cap * sizeof *slots);
        if (slots == NULL)
            return -ENOMEM;
        cg->slots = slots;
        int **arrays[] = {&cg->unused, &cg->free, &cg->draining};
        for (int i = 0; i < 3; i++) {
            int *grown = PyMem_Realloc(*arrays[i], (size_t)cap * sizeof **arrays[i]);
            if (grown == NULL)
                return -ENOMEM;
            *arrays[i] = grown;
        }
        cg->cap = cap;
    }
    char name[40];
    snprintf(name, sizeof name, "g%d", cg->made);
    int made = mkdirat(cg->dirfd, name, 0755) == 0;
    if (!made && errno != EEXIST)
        return -errno;
    int s = cg->nunused > 0 ? cg->unused[--cg->nunused] : cg->nslots++;
    struct group *gr = &cg->slots[s];
    *gr = (struct group){.g = cg->made++, .dir = -1, .events = -1, .cpu = -1};
    if (s < KEPT_GROUPS) {
        gr->dir = above_base(openat(cg->dirfd, name, O_PATH | O_DIRECTORY | O_CLOEXEC));
        gr->events = above_base(openat(cg->dirfd, strcat(name, "/cgroup.events"),
                                       O_RDONLY | O_CLOEXEC));
        snprintf(name, sizeof name, "g%d/cpu.stat", gr->g);
        gr->cpu = above_base(openat(cg->dirfd, name, O_RDONLY | O_CLOEXEC));
        if (gr->dir < 0 || gr->events < 0 || gr->cpu < 0) {
            int err = errno;
            cgroup_drop(cg, s, made);
            return -err;
        }
    }
    if (!made)      /* one left by an earlier worker of this core: counted from now */
        cgroup_cpu(cg, s, &gr->used);
    return s;
}

/* An empty group for a new dispatcher -- a free one, or a new one -- and
 * its slot, or -errno. The drained groups are removed on the way. */
static int cgroup_take(struct cgroups *cg)
{
    if (cg->nfree > 0)
        return cg->free[--cg->nfree];
    for (int i = 0; i < cg->ndraining; i++) {
        int s = cg->draining[i], state = cgroup_state(cg, s);
        if (!cg->slots[s].ending && !(state & (GROUP_POPULATED | GROUP_UNKNOWN))) {
            cgroup_drop(cg, s, !(state & GROUP_GONE));
            cg->draining[i--] = cg->draining[--cg->ndraining];
        }
    }
    int s = cgroup_make(cg);
    if (s < 0)
        return s;
    int state = cgroup_state(cg, s), err = errno;
    if (state != 0) {           /* left by someone else, frozen, or not to be read: not ours */
        cg->draining[cg->ndraining++] = s;
        return state & GROUP_UNKNOWN ? -err : -EBUSY;
    }
    return s;
}

/* What the group in slot s has used since it was last given back (*used)
 * and in all (*now): 0, or -1 if cpu.stat could not be read (zeros). */
static int cgroup_used(const struct cgroups *cg, int s, struct cpu_used *now,
                       struct cpu_used *used)
{
    struct cpu_used before = cg->slots[s].used;
    int rc = cgroup_cpu(cg, s, now);
    used->user_us = now->user_us > before.user_us ? now->user_us - before.user_us : 0;
    used->system_us = now->system_us > before.system_us ? now->system_us - before.system_us : 0;
    return rc;
}

/* The group in slot s: its dispatcher has ended. Whatever of it is left
 * is killed, and the group is free again if nothing was and it was never
 * `killed` before (nor its dispatcher SIGKILLed: whoever did it may have
 * used cgroup.kill), else left to drain and be removed. What it used
 * while the dispatcher had it goes to *used (may be NULL). Whether a
 * process was left and killed. */
static int cgroup_give_back(struct cgroups *cg, int s, int killed, struct cpu_used *used)
{
    struct cpu_used now, ignored;
    int counted = cgroup_used(cg, s, &now, used != NULL ? used : &ignored);
    int state = cgroup_state(cg, s);
    if (state & GROUP_GONE) {         /* removed: nothing to give back */
        cgroup_drop(cg, s, 0);
        return 0;
    }
    /* Taken again only as it was made: empty, not frozen, its count of
     * CPU read (a baseline of zeros would charge the next domain all
     * before it), and never killed. */
    if (!killed && state == 0 && counted == 0) {
        cg->slots[s].used = now;
        cg->free[cg->nfree++] = s;
        return 0;
    }
    if (state & GROUP_POPULATED)
        cgroup_write(cg, s, "cgroup.kill", "1");
    cg->draining[cg->ndraining++] = s;
    return (state & GROUP_POPULATED) != 0;
}

/* ---- HotPath ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct rb_handle *requests;   /* we consume */
    struct rb_handle *replies;    /* we produce */
    int epfd;                     /* the worker's epoll: doorbell, child watch, pidfds */
    int child_fd;                 /* the child watch (SIGCHLD): child_signals() */
    int python_fd;                /* in the epoll for Python: run_once gives way when it is ready */
    uint16_t core;
    char *stack;                  /* a new program's stack until its exec */
    PyObject *dispatchers;        /* dom -> Dispatcher */
    PyObject *by_pidfd;           /* pidfd -> Dispatcher */
    PyObject *by_pid;             /* pid -> Dispatcher */
    int strays_unlooked;          /* a SIGCHLD came since the last look for strays */
    int stray_suspect;            /* ... naming no dispatcher of ours */
    long long strays_looked_ns;
    pid_t reaped[128];            /* the dispatchers reaped last: their SIGCHLDs may */
    unsigned nreaped;             /* be read after their exits were reported */
    PyObject *prepared;           /* spawn payload -> Prepared (filled by worker.py) */
    PyObject *runtime_var;        /* bytes: PROCMGR_RUNTIME=... */
    char core_var[32];
    char dom_var[32];
    struct rotator *rotator;      /* captured streams' bounds; NULL: no logs directory */
    int logs_dirfd;               /* the core's logs directory */
    struct cgroups cgroups;       /* the domains' cgroups, where they are kept in one */
    struct ending *ending;        /* ends told once their groups are empty: tell_endings */
    int nending, ending_cap;
} HotPathObject;

static PyObject *dispatcher_new(uint32_t dom, uint64_t nonce, pid_t pid, int pidfd, int span,
                                const int *slots, int nslots, int cgroup, int cgroup_slot)
{
    PyObject *d = PyStructSequence_New(DispatcherType);
    if (d == NULL)
        return NULL;
    PyObject *logs = PyTuple_New(nslots);
    for (int i = 0; logs != NULL && i < nslots; i++) {
        PyObject *slot = PyLong_FromLong(slots[i]);
        if (slot == NULL)
            Py_CLEAR(logs);
        else
            PyTuple_SET_ITEM(logs, i, slot);
    }
    PyObject *v[8] = {
        PyLong_FromUnsignedLong(dom), PyLong_FromUnsignedLongLong(nonce),
        PyLong_FromLong(pid), PyLong_FromLong(pidfd), PyBool_FromLong(span), logs,
        PyLong_FromLong(cgroup), PyLong_FromLong(cgroup_slot),
    };
    int ok = 1;
    for (int i = 0; i < 8; i++) {
        if (v[i] == NULL) {
            ok = 0;
            v[i] = Py_NewRef(Py_None);
        }
        PyStructSequence_SET_ITEM(d, i, v[i]);
    }
    if (!ok)
        Py_CLEAR(d);
    return d;
}

/* The log rotator, for a worker given a logs directory (this core's);
 * its thread runs on `cpus` (an iterable of CPU numbers; None:
 * where the worker may). */
static int init_rotator(HotPathObject *c, PyObject *logs_dir, PyObject *cpus, unsigned keep)
{
    if (c->rotator != NULL || logs_dir == Py_None)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpus != Py_None) {
        PyObject *it = PyObject_GetIter(cpus), *item;
        if (it == NULL)
            return -1;
        while ((item = PyIter_Next(it)) != NULL) {
            long cpu = PyLong_AsLong(item);
            Py_DECREF(item);
            if (cpu < 0 || cpu >= CPU_SETSIZE) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "CPU %ld is out of range", cpu);
                Py_DECREF(it);
                return -1;
            }
            CPU_SET((int)cpu, &set);
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    }
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(logs_dir, &path))
        return -1;
    int dirfd = open(PyBytes_AS_STRING(path), O_PATH | O_DIRECTORY | O_CLOEXEC);
    c->rotator = dirfd < 0 ? NULL : PyMem_Calloc(1, sizeof *c->rotator);
    int rc = dirfd < 0 ? -errno : c->rotator == NULL ? -ENOMEM
             : rotator_init(c->rotator, dirfd, cpus == Py_None ? NULL : &set, keep);
    if (rc < 0) {
        PyMem_Free(c->rotator);
        c->rotator = NULL;
        if (dirfd >= 0)
            close(dirfd);
        errno = -rc;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, logs_dir);
        Py_DECREF(path);
        return -1;
    }
    c->logs_dirfd = dirfd;
    Py_DECREF(path);
    return 0;
}

/* The dispatcher is gone: its captured streams are the rotator's to check
 * once more and let go (_rotator.h). Once only: the slots are forgotten here. */
static void end_logs(HotPathObject *c, PyObject *d)
{
    PyObject *logs = PyStructSequence_GET_ITEM(d, 5);
    if (c->rotator == NULL || !PyTuple_Check(logs) || PyTuple_GET_SIZE(logs) == 0)
        return;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(logs); i++)
        rotator_end(c->rotator, (int)PyLong_AsLong(PyTuple_GET_ITEM(logs, i)));
    PyObject *none = PyTuple_New(0);
    if (none == NULL) {
        PyErr_Clear();
        return;        /* cannot happen: the empty tuple is a singleton */
    }
    PyStructSequence_SET_ITEM(d, 5, none);
    Py_DECREF(logs);
}

static int hotpath_init(HotPathObject *c, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"requests", "replies", "epoll_fd", "child_fd", "core",
                             "runtime", "logs_dir", "rotator_cpus", "logs_kept", "cgroup_dir",
                             NULL};
    PyObject *req, *rep, *runtime, *logs_dir = Py_None, *cpus = Py_None, *cgroup_dir = Py_None;
    int core;
    unsigned int kept = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiiiO|OOIO:HotPath", kwlist, &req, &rep,
                                     &c->epfd, &c->child_fd, &core, &runtime, &logs_dir,
                                     &cpus, &kept, &cgroup_dir))
        return -1;
    c->python_fd = -1;
    c->cgroups.dirfd = -1;
    if (cgroup_dir != Py_None) {
        PyObject *path = NULL;
        if (!PyUnicode_FSConverter(cgroup_dir, &path))
            return -1;
        c->cgroups.dirfd = open(PyBytes_AS_STRING(path), O_PATH | O_DIRECTORY | O_CLOEXEC);
        Py_DECREF(path);
        if (c->cgroups.dirfd < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, cgroup_dir);
            return -1;
        }
    }
    if (init_rotator(c, logs_dir, cpus, kept) < 0)
        return -1;
    if ((c->requests = rb_handle_arg(req)) == NULL || (c->replies = rb_handle_arg(rep)) == NULL)
        return -1;
    c->core = (uint16_t)core;
    snprintf(c->core_var, sizeof c->core_var, "PROCMGR_CORE=%d", core);
    PyObject *name = NULL;
    if (!PyUnicode_FSConverter(runtime, &name))
        return -1;
    Py_XSETREF(c->runtime_var, PyBytes_FromFormat("PROCMGR_RUNTIME=%s", PyBytes_AS_STRING(name)));
    Py_DECREF(name);
    Py_XSETREF(c->dispatchers, PyDict_New());
    Py_XSETREF(c->by_pidfd, PyDict_New());
    Py_XSETREF(c->by_pid, PyDict_New());
    Py_XSETREF(c->prepared, PyDict_New());
    if (!c->runtime_var || !c->dispatchers || !c->by_pidfd || !c->by_pid || !c->prepared)
        return -1;
    if (c->stack == NULL) {
        void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        c->stack = stack;
    }
    return 0;
}

static void hotpath_dealloc(HotPathObject *c)
{
    if (c->rotator != NULL) {
        rotator_close(c->rotator);
        PyMem_Free(c->rotator);
        close(c->logs_dirfd);
    }
    if (c->stack != NULL)
        munmap(c->stack, CHILD_STACK);
    if (c->cgroups.dirfd > 0)
        close(c->cgroups.dirfd);
    for (int s = 0; s < c->cgroups.nslots; s++)
        if (c->cgroups.slots[s].dir >= 0)
            cgroup_drop(&c->cgroups, s, 0);
    PyMem_Free(c->ending);
    PyMem_Free(c->cgroups.slots);
    PyMem_Free(c->cgroups.unused);
    PyMem_Free(c->cgroups.free);
    PyMem_Free(c->cgroups.draining);
    Py_XDECREF(c->dispatchers);
    Py_XDECREF(c->by_pidfd);
    Py_XDECREF(c->by_pid);
    Py_XDECREF(c->prepared);
    Py_XDECREF(c->runtime_var);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* How long a dispatcher's end waits for what it left in its cgroup to
 * die, once killed: as long as spawnd_workers/worker.py's
 * GROUP_GONE_TIMEOUT, after which its end is told anyway. */
#define LEFT_GONE_NS 1000000000LL

static long long mono_ns(void);

/* Until the group in slot s holds no live process, LEFT_GONE_NS at most,
 * for a kill (HotPath.reap): a killed process takes a moment to die, a
 * big tree some 100 ms. A group that cannot be read is not waited for. */
static void cgroup_wait_empty(const struct cgroups *cg, int s)
{
    long long until = mono_ns() + LEFT_GONE_NS;
    struct timespec pause = {0, 200000};
    while (cgroup_state(cg, s) & GROUP_POPULATED && mono_ns() < until) {
        Py_BEGIN_ALLOW_THREADS
        nanosleep(&pause, NULL);
        Py_END_ALLOW_THREADS
        if (pause.tv_nsec < 10000000)
            pause.tv_nsec *= 2;
    }
}

/* The dispatcher out of our table and our epoll set (`killed`: its
 * cgroup was, and is not taken again: cgroup_give_back), and what its
 * cgroup used while it ran (*used; zeros without one). What it left
 * there is killed: *left is then its group's slot (-1: nothing left),
 * for the caller to wait for before it tells the end. Unregister before
 * closing: a program just started holds copies of our descriptors until its
 * exec closes them, and while a copy lives, closing alone leaves the pidfd in
 * the epoll set -- to report the dead process under the number's next use.
 * Closed first: at the descriptor limit, the group's files need one. */
static int forget(HotPathObject *c, PyObject *d, int killed, struct cpu_used *used, int *left)
{
    end_logs(c, d);
    int pidfd = (int)PyLong_AsLong(PyStructSequence_GET_ITEM(d, 3));
    epoll_ctl(c->epfd, EPOLL_CTL_DEL, pidfd, NULL);
    close(pidfd);
    memset(used, 0, sizeof *used);
    *left = -1;
    int slot = (int)PyLong_AsLong(PyStructSequence_GET_ITEM(d, 7));
    if (slot >= 0 && c->cgroups.dirfd >= 0 && cgroup_give_back(&c->cgroups, slot, killed, used))
        *left = slot;
    Py_INCREF(d);
    int rc = PyDict_DelItem(c->by_pidfd, PyStructSequence_GET_ITEM(d, 3));
    if (PyDict_DelItem(c->by_pid, PyStructSequence_GET_ITEM(d, 2)) < 0)
        rc = -1;
    if (PyDict_DelItem(c->dispatchers, PyStructSequence_GET_ITEM(d, 0)) < 0)
        rc = -1;
    Py_DECREF(d);
    return rc;
}

/* An empty file of ours, made: 0, or -1 with errno (EEXIST: the name is taken). */
static int mkfile(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* A descriptor opened, checked to be what it should be: not waiting on a
 * FIFO (O_NONBLOCK: ENXIO for one with no reader), then made blocking again,
 * as a program expects its descriptors. -errno on failure. */
static int open_checked(int dirfd, const char *path, int flags, int mode, int regular_only)
{
    int fd = openat(dirfd, path, flags | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, (mode_t)mode);
    if (fd < 0)
        return -errno;
    struct stat st;
    /* F_SETFL sets the status flags whole: those asked for, O_NONBLOCK gone */
    if ((regular_only && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) ||
        fcntl(fd, F_SETFL, flags & (O_APPEND | O_DIRECT | O_NOATIME)) < 0) {
        close(fd);
        return -EINVAL;
    }
    return fd;
}

/* A copy of process pid's descriptor fd: the same open file (its offset
 * shared) where we may take it (pidfd_getfd needs ptrace rights over pid);
 * else the same file opened anew through /proc, for appending -- a
 * terminal or a pipe is then the same, a regular file has an offset of its
 * own. Never one of the runtime's own (this worker's, its manager's, a
 * sibling worker's: another core's rings). A descriptor, or -errno. */
static int inherited_fd(pid_t pid, int fd)
{
    if (pid == getpid() || pid == getppid())
        return -EPERM;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return -errno;
    /* Its parent, from /proc (after the last ')': the name may hold any);
     * then the pidfd must still name a live process, so that the pid read
     * about is the pidfd's and not its successor's. */
    char statp[64], buf[512];
    snprintf(statp, sizeof statp, "/proc/%d/stat", (int)pid);
    int sfd = open(statp, O_RDONLY | O_CLOEXEC);
    ssize_t n = sfd < 0 ? -1 : read(sfd, buf, sizeof buf - 1);
    if (sfd >= 0)
        close(sfd);
    const char *end = n > 0 ? (buf[n] = '\0', strrchr(buf, ')')) : NULL;
    int ppid = -1;
    int sibling = end != NULL && sscanf(end + 1, " %*c %d", &ppid) == 1 && ppid == getppid();
    if (sibling || end == NULL || syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0) {
        close(pidfd);
        return sibling ? -EPERM : -ESRCH;
    }
    int got = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);   /* close-on-exec */
    int err = errno;
    close(pidfd);
    if (got >= 0)
        return got;
    if (err == EBADF || err == ESRCH)
        return -err;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    return open_checked(AT_FDCWD, path, O_WRONLY | O_APPEND, 0, 0);
}

/* A captured stream's file, open for the program to append to: a spare one
 * (opened already, *spare; the rotator names it once the program runs:
 * _rotator.h, "Spare files", "Naming") where one is ready, else created
 * under its name (spare->fd -1). Whatever else has the name -- a FIFO or a
 * link a program put there for a domain to come -- is removed first: the
 * name is ours. A descriptor, or -errno. */
static int open_log(HotPathObject *c, uint32_t dom, int stream, struct log_spare *spare)
{
    int fd = rotator_take(c->rotator, spare);
    if (fd >= 0)
        return fd;
    spare->fd = -1;
    char name[ROTATOR_NAME];
    rotator_name(name, sizeof name, dom, stream);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (mkfile(c->logs_dirfd, name) == 0 || errno != EEXIST)
            break;
        unlinkat(c->logs_dirfd, name, 0);
    }
    return open_checked(c->logs_dirfd, name, O_WRONLY | O_APPEND | O_NOFOLLOW, 0, 1);
}

/* The per-spawn descriptors made for a spawn, in the order of its
 * actions; for a captured stream given a spare file, that spare. */
struct made {
    int n;
    uint32_t dom;
    int fds[MAX_PER_SPAWN];
    int log[MAX_PER_SPAWN];        /* a captured stream's: 1 or 2; else 0 */
    struct log_spare spares[3];    /* by stream (1, 2): its spare; .fd -1: none */
};

/* Let go of what was made: closed, unless the program did not start: a
 * spare then goes back to the stack, and a log file made under the
 * domain's name goes (no file is left for a domain that never was). */
static void let_go(HotPathObject *c, struct made *m, int started)
{
    for (int i = 0; i < m->n; i++) {
        if (!started && m->log[i] && m->spares[m->log[i]].fd >= 0) {
            rotator_put_back(c->rotator, &m->spares[m->log[i]]);
            continue;
        }
        close(m->fds[i]);
        if (!started && m->log[i]) {
            char name[ROTATOR_NAME];
            rotator_name(name, sizeof name, m->dom, m->log[i]);
            unlinkat(c->logs_dirfd, name, 0);
        }
    }
}

/* The per-spawn descriptors of p, in order, into *m; 0, or an errno with
 * *failed_fd the program's descriptor that could not be made and nothing
 * left open. */
static int make_per_spawn(HotPathObject *c, PreparedObject *p, uint32_t dom, struct made *m,
                          int *failed_fd)
{
    m->n = 0;
    m->dom = dom;
    m->spares[1].fd = m->spares[2].fd = -1;
    for (Py_ssize_t i = 0; i < p->nactions; i++) {
        struct action *a = &p->actions[i];
        if (!a->per_spawn)
            continue;
        m->log[m->n] = a->kind == ACT_LOG ? a->fd : 0;
        int fd = a->kind == ACT_LOG ? open_log(c, dom, a->fd, &m->spares[a->fd])
                 : a->kind == ACT_INHERIT ? inherited_fd(a->pid, a->src)
                 : open_checked(AT_FDCWD, a->path, a->flags, a->mode, 0);
        if (fd < 0) {
            *failed_fd = a->fd;
            let_go(c, m, 0);
            return -fd;
        }
        m->fds[m->n++] = fd;
    }
    return 0;
}

/* ---- starting a program ----------------------------------------------------
 *
 * Not posix_spawn: its new process copies the worker's whole descriptor
 * table, and its exec then closes every close-on-exec descriptor in the
 * copy -- a worker holding a pidfd per live domain paid for all of them at
 * every spawn (posix_spawn + wait of /bin/true: ~0.9 ms with 4,000 pidfds
 * open, ~0.6 ms with none; docs/performance.md, "Scale"). Here the new
 * process starts out sharing the worker's table (CLONE_FILES) and first
 * thing takes a private copy of only its low numbers (close_range with
 * CLOSE_RANGE_UNSHARE copies the descriptors below the range it closes):
 * the worker's own few and the ones made for this spawn. The pidfds are
 * kept above PIDFD_BASE, out of that copy.
 *
 * Otherwise it does what posix_spawn did with the worker's attributes: a
 * process group of its own (a kill ends all it forked), every signal at its
 * default and none blocked, whatever the worker had; then the descriptor
 * actions, then execve. As posix_spawn, it shares the worker's memory until
 * the exec (CLONE_VM | CLONE_VFORK: the worker waits meanwhile), on a stack
 * of its own, with every signal blocked so that no handler of the worker's
 * runs there; a failure is its errno, left in the job for the worker. */

struct child_job {
    const char *file;
    const char *cwd;           /* NULL: stay in the worker's */
    char **argv, **envp;
    const struct child_op *ops;
    int nops;
    int keep_below;            /* the descriptors it needs are below this */
    int cgroup_procs;          /* its cgroup's cgroup.procs, for it to enter; -1: none */
    const PreparedObject *p;   /* its limits and identity */
    int ran;                   /* written by the new process first: it ran */
    int err;                   /* written by the new process if it fails */
    int failed;                /* ... and where: a FAILED_* (0: the exec or a descriptor) */
};

/* The process's limits and identity, as the spawn says: in this order so
 * that a limit a user may not raise is set while we still may, and the
 * groups before the user, after which they could not be changed. Raw
 * system calls for the ids: glibc's setuid would change every thread of
 * what it takes to be its process -- here, the worker's (CLONE_VM). */
static int take_settings(struct child_job *j)
{
    const PreparedObject *p = j->p;
    for (int i = 0; i < p->nlimits; i++)
        if (setrlimit(p->limit_resource[i], &p->limit[i]) < 0) {
            j->failed = FAILED_LIMIT - i;
            return -1;
        }
    j->failed = FAILED_IDENTITY;
    if (p->umask >= 0)
        umask((mode_t)p->umask);
    if (p->ngroups >= 0 && syscall(SYS_setgroups, (size_t)p->ngroups, p->groups) < 0)
        return -1;
    if (p->gid >= 0 && syscall(SYS_setresgid, (gid_t)p->gid, (gid_t)p->gid, (gid_t)p->gid) < 0)
        return -1;
    if (p->uid >= 0 && syscall(SYS_setresuid, (uid_t)p->uid, (uid_t)p->uid, (uid_t)p->uid) < 0)
        return -1;
    j->failed = 0;
    return 0;
}

static int child_main(void *arg)
{
    struct child_job *j = arg;
    j->ran = 1;
    /* Into the domain's cgroup first, where clone3 could not start it
     * there: before it can do anything else, so all it will ever fork
     * starts in there (pid 0: the writer itself). */
    if (j->cgroup_procs >= 0 && write(j->cgroup_procs, "0", 1) < 0) {
        j->failed = FAILED_CGROUP;
        goto fail;
    }
    /* A table of its own before anything is touched: the worker's is shared. */
    if (syscall(SYS_close_range, (unsigned)j->keep_below, ~0U, CLOSE_RANGE_UNSHARE) < 0 &&
        unshare(CLONE_FILES) < 0)
        goto fail;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);    /* fails harmlessly for libc's own */
    if (setpgid(0, 0) < 0)
        goto fail;
    if (j->cwd != NULL && chdir(j->cwd) < 0) {
        j->failed = FAILED_CWD;
        goto fail;
    }
    for (int i = 0; i < j->nops; i++) {
        const struct child_op *o = &j->ops[i];
        if (o->kind == OP_OPEN) {
            int fd = open(o->path, o->flags, (mode_t)o->mode);
            if (fd < 0)
                goto fail;
            if (fd != o->fd) {
                if (dup2(fd, o->fd) < 0)
                    goto fail;
                close(fd);
            }
        } else if (o->src == o->fd) {
            int flags = fcntl(o->fd, F_GETFD);
            if (flags < 0 || fcntl(o->fd, F_SETFD, flags & ~FD_CLOEXEC) < 0)
                goto fail;
        } else if (dup2(o->src, o->fd) < 0) {
            goto fail;
        }
    }
    /* The descriptors are made (the files opened as the worker's user),
     * the limits and identity taken on last before the exec. */
    if (take_settings(j) < 0)
        goto fail;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(j->file, j->argv, j->envp);
fail:
    j->err = errno ? errno : EIO;
    _exit(127);
}

/* Starting a process in its cgroup. Moving one there (writing it into
 * cgroup.procs) takes the kernel's cgroup_threadgroup_rwsem for writing,
 * which waits for an RCU grace period when no migration came just before:
 * measured here, spawns one at a time with a pause between blocks of 50
 * cost ~400 us more each (docs/performance.md, "Containment: what a cgroup
 * per domain costs"). clone3 with
 * CLONE_INTO_CGROUP starts the process in the group instead, as a fork
 * starts one in its parent's: no migration at all. Like clone() in glibc
 * it needs a few instructions to run the new process on its own stack --
 * here for x86-64; elsewhere, and on a kernel without it (before 5.7), the
 * new process writes itself into cgroup.procs. */
struct clone3_args {              /* the kernel's struct clone_args, version 2 */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
             set_tid, set_tid_size, cgroup;
};
#define CLONE3_INTO_CGROUP 0x200000000ULL
#if defined(__x86_64__) && defined(SYS_clone3)
#define HAVE_CLONE3_RUN 1
/* clone3(cl), the new process running fn(arg) and exiting with what it
 * returns (it never does: child_main execs or _exits). The pid, or -errno. */
static long clone3_run(struct clone3_args *cl, int (*fn)(void *), void *arg)
{
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"          /* the new process: its stack is cl->stack's */
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov %[exit], %%eax\n\t"
        "syscall\n\t"
        "hlt\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "a"((long)SYS_clone3), "D"(cl), "S"(sizeof *cl), "r"(r12), "r"(r13),
          [exit] "i"(SYS_exit)
        : "rcx", "r11", "memory");
    return ret;
}
#endif

/* Start p's program with `ops` applied, in group `cgroup` (-1: none): 0
 * with *pid, or an errno with nothing left running (the failed process
 * reaped; *failed_fd a FAILED_* if it failed before its descriptors or
 * exec). */
static int spawn_program(HotPathObject *c, PreparedObject *p, const struct child_op *ops,
                         int nops, int cgroup, pid_t *pid, int *failed_fd)
{
    struct child_job job = {.file = p->file, .cwd = p->cwd, .argv = p->argv, .envp = p->envp,
                            .ops = ops, .nops = nops, .keep_below = 3,
                            .cgroup_procs = -1, .p = p, .err = 0, .failed = 0};
    for (int i = 0; i < nops; i++)
        if (ops[i].kind == OP_DUP2 && ops[i].src >= job.keep_below)
            job.keep_below = ops[i].src + 1;
    int kept = cgroup >= 0 ? c->cgroups.slots[cgroup].dir : -1;
    int group = cgroup < 0 ? -1 : group_file(&c->cgroups, cgroup, kept, "",
                                             O_PATH | O_DIRECTORY);
    if (cgroup >= 0 && group < 0) {
        *failed_fd = FAILED_CGROUP;
        return errno;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t child = -1;
    int err = 0, started = 0;
#ifdef HAVE_CLONE3_RUN
    if (group >= 0 && !c->cgroups.no_clone3) {
        struct clone3_args cl = {
            .flags = CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE3_INTO_CGROUP,
            .exit_signal = SIGCHLD, .stack = (uint64_t)(uintptr_t)c->stack,
            .stack_size = CHILD_STACK, .cgroup = (uint64_t)group};
        long r = clone3_run(&cl, child_main, &job);
        if (r == -ENOSYS || r == -E2BIG || r == -EINVAL) {
            c->cgroups.no_clone3 = 1;       /* an older kernel: the other way from now on */
        } else {
            started = 1;
            child = r < 0 ? -1 : (pid_t)r;
            err = r < 0 ? (int)-r : 0;
        }
    }
#endif
    if (!started) {
        if (group >= 0) {
            job.cgroup_procs = openat(group, "cgroup.procs", O_WRONLY | O_CLOEXEC);
            if (job.cgroup_procs < 0) {
                err = errno;
                pthread_sigmask(SIG_SETMASK, &old, NULL);
                group_done(group, kept);
                *failed_fd = FAILED_CGROUP;
                return err;
            }
        }
        child = clone(child_main, c->stack + CHILD_STACK,
                      CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, &job);
        err = errno;
        if (job.cgroup_procs >= 0)
            close(job.cgroup_procs);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    group_done(group, kept);
    if (child > 0 && !job.ran) {
        /* Killed before its first instruction: the kernel here SIGKILLs
         * what clone3 starts in a group that was ever killed, and a
         * domain may have killed its own (cgroup.kill) and still ended
         * with 0, so that the group came back to the pool. */
        waitpid(child, NULL, 0);
        return GROUP_KILLED;
    }
    if (child < 0) {
        if (group >= 0 && started && err != EAGAIN && err != ENOMEM)
            *failed_fd = FAILED_CGROUP;      /* clone3 refused the group */
        return err;
    }
    if (job.err != 0) {
        waitpid(child, NULL, 0);
        if (job.failed)
            *failed_fd = job.failed;
        return job.err;
    }
    *pid = child;
    return 0;
}

/* p's program with its descriptor actions; each captured stream is given
 * to the rotator (slots[i], *nslots of them). 0, or an errno with nothing
 * left running or open; *failed_fd says which of the program's descriptors
 * could not be made (-1: the program itself did not start). */
static int spawn_with_streams(HotPathObject *c, PreparedObject *p, uint32_t dom,
                              int cgroup, pid_t *pid, int *slots, int *nslots,
                              int *failed_fd)
{
    *nslots = 0;
    *failed_fd = -1;
    struct child_op ops[p->nactions > 0 ? p->nactions : 1];
    if (p->nper_spawn == 0)
        return spawn_program(c, p, ops, child_ops(p, NULL, ops), cgroup, pid, failed_fd);
    if (p->nlogs > 0 && c->rotator == NULL)
        return ENOTSUP;          /* worker.py refuses "log" first, with words */
    struct made m;        /* ~8 KiB of stack: the worker's thread has megabytes */
    int rc = make_per_spawn(c, p, dom, &m, failed_fd);
    if (rc != 0)
        return rc;
    rc = spawn_program(c, p, ops, child_ops(p, m.fds, ops), cgroup, pid, failed_fd);
    let_go(c, &m, rc == 0);                  /* the program's now, not ours */
    if (rc != 0)
        return rc;
    for (Py_ssize_t i = 0; i < p->nactions; i++) {
        struct action *a = &p->actions[i];
        if (a->kind != ACT_LOG)
            continue;
        struct log_spare *spare = &m.spares[a->fd];
        int slot = rc != 0 ? -rc
                   : rotator_add(c->rotator, dom, a->fd, a->max_bytes, a->backups,
                                 spare->fd >= 0 ? spare : NULL);
        if (slot < 0 && spare->fd >= 0)
            unlinkat(spare->dirfd, spare->name, 0);     /* nobody would name it */
        if (slot >= 0) {
            slots[(*nslots)++] = slot;
        } else if (rc == 0) {
            rc = -slot;
            *failed_fd = a->fd;
        }
    }
    if (rc != 0) {               /* an unbounded stream is not started */
        for (int i = 0; i < *nslots; i++)
            rotator_abandon(c->rotator, slots[i]);   /* no file for a domain that never was */
        *nslots = 0;
        killpg(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    return rc;
}

/* Start the program; 0 with *out = its pid, or an errno (nothing left
 * running, nothing recorded). */
static int start(HotPathObject *c, PreparedObject *p, uint32_t dom, uint64_t nonce, int span,
                 pid_t *out, int *failed_fd)
{
    snprintf(c->dom_var, sizeof c->dom_var, "PROCMGR_DOMAIN_ID=%u", dom);
    char **ident = p->envp + p->nenv;
    ident[0] = c->dom_var;
    ident[1] = c->core_var;
    ident[2] = span ? "PROCMGR_DISPATCHER=1" : "PROCMGR_DISPATCHER=0";
    ident[3] = PyBytes_AS_STRING(c->runtime_var);
    pid_t pid;
    int slots[MAX_PER_SPAWN], nslots, cgroup = -1;     /* its group's slot */
    if (c->cgroups.dirfd >= 0 && (cgroup = cgroup_take(&c->cgroups)) < 0) {
        *failed_fd = FAILED_CGROUP;
        return -cgroup;
    }
    int rc = spawn_with_streams(c, p, dom, cgroup, &pid, slots, &nslots, failed_fd);
    if (rc == GROUP_KILLED) {      /* the group retired; once more, in another */
        cgroup_give_back(&c->cgroups, cgroup, 1, NULL);
        if ((cgroup = cgroup_take(&c->cgroups)) < 0) {
            *failed_fd = FAILED_CGROUP;
            return -cgroup;
        }
        rc = spawn_with_streams(c, p, dom, cgroup, &pid, slots, &nslots, failed_fd);
        if (rc == GROUP_KILLED) {
            *failed_fd = FAILED_CGROUP;
            rc = EAGAIN;
        }
    }
    if (rc != 0) {
        if (cgroup >= 0)
            cgroup_give_back(&c->cgroups, cgroup, 0, NULL);
        return rc;
    }
    /* Above the numbers a new program's table is copied from; where none
     * is free up there, it stays (costing the copy a little). */
    int pidfd = above_base((int)syscall(SYS_pidfd_open, pid, 0));
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = pidfd};
    if (pidfd < 0 || epoll_ctl(c->epfd, EPOLL_CTL_ADD, pidfd, &ev) < 0) {
        rc = errno;
        goto undo;
    }
    PyObject *d = dispatcher_new(dom, nonce, pid, pidfd, span, slots, nslots,
                                 cgroup < 0 ? -1 : c->cgroups.slots[cgroup].g, cgroup);
    if (d == NULL || PyDict_SetItem(c->dispatchers, PyStructSequence_GET_ITEM(d, 0), d) < 0 ||
        PyDict_SetItem(c->by_pidfd, PyStructSequence_GET_ITEM(d, 3), d) < 0 ||
        PyDict_SetItem(c->by_pid, PyStructSequence_GET_ITEM(d, 2), d) < 0) {
        PyErr_Clear();
        if (d != NULL) {
            PyDict_DelItem(c->dispatchers, PyStructSequence_GET_ITEM(d, 0));
            PyErr_Clear();
            PyDict_DelItem(c->by_pidfd, PyStructSequence_GET_ITEM(d, 3));
        }
        PyErr_Clear();
        Py_XDECREF(d);
        epoll_ctl(c->epfd, EPOLL_CTL_DEL, pidfd, NULL);
        rc = ENOMEM;
        goto undo;
    }
    Py_DECREF(d);
    *out = pid;
    return 0;
undo:
    if (pidfd >= 0)
        close(pidfd);
    killpg(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < nslots; i++)
        rotator_end(c->rotator, slots[i]);
    if (cgroup >= 0)
        cgroup_give_back(&c->cgroups, cgroup, 0, NULL);
    return rc;
}

/* start(prepared, dom, nonce, span) -> pid; OSError if it cannot start,
 * whose filename is the program's descriptor that could not be made (an
 * int), or None when the program itself did not start. */
static PyObject *hotpath_start(HotPathObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyObject_TypeCheck(args[0], &PreparedType)) {
        PyErr_SetString(PyExc_TypeError, "start(prepared: Prepared, dom, nonce, span)");
        return NULL;
    }
    unsigned long dom = PyLong_AsUnsignedLong(args[1]);
    unsigned long long nonce = PyLong_AsUnsignedLongLong(args[2]);
    int span = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred())
        return NULL;
    pid_t pid;
    int failed_fd;
    int rc = start(c, (PreparedObject *)args[0], (uint32_t)dom, nonce, span, &pid, &failed_fd);
    if (rc != 0) {
        /* The descriptor that could not be made, the working directory
         * that could not be entered (filename2 "cwd"), or (None) the program. */
        PreparedObject *p = (PreparedObject *)args[0];
        PyObject *which = failed_fd >= 0 ? PyLong_FromLong(failed_fd)
                          : failed_fd <= FAILED_LIMIT ? PyLong_FromLong(FAILED_LIMIT - failed_fd)
                          : Py_NewRef(failed_fd == FAILED_CWD ? p->cwd_given : Py_None);
        PyObject *what = failed_fd == FAILED_CWD ? PyUnicode_FromString("cwd")
                         : failed_fd == FAILED_CGROUP ? PyUnicode_FromString("cgroup")
                         : failed_fd == FAILED_IDENTITY ? PyUnicode_FromString("identity")
                         : failed_fd <= FAILED_LIMIT ? PyUnicode_FromString("limit") : NULL;
        if (which != NULL) {
            errno = rc;
            PyErr_SetFromErrnoWithFilenameObjects(PyExc_OSError, which, what);
            Py_DECREF(which);
        }
        Py_XDECREF(what);
        return NULL;
    }
    return PyLong_FromLong(pid);
}

/* The Dispatcher of dom (borrowed), or NULL with KeyError. */
static PyObject *dispatcher_named(HotPathObject *c, PyObject *dom)
{
    PyObject *d = PyDict_GetItemWithError(c->dispatchers, dom);
    if (d == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, dom);
    return d;
}

/* hold(dom): its end is the caller's to report (a kill in its grace:
 * spawnd_workers/worker.py): its pidfd out of the loop's epoll, the rest
 * as it was, until reap. */
static PyObject *hotpath_hold(HotPathObject *c, PyObject *dom)
{
    PyObject *d = dispatcher_named(c, dom);
    if (d == NULL)
        return NULL;
    int pidfd = (int)PyLong_AsLong(PyStructSequence_GET_ITEM(d, 3));
    epoll_ctl(c->epfd, EPOLL_CTL_DEL, pidfd, NULL);
    Py_RETURN_NONE;
}

/* Room for a reply (only we produce: it stays). A broken ring (the
 * manager's index impossible, written by someone else) counts as full:
 * Python then waits for room, and rb_wait says corrupt -- the worker
 * stops, and the manager handles it as a worker that died. */
static int reply_room(HotPathObject *c)
{
    return rb_room(c->replies, 1) > 0;
}

/* Serve requests from the head of the ring while they are spawns of a
 * Prepared payload: 0 once it is empty or SERVE_BATCH were started (the
 * caller looks at its clock between batches), RUN_DECLINED / RUN_FULL, -1
 * with an exception set. *served counts the spawns it started. */
static int serve(HotPathObject *c, int *served)
{
    for (int started = 0; started < SERVE_BATCH; started++) {
        const uint8_t *slot;
        int len = rb_peek(c->requests, &slot);
        if (len == RB_EEMPTY)
            return 0;
        if (len != SLOT)          /* an error, or not a header: Python says which */
            return RUN_DECLINED;
        struct wire_header w;
        if (!wire_read_one(slot, len, &w) || (w.op != OP_SD_SPAWN && w.op != OP_SD_SPAN))
            return RUN_DECLINED;
        PyObject *dom = PyLong_FromUnsignedLong(w.dom);
        if (dom == NULL)
            return -1;
        int here = PyDict_Contains(c->dispatchers, dom);
        Py_DECREF(dom);
        if (here != 0)
            return here < 0 ? -1 : RUN_DECLINED;    /* Python refuses it */
        PyObject *payload = PyBytes_FromStringAndSize((const char *)w.inline_, w.plen);
        if (payload == NULL)
            return -1;
        PyObject *p = PyDict_GetItemWithError(c->prepared, payload);
        Py_XINCREF(p);
        Py_DECREF(payload);
        if (p == NULL)
            return PyErr_Occurred() ? -1 : RUN_DECLINED;
        if (!reply_room(c)) {
            Py_DECREF(p);
            return RUN_FULL;
        }
        pid_t pid;
        int failed_fd;
        int rc = start(c, (PreparedObject *)p, w.dom, w.nonce, w.op == OP_SD_SPAN, &pid,
                       &failed_fd);
        Py_DECREF(p);
        if (rc != 0)
            return RUN_DECLINED;   /* left in the ring: Python tries and words the error */
        rb_consume(c->requests, 1);
        struct wire_header r = wire_reply_to(&w);
        r.status = pid;
        rb_push(c->replies, &r, SLOT);     /* (room checked above) */
        (*served)++;
    }
    return 0;                 /* a batch: the rest after a look at the clock */
}

/* A dispatcher's usage as its end carries it (protocol.h, USAGE_BYTES):
 * its rusage, which counts the children it waited for, or its cgroup's
 * CPU time where that is more (`group`: it counts every process the
 * domain started, waited for or not). Its peak resident set only where
 * it is above the worker's own: a new process shares the worker's memory
 * until its exec (spawn_program), and Linux counts that memory's peak
 * into the program's -- a floor of the worker's size under every program.
 * 0: below it, unknown. */
static void usage_bytes(const struct rusage *ru, const struct cpu_used *group, uint8_t *out)
{
    uint64_t user = (uint64_t)ru->ru_utime.tv_sec * 1000000 + (uint64_t)ru->ru_utime.tv_usec;
    uint64_t sys = (uint64_t)ru->ru_stime.tv_sec * 1000000 + (uint64_t)ru->ru_stime.tv_usec;
    if (group->user_us + group->system_us > user + sys) {
        user = group->user_us;
        sys = group->system_us;
    }
    struct rusage self;
    long floor = getrusage(RUSAGE_SELF, &self) == 0 ? self.ru_maxrss : 0;
    uint32_t rss = ru->ru_maxrss <= floor ? 0 : (uint32_t)ru->ru_maxrss;   /* KiB on Linux */
    memcpy(out, &user, 8);
    memcpy(out + 8, &sys, 8);
    memcpy(out + 16, &rss, 4);
}

/* Reap dispatcher d (waitid's `options`: WNOHANG, or 0 to wait for it),
 * end what is left of it and forget it (forget): *si says how it ended,
 * *ru and *group what it used; *left the slot of its group if something
 * was left there and killed (-1: nothing). `killed`: a kill ended it (its
 * group is not taken again). 1 reaped, 0 not exited yet (WNOHANG), -1
 * with an exception set. */
static int reap(HotPathObject *c, PyObject *d, int options, int killed, siginfo_t *si,
                struct rusage *ru, struct cpu_used *group, int *left)
{
    pid_t pid = (pid_t)PyLong_AsLong(PyStructSequence_GET_ITEM(d, 2));
    int rc, err;
    for (;;) {
        memset(si, 0, sizeof *si);
        memset(ru, 0, sizeof *ru);
        /* The system call, not libc's waitid: it gives the rusage too. */
        Py_BEGIN_ALLOW_THREADS
        rc = (int)syscall(SYS_waitid, P_PID, (id_t)pid, si, WEXITED | options, ru);
        err = errno;
        Py_END_ALLOW_THREADS
        if (rc == 0 || err != EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
    if (rc < 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);   /* nobody else reaps our dispatchers */
        return -1;
    }
    if (si->si_pid == 0)
        return 0;          /* not exited after all */
    c->reaped[c->nreaped++ % (sizeof c->reaped / sizeof *c->reaped)] = pid;
    /* No orphan left behind: what is left of it is killed before its end
     * is told (its cgroup's, by forget, under cgroup containment). */
    killpg(pid, SIGKILL);
    int r = forget(c, d, killed || (si->si_code == CLD_KILLED && si->si_status == SIGKILL),
                   group, left);
    return r < 0 ? -1 : 1;
}

/* A dispatcher's end, told once what it left in its cgroup is gone (or
 * LEFT_GONE_NS has passed): run_once looks at these between its rounds
 * and sleeps at most ENDING_LOOK_MS meanwhile, so that a domain leaving
 * processes that take their time to die (stopped, frozen, in the
 * kernel) holds up its own end only, never the core. */
#define ENDING_LOOK_MS 2

struct ending {
    struct wire_header r;       /* its SD_EXIT, but for the usage */
    struct rusage ru;
    int slot;                   /* its group's: not removed meanwhile (group.ending) */
    long long until;
};

/* Tell the ends whose groups are empty now, or whose wait is over. 0, or
 * RUN_FULL with some left for want of room. */
static int tell_endings(HotPathObject *c)
{
    long long now = mono_ns();
    for (int i = 0; i < c->nending; i++) {
        struct ending *e = &c->ending[i];
        if (now < e->until && cgroup_state(&c->cgroups, e->slot) & GROUP_POPULATED)
            continue;
        if (!reply_room(c))
            return RUN_FULL;
        struct cpu_used total, used;
        cgroup_used(&c->cgroups, e->slot, &total, &used);   /* what was left: its, too */
        usage_bytes(&e->ru, &used, e->r.inline_);
        c->cgroups.slots[e->slot].ending = 0;
        rb_push(c->replies, &e->r, SLOT);
        rb_wake_consumer(c->replies);
        c->ending[i--] = c->ending[--c->nending];
    }
    return 0;
}

/* Reap dispatcher d (reap's `options` and `killed`) into the next ending
 * slot: its SD_EXIT but for the usage, its rusage, and its group's slot if
 * it left processes there (else -1, *used what the group used). The
 * caller tells it now, or keeps it (c->nending++) for tell_endings. 1
 * reaped, 0 not exited yet, -1 with an exception set. */
static int reap_ending(HotPathObject *c, PyObject *d, int options, int killed,
                       struct cpu_used *used, siginfo_t *si)
{
    if (c->nending == c->ending_cap) {         /* room for this one to wait, if it must */
        int cap = c->ending_cap ? 2 * c->ending_cap : 16;
        struct ending *grown = PyMem_Realloc(c->ending, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->ending = grown;
        c->ending_cap = cap;
    }
    struct ending *e = &c->ending[c->nending];
    memset(&e->r, 0, sizeof e->r);
    /* Read before reap forgets it: d may be gone then. */
    e->r.dom = (uint32_t)PyLong_AsUnsignedLong(PyStructSequence_GET_ITEM(d, 0));
    e->r.nonce = PyLong_AsUnsignedLongLong(PyStructSequence_GET_ITEM(d, 1));
    Py_INCREF(d);
    int rc = reap(c, d, options, killed, si, &e->ru, used, &e->slot);
    Py_DECREF(d);
    if (rc <= 0)
        return rc;
    e->r.op = OP_SD_EXIT;
    e->r.flags = FLAG_RELEASED | (si->si_code == CLD_EXITED ? 0 : FLAG_SIGNALED);
    e->r.core = c->core;
    e->r.status = si->si_status;   /* the exit code, or the signal's number */
    e->r.plen = USAGE_BYTES;
    if (e->slot >= 0)
        e->until = mono_ns() + LEFT_GONE_NS;
    return 1;
}

/* The ending just filled in (reap_ending), kept for tell_endings. */
static void keep_ending(HotPathObject *c)
{
    c->cgroups.slots[c->ending[c->nending].slot].ending = 1;
    c->nending++;
}

/* A pidfd woke us: reap the dispatcher, tell the manager -- and wake it at
 * once, whoever waits for this exit waits on us -- or, if it left
 * processes in its cgroup, once they are gone (tell_endings). 0,
 * RUN_FULL (try again later: the pidfd stays readable), or -1 with an
 * exception set. */
static int report_exit(HotPathObject *c, PyObject *d)
{
    if (!reply_room(c))
        return RUN_FULL;
    struct cpu_used used;
    siginfo_t si;
    int rc = reap_ending(c, d, WNOHANG, 0, &used, &si);
    if (rc <= 0)
        return rc;
    struct ending *e = &c->ending[c->nending];
    if (e->slot >= 0) {
        keep_ending(c);
        return 0;
    }
    usage_bytes(&e->ru, &used, e->r.inline_);
    rb_push(c->replies, &e->r, SLOT);
    rb_wake_consumer(c->replies);
    return 0;
}

/* reap(dom, defer) -> (wait status, usage) or None: a dispatcher a kill
 * ended (the caller's to report), reaped -- waited for if it has not
 * ended yet -- and forgotten as run_once forgets one, what it left killed.
 * If it left processes in its cgroup: with `defer`, None -- its end (an
 * SD_EXIT) is told by run_once once they are gone, and nothing waits here;
 * else waited for here (bounded). Then its wait status and its usage as
 * its end carries it. */
static PyObject *hotpath_reap(HotPathObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "reap(dom, defer)");
        return NULL;
    }
    PyObject *d = dispatcher_named(c, args[0]);
    int defer = PyObject_IsTrue(args[1]);
    if (d == NULL || defer < 0)
        return NULL;
    siginfo_t si;
    struct cpu_used used, total;
    uint8_t usage[USAGE_BYTES];
    if (reap_ending(c, d, 0, 1, &used, &si) < 0)
        return NULL;
    struct ending *e = &c->ending[c->nending];
    if (e->slot >= 0 && defer) {
        keep_ending(c);
        Py_RETURN_NONE;
    }
    if (e->slot >= 0) {     /* answered once all of it is gone (bounded) */
        cgroup_wait_empty(&c->cgroups, e->slot);
        cgroup_used(&c->cgroups, e->slot, &total, &used);
    }
    usage_bytes(&e->ru, &used, usage);
    int status = si.si_code == CLD_EXITED ? (si.si_status & 0xff) << 8
                 : (si.si_status & 0x7f) | (si.si_code == CLD_DUMPED ? 0x80 : 0);
    return Py_BuildValue("(iy#)", status, (const char *)usage, (Py_ssize_t)USAGE_BYTES);
}

static long long mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Is pid a dispatcher of ours, running or reaped just now? */
static int ours(HotPathObject *c, pid_t pid)
{
    for (unsigned i = 0; i < sizeof c->reaped / sizeof *c->reaped; i++)
        if (c->reaped[i] == pid)
            return 1;
    PyObject *key = PyLong_FromLong((long)pid);
    int known = key != NULL && PyDict_Contains(c->by_pid, key) == 1;
    Py_XDECREF(key);
    PyErr_Clear();
    return known;
}

/* The child watch is readable: take its SIGCHLDs in. Every dispatcher's
 * end sends one, and the signalfd names the child each was for; one naming
 * no dispatcher of ours (or a wake-up naming nobody: a pipe, in tests)
 * makes a stray -- an orphan re-parented to us -- suspect. */
static void child_signals_in(HotPathObject *c)
{
    struct signalfd_siginfo si[16];
    ssize_t n;
    while ((n = read(c->child_fd, si, sizeof si)) > 0) {
        c->strays_unlooked = 1;
        if (n % (ssize_t)sizeof *si != 0) {
            c->stray_suspect = 1;
            continue;
        }
        for (ssize_t i = 0; i < n / (ssize_t)sizeof *si; i++)
            if (!ours(c, (pid_t)si[i].ssi_pid))
                c->stray_suspect = 1;
    }
}

/* Has a stray exited? The question of osutil.reap_strays, asked here
 * because its answer is almost always no and the way through Python costs
 * ~80 us on the CPU the next program needs -- and asked only when it may
 * be yes: at once when a SIGCHLD named no dispatcher; when all named
 * dispatchers, a stray's may still hide behind one (a standard signal does
 * not queue), so at most every STRAY_LOOK_NS then, and when the worker has
 * slept its timeout out (`force`). The asking is waitid over every child,
 * ~90 us with 4,000 of them: not something to do for each exit. 1 if a
 * stray may have exited (reap_strays' to say), 0 if not. */
static int stray_exited(HotPathObject *c, int force)
{
    long long now = mono_ns();
    if (!c->strays_unlooked ||
        (!c->stray_suspect && !force && now - c->strays_looked_ns < STRAY_LOOK_NS))
        return 0;
    c->strays_unlooked = c->stray_suspect = 0;
    c->strays_looked_ns = now;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return 0;            /* no children at all */
    return si.si_pid != 0;
}

/* run_once(timeout, python_first) -> RUN_* bits. The worker's loop, for as
 * long as it needs no Python: serve what this code serves, wake the manager
 * for the replies, sleep on the epoll set (armed on the request ring), report
 * the exits that woke it -- and round again. It returns for Python: a request
 * it declines, a full reply ring, a stray child, and a wake-up that brought
 * nothing it serves (the stop handler rings the doorbell: signal handlers run
 * before each sleep), a signal during the sleep, or `timeout` seconds of
 * sleep with nothing at all. Going back through Python between a wake-up and
 * the spawn it brought cost ~20-40 us, on the CPU the program then runs on.
 * python_first: Python's decoder holds part of a message, so the ring's next
 * slots are Python's; it returns after one sleep. */
static PyObject *hotpath_run_once(HotPathObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run_once(timeout, python_first)");
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[0]);
    int python_first = PyObject_IsTrue(args[1]);
    if (PyErr_Occurred())
        return NULL;
    int timeout_ms = timeout < 0 ? -1 : (int)(timeout * 1000.0 + 0.999);
    /* However busy it is, back to Python by its timeout: what Python
     * waits to do then (a kill's grace running out) is bounded by it. */
    long long until = timeout < 0 ? -1 : mono_ns() + (long long)(timeout * 1e9);
    int exits = 0;      /* dispatchers the last wake-up was for */
    for (int round = 0;; round++) {
        int served = 0, r;
        if (c->nending > 0 && tell_endings(c) == RUN_FULL)
            return PyLong_FromLong(RUN_FULL);
        for (;;) {
            if (until >= 0 && (round > 0 || served > 0) && mono_ns() >= until)
                return PyLong_FromLong(RUN_IDLE);     /* not armed here: nothing to undo */
            if (python_first) {
                const uint8_t *slot;
                r = rb_peek(c->requests, &slot) == RB_EEMPTY ? 0 : RUN_DECLINED;
            } else {
                r = serve(c, &served);
            }
            rb_wake_consumer(c->replies);   /* for this batch and the exits before it */
            if (r < 0)
                return NULL;
            if (r != 0)
                return PyLong_FromLong(r);
            if (rb_arm(c->requests, RB_WAIT_DATA) == 0)
                break;      /* else it has data (or the peer closed): serve again */
        }
        /* The last wake-up brought nothing this code does: maybe the stop
         * handler's doorbell. Python looks. */
        if (round > 0 && served == 0 && exits == 0) {
            rb_disarm(c->requests, RB_WAIT_DATA);
            return PyLong_FromLong(RUN_IDLE);
        }
        if (PyErr_CheckSignals() < 0) {       /* a handler raised */
            rb_disarm(c->requests, RB_WAIT_DATA);
            return NULL;
        }
        struct epoll_event evs[64];
        int n, err;
        /* Ends waiting on their groups are looked at every ENDING_LOOK_MS. */
        int shortened = c->nending > 0 && (timeout_ms < 0 || timeout_ms > ENDING_LOOK_MS);
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(c->epfd, evs, 64, shortened ? ENDING_LOOK_MS : timeout_ms);
        err = errno;
        Py_END_ALLOW_THREADS
        rb_disarm(c->requests, RB_WAIT_DATA);
        if (n < 0) {
            if (err == EINTR)
                return PyLong_FromLong(RUN_IDLE);   /* the handlers run as we return */
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (n == 0 && shortened)      /* woke for the ends waiting on their groups */
            return PyLong_FromLong(tell_endings(c));
        if (n == 0)     /* slept it all: Python looks (at strays too, if any may be) */
            return PyLong_FromLong(stray_exited(c, 1) ? RUN_CHILDREN : RUN_IDLE);
        int result = RUN_IDLE, children = 0, python_wants = 0;
        exits = 0;
        /* SIGCHLDs first, while the dispatchers they name are still ours. */
        for (int i = 0; i < n; i++)
            if (evs[i].data.fd == c->child_fd) {
                children = 1;
                child_signals_in(c);
            }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == c->child_fd)
                continue;
            if (fd == c->python_fd) {
                python_wants = 1;       /* however busy: Python's turn after this one */
                continue;
            }
            PyObject *key = PyLong_FromLong(fd);
            if (key == NULL)
                return NULL;
            PyObject *d = PyDict_GetItemWithError(c->by_pidfd, key);
            Py_DECREF(key);
            if (d == NULL) {
                if (PyErr_Occurred())
                    return NULL;
                continue;         /* the doorbell: only a wake-up */
            }
            int r = report_exit(c, d);
            if (r < 0)
                return NULL;
            result |= r;
            exits++;
        }
        /* Looked at on any wake-up, not only a SIGCHLD's: a stray's that hid
         * behind a dispatcher's is found within STRAY_LOOK_NS of it. */
        if ((children || c->strays_unlooked) && stray_exited(c, 0))
            result |= RUN_CHILDREN;
        if (result != RUN_IDLE || python_first || python_wants)
            return PyLong_FromLong(result);
    }
}

static PyMemberDef hotpath_members[] = {
    {"dispatchers", T_OBJECT_EX, offsetof(HotPathObject, dispatchers), READONLY,
     "dom -> Dispatcher, for every dispatcher running here (read it, do not change it)"},
    {"prepared", T_OBJECT_EX, offsetof(HotPathObject, prepared), READONLY,
     "spawn payload -> Prepared: the spawns run_once serves by itself"},
    {"python_fd", T_INT, offsetof(HotPathObject, python_fd), 0,
     "a descriptor in the epoll that is Python's: run_once returns when it is ready"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef hotpath_methods[] = {
    {"start", (PyCFunction)(void (*)(void))hotpath_start, METH_FASTCALL,
     "start(prepared, dom, nonce, span) -> pid"},
    {"reap", (PyCFunction)(void (*)(void))hotpath_reap, METH_FASTCALL,
     "reap(dom, defer) -> (wait status, usage), or None: its end is told by run_once"},
    {"hold", (PyCFunction)hotpath_hold, METH_O,
     "hold(dom): the caller reports this dispatcher's end, not run_once"},
    {"run_once", (PyCFunction)(void (*)(void))hotpath_run_once, METH_FASTCALL,
     "run_once(timeout, python_first) -> RUN_* bits"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "spawnd_workers._spawnd.HotPath",
    .tp_doc = "HotPath(requests, replies, epoll_fd, child_fd, core, runtime): "
              "the worker's dispatchers and its loop's hot path.",
    .tp_basicsize = sizeof(HotPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)hotpath_init,
    .tp_dealloc = (destructor)hotpath_dealloc,
    .tp_members = hotpath_members,
    .tp_methods = hotpath_methods,
};

/* 1 if every thread of this process blocks SIGCHLD, 0 if one does not, -1
 * with an exception set if /proc/self/task cannot be read. */
static int sigchld_blocked_everywhere(void)
{
    DIR *tasks = opendir("/proc/self/task");
    if (tasks == NULL) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/proc/self/task");
        return -1;
    }
    int all = 1;
    struct dirent *e;
    while (all && (e = readdir(tasks)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[64], line[128];
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;          /* the thread has just ended */
        unsigned long long blocked = 0;
        while (fgets(line, sizeof line, f) != NULL)
            if (sscanf(line, "SigBlk: %llx", &blocked) == 1)
                break;
        fclose(f);
        all = (blocked >> (SIGCHLD - 1)) & 1;
    }
    closedir(tasks);
    return all;
}

/* child_signals() -> fd: a signalfd readable once a child of ours has changed
 * state, for the worker's epoll set; run_once reads it. With no SIGCHLD
 * handler, an exit costs no signal delivery, no handler and no second
 * wake-up through a pipe before the worker reports it. A thread that did
 * not block SIGCHLD could take the signal and the descriptor would never
 * see it, so every thread must block it -- from before anything can start
 * one (numpy starts OpenBLAS's threads at import): spawnd_workers/__main__.py.
 * Checked here; RuntimeError if not. */
static PyObject *child_signals(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, NULL);
    int all = sigchld_blocked_everywhere();
    if (all < 0)
        return NULL;
    if (!all) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a thread of this process does not block SIGCHLD: block it before "
                        "any thread starts (see spawnd_workers/__main__.py)");
        return NULL;
    }
    int fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(fd);
}

static PyMethodDef spawnd_functions[] = {
    {"child_signals", child_signals, METH_NOARGS,
     "child_signals() -> fd: a signalfd for SIGCHLD (every thread must block it)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef spawnd_module = {
    PyModuleDef_HEAD_INIT, "spawnd_workers._spawnd",
    "The spawnd worker's hot path (see worker.py).", -1, spawnd_functions,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawnd(void)
{
    if (PyType_Ready(&PreparedType) < 0 || PyType_Ready(&HotPathType) < 0)
        return NULL;
    DispatcherType = PyStructSequence_NewType(&dispatcher_desc);
    if (DispatcherType == NULL)
        return NULL;
    PyObject *mod = PyModule_Create(&spawnd_module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "Prepared", (PyObject *)&PreparedType) < 0 ||
        PyModule_AddObjectRef(mod, "HotPath", (PyObject *)&HotPathType) < 0 ||
        PyModule_AddObjectRef(mod, "Dispatcher", (PyObject *)DispatcherType) < 0 ||
        PyModule_AddIntConstant(mod, "RUN_IDLE", RUN_IDLE) < 0 ||
        PyModule_AddIntConstant(mod, "RUN_DECLINED", RUN_DECLINED) < 0 ||
        PyModule_AddIntConstant(mod, "RUN_CHILDREN", RUN_CHILDREN) < 0 ||
        PyModule_AddIntConstant(mod, "RUN_FULL", RUN_FULL) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
