/* Maps one page of its own executable, readable and executable, COUNT times (argv[1]),
 * each a mapping of its own (file offset 0 every time, so none merge), then forks: the
 * child, which has all of them from its first instant, prints "ready PID" and spins for
 * SECONDS (argv[2]) of CPU time. For the per-process cap on the unwinder's mapping
 * index. (Spinning in the process that did the mapping raced with the agent: if its
 * first read of the maps came in the middle of the loop, the process was never
 * over the cap, and nothing made the agent read it again.) */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

__attribute__((noinline)) void spin(void) {
    for (int i = 0; i < 100000; i++) sink += i * 7 + (sink >> 3);
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 20000;
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    for (int i = 0; i < count; i++) {
        if (mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0) == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
    }
    pid_t child = fork();
    if (child < 0) { perror("fork"); return 1; }
    if (child > 0) {
        int status;
        if (waitpid(child, &status, 0) < 0) return 1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    do {
        spin();
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 < seconds);
    return 0;
}
