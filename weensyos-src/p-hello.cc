#include "u-lib.hh"

// The first program: greet, name the system, give way twice, and exit.

void process_main() {
    pid_t pid = sys_getpid();
    printf("Hello from WeensyOS process %d!\n", pid);

    char sysname[SYSNAME_MAX];
    if (sys_getsysname(sysname) == 0) {
        printf("system: %s\n", sysname);
    }

    sys_yield();
    sys_yield();
    sys_exit(0);
}
