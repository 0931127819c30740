/* Known functions, one always-inlined function and known lines, for symbolizer tests.
 * Line numbers are asserted by the tests: keep them. */
#include <stdio.h>
volatile int sink;
static inline __attribute__((always_inline)) int scale(int x) {
    sink += x * 3;                                  /* line 6 */
    return sink;
}
__attribute__((noinline)) int accumulate(int n) {
    int s = 0;
    for (int i = 0; i < n; i++)
        s += scale(i);                              /* line 12 */
    return s;
}
__attribute__((noinline)) int entry_point(int n) {
    return accumulate(n) + 1;                       /* line 16 */
}
int main(int argc, char **argv) { (void)argv; return entry_point(argc * 1000) & 1; }
