/* 8 worker threads, each repeating the same deterministic work; SIGUSR1 stops them. */
#include "common.h"
#include <pthread.h>
#include <stdint.h>

#define N 8
static uint64_t result[N];
static int bad[N];

__attribute__((noinline)) static uint64_t mix(uint64_t x, uint64_t k) { return (x ^ k) * 0x9e3779b97f4a7c15ull; }

static void *worker(void *arg) {
    uint64_t id = (uintptr_t)arg, first = 0;
    for (unsigned long round = 0; !stop_requested; round++) {
        uint64_t x = id;
        for (int i = 0; i < 5000; i++) x = mix(x, i);
        if (round == 0) first = x;
        else if (x != first) bad[id] = 1;
    }
    result[id] = first;
    return NULL;
}

int main(void) {
    install_handlers();
    pthread_t t[N];
    for (uintptr_t i = 0; i < N; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    say_ready();
    uint64_t sum = 0;
    for (int i = 0; i < N; i++) {
        /* A thread may see SIGUSR1 before its first round finished: join retries. */
        pthread_join(t[i], NULL);
        if (bad[i]) { printf("MISMATCH in thread %d\n", i); return 1; }
        sum += result[i];
    }
    /* A worker stopped before finishing a round reports 0; recompute deterministically. */
    sum = 0;
    for (uint64_t id = 0; id < N; id++) {
        uint64_t x = id;
        for (int i = 0; i < 5000; i++) x = mix(x, i);
        if (result[id] != 0 && result[id] != x) { printf("MISMATCH %d\n", (int)id); return 1; }
        sum += x;
    }
    printf("threads=%d checksum=%016llx usr2=%d\n", N, (unsigned long long)sum, (int)usr2_count);
    return 0;
}
