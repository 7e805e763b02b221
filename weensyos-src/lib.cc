#include "lib.hh"

// Shared by the kernel and user programs; must not touch anything but
// memory (no port I/O, no system calls).


// Memory and string functions. The compiler may emit calls to the mem*
// functions on its own, so they must exist. The ABI guarantees DF = 0 on
// entry.
//
// Tuned for emulation, where time goes by executed translation blocks:
// every iteration of a `rep` instruction is a block of its own, while a
// loop body storing eight quadwords is one block for 64 bytes. Whole
// pages and page tables (aligned, multiples of 64 bytes) take that path.
// (-fno-tree-loop-distribute-patterns keeps GCC from turning these loops
// back into calls to memset and memcpy.)

static inline bool bulk_aligned(uintptr_t a, uintptr_t b, size_t n) {
    return ((a | b) & 7) == 0 && n % 64 == 0;
}

extern "C" void* memcpy(void* dst, const void* src, size_t n) {
    if (bulk_aligned(uintptr_t(dst), uintptr_t(src), n)) {
        auto d = static_cast<uint64_t*>(dst);
        auto s = static_cast<const uint64_t*>(src);
        for (; n != 0; n -= 64, d += 8, s += 8) {
            d[0] = s[0], d[1] = s[1], d[2] = s[2], d[3] = s[3];
            d[4] = s[4], d[5] = s[5], d[6] = s[6], d[7] = s[7];
        }
    } else {
        void* d = dst;
        asm volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    }
    return dst;
}

extern "C" void* memmove(void* dst, const void* src, size_t n) {
    uintptr_t d = uintptr_t(dst), s = uintptr_t(src);
    if (d <= s || d >= s + n) {
        return memcpy(dst, src, n);
    }
    // Overlap with dst above src: copy backwards, from the last byte.
    if (n != 0) {
        d += n - 1;
        s += n - 1;
        asm volatile("std; rep movsb; cld" : "+D"(d), "+S"(s), "+c"(n) : : "memory", "cc");
    }
    return dst;
}

extern "C" void* memset(void* s, int c, size_t n) {
    if (bulk_aligned(uintptr_t(s), 0, n)) {
        uint64_t v = uint8_t(c) * 0x0101010101010101UL;
        for (auto d = static_cast<uint64_t*>(s); n != 0; n -= 64, d += 8) {
            d[0] = v, d[1] = v, d[2] = v, d[3] = v, d[4] = v, d[5] = v, d[6] = v, d[7] = v;
        }
    } else {
        void* d = s;
        asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    }
    return s;
}

extern "C" int memcmp(const void* a, const void* b, size_t n) {
    auto x = static_cast<const unsigned char*>(a);
    auto y = static_cast<const unsigned char*>(b);
    for (; n != 0; ++x, ++y, --n) {
        if (*x != *y) {
            return *x < *y ? -1 : 1;
        }
    }
    return 0;
}

extern "C" void* memchr(const void* s, int c, size_t n) {
    auto p = static_cast<const unsigned char*>(s);
    for (; n != 0; ++p, --n) {
        if (*p == (unsigned char) c) {
            return const_cast<unsigned char*>(p);
        }
    }
    return nullptr;
}

extern "C" size_t strlen(const char* s) {
    size_t n = 0;
    while (s[n] != '\0') {
        ++n;
    }
    return n;
}

extern "C" size_t strnlen(const char* s, size_t maxlen) {
    size_t n = 0;
    while (n < maxlen && s[n] != '\0') {
        ++n;
    }
    return n;
}

extern "C" char* strcpy(char* dst, const char* src) {
    char* d = dst;
    while ((*d++ = *src++) != '\0') {
    }
    return dst;
}

extern "C" int strcmp(const char* a, const char* b) {
    while (*a != '\0' && *a == *b) {
        ++a, ++b;
    }
    return (unsigned char) *a - (unsigned char) *b;
}

extern "C" int strncmp(const char* a, const char* b, size_t n) {
    for (; n != 0; ++a, ++b, --n) {
        if (*a != *b || *a == '\0') {
            return (unsigned char) *a - (unsigned char) *b;
        }
    }
    return 0;
}

extern "C" char* strchr(const char* s, int c) {
    for (; *s != char(c); ++s) {
        if (*s == '\0') {
            return nullptr;
        }
    }
    return const_cast<char*>(s);
}

size_t strlcpy(char* dst, const char* src, size_t size) {
    size_t len = strlen(src);
    if (size != 0) {
        size_t n = min(len, size - 1);
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return len;
}


// The printf engine

namespace {

enum {
    FLAG_LEFT = 1,      // '-': pad on the right
    FLAG_ZERO = 2,      // '0': pad numbers with zeros
    FLAG_PLUS = 4,      // '+': sign on positive numbers
    FLAG_SPACE = 8,     // ' ': space on positive numbers
    FLAG_ALT = 16       // '#': 0x / 0 prefix
};

// Which va_arg type a conversion reads.
enum length_modifier { LEN_CHAR, LEN_SHORT, LEN_INT, LEN_LONG };

// Write the digits of `v` backwards ending just before `end`; return the
// first digit.
char* format_digits(char* end, uint64_t v, unsigned base, bool upper) {
    const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        *--end = digits[v % base];
        v /= base;
    } while (v != 0);
    return end;
}

void put_repeated(printer* p, unsigned char c, int n, int color) {
    for (; n > 0; --n) {
        p->putc(p, c, color);
    }
}

void put_string(printer* p, const char* s, size_t n, int color) {
    for (size_t i = 0; i != n; ++i) {
        p->putc(p, s[i], color);
    }
}

}

void printer_vprintf(printer* p, int color, const char* format, va_list val) {
    for (; *format != '\0'; ++format) {
        if (*format != '%') {
            p->putc(p, *format, color);
            continue;
        }
        const char* spec_start = format;
        ++format;

        int flags = 0;
        for (;; ++format) {
            if (*format == '-') {
                flags |= FLAG_LEFT;
            } else if (*format == '0') {
                flags |= FLAG_ZERO;
            } else if (*format == '+') {
                flags |= FLAG_PLUS;
            } else if (*format == ' ') {
                flags |= FLAG_SPACE;
            } else if (*format == '#') {
                flags |= FLAG_ALT;
            } else {
                break;
            }
        }

        int width = 0;
        if (*format == '*') {
            width = va_arg(val, int);
            if (width < 0) {
                flags |= FLAG_LEFT;
                width = -width;
            }
            ++format;
        } else {
            for (; *format >= '0' && *format <= '9'; ++format) {
                width = min(width * 10 + (*format - '0'), 10000);
            }
        }

        int precision = -1;
        if (*format == '.') {
            ++format;
            precision = 0;
            if (*format == '*') {
                precision = max(va_arg(val, int), -1);
                ++format;
            } else {
                for (; *format >= '0' && *format <= '9'; ++format) {
                    precision = min(precision * 10 + (*format - '0'), 10000);
                }
            }
        }

        length_modifier length = LEN_INT;
        if (format[0] == 'h' && format[1] == 'h') {
            length = LEN_CHAR;
            format += 2;
        } else if (format[0] == 'h') {
            length = LEN_SHORT;
            ++format;
        } else if (format[0] == 'l' && format[1] == 'l') {
            length = LEN_LONG;
            format += 2;
        } else if (format[0] == 'l' || format[0] == 'z'
                   || format[0] == 't' || format[0] == 'j') {
            length = LEN_LONG;      // all 64 bits on x86-64
            ++format;
        }

        char numbuf[24];            // 22 octal digits for 64 bits, and slack
        char* numend = numbuf + sizeof(numbuf);
        const char* data;
        size_t len;
        const char* prefix = "";
        bool numeric = true;
        uint64_t num = 0;
        unsigned base = 10;
        bool upper = false;
        char ch;

        switch (*format) {
        case 'd':
        case 'i': {
            int64_t v;
            if (length == LEN_LONG) {
                v = va_arg(val, long);
            } else {
                v = va_arg(val, int);
                if (length == LEN_SHORT) {
                    v = short(v);
                } else if (length == LEN_CHAR) {
                    v = (signed char) v;
                }
            }
            if (v < 0) {
                prefix = "-";
                num = -uint64_t(v);
            } else {
                num = v;
                prefix = flags & FLAG_PLUS ? "+" : flags & FLAG_SPACE ? " " : "";
            }
            break;
        }
        case 'u':
        case 'x':
        case 'X':
        case 'o':
            if (length == LEN_LONG) {
                num = va_arg(val, unsigned long);
            } else {
                num = va_arg(val, unsigned);
                if (length == LEN_SHORT) {
                    num = (unsigned short) num;
                } else if (length == LEN_CHAR) {
                    num = (unsigned char) num;
                }
            }
            if (*format == 'x' || *format == 'X') {
                base = 16;
                upper = *format == 'X';
                if ((flags & FLAG_ALT) && num != 0) {
                    prefix = upper ? "0X" : "0x";
                }
            } else if (*format == 'o') {
                base = 8;
                if (flags & FLAG_ALT) {
                    prefix = "0";
                }
            }
            break;
        case 'p':
            num = uintptr_t(va_arg(val, void*));
            base = 16;
            prefix = "0x";
            break;
        case 's':
            numeric = false;
            data = va_arg(val, const char*);
            if (!data) {
                data = "(null)";
            }
            len = precision >= 0 ? strnlen(data, precision) : strlen(data);
            break;
        case 'c':
            numeric = false;
            ch = char(va_arg(val, int));
            data = &ch;
            len = 1;
            break;
        case '%':
            p->putc(p, '%', color);
            continue;
        default:
            // Unknown conversion (or the format ended): print it verbatim.
            if (*format == '\0') {
                --format;
            }
            put_string(p, spec_start, format + 1 - spec_start, color);
            continue;
        }

        int zeros = 0;
        if (numeric) {
            data = format_digits(numend, num, base, upper);
            len = numend - data;
            if (precision == 0 && num == 0) {
                len = 0;            // C: zero with precision 0 prints nothing
            }
            if (precision > int(len)) {
                zeros = precision - len;
            }
        }
        int prefixlen = strlen(prefix);
        int pad = max(width - prefixlen - zeros - int(len), 0);

        if (numeric && (flags & FLAG_ZERO) && !(flags & FLAG_LEFT)
            && precision < 0) {
            zeros += pad;           // zero padding goes after the sign
            pad = 0;
        }
        if (!(flags & FLAG_LEFT)) {
            put_repeated(p, ' ', pad, color);
        }
        put_string(p, prefix, prefixlen, color);
        put_repeated(p, '0', zeros, color);
        put_string(p, data, len, color);
        if (flags & FLAG_LEFT) {
            put_repeated(p, ' ', pad, color);
        }
    }
}


// Formatting into a buffer

namespace {
struct string_printer : printer {
    char* buf;
    size_t size;        // capacity including the NUL
    size_t len;         // characters produced so far (may exceed size)
};

void string_putc(printer* p, unsigned char c, int) {
    auto sp = static_cast<string_printer*>(p);
    if (sp->len + 1 < sp->size) {
        sp->buf[sp->len] = c;
    }
    ++sp->len;
}
}

int vsnprintf(char* buf, size_t size, const char* format, va_list val) {
    string_printer sp;
    sp.putc = string_putc;
    sp.buf = buf;
    sp.size = size;
    sp.len = 0;
    printer_vprintf(&sp, 0, format, val);
    if (size != 0) {
        buf[min(sp.len, size - 1)] = '\0';
    }
    return int(min(sp.len, size_t(INT_MAX)));
}

int snprintf(char* buf, size_t size, const char* format, ...) {
    va_list val;
    va_start(val, format);
    int n = vsnprintf(buf, size, format, val);
    va_end(val);
    return n;
}


// The CGA console

namespace {
struct console_printer : printer {
    int cpos;
};

// Keep `cpos` on the screen by scrolling the text window up a row at a
// time. Scrolling is lazy: a cursor just past the last cell is allowed
// until something is printed there, so a final newline does not waste a row.
void console_scroll_if_needed(console_printer* cp) {
    int first = CPOS(console_window_row(), 0);
    while (cp->cpos >= CONSOLE_CELLS) {
        for (int i = first; i != CONSOLE_CELLS - CONSOLE_COLUMNS; ++i) {
            console[i] = console[i + CONSOLE_COLUMNS];
        }
        for (int i = CONSOLE_CELLS - CONSOLE_COLUMNS; i != CONSOLE_CELLS; ++i) {
            console[i] = ' ' | COLOR_NORMAL;
        }
        cp->cpos -= CONSOLE_COLUMNS;
    }
}

void console_putc(printer* p, unsigned char c, int color) {
    auto cp = static_cast<console_printer*>(p);
    console_scroll_if_needed(cp);
    if (c == '\n') {
        cp->cpos += CONSOLE_COLUMNS - cp->cpos % CONSOLE_COLUMNS;
    } else if (c == '\r') {
        cp->cpos -= cp->cpos % CONSOLE_COLUMNS;
    } else if (c == '\t') {
        do {
            console[cp->cpos++] = ' ' | color;
        } while (cp->cpos % 8 != 0);
    } else {
        console[cp->cpos++] = c | color;
    }
}
}

int console_vprintf(int cpos, int color, const char* format, va_list val) {
    console_printer cp;
    cp.putc = console_putc;
    cp.cpos = cpos < 0 || cpos > CONSOLE_CELLS ? 0 : cpos;
    printer_vprintf(&cp, color, format, val);
    return cp.cpos;
}

int console_printf(int cpos, int color, const char* format, ...) {
    va_list val;
    va_start(val, format);
    cpos = console_vprintf(cpos, color, format, val);
    va_end(val);
    return cpos;
}

int console_window_row() {
    int row = console_window_top;
    return row >= 0 && row < CONSOLE_ROWS ? row : 0;
}

void console_vprintf(int color, const char* format, va_list val) {
    int cpos = cursorpos;
    if (cpos < CPOS(console_window_row(), 0) || cpos > CONSOLE_CELLS) {
        cpos = CPOS(console_window_row(), 0);
    }
    cursorpos = console_vprintf(cpos, color, format, val);
}

void console_printf(int color, const char* format, ...) {
    va_list val;
    va_start(val, format);
    console_vprintf(color, format, val);
    va_end(val);
}

void console_clear() {
    for (int i = 0; i != CONSOLE_CELLS; ++i) {
        console[i] = ' ' | COLOR_NORMAL;
    }
    cursorpos = CPOS(console_window_row(), 0);
}
