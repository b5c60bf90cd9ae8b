/*
 * The CPU time of processes, in nanoseconds: what bench/run measures CPU with.
 *
 *   cpuclock PID...
 *
 * Prints one line per PID: the process's CPU clock (clock_getcpuclockid + clock_gettime),
 * user + system time of all its threads, including threads that have already exited.
 * Summing /proc/PID/task/<TID>/schedstat misses those (node_exporter's Go runtime ends
 * threads during a scrape), and utime+stime in /proc/PID/stat counts in clock ticks (10 ms).
 * Part of bench/run (see docs/performance.md).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cpuclock PID...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        clockid_t clock;
        struct timespec ts;
        int err = clock_getcpuclockid((pid_t)strtol(argv[i], NULL, 10), &clock);
        if (err != 0 || clock_gettime(clock, &ts) != 0) {
            fprintf(stderr, "cpuclock: %s: %s\n", argv[i], strerror(err ? err : 1));
            return 1;
        }
        printf("%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    }
    return 0;
}
