#include "u-lib.hh"

// Churn: fork FORKS children, each of which allocates and stamps a page of
// its own, checks its copy of the parent's memory, sometimes forks a
// grandchild, and exits. When every process slot is taken fork fails with
// E_AGAIN: the parent then gives way so children can finish, and tries
// again. The parent exits when done; after the last exit the kernel's free
// page count must be exactly where it started.

#define FORKS           1000
#define REPORT_EVERY    250

static int forks;                       // the child checks its copy

static void child(int expected_forks, bool grandchild) {
    pid_t pid = sys_getpid();
    uintptr_t page = round_up(uintptr_t(_end), PAGESIZE);
    bool ok = forks == expected_forks && sys_page_alloc(reinterpret_cast<void*>(page)) == 0;
    if (ok) {
        page_stamp(pid, page);
        ok = page_intact(pid, page);
    }
    forks = -1;                         // must not reach the parent
    if (grandchild && ok) {
        pid_t r = sys_fork();
        if (r == 0) {
            sys_exit(page_intact(pid, page) ? 0 : 1);   // copy of the parent's page
        }
        ok = r > 0 || r == E_AGAIN || r == E_NOMEM;
    }
    sys_exit(ok ? 0 : 1);
}

void process_main() {
    pid_t pid = sys_getpid();
    int nagain = 0, nnomem = 0;
    while (forks != FORKS) {
        pid_t r = sys_fork();
        if (r == 0) {
            child(forks, forks % 7 == 0);
        } else if (r > 0) {
            ++forks;
            if (forks % REPORT_EVERY == 0) {
                printf("forkexit %d: %d forks\n", pid, forks);
            }
        } else if (r == E_AGAIN || r == E_NOMEM) {
            (r == E_AGAIN ? nagain : nnomem) += 1;
            sys_yield();                // let children finish
        } else {
            panic("forkexit: fork returned %d", r);
        }
    }
    printf("forkexit %d: done; fork refused %d times for want of a slot, %d for memory\n",
           pid, nagain, nnomem);
    sys_exit(0);
}
