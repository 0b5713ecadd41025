/* The fault-injection target of tests/faults.rs. One program, several modes (argv[1]), each
 * following the common protocol: "ready", work, one deterministic result line, exit 0.
 *
 *   work            the main thread calls 16 small functions round after round (each round
 *                   is checked against the first); SIGUSR1 ends it
 *   exit <ms>       works like `work` and exits by itself after <ms> milliseconds
 *   storm           threads are created and exit continuously (each runs one round, checks
 *                   it, exits), up to 8 at a time; SIGUSR1 ends it
 *   rtsig           works; counts SIGRTMIN (each handler call also runs a round: the handler
 *                   runs through the hooked functions); the result line has the count
 *   fork            works; a line "fork" on stdin forks a child that runs 40 rounds plus
 *                   child_only() and exits 0; the parent reaps it and prints its status
 *   exec            works; a line "exec" on stdin re-executes this program in mode `execd`
 *                   (which says "execd", works, and prints "execd ok" on SIGUSR1)
 *   trap            works; a line "trap" on stdin calls deref(NULL): the fault lands on deref's
 *                   first instruction (inside its trampoline while hooked), and the SIGSEGV
 *                   handler points rdi at a good value, sleeps 150 ms and returns to retry
 *                   it; prints "trap ok" (a detach meanwhile must wait for that return)
 *   crash           works; a line on stdin ends it: "segv" stores through NULL in crash_store(),
 *                   "ill" executes ud2 in crash_ill() (both past the first bytes, which a hook
 *                   relocates), "exit3" exits with status 3; nothing handles the signals
 *   xmm             the main thread keeps known values in xmm0-15, x87 and MXCSR across a
 *                   spin loop written in assembly, and checks them after every spin: a tracer
 *                   that borrows this thread must give its FP state back unchanged */
#define _GNU_SOURCE /* REG_RDI */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>

#define F(n) __attribute__((noinline)) uint64_t g##n(uint64_t x) { return x * 6364136223846793005ull + n; }
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11) F(12) F(13) F(14) F(15)
typedef uint64_t (*fn)(uint64_t);
static fn table[] = {g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15};

__attribute__((noinline)) uint64_t one_round(int n) {
    uint64_t x = 1;
    for (int i = 0; i < n; i++) x = table[(x >> 7) % 16](x) ^ g3(i);
    return x;
}

__attribute__((noinline)) uint64_t child_only(uint64_t x) { return x * 3 + 1; }

static uint64_t expected;
static volatile sig_atomic_t rt_count;
static volatile sig_atomic_t rt_bad;

static void on_rt(int sig) {
    (void)sig;
    if (one_round(200) != one_round(200)) rt_bad = 1;
    rt_count++;
}

__attribute__((noinline)) uint64_t deref(volatile uint64_t *p) { return *p * 3 + 1; }

/* The faulting store comes after a few instructions of arithmetic, so it is in the
 * function's own bytes, not among the first ones a hook copies into its trampoline. */
__attribute__((noinline)) uint64_t crash_store(volatile uint64_t *p, uint64_t v) {
    uint64_t x = v * 2654435761u;
    x ^= x >> 13;
    x *= 0x9e3779b97f4a7c15ull;
    *p = x;
    return x;
}

__attribute__((noinline)) uint64_t crash_ill(uint64_t v) {
    uint64_t x = v * 2654435761u;
    x ^= x >> 13;
    if (x != 12345) __asm__ volatile("ud2");
    return x;
}
static uint64_t good_value = 7;

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    ucontext_t *uc = ctx;
    if ((greg_t)si->si_addr == uc->uc_mcontext.gregs[REG_RIP]) {
        /* The code it was to return to is gone (a detach did not wait). */
        static const char msg[] = "trap code gone\n";
        write(1, msg, sizeof msg - 1);
        _exit(70);
    }
    uc->uc_mcontext.gregs[REG_RDI] = (greg_t)&good_value;
    struct timespec t = {0, 150 * 1000 * 1000};
    nanosleep(&t, NULL);
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Reads a line from stdin if one is ready (the main loop polls between rounds). */
static int stdin_line(char *buf, int cap) {
    struct pollfd p = {0, POLLIN, 0};
    if (poll(&p, 1, 0) != 1) return 0;
    int n = 0;
    while (n < cap - 1) {
        char c;
        if (read(0, &c, 1) != 1 || c == '\n') break;
        buf[n++] = c;
    }
    buf[n] = 0;
    return 1;
}

static volatile int storm_bad, storm_live;
static volatile unsigned long storm_done;

static void *storm_thread(void *arg) {
    (void)arg;
    if (one_round(3000) != expected) storm_bad = 1;
    __atomic_add_fetch(&storm_done, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&storm_live, 1, __ATOMIC_RELAXED);
    return NULL;
}

static int mode_storm(void) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    say_ready();
    while (!stop_requested) {
        if (__atomic_load_n(&storm_live, __ATOMIC_RELAXED) >= 8) {
            sched_yield();
            continue;
        }
        __atomic_add_fetch(&storm_live, 1, __ATOMIC_RELAXED);
        pthread_t t;
        if (pthread_create(&t, &a, storm_thread, NULL) != 0) {
            __atomic_sub_fetch(&storm_live, 1, __ATOMIC_RELAXED);
            sched_yield();
        }
    }
    while (__atomic_load_n(&storm_live, __ATOMIC_RELAXED) > 0) sched_yield();
    printf("storm ok=%d many=%d\n", !storm_bad, storm_done > 10);
    return 0;
}

/* xmm0-15 hold i*0x0101..., x87 holds pi, MXCSR has round-toward-zero; a spin of `iters`
 * iterations runs with only general registers; then everything is compared. */
static int xmm_spin(unsigned long iters) {
    static uint8_t in[16][16] __attribute__((aligned(16))), out[16][16] __attribute__((aligned(16)));
    for (int r = 0; r < 16; r++)
        for (int b = 0; b < 16; b++) in[r][b] = (uint8_t)(r * 16 + b + 1);
    unsigned int mx_in = 0x1f80 | 0x6000, mx_old, mx_out;
    long double pi_out;
    __asm__ volatile("stmxcsr %0" : "=m"(mx_old));
    __asm__ volatile(
        "ldmxcsr %[mxi]\n\t"
        "fldpi\n\t"
        "movdqa 0(%[in]), %%xmm0\n\t movdqa 16(%[in]), %%xmm1\n\t"
        "movdqa 32(%[in]), %%xmm2\n\t movdqa 48(%[in]), %%xmm3\n\t"
        "movdqa 64(%[in]), %%xmm4\n\t movdqa 80(%[in]), %%xmm5\n\t"
        "movdqa 96(%[in]), %%xmm6\n\t movdqa 112(%[in]), %%xmm7\n\t"
        "movdqa 128(%[in]), %%xmm8\n\t movdqa 144(%[in]), %%xmm9\n\t"
        "movdqa 160(%[in]), %%xmm10\n\t movdqa 176(%[in]), %%xmm11\n\t"
        "movdqa 192(%[in]), %%xmm12\n\t movdqa 208(%[in]), %%xmm13\n\t"
        "movdqa 224(%[in]), %%xmm14\n\t movdqa 240(%[in]), %%xmm15\n\t"
        "1: dec %[n]\n\t jnz 1b\n\t"
        "movdqa %%xmm0, 0(%[out])\n\t movdqa %%xmm1, 16(%[out])\n\t"
        "movdqa %%xmm2, 32(%[out])\n\t movdqa %%xmm3, 48(%[out])\n\t"
        "movdqa %%xmm4, 64(%[out])\n\t movdqa %%xmm5, 80(%[out])\n\t"
        "movdqa %%xmm6, 96(%[out])\n\t movdqa %%xmm7, 112(%[out])\n\t"
        "movdqa %%xmm8, 128(%[out])\n\t movdqa %%xmm9, 144(%[out])\n\t"
        "movdqa %%xmm10, 160(%[out])\n\t movdqa %%xmm11, 176(%[out])\n\t"
        "movdqa %%xmm12, 192(%[out])\n\t movdqa %%xmm13, 208(%[out])\n\t"
        "movdqa %%xmm14, 224(%[out])\n\t movdqa %%xmm15, 240(%[out])\n\t"
        "fstpt %[pi]\n\t"
        "stmxcsr %[mxo]\n\t"
        "ldmxcsr %[mxold]\n\t"
        : [n] "+r"(iters), [pi] "=m"(pi_out), [mxo] "=m"(mx_out)
        : [in] "r"(in), [out] "r"(out), [mxi] "m"(mx_in), [mxold] "m"(mx_old)
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st");
    long double pi;
    __asm__("fldpi\n\t fstpt %0" : "=m"(pi));
    if (memcmp(in, out, sizeof in) != 0) return 1;
    if (mx_out != mx_in) return 2;
    if (memcmp(&pi, &pi_out, 10) != 0) return 3;
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "work";
    install_handlers();
    expected = one_round(3000);
    if (!strcmp(mode, "execd")) {
        printf("execd\n");
        fflush(stdout);
        while (!stop_requested)
            if (one_round(3000) != expected) { printf("MISMATCH\n"); return 1; }
        printf("execd ok\n");
        return 0;
    }
    if (!strcmp(mode, "storm")) return mode_storm();
    if (!strcmp(mode, "xmm")) {
        say_ready();
        unsigned long spins = 0;
        while (!stop_requested) {
            int r = xmm_spin(20000000);
            if (r) { printf("FP STATE CHANGED (%d) after %lu spins\n", r, spins); return 1; }
            spins++;
        }
        printf("xmm ok\n");
        return 0;
    }
    if (!strcmp(mode, "trap")) {
        struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
        sigaction(SIGSEGV, &sa, NULL);
    }
    if (!strcmp(mode, "rtsig")) {
        struct sigaction sa = {.sa_handler = on_rt, .sa_flags = SA_RESTART};
        sigaction(SIGRTMIN, &sa, NULL);
    }
    double deadline = argc > 2 && !strcmp(mode, "exit") ? now_ms() + atol(argv[2]) : 0;
    say_ready();
    unsigned long rounds = 0;
    int child_status = -1;
    while (!stop_requested) {
        if (one_round(3000) != expected) { printf("MISMATCH in round %lu\n", rounds); return 1; }
        rounds++;
        if (deadline && now_ms() >= deadline) { printf("exit by itself\n"); return 0; }
        char line[32];
        if ((!strcmp(mode, "fork") || !strcmp(mode, "exec") || !strcmp(mode, "trap") ||
             !strcmp(mode, "crash")) &&
            stdin_line(line, sizeof line)) {
            if (!strcmp(line, "segv")) crash_store(NULL, rounds);
            if (!strcmp(line, "ill")) crash_ill(rounds);
            if (!strcmp(line, "exit3")) exit(3);
            if (!strcmp(line, "trap")) {
                printf("trap %s\n", deref(NULL) == 22 ? "ok" : "BAD");
                fflush(stdout);
            }
            if (!strcmp(line, "fork")) {
                fflush(stdout);
                pid_t c = fork();
                if (c == 0) {
                    uint64_t acc = 0;
                    for (int i = 0; i < 40; i++) {
                        if (one_round(3000) != expected) _exit(3);
                        acc += child_only(i);
                        usleep(5000);
                    }
                    _exit(acc == 2380 ? 0 : 4);
                }
                int st;
                waitpid(c, &st, 0);
                child_status = WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
                printf("child status=%d\n", child_status);
                fflush(stdout);
            } else if (!strcmp(line, "exec")) {
                fflush(stdout);
                execl("/proc/self/exe", argv[0], "execd", (char *)NULL);
                printf("exec failed\n");
                return 1;
            }
        }
    }
    if (!strcmp(mode, "rtsig"))
        printf("rt=%d bad=%d usr2=%d\n", (int)rt_count, (int)rt_bad, (int)usr2_count);
    else
        printf("work ok\n");
    return 0;
}
