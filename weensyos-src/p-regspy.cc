#include "u-lib.hh"

// regspy: the registers the trap frame does not hold must be per process.
// Run two or more (`regspy regspy`). Each one checks that it starts with a
// clean x87/MMX/SSE state and null FS/GS, then loads values that name it
// (x87 control word, MXCSR, MMX 0-7, XMM 0-15, an FS or GS selector) and,
// ROUNDS times, gives the CPU away (a yield, then a spin long enough for
// timer interrupts) and checks that it finds exactly its own values again.
// Finally it forks: the child must start with a copy of the parent's
// values, load its own, and neither may see the other's.
//
// Prints `regspy P: N rounds, registers private` and exits 0, or prints
// the first register found wrong and exits 1.

#define ROUNDS          20
#define SPIN            20000
#define USER_DATA_SELECTOR 0x23     // the GDT's user data segment, RPL 3

struct regs {
    uint16_t fcw;
    uint32_t mxcsr;
    uint64_t mm[8];
    uint64_t xmm[16][2];
    uint16_t fs, gs;
};

static void read_regs(regs* r) {
    asm volatile("fnstcw %0" : "=m"(r->fcw));
    asm volatile("stmxcsr %0" : "=m"(r->mxcsr));
    asm volatile("movq %%mm0, 0(%0); movq %%mm1, 8(%0); movq %%mm2, 16(%0); movq %%mm3, 24(%0)\n"
                 "movq %%mm4, 32(%0); movq %%mm5, 40(%0); movq %%mm6, 48(%0); movq %%mm7, 56(%0)"
                 : : "r"(r->mm) : "memory");
    asm volatile("movdqu %%xmm0, 0(%0); movdqu %%xmm1, 16(%0); movdqu %%xmm2, 32(%0)\n"
                 "movdqu %%xmm3, 48(%0); movdqu %%xmm4, 64(%0); movdqu %%xmm5, 80(%0)\n"
                 "movdqu %%xmm6, 96(%0); movdqu %%xmm7, 112(%0); movdqu %%xmm8, 128(%0)\n"
                 "movdqu %%xmm9, 144(%0); movdqu %%xmm10, 160(%0); movdqu %%xmm11, 176(%0)\n"
                 "movdqu %%xmm12, 192(%0); movdqu %%xmm13, 208(%0); movdqu %%xmm14, 224(%0)\n"
                 "movdqu %%xmm15, 240(%0)"
                 : : "r"(r->xmm) : "memory");
    asm volatile("movw %%fs, %0" : "=r"(r->fs));
    asm volatile("movw %%gs, %0" : "=r"(r->gs));
}

static void write_regs(const regs* r) {
    asm volatile("fldcw %0" : : "m"(r->fcw));
    asm volatile("ldmxcsr %0" : : "m"(r->mxcsr));
    asm volatile("movq 0(%0), %%mm0; movq 8(%0), %%mm1; movq 16(%0), %%mm2; movq 24(%0), %%mm3\n"
                 "movq 32(%0), %%mm4; movq 40(%0), %%mm5; movq 48(%0), %%mm6; movq 56(%0), %%mm7"
                 : : "r"(r->mm) : "memory");
    asm volatile("movdqu 0(%0), %%xmm0; movdqu 16(%0), %%xmm1; movdqu 32(%0), %%xmm2\n"
                 "movdqu 48(%0), %%xmm3; movdqu 64(%0), %%xmm4; movdqu 80(%0), %%xmm5\n"
                 "movdqu 96(%0), %%xmm6; movdqu 112(%0), %%xmm7; movdqu 128(%0), %%xmm8\n"
                 "movdqu 144(%0), %%xmm9; movdqu 160(%0), %%xmm10; movdqu 176(%0), %%xmm11\n"
                 "movdqu 192(%0), %%xmm12; movdqu 208(%0), %%xmm13; movdqu 224(%0), %%xmm14\n"
                 "movdqu 240(%0), %%xmm15"
                 : : "r"(r->xmm) : "memory");
    asm volatile("movw %0, %%fs" : : "r"(r->fs));
    asm volatile("movw %0, %%gs" : : "r"(r->gs));
}

// What a new process must find: FNINIT's control word, the default MXCSR,
// zeroed registers, null FS and GS.
static void clean_regs(regs* r) {
    memset(r, 0, sizeof(*r));
    r->fcw = 0x037F;
    r->mxcsr = 0x1F80;
}

// Values that name process `pid`: rounding modes, register contents and
// which of FS or GS holds the user data selector.
static void marked_regs(regs* r, pid_t pid) {
    r->fcw = 0x037F | ((pid & 3) << 10);
    r->mxcsr = 0x1F80 | ((pid & 3) << 13);
    for (int i = 0; i != 8; ++i) {
        r->mm[i] = 0x4D4D000000000000UL | (uint64_t(pid) << 16) | i;
    }
    for (int i = 0; i != 16; ++i) {
        r->xmm[i][0] = 0x584D4D0000000000UL | (uint64_t(pid) << 16) | i;
        r->xmm[i][1] = ~r->xmm[i][0];
    }
    r->fs = pid % 2 ? USER_DATA_SELECTOR : 0;
    r->gs = pid % 2 ? 0 : USER_DATA_SELECTOR;
}

// Exit 1 naming the first register that is not as expected.
static void check(pid_t pid, const char* when, const regs* want) {
    regs got;
    read_regs(&got);
    const char* which = nullptr;
    uint64_t g = 0, w = 0;
    if (got.fcw != want->fcw) {
        which = "x87 control word", g = got.fcw, w = want->fcw;
    } else if (got.mxcsr != want->mxcsr) {
        which = "MXCSR", g = got.mxcsr, w = want->mxcsr;
    } else if (got.fs != want->fs) {
        which = "FS", g = got.fs, w = want->fs;
    } else if (got.gs != want->gs) {
        which = "GS", g = got.gs, w = want->gs;
    }
    for (int i = 0; !which && i != 8; ++i) {
        if (got.mm[i] != want->mm[i]) {
            which = "an MMX register", g = got.mm[i], w = want->mm[i];
        }
    }
    for (int i = 0; !which && i != 16; ++i) {
        for (int half = 0; half != 2; ++half) {
            if (!which && got.xmm[i][half] != want->xmm[i][half]) {
                which = "an XMM register", g = got.xmm[i][half], w = want->xmm[i][half];
            }
        }
    }
    if (which) {
        printf("regspy %d: %s: %s is %#lx, not %#lx\n", pid, when, which, g, w);
        sys_exit(1);
    }
}

static void give_cpu_away() {
    sys_yield();
    for (volatile int i = 0; i != SPIN; ++i) {
    }
}

void process_main() {
    pid_t pid = sys_getpid();
    regs want;
    clean_regs(&want);
    check(pid, "at start", &want);
    marked_regs(&want, pid);
    write_regs(&want);
    for (int round = 0; round != ROUNDS; ++round) {
        give_cpu_away();
        check(pid, "after a switch", &want);
    }

    pid_t child = sys_fork();
    if (child < 0) {
        printf("regspy %d: fork failed (%d)\n", pid, child);
        sys_exit(1);
    }
    if (child == 0) {
        pid = sys_getpid();
        check(pid, "in a fork child", &want);   // the parent's values, copied
        marked_regs(&want, pid);
        write_regs(&want);
    }
    for (int round = 0; round != ROUNDS; ++round) {
        give_cpu_away();
        check(pid, child == 0 ? "child, after a switch" : "parent, after fork", &want);
    }
    printf("regspy %d: %d rounds, registers private\n", pid, 2 * ROUNDS);
    sys_exit(0);
}
