/* Threads copying memory through glibc's string functions and formatting with stdio, for
 * hooking all of libc (built once with -static, once against libc.so.6). glibc's
 * __mempcpy_*_unaligned_erms jump to __memcpy_*_unaligned_erms+3: a patch over that byte
 * makes the next mempcpy run half an instruction.
 *
 * Round protocol (see README.md): prints "ready"; each line on stdin runs one round of 4
 * threads, each doing the same deterministic work many times and checking it gives the same
 * checksum every time; the round prints one line per thread and "round N end". At end of
 * input prints "bye rounds=N" and exits 0. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define REPEATS 40
#define BIG 70000

/* Called through pointers the compiler cannot see through, so every call reaches the
 * implementation glibc selected for this CPU (no inlined or folded copies). */
static void *(*volatile p_mempcpy)(void *, const void *, size_t) = mempcpy;
static void *(*volatile p_memcpy)(void *, const void *, size_t) = memcpy;
static void *(*volatile p_memmove)(void *, const void *, size_t) = memmove;
static int (*volatile p_snprintf)(char *, size_t, const char *, ...) = snprintf;

static FILE *devnull;

static uint64_t fnv(const unsigned char *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* One pass of the work: sizes from 0 to BIG bytes (every copy strategy: small, vector
 * loops, `rep movsb`, non-temporal stores for the largest), overlapping moves, and
 * formatting, which copies through the same functions inside stdio. */
__attribute__((noinline)) static uint64_t work(unsigned id, unsigned char *src, unsigned char *dst) {
    uint64_t h = 0xcbf29ce484222325ull ^ id;
    static const size_t sizes[] = {0,    1,    2,    3,    7,    8,    15,   16,    17,
                                   31,   32,   33,   63,   64,   65,   127,  128,   129,
                                   255,  256,  257,  511,  512,  1000, 2047, 2048,  2049,
                                   4095, 4096, 4097, 8191, 8192, 16385, 33000, BIG - 64};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k], off = (k * 7 + id) % 61;
        unsigned char *end = p_mempcpy(dst + off, src + (k * 13) % 64, n);
        if (end != dst + off + n) return 0;
        h = fnv(dst + off, n, h);
        p_memcpy(dst, src + off, n);
        h = fnv(dst, n, h);
        if (n > 8) {
            p_memmove(dst + 3, dst, n - 8);
            h = fnv(dst, n, h);
        }
    }
    /* A string built piece by piece with mempcpy, then formatted. */
    char line[512], *p = line;
    for (unsigned i = 0; i < 20; i++) {
        char piece[32];
        int len = p_snprintf(piece, sizeof piece, "<%u:%x>", id * 100 + i, i * 2654435761u);
        p = p_mempcpy(p, piece, (size_t)len);
    }
    *p = 0;
    char out[1024];
    int n = p_snprintf(out, sizeof out, "%s|%-20s|%10.4f|%lld|%s", line, "pad", id / 3.0,
                       (long long)h, (const char *)src + 100);
    h = fnv((const unsigned char *)out, (size_t)n, h);
    fprintf(devnull, "%s %u %s\n", out, id, line);
    return h;
}

struct job {
    unsigned id;
    uint64_t sum;
    unsigned mismatches;
};

__attribute__((noinline)) static void *thread(void *arg) {
    struct job *j = arg;
    unsigned char *src = malloc(BIG + 128), *dst = malloc(BIG + 128);
    if (!src || !dst) abort();
    for (size_t i = 0; i < BIG + 128; i++) src[i] = (unsigned char)(i * 31 + j->id + (i >> 8));
    src[BIG + 127] = 0;
    for (size_t i = 100; i < 160; i++) src[i] = (unsigned char)('a' + i % 26);
    src[160] = 0;
    j->sum = work(j->id, src, dst);
    for (int r = 1; r < REPEATS; r++)
        if (work(j->id, src, dst) != j->sum) j->mismatches++;
    free(src);
    free(dst);
    return NULL;
}

int main(void) {
    devnull = fopen("/dev/null", "w");
    if (!devnull) return 2;
    printf("ready\n");
    fflush(stdout);
    char cmd[64];
    unsigned rounds = 0;
    while (fgets(cmd, sizeof cmd, stdin)) {
        rounds++;
        struct job jobs[THREADS];
        pthread_t t[THREADS];
        for (unsigned i = 0; i < THREADS; i++) {
            jobs[i] = (struct job){.id = i};
            if (pthread_create(&t[i], NULL, thread, &jobs[i])) return 3;
        }
        for (unsigned i = 0; i < THREADS; i++) {
            pthread_join(t[i], NULL);
            printf("round %u thread %u sum=%016llx mismatches=%u\n", rounds, i,
                   (unsigned long long)jobs[i].sum, jobs[i].mismatches);
        }
        printf("round %u end\n", rounds);
        fflush(stdout);
    }
    printf("bye rounds=%u\n", rounds);
    return 0;
}
