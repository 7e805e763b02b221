#include "u-lib.hh"

// Fork twice into four processes, each of which then fills memory like
// allocator: pages stamped with its pid, giving way after each, so the
// four compete until the kernel runs out. With memory full, fork must fail
// with E_NOMEM (and leave nothing allocated). Each process finally checks
// its pages and its copies of data written before the forks, prints a
// summary, and exits 0 if everything held.

static int before_fork = 61;            // data page: each process gets a copy

void process_main() {
    pid_t first = sys_getpid();
    int generation = 0;                 // on the stack: copied too
    for (int i = 0; i != 2; ++i) {
        pid_t r = sys_fork();
        if (r < 0) {
            printf("fork: fork %d failed: %d (%s)\n", i, r, error_name(r));
            sys_exit(1);
        } else if (r == 0) {
            generation = i + 1;         // only the child's copy changes
        }
    }
    pid_t pid = sys_getpid();
    printf("fork: process %d is up (generation %d, first was %d)\n", pid, generation, first);
    bool copies_ok = before_fork == 61;
    before_fork = pid;                  // must not show in any other process

    const uintptr_t heap = round_up(uintptr_t(_end), PAGESIZE);
    const uintptr_t stack_page = MEMSIZE_VIRTUAL - PAGESIZE;
    uintptr_t va = heap;
    int r = 0;
    for (; va < stack_page; va += PAGESIZE) {
        if ((r = sys_page_alloc(reinterpret_cast<void*>(va))) != 0) {
            break;
        }
        page_stamp(pid, va);
        sys_yield();
    }
    pid_t full = sys_fork();            // memory is full: must fail
    if (full == 0) {
        sys_exit(0);                    // (it did not: the copy leaves at once)
    }
    int npages = (va - heap) / PAGESIZE, nbad = 0;
    for (uintptr_t p = heap; p != va; p += PAGESIZE) {
        nbad += !page_intact(pid, p);
    }
    copies_ok = copies_ok && before_fork == pid;
    printf("fork %d: %d pages, %s; fork when full: %d (%s); %s\n", pid, npages,
           error_name(r), full, error_name(full),
           nbad == 0 && copies_ok ? "all intact" : "DAMAGED");
    sys_exit(nbad == 0 && copies_ok && r == E_NOMEM && full == E_NOMEM ? 0 : 1);
}
