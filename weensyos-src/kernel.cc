#include "kernel.hh"
#include "k-vmiter.hh"

// The kernel proper: boot, the scheduler, exceptions and system calls.
//
// One CPU, one kernel stack (0x7F000-0x7FFFF). The kernel always runs with
// interrupts off on kernel_pagetable; processes run with interrupts on, on
// their own page tables. Kernel state never lives on the stack across a
// return to user mode: each entry starts again at the stack top.

proc ptable[NPROC];
proc* current;
volatile uint64_t ticks;

#define SYSTEM_NAME "WeensyOS-Unicorn 0.1"
static_assert(sizeof(SYSTEM_NAME) <= SYSNAME_MAX, "system name fits");

[[noreturn]] static void schedule();
[[noreturn]] static void run(proc* p);


// Boot: multiboot information, command line, modules

#define MULTIBOOT_MAGIC         0x2BADB002U
#define MULTIBOOT_FLAG_MEM      0x1U
#define MULTIBOOT_FLAG_CMDLINE  0x4U
#define MULTIBOOT_FLAG_MODS     0x8U
#define BOOT_MAP_LIMIT          0x40000000UL    // the boot page table maps 1 GiB

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;         // KiB below 1 MiB
    uint32_t mem_upper;         // KiB above 1 MiB
    uint32_t boot_device;
    uint32_t cmdline;           // physical address of a C string
    uint32_t mods_count;
    uint32_t mods_addr;         // physical address of multiboot_module[]
};
struct multiboot_module {
    uint32_t mod_start;
    uint32_t mod_end;           // exclusive
    uint32_t string;            // physical address of the module's name
    uint32_t reserved;
};

static char boot_command[256];
static char program_names[NPROGRAMS][32];

// Is [pa, pa + n) outside managed memory and inside what we can map?
static bool boot_range_ok(uintptr_t pa, size_t n) {
    return pa >= MEMSIZE_PHYSICAL && pa < BOOT_MAP_LIMIT && n <= BOOT_MAP_LIMIT - pa;
}

// Copy the NUL-terminated string at physical `pa` into `buf`; false if it
// is not where the boot contract says it must be.
static bool boot_copy_string(char* buf, size_t size, uintptr_t pa) {
    if (!boot_range_ok(pa, size)) {
        return false;
    }
    strlcpy(buf, pa2kptr<const char*>(pa), size);
    return true;
}

// Read the multiboot hand-off (still on the boot page table, which maps
// the first GiB). Returns how much physical memory the kernel page table
// must identity-map: all of RAM and everything the loader handed over.
static uintptr_t read_boot_info(uint32_t magic, uintptr_t mbinfo) {
    uintptr_t phys_end = MEMSIZE_PHYSICAL;
    boot_command[0] = '\0';
    nprograms = 0;
    if (magic != MULTIBOOT_MAGIC) {
        return phys_end;                // no loader information: defaults
    }
    if (!boot_range_ok(mbinfo, sizeof(multiboot_info))) {
        log_printf("weensyos: multiboot information at %p out of range; ignored\n",
                   (void*) mbinfo);
        return phys_end;
    }
    auto mbi = pa2kptr<const multiboot_info*>(mbinfo);
    phys_end = max(phys_end, mbinfo + sizeof(multiboot_info));

    if (mbi->flags & MULTIBOOT_FLAG_MEM) {
        uintptr_t ram_end = 0x100000UL + uintptr_t(mbi->mem_upper) * 1024;
        phys_end = max(phys_end, min(ram_end, BOOT_MAP_LIMIT));
    }
    if ((mbi->flags & MULTIBOOT_FLAG_CMDLINE)
        && !boot_copy_string(boot_command, sizeof(boot_command), mbi->cmdline)) {
        log_printf("weensyos: command line at %#x out of range; ignored\n", mbi->cmdline);
    }

    if (mbi->flags & MULTIBOOT_FLAG_MODS) {
        uint32_t count = mbi->mods_count;
        if (!boot_range_ok(mbi->mods_addr, size_t(count) * sizeof(multiboot_module))) {
            log_printf("weensyos: module list at %#x out of range; ignored\n", mbi->mods_addr);
            count = 0;
        }
        auto mods = pa2kptr<const multiboot_module*>(mbi->mods_addr);
        for (uint32_t i = 0; i != count; ++i) {
            const multiboot_module& m = mods[i];
            char* name = program_names[nprograms];
            if (nprograms == NPROGRAMS) {
                log_printf("weensyos: more than %d modules; module %u ignored\n", NPROGRAMS, i);
            } else if (m.mod_end < m.mod_start || !boot_range_ok(m.mod_start, m.mod_end - m.mod_start)) {
                log_printf("weensyos: module %u [%#x, %#x) out of range; ignored\n",
                           i, m.mod_start, m.mod_end);
            } else if (!boot_copy_string(name, sizeof(program_names[0]), m.string)
                       || name[0] == '\0') {
                log_printf("weensyos: module %u has no usable name; ignored\n", i);
            } else {
                programs[nprograms].name = name;
                programs[nprograms].data = pa2kptr<const uint8_t*>(m.mod_start);
                programs[nprograms].size = m.mod_end - m.mod_start;
                ++nprograms;
                phys_end = max(phys_end, uintptr_t(m.mod_end));
            }
        }
    }
    return round_up(phys_end, pageentry_span(1));
}

// Start one process per word of the command line. Returns how many started.
static int start_processes(const char* command) {
    int nstarted = 0;
    const char* p = command;
    while (true) {
        while (*p == ' ' || *p == '\t') {
            ++p;
        }
        if (*p == '\0') {
            return nstarted;
        }
        char word[64];
        size_t len = 0;
        for (; *p != '\0' && *p != ' ' && *p != '\t'; ++p) {
            if (len + 1 < sizeof(word)) {
                word[len++] = *p;
            }
        }
        word[len] = '\0';

        const program* prog = program_find(word);
        pid_t pid = 1;
        while (pid < NPROC && ptable[pid].state != P_FREE) {
            ++pid;
        }
        const char* why;
        if (!prog) {
            report(COLOR_ERROR, "cannot start '%s': no such program", word);
        } else if (pid == NPROC) {
            report(COLOR_ERROR, "cannot start '%s': too many processes", word);
        } else if (process_setup(pid, prog, &why) < 0) {
            report(COLOR_ERROR, "cannot start '%s': %s", word, why);
        } else {
            log_printf("process %d started: %s\n", pid, prog->name);
            ++nstarted;
        }
    }
}

// kernel_start: called by kernel_entry (k-entry.S) on the kernel stack,
// with the multiboot magic and information address from the loader.
extern "C" [[noreturn]] void kernel_start(uint32_t magic, uintptr_t mbinfo) {
    uintptr_t phys_end = read_boot_info(magic, mbinfo);
    log_printf("weensyos: booting, command \"%s\"\n", boot_command);

    init_hardware(phys_end);
    console_clear();
    init_physpages();
    for (pid_t pid = 0; pid != NPROC; ++pid) {
        ptable[pid].pid = pid;
        ptable[pid].state = P_FREE;
    }
    current = nullptr;
    log_printf("weensyos: %zu free pages\n", kalloc_free_pages());

    const char* command = boot_command;
    const char* s = command;
    while (*s == ' ' || *s == '\t') {
        ++s;
    }
    if (*s == '\0') {
        command = "hello";
    }
    if (start_processes(command) == 0) {
        log_printf("weensyos: no process started; powering off\n");
        poweroff();
    }
    schedule();
}


// Scheduling

// Run `p` from its saved registers; never returns.
static void run(proc* p) {
    assert(p->state == P_RUNNABLE && p->pagetable);
    current = p;
    exception_return(p);
}

// Pick the next runnable process after `current`, round robin. With
// processes but none runnable, wait for interrupts in the idle loop; with
// no processes at all, power off.
static void schedule() {
    pid_t pid = current ? current->pid : 0;
    while (true) {
        bool any = false;
        for (int n = 0; n != NPROC - 1; ++n) {
            pid = pid % (NPROC - 1) + 1;    // 1, 2, ..., NPROC-1, 1, ...
            if (ptable[pid].state == P_RUNNABLE) {
                run(&ptable[pid]);
            }
            any = any || ptable[pid].state != P_FREE;
        }
        if (!any) {
            log_printf("all processes exited; powering off\n");
            poweroff();
        }
        // Idle. A timer interrupt here is taken on this stack, below our
        // frame, and exception() returns straight back (no scheduling).
        check_keyboard();
        asm volatile("sti; hlt; cli" : : : "memory");
    }
}

// Tear down `p` and log its end.
static void process_exit(proc* p, int status) {
    process_free(p);
    log_printf("process %d (%s) exited with status %d; free pages %zu\n",
               p->pid, p->name, status, kalloc_free_pages());
}


// Exceptions and interrupts

static const char* exception_name(unsigned intno) {
    static const char* const names[] = {
        "divide error", "debug exception", "NMI", "breakpoint", "overflow",
        "bound range exceeded", "invalid opcode", "device not available",
        "double fault", "coprocessor segment overrun", "invalid TSS",
        "segment not present", "stack fault", "general protection fault",
        "page fault", "reserved exception", "x87 floating-point error",
        "alignment check", "machine check", "SIMD floating-point error"
    };
    return intno < arraysize(names) ? names[intno] : "unexpected interrupt";
}

// "read, missing page" etc. for a page-fault error code.
static void describe_page_fault(char* buf, size_t size, uint64_t errcode) {
    const char* access = errcode & PFERR_FETCH ? "exec"
        : errcode & PFERR_WRITE ? "write" : "read";
    const char* problem = errcode & PFERR_PRESENT ? "protection problem" : "missing page";
    snprintf(buf, size, "%s, %s", access, problem);
}

// Called from k-entry.S with the saved registers. Interrupts from user
// mode end in run()/schedule(); only interrupts that hit the kernel (its
// idle loop) return, resuming the kernel where it was.
extern "C" void exception(regstate* regs) {
    bool from_user = (regs->reg_cs & 3) != 0;
    if (from_user) {
        assert(current && current->state == P_RUNNABLE);
        current->regs = *regs;
        regs = &current->regs;
    }
    console_show_cursor();
    check_keyboard();

    uint32_t intno = regs->reg_intno;
    if (intno == INT_TIMER) {
        ++ticks;
        *pa2kptr<volatile uint64_t*>(CONSOLE_TICKS_ADDR) = ticks;
        lapic_eoi();
        if (from_user) {
            schedule();
        }
        return;
    } else if (intno == INT_LAPIC_ERROR || intno == INT_SPURIOUS) {
        if (intno == INT_LAPIC_ERROR) {
            lapic_eoi();                // a spurious interrupt takes no EOI
        }
        if (from_user) {
            run(current);
        }
        return;
    }

    char what[48];
    if (intno == INT_PF) {
        uintptr_t addr = rdcr2();
        describe_page_fault(what, sizeof(what), regs->reg_errcode);
        if (!from_user) {
            log_printf("kernel trap frame: rsp %p, rbp %p; backtrace:\n",
                       (void*) regs->reg_rsp, (void*) regs->reg_rbp);
            log_backtrace(regs->reg_rbp);
            panic("Kernel page fault on %p (%s, rip=%p)",
                  (void*) addr, what, (void*) regs->reg_rip);
        }
        report(COLOR_ERROR, "Process %d page fault on %p (%s, rip=%p)",
               current->pid, (void*) addr, what, (void*) regs->reg_rip);
    } else {
        if (!from_user) {
            log_printf("kernel trap frame: %s, error %#lx, rsp %p, rbp %p; backtrace:\n",
                       exception_name(intno), (unsigned long) regs->reg_errcode,
                       (void*) regs->reg_rsp, (void*) regs->reg_rbp);
            log_backtrace(regs->reg_rbp);
            panic("Unhandled exception %u (rip=%p)", intno, (void*) regs->reg_rip);
        }
        report(COLOR_ERROR, "Process %d %s (vector %u, error %#lx, rip=%p)",
               current->pid, exception_name(intno), intno,
               (unsigned long) regs->reg_errcode, (void*) regs->reg_rip);
    }
    // A faulting process dies; everyone else carries on.
    process_exit(current, -1);
    schedule();
}


// System calls

// Does `p` map every byte of [va, va + n) present and user-accessible
// (and writable if `write`)?
static bool user_range_ok(const proc* p, uintptr_t va, size_t n, bool write) {
    if (n == 0) {
        return true;
    }
    if (va + n < va) {
        return false;                   // wraps around
    }
    uint64_t need = PTE_PU | (write ? PTE_W : 0);
    for (vmiter it(p, round_down(va, PAGESIZE)); it.va() < va + n; it += PAGESIZE) {
        if ((it.perm() & need) != need) {
            return false;
        }
    }
    return true;
}

// Copy `n` bytes from the kernel to user address `dst` in `p`.
static int copy_to_user(const proc* p, uintptr_t dst, const void* src, size_t n) {
    if (!user_range_ok(p, dst, n, true)) {
        return E_FAULT;
    }
    auto s = static_cast<const uint8_t*>(src);
    while (n != 0) {
        vmiter it(p, dst);
        size_t chunk = min(n, size_t(PAGESIZE - dst % PAGESIZE));
        memcpy(it.kptr(), s, chunk);
        dst += chunk, s += chunk, n -= chunk;
    }
    return 0;
}

// Copy the string at user address `src` in `p` into `buf` (capacity
// `size`), truncating if needed. Returns its length, or E_FAULT if an
// inaccessible byte comes before the terminating NUL.
static ssize_t copy_string_from_user(const proc* p, uintptr_t src, char* buf, size_t size) {
    assert(size > 0);
    vmiter it(p, src);
    size_t len = 0;
    for (; len + 1 < size; ++len, it += 1) {
        if (!it.user()) {
            return E_FAULT;
        }
        char c = *it.kptr<const char*>();
        if (c == '\0') {
            break;
        }
        buf[len] = c;
    }
    buf[len] = '\0';
    return len;
}

[[noreturn]] static void syscall_panic(uintptr_t msg_va) {
    char msg[161];
    if (msg_va == 0) {
        strlcpy(msg, "(no message)", sizeof(msg));
    } else if (copy_string_from_user(current, msg_va, msg, sizeof(msg)) < 0) {
        strlcpy(msg, "(invalid message pointer)", sizeof(msg));
    }
    size_t n = strlen(msg);
    while (n != 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    report(COLOR_PANIC, "USER PANIC: %s", msg);
    log_printf("  in process %d (%s), rip=%p\n", current->pid, current->name,
               (void*) current->regs.reg_rip);
    console_show_cursor();
    fail();
}

static int syscall_page_alloc(uintptr_t addr) {
    if (addr % PAGESIZE != 0 || addr < PROC_START_ADDR || addr >= MEMSIZE_VIRTUAL) {
        return E_INVAL;
    }
    void* page = kalloc(PAGESIZE);
    if (!page) {
        return E_NOMEM;
    }
    vmiter it(current, addr);
    void* old = it.user() ? it.kptr() : nullptr;
    if (it.try_map(kptr2pa(page), PTE_PWU) < 0) {
        kfree(page);
        return E_NOMEM;
    }
    physpage_set_owner(kptr2pa(page), current->pid);
    // New page-table pages (if any) are the process's too.
    for (ptiter pit(current); pit.active(); pit.next()) {
        if (physpages[pit.pa() / PAGESIZE].owner == PO_KERNEL) {
            physpage_set_owner(pit.pa(), current->pid);
        }
    }
    kfree(old);
    return 0;
}

static int syscall_getsysname(uintptr_t buf) {
    return copy_to_user(current, buf, SYSTEM_NAME, sizeof(SYSTEM_NAME));
}

// Called from k-entry.S with the saved registers; the return value goes
// back to the process in %rax. Calls that switch processes do not return.
extern "C" uintptr_t syscall(regstate* regs) {
    assert(current && current->state == P_RUNNABLE);
    current->regs = *regs;              // in case we reschedule
    regs = &current->regs;
    console_show_cursor();
    check_keyboard();

    switch (regs->reg_rax) {
    case SYSCALL_GETPID:
        return current->pid;

    case SYSCALL_YIELD:
        current->regs.reg_rax = 0;
        schedule();

    case SYSCALL_PANIC:
        syscall_panic(regs->reg_rdi);

    case SYSCALL_PAGE_ALLOC:
        return syscall_page_alloc(regs->reg_rdi);

    case SYSCALL_GETSYSNAME:
        return syscall_getsysname(regs->reg_rdi);

    case SYSCALL_EXIT:
        process_exit(current, int(regs->reg_rdi));
        schedule();

    case SYSCALL_SPAWN:                 // not yet implemented
    case SYSCALL_PIPEWRITE:
    case SYSCALL_PIPEREAD:
    case SYSCALL_FORK:
    default:
        return E_NOSYS;
    }
}
