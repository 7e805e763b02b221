#include "k-vmiter.hh"

// Page-table walkers; see k-vmiter.hh for the interface.

x86_64_pageentry_t vmiter::zero_entry = 0;

// Is `e`, found at `level`, a pointer to a lower-level table? (Large pages
// exist only at levels 1 and 2.)
static inline bool is_table_entry(x86_64_pageentry_t e, int level) {
    return level > 0 && (e & PTE_P) && (level == 3 || !(e & PTE_PS));
}

void vmiter::real_find(uintptr_t va) {
    va_ = va;
    perm_ = PTE_PWU;
    level_ = 3;
    if (!va_is_canonical(va)) {
        // Nothing can be mapped here. zero_entry is never written: try_map
        // refuses non-canonical addresses.
        pep_ = &zero_entry;
        return;
    }
    pep_ = &pt_->entry[pageindex(va, 3)];
    while (is_table_entry(*pep_, level_)) {
        perm_ &= *pep_ & PTE_PWU;
        auto pt = pa2kptr<x86_64_pagetable*>(*pep_ & PTE_PAMASK);
        --level_;
        pep_ = &pt->entry[pageindex(va, level_)];
    }
}

int vmiter::try_map(uintptr_t pa, int perm) {
    assert(va_ % PAGESIZE == 0 && va_is_canonical(va_));
    assert(!(perm & PTE_PS));
    assert(!(perm & PTE_P) || pa % PAGESIZE == 0);
    if (level_ > 0 && (*pep_ & PTE_P)) {
        panic("vmiter::try_map(%p): va is inside a large page", (void*) va_);
    }

    if (!(perm & PTE_P)) {
        // Unmapping: nothing to do unless an L1 entry exists.
        if (level_ == 0) {
            *pep_ = 0;
        }
    } else {
        // Build the missing levels. Remember what we add so a failure
        // can take it all back.
        x86_64_pagetable* added[3];
        int nadded = 0;
        x86_64_pageentry_t* first_pep = pep_;
        while (level_ > 0) {
            auto pt = static_cast<x86_64_pagetable*>(kalloc(PAGESIZE));
            if (!pt) {
                if (nadded != 0) {
                    *first_pep = 0;
                }
                for (int i = 0; i != nadded; ++i) {
                    kfree(added[i]);
                }
                real_find(va_);
                return -1;
            }
            added[nadded++] = pt;
            // Intermediate levels allow everything; the leaf decides.
            *pep_ = kptr2pa(pt) | PTE_PWU;
            --level_;
            pep_ = &pt->entry[pageindex(va_, level_)];
        }
        *pep_ = pa | perm;
    }

    if ((rdcr3() & PTE_PAMASK) == kptr2pa(pt_)) {
        invlpg(va_);
    }
    real_find(va_);
    return 0;
}

void vmiter::map(uintptr_t pa, int perm) {
    if (try_map(pa, perm) < 0) {
        panic("vmiter::map(%p -> %p): out of memory for page tables",
              (void*) va_, (void*) pa);
    }
}


// The first index in [i, end) of `pt` whose entry is not zero, or `end`.
// Most entries of a process's tables are zero, so skip them eight at a
// time: one loop iteration (one translation block) per 64 bytes.
static unsigned next_nonzero(const x86_64_pagetable* pt, unsigned i, unsigned end) {
    const x86_64_pageentry_t* e = pt->entry;
    for (; i != end && i % 8 != 0; ++i) {
        if (e[i] != 0) {
            return i;
        }
    }
    while (i != end && (e[i] | e[i + 1] | e[i + 2] | e[i + 3]
                        | e[i + 4] | e[i + 5] | e[i + 6] | e[i + 7]) == 0) {
        i += 8;
    }
    for (; i != end; ++i) {
        if (e[i] != 0) {
            return i;
        }
    }
    return end;
}

uintptr_t next_mapped_va(const x86_64_pagetable* pt, uintptr_t va, uintptr_t end) {
    assert(va % PAGESIZE == 0 && end <= VA_LOWMAX);
    while (va < end) {
        const x86_64_pagetable* t = pt;
        int level = 3;
        x86_64_pageentry_t e = t->entry[pageindex(va, level)];
        while (is_table_entry(e, level) && level > 1) {
            t = pa2kptr<const x86_64_pagetable*>(e & PTE_PAMASK);
            --level;
            e = t->entry[pageindex(va, level)];
        }
        if (is_table_entry(e, level)) {
            // An L1 table: find its next nonzero entry from va on.
            t = pa2kptr<const x86_64_pagetable*>(e & PTE_PAMASK);
            unsigned i = next_nonzero(t, pageindex(va, 0), NPAGETABLEENTRIES);
            va = round_down(va, pageentry_span(1)) + i * PAGESIZE;
            if (i == NPAGETABLEENTRIES) {
                continue;               // va is already past this table
            } else if (t->entry[i] & PTE_P) {
                return min(va, end);
            }
            level = 0;                  // not present: step past it
        } else if (e & PTE_P) {
            return va;                  // inside a large page
        }
        va = round_down(va, pageentry_span(level)) + pageentry_span(level);
    }
    return end;
}

void ptiter::scan(bool skip_current) {
    // Either leave the page we stopped on (resume in its parent, after its
    // entry) or, at construction, examine the top-level entry for va_.
    unsigned i;
    if (skip_current) {
        assert(active_ && level_ < 3);
        ++level_;
        i = pageindex(va_, level_) + 1;
    } else {
        i = pageindex(va_, level_);
    }

    while (true) {
        // The top level is scanned only over the lower half.
        unsigned end = level_ == 3 ? pageindex(VA_LOWMAX - 1, 3) + 1 : NPAGETABLEENTRIES;
        uintptr_t table_va = level_ == 3 ? 0 : round_down(va_, pageentry_span(level_ + 1));
        i = next_nonzero(tables_[level_], i, end);
        if (i == end) {
            if (level_ == 3) {
                // Done. va() stays above every user address, so loops
                // written as `it.va() < LIMIT` end too.
                active_ = false;
                va_ = VA_LOWMAX;
            } else {
                // Every entry of this table is done: now visit the table.
                va_ = table_va;
            }
            return;
        }
        // Keep va_ where it is inside its entry (the constructor's va);
        // anywhere else, start at the entry's beginning.
        if (i != pageindex(va_, level_)) {
            va_ = table_va + i * pageentry_span(level_);
        }

        x86_64_pageentry_t e = tables_[level_]->entry[i];
        if (!is_table_entry(e, level_)) {
            ++i;
            continue;
        }
        // Descend; the child's entries come before the child itself.
        tables_[level_ - 1] = pa2kptr<x86_64_pagetable*>(e & PTE_PAMASK);
        --level_;
        if (level_ == 0) {
            // An L1 page has no tables below it: visit it now.
            va_ = round_down(va_, pageentry_span(1));
            return;
        }
        i = pageindex(va_, level_);
    }
}
