/*
 * The hardware ceiling for the ring: the same _ring.c, driven from C by two
 * processes (fork), no Python anywhere. Prints "single MSGS_PER_S" and
 * "batch MSGS_PER_S" for 64-byte messages.
 *
 *   c_ceiling [COUNT [single|batch]]   (default: both; single sends COUNT/4)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "_ring.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double run(uint64_t count, uint64_t batch)
{
    uint64_t size;
    rb_segment_size(16384, 64, &size);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    rb_init(mem, size, 16384, 64, 0, getpid());
    int ready[2];
    if (pipe(ready) != 0)
        exit(1);
    pid_t child = fork();
    if (child == 0) {                     /* consumer */
        struct rb_handle h;
        rb_open(&h, mem, size, RB_ATTACHER);
        uint8_t *buf = malloc(64 * (batch ? batch : 1));
        if (write(ready[1], "x", 1) != 1)
            _exit(1);
        uint64_t got = 0;
        while (got < count) {
            int64_t n = batch ? rb_pop_many(&h, buf, batch, 64) : (rb_pop(&h, buf, 64) >= 0);
            if (n <= 0)
                rb_wait(&h, RB_WAIT_DATA, 100000000, 1);
            else
                got += (uint64_t)n;
        }
        _exit(0);
    }
    struct rb_handle h;
    rb_open(&h, mem, size, RB_CREATOR);
    char c;
    if (read(ready[0], &c, 1) != 1)
        exit(1);
    uint8_t *msgs = calloc(batch ? batch : 1, 64);
    double t0 = now();
    uint64_t sent = 0;
    while (sent < count) {
        int64_t n;
        if (batch) {
            uint64_t want = count - sent < batch ? count - sent : batch;
            n = rb_push_many(&h, msgs, want, 64);
        } else {
            n = rb_push(&h, msgs, 64) == RB_OK;
        }
        if (n <= 0)
            rb_wait(&h, RB_WAIT_SPACE, 100000000, 1);
        else
            sent += (uint64_t)n;
    }
    waitpid(child, NULL, 0);
    double t = now() - t0;
    munmap(mem, size);
    return count / t;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 20000000;
    const char *only = argc > 2 ? argv[2] : "";
    if (strcmp(only, "batch") != 0)
        printf("single %.0f\n", run(n / 4, 0));
    if (strcmp(only, "single") != 0)
        printf("batch %.0f\n", run(n, 4096));
    return 0;
}
