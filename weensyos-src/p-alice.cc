#include "u-lib.hh"

// Alice, a well-behaved process: in each of ALICE_ROUNDS rounds she works
// a little and gives way, printing a line every PRINT_EVERY rounds; then
// she says goodbye and exits 0. With eve (`friends`) she must keep going
// whatever eve tries; `spawn` starts two of her.

#define ALICE_ROUNDS    60
#define PRINT_EVERY     10
#define WORK            20000       // spin iterations per round

void process_main() {
    pid_t pid = sys_getpid();
    for (int round = 1; round <= ALICE_ROUNDS; ++round) {
        spin(WORK);
        if (round % PRINT_EVERY == 0) {
            printf("Hi, I'm Alice (pid %d), round %d\n", pid, round);
        }
        sys_yield();
    }
    printf("alice %d: done after %d rounds\n", pid, ALICE_ROUNDS);
    sys_exit(0);
}
