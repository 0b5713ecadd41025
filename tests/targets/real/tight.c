/* 8 threads calling small functions in tight loops, for attaching and detaching while they
 * run. Each thread repeats one deterministic batch until told to stop and checks that every
 * batch gave the same checksum (a clobbered register or a lost update shows as a mismatch).
 *
 * Protocol: prints "ready"; a first line on stdin starts the threads (prints "started"); the
 * next line or end of input stops them; then prints one line per thread and "bye", exits 0.
 * The output does not depend on how many batches ran. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__clang__)
#define NOIPA __attribute__((noinline, used))
#else
#define NOIPA __attribute__((noipa, used))
#endif

#define N 8
static int stop_flag;
static uint64_t first_sum[N];
static unsigned long mismatches[N], batches[N];

NOIPA uint64_t t_mix(uint64_t x, uint64_t k) { return (x ^ k) * 0x9e3779b97f4a7c15ull; }
NOIPA uint64_t t_rot(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
NOIPA int t_tiny(int x) { return x + 1; }
NOIPA double t_fp(double a, double b, double c) { return a * 0.999 + b * c; }
NOIPA uint64_t t_leaf(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f) {
    return a + 3 * b + 5 * c + 7 * d + 11 * e + 13 * f;
}

NOIPA uint64_t batch(uint64_t id) {
    uint64_t x = id + 1;
    double d = (double)id;
    int t = 0;
    for (int i = 0; i < 3000; i++) {
        x = t_mix(x, (uint64_t)i);
        x = t_rot(x, i % 63 + 1);
        t = t_tiny(t);
        d = t_fp(d, (double)i, 0.001);
        x ^= t_leaf(x, id, (uint64_t)i, (uint64_t)t, x >> 7, 42);
    }
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return x ^ bits ^ (uint64_t)t;
}

static void *worker(void *arg) {
    uint64_t id = (uintptr_t)arg;
    first_sum[id] = batch(id);
    batches[id] = 1;
    while (!__atomic_load_n(&stop_flag, __ATOMIC_RELAXED)) {
        if (batch(id) != first_sum[id]) mismatches[id]++;
        batches[id]++;
    }
    return NULL;
}

int main(void) {
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 2;
    pthread_t th[N];
    for (uintptr_t i = 0; i < N; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    printf("started\n");
    fflush(stdout);
    (void)!fgets(line, sizeof line, stdin);
    __atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
    uint64_t all = 0;
    unsigned long total = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        printf("thread %d checksum=%016llx mismatches=%lu\n", i,
               (unsigned long long)first_sum[i], mismatches[i]);
        all ^= first_sum[i];
        total += batches[i];
    }
    fprintf(stderr, "tight: %lu batches\n", total);
    printf("bye all=%016llx\n", (unsigned long long)all);
    return 0;
}
