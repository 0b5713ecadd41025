/* Target of tests/hook.rs: three functions to hook, a deterministic workload, commands on
 * stdin (one per line):
 *   run   -> one round (f1 called 1000 times, f3 7 times, f2 never), prints "sum=<hex>"
 *   quit  -> with argv[1] == "threads": stops the 8 workers and prints their verdict;
 *            prints "bye" and exits 0.
 * With argv[1] == "threads", 8 workers repeat the same round in a tight loop from start to
 * quit, each checking every round gives the same result. */
#include "common.h"
#include <pthread.h>
#include <stdint.h>

#define NOIPA __attribute__((noipa))

NOIPA uint64_t f1(uint64_t x) { return x * 6364136223846793005ull + 1442695040888963407ull; }
NOIPA uint64_t f2(uint64_t x) { return x ^ (x >> 17); }
NOIPA uint64_t f3(uint64_t x, uint64_t y) { return (x << 7) + y * 3 + (x >> 57); }

static uint64_t one_round(void) {
    uint64_t s = 1;
    for (int i = 0; i < 1000; i++) s = f1(s);
    for (int i = 0; i < 7; i++) s = f3(s, (uint64_t)i);
    return s;
}

#define NT 8
static volatile int stop_workers;
static uint64_t first[NT];
static unsigned long rounds[NT];
static int bad[NT];

static void *worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    while (!stop_workers) {
        uint64_t r = one_round();
        if (rounds[id] == 0) first[id] = r;
        else if (r != first[id]) bad[id] = 1;
        rounds[id]++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 && strcmp(argv[1], "threads") == 0;
    install_handlers();
    pthread_t t[NT];
    if (threads)
        for (uintptr_t i = 0; i < NT; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    say_ready();
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "run", 3) == 0) {
            printf("sum=%016llx\n", (unsigned long long)one_round());
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
        fflush(stdout);
    }
    if (threads) {
        stop_workers = 1;
        uint64_t sum = 0;
        int ok = 1;
        for (int i = 0; i < NT; i++) {
            pthread_join(t[i], NULL);
            if (bad[i] || rounds[i] == 0 || first[i] != one_round()) ok = 0;
            sum += first[i];
        }
        printf("threads %s checksum=%016llx\n", ok ? "ok" : "MISMATCH", (unsigned long long)sum);
    }
    printf("bye\n");
    fflush(stdout);
    return 0;
}
