#include "u-lib.hh"

// Fork at every level of memory scarcity. A child holding a few pages
// (its copy of our program, stack and page tables) waits on the pipe while
// we fill the rest of memory; then it exits, leaving exactly its pages
// free. We try fork, take one more page, try again, and so on down to no
// free page at all. Each attempt fails at a different point (allocating
// the top-level table, a lower table inside copy_mappings, or a copy of a
// user page) and must fail with E_NOMEM leaving the free count where it
// was: the kernel logs that count after each failure, so a leak would
// show as a step of more than one page. Exits 0 if every fork failed
// cleanly and every page we own is intact.

void process_main() {
    pid_t pid = sys_getpid();
    pid_t bank = sys_fork();
    if (bank == 0) {
        char c;
        sys_piperead(&c, 1);            // wait until memory is full
        sys_exit(0);                    // and give back our pages
    } else if (bank < 0) {
        printf("forkoom: first fork failed: %d (%s)\n", bank, error_name(bank));
        sys_exit(1);
    }

    const uintptr_t heap = round_up(uintptr_t(_end), PAGESIZE);
    const uintptr_t stack_page = MEMSIZE_VIRTUAL - PAGESIZE;
    uintptr_t va = heap;
    while (va < stack_page && sys_page_alloc(reinterpret_cast<void*>(va)) == 0) {
        page_stamp(pid, va);
        va += PAGESIZE;
    }
    sys_pipewrite("x", 1);              // wake the child: it exits
    sys_yield();

    int attempts = 0, refused = 0;
    while (true) {
        pid_t r = sys_fork();
        if (r == 0) {
            sys_exit(0);                // (should not happen)
        }
        ++attempts;
        refused += r == E_NOMEM;
        if (va == stack_page || sys_page_alloc(reinterpret_cast<void*>(va)) != 0) {
            break;                      // that attempt had no free page at all
        }
        page_stamp(pid, va);
        va += PAGESIZE;
    }
    int nbad = 0;
    for (uintptr_t p = heap; p != va; p += PAGESIZE) {
        nbad += !page_intact(pid, p);
    }
    printf("forkoom %d: %d forks as memory ran out, %d refused with E_NOMEM; %s\n",
           pid, attempts, refused, nbad == 0 ? "every page intact" : "PAGES DAMAGED");
    sys_exit(refused == attempts && nbad == 0 ? 0 : 1);
}
