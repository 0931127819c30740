/* A workload with known CPU shares, for profiler tests.
 *
 * Built by the tests with frame pointers. Each round spends, in the thread's CPU time,
 * 60% in hot_a, 30% in hot_b (both through spin) and 10% in read_zero, which
 * spends its time in the kernel copying /dev/zero, for SECONDS of its CPU time.
 * Usage: cpu_shares SECONDS [PROGRAM ARGS...]: with a PROGRAM, the process then execs
 * it (the same process as another executable, for the selection tests).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;
static char buf[1 << 16];

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* spin and read_zero call tick now and then so they are not leaf functions: compilers
 * omit a leaf's frame even with -fno-omit-frame-pointer, and a frame-pointer unwinder
 * then skips the leaf's caller. */
__attribute__((noinline)) void tick(void) { __asm__ volatile(""); }

__attribute__((noinline)) void spin(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        sink += i * 7 + (sink >> 3);
        if ((i & 0xfffff) == 0) tick();
    }
}

/* Each function spins until the thread has spent `ms` of CPU time in it, checking
 * CLOCK_THREAD_CPUTIME_ID every `chunk` rounds (about 0.1 ms): pacing by the thread's
 * own CPU time keeps the shares true however busy the machine is, where a rate measured
 * once at start moved (read_zero at 15% instead of 10% with both cores busy). The empty
 * asm after the call keeps it from becoming a tail call, so the caller keeps its frame
 * and shows in the stack. */
static uint64_t chunk;

__attribute__((noinline)) void hot_a(double ms) {
    double end = cpu_now() + ms * 1e-3;
    do spin(chunk); while (cpu_now() < end);
    __asm__ volatile("");
}
__attribute__((noinline)) void hot_b(double ms) {
    double end = cpu_now() + ms * 1e-3;
    do spin(chunk); while (cpu_now() < end);
    __asm__ volatile("");
}

/* The syscall is issued here, not in libc, so the interrupted user frame is this function. */
static long raw_read(int fd, void *p, long n) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(0), "D"(fd), "S"(p), "d"(n) : "rcx", "r11", "memory");
    return r;
}

__attribute__((noinline)) void read_zero(int fd, double ms) {
    double end = cpu_now() + ms * 1e-3;
    do {
        for (int i = 0; i < 8; i++) raw_read(fd, buf, sizeof buf);
        tick();
    } while (cpu_now() < end);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) { perror("open /dev/zero"); return 1; }
    /* The spin rate, only to size the chunks between clock reads. */
    double t0 = cpu_now();
    spin(2000000);
    chunk = (uint64_t)(2000000 / ((cpu_now() - t0) * 1e4)) + 1;
    printf("ready %d\n", getpid());
    fflush(stdout);
    /* SECONDS of this thread's CPU time, not of wall time: on a busy machine it runs
     * longer and is sampled as often as on an idle one (with a wall-time bound of ten
     * times that, so a starved run still ends). */
    double cpu0 = cpu_now();
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        hot_a(60);
        hot_b(30);
        read_zero(fd, 10);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double wall = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) * 1e-9;
        if (cpu_now() - cpu0 >= seconds || wall >= 10 * seconds) break;
    }
    if (argc > 2) {
        execv(argv[2], argv + 2);
        perror("execv");
        return 1;
    }
    return 0;
}
