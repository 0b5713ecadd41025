/* Corpus target (linked with gcc -static): deterministic CPU-bound work through many small
 * functions. Each line on stdin is a number of rounds to run; at end of input it prints the
 * checksum of all of them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long mix(unsigned long h, unsigned long v) { return (h ^ v) * 1099511628211UL; }
static int cmp(const void *a, const void *b) {
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}
static unsigned long round_work(unsigned r) {
    unsigned v[512];
    char buf[64];
    unsigned long h = 14695981039346656037UL;
    for (unsigned i = 0; i < 512; i++) v[i] = (i * 2654435761u) ^ r;
    qsort(v, 512, sizeof v[0], cmp);
    for (unsigned i = 0; i < 512; i += 16) {
        snprintf(buf, sizeof buf, "%u:%x", i, v[i]);
        h = mix(h, strlen(buf));
        h = mix(h, v[i]);
    }
    return h;
}
int main(void) {
    char line[64];
    unsigned long h = 0, r = 0;
    while (fgets(line, sizeof line, stdin)) {
        unsigned long n = strtoul(line, NULL, 10);
        for (unsigned long end = r + n; r < end; r++) h = mix(h, round_work((unsigned)r));
    }
    printf("checksum %lx\n", h);
    return 0;
}
