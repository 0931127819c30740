/* Loads the library at argv[1] and spins in it for argv[2] seconds. Prints "ready PID". */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    void (*spin)(double) = (void (*)(double))dlsym(h, "lib_spin");
    if (!spin)
        return 1;
    printf("ready %d\n", getpid());
    fflush(stdout);
    spin(atof(argv[2]));
    return 0;
}
