/* The shared library of tests/workloads/unwind.c: spin, built without frame pointers. */
#include <stdint.h>

/* The counter is on the stack, so each thread spins on its own word; a thread-local
 * one would cost a __tls_get_addr call in a shared library. */
__attribute__((noinline)) void lib_spin(uint64_t n) {
    volatile uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += i * 7 + (s >> 3);
}
