#include "kernel.hh"
#include "k-vmiter.hh"
#include "elf.h"

// Programs and processes: the table of user-program images (multiboot
// modules), loading an ELF image into a fresh address space, and tearing
// an address space down again.

program programs[NPROGRAMS];
int nprograms;

const program* program_find(const char* name) {
    for (int i = 0; i != nprograms; ++i) {
        if (strcmp(programs[i].name, name) == 0) {
            return &programs[i];
        }
    }
    return nullptr;
}


namespace {
char elf_problem[96];

// Check that `prog` is an x86-64 executable that fits in user memory and
// whose every byte the loader will read lies inside the image. Returns
// nullptr if so, or why not.
const char* elf_check(const program* prog) {
    const uintptr_t user_end = MEMSIZE_VIRTUAL - PAGESIZE;  // the stack page is ours
    auto eh = reinterpret_cast<const elf_header*>(prog->data);
    if (prog->size < sizeof(elf_header)) {
        return "bad ELF: file too short";
    } else if (eh->e_magic != ELF_MAGIC) {
        return "bad ELF: not an ELF file";
    } else if (eh->e_class != ELFCLASS64 || eh->e_data != ELFDATA2LSB) {
        return "bad ELF: not 64-bit little-endian";
    } else if (eh->e_machine != EM_X86_64) {
        return "bad ELF: not an x86-64 program";
    } else if (eh->e_type != ET_EXEC) {
        return "bad ELF: not an executable (ET_EXEC)";
    } else if (eh->e_phentsize != sizeof(elf_program)) {
        return "bad ELF: unexpected program header size";
    } else if (eh->e_phoff > prog->size
               || eh->e_phnum > (prog->size - eh->e_phoff) / sizeof(elf_program)) {
        return "bad ELF: program headers outside the file";
    }

    auto ph = reinterpret_cast<const elf_program*>(prog->data + eh->e_phoff);
    int nload = 0;
    bool entry_ok = false;
    for (int i = 0; i != eh->e_phnum; ++i) {
        if (ph[i].p_type != ELF_PTYPE_LOAD || ph[i].p_memsz == 0) {
            continue;
        }
        ++nload;
        if (ph[i].p_filesz > ph[i].p_memsz) {
            return "bad ELF: segment file size exceeds its memory size";
        } else if (ph[i].p_offset > prog->size
                   || ph[i].p_filesz > prog->size - ph[i].p_offset) {
            return "bad ELF: segment data outside the file";
        } else if (ph[i].p_va < PROC_START_ADDR || ph[i].p_va >= user_end
                   || ph[i].p_memsz > user_end - ph[i].p_va) {
            snprintf(elf_problem, sizeof(elf_problem),
                     "bad ELF: segment [%p, +%#lx) outside user memory [%p, %p)",
                     (void*) ph[i].p_va, (unsigned long) ph[i].p_memsz,
                     (void*) PROC_START_ADDR, (void*) user_end);
            return elf_problem;
        }
        if (eh->e_entry >= ph[i].p_va && eh->e_entry - ph[i].p_va < ph[i].p_memsz) {
            entry_ok = true;
        }
    }
    if (nload == 0) {
        return "bad ELF: no loadable segments";
    } else if (!entry_ok) {
        return "bad ELF: entry point outside the program";
    }
    return nullptr;
}

// Map `va` in `pt` to a zeroed page for process `pid` (or reuse the user
// page already there, adding write permission if asked). Returns a kernel
// pointer to the page, or nullptr when out of memory.
uint8_t* map_program_page(x86_64_pagetable* pt, pid_t pid, uintptr_t va, int perm) {
    vmiter it(pt, va);
    if (it.user()) {
        if ((perm & PTE_W) && !it.writable()) {
            it.map(it.pa(), PTE_PWU);       // the L1 page exists: cannot fail
        }
        return it.kptr<uint8_t*>();
    }
    void* page = kalloc(PAGESIZE);
    if (!page) {
        return nullptr;
    }
    if (it.try_map(kptr2pa(page), perm) < 0) {
        kfree(page);
        return nullptr;
    }
    physpage_set_owner(kptr2pa(page), pid);
    return static_cast<uint8_t*>(page);
}

// Build `pt`: the kernel's own pages kernel-only, the console for
// everyone, then the program and a stack page. The kernel pages are what
// the entry code touches before it switches to kernel_pagetable: its text,
// the IDT, GDT, TSS and process table (all in the kernel image) and the
// kernel stack. Nothing else of low memory is mapped, in particular no
// page kalloc can hand out, so a process's page table names no page of any
// other process, not even kernel-only. Returns false when out of memory.
bool build_address_space(x86_64_pagetable* pt, pid_t pid, const program* prog) {
    for (uintptr_t va = round_down(kptr2pa(_kernel_start), PAGESIZE);
         va < round_up(kptr2pa(_kernel_end), PAGESIZE); va += PAGESIZE) {
        if (vmiter(pt, va).try_map(va, PTE_PW) < 0) {
            return false;
        }
    }
    if (vmiter(pt, KERNEL_STACK_TOP - PAGESIZE).try_map(KERNEL_STACK_TOP - PAGESIZE, PTE_PW) < 0
        || vmiter(pt, CONSOLE_ADDR).try_map(CONSOLE_ADDR, PTE_PWU) < 0) {
        return false;
    }

    auto eh = reinterpret_cast<const elf_header*>(prog->data);
    auto ph = reinterpret_cast<const elf_program*>(prog->data + eh->e_phoff);
    for (int i = 0; i != eh->e_phnum; ++i) {
        if (ph[i].p_type != ELF_PTYPE_LOAD || ph[i].p_memsz == 0) {
            continue;
        }
        uintptr_t seg_va = ph[i].p_va;
        uintptr_t file_end = seg_va + ph[i].p_filesz;
        int perm = ph[i].p_flags & ELF_PFLAG_WRITE ? PTE_PWU : PTE_PU;
        for (uintptr_t va = round_down(seg_va, PAGESIZE);
             va < seg_va + ph[i].p_memsz; va += PAGESIZE) {
            uint8_t* page = map_program_page(pt, pid, va, perm);
            if (!page) {
                return false;
            }
            // Copy the part of the file image that lands on this page; the
            // rest stays zero (kalloc zeroes).
            uintptr_t lo = max(va, seg_va), hi = min(va + PAGESIZE, file_end);
            if (lo < hi) {
                memcpy(page + (lo - va), prog->data + ph[i].p_offset + (lo - seg_va), hi - lo);
            }
        }
    }

    uintptr_t stack_va = MEMSIZE_VIRTUAL - PAGESIZE;
    assert(!vmiter(pt, stack_va).present());        // elf_check keeps it free
    return map_program_page(pt, pid, stack_va, PTE_PWU) != nullptr;
}

// Page-table pages belong to the process they map (the memory viewer shows
// them so); kalloc hands them out as kernel pages.
void claim_pagetable(x86_64_pagetable* pt, pid_t pid) {
    physpage_set_owner(kptr2pa(pt), pid);
    for (ptiter it(pt); it.active(); it.next()) {
        physpage_set_owner(it.pa(), pid);
    }
}

// The lowest free process slot, or 0 if there is none.
pid_t free_slot() {
    for (pid_t pid = 1; pid != NPROC; ++pid) {
        if (ptable[pid].state == P_FREE) {
            return pid;
        }
    }
    return 0;
}
}


// Loops over address spaces visit only what is mapped (next_mapped_va):
// a process maps a few dozen of its 768 pages.
#define FOR_EACH_MAPPING(it, pt, lo, hi) \
    for (vmiter it(pt, next_mapped_va(pt, lo, hi)); it.va() < (hi); \
         it.find(next_mapped_va(pt, it.va() + PAGESIZE, hi)))

// A mapping's permission bits, as map() takes them. Accessed and dirty
// are the hardware's notes about one page table, not permissions.
static int mapping_perm(const vmiter& it) {
    return int(it.perm() & 0xFFF & ~(PTE_A | PTE_D));
}

int copy_mappings(x86_64_pagetable* dst, x86_64_pagetable* src) {
    FOR_EACH_MAPPING(it, src, 0, MEMSIZE_VIRTUAL) {
        assert(it.present());
        if (vmiter(dst, it.va()).try_map(it.pa(), mapping_perm(it)) < 0) {
            return -1;
        }
    }
    return 0;
}

void free_everything(x86_64_pagetable* pt) {
    FOR_EACH_MAPPING(it, pt, PROC_START_ADDR, MEMSIZE_VIRTUAL) {
        if (it.user()) {
            kfree(it.kptr());
        }
    }
    // Depth first: each page is freed after every page below it was
    // visited, so ptiter never reads a freed (poisoned) page.
    for (ptiter it(pt); it.active(); it.next()) {
        kfree(it.kptr());
    }
    kfree(pt);                      // ptiter never visits the top level
}


pid_t process_start(const program* prog, const char** why) {
    if ((*why = elf_check(prog))) {
        return E_INVAL;
    }
    pid_t pid = free_slot();
    if (pid == 0) {
        *why = "too many processes";
        return E_AGAIN;
    }
    proc* p = &ptable[pid];
    assert(p->pid == pid);

    auto pt = static_cast<x86_64_pagetable*>(kalloc(PAGESIZE));
    if (!pt) {
        *why = "out of memory";
        return E_NOMEM;
    }
    if (!build_address_space(pt, pid, prog)) {
        free_everything(pt);
        *why = "out of memory";
        return E_NOMEM;
    }
    claim_pagetable(pt, pid);

    memset(&p->regs, 0, sizeof(p->regs));
    cpustate_init(&p->cpu);
    p->regs.reg_rip = reinterpret_cast<const elf_header*>(prog->data)->e_entry;
    p->regs.reg_rsp = MEMSIZE_VIRTUAL;
    p->regs.reg_cs = SEGSEL_APP_CODE | 3;
    p->regs.reg_ss = SEGSEL_APP_DATA | 3;
    p->regs.reg_rflags = EFLAGS_IF;
    p->pagetable = pt;
    strlcpy(p->name, prog->name, sizeof(p->name));
    p->wait = W_NONE;
    p->state = P_RUNNABLE;
    return pid;
}

pid_t process_fork(proc* parent) {
    assert(parent->state == P_RUNNABLE);
    pid_t pid = free_slot();
    if (pid == 0) {
        return E_AGAIN;
    }
    auto pt = static_cast<x86_64_pagetable*>(kalloc(PAGESIZE));
    if (!pt) {
        return E_NOMEM;
    }

    // Start from the parent's mappings, then give the child its own copy
    // of every user page (the console excepted: it is meant to be shared).
    bool ok = copy_mappings(pt, parent->pagetable) == 0;
    if (ok) {
        FOR_EACH_MAPPING(it, pt, PROC_START_ADDR, MEMSIZE_VIRTUAL) {
            if (it.user()) {
                void* page = kalloc(PAGESIZE);
                if (!page) {
                    ok = false;
                    break;
                }
                memcpy(page, it.kptr(), PAGESIZE);
                physpage_set_owner(kptr2pa(page), pid);
                it.map(kptr2pa(page), mapping_perm(it));    // the L1 page exists
            }
        }
    }
    if (!ok) {
        // Out of memory part way. Pages still shared with the parent must
        // not be freed with the rest: unmap them first.
        FOR_EACH_MAPPING(it, pt, PROC_START_ADDR, MEMSIZE_VIRTUAL) {
            if (it.user() && it.pa() == vmiter(parent, it.va()).pa()) {
                it.map(0, 0);
            }
        }
        free_everything(pt);
        return E_NOMEM;
    }
    claim_pagetable(pt, pid);

    proc* child = &ptable[pid];
    assert(child->pid == pid);
    child->regs = parent->regs;
    child->regs.reg_rax = 0;                // fork returns 0 in the child
    cpustate_sync(parent);                  // the child gets a copy of the
    child->cpu = parent->cpu;               // parent's FPU and FS/GS too
    child->pagetable = pt;
    strlcpy(child->name, parent->name, sizeof(child->name));
    child->wait = W_NONE;
    child->state = P_RUNNABLE;
    return pid;
}

int process_page_alloc(proc* p, uintptr_t addr) {
    if (addr % PAGESIZE != 0 || addr < PROC_START_ADDR || addr >= MEMSIZE_VIRTUAL) {
        return E_INVAL;
    }
    void* page = kalloc(PAGESIZE);
    if (!page) {
        return E_NOMEM;
    }
    vmiter it(p, addr);
    void* old = it.user() ? it.kptr() : nullptr;
    if (it.try_map(kptr2pa(page), PTE_PWU) < 0) {
        kfree(page);
        return E_NOMEM;
    }
    physpage_set_owner(kptr2pa(page), p->pid);
    claim_pagetable(p->pagetable, p->pid);  // a new L1 page, perhaps
    kfree(old);
    return 0;
}

void process_free(proc* p) {
    assert(p->state == P_RUNNABLE && p->pagetable);
    assert(p->wait == W_NONE);
    // Never free the page table the CPU is using (the kernel runs on
    // kernel_pagetable whenever it gets here).
    assert((rdcr3() & PTE_PAMASK) != kptr2pa(p->pagetable));
    free_everything(p->pagetable);
    cpustate_release(p);
    p->pagetable = nullptr;
    p->state = P_FREE;              // pid and name stay for post-mortems
}
