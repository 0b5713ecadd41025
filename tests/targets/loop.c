/* Single-threaded: a loop calling many small functions. Every round computes the same
 * checksum; on SIGUSR1 it prints it (and how many SIGUSR2 it got) and exits. */
#include "common.h"
#include <stdint.h>

#define F(n) __attribute__((noinline)) uint64_t f##n(uint64_t x) { return x * 6364136223846793005ull + n; }
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11) F(12) F(13) F(14) F(15)
F(16) F(17) F(18) F(19) F(20) F(21) F(22) F(23) F(24) F(25) F(26) F(27) F(28) F(29) F(30) F(31)
typedef uint64_t (*fn)(uint64_t);
static fn table[] = {f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15,
                     f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29, f30, f31};

__attribute__((noinline)) static uint64_t round_(void) {
    uint64_t x = 1;
    for (int i = 0; i < 20000; i++) x = table[(x >> 7) % 32](x) ^ f3(i);
    return x;
}

int main(void) {
    install_handlers();
    say_ready();
    uint64_t first = round_();
    unsigned long rounds = 1;
    while (!stop_requested) {
        if (round_() != first) { printf("MISMATCH in round %lu\n", rounds); return 1; }
        rounds++;
    }
    printf("checksum=%016llx usr2=%d\n", (unsigned long long)first, (int)usr2_count);
    return 0;
}
