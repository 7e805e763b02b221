/* The harness's hot paths in C: system-call entry, the kernel's log port, the keyboard status poll, and the
 * kernel instructions that re-enable interrupts.
 *
 * A WeensyOS system call costs the guest a few hundred instructions; done in Python, the harness's side of it
 * (entering ring 0 by editing Unicorn's CPU state, answering the kernel's keyboard poll, noting the event) cost
 * several times more. Here each of those is a few stores into the live CPUX86State and a record in a ring.
 * Python is called only when it asked to see something as it happens (full tracing, a stop condition), for
 * every line of the kernel's log (so lines, panics and "until" texts are seen where they happen), and for any
 * port this file does not model.
 *
 * For full tracing it also records what the tracer would otherwise look at in Python: returns to user mode that
 * need nothing at once, context switches with the process table's changes found there (record_switch,
 * fastpath_scan), and it answers the tracer's reads: the screen compared with what it last saw
 * (fastpath_look_screen), current->pid, a page fault's walk and instruction bytes. Python's tracer applies the
 * records in order when it next needs its state; its own reading stays the reference (fast_paths=False).
 *
 * The CPU-state offsets come from Python (harness/fastpath.py), which finds and checks them at start-up; this
 * file needs no Unicorn headers. Unicorn API functions are reached through pointers filled in by Python.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "vclock.h"

/* CPUX86State offsets that do not move (checked at start-up); the others are fields of `struct fastpath`. */
#define OFF_REGS 0
#define OFF_EIP 128
#define OFF_HFLAGS 176
#define OFF_SEGS 184
#define SEG_SIZE 24
#define R_CS 1
#define R_SS 2
#define RCX 1
#define RSP 4
#define R11 11

#define HF_CPL_MASK 3u
#define HF_CS32 (1u << 4)
#define HF_SS32 (1u << 5)
#define HF_ADDSEG (1u << 6)
#define HF_CS64 (1u << 15)
#define FLAG_RF (1ull << 16)
#define EFER_SCE 1ull

#define DESC_FLAT_CODE64_DPL0 ((1u << 23) | (1u << 21) | (1u << 15) | (1u << 12) | (0xBu << 8))
#define DESC_FLAT_DATA_DPL0 ((1u << 23) | (1u << 22) | (1u << 15) | (1u << 12) | (0x3u << 8))

/* LPT1 (harness/devices/parallel.py has the model and the reasons). */
#define LPT_DATA 0x378
#define LPT_STATUS 0x379
#define LPT_CONTROL 0x37A
#define LPT_STATUS_READY 0xD8
#define LPT_CONTROL_STROBE 0x01
#define LPT_CONTROL_NINIT 0x04
#define LPT_CONTROL_SELECT 0x08
#define LPT_CONTROL_WRITABLE 0x3F
#define LPT_CONTROL_READ_ONES 0xC0

#define RING_SIZE 4096 /* raw system-call records kept (a power of two) */

/* How Python wants system-call entries: */
#define WANT_RAW 0   /* records in the ring, looked at only when somebody reads the events */
#define WANT_EACH 1  /* a call to notify_syscall at each entry (stop conditions look at every one) */
#define WANT_BATCH 2 /* records in the ring, taken by Python at its next call (full tracing): entries need
                        nothing from Python until the process runs again, and most return at once */
#define LOG_BUFFER 4096

struct lpt_state { /* mirrored by devices/parallel.py: LptState */
    uint8_t data;
    uint8_t control;
    uint8_t pad[6];
    uint64_t printed;
};

struct ata_transfer { /* mirrored by devices/ata.py: AtaTransfer */
    const uint8_t *buffer;
    uint32_t position;
    uint32_t length;
    uint8_t status;
    uint8_t writing;
    uint8_t drive_head;
    uint8_t pad[5];
};

#define ATA_DATA 0x1F0
#define ATA_STATUS 0x1F7
#define ATA_ALT_STATUS 0x3F6
#define ATA_STATUS_DRQ 0x08
#define ATA_DRIVE_SLAVE 0x10

/* One system-call entry, as the CPU saw it. Python turns it into an Event only when somebody looks. */
struct raw_syscall {
    uint64_t kind;    /* RECORD_ENTRY, or RECORD_RETURN (WANT_BATCH: a return nothing needed at once) */
    uint64_t seq;
    uint64_t time_ns;
    uint64_t rip;
    uint64_t cr3;
    uint64_t number;
    uint64_t args[4]; /* rdi, rsi, rdx, r10 */
    int64_t pid;      /* the kernel's current->pid, or -1 if unknown */
    uint64_t ret;     /* RECORD_COMPLETE: RAX at the return, and when */
    uint64_t end_ns;
};

#define RECORD_ENTRY 0
#define RECORD_RETURN 1   /* rip: where the process resumes; number: RAX */
#define RECORD_COMPLETE 2 /* an entry whose quiet return came next: ret and end_ns filled in */
/* A context switch nothing needed at once (defer_switches): the process-table changes seen there come first,
 * each numbered like an event, then the switch itself. Python applies them in order at its next call. */
#define RECORD_CREATED 3  /* pid: a process that appeared in the table; args: its name's bytes */
#define RECORD_EXITED 4   /* pid: a process that left the table */
#define RECORD_SWITCH 5   /* rip: where the process resumes; number: RAX; pid: the process now running */

#define MAX_LIVE 64       /* process-table slots the native scan handles (more: Python scans) */
#define NAME_BYTES 32     /* a process name's bytes a record carries (args) */
#define TABLE_BYTES 32768 /* the largest process table the native scan copies */

/* One change of the process table since the last look (`scan_processes`). */
struct proc_change {
    int64_t pid;
    uint64_t created; /* 1: appeared (name filled in), 0: left */
    uint8_t name[NAME_BYTES];
};

#define CONSOLE_PA 0xB8000
#define CONSOLE_BYTES 4000

/* A return to user mode seen at a watched kernel iretq/sysretq (for notify_return). */
struct user_return {
    uint64_t time_ns;
    uint64_t rip;     /* where the process resumes */
    uint64_t rax;     /* the system call's result, if it was one */
    uint64_t cr3;
    int64_t pid;
};

struct seg_cache {
    uint32_t selector;
    uint32_t pad;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
};

struct fastpath {
    /* --- set up by Python ------------------------------------------------------------------------------- */
    uint8_t *env;                 /* the live CPUX86State */
    int64_t off_efer, off_star, off_lstar, off_fmask, off_cr3;
    struct vclock *clock;
    struct lpt_state *lpt;
    struct ata_transfer *ata;     /* NULL without a disk */
    int (*reg_read)(void *uc, int regid, void *value);
    int (*reg_write)(void *uc, int regid, const void *value);
    /* Python: the full syscall path; after a fast entry; a log line; any other port; a return to user. */
    void (*slow_syscall)(void *uc, void *user_data);
    void (*notify_syscall)(void *uc, void *user_data);
    void (*log_flush)(void *uc, void *user_data);
    uint32_t (*slow_in)(void *uc, uint32_t port, int size, void *user_data);
    void (*slow_out)(void *uc, uint32_t port, int size, uint32_t value, void *user_data);
    void (*notify_return)(void *uc, uint64_t address, uint32_t size, void *user_data);
    /* --- switches Python flips between slices ---------------------------------------------------------- */
    uint8_t *ram;                 /* guest physical memory, for page walks */
    uint64_t ram_size;
    uint64_t current_va;          /* the kernel's `current` (a proc*), 0 if unknown */
    int64_t pid_offset;           /* offsetof(proc, pid), -1 if unknown */
    uint32_t fast_syscalls;       /* enter the kernel here (else: slow_syscall) */
    uint32_t want_syscalls;       /* WANT_RAW, WANT_EACH or WANT_BATCH (below) */
    uint32_t fast_ports;          /* answer LPT1 and the 8042 status here */
    uint32_t want_returns;        /* call notify_return at kernel iretq/sysretq */
    uint32_t irq_waiting;         /* an interrupt waits for IF=1: stop right after the instruction that sets it */
    uint32_t interrupted;         /* set when this file stopped the slice on purpose */
    uint32_t kbd_status;          /* what port 0x64 reads now (the 8042 model keeps it current) */
    uint32_t see_every_return;    /* Python: call notify_return at every return to user (auditor, a pending
                                     page fault, ...); else WANT_BATCH records returns nothing waits for */
    uint32_t screen_valid;        /* `screen` holds what the tracer last saw of the console */
    int64_t last_user_pid;        /* the process the tracer last saw the CPU return to */
    uint64_t memory_calls;        /* bit n: tracing system call n reads the caller's memory (a string or
                                     buffer argument): Python must see its return before the process runs */
    uint64_t last_entry_number;   /* the latest system call entered, and by whom */
    int64_t last_entry_pid;
    uint32_t rflags_regid;        /* Unicorn's register id of RFLAGS (from unicorn.x86_const) */
    /* The kernel's process table (`ptable`, from its symbols and DWARF), for the scans made here. */
    uint64_t ptable_va;
    int64_t proc_size, state_offset, name_offset;
    uint32_t nproc, name_size;
    uint32_t scan_ready;          /* the fields above describe a table this file can scan */
    uint32_t defer_switches;      /* full tracing, nobody watching events as they happen: a context switch
                                     that needs nothing else at once is recorded (RECORD_SWITCH) */
    uint64_t memory_pending;      /* bit p: process p may have a call open whose trace reads its memory (its
                                     return goes to Python at once); set here at entry, cleared by Python */
    uint32_t live_count;          /* the tracer's live processes, in the order they appeared (its `_names`) */
    uint32_t change_count;        /* the changes the last scan found */
    uint32_t tracer_looks;        /* the tracer looks at the console through fastpath_look_screen, which alone
                                     keeps `screen` (what it last saw) */
    uint64_t blank_bytes[4];      /* bit b: character byte b shows as blank (the tracer's rule, from Python) */
    int32_t live_pids[MAX_LIVE];
    struct proc_change changes[2 * MAX_LIVE];
    /* --- results ----------------------------------------------------------------------------------------- */
    uint64_t next_seq;            /* shared with Python's EventLog: one numbering for all events */
    uint64_t syscalls;            /* fast entries */
    uint64_t raw_total;           /* raw records ever written (the ring keeps the last RING_SIZE) */
    uint64_t raw_consumed;        /* WANT_BATCH: records Python has taken */
    uint64_t run_start, run_end;  /* the latest run of complete calls of one process, side by side in the ring */
    int64_t run_pid;
    struct raw_syscall last;      /* the latest entry, for notify_syscall */
    struct user_return returned;  /* the latest return to user mode, for notify_return */
    uint64_t log_length;
    uint8_t log[LOG_BUFFER];
    uint8_t screen[CONSOLE_BYTES];
    struct raw_syscall ring[RING_SIZE];
    uint8_t table[TABLE_BYTES];   /* scratch: the process table as the last scan read it */
};

/* One watched kernel instruction: `iretq`/`sysretq` (kind 0) or `sti`/`popfq` (kind 1) at a known address. */
struct code_watch {
    struct fastpath *fast;
    uint32_t length; /* the instruction's length: a different decoded size means the bytes were not it */
    uint32_t kind;
};

size_t fastpath_size(void) { return sizeof(struct fastpath); }
size_t fastpath_ring_offset(void) { return offsetof(struct fastpath, ring); }
size_t fastpath_log_offset(void) { return offsetof(struct fastpath, log); }
size_t fastpath_last_offset(void) { return offsetof(struct fastpath, last); }
size_t fastpath_returned_offset(void) { return offsetof(struct fastpath, returned); }
size_t fastpath_ring_size(void) { return RING_SIZE; }
size_t fastpath_changes_offset(void) { return offsetof(struct fastpath, changes); }
size_t fastpath_table_bytes(void) { return TABLE_BYTES; }
size_t fastpath_log_size(void) { return LOG_BUFFER; }

#define ENV64(f, off) (*(uint64_t *) ((f)->env + (off)))
#define ENV32(f, off) (*(uint32_t *) ((f)->env + (off)))

static inline int cpl(const struct fastpath *f) { return ENV32(f, OFF_HFLAGS) & HF_CPL_MASK; }

static inline uint64_t now_ns(const struct fastpath *f)
{
    return vclock_instructions(f->clock) * f->clock->ps_per_instruction / 1000 + f->clock->skipped_ns;
}

/* The physical address of `va` through the 4-level page table at `cr3`, or -1 (not mapped, or outside RAM).
 * Supervisor view: no permission checks, as the kernel reads its own data. */
static int64_t translate(const struct fastpath *f, uint64_t cr3, uint64_t va)
{
    uint64_t table = cr3 & 0x000FFFFFFFFFF000ull;
    static const int shifts[4] = {39, 30, 21, 12};
    for (int level = 0; level < 4; level++) {
        uint64_t at = table + 8 * ((va >> shifts[level]) & 0x1FF);
        if (at + 8 > f->ram_size) {
            return -1;
        }
        uint64_t entry;
        memcpy(&entry, f->ram + at, 8);
        if (!(entry & 1)) {
            return -1;
        }
        uint64_t frame = entry & 0x000FFFFFFFFFF000ull;
        if (level > 0 && level < 3 && (entry & 0x80)) { /* 1 GiB or 2 MiB page */
            uint64_t offset_mask = (1ull << shifts[level]) - 1;
            return (int64_t) ((frame & ~offset_mask) | (va & offset_mask));
        }
        table = frame;
    }
    return (int64_t) (table | (va & 0xFFF));
}

/* Kernel memory by virtual address: through `cr3` if it maps it, else identity (VA = PA), as KernelView reads
 * it (kernelview.py), so both paths agree. The bytes must not cross a page. */
static int read_virtual(const struct fastpath *f, uint64_t cr3, uint64_t va, void *out, size_t length)
{
    if (((va & 0xFFF) + length) > 0x1000) {
        return -1;
    }
    int64_t pa = translate(f, cr3, va);
    if (pa < 0) {
        pa = (int64_t) va;
    }
    if ((uint64_t) pa + length > f->ram_size) {
        return -1;
    }
    memcpy(out, f->ram + pa, length);
    return 0;
}

/* current->pid, read as the kernel would through `cr3`; -1 if it cannot be read. */
static int64_t current_pid(const struct fastpath *f, uint64_t cr3)
{
    uint64_t proc;
    int32_t pid;
    if (!f->current_va || f->pid_offset < 0 || read_virtual(f, cr3, f->current_va, &proc, 8) != 0 || !proc
        || read_virtual(f, cr3, proc + (uint64_t) f->pid_offset, &pid, 4) != 0) {
        return -1;
    }
    return pid;
}

static inline void load_seg(struct fastpath *f, int seg, uint32_t selector, uint32_t flags)
{
    struct seg_cache *s = (struct seg_cache *) (f->env + OFF_SEGS + SEG_SIZE * seg);
    s->selector = selector;
    s->base = 0;
    s->limit = 0xFFFFFFFF;
    s->flags = flags;
}

/* UC_HOOK_INSN(SYSCALL): what the CPU does, from STAR, LSTAR and FMASK. Unicorn adds the instruction's length
 * (2) to EIP after this hook, so EIP is set to LSTAR - 2. */
void fast_syscall_hook(void *uc, void *opaque)
{
    struct fastpath *f = opaque;
    if (!f->fast_syscalls || !(ENV64(f, f->off_efer) & EFER_SCE)) {
        f->slow_syscall(uc, opaque); /* #UD, or the reference path */
        return;
    }
    uint64_t *regs = (uint64_t *) (f->env + OFF_REGS);
    uint64_t rflags = 0;
    f->reg_read(uc, f->rflags_regid, &rflags); /* the arithmetic flags are lazy: the API computes them */
    uint64_t rip = ENV64(f, OFF_EIP);
    regs[RCX] = rip + 2;
    regs[R11] = rflags & ~FLAG_RF;
    uint32_t kernel_cs = (uint32_t) (ENV64(f, f->off_star) >> 32) & 0xFFFC;
    load_seg(f, R_CS, kernel_cs, DESC_FLAT_CODE64_DPL0);
    load_seg(f, R_SS, kernel_cs + 8, DESC_FLAT_DATA_DPL0);
    ENV32(f, OFF_HFLAGS) = (ENV32(f, OFF_HFLAGS) & ~(HF_CPL_MASK | HF_ADDSEG)) | HF_CS32 | HF_SS32 | HF_CS64;
    uint64_t masked = rflags & ~(ENV64(f, f->off_fmask) | FLAG_RF);
    f->reg_write(uc, f->rflags_regid, &masked);
    ENV64(f, OFF_EIP) = ENV64(f, f->off_lstar) - 2;
    f->syscalls++;
    vclock_charge(f->clock, f->clock->ns_per_syscall); /* as Cpu.hook_syscall charges it */

    if (f->want_syscalls == WANT_BATCH && CONSOLE_PA + CONSOLE_BYTES <= f->ram_size
        && (!f->screen_valid || memcmp(f->ram + CONSOLE_PA, f->screen, CONSOLE_BYTES) != 0)) {
        /* The process wrote on the screen since the tracer last looked: Python records that first, so that
         * the console event comes before this entry, with this process's pid and this time. */
        f->notify_syscall(uc, opaque);
        memcpy(f->screen, f->ram + CONSOLE_PA, CONSOLE_BYTES);
        f->screen_valid = 1;
    }
    struct raw_syscall *r = &f->last;
    r->seq = f->want_syscalls == WANT_EACH ? 0 : f->next_seq++;
    r->time_ns = now_ns(f);
    r->rip = rip;
    r->cr3 = ENV64(f, f->off_cr3);
    r->number = regs[0];
    r->args[0] = regs[7];
    r->args[1] = regs[6];
    r->args[2] = regs[2];
    r->args[3] = regs[10];
    r->kind = RECORD_ENTRY;
    r->pid = f->want_syscalls == WANT_RAW ? -1 : current_pid(f, r->cr3);
    f->last_entry_number = r->number;
    f->last_entry_pid = r->pid;
    if (f->want_syscalls == WANT_BATCH && r->pid >= 0 && r->pid < 64
        && (r->number >= 64 || ((f->memory_calls >> r->number) & 1))) {
        f->memory_pending |= 1ull << r->pid;
    }
    if (f->want_syscalls == WANT_EACH) {
        f->notify_syscall(uc, opaque); /* Python numbers and keeps this one itself */
        return;
    }
    f->ring[f->raw_total++ & (RING_SIZE - 1)] = *r;
    if (f->want_syscalls == WANT_BATCH && f->raw_total - f->raw_consumed >= RING_SIZE / 2) {
        f->notify_syscall(uc, opaque); /* never let the ring overwrite records Python has not taken */
    }
}

/* Bytes printed on LPT1 go to Python a line at a time (or a full buffer at a time). */
static void log_byte(void *uc, struct fastpath *f, uint8_t byte)
{
    f->log[f->log_length++] = byte;
    if (byte == '\n' || f->log_length == LOG_BUFFER) {
        f->log_flush(uc, f);
    }
}

uint32_t fast_in_hook(void *uc, uint32_t port, int size, void *opaque)
{
    struct fastpath *f = opaque;
    vclock_charge(f->clock, f->clock->ns_per_port_io); /* every `in`, answered here or not (HotPaths._hook_in) */
    if (f->fast_ports && size == 1 && cpl(f) == 0) {
        switch (port) {
        case 0x64: return f->kbd_status;
        case LPT_DATA: return f->lpt->data;
        case LPT_STATUS: return LPT_STATUS_READY;
        case LPT_CONTROL: return f->lpt->control | LPT_CONTROL_READ_ONES;
        default: break;
        }
    }
    struct ata_transfer *ata = f->ata;
    if ((port == ATA_STATUS || port == ATA_ALT_STATUS) && ata && f->fast_ports && size == 1 && cpl(f) == 0) {
        return ata->drive_head & ATA_DRIVE_SLAVE ? 0 : ata->status; /* no slave drive: floating, reads 0 */
    }
    if (port == ATA_DATA && ata && f->fast_ports && (size == 2 || size == 4) && cpl(f) == 0
        && (ata->status & ATA_STATUS_DRQ) && !ata->writing && ata->position + size < ata->length) {
        uint32_t value = 0;
        memcpy(&value, ata->buffer + ata->position, size); /* little-endian, as the port delivers it */
        ata->position += size;
        return value;
    }
    return f->slow_in(uc, port, size, opaque);
}

void fast_out_hook(void *uc, uint32_t port, int size, uint32_t value, void *opaque)
{
    struct fastpath *f = opaque;
    vclock_charge(f->clock, f->clock->ns_per_port_io); /* every `out` (HotPaths._hook_out) */
    if (f->fast_ports && size == 1 && cpl(f) == 0) {
        struct lpt_state *lpt = f->lpt;
        value &= 0xFF;
        if (port == LPT_DATA) {
            lpt->data = (uint8_t) value;
            return;
        }
        if (port == LPT_CONTROL) {
            int rising = (value & LPT_CONTROL_STROBE) && !(lpt->control & LPT_CONTROL_STROBE);
            int selected = (value & LPT_CONTROL_SELECT) && (value & LPT_CONTROL_NINIT);
            lpt->control = (uint8_t) (value & LPT_CONTROL_WRITABLE);
            if (rising && selected) {
                lpt->printed++;
                log_byte(uc, f, lpt->data);
            }
            return;
        }
    }
    f->slow_out(uc, port, size, value, opaque);
}

/* UC_HOOK_CODE on a kernel `0f 32` byte pair. Unicorn, having no APIC, reads IA32_APIC_BASE as 0, so Python
 * answers that one rdmsr; every other MSR the engine reads itself. The kernel reads FS and GS bases on every
 * context save, so this filter keeps those reads out of Python. */
struct msr_shim {
    struct fastpath *fast;
    void (*apic_base)(void *uc, uint64_t address, uint32_t size, void *user_data);
};

#define MSR_IA32_APIC_BASE 0x1bu

void fast_rdmsr_hook(void *uc, uint64_t address, uint32_t size, void *opaque)
{
    struct msr_shim *shim = opaque;
    const uint64_t *regs = (const uint64_t *) (shim->fast->env + OFF_REGS);
    if (size == 2 && (uint32_t) regs[RCX] == MSR_IA32_APIC_BASE) {
        shim->apic_base(uc, address, size, NULL);
    }
}

/* `length` bytes at `va` as a supervisor read through `cr3` (page by page, as paging.read_virtual reads); 0 if
 * the read would fault. */
int fastpath_read(const struct fastpath *f, uint64_t cr3, uint64_t va, uint8_t *out, uint64_t length)
{
    uint64_t done = 0;
    while (done < length) {
        uint64_t at = va + done, chunk = 0x1000 - (at & 0xFFF);
        if (chunk > length - done) {
            chunk = length - done;
        }
        int64_t pa = translate(f, cr3, at);
        if (pa < 0 || (uint64_t) pa + chunk > f->ram_size) {
            return 0;
        }
        memcpy(out + done, f->ram + pa, chunk);
        done += chunk;
    }
    return 1;
}

/* Copy the process table as KernelView.live_names reads it: through `cr3` page by page if it maps all of it,
 * else by identity (VA = PA); 0 if neither fits in RAM. */
static int read_table(const struct fastpath *f, uint64_t cr3, uint8_t *out, uint64_t length)
{
    uint64_t va = f->ptable_va;
    if (fastpath_read(f, cr3, va, out, length)) {
        return 1;
    }
    if (va + length > f->ram_size) {
        return 0;
    }
    memcpy(out, f->ram + va, length);
    return 1;
}

/* What changed in the kernel's process table since the last look, as Tracer._scan_processes finds it: the
 * live slots' pids (a pid that shows twice counts once, where it first shows, with its last slot's name); new
 * ones in table order, then gone ones in the order they appeared. Updates `live_pids`; the changes are in
 * `changes`. Returns their number, or -1 if this file cannot scan this kernel's table. */
int fastpath_scan(struct fastpath *f, uint64_t cr3)
{
    uint8_t *table = f->table;
    f->change_count = 0;
    if (!f->scan_ready) {
        return -1;
    }
    uint64_t length = (uint64_t) f->proc_size * f->nproc;
    int32_t now[MAX_LIVE];
    int named[MAX_LIVE]; /* the slot whose name a pid gets (its last) */
    int count = 0;
    if (read_table(f, cr3, table, length)) {
        for (uint32_t slot = 0; slot < f->nproc; slot++) {
            const uint8_t *proc = table + (uint64_t) slot * f->proc_size;
            int32_t state, pid;
            memcpy(&state, proc + f->state_offset, 4);
            if (!state) {
                continue;
            }
            memcpy(&pid, proc + f->pid_offset, 4);
            int at = 0;
            while (at < count && now[at] != pid) {
                at++;
            }
            if (at == count) {
                now[count++] = pid;
            }
            named[at] = (int) slot;
        }
    }
    /* The tracer's list after this look: the processes still live in the order they appeared, then the new
     * ones in table order (as `_names` ends up); the changes: new ones first, then gone ones. */
    int32_t after[MAX_LIVE];
    int still[MAX_LIVE]; /* the tracer's process j is still in the table */
    uint32_t n = 0, kept = 0;
    for (uint32_t j = 0; j < f->live_count; j++) {
        still[j] = 0;
        for (int i = 0; i < count && !still[j]; i++) {
            still[j] = now[i] == f->live_pids[j];
        }
        if (still[j]) {
            after[kept++] = f->live_pids[j];
        }
    }
    for (int i = 0; i < count; i++) {
        int known = 0;
        for (uint32_t j = 0; j < f->live_count && !known; j++) {
            known = f->live_pids[j] == now[i];
        }
        if (known) {
            continue;
        }
        struct proc_change *c = &f->changes[n++];
        c->pid = now[i];
        c->created = 1;
        memset(c->name, 0, NAME_BYTES);
        if (f->name_size) {
            memcpy(c->name, table + (uint64_t) named[i] * f->proc_size + f->name_offset, f->name_size);
        }
        after[kept++] = now[i];
    }
    for (uint32_t j = 0; j < f->live_count; j++) {
        if (!still[j]) {
            struct proc_change *c = &f->changes[n++];
            c->pid = f->live_pids[j];
            c->created = 0;
        }
    }
    memcpy(f->live_pids, after, kept * sizeof after[0]);
    f->live_count = kept;
    f->change_count = n;
    return (int) n;
}

/* A context switch recorded for Python to apply later (defer_switches): the table's changes, then the switch,
 * each numbered as the event it becomes. */
/* A new record at the ring's end, its other fields zero. */
static struct raw_syscall *new_record(struct fastpath *f, uint64_t kind, uint64_t seq, uint64_t time_ns,
                                      uint64_t rip, uint64_t cr3, uint64_t number, int64_t pid)
{
    struct raw_syscall *q = &f->ring[f->raw_total++ & (RING_SIZE - 1)];
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->seq = seq;
    q->time_ns = time_ns;
    q->rip = rip;
    q->cr3 = cr3;
    q->number = number;
    q->pid = pid;
    return q;
}

static void record_switch(struct fastpath *f, const struct user_return *r)
{
    int n = fastpath_scan(f, r->cr3);
    for (int i = 0; i < n; i++) {
        const struct proc_change *c = &f->changes[i];
        struct raw_syscall *q = new_record(f, c->created ? RECORD_CREATED : RECORD_EXITED, f->next_seq++,
                                           r->time_ns, 0, r->cr3, 0, c->pid);
        memcpy(q->args, c->name, NAME_BYTES);
    }
    new_record(f, RECORD_SWITCH, f->next_seq++, r->time_ns, r->rip, r->cr3, r->rax, r->pid);
    f->last_user_pid = r->pid;
}

/* UC_HOOK_CODE on one kernel instruction that can set IF (and, for kind 0, return to user mode). */
void fast_watch_hook(void *uc, uint64_t address, uint32_t size, void *opaque)
{
    struct code_watch *w = opaque;
    struct fastpath *f = w->fast;
    if (size != w->length) {
        return; /* the byte pattern was inside another instruction */
    }
    if (f->irq_waiting) {
        /* Stop once this instruction has run: the engine has charged the current block already, so the next
         * block's start reaches this deadline. */
        f->interrupted = 1;
        vclock_set_deadline(f->clock, vclock_instructions(f->clock));
    }
    if (w->kind != 0 || !f->want_returns) {
        return;
    }
    /* Only returns to user mode interest Python: sysretq always is one; iretq is one if the frame's CS is. */
    uint64_t cr3 = ENV64(f, f->off_cr3), *regs = (uint64_t *) (f->env + OFF_REGS), rip;
    if (w->length == 3) {
        rip = regs[RCX];
    } else {
        uint64_t frame[2];
        if (read_virtual(f, cr3, regs[RSP], &frame[0], 8) != 0 || read_virtual(f, cr3, regs[RSP] + 8, &frame[1], 8)) {
            return; /* an unreadable frame: the iretq itself will fault */
        }
        if ((frame[1] & 3) != 3) {
            return;
        }
        rip = frame[0];
    }
    struct user_return *r = &f->returned;
    r->time_ns = now_ns(f);
    r->rip = rip;
    r->rax = regs[0];
    r->cr3 = cr3;
    r->pid = current_pid(f, cr3);
    /* Full tracing needs Python at a return only when something shows there: another process runs, the
     * console changed, a fault waits for its outcome, the trace shows memory of the call's (read before the
     * process runs on), the auditor checks. Any other return is a record Python applies, in order, at its
     * next call. */
    int quiet = f->want_syscalls == WANT_BATCH && !f->see_every_return && r->pid == f->last_user_pid
                && f->last_entry_pid == r->pid && f->last_entry_number < 64
                && !((f->memory_calls >> f->last_entry_number) & 1) && f->screen_valid
                && CONSOLE_PA + CONSOLE_BYTES <= f->ram_size
                && memcmp(f->ram + CONSOLE_PA, f->screen, CONSOLE_BYTES) == 0;
    /* A switch to another process: recorded when tracing defers them, the screen is as the tracer saw it and
     * the process has no call open whose trace reads its memory. */
    int quiet_switch = !quiet && f->defer_switches && f->want_syscalls == WANT_BATCH && !f->see_every_return
                       && r->pid != f->last_user_pid && r->pid >= 0 && r->pid < 64
                       && !((f->memory_pending >> r->pid) & 1) && f->scan_ready && f->screen_valid
                       && CONSOLE_PA + CONSOLE_BYTES <= f->ram_size
                       && memcmp(f->ram + CONSOLE_PA, f->screen, CONSOLE_BYTES) == 0;
    if (quiet_switch) {
        record_switch(f, r);
        if (f->raw_total - f->raw_consumed >= RING_SIZE / 2) {
            f->notify_syscall(uc, f); /* let Python take the ring before it wraps */
        }
        return;
    }
    if (quiet) {
        struct raw_syscall *entry = &f->ring[(f->raw_total - 1) & (RING_SIZE - 1)];
        if (f->raw_total > f->raw_consumed && entry->kind == RECORD_ENTRY && entry->pid == r->pid) {
            entry->kind = RECORD_COMPLETE; /* the usual case: one record for the whole call */
            uint64_t at = f->raw_total - 1;
            if (f->run_end == at && f->run_pid == r->pid && f->run_end > f->run_start) {
                f->run_end = at + 1;
            } else {
                f->run_start = at;
                f->run_end = at + 1;
                f->run_pid = r->pid;
            }
            entry->ret = r->rax;
            entry->end_ns = r->time_ns;
            return;
        }
        new_record(f, RECORD_RETURN, 0, r->time_ns, rip, cr3, r->rax, r->pid);
        if (f->raw_total - f->raw_consumed >= RING_SIZE / 2) {
            f->notify_syscall(uc, f); /* let Python take the ring before it wraps */
        }
        return;
    }
    if (CONSOLE_PA + CONSOLE_BYTES <= f->ram_size && !f->tracer_looks) {
        memcpy(f->screen, f->ram + CONSOLE_PA, CONSOLE_BYTES); /* what the tracer sees now */
        f->screen_valid = 1;
    }
    f->last_user_pid = r->pid;
    f->notify_return(uc, address, size, w);
}

/* The tracer's look at the console (Tracer.observe_console): 0 if the screen is what it last saw; else
 * LOOK_CHANGED with bit r set for each row r that changed and bit 32 + r for each row that now shows a character
 * that is not blank, and the screen is taken as seen. LOOK_UNKNOWN: the tracer compares it itself. */
#define LOOK_CHANGED (1ull << 63)
#define LOOK_UNKNOWN (1ull << 62)
#define ROWS 25
#define ROW_BYTES 160

uint64_t fastpath_look_screen(struct fastpath *f)
{
    if (!f->screen_valid || CONSOLE_PA + CONSOLE_BYTES > f->ram_size) {
        return LOOK_UNKNOWN;
    }
    const uint8_t *live = f->ram + CONSOLE_PA;
    if (memcmp(live, f->screen, CONSOLE_BYTES) == 0) {
        return 0;
    }
    uint64_t look = LOOK_CHANGED;
    for (int row = 0; row < ROWS; row++) {
        const uint8_t *cells = live + row * ROW_BYTES;
        if (memcmp(cells, f->screen + row * ROW_BYTES, ROW_BYTES) == 0) {
            continue;
        }
        look |= 1ull << row;
        for (int cell = 0; cell < ROW_BYTES; cell += 2) {
            uint8_t c = cells[cell];
            if (!((f->blank_bytes[c >> 6] >> (c & 63)) & 1)) {
                look |= 1ull << (32 + row);
                break;
            }
        }
    }
    memcpy(f->screen, live, CONSOLE_BYTES);
    return look;
}

/* The tracer's reads for a page fault and for the pid of an event it records (Tracer._pid): done here so that
 * a fault or a log line costs Python no page walk. */
int64_t fastpath_current_pid(struct fastpath *f, uint64_t cr3) { return current_pid(f, cr3); }

/* The entries a walk of `va` through `cr3` visits (as paging.walk_steps lists them): entry addresses in
 * out[0..3], entries in out[4..7]; returns the number of steps, plus 8 if the walk stopped at an entry that is
 * not present, or 16 if the next table lies outside RAM (its address in out[8]). */
int fastpath_walk(const struct fastpath *f, uint64_t cr3, uint64_t va, uint64_t *out)
{
    static const int shifts[4] = {39, 30, 21, 12};
    uint64_t table = cr3 & 0x000FFFFFFFFFF000ull;
    for (int level = 0; level < 4; level++) {
        uint64_t slot = table + 8 * ((va >> shifts[level]) & 0x1FF);
        if (slot + 8 > f->ram_size) {
            out[8] = table;
            return level + 16;
        }
        uint64_t entry;
        memcpy(&entry, f->ram + slot, 8);
        out[level] = slot;
        out[4 + level] = entry;
        if (!(entry & 1)) {
            return level + 1 + 8;
        }
        if ((level == 1 || level == 2) && (entry & 0x80)) {
            return level + 1;
        }
        table = entry & 0x000FFFFFFFFFF000ull;
    }
    return 4;
}


/* --- finding the live CPU state ------------------------------------------------------------------------------
 * Unicorn's API copies the CPU state out (uc_context_save) but never says where it lives. It lives in the
 * X86CPU object that the engine points to: so we look, two pointers deep from the engine, for the bytes a
 * context save just produced (the caller planted distinctive register values). Only addresses inside readable
 * mappings of /proc/self/maps are touched. Python checks the answer by writing a register through the API.
 */
struct range { uintptr_t start, end; };

#define ENGINE_SPAN 16384 /* how much of the engine's own structure to look through for the pointer */

static int readable_ranges(struct range *out, int max)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) {
        return 0;
    }
    char line[512];
    int n = 0;
    while (n < max && fgets(line, sizeof line, maps)) {
        unsigned long start, end;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3 && perms[0] == 'r') {
            if (n > 0 && out[n - 1].end == start) {
                out[n - 1].end = end; /* adjacent mappings read as one range */
            } else {
                out[n].start = start;
                out[n].end = end;
                n++;
            }
        }
    }
    fclose(maps);
    return n;
}

static uintptr_t readable_until(const struct range *ranges, int n, uintptr_t address)
{
    for (int i = 0; i < n; i++) {
        if (address >= ranges[i].start && address < ranges[i].end) {
            return ranges[i].end;
        }
    }
    return 0;
}

/* The first place two pointers deep from the engine where `needle` appears and that follows a write of
 * register `probe_regid` (whose value is the needle's word `probe_index`) through the API: stale copies of the
 * state (a freed context save) hold the same bytes but do not follow. *uc_offset is where the pointer sits in
 * the engine (looking from `start` on), *env_offset how far past its target the state is. Returns 1 if found. */
int fastpath_find_env(void *uc, size_t start, const uint8_t *needle, size_t needle_length, size_t span,
                      int (*reg_write)(void *, int, const void *), int probe_regid, int probe_index,
                      size_t *uc_offset, size_t *env_offset)
{
    enum { MAX_RANGES = 8192 };
    struct range *ranges = malloc(sizeof(struct range) * MAX_RANGES);
    if (!ranges) {
        return 0;
    }
    int n = readable_ranges(ranges, MAX_RANGES);
    int found = 0;
    uint64_t first;
    memcpy(&first, needle, sizeof first);
    uintptr_t base = (uintptr_t) uc;
    uintptr_t base_end = readable_until(ranges, n, base);
    for (uintptr_t at = base + start; !found && at + 8 <= base_end && at < base + ENGINE_SPAN; at += 8) {
        uintptr_t candidate = *(const uintptr_t *) at;
        uintptr_t end = readable_until(ranges, n, candidate);
        if (!end || candidate & 7) {
            continue;
        }
        if (end > candidate + span) {
            end = candidate + span;
        }
        for (uintptr_t p = candidate; !found && p + needle_length <= end; p += 8) {
            if (*(const uint64_t *) p != first || memcmp((const void *) p, needle, needle_length) != 0) {
                continue;
            }
            volatile uint64_t *word = (volatile uint64_t *) (p + 8 * probe_index);
            uint64_t original = *word, probe = ~original;
            reg_write(uc, probe_regid, &probe);
            int follows = *word == probe;
            reg_write(uc, probe_regid, &original);
            /* The CPU object points to its own state (CPUState.env_ptr): a pointer that merely happens to sit
             * before the state in the heap does not, and would not lead there in another engine. */
            int owns = 0;
            for (uintptr_t q = candidate; follows && !owns && q < p; q += 8) {
                owns = *(const uintptr_t *) q == p;
            }
            if (follows && owns) {
                *uc_offset = at - base;
                *env_offset = p - candidate;
                found = 1;
            }
        }
    }
    free(ranges);
    return found;
}

/* The env address for a known (uc_offset, env_offset), or 0 if that pointer does not lead to readable memory. */
uintptr_t fastpath_env_at(void *uc, size_t uc_offset, size_t env_offset, size_t length)
{
    enum { MAX_RANGES = 8192 };
    struct range *ranges = malloc(sizeof(struct range) * MAX_RANGES);
    if (!ranges) {
        return 0;
    }
    int n = readable_ranges(ranges, MAX_RANGES);
    uintptr_t result = 0;
    uintptr_t slot = (uintptr_t) uc + uc_offset;
    if (readable_until(ranges, n, slot) >= slot + 8) {
        uintptr_t env = *(const uintptr_t *) slot + env_offset;
        if (readable_until(ranges, n, env) >= env + length) {
            result = env;
        }
    }
    free(ranges);
    return result;
}
