#include "kernel.hh"

// The machine: kernel page table, segments, interrupts, local APIC and its
// timer, the keyboard, the CGA cursor, the parallel-port log, power-off,
// and panics: the devices of the q35-like PC the harness models (see
// README.md and docs/architecture.md at the top of the repository).


// Kernel page table: 0..phys_map_end identity-mapped (4 KiB pages below
// 2 MiB so page 0 can stay unmapped, 2 MiB pages above), plus the APIC
// MMIO pages. Kernel-only everywhere. Statically allocated: it must exist
// before the page allocator does.
x86_64_pagetable kernel_pagetable[5];
namespace {
x86_64_pagetable& kpt_l4 = kernel_pagetable[0];
x86_64_pagetable& kpt_l3 = kernel_pagetable[1];
x86_64_pagetable& kpt_l2_low = kernel_pagetable[2];     // VA 0..1 GiB
x86_64_pagetable& kpt_l1_low = kernel_pagetable[3];     // VA 0..2 MiB
x86_64_pagetable& kpt_l2_mmio = kernel_pagetable[4];    // VA 3..4 GiB

void init_kernel_pagetable(uintptr_t phys_map_end) {
    const uintptr_t gib = pageentry_span(2), mib2 = pageentry_span(1);
    assert(phys_map_end >= MEMSIZE_PHYSICAL && phys_map_end <= gib);

    kpt_l4.entry[0] = kptr2pa(&kpt_l3) | PTE_PW;
    kpt_l3.entry[0] = kptr2pa(&kpt_l2_low) | PTE_PW;
    kpt_l3.entry[LAPIC_ADDR / gib] = kptr2pa(&kpt_l2_mmio) | PTE_PW;
    kpt_l2_low.entry[0] = kptr2pa(&kpt_l1_low) | PTE_PW;
    for (uintptr_t pa = PAGESIZE; pa < mib2; pa += PAGESIZE) {
        kpt_l1_low.entry[pageindex(pa, 0)] = pa | PTE_PW;  // page 0 unmapped
    }
    for (uintptr_t pa = mib2; pa < phys_map_end; pa += mib2) {
        kpt_l2_low.entry[pageindex(pa, 1)] = pa | PTE_PW | PTE_PS;
    }
    // Device registers: uncached 2 MiB pages.
    static_assert(LAPIC_ADDR / pageentry_span(2) == IOAPIC_ADDR / pageentry_span(2),
                  "APICs share one L2 page");
    const uintptr_t mmio[] = {IOAPIC_ADDR, LAPIC_ADDR};
    for (uintptr_t pa : mmio) {
        kpt_l2_mmio.entry[pageindex(pa, 1)] =
            round_down(pa, mib2) | PTE_PW | PTE_PS | PTE_PCD | PTE_PWT;
    }
    lcr3(kptr2pa(kernel_pagetable));
}


// Segments. The GDT layout is fixed (the selectors are in x86-64.h):
// null, kernel code, kernel data, user code, user data, 64-bit TSS.
uint64_t gdt_segments[7];
x86_64_taskstate kernel_task_descriptor;
x86_64_gatedescriptor interrupt_descriptors[256];

void set_gate(x86_64_gatedescriptor* gd, uintptr_t addr, int dpl) {
    gd->gd_low = (addr & 0xFFFF) | (uint64_t(SEGSEL_KERN_CODE) << 16)
        | (uint64_t(X86GATE_INTERRUPT) << 40) | (uint64_t(dpl) << 45)
        | (1UL << 47) | ((addr >> 16 & 0xFFFF) << 48);
    gd->gd_high = addr >> 32;
}

void init_segments() {
    const uint64_t code = X86SEG_P | X86SEG_S | X86SEG_X | X86SEG_R | X86SEG_A | X86SEG_L;
    const uint64_t data = X86SEG_P | X86SEG_S | X86SEG_W | X86SEG_A;
    gdt_segments[0] = 0;
    gdt_segments[SEGSEL_KERN_CODE >> 3] = code | X86SEG_DPL(0);
    gdt_segments[SEGSEL_KERN_DATA >> 3] = data | X86SEG_DPL(0);
    gdt_segments[SEGSEL_APP_CODE >> 3] = code | X86SEG_DPL(3);
    gdt_segments[SEGSEL_APP_DATA >> 3] = data | X86SEG_DPL(3);

    // TSS: only rsp0 (the kernel stack for interrupts from user mode). The
    // I/O-map base lies beyond the limit, so there is no I/O bitmap and
    // user-mode port I/O always faults.
    memset(&kernel_task_descriptor, 0, sizeof(kernel_task_descriptor));
    kernel_task_descriptor.ts_rsp[0] = KERNEL_STACK_TOP;
    kernel_task_descriptor.ts_iomap_base = sizeof(x86_64_taskstate);
    uint64_t tss = kptr2pa(&kernel_task_descriptor);
    uint64_t limit = sizeof(x86_64_taskstate) - 1;
    gdt_segments[SEGSEL_TASKSTATE >> 3] = (limit & 0xFFFF) | ((tss & 0xFFFFFF) << 16)
        | X86SEG_TSS | X86SEG_P | ((tss >> 24 & 0xFF) << 56);
    gdt_segments[(SEGSEL_TASKSTATE >> 3) + 1] = tss >> 32;

    x86_64_pseudodescriptor gdtr;
    gdtr.pseudod_limit = sizeof(gdt_segments) - 1;
    gdtr.pseudod_base = kptr2pa(gdt_segments);
    asm volatile("lgdt %0" : : "m"(gdtr) : "memory");
    // Reload CS with a far return, then the data segments.
    asm volatile("pushq %0; leaq 1f(%%rip), %%rax; pushq %%rax; lretq; 1:"
                 : : "i"(SEGSEL_KERN_CODE) : "rax", "memory");
    asm volatile("movw %w0, %%ds; movw %w0, %%es; movw %w0, %%ss; movw %w0, %%fs; movw %w0, %%gs"
                 : : "r"(SEGSEL_KERN_DATA) : "memory");
    asm volatile("ltr %w0" : : "r"(SEGSEL_TASKSTATE));

    // IDT: every vector is a 64-bit interrupt gate (IF cleared on entry);
    // only int3 may be raised from user mode.
    for (int v = 0; v != 256; ++v) {
        set_gate(&interrupt_descriptors[v], kptr2pa(exception_stubs + 16 * v),
                 v == INT_BP ? 3 : 0);
    }
    x86_64_pseudodescriptor idtr;
    idtr.pseudod_limit = sizeof(interrupt_descriptors) - 1;
    idtr.pseudod_base = kptr2pa(interrupt_descriptors);
    asm volatile("lidt %0" : : "m"(idtr) : "memory");
}


// Local APIC: 32-bit registers every 16 bytes of its MMIO page.
enum lapic_reg {
    LAPIC_ID = 0x2, LAPIC_EOI = 0xB, LAPIC_SVR = 0xF, LAPIC_ESR = 0x28,
    LAPIC_LVT_TIMER = 0x32, LAPIC_LVT_LINT0 = 0x35, LAPIC_LVT_LINT1 = 0x36,
    LAPIC_LVT_ERROR = 0x37, LAPIC_TIMER_INITIAL = 0x38, LAPIC_TIMER_DIVIDE = 0x3E
};
#define LAPIC_SVR_ENABLE        0x100U
#define LAPIC_LVT_MASKED        0x10000U
#define LAPIC_TIMER_PERIODIC    0x20000U
#define LAPIC_TIMER_DIVIDE_1    0xBU
#define LAPIC_TIMER_HZ          1000000000U     // the timer counts at 1 GHz

volatile uint32_t& lapic(lapic_reg r) {
    return *reinterpret_cast<volatile uint32_t*>(LAPIC_ADDR + 16 * r);
}

uint32_t ioapic_read(uint32_t reg) {
    *reinterpret_cast<volatile uint32_t*>(IOAPIC_ADDR) = reg;          // IOREGSEL
    return *reinterpret_cast<volatile uint32_t*>(IOAPIC_ADDR + 0x10);  // IOWIN
}

void init_interrupt_controllers() {
    // The CPU must have a local APIC, enabled at the standard address.
    assert(cpuid(1).edx & (1U << 9));
    uint64_t apic_base = rdmsr(MSR_IA32_APIC_BASE);
    if (apic_base == 0) {
        // An emulator that does not implement the MSR reads 0; real
        // hardware never does (the BSP bit and the base are always set).
        log_printf("weensyos: IA32_APIC_BASE reads 0; assuming the LAPIC at %p\n",
                   (void*) LAPIC_ADDR);
    } else {
        assert(apic_base & IA32_APIC_BASE_ENABLED);
        assert((apic_base & 0xFFFFFF000UL) == LAPIC_ADDR);
    }

    // All legacy 8259 IRQs masked (the PIC is not re-initialised).
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);

    // The I/O APIC stays fully masked; check that it is the expected model.
    uint32_t ioapic_version = ioapic_read(1);
    assert((ioapic_version & 0xFF) == 0x11 || (ioapic_version & 0xFF) == 0x20);
    assert((ioapic_version >> 16 & 0xFF) >= 0x17);

    lapic(LAPIC_SVR) = (lapic(LAPIC_SVR) & ~0xFFU) | LAPIC_SVR_ENABLE | INT_SPURIOUS;
    lapic(LAPIC_TIMER_DIVIDE) = LAPIC_TIMER_DIVIDE_1;
    lapic(LAPIC_LVT_TIMER) = LAPIC_TIMER_PERIODIC | INT_TIMER;
    lapic(LAPIC_LVT_LINT0) = LAPIC_LVT_MASKED;
    lapic(LAPIC_LVT_LINT1) = LAPIC_LVT_MASKED;
    lapic(LAPIC_LVT_ERROR) = INT_LAPIC_ERROR;
    lapic(LAPIC_ESR) = 0;           // the write latches, the read clears
    uint32_t esr = lapic(LAPIC_ESR);
    (void) esr;
    lapic(LAPIC_EOI) = 0;
    // Start the periodic timer last. The kernel runs with IF = 0, so the
    // first tick arrives once a process runs (or the idle loop waits).
    lapic(LAPIC_TIMER_INITIAL) = LAPIC_TIMER_HZ / HZ;
}
}

void lapic_eoi() {
    lapic(LAPIC_EOI) = 0;
}

void init_hardware(uintptr_t phys_map_end) {
    init_kernel_pagetable(phys_map_end);
    init_segments();

    // The FPU and SSE are the processes' (k-cpustate.cc): no lazy switching
    // (EM, TS clear), FXSAVE keeps the SSE registers, SSE errors are #XM.
    lcr0((rdcr0() | CR0_PE | CR0_PG | CR0_WP | CR0_AM | CR0_MP | CR0_NE) & ~(CR0_EM | CR0_TS));
    lcr4(rdcr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);

    // System calls: LSTAR is the entry; FMASK clears IF (the kernel runs
    // with interrupts off), DF and friends. STAR holds the kernel selector
    // `syscall` loads (CS 0x08, SS 0x10). Its sysret half is the course's
    // value and never used: we return with iretq, and the fixed GDT layout
    // (user data above user code) cannot satisfy sysret's arithmetic.
    wrmsr(MSR_IA32_STAR, (uint64_t(SEGSEL_KERN_CODE) << 32)
          | (uint64_t(SEGSEL_APP_CODE) << 48));
    wrmsr(MSR_IA32_LSTAR, reinterpret_cast<uint64_t>(syscall_entry));
    wrmsr(MSR_IA32_FMASK, EFLAGS_TF | EFLAGS_DF | EFLAGS_IF | EFLAGS_IOPL
          | EFLAGS_AC | EFLAGS_NT);

    init_interrupt_controllers();
}


// CGA cursor through the CRTC (index 14: high byte, 15: low byte). Only
// touch the ports when the position changed: this runs on every entry.
void console_show_cursor() {
    static int shown = -1;
    int cpos = cursorpos;
    if (cpos < 0 || cpos > CONSOLE_CELLS) {
        cpos = 0;
    }
    if (cpos != shown) {
        outb(0x3D4, 14);
        outb(0x3D5, cpos >> 8);
        outb(0x3D4, 15);
        outb(0x3D5, cpos & 0xFF);
        shown = cpos;
    }
}


// Keyboard: the 8042 is polled, never interrupt-driven. Scan code set 1;
// 0xE0 prefixes extended keys; bit 7 marks a release.
#define KBD_STATUS_PORT     0x64
#define KBD_DATA_PORT       0x60
#define KBD_STATUS_FULL     0x01
#define KBD_STATUS_AUX      0x20    // byte is from the mouse
#define SCAN_CTRL           0x1D
#define SCAN_Q              0x10
#define SCAN_C              0x2E

void check_keyboard() {
    static bool extended = false;
    static bool ctrl_down[2] = {false, false};  // left, right
    // Bounded: a device that always claims data cannot trap the kernel.
    for (int n = 0; n != 16; ++n) {
        uint8_t status = inb(KBD_STATUS_PORT);
        if (!(status & KBD_STATUS_FULL)) {
            return;
        }
        uint8_t code = inb(KBD_DATA_PORT);
        if (status & KBD_STATUS_AUX) {
            continue;
        }
        if (code == 0xE0) {
            extended = true;
            continue;
        }
        bool released = code & 0x80;
        code &= 0x7F;
        bool was_extended = extended;
        extended = false;
        if (code == SCAN_CTRL) {
            ctrl_down[was_extended] = !released;
        } else if (!released && !was_extended && code == SCAN_Q) {
            log_printf("keyboard: 'q' pressed; powering off\n");
            poweroff();
        } else if (!released && !was_extended && code == SCAN_C
                   && (ctrl_down[0] || ctrl_down[1])) {
            log_printf("keyboard: Ctrl-C pressed; powering off\n");
            poweroff();
        }
    }
}


// Log: bytes to the parallel port LPT1. Each byte: wait (boundedly) for
// the printer to be ready, latch it on the data port, and pulse STROBE; the
// byte is taken on the rising edge. A missing or stuck printer only slows
// the log down, never stops the kernel.
#define LPT_DATA            0x378
#define LPT_STATUS          0x379
#define LPT_CONTROL         0x37A
#define LPT_STATUS_NOTBUSY  0x80
#define LPT_CONTROL_IDLE    0x0C    // SELECT | INIT (not reset), STROBE low
#define LPT_CONTROL_STROBE  0x0D
#define LPT_READY_POLLS     12800

namespace {
void log_putc(printer*, unsigned char c, int) {
    for (int i = 0; i != LPT_READY_POLLS && !(inb(LPT_STATUS) & LPT_STATUS_NOTBUSY); ++i) {
        pause();
    }
    outb(LPT_DATA, c);
    outb(LPT_CONTROL, LPT_CONTROL_STROBE);
    outb(LPT_CONTROL, LPT_CONTROL_IDLE);
}
}

void log_vprintf(const char* format, va_list val) {
    static bool initialized = false;
    if (!initialized) {
        outb(LPT_CONTROL, LPT_CONTROL_IDLE);
        initialized = true;
    }
    printer p;
    p.putc = log_putc;
    printer_vprintf(&p, 0, format, val);
}

void log_printf(const char* format, ...) {
    va_list val;
    va_start(val, format);
    log_vprintf(format, val);
    va_end(val);
}

// Console messages from the kernel start on a fresh line.
static void console_start_line() {
    int cpos = cursorpos;
    if (cpos < CPOS(console_window_row(), 0) || cpos > CONSOLE_CELLS) {
        cursorpos = CPOS(console_window_row(), 0);
    } else if (cpos % CONSOLE_COLUMNS != 0) {
        cursorpos = cpos - cpos % CONSOLE_COLUMNS + CONSOLE_COLUMNS;
    }
}

static bool ends_with_newline(const char* format) {
    size_t n = strlen(format);
    return n != 0 && format[n - 1] == '\n';
}

void report(int color, const char* format, ...) {
    va_list val;
    va_start(val, format);
    va_list val2;
    va_copy(val2, val);
    console_start_line();
    console_vprintf(color, format, val);
    log_vprintf(format, val2);
    if (!ends_with_newline(format)) {
        console_printf(color, "\n");
        log_printf("\n");
    }
    va_end(val2);
    va_end(val);
}

void log_backtrace(uintptr_t rbp) {
    // Frames live on the kernel stack page; anything else ends the walk.
    for (int depth = 0; depth != 16; ++depth) {
        if (rbp < KERNEL_STACK_TOP - PAGESIZE || rbp > KERNEL_STACK_TOP - 16
            || rbp % 8 != 0) {
            break;
        }
        auto frame = reinterpret_cast<const uintptr_t*>(rbp);
        log_printf("  #%d  %p\n", depth, (void*) frame[1]);
        rbp = frame[0];
    }
}


// Panics: the message on the console (at the start of a line) and then as
// one "PANIC: ..." log line, which is how the harness recognizes them.
void panic(const char* format, ...) {
    static bool panicking = false;
    cli();
    if (panicking) {
        fail();                     // a panic while panicking: just stop
    }
    panicking = true;

    char msg[240];
    va_list val;
    va_start(val, format);
    vsnprintf(msg, sizeof(msg), format, val);
    va_end(val);
    size_t n = strlen(msg);
    if (n != 0 && msg[n - 1] == '\n') {
        msg[n - 1] = '\0';
    }

    console_start_line();
    console_printf(COLOR_PANIC, "PANIC: %s", msg);
    console_printf(COLOR_NORMAL, "\n");
    console_show_cursor();
    log_printf("PANIC: %s\n", msg);
    log_printf("backtrace:\n");
    log_backtrace(uintptr_t(__builtin_frame_address(0)));
    fail();
}

void assert_fail(const char* file, int line, const char* msg) {
    panic("%s:%d: assertion '%s' failed", file, line, msg);
}

void fail() {
    cli();
    while (true) {
        check_keyboard();
        pause();
    }
}


// Power-off: find the chipset's ACPI power-management function by a PCI
// configuration scan (mechanism 1) and enter soft-off (SLP_EN, SLP_TYP 0).
#define PCI_CONFIG_ADDR     0xCF8
#define PCI_CONFIG_DATA     0xCFC
#define PCI_ID_PIIX4_PM     0x71138086U
#define PCI_ID_ICH9_LPC     0x29188086U
#define PCI_PMBASE          0x40
#define PM1_CNT_OFFSET      4
#define PM1_CNT_SLP_EN      0x2000

namespace {
uint32_t pci_config_addr(int bus, int dev, int func, int reg) {
    return 0x80000000U | bus << 16 | dev << 11 | func << 8 | (reg & 0xFC);
}
uint32_t pci_read32(int bus, int dev, int func, int reg) {
    outl(PCI_CONFIG_ADDR, pci_config_addr(bus, dev, func, reg));
    return inl(PCI_CONFIG_DATA);
}
void pci_write32(int bus, int dev, int func, int reg, uint32_t x) {
    outl(PCI_CONFIG_ADDR, pci_config_addr(bus, dev, func, reg));
    outl(PCI_CONFIG_DATA, x);
}
}

void poweroff() {
    cli();
    for (int bus = 0; bus != 8; ++bus) {
        for (int dev = 0; dev != 32; ++dev) {
            for (int func = 0; func != 8; ++func) {
                uint32_t id = pci_read32(bus, dev, func, 0);
                if ((id & 0xFFFF) == 0xFFFF) {
                    if (func == 0) {
                        break;              // no device here
                    }
                    continue;
                }
                if (id == PCI_ID_PIIX4_PM || id == PCI_ID_ICH9_LPC) {
                    uint32_t pmbase = pci_read32(bus, dev, func, PCI_PMBASE) & 0xFFC0;
                    if (pmbase == 0) {
                        // No firmware set it up: assign the usual base and
                        // enable the PM I/O space (PIIX4 PMREGMISC bit 0 at
                        // 0x80; ICH9 ACPI_CNTL ACPI_EN bit 7 at 0x44).
                        pmbase = 0x600;
                        pci_write32(bus, dev, func, PCI_PMBASE, pmbase | 1);
                        int reg = id == PCI_ID_PIIX4_PM ? 0x80 : 0x44;
                        int bit = id == PCI_ID_PIIX4_PM ? 0x01 : 0x80;
                        pci_write32(bus, dev, func, reg,
                                    pci_read32(bus, dev, func, reg) | bit);
                    }
                    outw(pmbase + PM1_CNT_OFFSET, PM1_CNT_SLP_EN);
                    while (true) {  // the machine is gone
                        pause();
                    }
                }
                // Only multifunction devices have functions 1-7.
                uint32_t header = pci_read32(bus, dev, func, 0x0C);
                if (func == 0 && !(header & 0x800000)) {
                    break;
                }
            }
        }
    }
    console_printf(CPOS(24, 0), COLOR_PANIC, "Cannot power off!");
    log_printf("Cannot power off!\n");
    while (true) {
        pause();
    }
}
