/*
 * The worker's log rotator (see _rotator.h for what and why). Plain C: no
 * Python object is touched here, so its thread never takes the GIL.
 */
#define _GNU_SOURCE
#include "_rotator.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define NBUCKETS (1u << 14)
/* In a retired stream's key: it was rotated (it has NAME.1 ... to remove). */
#define ROTATED (1ull << 63)
/* After a round with work, the thread rests this long: a program printing
 * line by line costs it at most a thousand rounds a second, however fast it
 * prints, and events for the same file meanwhile become one. */
#define PAUSE_NS 1000000L
/* Ended slots the worker lets pile up before it wakes the thread to free
 * them (an ended stream that grew wakes it through inotify anyway). */
#define END_BATCH 64
/* Rotations cut at this boundary: a punched hole is whole blocks. */
#define BLOCK 4096u
/* Spare files: made ahead, once spawns have taken some, until SPARE_TARGET
 * are ready, SPARE_BATCH per round (the worker's spawns wait for none of
 * it). Few: in steady state the manager's recycled files keep the pool
 * up, and an idle runtime should not spend its CPU (or a slow file
 * system's) on files nobody asked for. */
#define SPARE_TARGET 32
#define SPARE_BATCH 8
/* On NAME.1: where its bytes end in the current file (procmgr/client/logs.py reads it). */
#define END_ATTR "user.procmgr.end"

enum { KEY_STOP = 1, KEY_INOTIFY, KEY_WAKE };

static inline uint64_t stream_key(uint32_t dom, int fd)
{
    return (uint64_t)dom << 2 | (uint64_t)(fd & 3);
}

static struct log_stream *slot_at(struct rotator *r, int32_t i)
{
    return &r->chunks[i / ROTATOR_CHUNK][i % ROTATOR_CHUNK];
}

void rotator_name(char *buf, size_t size, uint32_t dom, int fd)
{
    snprintf(buf, size, "%u.%s", dom, fd == 1 ? "stdout" : "stderr");
}

/* ---- the name map (lock held) ---------------------------------------------- */

static uint32_t bucket_of(uint64_t key)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 50) & (NBUCKETS - 1);
}

static int32_t map_find(struct rotator *r, uint64_t key)
{
    for (int32_t i = r->buckets[bucket_of(key)]; i >= 0; i = slot_at(r, i)->next)
        if (slot_at(r, i)->key == key)
            return i;
    return -1;
}

static void map_remove(struct rotator *r, int32_t slot)
{
    int32_t *link = &r->buckets[bucket_of(slot_at(r, slot)->key)];
    while (*link >= 0 && *link != slot)
        link = &slot_at(r, *link)->next;
    if (*link == slot)
        *link = slot_at(r, slot)->next;
}

/* ---- rotation (rotator thread) ------------------------------------------- */

static void backup_name(char *buf, size_t size, const struct log_stream *s, uint32_t n)
{
    snprintf(buf, size, "%s.%u", s->name, n);
}

/* [from, to) of the stream's file into a new NAME.1, older ones shifted.
 * Written under another name and renamed into place, so a reader never
 * sees a half-written NAME.1; it carries, as the attribute END_ATTR, the
 * offset in the current file where its bytes end, so a reader that finds
 * them not yet cut from the current file reads them once. */
static int save_head(struct rotator *r, struct log_stream *s, int fd, uint64_t from,
                     uint64_t to)
{
    char a[ROTATOR_NAME + 16], b[ROTATOR_NAME + 16];
    backup_name(a, sizeof a, s, 0);                  /* NAME.0: being written */
    unlinkat(r->dirfd, a, 0);                        /* whatever had the name */
    int out = openat(r->dirfd, a, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out < 0)
        return -1;
    loff_t off = (loff_t)from;
    while ((uint64_t)off < to) {
        ssize_t n = copy_file_range(fd, &off, out, NULL, (size_t)(to - (uint64_t)off), 0);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                      errno == EOPNOTSUPP)) {
            char buf[65536];
            size_t want = to - (uint64_t)off < sizeof buf ? to - (uint64_t)off : sizeof buf;
            n = pread(fd, buf, want, off);
            if (n > 0 && write(out, buf, (size_t)n) == n) {
                off += n;
                continue;
            }
        }
        break;               /* EOF (a concurrent truncation), ENOSPC ...: keep what is in */
    }
    if ((uint64_t)off < to) {                        /* not all of it: keep it where it is */
        close(out);
        unlinkat(r->dirfd, a, 0);
        return -1;
    }
    char end[24];
    int len = snprintf(end, sizeof end, "%llu", (unsigned long long)to);
    fsetxattr(out, END_ATTR, end, (size_t)len, 0);   /* ENOTSUP: readers do without */
    close(out);
    for (uint32_t i = s->backups; i > 1; i--) {
        backup_name(a, sizeof a, s, i - 1);
        backup_name(b, sizeof b, s, i);
        renameat(r->dirfd, a, r->dirfd, b);          /* ENOENT: not there yet */
    }
    backup_name(a, sizeof a, s, 0);
    backup_name(b, sizeof b, s, 1);
    return renameat(r->dirfd, a, r->dirfd, b);
}

/* The stream's file (fd, `size` long) rotated if its data reached the bound. */
static void rotate(struct rotator *r, struct log_stream *s, int fd, uint64_t size)
{
    if (size < s->start)     /* truncated by someone: start again */
        s->start = 0;
    if (size - s->start < s->max_bytes)
        return;
    uint64_t cut = size / BLOCK * BLOCK;      /* whole blocks: what a hole can be */
    if (cut <= s->start)
        return;
    /* A burst may have written more than max_bytes before we looked: it
     * goes into as many rotated files as it fills, oldest first, each at
     * most max_bytes; what is older than the backups hold goes. */
    uint64_t pieces = (cut - s->start + s->max_bytes - 1) / s->max_bytes;
    if (pieces > s->backups)
        pieces = s->backups;
    for (uint64_t j = pieces; j > 0; j--) {
        uint64_t to = cut - (j - 1) * s->max_bytes;
        uint64_t from = to > s->start + s->max_bytes ? to - s->max_bytes : s->start;
        if (save_head(r, s, fd, from, to) < 0)
            return;          /* the disk refuses: cut nothing, try at the next growth */
    }
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)s->start,
                  (off_t)(cut - s->start)) == 0) {
        s->start = cut;
    } else if (ftruncate(fd, 0) == 0) {
        /* No holes here: the appends go on from 0. [cut, size) and what came
         * after the stat are lost -- the file system's limit, said above. */
        s->start = 0;
    }
    s->rotated = 1;
}

/* Look at a stream's file and rotate it if its data reached the bound.
 * Opened by name for each look, not kept: a core with thousands of
 * chatty programs would otherwise hold a descriptor for each, and a
 * forgotten domain's file (recycled for another, under another name) is
 * simply not found. */
static void check(struct rotator *r, struct log_stream *s)
{
    int fd = openat(r->dirfd, s->name, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return;              /* gone (a forgotten domain's file): nothing to bound */
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        rotate(r, s, fd, (uint64_t)st.st_size);
    close(fd);
}

/* ---- spare files (rotator thread) ----------------------------------------- */

/* A file (in dirfd: .spare/, or the core's directory for an ended
 * stream's own) emptied and opened as a program's log is (appending,
 * blocking), onto the ready stack -- the worker then only hands the
 * descriptor over, and the file is named after (_rotator.h, "Naming"). Or gone, if the stack is full, it
 * is not a regular file, or someone still has it open: a process a
 * forgotten domain left behind, writing on, must not write into the next
 * domain's log. A write lease is granted only to a file nobody else has
 * open: that is the test, exact and one system call. */
static void adopt(struct rotator *r, int dirfd, const char *name)
{
    int fd = openat(dirfd, name,
                    O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return;              /* not a file of ours after all, or gone */
    struct stat st;
    int alone = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (alone) {
        if (fcntl(fd, F_SETLEASE, F_WRLCK) == 0)
            fcntl(fd, F_SETLEASE, F_UNLCK);
        else if (errno != EINVAL)     /* EINVAL: leases are off here (fs.leases-enable) */
            alone = 0;
    }
    alone = alone && (st.st_size == 0 || ftruncate(fd, 0) == 0) &&
            fcntl(fd, F_SETFL, O_APPEND) == 0;
    pthread_mutex_lock(&r->lock);
    int kept = alone && r->nspares < SPARE_MAX && strlen(name) < ROTATOR_NAME;
    if (kept) {
        struct log_spare *sp = &r->spares[r->nspares++];
        strcpy(sp->name, name);
        sp->fd = fd;
        sp->dirfd = dirfd;
    }
    pthread_mutex_unlock(&r->lock);
    if (!kept) {
        close(fd);
        unlinkat(dirfd, name, 0);
    }
}

/* Whatever .spare/ holds already (a worker before us, on this core). */
static void adopt_all(struct rotator *r)
{
    int fd = openat(r->spare_dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (dir == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            adopt(r, r->spare_dirfd, e->d_name);
    closedir(dir);
}

/* Up to SPARE_BATCH new empty files while fewer than SPARE_TARGET are
 * ready; 1 if more are still wanted. Each is made in .spare/.new/ and
 * renamed into .spare/, where its event adopts it like a recycled one: a
 * creation holds its directory's lock for all it takes (~1.2 ms on this
 * machine's /tmp), and the renames out of .spare/ must not wait. */
static int make_spares(struct rotator *r)
{
    pthread_mutex_lock(&r->lock);
    int want = r->asked ? SPARE_TARGET - r->nspares : 0;
    r->asked = want > SPARE_BATCH;       /* (more next round) */
    pthread_mutex_unlock(&r->lock);
    if (want <= 0)
        return 0;
    int more = want > SPARE_BATCH;
    if (more)
        want = SPARE_BATCH;
    char name[ROTATOR_NAME], from[ROTATOR_NAME + 8];
    int made = 0;
    for (; made < want; made++) {
        snprintf(name, sizeof name, "new%llu", (unsigned long long)r->made++);
        snprintf(from, sizeof from, ".new/%s", name);
        int fd = openat(r->spare_dirfd, from,
                        O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            break;           /* ENOSPC, EMFILE ...: not now */
        close(fd);
        if (renameat(r->spare_dirfd, from, r->spare_dirfd, name) < 0)
            break;
    }
    /* The ones made are adopted when their events are read, next round:
     * until then they are not counted, and a round may make a batch too
     * many -- the stack's bound (SPARE_MAX) takes care of it. */
    return more && made == want;
}

/* ---- the thread --------------------------------------------------------- */

/* Stream s's spare renamed to the stream's name (lock held; either
 * thread). Whatever else has the name -- a FIFO or a link a program put
 * there for a domain to come -- is removed first: the name is ours. 1 if
 * the file may have passed its bound already (the program's writes before
 * its name came were not seen: their events named another file). */
static int name_file(struct rotator *r, struct log_stream *s)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (renameat2(s->from.dirfd, s->from.name, r->dirfd, s->name, RENAME_NOREPLACE) == 0) {
            struct stat st;
            return fstatat(r->dirfd, s->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                   (uint64_t)st.st_size >= s->max_bytes;
        }
        if (errno != EEXIST)
            break;
        unlinkat(r->dirfd, s->name, 0);
    }
    unlinkat(s->from.dirfd, s->from.name, 0);   /* (_rotator.h, "Naming") */
    return 0;
}

/* The streams added since the last round, named; one that may have passed
 * its bound goes on *dirty. Each is claimed under the lock (NAMING) and
 * renamed outside it: the worker's spawns never wait on the file system
 * for the lock; the worker waits only if it ends or abandons a stream
 * while it is being named (wait_named). */
static void name_all(struct rotator *r, int32_t i, int32_t *dirty)
{
    while (i >= 0) {
        struct log_stream *s = slot_at(r, i);
        int32_t next = s->next_unnamed;
        pthread_mutex_lock(&r->lock);
        int mine = s->unnamed == UNNAMED;
        if (mine)
            s->unnamed = NAMING;
        pthread_mutex_unlock(&r->lock);
        if (mine) {
            /* s->from, name and bounds stay as they are while NAMING, and
             * the slot is freed only by this thread. */
            int late = name_file(r, s);
            pthread_mutex_lock(&r->lock);
            s->unnamed = NAMED;
            if (late && !s->dirty) {
                s->dirty = 1;
                s->next_dirty = *dirty;
                *dirty = i;
            }
            pthread_mutex_unlock(&r->lock);
        }
        i = next;
    }
}

/* With the lock held: until the rotator thread has finished naming s, if
 * it is at it (a rename or two, microseconds). */
static void wait_named(struct rotator *r, struct log_stream *s)
{
    while (s->unnamed == NAMING) {
        pthread_mutex_unlock(&r->lock);
        struct timespec pause = {0, 20000};
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&r->lock);
    }
}

/* Every inotify event waiting: the streams whose files grew, marked dirty
 * and chained from *dirty (an overflow marks every live stream), and the
 * files renamed into .spare/, adopted. */
static void read_events(struct rotator *r, int32_t *dirty)
{
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(r->inotify_fd, buf, sizeof buf);
        if (n <= 0)
            return;          /* EAGAIN: all read */
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            if (ev->wd == r->spare_wd && ev->len > 0 && (ev->mask & IN_MOVED_TO))
                adopt(r, r->spare_dirfd, ev->name);
        }
        pthread_mutex_lock(&r->lock);
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            int32_t first = -1, last = -1;
            if (ev->wd == r->spare_wd)
                continue;
            if (ev->mask & IN_Q_OVERFLOW) {
                first = 0;
                last = r->nchunks * ROTATOR_CHUNK - 1;
            } else if (ev->len > 0) {
                unsigned dom;
                char stream[8];
                if (sscanf(ev->name, "%u.%7s", &dom, stream) != 2)
                    continue;
                int fd = strcmp(stream, "stdout") == 0 ? 1 : strcmp(stream, "stderr") == 0 ? 2 : 0;
                first = last = fd ? map_find(r, stream_key(dom, fd)) : -1;
                if (first < 0)
                    continue;        /* another's, or a rotated file */
            }
            for (int32_t i = first; i >= 0 && i <= last; i++) {
                struct log_stream *s = slot_at(r, i);
                if (s->in_use && !s->dirty) {
                    s->dirty = 1;
                    s->next_dirty = *dirty;
                    *dirty = i;
                }
            }
        }
        pthread_mutex_unlock(&r->lock);
    }
}

/* A stream ended `keep` streams ago: its file goes back to the pool, to be
 * emptied when its event comes (adopt_spare), and its rotated files go. */
static void recycle(struct rotator *r, uint64_t key)
{
    char name[ROTATOR_NAME], old[ROTATOR_NAME + 16];
    rotator_name(name, sizeof name, (uint32_t)((key & ~ROTATED) >> 2), (int)(key & 3));
    for (unsigned n = 0; key & ROTATED; n++) {  /* NAME.0 (a rotation cut short), .1, ... */
        snprintf(old, sizeof old, "%s.%u", name, n);
        if (unlinkat(r->dirfd, old, 0) < 0 && n > 0)
            break;
    }
    adopt(r, r->dirfd, name);        /* where it is: the worker renames it from there */
}

static void retire(struct rotator *r, uint64_t key)
{
    if (r->nretired == r->keep) {
        recycle(r, r->retired[r->retired_head]);
        r->retired[r->retired_head] = key;
        r->retired_head = (r->retired_head + 1) % r->keep;
    } else {
        r->retired[(r->retired_head + r->nretired++) % r->keep] = key;
    }
}

static void free_slot(struct rotator *r, int32_t i)
{
    struct log_stream *s = slot_at(r, i);
    retire(r, s->key | (s->rotated ? ROTATED : 0));
    pthread_mutex_lock(&r->lock);
    map_remove(r, i);
    s->in_use = 0;
    s->next = r->free_head;
    r->free_head = i;
    pthread_mutex_unlock(&r->lock);
}

static void *rotator_main(void *arg)
{
    struct rotator *r = arg;
    /* Signals are the worker thread's (its handlers, its SIGCHLD watch). */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    adopt_all(r);
    struct epoll_event evs[4];
    for (;;) {
        int n = epoll_wait(r->epfd, evs, 4, -1);
        if (n < 0 && errno != EINTR)
            return NULL;
        for (int i = 0; i < n; i++)
            if (evs[i].data.u32 == KEY_STOP)
                return NULL;
        uint64_t ignored;
        if (read(r->wake_fd, &ignored, sizeof ignored) < 0) {
            /* EAGAIN: not what woke us */
        }
        /* The ended list first, then the events: a stream ended before the
         * list was taken grew (if it did) before it ended, so that event is
         * read below and the stream checked before it is freed. The list
         * to name is taken with it: a slot on it is not freed before it
         * has been looked at below. */
        pthread_mutex_lock(&r->lock);
        int32_t unnamed = r->unnamed;
        r->unnamed = -1;
        int32_t nended = r->nended;
        int32_t *ended = NULL;
        if (nended > 0) {
            ended = malloc((size_t)nended * sizeof *ended);
            if (ended != NULL) {
                memcpy(ended, r->ended, (size_t)nended * sizeof *ended);
                r->nended = 0;
            } else {
                nended = 0;       /* next time */
            }
        }
        pthread_mutex_unlock(&r->lock);
        int32_t dirty = -1;
        name_all(r, unnamed, &dirty);
        read_events(r, &dirty);
        int worked = dirty >= 0;     /* (naming alone is not a reason to rest) */
        while (dirty >= 0) {
            struct log_stream *s = slot_at(r, dirty);
            int32_t next = s->next_dirty;
            s->dirty = 0;
            check(r, s);
            dirty = next;
        }
        for (int32_t i = 0; i < nended; i++) {
            struct log_stream *s = slot_at(r, ended[i]);
            if (s->late)
                check(r, s);
            s->late = 0;
            free_slot(r, ended[i]);
        }
        free(ended);
        if (make_spares(r))
            eventfd_write(r->wake_fd, 1);     /* more next round, after the others */
        if (worked) {
            struct timespec pause = {0, PAUSE_NS};
            nanosleep(&pause, NULL);
        }
    }
}

/* ---- the worker's side ---------------------------------------------------- */

static int start_thread(struct rotator *r)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (r->have_cpus)
        pthread_attr_setaffinity_np(&attr, sizeof r->cpus, &r->cpus);
    int rc = pthread_create(&r->thread, &attr, rotator_main, r);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        return -rc;
    r->started = 1;
    return 0;
}

int rotator_init(struct rotator *r, int dirfd, const cpu_set_t *cpus, uint32_t keep)
{
    memset(r, 0, sizeof *r);
    r->keep = keep ? keep : 1;
    pthread_mutex_init(&r->lock, NULL);
    r->dirfd = dirfd;
    r->free_head = -1;
    r->unnamed = -1;
    r->inotify_fd = r->epfd = r->wake_fd = -1;
    if (cpus != NULL) {
        r->cpus = *cpus;
        r->have_cpus = 1;
    }
    r->spare_dirfd = -1;
    r->spare_wd = -1;
    r->buckets = malloc(NBUCKETS * sizeof *r->buckets);
    r->spares = malloc(SPARE_MAX * sizeof *r->spares);
    r->retired = malloc(r->keep * sizeof *r->retired);
    if (r->buckets == NULL || r->spares == NULL || r->retired == NULL) {
        rotator_close(r);
        return -ENOMEM;
    }
    memset(r->buckets, 0xff, NBUCKETS * sizeof *r->buckets);     /* -1: empty */
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->inotify_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    int err = 0;
    if (r->epfd < 0 || r->wake_fd < 0 || r->inotify_fd < 0)
        err = errno;
    /* The directory's own path: inotify watches a path, not a descriptor. */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", dirfd);
    if (err == 0 && inotify_add_watch(r->inotify_fd, path, IN_MODIFY | IN_ONLYDIR) < 0)
        err = errno;
    if (err == 0 && mkdirat(dirfd, ROTATOR_SPARE_DIR, 0700) < 0 && errno != EEXIST)
        err = errno;
    if (err == 0 && mkdirat(dirfd, ROTATOR_SPARE_DIR "/.new", 0700) < 0 && errno != EEXIST)
        err = errno;
    if (err == 0) {
        r->spare_dirfd = openat(dirfd, ROTATOR_SPARE_DIR,
                                O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (r->spare_dirfd < 0)
            err = errno;
    }
    if (err == 0) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", r->spare_dirfd);
        r->spare_wd = inotify_add_watch(r->inotify_fd, path, IN_MOVED_TO | IN_ONLYDIR);
        if (r->spare_wd < 0)
            err = errno;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = KEY_INOTIFY;
    if (err == 0 && epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->inotify_fd, &ev) < 0)
        err = errno;
    ev.data.u32 = KEY_WAKE;
    if (err == 0 && epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wake_fd, &ev) < 0)
        err = errno;
    if (err == 0)
        err = -start_thread(r);

    if (err != 0) {
        rotator_close(r);
        return -err;
    }
    return 0;
}

/* A chunk more of free slots (lock held). */
static int grow(struct rotator *r)
{
    if (r->nchunks == ROTATOR_MAX_CHUNKS)
        return -EMFILE;
    struct log_stream *chunk = calloc(ROTATOR_CHUNK, sizeof *chunk);
    if (chunk == NULL)
        return -ENOMEM;
    int32_t base = r->nchunks * ROTATOR_CHUNK;
    r->chunks[r->nchunks++] = chunk;
    for (int32_t i = ROTATOR_CHUNK - 1; i >= 0; i--) {
        chunk[i].next = r->free_head;
        r->free_head = base + i;
    }
    return 0;
}

int rotator_take(struct rotator *r, struct log_spare *out)
{
    pthread_mutex_lock(&r->lock);
    int got = r->nspares > 0 ? r->spares[--r->nspares].fd : -1;
    if (got >= 0)
        *out = r->spares[r->nspares];
    int wake = r->nspares <= SPARE_TARGET / 2 && !r->asked;
    r->asked |= wake;        /* once, until a round has made some */
    pthread_mutex_unlock(&r->lock);
    if (wake)
        eventfd_write(r->wake_fd, 1);
    return got;
}

void rotator_put_back(struct rotator *r, const struct log_spare *sp)
{
    pthread_mutex_lock(&r->lock);
    int kept = r->nspares < SPARE_MAX;
    if (kept)
        r->spares[r->nspares++] = *sp;
    pthread_mutex_unlock(&r->lock);
    if (!kept) {
        close(sp->fd);
        unlinkat(sp->dirfd, sp->name, 0);
    }
}

int rotator_add(struct rotator *r, uint32_t dom, int fd, uint64_t max_bytes, uint32_t backups,
                const struct log_spare *from)
{
    pthread_mutex_lock(&r->lock);
    int rc = r->free_head < 0 ? grow(r) : 0;
    if (rc < 0) {
        pthread_mutex_unlock(&r->lock);
        return rc;
    }
    int32_t i = r->free_head;
    struct log_stream *s = slot_at(r, i);
    r->free_head = s->next;
    uint64_t key = stream_key(dom, fd);
    int32_t old = map_find(r, key);
    if (old >= 0)             /* the same domain's stream again (cannot be): the newest wins */
        map_remove(r, old);
    s->key = key;
    s->in_use = 1;
    s->dirty = 0;
    s->start = 0;
    s->rotated = 0;
    s->max_bytes = max_bytes > BLOCK ? max_bytes : BLOCK;
    s->backups = backups;
    rotator_name(s->name, sizeof s->name, dom, fd);
    uint32_t b = bucket_of(key);
    s->next = r->buckets[b];
    r->buckets[b] = i;
    s->unnamed = from != NULL ? UNNAMED : NAMED;
    s->late = 0;
    if (from != NULL) {
        s->from = *from;
        s->from.fd = -1;
        s->next_unnamed = r->unnamed;
        r->unnamed = i;
    }
    pthread_mutex_unlock(&r->lock);
    if (from != NULL)
        eventfd_write(r->wake_fd, 1);
    return i;
}

void rotator_end(struct rotator *r, int slot)
{
    pthread_mutex_lock(&r->lock);
    struct log_stream *s = slot_at(r, slot);
    wait_named(r, s);
    if (s->unnamed == UNNAMED) {
        s->late = name_file(r, s);     /* checked before it is freed */
        s->unnamed = NAMED;
    }
    int wake = 0;
    if (r->nended == r->ended_cap) {
        int32_t cap = r->ended_cap ? r->ended_cap * 2 : 256;
        int32_t *grown = realloc(r->ended, (size_t)cap * sizeof *grown);
        if (grown != NULL) {
            r->ended = grown;
            r->ended_cap = cap;
        }
    }
    if (r->nended < r->ended_cap) {
        r->ended[r->nended++] = slot;
        wake = r->nended % END_BATCH == 0;
    }
    /* (no room: the slot is not reused, a few bytes lost until exit) */
    pthread_mutex_unlock(&r->lock);
    if (wake)
        eventfd_write(r->wake_fd, 1);
}

void rotator_abandon(struct rotator *r, int slot)
{
    pthread_mutex_lock(&r->lock);
    struct log_stream *s = slot_at(r, slot);
    wait_named(r, s);
    if (s->unnamed == UNNAMED)
        unlinkat(s->from.dirfd, s->from.name, 0);
    else
        unlinkat(r->dirfd, s->name, 0);
    s->unnamed = NAMED;
    pthread_mutex_unlock(&r->lock);
    rotator_end(r, slot);
}

void rotator_close(struct rotator *r)
{
    if (r->started) {
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.u32 = KEY_STOP;
        int stop = eventfd(1, EFD_CLOEXEC);
        if (stop >= 0 && epoll_ctl(r->epfd, EPOLL_CTL_ADD, stop, &ev) == 0)
            pthread_join(r->thread, NULL);
        if (stop >= 0)
            close(stop);
        r->started = 0;
    }
    for (int32_t c = 0; c < r->nchunks; c++) {
        free(r->chunks[c]);
        r->chunks[c] = NULL;
    }
    r->nchunks = 0;
    free(r->buckets);
    free(r->ended);
    for (int32_t i = 0; r->spares != NULL && i < r->nspares; i++)
        close(r->spares[i].fd);
    free(r->spares);
    free(r->retired);
    r->retired = NULL;
    r->buckets = NULL;
    r->ended = NULL;
    r->spares = NULL;
    if (r->spare_dirfd >= 0)
        close(r->spare_dirfd);
    r->spare_dirfd = -1;
    int *fds[] = {&r->inotify_fd, &r->epfd, &r->wake_fd};
    for (int i = 0; i < 3; i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
    pthread_mutex_destroy(&r->lock);
}
