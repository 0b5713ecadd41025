/* Target of tests/e2e.rs: after each SIGUSR2 it calls f1 exactly 1000 times, f3 exactly 7
 * times and f2 never, and prints "round <n> sum=<hex>"; SIGUSR1 makes it print "bye" and
 * exit 0. Between signals it sleeps in pause(). */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define NOIPA __attribute__((noipa, used))

NOIPA uint64_t f1(uint64_t x) { return x * 6364136223846793005ull + 1442695040888963407ull; }
NOIPA uint64_t f2(uint64_t x) { return x ^ (x >> 17); }
NOIPA uint64_t f3(uint64_t x, uint64_t y) { return (x << 7) + y * 3 + (x >> 57); }

static volatile sig_atomic_t work, quit;
static void on_usr2(int s) { (void)s; work++; }
static void on_usr1(int s) { (void)s; quit = 1; }

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &old);
    printf("ready\n");
    fflush(stdout);
    int done = 0;
    for (;;) {
        while (!quit && work == done) sigsuspend(&old);
        if (quit) break;
        done++;
        uint64_t s = 1;
        for (int i = 0; i < 1000; i++) s = f1(s);
        for (int i = 0; i < 7; i++) s = f3(s, (uint64_t)i);
        printf("round %d sum=%016llx\n", done, (unsigned long long)s);
        fflush(stdout);
    }
    printf("bye\n");
    fflush(stdout);
    return 0;
}
