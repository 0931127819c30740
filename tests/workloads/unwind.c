/* Workloads for native unwinding, built by the tests without frame pointers
 * (-O2 -fomit-frame-pointer, gcc or clang, PIE or not).
 *
 * Usage: unwind MODE SECONDS
 *   shares    60% hot_a, 30% hot_b (both through spin), 10% read_zero (in the kernel)
 *   lib       the same, with spin in libunwhot.so, called through the PLT
 *   bigframe  the same, with hot_a under a function with a 40 KB stack frame
 *   threads   the same on 2 threads; the main thread waits in pthread_join
 *   dlopen    the same, with spin from libunwhot.so opened by dlopen after "ready"
 *   recurse   spin at the bottom of a 150-deep recursion
 *   deep      the shares rounds under a 13-deep recursion: 20-frame stacks (benchmarks)
 *   forever   a -> b -> c -> spin until killed (for core files)
 *   qsort     spin inside a qsort comparator, under libc's qsort (for core files)
 * Prints "ready PID" once calibrated, then runs for SECONDS of each thread's CPU time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Per thread too: two threads spinning on one shared word bounce its cache line, so
 * spin's speed depends on how their phases line up. With one shared word the `threads`
 * case failed about one run in four, read_zero at 47-64% of samples instead of 10%:
 * spin calibrated several times too slow, so rounds spun too little. */
__thread volatile uint64_t sink;
/* Per thread: two threads reading into one buffer bounce its cache lines between
 * cores, and how much depends on how their phases line up. */
static __thread char buf[1 << 16];
static double seconds;

typedef void (*spin_fn)(uint64_t);
#ifdef WITH_LIB
void lib_spin(uint64_t n);
#endif
static spin_fn spinner;

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((noinline)) void spin(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) sink += i * 7 + (sink >> 3);
}

/* Each function spins until its thread has spent `ms` of CPU time in it
 * (CLOCK_THREAD_CPUTIME_ID), checking every `chunk` rounds (about 0.1 ms). Pacing by
 * the thread's own CPU time makes the shares hold however busy the machine is: a rate
 * measured once at start moves when another process shares the core or its caches
 * (read_zero's share rose to 15% on a busy machine). The empty asm after each call
 * keeps it from becoming a tail call. */
static __thread uint64_t chunk;

__attribute__((noinline)) void hot_a(double ms) {
    double end = now(CLOCK_THREAD_CPUTIME_ID) + ms * 1e-3;
    do spinner(chunk); while (now(CLOCK_THREAD_CPUTIME_ID) < end);
    __asm__ volatile("");
}
__attribute__((noinline)) void hot_b(double ms) {
    double end = now(CLOCK_THREAD_CPUTIME_ID) + ms * 1e-3;
    do spinner(chunk); while (now(CLOCK_THREAD_CPUTIME_ID) < end);
    __asm__ volatile("");
}

__attribute__((noinline)) void big_frame(double ms) {
    volatile char big[40000];
    big[0] = (char)ms;
    big[39999] = big[0];
    hot_a(ms + big[39999] - big[0]);
    __asm__ volatile("");
}

/* A leaf that spends its time in the kernel: libc's read of /dev/zero, for `ms` of the
 * thread's CPU time. */
__attribute__((noinline)) void read_zero(int fd, double ms) {
    double end = now(CLOCK_THREAD_CPUTIME_ID) + ms * 1e-3;
    do {
        for (int i = 0; i < 8; i++)
            if (read(fd, buf, sizeof buf) < 0) abort();
    } while (now(CLOCK_THREAD_CPUTIME_ID) < end);
    __asm__ volatile("");
}

/* Per thread: threads sharing one file would contend on its position lock in read. */
static __thread int fd;
static __thread uint64_t per_ms;
static int use_big;

/* The spin rate, only to size the chunks between clock reads. */
__attribute__((noinline)) static void calibrate(void) {
    double t0 = now(CLOCK_THREAD_CPUTIME_ID);
    spinner(2000000);
    per_ms = (uint64_t)(2000000 / ((now(CLOCK_THREAD_CPUTIME_ID) - t0) * 1e3)) + 1;
    chunk = per_ms / 10 + 1;
}

/* True while the thread has spent less than SECONDS of CPU time since `cpu0` (and less
 * than ten times that of wall time since `wall0`): on a busy machine a run takes longer
 * and is sampled as often as on an idle one. */
static int running(double cpu0, double wall0) {
    return now(CLOCK_THREAD_CPUTIME_ID) - cpu0 < seconds
        && now(CLOCK_MONOTONIC) - wall0 < 10 * seconds;
}

__attribute__((noinline)) void rounds(void) {
    double cpu0 = now(CLOCK_THREAD_CPUTIME_ID), wall0 = now(CLOCK_MONOTONIC);
    while (running(cpu0, wall0)) {
        if (use_big) big_frame(60); else hot_a(60);
        hot_b(30);
        read_zero(fd, 10);
    }
    __asm__ volatile("");
}

__attribute__((noinline)) void *thread_main(void *arg) {
    (void)arg;
    fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) abort();
    calibrate();
    rounds();
    __asm__ volatile("");
    return NULL;
}

__attribute__((noinline)) uint64_t recurse(int depth) {
    if (depth == 0) {
        double cpu0 = now(CLOCK_THREAD_CPUTIME_ID), wall0 = now(CLOCK_MONOTONIC);
        while (running(cpu0, wall0)) spin(per_ms);
        return sink;
    }
    uint64_t r = recurse(depth - 1);
    __asm__ volatile("");
    return r + 1;
}

/* `depth` frames of recursion, then the shares rounds. */
__attribute__((noinline)) void deep(int depth) {
    if (depth == 0) rounds();
    else deep(depth - 1);
    __asm__ volatile("");
}

__attribute__((noinline)) void c_fn(void) { for (;;) spin(1000000); }
__attribute__((noinline)) void b_fn(void) { c_fn(); __asm__ volatile(""); }
__attribute__((noinline)) void a_fn(void) { b_fn(); __asm__ volatile(""); }

static int cmp(const void *x, const void *y) {
    for (;;) spin(1000000);
    return *(const int *)x - *(const int *)y;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "shares";
    seconds = argc > 2 ? atof(argv[2]) : 5.0;
    spinner = spin;
#ifdef WITH_LIB
    if (!strcmp(mode, "lib")) spinner = lib_spin;
#endif
    fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) { perror("open /dev/zero"); return 1; }
    use_big = !strcmp(mode, "bigframe");
    if (!strcmp(mode, "forever") || !strcmp(mode, "qsort")) {
        printf("ready %d\n", getpid());
        fflush(stdout);
        if (!strcmp(mode, "forever")) a_fn();
        int v[64];
        for (int i = 0; i < 64; i++) v[i] = 64 - i;
        qsort(v, 64, sizeof v[0], cmp);
        return v[0];
    }
    if (!strcmp(mode, "dlopen")) {
        printf("ready %d\n", getpid());
        fflush(stdout);
        /* Opened after the profiler has seen the process. */
        usleep(500 * 1000);
        void *h = dlopen("libunwhot.so", RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        spinner = (spin_fn)dlsym(h, "lib_spin");
        if (!spinner) return 1;
        calibrate();
        rounds();
        return 0;
    }
    calibrate();
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!strcmp(mode, "recurse")) {
        sink += recurse(150);
        return 0;
    }
    if (!strcmp(mode, "deep")) {
        deep(13);
        return 0;
    }
    if (!strcmp(mode, "threads")) {
        pthread_t t[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, thread_main, NULL);
        for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
        return 0;
    }
    rounds();
    return 0;
}
