#ifndef WEENSYOS_KERNEL_HH
#define WEENSYOS_KERNEL_HH
#include "x86-64.h"
#include "lib.hh"

// Kernel-wide definitions: the memory layout, processes, the physical page
// allocator and the hardware interface.


// Memory layout (physical = virtual for the kernel; see kernel.ld)
#define KERNEL_START_ADDR   0x40000UL       // kernel image (link address)
#define KERNEL_STACK_TOP    0x80000UL       // single kernel stack: 0x7F000-0x7FFFF
#define CONSOLE_ADDR        0xB8000UL       // CGA text buffer page
#define PROC_START_ADDR     0x100000UL      // user programs are linked here
#define MEMSIZE_PHYSICAL    0x200000UL      // physical memory the kernel manages
#define NPAGES              (MEMSIZE_PHYSICAL / PAGESIZE)
#define MEMSIZE_VIRTUAL     0x300000UL      // end of user virtual addresses
#define IOHOLE_START        0xA0000UL       // legacy VGA/BIOS hole, reserved
#define IOHOLE_END          0x100000UL
#define LAPIC_ADDR          0xFEE00000UL
#define IOAPIC_ADDR         0xFEC00000UL

// Linker-script symbols
extern "C" char _kernel_start[], _kernel_end[];

// The kernel reaches every physical page it manages through the identity
// mapping of kernel_pagetable.
template <typename T = void*>
inline T pa2kptr(uintptr_t pa) {
    return reinterpret_cast<T>(pa);
}
template <typename T>
inline uintptr_t kptr2pa(T* p) {
    return reinterpret_cast<uintptr_t>(p);
}

extern x86_64_pagetable kernel_pagetable[];

// Timer ticks since boot (100 Hz). Mirrored into the console page at
// 0xB8FF0 so user programs can read it too.
#define HZ                  100
extern volatile uint64_t ticks;
#define CONSOLE_TICKS_ADDR  0xB8FF0UL


// Processes
#define NPROC               16      // slots; pids are 1..NPROC-1
#define PROC_NAME_MAX       16

enum procstate_t {
    P_FREE = 0,                     // slot unused
    P_RUNNABLE = 1,                 // ready to run (or running)
    P_BLOCKED = 2                   // waiting for the pipe (see `wait`)
};

// What a blocked process waits for. The kernel finishes the system call
// on the process's behalf when it can (result in regs.reg_rax), so the
// process never repeats a call after waking.
enum waitkind_t {
    W_NONE = 0,
    W_PIPEREAD = 1,                 // piperead(wait_buf, wait_len)
    W_PIPEWRITE = 2                 // pipewrite(wait_buf, wait_len)
};

// Layout note: pagetable, pid, state and regs sit at fixed offsets
// (0, 8, 12, 16) that k-entry.S hard-codes and the harness reads.
// User-visible CPU state that the trap frame does not hold: the x87, MMX
// and SSE registers (an FXSAVE image) and the FS/GS selectors and bases.
// The kernel never uses them itself, so they stay in the CPU while their
// process runs and move only when another process gets the CPU
// (k-cpustate.cc): no process sees or changes another's.
struct cpustate {
    alignas(16) uint8_t fxsave[512];
    uint64_t fs_base;
    uint64_t gs_base;
    uint16_t fs;
    uint16_t gs;
};

struct proc {
    x86_64_pagetable* pagetable;    // top-level page table (kalloc'd)
    pid_t pid;                      // == index in ptable
    int state;                      // procstate_t
    regstate regs;                  // user registers while not running
    char name[PROC_NAME_MAX];       // program name, NUL-terminated
    int wait;                       // waitkind_t while P_BLOCKED
    uintptr_t wait_buf;             // user buffer of the waiting call
    size_t wait_len;                //   and its length (already checked)
    uint64_t wait_since;            // blocking order: oldest waiter first
    cpustate cpu;                   // FPU/SSE, FS/GS while not in the CPU
};
static_assert(offsetof(proc, pagetable) == 0, "proc layout");
static_assert(offsetof(proc, pid) == 8, "proc layout");
static_assert(offsetof(proc, state) == 12, "proc layout");
static_assert(offsetof(proc, regs) == 16, "proc layout");
static_assert(offsetof(proc, name) == 208, "proc layout");

extern proc ptable[NPROC];          // ptable[0] is never used
extern proc* current;               // process whose state the CPU holds


// Programs: user-program ELF images handed over as multiboot modules
struct program {
    const char* name;
    const uint8_t* data;
    size_t size;
};
#define NPROGRAMS           32
#define PROGRAM_NAME_MAX    32      // including the NUL
extern program programs[NPROGRAMS];
extern int nprograms;
const program* program_find(const char* name);

// Start `prog` in the lowest free process slot. Returns the new pid, or
// E_AGAIN (no free slot), E_INVAL (bad ELF) or E_NOMEM, with `*why`
// saying why and nothing left allocated.
pid_t process_start(const program* prog, const char** why);
// Create a copy of `parent` (every user page copied, registers the same
// but %rax = 0). Returns the child's pid, or E_AGAIN (no free slot) or
// E_NOMEM, leaving nothing allocated.
pid_t process_fork(proc* parent);
// page_alloc(addr) for `p`: map a fresh zeroed user page at `addr`,
// freeing the page it replaces. Returns 0, E_INVAL (addr not page-aligned
// or outside [PROC_START_ADDR, MEMSIZE_VIRTUAL)) or E_NOMEM (nothing
// changed).
int process_page_alloc(proc* p, uintptr_t addr);
// Free every user page and page-table page of `p` and mark its slot free.
void process_free(proc* p);


// Per-process CPU state beyond the trap frame (k-cpustate.cc)

// A clean state: FPU as after FNINIT, default MXCSR, null FS/GS, bases 0.
void cpustate_init(cpustate* s);
// Give the CPU to `p`: save the previous owner's state, load p's.
void cpustate_switch(proc* p);
// If p's state is in the CPU, copy it into p->cpu (fork copies it).
void cpustate_sync(proc* p);
// `p` is gone: its state in the CPU is no longer anyone's.
void cpustate_release(proc* p);

// Copy every mapping of [0, MEMSIZE_VIRTUAL) from `src` into the empty
// page table `dst`: same physical pages, same permissions (the pages are
// shared, not copied). Returns 0, or -1 when out of memory for page-table
// pages (`dst` then holds some of the mappings; free it with
// free_everything only after removing the shared user mappings).
int copy_mappings(x86_64_pagetable* dst, x86_64_pagetable* src);
// Free the user-accessible pages of [PROC_START_ADDR, MEMSIZE_VIRTUAL) in
// `pt` and every page-table page of `pt`, top level last. (The only user
// mapping below PROC_START_ADDR is the console, which is not kalloc's.)
void free_everything(x86_64_pagetable* pt);


// User memory (k-usermem.cc). System calls reach user buffers only through
// these, which check the caller's own page table over the whole range:
// the confused-deputy defence.

// Does `p` map every byte of [va, va + n) present and user-accessible (and
// writable if `write`), without wrapping around? n == 0 is always fine.
bool user_range_ok(const proc* p, uintptr_t va, size_t n, bool write);
// Copy to/from user memory of `p`. Return 0 or E_FAULT (nothing copied).
int copy_to_user(const proc* p, uintptr_t dst, const void* src, size_t n);
int copy_from_user(const proc* p, void* dst, uintptr_t src, size_t n);
// Copy the NUL-terminated string at `src` into `buf` (capacity `size`).
// Returns its length, E_FAULT if an inaccessible byte comes before the
// NUL, or E_RANGE if there is no NUL in the first `size` bytes (`buf`
// then holds the truncated string).
ssize_t copy_string_from_user(const proc* p, uintptr_t src, char* buf, size_t size);


// The pipe (k-pipe.cc): one system-wide byte stream with a one-page buffer
// of PIPE_SIZE bytes (syscalls.h).
static_assert(PIPE_SIZE >= PAGESIZE, "the pipe holds at least a page");

// pipewrite/piperead on behalf of `p`. Return true if the call is
// finished (result in p->regs.reg_rax); false if `p` is now P_BLOCKED and
// the kernel will finish the call when the pipe allows.
bool pipe_write(proc* p, uintptr_t buf, size_t n);
bool pipe_read(proc* p, uintptr_t buf, size_t n);
// Called when no process can run but some wait on the pipe: nobody can
// ever wake them, so end their waits (readers get 0, end of file; writers
// get E_PIPE) and make them runnable.
void pipe_end_waits();


// The memory viewer (k-memviewer.cc): physical pages by owner in rows 0-8
// and one process's virtual address space in rows 10-22, redrawn on every
// timer tick. Program output goes to the text window below (rows 23-24).
extern bool memviewer_enabled;
// Turn the viewer on and shrink the console text window below it.
void memviewer_enable();
// Redraw (does nothing while the viewer is off).
void memviewer_show();


// Physical memory
struct physpageinfo {
    int8_t owner;                   // PO_* or a pid
    uint8_t refcount;
};
enum pageowner_t {
    PO_FREE = 0,                    // available to kalloc
    PO_RESERVED = -1,               // never allocated (page 0, kernel, I/O hole)
    PO_KERNEL = -2                  // allocated for kernel use (page tables)
};
extern physpageinfo physpages[NPAGES];

void init_physpages();
// Allocate one zeroed page (size <= PAGESIZE). Returns nullptr when out of
// memory. The page starts owned by the kernel; see physpage_set_owner.
void* kalloc(size_t size);
// Free a page returned by kalloc. kfree(nullptr) does nothing.
void kfree(void* ptr);
void physpage_set_owner(uintptr_t pa, int owner);
// Number of free physical pages.
size_t kalloc_free_pages();


// Hardware (k-hardware.cc)
void init_hardware(uintptr_t phys_map_end);
void lapic_eoi();
// Poll the keyboard: `q` or Ctrl-C powers off.
void check_keyboard();
// Move the hardware cursor to `cursorpos`.
void console_show_cursor();
extern "C" [[noreturn]] void poweroff();
// Loop forever polling the keyboard (after a panic).
extern "C" [[noreturn]] void fail();

// Log to the parallel port (never blocks for long).
void log_printf(const char* format, ...) __attribute__((format(printf, 1, 2)));
void log_vprintf(const char* format, va_list val) __attribute__((format(printf, 1, 0)));
// Print on the console (at the start of a line, in `color`) and log.
void report(int color, const char* format, ...) __attribute__((format(printf, 2, 3)));
// Log a frame-pointer backtrace starting at `rbp`.
void log_backtrace(uintptr_t rbp);


// Entry points (k-entry.S)
extern "C" {
[[noreturn]] void exception_return(proc* p);
void syscall_entry();
extern char exception_stubs[];      // 256 stubs, 16 bytes apart
}

#endif
