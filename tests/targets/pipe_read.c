/* Blocks in read() on stdin; reads everything until EOF and prints the byte count and a
 * checksum. Any EINTR or short surprise is reported and fails. */
#include "common.h"
#include <errno.h>
#include <stdint.h>

int main(void) {
    install_handlers();
    say_ready();
    char buf[4096];
    uint64_t total = 0, sum = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0) { printf("read error: %s\n", strerror(errno)); return 1; }
        if (n == 0) break;
        for (ssize_t i = 0; i < n; i++) sum = sum * 31 + (unsigned char)buf[i];
        total += (uint64_t)n;
    }
    printf("bytes=%llu checksum=%016llx\n", (unsigned long long)total, (unsigned long long)sum);
    return 0;
}
