#include "u-lib.hh"

// Give way NYIELDS times, then exit: the cheapest possible system-call
// loop, for measuring how fast the kernel (and the harness) turn around a
// system call.

#define NYIELDS 10000

void process_main() {
    for (int i = 0; i != NYIELDS; ++i) {
        sys_yield();
    }
    printf("yielder %d: %d yields\n", sys_getpid(), NYIELDS);
    sys_exit(0);
}
