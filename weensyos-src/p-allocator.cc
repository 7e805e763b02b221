#include "u-lib.hh"

// Fill memory: map fresh pages one after another above the program image
// with page_alloc until the kernel runs out (E_NOMEM) or the heap reaches
// the stack page, stamping every page and giving way after each (so that
// several allocators compete for memory). A little work per page paces the
// filling so the memory viewer can show it (a few tenths of a second).
// Then check that every page still holds our stamps, print a summary, and
// exit 0 if all went as it should.

#define WORK_PER_PAGE   20000           // spin iterations

void process_main() {
    pid_t pid = sys_getpid();
    const uintptr_t heap = round_up(uintptr_t(_end), PAGESIZE);
    const uintptr_t stack_page = MEMSIZE_VIRTUAL - PAGESIZE;
    uintptr_t va = heap;
    int r = 0;
    for (; va < stack_page; va += PAGESIZE) {
        if ((r = sys_page_alloc(reinterpret_cast<void*>(va))) != 0) {
            break;
        }
        page_stamp(pid, va);
        spin(WORK_PER_PAGE);
        sys_yield();
    }
    int npages = (va - heap) / PAGESIZE, nbad = 0;
    for (uintptr_t p = heap; p != va; p += PAGESIZE) {
        nbad += !page_intact(pid, p);
    }
    printf("allocator %d: %d pages, then %s; %s\n", pid, npages,
           r == 0 ? "reached the stack" : error_name(r),
           nbad == 0 ? "every page intact" : "PAGES DAMAGED");
    sys_exit(nbad == 0 && (r == 0 || r == E_NOMEM) ? 0 : 1);
}
