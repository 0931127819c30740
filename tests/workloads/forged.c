/* Two programs from one source, for the forged build-ID test: built with -DVARIANT=1
 * and -DVARIANT=2 and one build ID given to both (-Wl,--build-id=0x...), without frame
 * pointers. Their functions have other names and other frame sizes, so a table or a
 * symbol taken from the other program gives a broken or misnamed stack.
 * Usage: forged SECONDS (of CPU time). Prints "ready PID". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if VARIANT == 1
#define OUTER one_outer
#define INNER one_inner
#define SPIN one_spin
#define PAD 64
#else
#define OUTER two_outer
#define INNER two_inner
#define SPIN two_spin
#define PAD 4000
#endif

static volatile uint64_t sink;

__attribute__((noinline)) void SPIN(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) sink += i * 7 + (sink >> 3);
}

/* A frame of PAD bytes: the unwind rules of the two programs differ here. */
__attribute__((noinline)) void INNER(uint64_t n) {
    volatile char pad[PAD];
    pad[0] = (char)n;
    SPIN(n + pad[0] - pad[0]);
    __asm__ volatile("");
}

__attribute__((noinline)) void OUTER(uint64_t n) {
    INNER(n);
    __asm__ volatile("");
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    printf("ready %d\n", getpid());
    fflush(stdout);
    /* SECONDS of CPU time (ten times that of wall time at most): as often sampled on a
     * busy machine as on an idle one. */
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
    do {
        OUTER(1000000);
        clock_gettime(CLOCK_MONOTONIC, &b);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cb);
    } while ((cb.tv_sec - ca.tv_sec) + (cb.tv_nsec - ca.tv_nsec) * 1e-9 < seconds
             && (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9 < 10 * seconds);
    return 0;
}
