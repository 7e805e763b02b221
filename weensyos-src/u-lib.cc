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
