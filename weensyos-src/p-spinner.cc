#include "u-lib.hh"

// Spin forever, yielding now and then: a steady load for timer and
// preemption tests. Never exits.

#define YIELD_EVERY (1UL << 20)     // loop iterations between yields

void process_main() {
    printf("spinner %d running\n", sys_getpid());
    volatile unsigned long counter = 0;
    while (true) {
        counter = counter + 1;
        if (counter % YIELD_EVERY == 0) {
            sys_yield();
        }
    }
}
