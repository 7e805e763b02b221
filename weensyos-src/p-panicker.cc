#include "u-lib.hh"

// Print one line, then stop the whole system with a user panic: exercises
// the kernel's and the harness's panic paths.

void process_main() {
    printf("panicker %d: about to panic\n", sys_getpid());
    sys_panic("deliberate panic from panicker");
}
