#include "u-lib.hh"

// Exercise the system-call interface from user mode: argument checking,
// error returns, register preservation and page_alloc. Prints one line per
// failed check, then a summary; exits 0 if everything passed, else 1.

static int nchecks, nfailed;

static void check(bool ok, const char* what) {
    ++nchecks;
    if (!ok) {
        ++nfailed;
        printf("selftest: FAILED: %s\n", what);
    }
}

// Make system call `n` with every general-purpose register but the
// syscall-clobbered rcx/r11 (and rax, the result) set to a known pattern;
// return true if all of them survived.
static bool registers_survive(int n) {
    uint64_t rbx, rdx, rsi, rdi, r8, r9, r10, r12, r13, r14, r15;
    asm volatile(
        "pushq %%rbp\n\t"
        "movq $0x1111, %%rbx\n\t"
        "movq $0x2222, %%rdx\n\t"
        "movq $0x3333, %%rsi\n\t"
        "movq $0x4444, %%rdi\n\t"
        "movq $0x5555, %%r8\n\t"
        "movq $0x6666, %%r9\n\t"
        "movq $0x7777, %%r10\n\t"
        "movq $0x8888, %%r12\n\t"
        "movq $0x9999, %%r13\n\t"
        "movq $0xAAAA, %%r14\n\t"
        "movq $0xBBBB, %%r15\n\t"
        "movq $0xCCCC, %%rbp\n\t"
        "syscall\n\t"
        "cmpq $0xCCCC, %%rbp\n\t"
        "popq %%rbp\n\t"
        "je 1f\n\t"
        "xorl %%ebx, %%ebx\n"       // rbp was clobbered: fail via rbx
        "1:"
        : "+a"(n), "=b"(rbx), "=d"(rdx), "=S"(rsi), "=D"(rdi),
          "=r"(r8), "=r"(r9), "=r"(r10), "=r"(r12), "=r"(r13), "=r"(r14), "=r"(r15)
        :
        : "rcx", "r11", "cc", "memory");
    // The "=r" outputs are whatever registers the compiler picked; compare
    // the ones with fixed registers exactly and the rest by value set.
    uint64_t rest = r8 + r9 + r10 + r12 + r13 + r14 + r15;
    return rbx == 0x1111 && rdx == 0x2222 && rsi == 0x3333 && rdi == 0x4444
        && rest == 0x5555 + 0x6666 + 0x7777 + 0x8888 + 0x9999 + 0xAAAA + 0xBBBB;
}

void process_main() {
    pid_t pid = sys_getpid();
    printf("selftest %d starting\n", pid);

    check(pid > 0, "getpid returns a positive pid");
    check(sys_getpid() == pid, "getpid is stable");
    check(sys_yield() == 0, "yield returns 0");

    // getsysname: good and bad buffers.
    char name[SYSNAME_MAX];
    memset(name, 'x', sizeof(name));
    check(sys_getsysname(name) == 0, "getsysname(stack buffer) succeeds");
    check(strncmp(name, "WeensyOS", 8) == 0 && strnlen(name, sizeof(name)) < sizeof(name),
          "getsysname writes a NUL-terminated WeensyOS name");
    check(sys_getsysname(nullptr) == E_FAULT, "getsysname(nullptr) is E_FAULT");
    check(sys_getsysname(reinterpret_cast<char*>(0x40000)) == E_FAULT,
          "getsysname(kernel address) is E_FAULT");
    check(sys_getsysname(reinterpret_cast<char*>(&process_main)) == E_FAULT,
          "getsysname(read-only text) is E_FAULT");
    check(sys_getsysname(reinterpret_cast<char*>(MEMSIZE_VIRTUAL - 4)) == E_FAULT,
          "getsysname(buffer running off the stack page) is E_FAULT");
    check(sys_getsysname(reinterpret_cast<char*>(0x0000800000000000UL)) == E_FAULT,
          "getsysname(non-canonical address) is E_FAULT");
    check(sys_getsysname(reinterpret_cast<char*>(~0UL - 8)) == E_FAULT,
          "getsysname(wrapping address) is E_FAULT");

    // page_alloc: argument checks, then a real page that can be replaced.
    check(sys_page_alloc(reinterpret_cast<void*>(0x200010)) == E_INVAL,
          "page_alloc(misaligned) is E_INVAL");
    check(sys_page_alloc(reinterpret_cast<void*>(0xFF000)) == E_INVAL,
          "page_alloc(below PROC_START_ADDR) is E_INVAL");
    check(sys_page_alloc(reinterpret_cast<void*>(MEMSIZE_VIRTUAL)) == E_INVAL,
          "page_alloc(MEMSIZE_VIRTUAL) is E_INVAL");
    auto page = reinterpret_cast<volatile uint64_t*>(0x200000);
    check(sys_page_alloc((void*) page) == 0, "page_alloc(0x200000) succeeds");
    check(page[0] == 0 && page[511] == 0, "a new page is zeroed");
    page[0] = 0x1234;
    check(page[0] == 0x1234, "a new page is writable");
    check(sys_page_alloc((void*) page) == 0, "page_alloc over a mapped page succeeds");
    check(page[0] == 0, "the replacing page is zeroed");

    // Unknown system calls are errors, not kernel panics.
    check(make_syscall(0) == uintptr_t(E_NOSYS), "system call 0 is E_NOSYS");
    check(make_syscall(999) == uintptr_t(E_NOSYS), "system call 999 is E_NOSYS");
    check(make_syscall(-1) == uintptr_t(E_NOSYS), "system call -1 is E_NOSYS");

    // The kernel preserves every register but rcx and r11, whether the call
    // returns directly (getpid) or through the scheduler (yield).
    check(registers_survive(SYSCALL_GETPID), "registers survive getpid");
    check(registers_survive(SYSCALL_YIELD), "registers survive yield");

    printf("selftest %d: %d of %d checks passed\n", pid, nchecks - nfailed, nchecks);
    sys_exit(nfailed == 0 ? 0 : 1);
}
