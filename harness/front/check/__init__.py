"""`python -m harness check`: named checks of a kernel's properties, graded from outside the kernel.

target.py finds what to boot (a kernel ELF, a build directory or a disk image); watch.py is the observer the
memory checks share (the auditor's page-table walk, kept going after a violation); oom.py runs `allocators` for
the out-of-memory check and, with layout.py, the overlapping-address-spaces check; pagealloc.py and deputy.py
make system calls from a process to probe `page_alloc` and pointer checking; checks.py holds the checks and
their registry; report.py prints them and writes JUnit XML and Gradescope's results.json.
"""
