/* A prefork server, as nginx, postgres or gunicorn run: a master and its workers.
 *
 *   prefork N   forks N workers, then prints "ready <pid>…" (the workers' pids).
 *
 * Commands on stdin, one per line, each answered with one line:
 *   job K     the master calls dispatch() once, and every worker calls job() K times and
 *             checks the results; prints "jobs <ok>/<workers>"
 *   fork N    forks N more workers; prints "forked <pid>…"
 *   quit      ends the workers (each exits 0 if every result it computed was right, 1
 *             otherwise), reaps them; prints "exit <ok>/<workers>" and exits 0
 * SIGUSR1 to the master forks 2 more workers and prints "forked <pid> <pid>".
 * Idle workers call idle_tick() every millisecond. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <stdint.h>
#include <sys/wait.h>

#define MAX 64
static pid_t workers[MAX];
static int cmd_fd[MAX];
static int n_workers;
static int result_rd, result_wr;
static volatile sig_atomic_t fork_requested;

__attribute__((noinline)) uint64_t job(uint64_t i) {
    __asm__ volatile("" ::: "memory");
    return i * i * 3 + 7;
}

__attribute__((noinline)) uint64_t idle_tick(uint64_t x) {
    __asm__ volatile("" ::: "memory");
    return x * 6364136223846793005ull + 1442695040888963407ull;
}

__attribute__((noinline)) void dispatch(int k) {
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", k);
    for (int w = 0; w < n_workers; w++)
        if (write(cmd_fd[w], line, n) != n) _exit(9);
}

static void worker(int rd) {
    int bad = 0;
    uint64_t x = 1;
    char buf[64];
    size_t have = 0;
    for (;;) {
        struct pollfd p = {.fd = rd, .events = POLLIN};
        int r = poll(&p, 1, 1);
        if (r == 0) {
            x = idle_tick(x);
            continue;
        }
        if (r < 0) continue;
        ssize_t got = read(rd, buf + have, sizeof buf - 1 - have);
        if (got <= 0) _exit(bad ? 1 : 0);
        have += got;
        char *nl;
        while ((nl = memchr(buf, '\n', have))) {
            *nl = 0;
            int k = atoi(buf);
            uint64_t sum = 0, want = 0;
            for (int i = 0; i < k; i++) {
                sum += job(i);
                want += (uint64_t)i * i * 3 + 7;
            }
            int ok = sum == want;
            bad |= !ok;
            char c = ok ? 'y' : 'n';
            if (write(result_wr, &c, 1) != 1) _exit(8);
            size_t used = nl + 1 - buf;
            memmove(buf, nl + 1, have - used);
            have -= used;
        }
    }
}

static void spawn(const char *what, int n) {
    printf("%s", what);
    for (int i = 0; i < n && n_workers < MAX; i++) {
        int p[2];
        if (pipe(p)) exit(2);
        fflush(stdout);
        pid_t c = fork();
        if (c < 0) exit(2);
        if (c == 0) {
            close(p[1]);
            for (int w = 0; w < n_workers; w++) close(cmd_fd[w]);
            worker(p[0]);
        }
        close(p[0]);
        workers[n_workers] = c;
        cmd_fd[n_workers++] = p[1];
        printf(" %d", (int)c);
    }
    printf("\n");
    fflush(stdout);
}

static void on_usr1_fork(int sig) { (void)sig; fork_requested = 1; }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 3;
    int rp[2];
    if (pipe(rp)) return 2;
    result_rd = rp[0];
    result_wr = rp[1];
    signal(SIGPIPE, SIG_IGN);
    spawn("ready", n);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1_fork;
    sigaction(SIGUSR1, &sa, NULL);
    char line[128];
    for (;;) {
        if (fork_requested) {
            fork_requested = 0;
            spawn("forked", 2);
        }
        struct pollfd p = {.fd = 0, .events = POLLIN};
        if (poll(&p, 1, 10) <= 0) continue;
        if (!fgets(line, sizeof line, stdin)) break;
        if (!strncmp(line, "job ", 4)) {
            dispatch(atoi(line + 4));
            int ok = 0;
            for (int w = 0; w < n_workers; w++) {
                char c;
                if (read(result_rd, &c, 1) != 1) return 3;
                ok += c == 'y';
            }
            printf("jobs %d/%d\n", ok, n_workers);
            fflush(stdout);
        } else if (!strncmp(line, "fork ", 5)) {
            spawn("forked", atoi(line + 5));
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
    }
    int ok = 0;
    for (int w = 0; w < n_workers; w++) close(cmd_fd[w]);
    for (int w = 0; w < n_workers; w++) {
        int st;
        if (waitpid(workers[w], &st, 0) == workers[w] && WIFEXITED(st) && WEXITSTATUS(st) == 0)
            ok++;
    }
    printf("exit %d/%d\n", ok, n_workers);
    return 0;
}
