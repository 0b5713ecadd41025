/* Sleeps argv[1] milliseconds with nanosleep (argv[2] == "clock" for clock_nanosleep) and
 * reports the return value and how long it really slept. */
#include "common.h"
#include <errno.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 1000;
    int use_clock = argc > 2 && strcmp(argv[2], "clock") == 0;
    struct timespec req = {ms / 1000, (ms % 1000) * 1000000L}, rem = {0, 0};
    install_handlers();
    say_ready();
    double t0 = now_ms();
    int rc = use_clock ? clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem) : nanosleep(&req, &rem);
    int err = use_clock ? rc : (rc ? errno : 0);
    double slept = now_ms() - t0;
    printf("rc=%d err=%d slept_ms=%.0f\n", rc, err, slept);
    return 0;
}
