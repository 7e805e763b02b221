#ifndef WEENSYOS_U_PIPEMSG_HH
#define WEENSYOS_U_PIPEMSG_HH
#include "u-lib.hh"

// The messages pipewriter sends and pipereader checks, defined once for
// both: PIPE_MESSAGES lines of varying length (13-77 bytes with the
// newline), each a pure function of its number, so the reader can tell a
// lost, repeated or damaged message from an intact one.

#define PIPE_MESSAGES       200
#define PIPE_MESSAGE_MAX    80          // longest message + NUL

// Message `i` into `buf` (PIPE_MESSAGE_MAX bytes), newline-terminated;
// returns its length.
inline size_t pipe_message(char* buf, int i) {
    static const char* const words[] = {
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
        "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa"
    };
    unsigned seed = unsigned(i) * 2654435761U + 17;
    size_t n = snprintf(buf, PIPE_MESSAGE_MAX, "message %03d:", i);
    for (unsigned w = rand_next(&seed) % 8; w != 0; --w) {
        n += snprintf(buf + n, PIPE_MESSAGE_MAX - n, " %s", words[rand_next(&seed) % 16]);
    }
    n += snprintf(buf + n, PIPE_MESSAGE_MAX - n, "\n");
    return n;
}

#endif
