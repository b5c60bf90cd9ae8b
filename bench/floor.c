/*
 * The kernel floor of a sampling tick: one ETHTOOL_GSTATS per interface, nothing else.
 *
 *   floor ROUNDS PAUSE_MS IFNAME...
 *
 * Opens one socket, asks each interface's stat count once (ETHTOOL_GSSET_INFO) and sizes
 * one buffer per interface, then issues ROUNDS rounds of one ETHTOOL_GSTATS per interface.
 * Prints the process CPU time (user + system, CLOCK_PROCESS_CPUTIME_ID) per round and per
 * interface: what any agent must spend at least, whatever language it is written in.
 * PAUSE_MS > 0 sleeps that long between rounds, as an agent does between ticks: caches and
 * TLBs then go cold between rounds as they do for the agent, which a tight loop (PAUSE_MS 0)
 * hides. The CPU clock does not advance while asleep.
 * Part of bench/run (see docs/performance.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int ethtool(int fd, const char *name, void *cmd) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_data = cmd;
    return ioctl(fd, SIOCETHTOOL, &ifr);
}

/* One round: one GSTATS per interface, with the cached count. */
static int read_all(int fd, int n, char **names, const uint32_t *counts, struct ethtool_stats **bufs) {
    for (int i = 0; i < n; i++) {
        bufs[i]->cmd = ETHTOOL_GSTATS;
        bufs[i]->n_stats = counts[i];
        if (ethtool(fd, names[i], bufs[i]) < 0) {
            fprintf(stderr, "floor: GSTATS %s: %s\n", names[i], strerror(errno));
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: floor ROUNDS PAUSE_MS IFNAME...\n");
        return 2;
    }
    long rounds = strtol(argv[1], NULL, 10);
    long pause_ms = strtol(argv[2], NULL, 10);
    struct timespec pause = {.tv_sec = pause_ms / 1000, .tv_nsec = (pause_ms % 1000) * 1000000};
    int n = argc - 3;
    char **names = argv + 3;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct ethtool_stats **bufs = calloc((size_t)n, sizeof *bufs);
    uint32_t *counts = calloc((size_t)n, sizeof *counts);
    long total_stats = 0;
    for (int i = 0; i < n; i++) {
        struct {
            struct ethtool_sset_info hdr;
            uint32_t data[1];
        } info = {.hdr = {.cmd = ETHTOOL_GSSET_INFO, .sset_mask = 1ULL << ETH_SS_STATS}};
        if (ethtool(fd, names[i], &info) < 0 || !(info.hdr.sset_mask & (1ULL << ETH_SS_STATS))) {
            fprintf(stderr, "floor: %s: no ethtool statistics (%s)\n", names[i], strerror(errno));
            return 1;
        }
        counts[i] = info.data[0];
        total_stats += counts[i];
        bufs[i] = calloc(1, sizeof(struct ethtool_stats) + counts[i] * sizeof(uint64_t));
    }
    /* One warm-up round: first-touch page faults are not part of the floor. */
    if (read_all(fd, n, names, counts, bufs) < 0) return 1;
    int64_t cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID), wall0 = now_ns(CLOCK_MONOTONIC);
    for (long r = 0; r < rounds; r++) {
        if (pause_ms > 0) nanosleep(&pause, NULL);
        if (read_all(fd, n, names, counts, bufs) < 0) return 1;
    }
    int64_t cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0, wall = now_ns(CLOCK_MONOTONIC) - wall0;
    printf("floor interfaces=%d stats=%ld rounds=%ld pause_ms=%ld cpu_ns_per_round=%.0f cpu_ns_per_interface=%.1f "
           "wall_ns_per_round=%.0f\n",
           n, total_stats, rounds, pause_ms, (double)cpu / rounds, (double)cpu / rounds / n, (double)wall / rounds);
    return 0;
}
