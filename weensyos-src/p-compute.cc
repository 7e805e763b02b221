#include "u-lib.hh"

// A fixed amount of pure computation (a register-only loop, preempted by the
// timer like any other work), then exit: the compute workload of the
// benchmark, which QEMU and the harness both run to power-off.

#define ROUNDS 200                   // x 2^20 iterations of spin()

void process_main() {
    for (int i = 0; i != ROUNDS; ++i) {
        spin(1UL << 20);
    }
    printf("compute %d: %d rounds\n", sys_getpid(), ROUNDS);
    sys_exit(0);
}
