/* Shared protocol of the test targets (see README.md): print "ready", work, stop on
 * SIGUSR1, print a deterministic result line, exit 0. */
#ifndef XCOVER_TARGET_COMMON_H
#define XCOVER_TARGET_COMMON_H
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t usr2_count;

static void on_usr1(int sig) { (void)sig; stop_requested = 1; }
static void on_usr2(int sig) { (void)sig; usr2_count++; }

static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
}

static void say_ready(void) {
    printf("ready\n");
    fflush(stdout);
}
#endif
