#include "u-pipemsg.hh"

// Read the pipe until end of file, printing each message and checking it
// against what pipewriter must have sent. Reads take whatever is there, so
// a read may end in the middle of a message: the rest of it waits at the
// start of the buffer for the next read. Exits 0 if exactly PIPE_MESSAGES
// messages arrived, intact and in order.

static char inbuf[2 * PIPE_SIZE];

void process_main() {
    pid_t pid = sys_getpid();
    size_t have = 0;                    // unread bytes at the start of inbuf
    int nmessages = 0, nbad = 0, nreads = 0;
    while (true) {
        ssize_t r = sys_piperead(inbuf + have, sizeof(inbuf) - have);
        ++nreads;
        if (r < 0) {
            printf("pipereader %d: piperead returned %ld (%s)\n", pid, long(r), error_name(r));
            sys_exit(1);
        } else if (r == 0) {
            break;                      // end of file: no writer left
        }
        have += r;

        // Every complete line is one message.
        char* line = inbuf;
        while (char* nl = static_cast<char*>(memchr(line, '\n', inbuf + have - line))) {
            size_t len = nl + 1 - line;
            char expected[PIPE_MESSAGE_MAX];
            bool intact = pipe_message(expected, nmessages) == len
                && memcmp(expected, line, len) == 0;
            nbad += !intact;
            ++nmessages;
            printf("%s%.*s", intact ? "" : "BAD: ", int(len), line);
            line = nl + 1;
        }
        have = inbuf + have - line;
        memmove(inbuf, line, have);
        if (have == sizeof(inbuf)) {
            printf("pipereader %d: line too long\n", pid);
            sys_exit(1);
        }
    }
    printf("pipereader %d: %d messages in %d reads, %d intact%s\n", pid, nmessages, nreads,
           nmessages - nbad, have ? ", trailing bytes" : "");
    sys_exit(nmessages == PIPE_MESSAGES && nbad == 0 && have == 0 ? 0 : 1);
}
