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
    P_BLOCKED = 2                   // waiting (reserved for pipes/wait)
};

// Layout note: pagetable, pid, state and regs sit at fixed offsets
// (0, 8, 12, 16) that k-entry.S hard-codes and the harness reads.
struct proc {
    x86_64_pagetable* pagetable;    // top-level page table (kalloc'd)
    pid_t pid;                      // == index in ptable
    int state;                      // procstate_t
    regstate regs;                  // user registers while not running
    char name[PROC_NAME_MAX];       // program name, NUL-terminated
};
static_assert(offsetof(proc, pagetable) == 0, "proc layout");
static_assert(offsetof(proc, pid) == 8, "proc layout");
static_assert(offsetof(proc, state) == 12, "proc layout");
static_assert(offsetof(proc, regs) == 16, "proc layout");
static_assert(offsetof(proc, name) == 208, "proc layout");
static_assert(sizeof(proc) == 224, "proc layout");

extern proc ptable[NPROC];          // ptable[0] is never used
extern proc* current;               // process whose state the CPU holds


// Programs: user-program ELF images handed over as multiboot modules
struct program {
    const char* name;
    const uint8_t* data;
    size_t size;
};
#define NPROGRAMS           32
extern program programs[NPROGRAMS];
extern int nprograms;
const program* program_find(const char* name);

// Create process `pid` running `prog`. Returns 0 or negative error; on
// failure `*why` says why and nothing is left allocated.
int process_setup(pid_t pid, const program* prog, const char** why);
// Free every user page and page-table page of `p` and mark its slot free.
void process_free(proc* p);


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
