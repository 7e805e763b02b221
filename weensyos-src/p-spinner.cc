#include "u-lib.hh"

// Spin forever, yielding now and then: a steady load for timer and
// preemption tests. Never exits. The work is a register-only loop, so the
// emulator runs it at full speed.

#define YIELD_EVERY (1UL << 20)     // loop iterations between yields

void process_main() {
    printf("spinner %d running\n", sys_getpid());
    while (true) {
        spin(YIELD_EVERY);
        sys_yield();
    }
}
