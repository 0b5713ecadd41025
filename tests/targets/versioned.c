/* Target of tests/e2e.rs (--module aliases): linked against libver.so.1, a symlink to
 * libver.so.1.2.3. After each SIGUSR2 it calls ver_a 10 times and ver_b 3 times (never
 * ver_never) and prints "round <n> sum=<hex>"; SIGUSR1 makes it print "bye" and exit 0. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

uint64_t ver_a(uint64_t x);
uint64_t ver_b(uint64_t x);

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
        for (int i = 0; i < 10; i++) s = ver_a(s);
        for (int i = 0; i < 3; i++) s = ver_b(s);
        printf("round %d sum=%016llx\n", done, (unsigned long long)s);
        fflush(stdout);
    }
    printf("bye\n");
    fflush(stdout);
    return 0;
}
