#include "u-lib.hh"

// Eve tries to make the kernel do her dirty work: every system call that
// takes a pointer gets pointers she may not use herself (kernel memory,
// unmapped or read-only memory, ranges that start in her memory but run
// out of it or wrap around the address space, strings without an end),
// hoping the kernel, which can reach all memory, will read or write it on
// her behalf (a confused deputy). Each attack must come back as an error
// while alice keeps running. Eve prints what each call returned, giving
// way between attacks, and exits with the number of attacks that did NOT
// fail (0 when the kernel refused them all).

#define KERNEL_TEXT     0x40000UL       // kernel code: mapped, kernel-only
#define KERNEL_STACK    0x7FF00UL       // near the top of the kernel stack
#define CONSOLE_PAGE    0xB8000UL
#define UNMAPPED        0x280000UL      // user range, nothing mapped there
#define NONCANONICAL    0x0000800000000000UL
#define HEAP            0x200000UL      // our page; the next one is unmapped

static char* const heap = reinterpret_cast<char*>(HEAP);
static char* const heap_end = heap + PAGESIZE;
static char* const text = reinterpret_cast<char*>(&process_main);  // read-only
static char* const stack_end = reinterpret_cast<char*>(MEMSIZE_VIRTUAL);

template <typename T>
static T* at(uintptr_t addr) {
    return reinterpret_cast<T*>(addr);
}

struct attack {
    const char* what;
    intptr_t (*run)();
};

static const attack attacks[] = {
    // getsysname writes SYSNAME_MAX bytes: it must not write anywhere we
    // could not write ourselves.
    {"getsysname into kernel text", [] { return intptr_t(sys_getsysname(at<char>(KERNEL_TEXT))); }},
    {"getsysname into the kernel stack", [] { return intptr_t(sys_getsysname(at<char>(KERNEL_STACK))); }},
    {"getsysname into unmapped memory", [] { return intptr_t(sys_getsysname(at<char>(UNMAPPED))); }},
    {"getsysname into read-only text", [] { return intptr_t(sys_getsysname(text)); }},
    {"getsysname across the stack top", [] { return intptr_t(sys_getsysname(stack_end - 8)); }},
    {"getsysname across the heap end", [] { return intptr_t(sys_getsysname(heap_end - 8)); }},
    {"getsysname at a non-canonical address", [] { return intptr_t(sys_getsysname(at<char>(NONCANONICAL))); }},
    {"getsysname wrapping around", [] { return intptr_t(sys_getsysname(at<char>(~0UL - 7))); }},
    // pipewrite reads: it must not leak memory we could not read.
    {"pipewrite from kernel text", [] { return intptr_t(sys_pipewrite(at<char>(KERNEL_TEXT), 64)); }},
    {"pipewrite from heap into unmapped", [] { return intptr_t(sys_pipewrite(heap, 2 * PAGESIZE)); }},
    {"pipewrite wrapping into kernel text",
     [] { return intptr_t(sys_pipewrite(heap, KERNEL_TEXT + 16 - HEAP)); }},  // n is ~2^64
    // piperead writes (and would block first if it did not check).
    {"piperead into the kernel stack", [] { return intptr_t(sys_piperead(at<char>(KERNEL_STACK), 64)); }},
    {"piperead into read-only text", [] { return intptr_t(sys_piperead(text, 64)); }},
    // spawn reads a string: all of it, up to its NUL, must be ours.
    {"spawn, name in kernel text", [] { return intptr_t(sys_spawn(at<char>(KERNEL_TEXT))); }},
    {"spawn, null name", [] { return intptr_t(sys_spawn(nullptr)); }},
    {"spawn, unterminated name", [] {
         memcpy(heap_end - 5, "alice", 5);             // no NUL before the unmapped page
         return intptr_t(sys_spawn(heap_end - 5));
     }},
    {"spawn, 40-letter name", [] {
         memset(heap, 'a', 40);
         heap[40] = '\0';
         return intptr_t(sys_spawn(heap));
     }},
    // page_alloc maps a page at any address it accepts: only user space.
    {"page_alloc over kernel text", [] { return intptr_t(sys_page_alloc(at<void>(KERNEL_TEXT))); }},
    {"page_alloc over the console", [] { return intptr_t(sys_page_alloc(at<void>(CONSOLE_PAGE))); }},
    {"page_alloc at a misaligned address", [] { return intptr_t(sys_page_alloc(heap + 0x800)); }},
    {"page_alloc past user memory", [] { return intptr_t(sys_page_alloc(stack_end)); }},
    {"page_alloc at a non-canonical address", [] { return intptr_t(sys_page_alloc(at<void>(NONCANONICAL))); }},
    {"system call 99", [] { return intptr_t(make_syscall(99)); }},
};

void process_main() {
    pid_t pid = sys_getpid();
    if (sys_page_alloc(heap) != 0) {
        panic("eve: cannot allocate her heap page");
    }
    int nsucceeded = 0;
    for (const attack& a : attacks) {
        intptr_t r = a.run();
        printf("eve: %-38s %4ld %s\n", a.what, long(r), error_name(r));
        nsucceeded += !is_error(r);
        sys_yield();
    }
    int n = arraysize(attacks);
    printf("eve %d: %d attacks, %d refused\n", pid, n, n - nsucceeded);
    sys_exit(nsucceeded);
}
