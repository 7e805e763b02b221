#include "u-lib.hh"

// The spectator: a well-behaved process that keeps going while `fuzz`
// attacks the kernel (`fuzzfriends`). Each round it works a little, checks
// that a page of its own still holds what it stamped there (a kernel that
// wrote through a fuzzer's bad pointer into someone else's memory would
// show here), and gives way; every PRINT_EVERY rounds it prints a line.
// It cannot see when the fuzzer is done, so it runs a fixed number of
// rounds, enough to outlast the fuzzer's default run; exits 0, or 1 if its
// page changed.
//
// `spectator_rounds` is a constant in .rodata with a symbol of its own, so
// a test can patch the ELF file for a shorter run (tests/test_syscall_fuzz.py).

extern "C" const uint64_t spectator_rounds = 3000;

#define PRINT_EVERY     50
#define WORK            5000        // spin iterations per round
#define PAGE            0x200000UL

void process_main() {
    pid_t pid = sys_getpid();
    unsigned long rounds;
    asm volatile("movq %1, %0" : "=r"(rounds) : "m"(spectator_rounds));    // the file's value
    void* page = reinterpret_cast<void*>(PAGE);
    if (sys_page_alloc(page) != 0) {
        printf("spectator %d: cannot allocate a page\n", pid);
        sys_exit(2);
    }
    page_stamp(pid, PAGE);
    for (unsigned long round = 1; round <= rounds; ++round) {
        spin(WORK);
        if (!page_intact(pid, PAGE)) {
            printf("spectator %d: my page changed in round %lu\n", pid, round);
            sys_exit(1);
        }
        if (round % PRINT_EVERY == 0) {
            // The console page is writable by every process (a fuzzer may
            // have moved the cursor anywhere): start on a fresh row.
            if (cursorpos % CONSOLE_COLUMNS != 0) {
                printf("\n");
            }
            printf("spectator %d: round %lu\n", pid, round);
        }
        sys_yield();
    }
    printf("spectator %d: done after %lu rounds\n", pid, rounds);
    sys_exit(0);
}
