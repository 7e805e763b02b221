#include "u-lib.hh"

// User-level library: printing and failure reporting.

void vprintf(const char* format, va_list val) {
    console_vprintf(COLOR_NORMAL, format, val);
}

void printf(const char* format, ...) {
    va_list val;
    va_start(val, format);
    vprintf(format, val);
    va_end(val);
}

// A process cannot print to the log itself: format the message and let the
// kernel report it (and stop the system).
void panic(const char* format, ...) {
    char buf[160];
    va_list val;
    va_start(val, format);
    vsnprintf(buf, sizeof(buf), format, val);
    va_end(val);
    sys_panic(buf);
}

void assert_fail(const char* file, int line, const char* msg) {
    panic("%s:%d: assertion '%s' failed", file, line, msg);
}

const char* error_name(intptr_t r) {
    switch (r) {
    case E_AGAIN: return "E_AGAIN";
    case E_NOMEM: return "E_NOMEM";
    case E_FAULT: return "E_FAULT";
    case E_INVAL: return "E_INVAL";
    case E_PIPE: return "E_PIPE";
    case E_RANGE: return "E_RANGE";
    case E_NOSYS: return "E_NOSYS";
    default: return is_error(r) ? "error" : "ok";
    }
}

// Eight marks a page, one every 512 bytes: enough to catch a shared page
// without making every allocation cost a full page of writes.
static uint64_t page_mark(pid_t pid, uintptr_t va, int k) {
    return uint64_t(pid) << 48 | (va + k * 512) | 0x5A;
}

void page_stamp(pid_t pid, uintptr_t va) {
    auto words = reinterpret_cast<volatile uint64_t*>(va);
    for (int k = 0; k != 8; ++k) {
        words[k * 64] = page_mark(pid, va, k);
    }
}

bool page_intact(pid_t pid, uintptr_t va) {
    auto words = reinterpret_cast<volatile uint64_t*>(va);
    for (int k = 0; k != 8; ++k) {
        if (words[k * 64] != page_mark(pid, va, k)) {
            return false;
        }
    }
    return true;
}
