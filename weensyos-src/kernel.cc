#include "kernel.hh"
#include "commands.h"
#include "multiboot.h"

// The kernel proper: boot, the scheduler, exceptions and system calls.
//
// One CPU, one kernel stack (0x7F000-0x7FFFF). The kernel always runs with
// interrupts off on kernel_pagetable; processes run with interrupts on, on
// their own page tables. Kernel state never lives on the stack across a
// return to user mode: each entry starts again at the stack top.

proc ptable[NPROC];
proc* current;
volatile uint64_t ticks;

// The system-call ABI this kernel speaks (generated from syscalls.h): the
// harness decodes its calls with build/syscalls.json only if the strings match.
#include "syscall-abi.h"
extern "C" [[gnu::used]] const char weensyos_syscall_abi[] = WEENSYOS_SYSCALL_ABI;

#define SYSTEM_NAME "WeensyOS-Unicorn 0.1"
static_assert(sizeof(SYSTEM_NAME) <= SYSNAME_MAX, "system name fits");

[[noreturn]] static void schedule();
[[noreturn]] static void run(proc* p);


// Boot: multiboot information, command line, modules

#define BOOT_MAP_LIMIT          0x40000000UL    // the boot page table maps 1 GiB

static char boot_command[256];
// Course mode (build/kernel-course, -DCOURSE_MODE) boots like the course's
// kernel and reads only what the course's kernel can: its programs are
// built in (k-embed.S) and multiboot modules are ignored; it switches to a
// page table that maps only physical memory below MEMSIZE_PHYSICAL (2 MiB,
// plus the APIC pages) and only then reads the command line, through that
// mapping, as the course's kernel_start does with the pointer its entry code
// took from the multiboot information. A loader that leaves the command
// line above 2 MiB therefore makes this kernel fault, as it would the
// course's. Without a command line (after the course-style disk boot, EAX is
// not the magic) the command is the compiled-in WEENSYOS_FIRST_PROCESS.
#ifdef COURSE_MODE
#ifndef WEENSYOS_FIRST_PROCESS
#define WEENSYOS_FIRST_PROCESS "hello"
#endif
extern "C" const program embedded_programs[];   // ends with a null name

// The command line's address as the course's kernel_entry finds it: the
// cmdline field if EAX is the magic and the cmdline flag is set, else none.
static uintptr_t course_command_address(uint32_t magic, uintptr_t mbinfo) {
    if (magic != MULTIBOOT_MAGIC || mbinfo >= BOOT_MAP_LIMIT - sizeof(multiboot_info)) {
        return 0;
    }
    auto mbi = pa2kptr<const multiboot_info*>(mbinfo);
    return (mbi->flags & MULTIBOOT_FLAG_CMDLINE) ? mbi->cmdline : 0;
}

// After the switch to kernel_pagetable: take the programs and the command.
static void use_embedded_programs(uintptr_t command_pa) {
    for (const program* p = embedded_programs; p->name && nprograms != NPROGRAMS; ++p) {
        programs[nprograms++] = *p;
    }
    boot_command[0] = '\0';
    if (command_pa != 0) {
        strlcpy(boot_command, pa2kptr<const char*>(command_pa), sizeof(boot_command));
    }
    if (boot_command[0] == '\0') {
        strlcpy(boot_command, WEENSYOS_FIRST_PROCESS, sizeof(boot_command));
    }
}
#else
static char program_names[NPROGRAMS][32];

// Can [pa, pa + n) be read on the boot page table? The information, the
// module list and the strings are copied before anything is allocated, so
// they may lie anywhere the boot page table maps (a loader puts them in low
// memory, where a kernel that maps only 2 MiB can read them too).
static bool boot_data_ok(uintptr_t pa, size_t n) {
    return pa >= PAGESIZE && pa < BOOT_MAP_LIMIT && n <= BOOT_MAP_LIMIT - pa;
}

// Is [pa, pa + n) outside managed memory and inside what we can map? A
// module's contents stay where the loader put them for as long as the
// kernel runs, so they must not be memory the allocator hands out.
static bool boot_range_ok(uintptr_t pa, size_t n) {
    return pa >= MEMSIZE_PHYSICAL && boot_data_ok(pa, n);
}

// Copy the NUL-terminated string at physical `pa` into `buf`; false if it
// is not where the boot contract says it may be.
static bool boot_copy_string(char* buf, size_t size, uintptr_t pa) {
    if (!boot_data_ok(pa, size)) {
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
    if (!boot_data_ok(mbinfo, sizeof(multiboot_info))) {
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
        if (!boot_data_ok(mbi->mods_addr, size_t(count) * sizeof(multiboot_module))) {
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
#endif

// The command line: words naming programs, pseudo-commands (expanded
// here) and options, all listed in commands.h.

struct command_entry {
    const char* name;
    const char* programs;           // space-separated program names
};
#define COMMAND_ENTRY(name, programs) {#name, programs},
static const command_entry commands[] = {WEENSYOS_COMMANDS(COMMAND_ENTRY)};

#define OPTION_ENUM(name, description) OPTION_##name,
enum option_t { WEENSYOS_OPTIONS(OPTION_ENUM) NOPTIONS };
#define OPTION_NAME(name, description) #name,
static const char* const option_names[NOPTIONS] = {WEENSYOS_OPTIONS(OPTION_NAME)};

// Copy the next word of `s` into `word`; return where it ends, or nullptr
// if no word is left. Overlong words are truncated (and then match no
// name).
static const char* next_word(const char* s, char* word, size_t size) {
    while (*s == ' ' || *s == '\t') {
        ++s;
    }
    if (*s == '\0') {
        return nullptr;
    }
    size_t len = 0;
    for (; *s != '\0' && *s != ' ' && *s != '\t'; ++s) {
        if (len + 1 < size) {
            word[len++] = *s;
        }
    }
    word[len] = '\0';
    return s;
}

static int find_option(const char* word) {
    for (int i = 0; i != NOPTIONS; ++i) {
        if (strcmp(option_names[i], word) == 0) {
            return i;
        }
    }
    return -1;
}

static bool loop_command;            // option `loop`
static unsigned long loops_done;

static void set_option(option_t option) {
    switch (option) {              // no default: -Wswitch flags a new option
    case OPTION_memviewer:
        memviewer_enable();
        break;
    case OPTION_loop:
        loop_command = true;
        break;
    case NOPTIONS:
        break;
    }
}

// Start `name` for the command line (messages on screen and in the log).
static bool start_program(const char* name) {
    const program* prog = program_find(name);
    const char* why;
    if (!prog) {
        report(COLOR_ERROR, "cannot start '%s': no such program", name);
        return false;
    }
    pid_t pid = process_start(prog, &why);
    if (pid < 0) {
        report(COLOR_ERROR, "cannot start '%s': %s", name, why);
        return false;
    }
    log_printf("process %d started: %s\n", pid, prog->name);
    return true;
}

// Set every option of `command` (the first time), then start one process
// per program word, expanding pseudo-commands; no program word at all means
// `hello`. Returns how many processes started.
static int run_command(const char* command, bool first) {
    char word[64];
    for (const char* s = command; first && (s = next_word(s, word, sizeof(word))); ) {
        if (int option = find_option(word); option >= 0) {
            set_option(option_t(option));
        }
    }
    int nstarted = 0, nwords = 0;
    for (const char* s = command; (s = next_word(s, word, sizeof(word))); ) {
        if (find_option(word) >= 0) {
            continue;
        }
        ++nwords;
        const command_entry* cmd = nullptr;
        for (auto& c : commands) {
            if (strcmp(c.name, word) == 0) {
                cmd = &c;
            }
        }
        if (cmd) {
            char name[64];
            for (const char* t = cmd->programs; (t = next_word(t, name, sizeof(name))); ) {
                nstarted += start_program(name);
            }
        } else {
            nstarted += start_program(word);
        }
    }
    if (nwords == 0) {
        nstarted += start_program("hello");
    }
    return nstarted;
}

// kernel_start: called by kernel_entry (k-entry.S) on the kernel stack,
// with the multiboot magic and information address from the loader.
extern "C" [[noreturn]] void kernel_start(uint32_t magic, uintptr_t mbinfo) {
#ifdef COURSE_MODE
    uintptr_t command_pa = course_command_address(magic, mbinfo);
    init_hardware(MEMSIZE_PHYSICAL);    // from here on only the low 2 MiB are mapped
    use_embedded_programs(command_pa);
    log_printf("weensyos: booting, command \"%s\"\n", boot_command);
#else
    uintptr_t phys_end = read_boot_info(magic, mbinfo);
    log_printf("weensyos: booting, command \"%s\"\n", boot_command);
    init_hardware(phys_end);
#endif
    console_window_top = 0;
    console_clear();
    init_physpages();
    for (pid_t pid = 0; pid != NPROC; ++pid) {
        ptable[pid].pid = pid;
        ptable[pid].state = P_FREE;
    }
    current = nullptr;
    log_printf("weensyos: %zu free pages\n", kalloc_free_pages());

    if (run_command(boot_command, true) == 0) {
        log_printf("weensyos: no process started; powering off\n");
        poweroff();
    }
    memviewer_show();
    schedule();
}


// Scheduling

// Run `p` from its saved registers; never returns.
static void run(proc* p) {
    assert(p->state == P_RUNNABLE && p->pagetable);
    current = p;
    cpustate_switch(p);
    exception_return(p);
}

// Run the next runnable process after `current`, round robin. Blocked
// processes wait on the pipe, which only a running process can change: if
// none can run, the waits can never end, so end them (pipe_end_waits). With
// no processes at all, power off; or, with the option `loop`, log the free
// page count and run the command line again (a soak test: it must be the
// boot value every time).
static void schedule() {
    pid_t pid = current ? current->pid : 0;
    while (true) {
        bool blocked = false;
        for (int n = 0; n != NPROC - 1; ++n) {
            pid = pid % (NPROC - 1) + 1;    // 1, 2, ..., NPROC-1, 1, ...
            if (ptable[pid].state == P_RUNNABLE) {
                run(&ptable[pid]);
            }
            blocked = blocked || ptable[pid].state == P_BLOCKED;
        }
        if (!blocked) {
            if (loop_command) {
                ++loops_done;
                log_printf("weensyos: loop %lu done; %zu free pages\n", loops_done, kalloc_free_pages());
                if (run_command(boot_command, false) != 0) {
                    continue;
                }
            }
            log_printf("all processes exited; powering off\n");
            poweroff();
        }
        pipe_end_waits();
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
// mode end in run()/schedule(). The kernel itself runs with interrupts off,
// so an interrupt that hit the kernel would be unexpected; it returns,
// resuming the kernel where it was.
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
        memviewer_show();
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

[[noreturn]] static void syscall_panic(uintptr_t msg_va) {
    char msg[161];
    if (msg_va == 0) {
        strlcpy(msg, "(no message)", sizeof(msg));
    } else if (copy_string_from_user(current, msg_va, msg, sizeof(msg)) == E_FAULT) {
        strlcpy(msg, "(invalid message pointer)", sizeof(msg));
    }                                   // (E_RANGE: keep the truncated message)
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
    int r = process_page_alloc(current, addr);
    if (r == E_NOMEM) {
        log_printf("page_alloc: out of memory (process %d); free pages %zu\n",
                   current->pid, kalloc_free_pages());
    }
    return r;
}

// getsysname(buf): the ABI gives the name a SYSNAME_MAX-byte buffer, so
// all of it must be writable, as for any caller's char[SYSNAME_MAX],
// whatever the name's length today; the bytes after the NUL are zeroed.
static int syscall_getsysname(uintptr_t buf) {
    char name[SYSNAME_MAX] = SYSTEM_NAME;
    return copy_to_user(current, buf, name, sizeof(name));
}

// spawn(name): the name must be a string in the caller's memory, ending
// before PROGRAM_NAME_MAX bytes and before anything inaccessible.
static pid_t syscall_spawn(uintptr_t name_va) {
    char name[PROGRAM_NAME_MAX];
    ssize_t len = copy_string_from_user(current, name_va, name, sizeof(name));
    if (len < 0) {
        return len;                     // E_FAULT or E_RANGE
    }
    const program* prog = program_find(name);
    if (!prog) {
        return E_INVAL;
    }
    const char* why;
    pid_t pid = process_start(prog, &why);
    if (pid < 0) {
        log_printf("spawn: process %d cannot start '%s': %s\n", current->pid, name, why);
    } else {
        log_printf("process %d started: %s (spawned by %d)\n", pid, prog->name, current->pid);
    }
    return pid;
}

static pid_t syscall_fork() {
    pid_t pid = process_fork(current);
    if (pid == E_NOMEM) {
        log_printf("fork: out of memory (process %d); free pages %zu\n",
                   current->pid, kalloc_free_pages());
    }
    return pid;
}

// Called from k-entry.S with the saved registers; the return value goes
// back to the process in %rax. Calls that switch processes do not return:
// they leave the result in the saved %rax and schedule.
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

    case SYSCALL_SPAWN:
        return syscall_spawn(regs->reg_rdi);

    case SYSCALL_FORK:
        return syscall_fork();

    case SYSCALL_EXIT:
        process_exit(current, int(regs->reg_rdi));
        schedule();

    case SYSCALL_PIPEWRITE:
        if (!pipe_write(current, regs->reg_rdi, regs->reg_rsi)) {
            schedule();                 // blocked: the pipe finishes the call
        }
        return current->regs.reg_rax;

    case SYSCALL_PIPEREAD:
        if (!pipe_read(current, regs->reg_rdi, regs->reg_rsi)) {
            schedule();
        }
        return current->regs.reg_rax;

    default:
        return E_NOSYS;
    }
}
