/*
 * The worker's log rotator: keeps each captured stream (procmgr.LOG) of
 * this core's dispatchers within its bounds on disk.
 *
 * A captured stream is a file the program writes itself: the worker opens
 * logs/CORE/DOM.stdout (or .stderr) for appending as the program's 1 or 2.
 * No pipe and no copy on the way: measured here, a program writing 64 KiB
 * at a time reached ~3,000 MB/s into a file and ~1,000 through a pipe to
 * another process, however that process moved the bytes on (read/write or
 * splice, pipe enlarged or not); docs/design.md, "Domain output". What the
 * program wrote is in the page cache when its write returns, so a crash
 * loses nothing the kernel took, and once the exit is reported everything
 * is in the file.
 *
 * Bounds: a thread of the worker (not pinned to the core's CPU) learns
 * from inotify which files grew and rotates a file whose data reached
 * max_bytes without losing a byte: the head of the file, up to a block
 * boundary, is copied to NAME.1 (older rotations shift to .2 .. .BACKUPS,
 * the oldest falls off) and then punched out (fallocate PUNCH_HOLE): the
 * program's appends land past it, untouched, and the blocks are freed. The
 * file keeps its length, so it is sparse: readers start at SEEK_DATA
 * (procmgr/client/logs.py). Where a file system cannot punch holes, the head is
 * copied and the file truncated instead -- what lands between the copy
 * and the truncation is then lost (as logrotate's copytruncate).
 *
 * A burst faster than the rotator notices can pass max_bytes until the
 * next rotation (it rests PAUSE_NS after a round with work); the rotation
 * then fills as many rotated files as the burst holds, each at most
 * max_bytes, so the bound holds again after it and what is kept has no gap.
 *
 * Spare files: a captured stream needs its file when the program starts,
 * and creating a file is the dearest part of that: ~10 us on tmpfs, and
 * ~1.2 ms on this machine's /tmp (where /var/tmp, on the same file system,
 * takes 20 us); raw posix_spawn of /bin/true takes ~500 us in all. So the
 * rotator thread keeps a pool of empty files in .spare/ (created ahead,
 * away from the spawn path), the worker hands one to the program for each
 * captured stream (rotator_take), and a stream's file, once `keep` more
 * streams of this core have ended after it, is emptied and becomes a spare
 * where it is (its rotated files are unlinked). In steady state no file is
 * created at all. `keep` follows the manager's history: a
 * core's last `keep` ended streams include those of every domain of it the
 * manager still remembers, so a domain's log outlives the manager's memory
 * of it -- and the manager, whose thread every request waits for, never
 * touches a log file (it did, and that cost ~60 us a spawn).
 *
 * Naming: a spare gets its stream's name (DOM.stdout) by a rename, ~20 us
 * here, two for a spawn: the rotator thread does it, just after the spawn,
 * on whichever CPU is free, not the worker on the core's CPU the program
 * starts on. Until then a reader finds no file and reads nothing, as
 * before a program's first write; the worker names a stream still unnamed
 * itself when its dispatcher ends (rotator_end), so once an exit is
 * reported, every byte is under its name. A rename that fails (the spare
 * removed under us, the disk full) leaves the program writing into a file
 * nobody can find, as a log file unlinked under a running program does.
 *
 * Threads: the worker's thread registers a stream when it starts a
 * dispatcher (rotator_add) and lets go of it once the dispatcher has been
 * reaped (rotator_end); the rotator thread looks after the files -- but for
 * a name the worker gives a stream still unnamed as it ends, and a spare
 * of a spawn that failed, which it gives back or removes -- and it
 * frees a slot once it has read every event that came before the end. A
 * mutex guards the slot table, the name map, the list of ended slots and
 * the pool of spare names.
 */
#ifndef PROCMGR_ROTATOR_H
#define PROCMGR_ROTATOR_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/types.h>

#define ROTATOR_NAME 48
#define ROTATOR_CHUNK 256
#define ROTATOR_MAX_CHUNKS 8192    /* 2M streams: far past any descriptor limit */
#define ROTATOR_SPARE_DIR ".spare"
#define SPARE_MAX 64               /* spare files kept (each open): more are unlinked */

enum { NAMED = 0, UNNAMED = 1, NAMING = 2 };

/* A spare file: empty, open for appending, at `name` in `dirfd` (.spare/,
 * or the core's directory for an ended stream's own file). */
struct log_spare {
    char name[ROTATOR_NAME];
    int fd;
    int dirfd;
};

struct log_stream {
    uint64_t key;              /* dom << 2 | fd: what the file is named after */
    int32_t next;              /* name map chain, or the free list */
    int32_t next_dirty;        /* rotator thread: this round's list */
    int32_t next_unnamed;      /* the list of streams to name */
    int in_use, dirty;
    int unnamed;               /* NAMED; UNNAMED: its file is still at `from`;
                                  NAMING: the rotator thread is renaming it */
    int late;                  /* named as it ended, maybe past its bound: check it */
    struct log_spare from;
    uint64_t start;            /* rotator thread: where the data begins (after holes) */
    int rotated;               /* rotator thread: it has rotated files */
    uint64_t max_bytes;
    uint32_t backups;
    char name[ROTATOR_NAME];   /* "DOM.stdout" in the core's logs directory */
};

struct rotator {
    pthread_mutex_t lock;
    int dirfd;                 /* the core's logs directory */
    int inotify_fd, epfd, wake_fd;
    pthread_t thread;
    int started, stopping;
    int have_cpus;
    cpu_set_t cpus;
    /* Slots live in chunks that never move or go away: the rotator thread
     * works on a slot's file without holding the lock. */
    struct log_stream *chunks[ROTATOR_MAX_CHUNKS];
    int32_t nchunks, free_head;
    int32_t *buckets;          /* key -> slot chains */
    uint32_t nbuckets;
    int32_t *ended;            /* slots let go of, not yet freed */
    int32_t nended, ended_cap;
    int spare_dirfd;           /* .spare/ in the core's logs directory */
    int spare_wd;              /* its inotify watch (files renamed into it) */
    struct log_spare *spares;  /* ready: a stack */
    int32_t nspares;
    int32_t unnamed;           /* streams whose spare is to be renamed to theirs */
    int asked;                 /* spawns took spares: make more */
    uint64_t made;             /* rotator thread: spare files it created */
    uint64_t *retired;         /* rotator thread: keys of ended streams, oldest first (a ring) */
    uint32_t keep, retired_head, nretired;
};

/* 0, or -errno. dirfd: the core's logs directory, the caller's until
 * rotator_close. cpus: where the thread may run (NULL: as the caller).
 * keep: ended streams whose files are kept (at least 1). */
int rotator_init(struct rotator *r, int dirfd, const cpu_set_t *cpus, uint32_t keep);
/* A spare file into *out (its descriptor the caller's from now on, and
 * also the return value); or -1 if none is ready (the file is created
 * then). */
int rotator_take(struct rotator *r, struct log_spare *out);
/* A spare taken and not used (the spawn failed): back to the stack. */
void rotator_put_back(struct rotator *r, const struct log_spare *sp);
/* A stream of dispatcher `dom` at descriptor fd (1 or 2): its slot, or
 * -errno. from: the spare its program was given, to be named (its
 * descriptor no longer used); NULL if the file has its name already. */
int rotator_add(struct rotator *r, uint32_t dom, int fd, uint64_t max_bytes, uint32_t backups,
                const struct log_spare *from);
/* The dispatcher is gone: the stream is named now if it is not yet,
 * checked once more, then freed. */
void rotator_end(struct rotator *r, int slot);
/* The stream's program was killed before it was reported started (its
 * other stream could not be registered): its file goes, named or not. */
void rotator_abandon(struct rotator *r, int slot);
void rotator_close(struct rotator *r);
/* "DOM.stdout" / "DOM.stderr": the file of a stream (procmgr/client/logs.py reads it). */
void rotator_name(char *buf, size_t size, uint32_t dom, int fd);

#endif
