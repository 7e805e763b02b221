#include "u-lib.hh"

// fuzz: an in-guest system-call fuzzer. It makes `fuzz_calls` system calls
// (100,000 by default) with random and adversarial arguments: kernel,
// unmapped, read-only, non-canonical and wrapping addresses, misaligned
// and huge sizes, strings that run into an unmapped page or never end,
// random numbers in every register and unknown system-call numbers
// (0, 11..1000, negative, huge, and valid numbers with high bits set).
// Every call is checked against a model of what the ABI (syscalls.h,
// u-lib.hh, README) says it must return, computed from the fuzzer's own
// knowledge of its address space; every register the kernel must keep
// (all but %rax, %rcx and %r11) is checked after every call; bytes read
// from the pipe must be the bytes written to it, getsysname must write the
// system name, page_alloc must map a zeroed page.
//
// Seeded and reproducible: a xorshift64* generator seeded with `fuzz_seed`.
// A program takes no arguments, so the seed and the call count are
// constants in .rodata with symbols of their own (`fuzz_seed`,
// `fuzz_calls`), read from memory at run time: a test patches the ELF file
// for another seed or a short run (tests/test_syscall_fuzz.py).
//
// It must not end the system or itself early: it never calls panic (that
// stops the machine whatever the argument) or exit (until it is done); a
// fork's child exits at once; spawn starts only `hello` (names it builds
// or finds that might name another program are not passed). It is the
// pipe's only user, so it knows how full the pipe is and never lets a call
// block: before a read that could succeed it makes sure the pipe holds a
// byte, before such a write that it has room.
//
// Memory: the image (text and read-only data only: the fuzzer keeps no
// writable data in its image, so every image page is read-only), the
// stack page, two state pages and the string page (all protected: a call
// that would write there is pointed at scratch memory instead), and an
// arena of 64 pages that page_alloc may map, replace and fill. Nothing
// else is mapped for the user, except the console page.
//
// Prints its seed, progress every 10,000 calls and a summary:
//   fuzz: 100000 system calls, seed 0x..., N errors, U unexpected
// and exits 0 if every result was as expected (else 1).

extern "C" const uint64_t fuzz_seed = 0x5EED0F0F1234ABCDUL;
extern "C" const uint64_t fuzz_calls = 100000;

// Read a constant from memory (not the value the compiler knows): the
// file may have been patched.
static uint64_t patched(const uint64_t& constant) {
    uint64_t value;
    asm volatile("movq %1, %0" : "=r"(value) : "m"(constant));
    return value;
}

#define REPORT_EVERY    10000
#define MAX_REPORTS     10              // unexpected results printed in full

#define USER_LO         0x100000UL
#define USER_HI         0x300000UL
#define CONSOLE_PAGE    0xB8000UL
#define ARENA_LO        0x200000UL      // page_alloc's playground
#define ARENA_PAGES     64
#define ARENA_HI        (ARENA_LO + ARENA_PAGES * PAGESIZE)
#define SCRATCH         ARENA_LO        // always mapped (replacing keeps it so)
#define STRING_PAGE     0x240000UL      // non-NUL bytes to its very end
#define GUARD_PAGE      0x241000UL      // never mapped
#define STATE_VA        0x2F0000UL
#define STATE_PAGES     3
#define STACK_PAGE      0x2FF000UL

#define M_READ          1
#define M_WRITE         2

struct fuzz_state {
    uint64_t rng;
    uint8_t perm[(USER_HI - USER_LO) / PAGESIZE];   // model: M_READ | M_WRITE per page
    uint8_t pipe_data[PIPE_SIZE];       // what the pipe holds, as a ring
    uint8_t pipe_known[PIPE_SIZE];      // 1 if that byte's value is known
    size_t pipe_head;
    size_t pipe_len;
    char sysname[SYSNAME_MAX];
    uintptr_t image_end;
    pid_t pid;
    unsigned long iteration;            // fuzzing calls made
    unsigned long syscalls;             // every system call made, helpers included
    unsigned long errors;               // results that were errors
    unsigned long unexpected;           // results the model did not allow
    unsigned long forks, forks_refused, spawns, spawns_refused, allocs, nomem;
    unsigned long pipe_in, pipe_out;
};
static_assert(sizeof(fuzz_state) <= STATE_PAGES * PAGESIZE, "state fits its pages");

#define S (reinterpret_cast<fuzz_state*>(STATE_VA))

// Names spawn is given on purpose; none is a program except "hello".
// (Any other name the fuzzer reads at a random address is passed only if
// it cannot name a program: see spawn_safe.)
static const char* const bad_names[] = {
    "", "nosuchprogram", "friends", "pipe", "allocators", "fuzzfriends", "memviewer",
    "HELLO", "hello ", " hello", "hello\n", "hell", "helloo", "hello/",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",         // 31 letters: E_INVAL
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",        // 32 letters: E_RANGE
};


// Random numbers: xorshift64*.

static uint64_t rnd() {
    uint64_t x = S->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    S->rng = x;
    return x * 0x2545F4914F6CDD1DUL;
}

static uint64_t below(uint64_t n) {
    return rnd() % n;
}

static bool one_in(uint64_t n) {
    return below(n) == 0;
}


// Output, on a fresh row: any process may have moved the shared cursor.

static void say(const char* format, ...) __attribute__((format(printf, 1, 2)));
static void say(const char* format, ...) {
    if (cursorpos % CONSOLE_COLUMNS != 0) {
        printf("\n");
    }
    va_list val;
    va_start(val, format);
    vprintf(format, val);
    va_end(val);
}


// The system call itself. Every register but %rax, %rcx and %r11 must come
// back as it went in: the arguments and %rbx, %r8, %r9, %r12-%r15 (which
// carry random values) are compared afterwards. (%rbp is the frame pointer.)

struct call {
    uint64_t nr, a0, a1, a2, a3;
};

static void child_exit() {
    make_syscall(SYSCALL_EXIT, 0);
}

static uintptr_t raw_syscall(const call& c, bool* regs_ok) {
    uint64_t k0 = rnd(), k1 = rnd(), k2 = rnd(), k3 = rnd(), k4 = rnd(), k5 = rnd(), k6 = rnd();
    register uint64_t rax asm("rax") = c.nr;
    register uint64_t rdi asm("rdi") = c.a0;
    register uint64_t rsi asm("rsi") = c.a1;
    register uint64_t rdx asm("rdx") = c.a2;
    register uint64_t r10 asm("r10") = c.a3;
    register uint64_t r8 asm("r8") = k0;
    register uint64_t r9 asm("r9") = k1;
    register uint64_t rbx asm("rbx") = k2;
    register uint64_t r12 asm("r12") = k3;
    register uint64_t r13 asm("r13") = k4;
    register uint64_t r14 asm("r14") = k5;
    register uint64_t r15 asm("r15") = k6;
    asm volatile("syscall"
                 : "+a"(rax), "+r"(rdi), "+r"(rsi), "+r"(rdx), "+r"(r10), "+r"(r8), "+r"(r9),
                   "+r"(rbx), "+r"(r12), "+r"(r13), "+r"(r14), "+r"(r15)
                 :
                 : "rcx", "r11", "cc", "memory");
    if (c.nr == SYSCALL_FORK && rax == 0) {
        child_exit();                   // the child of a fork: gone at once
    }
    *regs_ok = rdi == c.a0 && rsi == c.a1 && rdx == c.a2 && r10 == c.a3 && r8 == k0 && r9 == k1
        && rbx == k2 && r12 == k3 && r13 == k4 && r14 == k5 && r15 == k6;
    return rax;
}

// Make call `c`; `ok(result)` says whether the result is one the model
// allows. Counts, and reports the first few surprises in full.
template <typename F>
static intptr_t make(const call& c, F ok, const char* what) {
    bool regs_ok;
    intptr_t r = raw_syscall(c, &regs_ok);
    ++S->syscalls;
    S->errors += is_error(r);
    bool good = ok(r);
    if (!good || !regs_ok) {
        ++S->unexpected;
        if (S->unexpected <= MAX_REPORTS) {
            say("fuzz: call %lu: %s %lu(%#lx, %#lx, %#lx, %#lx) = %ld%s\n",
                S->iteration, what, (unsigned long) c.nr, (unsigned long) c.a0, (unsigned long) c.a1,
                (unsigned long) c.a2, (unsigned long) c.a3, long(r),
                regs_ok ? " (unexpected result)" : " (registers changed)");
        }
    }
    return r;
}


// The model of our address space.

static bool page_allows(uintptr_t va, unsigned need) {
    if (va >= CONSOLE_PAGE && va < CONSOLE_PAGE + PAGESIZE) {
        return true;                    // the console: user-accessible, writable
    }
    if (va < USER_LO || va >= USER_HI) {
        return false;                   // kernel-only, unmapped or not user space at all
    }
    return (S->perm[(va - USER_LO) / PAGESIZE] & need) == need;
}

// What the kernel's check of a user range must say (k-usermem.cc's rule:
// every page present, user-accessible, writable if written; no wrap).
static bool range_ok(uintptr_t va, size_t n, unsigned need) {
    if (n == 0) {
        return true;
    }
    uintptr_t end = va + n;
    if (end < va || end > USER_HI) {
        return false;
    }
    for (uintptr_t page = round_down(va, PAGESIZE); page < end; page += PAGESIZE) {
        if (!page_allows(page, need)) {
            return false;
        }
    }
    return true;
}

static bool overlaps(uintptr_t va, size_t n, uintptr_t lo, uintptr_t hi) {
    return n != 0 && va < hi && va + n > lo;
}

// Must not be written by a call we make: our state, stack and string page.
static bool protected_range(uintptr_t va, size_t n) {
    return overlaps(va, n, STATE_VA, STATE_VA + STATE_PAGES * PAGESIZE)
        || overlaps(va, n, STACK_PAGE, USER_HI)
        || overlaps(va, n, STRING_PAGE, STRING_PAGE + PAGESIZE);
}

// Memory that changes only through our own system calls: what we copy out
// of it after a call is what the kernel saw during it.
static bool stable_range(uintptr_t va, size_t n) {
    uintptr_t end = va + n;
    return (va >= USER_LO && end <= S->image_end)
        || (va >= ARENA_LO && end <= ARENA_HI)
        || (va >= STRING_PAGE && end <= STRING_PAGE + PAGESIZE);
}

static bool on_console(uintptr_t va, size_t n) {
    return overlaps(va, n, CONSOLE_PAGE, CONSOLE_PAGE + PAGESIZE);
}

// A write we would rather not have land where it would: somewhere harmless
// in scratch memory instead, as long as `*n` allows.
static void redirect(uintptr_t* va, size_t* n) {
    *va = SCRATCH + below(PAGESIZE);
    *n = min(*n, size_t(SCRATCH + PAGESIZE - *va));
}


// Arguments.

static uintptr_t random_address() {
    switch (below(17)) {
    case 0:  return below(PAGESIZE);                            // the null page
    case 1:  return 0x40000 + below(0x40000);                   // kernel image and stack
    case 2:  return CONSOLE_PAGE + below(PAGESIZE);             // the console
    case 3:  return 0xA0000 + below(0x60000);                   // the I/O hole
    case 4:  return USER_LO + below(S->image_end - USER_LO);    // our read-only image
    case 5:  return ARENA_LO + below(ARENA_HI - ARENA_LO);      // the arena
    case 6:  return ARENA_LO + (below(ARENA_PAGES) + 1) * PAGESIZE - 1 - below(64);   // page ends
    case 7:  return GUARD_PAGE - 1 - below(64);                 // the string page's end
    case 8:  return STACK_PAGE + below(PAGESIZE);               // our stack
    case 9:  return USER_HI - 1 - below(64);                    // the top of user memory
    case 10: return USER_LO + below(USER_HI - USER_LO);         // anywhere in user space
    case 11: return STATE_VA + below(STATE_PAGES * PAGESIZE);   // our state
    case 12: return 0x0000800000000000UL - below(64) + below(128);   // around the canonical hole
    case 13: return 0xFFFF800000000000UL + below(0x100000);     // the upper half
    case 14: return ~0UL - below(PAGESIZE);                     // near the top: ranges wrap
    case 15: return USER_HI + below(0x40000000);                // beyond user space (boot modules)
    default: return rnd();
    }
}

static size_t random_size(uintptr_t va) {
    switch (below(14)) {
    case 0:  return 0;
    case 1:  return 1;
    case 2:
    case 3:  return 1 + below(64);
    case 4:  return 1 + below(PAGESIZE);
    case 5:  return PIPE_SIZE - 1 + below(3);
    case 6:  return PAGESIZE * (1 + below(4));
    case 7:  return -va;                                        // ends exactly at 2^64
    case 8:  return -va + 1 + below(0x100000);                  // wraps into low memory
    case 9:  return va < USER_HI ? USER_HI - va : 1 + below(16);    // to the end of user memory
    case 10: return 1UL << (32 + below(32));                    // huge
    case 11: return ~0UL - below(16);
    case 12: return 1 + below(3 * PAGESIZE);                    // misaligned, a few pages
    default: return rnd();
    }
}

// An address that is probably good (mapped and ours), for calls that
// should sometimes succeed.
static uintptr_t likely_address() {
    switch (below(4)) {
    case 0:  return ARENA_LO + below(8 * PAGESIZE);
    case 1:  return USER_LO + below(S->image_end - USER_LO);
    case 2:  return STRING_PAGE + below(PAGESIZE);
    default: return random_address();
    }
}

static size_t small_size() {
    return one_in(8) ? 0 : 1 + below(one_in(4) ? 2 * PAGESIZE : 128);
}


// The pipe, with our copy of what it holds.

static void pipe_record_write(uintptr_t src, size_t n) {
    bool known = stable_range(src, n);
    for (size_t i = 0; i != n; ++i) {
        size_t at = (S->pipe_head + S->pipe_len + i) % PIPE_SIZE;
        S->pipe_data[at] = known ? reinterpret_cast<const uint8_t*>(src)[i] : 0;
        S->pipe_known[at] = known;
    }
    S->pipe_len += n;
    S->pipe_in += n;
}

// Bytes read into `dst` must be the oldest bytes written; false if not.
static bool pipe_record_read(uintptr_t dst, size_t n) {
    bool same = true;
    bool check = !on_console(dst, n);    // other processes print there
    for (size_t i = 0; i != n; ++i) {
        size_t at = (S->pipe_head + i) % PIPE_SIZE;
        if (check && S->pipe_known[at] && reinterpret_cast<const uint8_t*>(dst)[i] != S->pipe_data[at]) {
            same = false;
        }
    }
    S->pipe_head = (S->pipe_head + n) % PIPE_SIZE;
    S->pipe_len -= n;
    S->pipe_out += n;
    return same;
}

static void pipewrite(uintptr_t buf, size_t n, const char* what) {
    bool valid = range_ok(buf, n, M_READ);
    size_t room = PIPE_SIZE - S->pipe_len;
    intptr_t expect = !valid ? E_FAULT : intptr_t(min(n, room));
    intptr_t r = make({SYSCALL_PIPEWRITE, buf, n, rnd(), rnd()},
                      [&](intptr_t r) { return r == expect; }, what);
    if (r > 0 && size_t(r) <= room) {
        pipe_record_write(buf, r);
    }
}

static void piperead(uintptr_t buf, size_t n, const char* what) {
    bool valid = range_ok(buf, n, M_READ | M_WRITE);
    intptr_t expect = !valid ? E_FAULT : intptr_t(min(n, S->pipe_len));
    intptr_t r = make({SYSCALL_PIPEREAD, buf, n, rnd(), rnd()},
                      [&](intptr_t r) { return r == expect; }, what);
    if (r > 0 && size_t(r) <= S->pipe_len && !pipe_record_read(buf, r)) {
        ++S->unexpected;
        if (S->unexpected <= MAX_REPORTS) {
            say("fuzz: call %lu: piperead(%#lx, %lu) returned bytes that were never written\n",
                S->iteration, (unsigned long) buf, (unsigned long) n);
        }
    }
}

// Helpers that keep the pipe from blocking us: a read must find a byte,
// a write must find room.
static void pipe_make_data() {
    if (S->pipe_len == 0) {
        uintptr_t src = USER_LO + below(S->image_end - USER_LO - 64);
        pipewrite(src, 1 + below(64), "pipewrite (to have data)");
    }
}

static void pipe_make_room() {
    if (S->pipe_len == PIPE_SIZE) {
        piperead(SCRATCH + below(PAGESIZE / 2), 1 + below(PAGESIZE / 2), "piperead (to make room)");
    }
}


// The calls.

static void fuzz_getpid() {
    make({SYSCALL_GETPID, rnd(), rnd(), rnd(), rnd()},
         [](intptr_t r) { return r == S->pid; }, "getpid");
}

static void fuzz_yield() {
    make({SYSCALL_YIELD, rnd(), rnd(), rnd(), rnd()},
         [](intptr_t r) { return r == 0; }, "yield");
}

static void fuzz_getsysname() {
    uintptr_t buf = one_in(3) ? likely_address() : random_address();
    bool valid = range_ok(buf, SYSNAME_MAX, M_READ | M_WRITE);
    if (valid && protected_range(buf, SYSNAME_MAX)) {
        buf = SCRATCH + below(PAGESIZE - SYSNAME_MAX + 1);
    }
    intptr_t r = make({SYSCALL_GETSYSNAME, buf, rnd(), rnd(), rnd()},
                      [&](intptr_t r) { return r == (valid ? 0 : E_FAULT); }, "getsysname");
    if (r == 0 && !on_console(buf, SYSNAME_MAX)
        && strcmp(reinterpret_cast<const char*>(buf), S->sysname) != 0) {
        ++S->unexpected;
        if (S->unexpected <= MAX_REPORTS) {
            say("fuzz: call %lu: getsysname(%#lx) wrote something else\n", S->iteration, (unsigned long) buf);
        }
    }
}

static bool page_alloc_accepts(uintptr_t addr) {
    return addr % PAGESIZE == 0 && addr >= USER_LO && addr < USER_HI;
}

static void fuzz_page_alloc() {
    uintptr_t addr;
    switch (below(4)) {
    case 0:
    case 1:  addr = ARENA_LO + below(ARENA_PAGES) * PAGESIZE; break;    // valid
    case 2:  addr = ARENA_LO + below(ARENA_HI - ARENA_LO); break;       // mostly misaligned
    default: addr = random_address(); break;
    }
    if (page_alloc_accepts(addr) && (addr < ARENA_LO || addr >= ARENA_HI)) {
        // Valid, but it would replace a page of ours (or map memory we do
        // not model): misalign it, which must fail.
        addr += 1 + below(PAGESIZE - 1);
    }
    bool accepted = page_alloc_accepts(addr);
    intptr_t r = make({SYSCALL_PAGE_ALLOC, addr, rnd(), rnd(), rnd()},
                      [&](intptr_t r) { return accepted ? r == 0 || r == E_NOMEM : r == E_INVAL; },
                      "page_alloc");
    if (r == 0 && accepted) {
        ++S->allocs;
        S->perm[(addr - USER_LO) / PAGESIZE] = M_READ | M_WRITE;
        auto words = reinterpret_cast<const uint64_t*>(addr);
        for (size_t i = 0; i != PAGESIZE / 8; ++i) {
            if (words[i] != 0) {
                ++S->unexpected;
                if (S->unexpected <= MAX_REPORTS) {
                    say("fuzz: call %lu: page_alloc(%#lx) mapped a page that is not zeroed\n",
                        S->iteration, (unsigned long) addr);
                }
                break;
            }
        }
    } else if (r == E_NOMEM) {
        ++S->nomem;
    }
}

// What the kernel must make of the string at `src` (k-usermem.cc): its
// length, E_FAULT (it reaches memory we may not read), or E_RANGE (no NUL
// in PROGRAM_NAME_MAX bytes). `name` gets the string.
#define PROGRAM_NAME_MAX 32
static intptr_t model_string(uintptr_t src, char* name, bool* console) {
    *console = false;
    for (size_t len = 0; len != PROGRAM_NAME_MAX; ++len) {
        uintptr_t va = src + len;
        if (va < src || !page_allows(va, M_READ)) {
            return E_FAULT;
        }
        *console = *console || on_console(va, 1);
        char c = *reinterpret_cast<const char*>(va);
        name[len] = c;
        if (c == '\0') {
            return len;
        }
    }
    return E_RANGE;
}

// May `name` be passed to spawn? Only names that cannot start anything but
// hello: ours, and anything that is not a plain lower-case word.
static bool spawn_safe(const char* name) {
    if (strcmp(name, "hello") == 0) {
        return true;
    }
    for (const char* bad : bad_names) {
        if (strcmp(name, bad) == 0) {
            return true;
        }
    }
    for (const char* s = name; *s; ++s) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_')) {
            return true;
        }
    }
    return false;
}

static void fuzz_spawn() {
    uintptr_t src;
    switch (below(8)) {
    case 0:
        src = one_in(50) ? uintptr_t("hello") : uintptr_t(bad_names[below(arraysize(bad_names))]);
        break;
    case 1: {
        // A name of random bytes in scratch memory, perhaps without a NUL.
        char* s = reinterpret_cast<char*>(SCRATCH + PAGESIZE - 64);
        for (int i = 0; i != 48; ++i) {
            s[i] = char(1 + below(255));
        }
        s[below(48)] = one_in(4) ? 'x' : '\0';
        src = uintptr_t(s);
        break;
    }
    case 2:
        src = GUARD_PAGE - 1 - below(48);               // runs into the unmapped guard page
        break;
    case 3:
        src = STRING_PAGE + below(PAGESIZE - 64);       // no NUL within reach
        break;
    default:
        src = random_address();
        break;
    }
    if (overlaps(src, PROGRAM_NAME_MAX, STATE_VA, STATE_VA + STATE_PAGES * PAGESIZE)
        || overlaps(src, PROGRAM_NAME_MAX, STACK_PAGE, USER_HI)) {
        src = GUARD_PAGE - 8;           // these change under us (the call itself uses the stack)
    }
    char name[PROGRAM_NAME_MAX];
    bool console;
    intptr_t len = model_string(src, name, &console);
    if (len >= 0 && !spawn_safe(name)) {
        src = GUARD_PAGE - 8;                           // not that one: a string that must fault
        len = model_string(src, name, &console);
    }
    bool hello = len >= 0 && strcmp(name, "hello") == 0;
    intptr_t r = make({SYSCALL_SPAWN, src, rnd(), rnd(), rnd()}, [&](intptr_t r) {
                          if (console) {            // others print there: the string may have changed
                              return r == E_INVAL || r == E_RANGE || r == E_FAULT;
                          } else if (hello) {
                              return r > 0 || r == E_AGAIN || r == E_NOMEM;
                          }
                          return r == (len < 0 ? len : E_INVAL);
                      }, "spawn");
    if (hello) {
        (r > 0 ? S->spawns : S->spawns_refused) += 1;
    }
}

// Usually one fork; sometimes a burst, before any child could exit, until
// memory or the process table runs out.
static void fuzz_fork() {
    int n = one_in(4) ? 2 + below(7) : 1;
    for (int i = 0; i != n; ++i) {
        intptr_t r = make({SYSCALL_FORK, rnd(), rnd(), rnd(), rnd()},
                          [](intptr_t r) { return r > 0 || r == E_AGAIN || r == E_NOMEM; }, "fork");
        (r > 0 ? S->forks : S->forks_refused) += 1;
    }
}

static void fuzz_pipewrite() {
    uintptr_t buf = one_in(2) ? likely_address() : random_address();
    size_t n = one_in(2) ? small_size() : random_size(buf);
    if (range_ok(buf, n, M_READ) && n != 0) {
        pipe_make_room();
    }
    pipewrite(buf, n, "pipewrite");
}

static void fuzz_piperead() {
    uintptr_t buf = one_in(2) ? likely_address() : random_address();
    size_t n = one_in(2) ? small_size() : random_size(buf);
    if (range_ok(buf, n, M_READ | M_WRITE) && protected_range(buf, n)) {
        redirect(&buf, &n);
    }
    if (range_ok(buf, n, M_READ | M_WRITE) && n != 0) {
        pipe_make_data();
    }
    piperead(buf, n, "piperead");
}

// A number that is no system call (never 1..10: panic and exit are in there).
static uint64_t unknown_number() {
    uint64_t nr;
    do {
        switch (below(6)) {
        case 0:  nr = 0; break;
        case 1:  nr = 11 + below(990); break;                           // 11..1000
        case 2:  nr = -(1 + below(1000)); break;                        // negative
        case 3:  nr = (1 + below(10)) | (1 + below(0xFFFF)) << 32; break;  // a real number, high bits set
        case 4:  nr = 1UL << below(64); break;
        default: nr = rnd(); break;
        }
    } while (nr >= 1 && nr <= 10);
    return nr;
}

static void fuzz_unknown() {
    uint64_t nr = unknown_number();
    uint64_t a0 = one_in(2) ? random_address() : rnd();
    make({nr, a0, random_size(a0), rnd(), rnd()},
         [](intptr_t r) { return r == E_NOSYS; }, "unknown system call");
}

static void fuzz_one() {
    unsigned pick = below(1000);
    if (pick < 40) {
        fuzz_getpid();
    } else if (pick < 60) {
        fuzz_yield();
    } else if (pick < 170) {
        fuzz_page_alloc();
    } else if (pick < 320) {
        fuzz_getsysname();
    } else if (pick < 450) {
        fuzz_spawn();
    } else if (pick < 452) {
        fuzz_fork();
    } else if (pick < 630) {
        fuzz_pipewrite();
    } else if (pick < 810) {
        fuzz_piperead();
    } else {
        fuzz_unknown();
    }
}


// Set up: state pages, scratch and string pages, the model.

void process_main() {
    uintptr_t image_end = round_up(uintptr_t(_end), PAGESIZE);
    pid_t pid = sys_getpid();
    unsigned long early = 1;
    if (image_end > ARENA_LO) {
        say("fuzz %d: my image reaches %p, into the arena\n", pid, (void*) image_end);
        sys_exit(2);
    }
    for (int i = 0; i != STATE_PAGES; ++i) {
        ++early;
        if (sys_page_alloc(reinterpret_cast<void*>(STATE_VA + i * PAGESIZE)) != 0) {
            say("fuzz %d: cannot allocate my state\n", pid);
            sys_exit(2);
        }
    }
    memset(S, 0, sizeof(*S));
    S->syscalls = early;
    S->pid = pid;
    S->image_end = image_end;
    uint64_t seed = patched(fuzz_seed);
    S->rng = seed ? seed : 1;
    for (uintptr_t va = USER_LO; va != image_end; va += PAGESIZE) {
        S->perm[(va - USER_LO) / PAGESIZE] = M_READ;
    }
    S->perm[(STACK_PAGE - USER_LO) / PAGESIZE] = M_READ | M_WRITE;
    for (int i = 0; i != STATE_PAGES; ++i) {
        S->perm[(STATE_VA - USER_LO) / PAGESIZE + i] = M_READ | M_WRITE;
    }
    const uintptr_t pages[] = {STRING_PAGE, SCRATCH, SCRATCH + PAGESIZE};
    for (uintptr_t va : pages) {
        ++S->syscalls;
        if (sys_page_alloc(reinterpret_cast<void*>(va)) != 0) {
            say("fuzz %d: cannot allocate a page\n", pid);
            sys_exit(2);
        }
        S->perm[(va - USER_LO) / PAGESIZE] = M_READ | M_WRITE;
    }
    for (size_t i = 0; i != PAGESIZE; ++i) {
        reinterpret_cast<char*>(STRING_PAGE)[i] = char('A' + i % 26);
    }
    ++S->syscalls;
    if (sys_getsysname(S->sysname) != 0) {
        say("fuzz %d: getsysname failed\n", pid);
        sys_exit(2);
    }

    unsigned long calls = patched(fuzz_calls);
    say("fuzz %d: %lu system calls, seed %#lx\n", pid, calls, (unsigned long) seed);
    for (S->iteration = 1; S->iteration <= calls; ++S->iteration) {
        fuzz_one();
        if (S->iteration % REPORT_EVERY == 0) {
            say("fuzz %d: %lu calls, %lu errors, %lu unexpected\n",
                pid, S->iteration, S->errors, S->unexpected);
        }
    }
    say("fuzz %d: forks %lu (refused %lu), hellos %lu (refused %lu), pages %lu (E_NOMEM %lu), "
        "pipe %lu bytes in, %lu out\n", pid, S->forks, S->forks_refused, S->spawns, S->spawns_refused,
        S->allocs, S->nomem, S->pipe_in, S->pipe_out);
    say("fuzz %d: %lu system calls in all, helpers included\n", pid, S->syscalls);
    say("fuzz: %lu system calls, seed %#lx, %lu errors, %lu unexpected\n",
        calls, (unsigned long) seed, S->errors, S->unexpected);
    sys_exit(S->unexpected == 0 ? 0 : 1);
}
