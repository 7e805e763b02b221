#ifndef WEENSYOS_TYPES_H
#define WEENSYOS_TYPES_H

// Fixed-width types from the compiler's own predefined macros: we build
// with -nostdinc, so no host C library header can sneak in.

typedef __INT8_TYPE__ int8_t;
typedef __UINT8_TYPE__ uint8_t;
typedef __INT16_TYPE__ int16_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __INT32_TYPE__ int32_t;
typedef __UINT32_TYPE__ uint32_t;
typedef __INT64_TYPE__ int64_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __INTPTR_TYPE__ intptr_t;
typedef __UINTPTR_TYPE__ uintptr_t;
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef __PTRDIFF_TYPE__ ssize_t;
typedef int pid_t;

typedef __builtin_va_list va_list;
#define va_start(val, last) __builtin_va_start(val, last)
#define va_arg(val, type) __builtin_va_arg(val, type)
#define va_end(val) __builtin_va_end(val)
#define va_copy(dst, src) __builtin_va_copy(dst, src)

#define offsetof(type, member) __builtin_offsetof(type, member)
#define arraysize(a) (sizeof(a) / sizeof((a)[0]))

#define INT_MAX 0x7FFFFFFF

#endif
