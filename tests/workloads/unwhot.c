/* The shared library of tests/workloads/unwind.c: spin, built without frame pointers. */
#include <stdint.h>

extern __thread volatile uint64_t sink;

__attribute__((noinline)) void lib_spin(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) sink += i * 7 + (sink >> 3);
}
