/* Target of tests/trap.rs: functions only a one-byte trap can hook, called in every place a
 * trap's signal is delicate, plus the target's own SIGTRAPs.
 *
 * `tr_entered` is entered at +1 by `tr_via` (`push %rbx; jmp tr_entered+1`), and nothing
 * separates the two: no jump form fits, the `int3` does. Both return 2*x+1.
 *
 * Reads commands on stdin, one per line, prints one line for each:
 *   calls N    tr_entered N times, tr_via N times              -> "calls N sum=<hex>"
 *   own        its own `int3` and raise(SIGTRAP), served by its own SA_SIGINFO handler
 *              (installed at start, unless argv[1] is "nohandler": then `int3` kills it)
 *   late       installs a second SIGTRAP handler (after attach), then as `own`
 *   insig      tr_entered 100 times inside a SIGUSR1 handler
 *   alt        tr_entered 100 times inside a SIGUSR2 handler on an alternate stack
 *   fork       a child calls tr_entered 100 times and exits with the low byte of the sum
 *   masked     4 threads that block every signal (pthread_sigmask) call tr_entered 1000
 *              times each
 *   spin       starts 4 threads calling tr_entered until "stop"   -> "spinning"
 *   stop       stops them                                          -> "stopped"
 *   sig        prints the SIGTRAP disposition: handler address and flags
 *   bench N    times N calls of tr_entered and of tr_via      -> "bench ns/call ..."
 * At end of input prints "bye" and exits 0. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t tr_entered(uint64_t x);
uint64_t tr_via(uint64_t x);
__asm__(".text\n"
        ".globl tr_entered\n"
        ".type tr_entered,@function\n"
        "tr_entered:\n"
        "  push %rbx\n"
        "  lea 1(%rdi,%rdi), %rax\n"
        "  pop %rbx\n"
        "  ret\n"
        ".size tr_entered, .-tr_entered\n"
        ".globl tr_via\n"
        ".type tr_via,@function\n"
        "tr_via:\n"
        "  push %rbx\n"
        "  jmp tr_entered+1\n"
        ".size tr_via, .-tr_via\n");

static volatile uint64_t sink;
static volatile int own_hits, late_hits, last_code;

static void on_trap(int sig, siginfo_t *si, void *uc) {
    (void)sig, (void)uc;
    own_hits++;
    last_code = si->si_code;
}

static void on_trap_late(int sig, siginfo_t *si, void *uc) {
    (void)sig, (void)uc;
    late_hits++;
    last_code = si->si_code;
}

static void on_usr(int sig) {
    (void)sig;
    uint64_t s = 0;
    for (int i = 0; i < 100; i++) s += tr_entered((uint64_t)i);
    sink += s;
}

static void own_traps(void) {
    __asm__ volatile("int3");
    int code_int3 = last_code;
    raise(SIGTRAP);
    printf("own hits=%d late=%d int3_code=%d raise_code=%d\n", own_hits, late_hits, code_int3,
           last_code);
}

static void *masked_worker(void *arg) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    uint64_t s = 0;
    for (int i = 0; i < 1000; i++) s += tr_entered((uint64_t)i);
    *(uint64_t *)arg = s;
    return NULL;
}

static volatile int spinning;
static volatile uint64_t spun[4];

static void *spin_worker(void *arg) {
    uint64_t i = 0, s = 0;
    while (spinning) s += tr_entered(i++);
    spun[(uintptr_t)arg] = s;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "nohandler") != 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_trap;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGTRAP, &sa, NULL);
    }
    struct sigaction su;
    memset(&su, 0, sizeof su);
    su.sa_handler = on_usr;
    sigaction(SIGUSR1, &su, NULL);
    su.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &su, NULL);
    stack_t ss = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    pthread_t spinners[4];

    printf("ready\n");
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        unsigned n;
        if (sscanf(line, "calls %u", &n) == 1) {
            uint64_t s = 0;
            for (unsigned i = 0; i < n; i++) s += tr_entered(i) + tr_via(i);
            printf("calls %u sum=%llx\n", n, (unsigned long long)s);
        } else if (!strncmp(line, "own", 3)) {
            own_traps();
        } else if (!strncmp(line, "late", 4)) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = on_trap_late;
            sa.sa_flags = SA_SIGINFO;
            sigaction(SIGTRAP, &sa, NULL);
            own_traps();
        } else if (!strncmp(line, "insig", 5)) {
            raise(SIGUSR1);
            printf("insig sink=%llx\n", (unsigned long long)sink);
        } else if (!strncmp(line, "alt", 3)) {
            raise(SIGUSR2);
            printf("alt sink=%llx\n", (unsigned long long)sink);
        } else if (!strncmp(line, "fork", 4)) {
            pid_t c = fork();
            if (c == 0) {
                uint64_t s = 0;
                for (int i = 0; i < 100; i++) s += tr_entered((uint64_t)i);
                _exit((int)(s & 0xff));
            }
            int st = 0;
            waitpid(c, &st, 0);
            printf("fork exited=%d status=%d signaled=%d\n", WIFEXITED(st), WEXITSTATUS(st),
                   WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        } else if (!strncmp(line, "masked", 6)) {
            pthread_t t[4];
            uint64_t sums[4];
            for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, masked_worker, &sums[i]);
            for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
            printf("masked sum=%llx\n", (unsigned long long)(sums[0] + sums[1] + sums[2] + sums[3]));
        } else if (!strncmp(line, "spin", 4)) {
            spinning = 1;
            for (uintptr_t i = 0; i < 4; i++)
                pthread_create(&spinners[i], NULL, spin_worker, (void *)i);
            printf("spinning\n");
        } else if (!strncmp(line, "stop", 4)) {
            spinning = 0;
            for (int i = 0; i < 4; i++) pthread_join(spinners[i], NULL);
            printf("stopped\n");
        } else if (!strncmp(line, "sig", 3)) {
            struct sigaction cur;
            sigaction(SIGTRAP, NULL, &cur);
            /* Relative to main: the same in every run whatever the load address. */
            printf("sig handler=main%+td flags=%#x\n",
                   (char *)(void *)cur.sa_sigaction - (char *)(void *)main, cur.sa_flags);
        } else if (sscanf(line, "bench %u", &n) == 1) {
            struct timespec a, b, c;
            uint64_t s = 0;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (unsigned i = 0; i < n; i++) s += tr_entered(i);
            clock_gettime(CLOCK_MONOTONIC, &b);
            for (unsigned i = 0; i < n; i++) s += tr_via(i);
            clock_gettime(CLOCK_MONOTONIC, &c);
            sink += s;
            double e = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
            double v = ((c.tv_sec - b.tv_sec) * 1e9 + (c.tv_nsec - b.tv_nsec)) / n;
            printf("bench ns/call tr_entered=%.1f tr_via=%.1f\n", e, v);
        } else if (!strncmp(line, "die", 3)) {
            __asm__ volatile("int3");
            printf("survived\n");
        }
        fflush(stdout);
    }
    printf("bye\n");
    return 0;
}
