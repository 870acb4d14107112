/*
 * A spawn's payload, read and checked: the one reader of it. The manager's
 * core (procmgr/manager/core/handlers.c) reads every spawn here, without
 * calling into Python code; Python's SpawnArgs.decode (payloads.py) calls
 * the same function through procmgr.protocol._wire, and so does the worker.
 * SpawnArgs.encode (payloads.py) is the writer.
 *
 * Layout (little-endian), narrow -- every spawn whose argv and env are at
 * most ARG_LIMIT bytes each, the original's limit:
 *
 *   u16 path length | u16 argv length | u16 env length | u16 caps length
 *   path | argv | env | caps
 *
 * or wide, for a longer argv or env (up to LONG_ARG_LIMIT each; a spawn
 * that long is a long message, protocol.h): u16 0xFFFF (never a narrow
 * path's length) and u16 0, then the four lengths as u32, their flag bits
 * the top two of each u32 rather than of each u16. Path and caps are at
 * most ARG_LIMIT bytes in either.
 *
 * argv, env and caps are lists of NUL-terminated items (so [] and [""]
 * differ). The high bit of the argv length says "argv is [path]" (then argv
 * is empty: a spawn of /bin/true with its streams named fits one slot); the
 * high bit of the env length says an environment is given (without it the
 * program inherits the worker's; with it and no entries, an empty one), and
 * the next bit that its entries are added to the worker's environment
 * rather than replace it. An env entry is KEY=VALUE with a non-empty key.
 * The high bit of the caps length says a working directory is given: the
 * caps field then starts with it, NUL-terminated (a spawn without one pays
 * nothing for it); the next bit, that how the program is stopped is given:
 * SIGNAL:GRACE_MS (the signal a kill sends first, 1..KILL_MAX_SIGNAL, and
 * the ms before SIGKILL, below KILL_GRACE_DEFAULT) comes next. Then the
 * settings, each NAME=VALUE with NAME one of spawn_settings (a letter
 * first, where a cap's first character is a digit): what the program's
 * process is made before its exec -- its limits and identity; the worker
 * reads and checks their values. Then the caps, each FD:MODE:TEXT, as
 * payloads.py describes for each mode.
 *
 * Everything in it is a peer's word: every length is checked against the
 * payload and ARG_LIMIT before anything is read, and a payload that breaks
 * a rule gets an error saying which (BAD_MESSAGE or ARG_TOO_LONG, with a
 * line of text), never a crash. Text is UTF-8; bytes that are not pass
 * through as os.fsdecode keeps them (spawn_text).
 *
 * Header-only (static functions): compiled into each module that includes
 * it. Needs Python.h first and protocol.h.
 */
#ifndef PROCMGR_SPAWN_PAYLOAD_H
#define PROCMGR_SPAWN_PAYLOAD_H

#include <stdint.h>
#include <string.h>

#include "protocol.h"

#define SPAWN_LENS 8                /* the four u16 lengths */
#define SPAWN_WIDE_LENS 20          /* the wide mark, its pad and the four u32 lengths */
#define SPAWN_WIDE_MARK 0xFFFFu
#define SPAWN_FLAG_BIT 0x8000u      /* argv: is [path]; env: given; caps: a cwd first */
#define SPAWN_ADDS_BIT 0x4000u      /* env: added to the worker's (with SPAWN_FLAG_BIT) */
/* Items in argv, or in env, at most: what execve takes in 2 MiB of
 * pointers and strings is ~130,000 of the shortest. */
#define SPAWN_ITEMS_MAX 131072
#define SPAWN_WIDE_FLAG_BIT 0x80000000u    /* the same two bits of a wide length */
#define SPAWN_WIDE_ADDS_BIT 0x40000000u

/* Why a payload was refused: an error code (enum err) and a str. */
struct spawn_refusal {
    uint16_t code;
    PyObject *detail;               /* a new reference */
};

static PyObject *spawn_refuse(struct spawn_refusal *why, uint16_t code, PyObject *detail)
{
    why->code = code;
    why->detail = detail;           /* NULL: out of memory, the exception is set */
    return NULL;
}

#define SPAWN_REFUSE(why, ...) \
    spawn_refuse((why), E_BAD_MESSAGE, PyUnicode_FromFormat(__VA_ARGS__))

/* Digits only, ASCII, at least one. */
static int spawn_digits(const char *s, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* The value of a digit string if it is one and below `limit`, else -1. */
static long long spawn_number(const char *s, Py_ssize_t n, unsigned long long limit)
{
    if (!spawn_digits(s, n))
        return -1;
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (limit - d) / 10)       /* v * 10 + d would reach limit (or wrap) */
            return -1;
        v = v * 10 + d;
        if (v >= limit)
            return -1;
    }
    return (long long)v;
}

/* The text of a field as str: UTF-8, and a byte that is not, kept as
 * os.fsdecode keeps it (surrogateescape) -- arguments, environments and
 * paths that are not UTF-8 pass through unchanged, as execve takes them.
 * NULL with an exception (out of memory). */
static PyObject *spawn_text(const char *s, Py_ssize_t n, struct spawn_refusal *why)
{
    (void)why;
    return PyUnicode_DecodeUTF8(s, n, "surrogateescape");
}

/* An item's bytes as they came (a new bytes object; NULL, out of memory). */
static PyObject *spawn_bytes(PyObject *item)
{
    return PyUnicode_AsEncodedString(item, "utf-8", "surrogateescape");
}

/* A list field's items as a list of str: the field decoded whole, its
 * last NUL too (so an error says where in the field, and what, as for the
 * field), then split at its NULs, less the empty rest after the last. */
static PyObject *spawn_list(const char *s, Py_ssize_t n, struct spawn_refusal *why)
{
    if (n == 0)
        return PyList_New(0);
    if (s[n - 1] != '\0')
        return SPAWN_REFUSE(why, "a list field does not end with its NUL terminator");
    /* Counted before anything is made: a MiB of one-byte items is half a
     * million str objects, ~35 ms of the manager's one thread. */
    Py_ssize_t count = 0;
    for (const char *at = s; (at = memchr(at, '\0', (size_t)(s + n - at))) != NULL; at++)
        count++;
    if (count > SPAWN_ITEMS_MAX)
        return spawn_refuse(why, E_ARG_TOO_LONG, PyUnicode_FromFormat(
            "a list of %zd items, over the %d-item limit", count, SPAWN_ITEMS_MAX));
    PyObject *text = spawn_text(s, n, why);
    if (text == NULL)
        return NULL;
    PyObject *nul = PyUnicode_FromOrdinal(0);
    PyObject *items = nul ? PyUnicode_Split(text, nul, -1) : NULL;
    Py_XDECREF(nul);
    Py_DECREF(text);
    if (items != NULL && PyList_SetSlice(items, PyList_GET_SIZE(items) - 1,
                                         PyList_GET_SIZE(items), NULL) < 0)
        Py_CLEAR(items);
    return items;
}

/* What is wrong with a cap's text (t, n bytes; `text` as str, for the
 * words) for its mode: a new str, or NULL when nothing is (or, with an
 * exception set, out of memory). */
static PyObject *spawn_cap_problem(long fd, const char *mode, const char *t, Py_ssize_t n,
                                   PyObject *text)
{
    if (strcmp(mode, "log") == 0) {
        if (fd != 1 && fd != 2)
            return PyUnicode_FromFormat(
                "only stdout and stderr can be captured, not descriptor %ld", fd);
        if (n == 0)
            return NULL;
        const char *colon = memchr(t, ':', (size_t)n);
        Py_ssize_t nl = colon ? colon - t : n;
        long long limit = colon ? spawn_number(t, nl, 1ULL << 63) : -1;
        long long backups = colon ? spawn_number(colon + 1, n - nl - 1, LOG_MAX_BACKUPS + 1) : -1;
        if (limit <= 0 || backups < 0)
            return PyUnicode_FromFormat(
                "log bounds %R are not MAX_BYTES:BACKUPS (MAX_BYTES > 0)", text);
        return NULL;
    }
    if (strcmp(mode, "n") == 0)
        return n ? PyUnicode_FromFormat("cap for descriptor %ld to /dev/null has text %R", fd,
                                        text)
                 : NULL;
    if (strcmp(mode, "inherit") == 0) {
        if (fd != 1 && fd != 2)
            return PyUnicode_FromFormat(
                "only stdout and stderr can be inherited, not descriptor %ld", fd);
        const char *colon = memchr(t, ':', (size_t)n);
        Py_ssize_t np = colon ? colon - t : n;
        long long pid = colon ? spawn_number(t, np, 1 << 22) : -1;
        long long src = colon ? spawn_number(colon + 1, n - np - 1, 1 << 20) : -1;
        if (pid <= 0 || src < 0)
            return PyUnicode_FromFormat("inherited descriptor %R is not PID:FD", text);
        return NULL;
    }
    if (strcmp(mode, "dup") == 0) {
        long long src = spawn_number(t, n, 1024);
        if (src < 0 || src == fd)
            return PyUnicode_FromFormat(
                "cap for descriptor %ld copies %R, not another descriptor 0..1023", fd, text);
        return NULL;
    }
    return n ? NULL : PyUnicode_FromFormat("cap for descriptor %ld has no path", fd);
}

/* The modes a cap may have (payloads.py says what each means). */
static const char *const spawn_cap_modes[] = {"r", "w", "a", "rw", "n", "log", "dup", "inherit"};

static PyObject *spawn_cap_of(PyObject *item, const char *s, Py_ssize_t n,
                              struct spawn_refusal *why);

/* One cap, FD:MODE:TEXT, as a tuple (fd, mode, text). */
static PyObject *spawn_cap(PyObject *item, struct spawn_refusal *why)
{
    PyObject *raw = spawn_bytes(item);
    if (raw == NULL)
        return NULL;
    PyObject *cap = spawn_cap_of(item, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), why);
    Py_DECREF(raw);
    return cap;
}

/* spawn_cap, given the item's bytes (s, n). */
static PyObject *spawn_cap_of(PyObject *item, const char *s, Py_ssize_t n,
                              struct spawn_refusal *why)
{
    const char *c1 = memchr(s, ':', (size_t)n);
    Py_ssize_t nfd = c1 ? c1 - s : n;
    const char *m = c1 ? c1 + 1 : s + n;
    const char *c2 = memchr(m, ':', (size_t)(s + n - m));
    Py_ssize_t nmode = c2 ? c2 - m : s + n - m;
    const char *mode = NULL;
    for (size_t i = 0; i < sizeof spawn_cap_modes / sizeof *spawn_cap_modes; i++)
        if ((Py_ssize_t)strlen(spawn_cap_modes[i]) == nmode &&
            memcmp(spawn_cap_modes[i], m, (size_t)nmode) == 0)
            mode = spawn_cap_modes[i];
    long long fd = spawn_number(s, nfd, 1024);
    if (fd < 0 || mode == NULL)
        return SPAWN_REFUSE(why, "cap %R is not FD:MODE:PATH", item);
    const char *t = c2 ? c2 + 1 : s + n;
    PyObject *text = PyUnicode_DecodeUTF8(t, s + n - t, "surrogateescape");
    if (text == NULL)
        return NULL;
    PyObject *problem = spawn_cap_problem((long)fd, mode, t, s + n - t, text);
    if (problem != NULL) {
        Py_DECREF(text);
        PyObject *detail = PyUnicode_FromFormat("cap %R is not FD:MODE:PATH (%U)", item, problem);
        Py_DECREF(problem);
        return spawn_refuse(why, E_BAD_MESSAGE, detail);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(text);
        return NULL;
    }
    return Py_BuildValue("(lsN)", (long)fd, mode, text);
}

/* The settings a spawn may carry (payloads.py's SETTINGS, in the same order). */
static const char *const spawn_settings[] = {
    "limit.as", "limit.cpu", "limit.nofile", "limit.nproc", "limit.core", "limit.fsize",
    "limit.memory_max", "limit.cpu_max", "limit.pids_max", "user", "group", "umask",
};

/* One setting, NAME=VALUE (the item, as str), into `settings`: 0, or -1
 * with *why filled in (a name not known, no value, a name twice). */
static int spawn_setting(PyObject *settings, PyObject *item, struct spawn_refusal *why)
{
    Py_ssize_t at = PyUnicode_FindChar(item, '=', 0, PyUnicode_GET_LENGTH(item), 1);
    if (at == -2)
        return -1;
    PyObject *name = at > 0 ? PyUnicode_Substring(item, 0, at) : NULL;
    const char *n = name ? PyUnicode_AsUTF8(name) : NULL;
    int known = 0;
    for (size_t i = 0; n != NULL && i < sizeof spawn_settings / sizeof *spawn_settings; i++)
        known |= strcmp(n, spawn_settings[i]) == 0;
    PyErr_Clear();
    int rc = -1;
    if (!known || at + 1 >= PyUnicode_GET_LENGTH(item)) {
        SPAWN_REFUSE(why, known ? "spawn setting %R has no value"
                                : "cap %R is not FD:MODE:PATH, nor a setting NAME=VALUE with a "
                                  "known NAME", item);
    } else if (PyDict_Contains(settings, name)) {
        SPAWN_REFUSE(why, "spawn setting %R is given twice", name);
    } else {
        PyObject *value = PyUnicode_Substring(item, at + 1, PyUnicode_GET_LENGTH(item));
        rc = value == NULL ? -1 : PyDict_SetItem(settings, name, value);
        Py_XDECREF(value);
    }
    Py_XDECREF(name);
    return rc;
}

/* The payload as (path, argv, env, caps, cwd, env_adds, stop, settings):
 * str, list of str, dict or None, list of (fd, mode, text), str or None,
 * bool, (signal, grace ms) or None, dict of str -- what SpawnArgs holds. NULL with *why filled in (why->detail NULL: out of
 * memory, with the exception set). */
static PyObject *spawn_decode(const uint8_t *p, Py_ssize_t n, struct spawn_refusal *why)
{
    why->code = E_OK;
    why->detail = NULL;
    if (n < SPAWN_LENS)
        return SPAWN_REFUSE(why, "spawn payload shorter than its length fields");
    /* The four lengths, as u32 whichever the form, and their flag bits. */
    uint32_t raw[4], flag_bit = SPAWN_FLAG_BIT, adds_bit = SPAWN_ADDS_BIT;
    Py_ssize_t head = SPAWN_LENS;
    uint16_t narrow[4];
    memcpy(narrow, p, sizeof narrow);
    if (narrow[0] == SPAWN_WIDE_MARK) {
        if (n < SPAWN_WIDE_LENS || narrow[1] != 0)
            return SPAWN_REFUSE(why, n < SPAWN_WIDE_LENS
                                ? "wide spawn payload shorter than its length fields"
                                : "wide spawn payload's pad after its mark is not 0");
        memcpy(raw, p + 4, sizeof raw);
        flag_bit = SPAWN_WIDE_FLAG_BIT;
        adds_bit = SPAWN_WIDE_ADDS_BIT;
        head = SPAWN_WIDE_LENS;
    } else {
        for (int i = 0; i < 4; i++)
            raw[i] = narrow[i];
    }
    int argv_is_path = (raw[1] & flag_bit) != 0, env_given = (raw[2] & flag_bit) != 0,
        env_adds = (raw[2] & adds_bit) != 0, cwd_given = (raw[3] & flag_bit) != 0,
        stop_given = (raw[3] & adds_bit) != 0;
    Py_ssize_t lp = raw[0], la = raw[1] & ~flag_bit, le = raw[2] & ~(flag_bit | adds_bit),
               lc = raw[3] & ~(flag_bit | adds_bit);
    if (env_adds && !env_given)
        return SPAWN_REFUSE(why, "spawn payload adds to an environment it does not give");
    if (head + lp + la + le + lc != n)     /* each below 2^31: the sum cannot wrap */
        return SPAWN_REFUSE(why, "spawn payload is %zd bytes but its fields add up to %zd", n,
                            head + lp + la + le + lc);
    static const char *const names[] = {"path", "argv", "env", "caps"};
    Py_ssize_t lens[] = {lp, la, le, lc};
    static const Py_ssize_t limits[] = {ARG_LIMIT, LONG_ARG_LIMIT, LONG_ARG_LIMIT, ARG_LIMIT};
    for (int i = 0; i < 4; i++)
        if (lens[i] > limits[i])
            return spawn_refuse(why, E_ARG_TOO_LONG, PyUnicode_FromFormat(
                "%s is %zd bytes, over the %zd-byte limit", names[i], lens[i], limits[i]));
    const char *path_at = (const char *)p + head, *argv_at = path_at + lp,
               *env_at = argv_at + la, *caps_at = env_at + le;
    /* What the lengths and the path say, before any list is decoded. */
    if (lp == 0)
        return SPAWN_REFUSE(why, "spawn without a program path");
    if (memchr(path_at, '\0', (size_t)lp) != NULL)
        return SPAWN_REFUSE(why, "the program path contains a NUL byte");
    if (le != 0 && !env_given)
        return SPAWN_REFUSE(why, "spawn payload has env entries but says env is not given");
    PyObject *path = NULL, *argv = NULL, *env_items = NULL, *cap_items = NULL, *env = NULL,
             *caps = NULL, *cwd = NULL, *stop = NULL, *settings = NULL, *out = NULL;
    if ((path = spawn_text(path_at, lp, why)) == NULL ||
        (argv = spawn_list(argv_at, la, why)) == NULL ||
        (env_items = spawn_list(env_at, le, why)) == NULL ||
        (cap_items = spawn_list(caps_at, lc, why)) == NULL || (caps = PyList_New(0)) == NULL)
        goto done;
    if (cwd_given) {            /* the caps field's first item */
        if (PyList_GET_SIZE(cap_items) == 0) {
            SPAWN_REFUSE(why, "spawn payload says a working directory is given but has none");
            goto done;
        }
        cwd = Py_NewRef(PyList_GET_ITEM(cap_items, 0));
        if (PyList_SetSlice(cap_items, 0, 1, NULL) < 0)
            goto done;
        if (PyUnicode_GET_LENGTH(cwd) == 0) {
            SPAWN_REFUSE(why, "the working directory is empty");
            goto done;
        }
    } else {
        cwd = Py_NewRef(Py_None);
    }
    if (stop_given) {           /* SIGNAL:GRACE_MS, next */
        PyObject *raw = PyList_GET_SIZE(cap_items) ? spawn_bytes(PyList_GET_ITEM(cap_items, 0))
                                                   : PyBytes_FromString("");
        if (raw == NULL)
            goto done;
        const char *t = PyBytes_AS_STRING(raw);
        Py_ssize_t n = PyBytes_GET_SIZE(raw);
        const char *colon = memchr(t, ':', (size_t)n);
        long long sig = colon ? spawn_number(t, colon - t, KILL_MAX_SIGNAL + 1) : -1;
        long long ms = colon ? spawn_number(colon + 1, n - (colon - t) - 1,
                                            KILL_GRACE_DEFAULT + 1ULL) : -1;
        Py_DECREF(raw);
        if (sig <= 0 || ms < 0) {
            SPAWN_REFUSE(why, "spawn payload says how it stops but has no SIGNAL:GRACE_MS");
            goto done;
        }
        if ((stop = Py_BuildValue("(LL)", sig, ms)) == NULL ||
            PyList_SetSlice(cap_items, 0, 1, NULL) < 0)
            goto done;
    } else {
        stop = Py_NewRef(Py_None);
    }
    if ((settings = PyDict_New()) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cap_items); i++) {
        PyObject *item = PyList_GET_ITEM(cap_items, i);
        Py_UCS4 first = PyUnicode_GET_LENGTH(item) ? PyUnicode_READ_CHAR(item, 0) : 0;
        if (first >= 'a' && first <= 'z') {          /* a setting */
            if (spawn_setting(settings, item, why) < 0)
                goto done;
            continue;
        }
        PyObject *cap = spawn_cap(item, why);
        int rc = cap == NULL ? -1 : PyList_Append(caps, cap);
        Py_XDECREF(cap);
        if (rc < 0)
            goto done;
    }
    if (argv_is_path) {
        if (PyList_GET_SIZE(argv)) {
            SPAWN_REFUSE(why, "spawn payload has argv entries but says argv is [path]");
            goto done;
        }
        if (PyList_Append(argv, path) < 0)
            goto done;
    }
    if (env_given) {
        if ((env = PyDict_New()) == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(env_items); i++) {
            PyObject *item = PyList_GET_ITEM(env_items, i);
            Py_ssize_t at = PyUnicode_FindChar(item, '=', 0, PyUnicode_GET_LENGTH(item), 1);
            if (at == -2)
                goto done;
            if (at <= 0) {
                SPAWN_REFUSE(why, "env entry %R is not KEY=VALUE", item);
                goto done;
            }
            PyObject *key = PyUnicode_Substring(item, 0, at);
            PyObject *value = PyUnicode_Substring(item, at + 1, PyUnicode_GET_LENGTH(item));
            int rc = key && value ? PyDict_SetItem(env, key, value) : -1;
            Py_XDECREF(key);
            Py_XDECREF(value);
            if (rc < 0)
                goto done;
        }
    } else {
        env = Py_NewRef(Py_None);
    }
    out = PyTuple_Pack(8, path, argv, env, caps, cwd, env_adds ? Py_True : Py_False, stop,
                       settings);
done:
    Py_XDECREF(settings);
    Py_XDECREF(cwd);
    Py_XDECREF(stop);
    Py_XDECREF(path);
    Py_XDECREF(argv);
    Py_XDECREF(env_items);
    Py_XDECREF(cap_items);
    Py_XDECREF(env);
    Py_XDECREF(caps);
    return out;
}

#endif /* PROCMGR_SPAWN_PAYLOAD_H */
