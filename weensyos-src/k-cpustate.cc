#include "kernel.hh"

// Per-process x87/MMX/SSE registers and FS/GS selectors and bases.
//
// The trap frame holds the general-purpose registers only. The rest of
// what a user program can set and read back stays in the CPU while the
// kernel runs (the kernel is built without FPU or SSE code and never uses
// FS or GS), so it is saved and loaded only when the CPU changes hands: the
// CPU holds the state of `owner`, the process that ran last. Without this a
// process could read, and overwrite, another's registers.
//
// FS and GS bases: a user program cannot write them directly (CR4.FSGSBASE
// is off and wrmsr is privileged), but loading a selector sets them, and a
// base survives in the CPU; they are kept anyway so that the rule is simple:
// everything a process can see is its own.

static proc* owner;                 // whose state the CPU holds, if anyone's

static void save(cpustate* s) {
    asm volatile("fxsave64 %0" : "=m"(s->fxsave));
    asm volatile("movw %%fs, %0" : "=r"(s->fs));
    asm volatile("movw %%gs, %0" : "=r"(s->gs));
    s->fs_base = rdmsr(MSR_IA32_FS_BASE);
    s->gs_base = rdmsr(MSR_IA32_GS_BASE);
}

static void load(const cpustate* s) {
    asm volatile("fxrstor64 %0" : : "m"(s->fxsave));
    // Loading a selector also loads a base (from its descriptor), so the
    // bases come after the selectors.
    asm volatile("movw %0, %%fs" : : "r"(s->fs));
    asm volatile("movw %0, %%gs" : : "r"(s->gs));
    wrmsr(MSR_IA32_FS_BASE, s->fs_base);
    wrmsr(MSR_IA32_GS_BASE, s->gs_base);
}

void cpustate_init(cpustate* s) {
    memset(s, 0, sizeof(*s));
    // The FXSAVE image of a freshly initialised FPU: control word 0x37F
    // (every exception masked, 64-bit precision, round to nearest), empty
    // stack (abridged tag 0), MXCSR 0x1F80 (every SIMD exception masked).
    s->fxsave[0] = 0x7F;
    s->fxsave[1] = 0x03;
    uint32_t mxcsr = 0x1F80;
    memcpy(&s->fxsave[24], &mxcsr, sizeof(mxcsr));
}

void cpustate_switch(proc* p) {
    if (owner == p) {
        return;                     // still in the CPU, as p left it
    }
    if (owner) {
        save(&owner->cpu);
    }
    load(&p->cpu);
    owner = p;
}

void cpustate_sync(proc* p) {
    if (owner == p) {
        save(&p->cpu);
    }
}

void cpustate_release(proc* p) {
    if (owner == p) {
        owner = nullptr;            // the next switch overwrites it all
    }
}
