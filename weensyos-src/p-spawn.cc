#include "u-lib.hh"

// Start two copies of alice with sys_spawn: two separate processes from one
// program image, each with memory of its own. Then show that bad requests
// fail cleanly, and exit; the alices carry on. Exits 0 if everything
// behaved.

void process_main() {
    pid_t self = sys_getpid();
    pid_t a = sys_spawn("alice");
    pid_t b = sys_spawn("alice");
    printf("spawn %d: started alice as pids %d and %d\n", self, a, b);
    bool ok = a > 0 && b > 0 && a != b && a != self && b != self;

    // Bad requests: an unknown program, an empty name, a pseudo-command
    // (only programs can be spawned).
    const char* const bad[] = {"nosuchprogram", "", "friends"};
    for (const char* name : bad) {
        pid_t r = sys_spawn(name);
        printf("spawn %d: spawn(\"%s\") = %d (%s)\n", self, name, r, error_name(r));
        ok = ok && r == E_INVAL;
    }
    sys_exit(ok ? 0 : 1);
}
