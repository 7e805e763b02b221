#ifndef WEENSYOS_LIB_HH
#define WEENSYOS_LIB_HH
#include "types.h"
#include "syscalls.h"

// Code shared by the kernel and user programs: string functions, the
// printf engine, and the CGA console (which user processes write directly).

extern "C" {
void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
void* memset(void* s, int c, size_t n);
int memcmp(const void* a, const void* b, size_t n);
void* memchr(const void* s, int c, size_t n);
size_t strlen(const char* s);
size_t strnlen(const char* s, size_t maxlen);
char* strcpy(char* dst, const char* src);
int strcmp(const char* a, const char* b);
int strncmp(const char* a, const char* b, size_t n);
char* strchr(const char* s, int c);
}

// Copy `src` into `dst` of capacity `size` (size > 0), always NUL-terminating.
// Returns strlen(src).
size_t strlcpy(char* dst, const char* src, size_t size);

int snprintf(char* buf, size_t size, const char* format, ...)
    __attribute__((format(printf, 3, 4)));
int vsnprintf(char* buf, size_t size, const char* format, va_list val)
    __attribute__((format(printf, 3, 0)));


// Rounding; `m` must be a power of two.
template <typename T>
inline constexpr T round_down(T x, uint64_t m) {
    return T(x - (x & (m - 1)));
}
template <typename T>
inline constexpr T round_up(T x, uint64_t m) {
    return round_down(T(x + m - 1), m);
}
template <typename T>
inline constexpr T min(T a, T b) {
    return a < b ? a : b;
}
template <typename T>
inline constexpr T max(T a, T b) {
    return b < a ? a : b;
}

// A system-call result is an error iff it is a small negative number.
inline bool is_error(uintptr_t r) {
    return r >= uintptr_t(-100);
}


// The printf engine. A `printer` receives characters one at a time;
// printer_vprintf does the formatting for every output (console, log,
// string buffers). Supported: %d %i %u %x %X %o %p %s %c %%, flags
// '-' '0' '+' ' ' '#', width and precision (also '*'), and the length
// modifiers hh h l ll z t j.
struct printer {
    void (*putc)(printer* p, unsigned char c, int color);
};
void printer_vprintf(printer* p, int color, const char* format, va_list val);


// CGA console: 80x25 cells of `character | attribute << 8` at 0xB8000.
// `cursorpos` (at 0xB8FFC, on the console page) is shared by the kernel and
// every process. Printing at the cursor stays inside the text window, rows
// `console_window_top` (at 0xB8FF8) to the bottom, and scrolls only those
// rows: the memory viewer owns the rows above. Both variables live on the
// user-writable console page, so readers clamp them. The symbols come from
// the linker scripts.
#define CONSOLE_COLUMNS     80
#define CONSOLE_ROWS        25
#define CONSOLE_CELLS       (CONSOLE_COLUMNS * CONSOLE_ROWS)
#define CPOS(row, col)      ((row) * CONSOLE_COLUMNS + (col))
extern "C" volatile uint16_t console[CONSOLE_CELLS];
extern "C" volatile int cursorpos;
extern "C" volatile int console_window_top;

// Colors are a CGA attribute shifted left 8.
#define COLOR_NORMAL        0x0700  // light gray on black
#define COLOR_BRIGHT        0x0F00  // white
#define COLOR_ERROR         0x0C00  // light red
#define COLOR_PANIC         0x4F00  // white on red

// Print at cell `cpos` (0 <= cpos < CONSOLE_CELLS, else 0) and return the
// cell after the output. Output past the last row scrolls the text window.
int console_printf(int cpos, int color, const char* format, ...)
    __attribute__((format(printf, 3, 4)));
int console_vprintf(int cpos, int color, const char* format, va_list val)
    __attribute__((format(printf, 3, 0)));
// Print at `cursorpos` (moved into the text window first) and advance it.
void console_printf(int color, const char* format, ...)
    __attribute__((format(printf, 2, 3)));
void console_vprintf(int color, const char* format, va_list val)
    __attribute__((format(printf, 2, 0)));
// Blank the screen and put the cursor at the start of the text window.
void console_clear();
// First row of the text window, clamped to [0, CONSOLE_ROWS).
int console_window_row();


// Assertions. The kernel and the user library each define panic and
// assert_fail: the kernel prints and stops, a process asks the kernel.
// C linkage keeps the symbols plain for debuggers and the harness.
extern "C" {
[[noreturn]] void panic(const char* format, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void assert_fail(const char* file, int line, const char* msg);
}

#define assert(x) \
    do { if (!(x)) assert_fail(__FILE__, __LINE__, #x); } while (0)

#endif
