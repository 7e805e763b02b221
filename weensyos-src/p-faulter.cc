#include "u-lib.hh"

// Page faults, over and over: fork FAULTS children, each of which reads
// memory it does not have and is killed by the kernel for it. The parent
// gives way when every process slot is taken. The benchmark's page-fault
// workload: each cycle is a fork, a page fault delivered through the IDT,
// the kernel's report and the teardown of the faulting process.

#define FAULTS          1000
#define REPORT_EVERY    250

void process_main() {
    pid_t pid = sys_getpid();
    int faults = 0;
    while (faults != FAULTS) {
        pid_t r = sys_fork();
        if (r == 0) {
            // Address 0 is never mapped for a process: a read fault.
            (void) *reinterpret_cast<volatile int*>(uintptr_t(0));
            panic("faulter: read of address 0 did not fault");
        } else if (r > 0) {
            ++faults;
            if (faults % REPORT_EVERY == 0) {
                printf("faulter %d: %d faults\n", pid, faults);
            }
        } else if (r == E_AGAIN || r == E_NOMEM) {
            sys_yield();                // let children fault
        } else {
            panic("faulter: fork returned %d", r);
        }
    }
    printf("faulter %d: done\n", pid);
    sys_exit(0);
}
