/* A library the hostile-files test maps from files it then replaces or truncates. */
#include <time.h>

volatile unsigned long sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) void lib_spin(double secs) {
    double end = now() + secs;
    while (now() < end)
        for (int i = 0; i < 100000; i++)
            sink += i;
}
