#include "kernel.hh"
#include "k-vmiter.hh"

// The memory viewer, drawn like the course's (weensyos-course-contract.md,
// sections 4-5):
//
//   row 0        PHYSICAL MEMORY
//   rows 1-8     physical pages 0-0x1FFFFF, 64 per row, one cell each
//   row 10       VIRTUAL ADDRESS SPACE FOR <pid>
//   rows 11-22   that process's virtual pages 0-0x2FFFFF (blank: unmapped)
//   rows 23-24   the console text window: program and kernel messages
//
// A cell shows who owns the physical page: '.' free, 'R' reserved, 'K'
// kernel, 'C' the console, 'S' shared, or the owner's pid (1-9, then A-F)
// coloured by pid, on a dark red background for the process's page-table
// pages. In the virtual map a page mapped user-accessible is drawn in
// reverse video, so a page of another process showing there, or a kernel
// page in reverse video, is an isolation bug in plain sight.
//
// Off unless the command line says `memviewer`. Redrawn on every timer
// tick (not on every kernel entry, as the course does: under emulation
// that would cost more than the programs). The virtual map moves on to
// the next live process every half second.

bool memviewer_enabled;

namespace {
#define MEMVIEWER_TEXT_ROW  23          // text window while the viewer is on
#define CELL_COLUMN         12          // first page cell of a row
#define PAGES_PER_ROW       64
#define COLOR_LABEL         0x0F00      // white
#define COLOR_RESERVED      0x0700      // gray
#define COLOR_KERNEL        0x0D00      // light magenta
#define COLOR_PAGETABLE_BG  0x4000      // dark red background

pid_t shown_pid;                        // process whose virtual map is shown
uint64_t shown_since;                   // tick it was chosen
uint8_t pagetable_bits[NPAGES / 8];     // physical page n is a page-table page

const uint16_t pid_colors[] = {0x0F00, 0x0C00, 0x0A00, 0x0900, 0x0E00};

bool is_kernel_image(uintptr_t pa) {
    return (pa >= round_down(kptr2pa(_kernel_start), PAGESIZE)
            && pa < round_up(kptr2pa(_kernel_end), PAGESIZE))
        || pa == KERNEL_STACK_TOP - PAGESIZE;
}

// Note which physical pages hold page tables of live processes.
void mark_pagetables() {
    memset(pagetable_bits, 0, sizeof(pagetable_bits));
    auto mark = [](uintptr_t pa) {
        if (pa < MEMSIZE_PHYSICAL) {
            pagetable_bits[pa / PAGESIZE / 8] |= 1 << (pa / PAGESIZE % 8);
        }
    };
    for (pid_t pid = 1; pid != NPROC; ++pid) {
        if (ptable[pid].state != P_FREE) {
            mark(kptr2pa(ptable[pid].pagetable));
            for (ptiter it(&ptable[pid]); it.active(); it.next()) {
                mark(it.pa());
            }
        }
    }
}

// The cell (character | colour) for physical page `pa`.
uint16_t page_cell(uintptr_t pa) {
    if (pa >= MEMSIZE_PHYSICAL) {
        return '?' | 0xF400;            // outside managed memory: suspicious
    }
    size_t pn = pa / PAGESIZE;
    const physpageinfo& pp = physpages[pn];
    if (pa == CONSOLE_ADDR) {
        return 'C' | COLOR_LABEL;
    } else if (pp.owner == PO_RESERVED) {
        return is_kernel_image(pa) ? 'K' | COLOR_KERNEL : 'R' | COLOR_RESERVED;
    } else if (pp.owner == PO_KERNEL) {
        return 'K' | COLOR_KERNEL;
    } else if (pp.owner == PO_FREE) {
        return '.' | COLOR_RESERVED;
    } else if (pp.refcount > 1) {
        return 'S' | COLOR_LABEL;
    }
    int pid = pp.owner;
    uint16_t color = pid_colors[pid % 5];
    if (pagetable_bits[pn / 8] & (1 << (pn % 8))) {
        color |= COLOR_PAGETABLE_BG;
    }
    return (pid < 10 ? '0' + pid : 'A' + pid - 10) | color;
}

// Foreground and background swapped: how user-accessible pages show.
uint16_t reverse_video(uint16_t cell) {
    uint16_t attr = cell >> 8;
    attr = ((attr & 0x0F) << 4) | ((attr & 0xF0) >> 4);
    return (cell & 0xFF) | attr << 8;
}

void draw_row_label(int row, uintptr_t addr) {
    console_printf(CPOS(row, 0), COLOR_LABEL, "   0x%06lX ", (unsigned long) addr);
}

void clear_row(int row, int from_column) {
    for (int col = from_column; col != CONSOLE_COLUMNS; ++col) {
        console[CPOS(row, col)] = ' ' | COLOR_NORMAL;
    }
}

void draw_physical() {
    clear_row(0, 0);
    console_printf(CPOS(0, 32), COLOR_LABEL, "PHYSICAL MEMORY");
    for (uintptr_t pa = 0; pa < MEMSIZE_PHYSICAL; pa += PAGESIZE) {
        size_t pn = pa / PAGESIZE;
        int row = 1 + pn / PAGES_PER_ROW;
        if (pn % PAGES_PER_ROW == 0) {
            draw_row_label(row, pa);
        }
        console[CPOS(row, CELL_COLUMN + pn % PAGES_PER_ROW)] = page_cell(pa);
    }
}

// The live process to show: the same one for half a second, then the
// next live one after it.
proc* choose_process() {
    if (shown_pid != 0 && ptable[shown_pid].state != P_FREE
        && ticks - shown_since < HZ / 2) {
        return &ptable[shown_pid];
    }
    for (int n = 1; n != NPROC; ++n) {
        pid_t pid = (shown_pid + n - 1) % (NPROC - 1) + 1;
        if (ptable[pid].state != P_FREE) {
            shown_pid = pid;
            shown_since = ticks;
            return &ptable[pid];
        }
    }
    shown_pid = 0;
    return nullptr;
}

void draw_virtual() {
    const int first_row = 11;
    clear_row(10, 0);
    proc* p = choose_process();
    if (!p) {
        console_printf(CPOS(10, 26), COLOR_LABEL, "[All processes have exited]");
        for (int row = first_row; row != MEMVIEWER_TEXT_ROW; ++row) {
            clear_row(row, 0);
        }
        return;
    }
    console_printf(CPOS(10, 26), COLOR_LABEL, "VIRTUAL ADDRESS SPACE FOR %d", p->pid);
    for (vmiter it(p, 0); it.va() < MEMSIZE_VIRTUAL; it += PAGESIZE) {
        size_t vn = it.va() / PAGESIZE;
        int row = first_row + vn / PAGES_PER_ROW;
        if (vn % PAGES_PER_ROW == 0) {
            draw_row_label(row, it.va());
        }
        uint16_t cell = ' ' | COLOR_NORMAL;
        if (it.present()) {
            cell = page_cell(it.pa());
            if (it.user()) {
                cell = reverse_video(cell);
            }
        }
        console[CPOS(row, CELL_COLUMN + vn % PAGES_PER_ROW)] = cell;
    }
}
}

void memviewer_enable() {
    memviewer_enabled = true;
    console_window_top = MEMVIEWER_TEXT_ROW;
    console_clear();
}

void memviewer_show() {
    if (!memviewer_enabled) {
        return;
    }
    static_assert(MEMSIZE_PHYSICAL / PAGESIZE / PAGES_PER_ROW == 8, "rows 1-8");
    static_assert(MEMSIZE_VIRTUAL / PAGESIZE / PAGES_PER_ROW == 12, "rows 11-22");
    mark_pagetables();
    draw_physical();
    draw_virtual();
}
