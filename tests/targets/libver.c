/* The library of versioned.c, built as libver.so.1.2.3 with the soname libver.so.1 (a
 * symlink libver.so.1 -> libver.so.1.2.3 beside it, as distributions install libraries). */
#include <stdint.h>

#define NOIPA __attribute__((noipa, used))

NOIPA uint64_t ver_a(uint64_t x) { return x * 2862933555777941757ull + 3037000493ull; }
NOIPA uint64_t ver_b(uint64_t x) { return x ^ (x >> 23); }
NOIPA uint64_t ver_never(uint64_t x) { return x + 1; }
