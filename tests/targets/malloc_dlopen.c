/* Threads hammering malloc/free and dlopen/dlclose: at any moment some thread likely holds
 * the malloc or the loader lock, the case where a remote dlopen deadlocks. argv[1] is the
 * path of the library to load. SIGUSR1 stops everything; prints "ok" if every check held. */
#include "common.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>

static const char *lib;
static volatile int failed;

static void *mallocer(void *arg) {
    uintptr_t seed = (uintptr_t)arg;
    while (!stop_requested) {
        void *p[64];
        for (int i = 0; i < 64; i++) {
            size_t n = 16 + ((seed * 2654435761u + i) % 4000);
            p[i] = malloc(n);
            memset(p[i], i, n);
        }
        for (int i = 0; i < 64; i++) {
            if (((unsigned char *)p[i])[0] != (unsigned char)i) failed = 1;
            free(p[i]);
        }
        seed++;
    }
    return NULL;
}

static void *dlopener(void *arg) {
    (void)arg;
    while (!stop_requested) {
        void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
        if (!h) { failed = 2; break; }
        int (*f)(int) = (int (*)(int))dlsym(h, "xcover_dso_value");
        if (!f || f(5) != 38) failed = 3;
        dlclose(h);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    lib = argv[1];
    install_handlers();
    pthread_t t[6];
    for (uintptr_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, mallocer, (void *)i);
    for (uintptr_t i = 4; i < 6; i++) pthread_create(&t[i], NULL, dlopener, NULL);
    say_ready();
    for (int i = 0; i < 6; i++) pthread_join(t[i], NULL);
    if (failed) { printf("FAILED %d\n", failed); return 1; }
    printf("malloc_dlopen ok\n");
    return 0;
}
