#include "u-pipemsg.hh"

// Write PIPE_MESSAGES messages into the pipe, each with as few system calls
// as the pipe allows (one, unless the pipe fills part way through a
// message), then exit. The reader gets the rest after we are gone.

void process_main() {
    pid_t pid = sys_getpid();
    int nwrites = 0;
    for (int i = 0; i != PIPE_MESSAGES; ++i) {
        char msg[PIPE_MESSAGE_MAX];
        size_t len = pipe_message(msg, i);
        for (size_t done = 0; done != len; ) {
            ssize_t r = sys_pipewrite(msg + done, len - done);
            ++nwrites;
            if (r <= 0) {
                printf("pipewriter %d: pipewrite returned %ld (%s)\n", pid, long(r), error_name(r));
                sys_exit(1);
            }
            done += r;
        }
    }
    printf("pipewriter %d: sent %d messages in %d writes\n", pid, PIPE_MESSAGES, nwrites);
    sys_exit(0);
}
