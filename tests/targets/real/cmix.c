/* A C program that exercises what an inline-hook interceptor must survive, built by the tests
 * at -O0, -O2 and -O3 (and with -DHAVE_AVX2 when the CPU has AVX2).
 *
 * Protocol: prints "ready", then for every line on stdin runs one round of deterministic work,
 * prints its transcript and "round N end"; at end of input prints "bye rounds=N", exits 0.
 * Everything printed depends only on the round number, so a run with xcover attached must
 * print exactly what a run without it prints. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef HAVE_AVX2
#include <immintrin.h>
#endif

/* The "static inline but not inlined" helpers and the never-returning dive() are on purpose. */
#pragma GCC diagnostic ignored "-Wattributes"
#pragma GCC diagnostic ignored "-Winfinite-recursion"
#pragma GCC diagnostic ignored "-Wpragmas"

#if defined(__clang__)
#define NOIPA __attribute__((noinline, used))
#else
#define NOIPA __attribute__((noipa, used))
#endif

/* ---- the running checksum ---- */
static uint64_t H;
NOIPA void feed(uint64_t v) { H = (H ^ v) * 1099511628211ull; }
NOIPA void feed_double(double d) {
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    feed(b);
}

/* ---- many small functions, called through a table ---- */
#define SMALL(n) NOIPA int small_##n(int x) { return x * (n + 3) + (n ^ 5); }
SMALL(0) SMALL(1) SMALL(2) SMALL(3) SMALL(4) SMALL(5) SMALL(6) SMALL(7)
SMALL(8) SMALL(9) SMALL(10) SMALL(11) SMALL(12) SMALL(13) SMALL(14) SMALL(15)
SMALL(16) SMALL(17) SMALL(18) SMALL(19) SMALL(20) SMALL(21) SMALL(22) SMALL(23)
SMALL(24) SMALL(25) SMALL(26) SMALL(27) SMALL(28) SMALL(29) SMALL(30) SMALL(31)
static int (*const smalls[32])(int) = {
    small_0, small_1, small_2, small_3, small_4, small_5, small_6, small_7,
    small_8, small_9, small_10, small_11, small_12, small_13, small_14, small_15,
    small_16, small_17, small_18, small_19, small_20, small_21, small_22, small_23,
    small_24, small_25, small_26, small_27, small_28, small_29, small_30, small_31,
};

/* Tiny functions: a few bytes each at -O2 (shorter than a 5-byte jump). */
NOIPA int tiny_zero(void) { return 0; }
NOIPA int tiny_id(int x) { return x; }
NOIPA void tiny_empty(void) {}

/* ---- function pointers ---- */
NOIPA int op_add(int a, int b) { return a + b; }
NOIPA int op_sub(int a, int b) { return a - b; }
NOIPA int op_mul(int a, int b) { return a * b; }
NOIPA int op_xor(int a, int b) { return a ^ b; }
typedef int (*binop)(int, int);
static binop const ops[4] = {op_add, op_sub, op_mul, op_xor};
NOIPA int apply(binop f, int a, int b) { return f(a, b); }

/* ---- recursion ---- */
NOIPA uint64_t fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
NOIPA unsigned long ack(unsigned long m, unsigned long n) {
    if (m == 0) return n + 1;
    if (n == 0) return ack(m - 1, 1);
    return ack(m - 1, ack(m, n - 1));
}

/* ---- a dense switch (a jump table) ---- */
NOIPA int jump_table(int k, int x) {
    switch (k) {
    case 0: return x + 11;
    case 1: return x * 3 - 1;
    case 2: return x ^ 0x5a5a;
    case 3: return (x << 3) + 7;
    case 4: return x / 3 + 100;
    case 5: return ~x;
    case 6: return x * x - 9;
    case 7: return (x >> 2) | 0x100;
    case 8: return x % 97 + 13;
    case 9: return -x + 42;
    case 10: return x * 7 + 700;
    case 11: return (x & 0xff) << 4;
    default: return x - 1;
    }
}

/* ---- tail calls (sibling calls at -O2) ---- */
NOIPA long tail_b(long n, long acc);
NOIPA long tail_a(long n, long acc) { if (n <= 0) return acc; return tail_b(n - 1, acc + 3); }
NOIPA long tail_b(long n, long acc) { if (n <= 0) return acc; return tail_a(n - 1, acc * 5 % 1000003); }

/* ---- static inline helpers that are not inlined ---- */
static inline __attribute__((noinline)) int sq_helper(int x) { return x * x + 1; }
static inline __attribute__((noinline)) int cube_helper(int x) { return sq_helper(x) * x; }

/* ---- variadic functions (al = number of vector registers used) ---- */
NOIPA double va_mix(const char *fmt, ...) {
    va_list ap;
    double acc = 0;
    va_start(ap, fmt);
    for (const char *p = fmt; *p; p++) {
        if (*p == 'd') acc = acc * 1.5 + va_arg(ap, double);
        else if (*p == 'i') acc = acc * 1.5 + va_arg(ap, int);
        else acc = acc * 1.5 + (double)va_arg(ap, long);
    }
    va_end(ap);
    return acc;
}
NOIPA long va_longs(int n, ...) {
    va_list ap;
    long s = 0;
    va_start(ap, n);
    for (int i = 0; i < n; i++) s = s * 31 + va_arg(ap, long);
    va_end(ap);
    return s;
}

/* ---- setjmp/longjmp through hooked frames ---- */
static jmp_buf jump_env;
NOIPA int dive(int depth, int v) {
    if (depth == 0) longjmp(jump_env, v);
    return dive(depth - 1, v + depth) ^ depth; /* not a tail call */
}
NOIPA int dive_via(binop f, int depth, int v) { return dive(depth, f(v, 1)) + 1; }

/* ---- signal handlers that call hooked functions ---- */
static volatile uint64_t sig_acc;
static volatile int sig_count;
static sigjmp_buf sig_env;
static volatile int sig_jump;
NOIPA uint64_t in_handler(int n) {
    uint64_t s = 0;
    for (int i = 0; i < 8; i++) s = s * 131 + (uint64_t)smalls[(n + i) & 31](n);
    return s + fib(10);
}
static void on_usr2(int sig) {
    (void)sig;
    sig_count++;
    sig_acc = sig_acc * 3 + in_handler(sig_count);
    if (sig_jump) siglongjmp(sig_env, sig_count);
}

/* ---- floating point arguments and results ---- */
NOIPA double fdot8(double a0, double a1, double a2, double a3, double a4, double a5, double a6,
                   double a7, int k, double a8, float a9) {
    return a0 * 1 + a1 * 2 + a2 * 3 + a3 * 4 + a4 * 5 + a5 * 6 + a6 * 7 + a7 * 8 + k * a8 +
           (double)a9;
}
NOIPA float fmix8(float a, float b, float c, float d, float e, float f, float g, float h) {
    return ((a - b) * (c + d) - (e * f)) / (g + h + 1.0f);
}
NOIPA long double fld(long double x, double y) { return x * 3 + y; }

/* ---- structs by value ---- */
struct vec2 { double x, y; };                /* xmm0:xmm1 */
struct mixed { long a; double b; };          /* rdi, xmm0 */
struct big { long a[5]; double d; };         /* memory */
NOIPA struct vec2 vrot(struct vec2 v, double c, double s) {
    struct vec2 r = {v.x * c - v.y * s, v.x * s + v.y * c};
    return r;
}
NOIPA double mixed_sum(struct mixed m, struct mixed n) { return (double)(m.a - n.a) + m.b * n.b; }
NOIPA struct big big_step(struct big b, int k) {
    for (int i = 0; i < 5; i++) b.a[i] = b.a[i] * 7 + k + i;
    b.d = b.d * 0.5 + k;
    return b;
}

/* ---- generic vectors in XMM registers ---- */
typedef double v2d __attribute__((vector_size(16)));
typedef float v4f __attribute__((vector_size(16)));
NOIPA v2d vsum8(v2d a, v2d b, v2d c, v2d d, v2d e, v2d f, v2d g, v2d h) {
    return a + b * 2 + c * 3 + d * 4 + e * 5 + f * 6 + g * 7 + h * 8;
}
NOIPA v4f vmul4(v4f a, v4f b, v4f c, v4f d) { return a * b - c * d; }

#ifdef HAVE_AVX2
/* ---- AVX arguments in YMM registers (AVX2 code only in these functions) ---- */
__attribute__((target("avx2"), noipa, used)) __m256d avx_comb(__m256d a, __m256d b, __m256d c,
                                                               __m256d d, __m256d e, __m256d f,
                                                               __m256d g, __m256d h) {
    __m256d s = _mm256_add_pd(_mm256_mul_pd(a, b), _mm256_mul_pd(c, d));
    s = _mm256_add_pd(s, _mm256_mul_pd(e, f));
    return _mm256_sub_pd(s, _mm256_mul_pd(g, h));
}
__attribute__((target("avx2"), noipa, used)) __m256i avx_ints(__m256i a, __m256i b) {
    return _mm256_add_epi64(_mm256_mullo_epi32(a, b), b);
}
__attribute__((target("avx2"), noipa, used)) void avx_round(int r) {
    __m256d v[8];
    for (int i = 0; i < 8; i++)
        v[i] = _mm256_set_pd(i + r, i * 0.5 - r, i * 1.25 + 1, -i - 0.75 * r);
    __m256d x = avx_comb(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    for (int k = 0; k < 16; k++) x = avx_comb(x, v[1], v[2], x, v[4], v[5], v[6], v[7]);
    double out[4];
    _mm256_storeu_pd(out, x);
    for (int i = 0; i < 4; i++) feed_double(out[i]);
    __m256i a = _mm256_set_epi64x(r, 2 * r + 1, 3, 5), b = _mm256_set_epi64x(7, 11, r + 13, 17);
    for (int k = 0; k < 16; k++) a = avx_ints(a, b);
    long long o[4];
    _mm256_storeu_si256((__m256i *)o, a);
    for (int i = 0; i < 4; i++) feed((uint64_t)o[i]);
    printf("  avx: %a %a %a %a\n", out[0], out[1], out[2], out[3]);
}
#endif

/* Never called: its hit count must stay 0. */
NOIPA int never_called(const char *s) {
    int h = 7;
    while (*s) h = h * 31 + *s++;
    return h ^ 0x1234;
}

NOIPA void round_work(int r) {
    H = 1469598103934665603ull;
    int acc = 0;
    for (int i = 0; i < 2000; i++) acc = smalls[(i * 7 + r) & 31](acc) & 0xffffff;
    acc += tiny_zero() + tiny_id(r);
    tiny_empty();
    feed((uint64_t)acc);
    printf("  smalls: %d\n", acc);

    int v = r;
    for (int i = 0; i < 400; i++) v = apply(ops[i & 3], v, i + 1) & 0xfffff;
    feed((uint64_t)v);
    printf("  ops: %d\n", v);

    uint64_t f = fib(20 + r % 3);
    unsigned long a = ack(2, 5 + r % 4) + ack(3, 3);
    feed(f);
    feed(a);
    printf("  fib: %llu ack: %lu\n", (unsigned long long)f, a);

    int j = r;
    for (int i = 0; i < 300; i++) j = jump_table((i * 5 + j) % 14, j) & 0xffff;
    feed((uint64_t)j);
    printf("  switch: %d\n", j);

    long t = tail_a(5000 + r, 1);
    feed((uint64_t)t);
    printf("  tail: %ld\n", t);

    int c = 0;
    for (int i = 0; i < 100; i++) c += cube_helper(i + r) % 1000 + sq_helper(i);
    feed((uint64_t)c);
    printf("  helpers: %d\n", c);

    double vd = va_mix("didldidddddddddddi", 1.5, r, 2.25, 7L, -3.5, 4, 0.125, 1.0, 2.0, 3.0,
                       4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 99);
    long vl = va_longs(9, 1L, 2L, 3L, 4L, 5L, 6L, 7L, 8L, (long)r);
    feed_double(vd);
    feed((uint64_t)vl);
    printf("  variadic: %a %ld\n", vd, vl);

    volatile int jumps = 0, jsum = 0;
    for (int i = 0; i < 50; i++) {
        int got = setjmp(jump_env);
        if (got == 0) {
            if (i & 1) dive(12 + i % 5, i + r);
            else dive_via(ops[i & 3], 12 + i % 5, i + r);
        } else {
            jumps = jumps + 1;
            jsum = jsum + got;
        }
    }
    feed((uint64_t)jsum);
    printf("  longjmp: %d jumps sum %d\n", jumps, jsum);

    sig_acc = 0;
    sig_count = 0;
    sig_jump = 0;
    for (int i = 0; i < 100; i++) raise(SIGUSR2);
    int sj = 0;
    sig_jump = 1;
    for (int i = 0; i < 20; i++) {
        int got = sigsetjmp(sig_env, 1);
        if (got == 0) raise(SIGUSR2);
        else sj += got;
    }
    sig_jump = 0;
    feed(sig_acc);
    printf("  signals: %d acc %llx siglongjmp %d\n", sig_count, (unsigned long long)sig_acc, sj);

    double fd = 0;
    float ff = 0;
    for (int i = 0; i < 200; i++) {
        fd = fdot8(fd * 0.001, i, 0.5, -1.25, r, 3.0, fd * 1e-4, 2.5, i & 7, 0.75, (float)i / 8);
        ff = fmix8(ff, 1.5f, (float)i, 2.0f, 0.25f, (float)r, ff * 0.5f, 3.0f);
    }
    long double ld = fld((long double)fd, 0.1 * r);
    feed_double(fd);
    feed_double((double)ff);
    feed_double((double)ld);
    printf("  float: %a %a %La\n", fd, (double)ff, ld);

    struct vec2 p = {1.0, (double)r};
    for (int i = 0; i < 100; i++) p = vrot(p, 0.8, 0.6);
    struct mixed m1 = {r, 2.5}, m2 = {3, -1.25};
    double ms = mixed_sum(m1, m2);
    struct big b = {{1, 2, 3, 4, 5}, 1.0};
    for (int i = 0; i < 10; i++) b = big_step(b, i + r);
    feed_double(p.x);
    feed_double(p.y);
    feed_double(ms);
    feed((uint64_t)(b.a[0] ^ b.a[4]));
    feed_double(b.d);
    printf("  structs: %a %a %a %ld %ld %a\n", p.x, p.y, ms, b.a[0], b.a[4], b.d);

    v2d va[8];
    for (int i = 0; i < 8; i++) va[i] = (v2d){i + 0.5, r - i * 0.25};
    v2d vs = vsum8(va[0], va[1], va[2], va[3], va[4], va[5], va[6], va[7]);
    for (int k = 0; k < 20; k++) vs = vsum8(vs * 0.01, va[1], va[2], va[3], vs * 0.001, va[5], va[6], va[7]);
    v4f f4 = vmul4((v4f){1, 2, 3, 4}, (v4f){r, 0.5f, -1, 2}, (v4f){0.25f, 0.5f, 1, 2}, (v4f){9, 8, 7, 6});
    feed_double(vs[0]);
    feed_double(vs[1]);
    feed_double(f4[0] + f4[1] * 2 + f4[2] * 3 + f4[3] * 4);
    printf("  vectors: %a %a %a %a %a %a\n", vs[0], vs[1], (double)f4[0], (double)f4[1],
           (double)f4[2], (double)f4[3]);
#ifdef HAVE_AVX2
    avx_round(r);
#endif
    printf("  checksum: %016llx\n", (unsigned long long)H);
}

static char altstack[1 << 16];

int main(int argc, char **argv) {
    (void)argv;
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_ONSTACK | SA_NODEFER;
    sigaction(SIGUSR2, &sa, NULL);
    if (argc > 100) return never_called(argv[0]);

    printf("ready\n");
    fflush(stdout);
    char line[256];
    int rounds = 0;
    while (fgets(line, sizeof line, stdin)) {
        rounds++;
        printf("round %d\n", rounds);
        round_work(rounds);
        printf("round %d end\n", rounds);
        fflush(stdout);
    }
    printf("bye rounds=%d\n", rounds);
    return 0;
}
