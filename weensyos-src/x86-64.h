#ifndef WEENSYOS_X86_64_H
#define WEENSYOS_X86_64_H
#include "types.h"

// x86-64 architecture: page tables, segment descriptors, the saved-register
// frame, control registers, MSRs, and thin wrappers around the instructions
// that C++ cannot express.

// Paging
#define PAGEOFFBITS     12
#define PAGESIZE        (1UL << PAGEOFFBITS)        // 4096
#define PAGEINDEXBITS   9
#define NPAGETABLEENTRIES 512

typedef uint64_t x86_64_pageentry_t;
struct __attribute__((aligned(PAGESIZE))) x86_64_pagetable {
    x86_64_pageentry_t entry[NPAGETABLEENTRIES];
};

// Index of `va` in a page-table page at `level` (0 = L1 ... 3 = L4).
inline constexpr unsigned pageindex(uintptr_t va, int level) {
    return (va >> (PAGEOFFBITS + level * PAGEINDEXBITS)) & 0x1FF;
}
// Bytes of address space covered by one entry at `level`.
inline constexpr uintptr_t pageentry_span(int level) {
    return uintptr_t(1) << (PAGEOFFBITS + level * PAGEINDEXBITS);
}

#define PTE_P           0x1UL       // present
#define PTE_W           0x2UL       // writable
#define PTE_U           0x4UL       // user-accessible
#define PTE_PWT         0x8UL       // write-through
#define PTE_PCD         0x10UL      // cache disable
#define PTE_A           0x20UL      // accessed (set by hardware)
#define PTE_D           0x40UL      // dirty (set by hardware)
#define PTE_PS          0x80UL      // large page (L2: 2 MiB, L3: 1 GiB)
#define PTE_G           0x100UL     // global
#define PTE_XD          0x8000000000000000UL    // execute disable
#define PTE_PW          (PTE_P | PTE_W)
#define PTE_PU          (PTE_P | PTE_U)
#define PTE_PWU         (PTE_P | PTE_W | PTE_U)
#define PTE_PAMASK      0x000FFFFFFFFFF000UL    // physical address bits
#define PTE_FLAGMASK    (~PTE_PAMASK)

// Page-fault error code bits
#define PFERR_PRESENT   0x1         // 0: missing page, 1: protection problem
#define PFERR_WRITE     0x2
#define PFERR_USER      0x4
#define PFERR_RSVD      0x8
#define PFERR_FETCH     0x10

// Addresses with bits 63:47 all equal are canonical (4-level paging).
inline constexpr bool va_is_canonical(uintptr_t va) {
    return intptr_t(va) >> 47 == 0 || intptr_t(va) >> 47 == -1;
}
#define VA_LOWMAX       0x0000800000000000UL    // end of the lower half

// Control registers
#define CR0_PE          0x00000001UL
#define CR0_MP          0x00000002UL
#define CR0_EM          0x00000004UL
#define CR0_TS          0x00000008UL
#define CR0_ET          0x00000010UL
#define CR0_NE          0x00000020UL
#define CR0_WP          0x00010000UL
#define CR0_AM          0x00040000UL
#define CR0_PG          0x80000000UL

#define CR4_OSFXSR      0x00000200UL    // FXSAVE/FXRSTOR keep the SSE registers; SSE allowed
#define CR4_OSXMMEXCPT  0x00000400UL    // SIMD floating-point errors raise #XM

// EFLAGS
#define EFLAGS_CF       0x00000001UL
#define EFLAGS_TF       0x00000100UL
#define EFLAGS_IF       0x00000200UL
#define EFLAGS_DF       0x00000400UL
#define EFLAGS_IOPL     0x00003000UL
#define EFLAGS_NT       0x00004000UL
#define EFLAGS_AC       0x00040000UL

// Model-specific registers
#define MSR_IA32_APIC_BASE  0x1BU
#define IA32_APIC_BASE_ENABLED 0x800UL
#define MSR_IA32_EFER   0xC0000080U
#define MSR_IA32_STAR   0xC0000081U
#define MSR_IA32_LSTAR  0xC0000082U
#define MSR_IA32_FMASK  0xC0000084U
#define MSR_IA32_FS_BASE 0xC0000100U
#define MSR_IA32_GS_BASE 0xC0000101U

// Interrupt vectors
#define INT_DE          0       // divide error
#define INT_DB          1
#define INT_NMI         2
#define INT_BP          3       // int3, allowed from user mode
#define INT_OF          4
#define INT_BR          5
#define INT_UD          6
#define INT_NM          7
#define INT_DF          8
#define INT_TS          10
#define INT_NP          11
#define INT_SS          12
#define INT_GP          13
#define INT_PF          14
#define INT_MF          16
#define INT_AC          17
#define INT_MC          18
#define INT_XM          19
#define INT_IRQ         32      // first external interrupt vector
#define INT_TIMER       (INT_IRQ + 0)
#define INT_KEYBOARD    (INT_IRQ + 1)   // defined, never enabled: we poll
#define INT_LAPIC_ERROR (INT_IRQ + 19)  // 51
#define INT_SPURIOUS    (INT_IRQ + 31)  // 63

// Segment selectors (our GDT; k-hardware.cc builds it)
#define SEGSEL_KERN_CODE    0x08
#define SEGSEL_KERN_DATA    0x10
#define SEGSEL_APP_CODE     0x18
#define SEGSEL_APP_DATA     0x20
#define SEGSEL_TASKSTATE    0x28

// Segment descriptor bits (as they sit in a 64-bit descriptor)
#define X86SEG_A        (1UL << 40)     // accessed
#define X86SEG_R        (1UL << 41)     // code: readable
#define X86SEG_W        (1UL << 41)     // data: writable
#define X86SEG_X        (1UL << 43)     // executable
#define X86SEG_S        (1UL << 44)     // code/data (not system)
#define X86SEG_DPL(d)   (uint64_t(d) << 45)
#define X86SEG_P        (1UL << 47)     // present
#define X86SEG_L        (1UL << 53)     // 64-bit code
#define X86SEG_TSS      (0x9UL << 40)   // available 64-bit TSS

// Gate types
#define X86GATE_INTERRUPT 0xE

// 64-bit task state segment: only rsp0 and the I/O-map base matter to us.
struct __attribute__((packed)) x86_64_taskstate {
    uint32_t ts_reserved0;
    uint64_t ts_rsp[3];         // stack pointers for CPL 0..2
    uint64_t ts_reserved1;
    uint64_t ts_ist[7];         // interrupt stack table (unused)
    uint64_t ts_reserved2;
    uint16_t ts_reserved3;
    uint16_t ts_iomap_base;     // >= limit + 1: no I/O permission bitmap
};
static_assert(sizeof(x86_64_taskstate) == 104, "TSS layout");

// 64-bit interrupt gate descriptor
struct x86_64_gatedescriptor {
    uint64_t gd_low;
    uint64_t gd_high;
};

// Pseudo-descriptor for lgdt/lidt
struct __attribute__((packed)) x86_64_pseudodescriptor {
    uint16_t pseudod_limit;
    uint64_t pseudod_base;
};

// Saved registers: the exception/syscall frame built by k-entry.S.
// The offsets are hard-coded there (and read by the harness); see the
// static_asserts below.
struct regstate {
    uint64_t reg_rax;
    uint64_t reg_rcx;
    uint64_t reg_rdx;
    uint64_t reg_rbx;
    uint64_t reg_rbp;
    uint64_t reg_rsi;
    uint64_t reg_rdi;
    uint64_t reg_r8;
    uint64_t reg_r9;
    uint64_t reg_r10;
    uint64_t reg_r11;
    uint64_t reg_r12;
    uint64_t reg_r13;
    uint64_t reg_r14;
    uint64_t reg_r15;
    uint64_t reg_fs;
    uint64_t reg_gs;
    uint32_t reg_intno;         // vector; -1 (0xFFFFFFFF) for a system call
    uint32_t reg_swapgs;        // unused, keeps the course layout
    uint64_t reg_errcode;
    // The hardware iret frame
    uint64_t reg_rip;
    uint64_t reg_cs;
    uint64_t reg_rflags;
    uint64_t reg_rsp;
    uint64_t reg_ss;
};
static_assert(offsetof(regstate, reg_fs) == 120, "regstate layout");
static_assert(offsetof(regstate, reg_intno) == 136, "regstate layout");
static_assert(offsetof(regstate, reg_errcode) == 144, "regstate layout");
static_assert(offsetof(regstate, reg_rip) == 152, "regstate layout");
static_assert(offsetof(regstate, reg_ss) == 184, "regstate layout");
static_assert(sizeof(regstate) == 192, "regstate layout");

#define REGSTATE_SYSCALL_INTNO 0xFFFFFFFFU


// Instructions

inline uint8_t inb(int port) {
    uint8_t data;
    asm volatile("inb %w1, %0" : "=a"(data) : "d"(port));
    return data;
}
inline uint16_t inw(int port) {
    uint16_t data;
    asm volatile("inw %w1, %0" : "=a"(data) : "d"(port));
    return data;
}
inline uint32_t inl(int port) {
    uint32_t data;
    asm volatile("inl %w1, %0" : "=a"(data) : "d"(port));
    return data;
}
inline void outb(int port, uint8_t data) {
    asm volatile("outb %0, %w1" : : "a"(data), "d"(port));
}
inline void outw(int port, uint16_t data) {
    asm volatile("outw %0, %w1" : : "a"(data), "d"(port));
}
inline void outl(int port, uint32_t data) {
    asm volatile("outl %0, %w1" : : "a"(data), "d"(port));
}

inline uintptr_t rdcr0() {
    uintptr_t x;
    asm volatile("movq %%cr0, %0" : "=r"(x));
    return x;
}
inline void lcr0(uintptr_t x) {
    asm volatile("movq %0, %%cr0" : : "r"(x) : "memory");
}
inline uintptr_t rdcr4() {
    uintptr_t x;
    asm volatile("movq %%cr4, %0" : "=r"(x));
    return x;
}
inline void lcr4(uintptr_t x) {
    asm volatile("movq %0, %%cr4" : : "r"(x) : "memory");
}
inline uintptr_t rdcr2() {
    uintptr_t x;
    asm volatile("movq %%cr2, %0" : "=r"(x));
    return x;
}
inline uintptr_t rdcr3() {
    uintptr_t x;
    asm volatile("movq %%cr3, %0" : "=r"(x));
    return x;
}
inline void lcr3(uintptr_t x) {
    asm volatile("movq %0, %%cr3" : : "r"(x) : "memory");
}
inline void invlpg(uintptr_t va) {
    asm volatile("invlpg (%0)" : : "r"(va) : "memory");
}

inline uint64_t rdmsr(uint32_t msr) {
    uint32_t lo, hi;
    asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return lo | (uint64_t(hi) << 32);
}
inline void wrmsr(uint32_t msr, uint64_t x) {
    asm volatile("wrmsr" : : "c"(msr), "a"(uint32_t(x)), "d"(uint32_t(x >> 32)));
}

struct cpuid_result {
    uint32_t eax, ebx, ecx, edx;
};
inline cpuid_result cpuid(uint32_t leaf) {
    cpuid_result r;
    asm volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
                 : "a"(leaf), "c"(0));
    return r;
}

inline void cli() {
    asm volatile("cli" : : : "memory");
}
inline void pause() {
    asm volatile("pause" : : : "memory");
}

#endif
