"""Deliberately broken variants of our kernel (test-only patches), for the checker's tests.

Each variant is built from a copy of weensyos-src and of the session's build, so make recompiles only the patched
file and relinks; the session fixture `variant_builds` (conftest.py) builds each on first use, once per test
worker. tests/test_check.py requires each to fail exactly the checks it breaks; tests/test_check_submissions.py
grades some of them as submissions; scripts/time_submissions.py times grading them.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import project

SOURCE = project.default_source_dir()


@dataclass(frozen=True)
class Variant:
    """A test-only patch of our kernel: in `file`, each edit's original text becomes its broken text. It fails the
    checks of `fails`, each explanation holding the phrases given, and passes every other check except those of
    `not_applicable` (checks the breakage makes meaningless, with their reason)."""

    name: str
    file: str
    edits: tuple[tuple[str, str], ...]
    fails: tuple[tuple[str, tuple[str, ...]], ...]
    not_applicable: tuple[tuple[str, str], ...] = ()


FORK_COPY = """                void* page = kalloc(PAGESIZE);
                if (!page) {
                    ok = false;
                    break;
                }
                memcpy(page, it.kptr(), PAGESIZE);
                physpage_set_owner(kptr2pa(page), pid);
                it.map(kptr2pa(page), mapping_perm(it));    // the L1 page exists"""
PAGE_ALLOC_START = """    void* page = kalloc(PAGESIZE);
    if (!page) {
        return E_NOMEM;
    }
    vmiter it(p, addr);"""

VARIANTS = [
    # any page fault is fatal to the kernel: `fault` (a process touching kernel memory) panics it
    Variant("panicking-fault", "kernel.cc",
            (("        describe_page_fault(what, sizeof(what), regs->reg_errcode);\n        if (!from_user) {",
              "        describe_page_fault(what, sizeof(what), regs->reg_errcode);\n        if (true) {"),),
            (("no-crash", ("`fork hello fault`: the kernel panicked", "PANIC: Kernel page fault on 0x40000")),)),
    # every process maps the kernel image user-accessible (and writable)
    Variant("user-kernel-page", "k-proc.cc",
            (("if (vmiter(pt, va).try_map(va, PTE_PW) < 0) {", "if (vmiter(pt, va).try_map(va, PTE_PWU) < 0) {"),),
            (("kernel-isolation", ("maps VA 0x40000 -> PA 0x40000", "a kernel page (the kernel image) is "
                                   "user-accessible", "kernel isolation is broken")),),
            # a kernel pointer the process may use itself is no confused deputy
            (("confused-deputy", "is user-accessible to the process (kernel isolation is broken)"),)),
    # fork maps the parent's pages into the child (counting the references) instead of copying them: process
    # isolation breaks (a page writable by two processes) and so does fork (the child's pages are no copies);
    # nothing else: the kernel's accounting stays right, the processes started by the kernel are not forks
    Variant("sharing-fork", "k-proc.cc",
            ((FORK_COPY, "                ++physpages[it.pa() / PAGESIZE].refcount;    // shared, not copied"),),
            (("process-isolation", ("process 2 maps VA 0x102000 -> PA", "the page is also writable by pid 1",
                                    "process isolation is broken")),
             ("fork", ("after fork, child 2 of process 1 at VA 0x102000: the child shares the parent's physical "
                       "page", "fork must give the child its own copy", "more such pages")))),
    # fork copies half of each page into the child's own page
    Variant("half-copying-fork", "k-proc.cc",
            (("                memcpy(page, it.kptr(), PAGESIZE);",
              "                memcpy(page, it.kptr(), PAGESIZE / 2);"),),
            (("fork", ("after fork, child 2 of process 1 at VA 0x100000: the child's copy", "differs from the "
                       "parent's", "first at VA 0x100800: fork must copy the whole contents", "more such pages")),)),
    # each process's stack one page lower than the one before it (pid 1 at the top, pid 2 below, ...)
    Variant("stacks-apart", "k-proc.cc",
            (("    uintptr_t stack_va = MEMSIZE_VIRTUAL - PAGESIZE;",
              "    uintptr_t stack_va = MEMSIZE_VIRTUAL - PAGESIZE * pid;"),
             ("    p->regs.reg_rsp = MEMSIZE_VIRTUAL;",
              "    p->regs.reg_rsp = MEMSIZE_VIRTUAL - PAGESIZE * (pid - 1);")),
            (("overlapping-address-spaces", ("process 2 (allocator) has no stack page at VA 0x2ff000; its highest "
                                             "writable page is at VA 0x2fe000", "every process's stack must be the "
                                             "page at the top of user memory", "(and processes 3, 4 too)")),)),
    # page_alloc over a page the process already maps returns 0 and keeps that page
    Variant("page-alloc-keeps-old-page", "k-proc.cc",
            ((PAGE_ALLOC_START, "    if (vmiter(p, addr).user()) {\n        return 0;\n    }\n" + PAGE_ALLOC_START),),
            (("virtual-page-allocation", ("page_alloc(0x102000) by process 1 (again, over the page it was just "
                                          "given) returned 0 but left the page that was there", "in place, contents "
                                          "and all", "replaced by a fresh zero-filled page")),)),
    # exit frees nothing the process mapped: its pages stay owned by the dead process
    Variant("leaky-exit", "k-proc.cc",
            (("        if (it.user()) {\n            kfree(it.kptr());",
              "        if (it.user() && false) {\n            kfree(it.kptr());"),),
            (("exit-frees", ("fork+exit cycles", "pages are not free", "owned by exited processes",
                             "exited still owning", "first leaked at cycle", "exit must free every page")),)),
    # system calls check that a range is present (and writable), not that it is the process's
    Variant("trusting-deputy", "k-usermem.cc",
            (("uint64_t need = PTE_PU | (write ? PTE_W : 0);", "uint64_t need = PTE_P | (write ? PTE_W : 0);"),
             ("        assert(it.user());\n        size_t chunk",
              "        assert(it.present());\n        size_t chunk")),
            (("confused-deputy", ("getsysname(0x40000) returned 0 and changed", "bytes of the kernel's text at "
                                  "0x40000", "(and 1 more call: pipewrite)", "the confused deputy")),)),
    # page_alloc keeps 32 pages in reserve: the allocators never fill memory
    Variant("page-alloc-reserve", "k-proc.cc",
            ((PAGE_ALLOC_START, "    if (kalloc_free_pages() < 32) {\n        return E_NOMEM;\n    }\n"
              + PAGE_ALLOC_START),),
            (("out-of-memory", ("`allocators` ran to power-off but memory never filled: at least 31 pages stayed "
                                "free", "page_alloc must succeed until no free page is left")),)),
]


def build_variant(variant: Variant, build: project.BuildTree, root: Path) -> Path:
    """Copy the sources and the session's build (copy2 keeps the times), apply the patch, and make the kernel.

    The flags make records name the source directory, so a copy would recompile every file; the flags are
    recorded anew first and the other objects (built from the same text with the same flags) made newer than
    them, so make recompiles only the patched file and relinks."""
    assert SOURCE is not None
    source, directory = root / "weensyos-src", root / "build"
    shutil.copytree(SOURCE, source)
    shutil.copytree(build.directory, directory)
    path = source / variant.file
    text = path.read_text()
    for original, broken in variant.edits:
        assert text.count(original) == 1, f"the {variant.name} patch no longer applies to {variant.file}"
        text = text.replace(original, broken)
    objects = directory / "obj"
    make = ["make", "-C", str(source), f"BUILD={directory}"]
    subprocess.run([*make, str(objects / "flags.stamp")], check=True, capture_output=True)
    patched = objects / f"{Path(variant.file).stem}.o"
    for obj in objects.glob("*.o"):
        if obj != patched:
            obj.touch()
    path.write_text(text)  # newer than its object
    result = subprocess.run([*make, str(directory / "kernel")], capture_output=True, text=True)
    assert result.returncode == 0, f"{variant.name}: {result.stdout}{result.stderr}"
    return directory


def variant_key(variant: Variant, build: project.BuildTree) -> str:
    """What a variant's build is made from: the sources (every file of weensyos-src), the variant's edits and the
    session's kernel (so a build made with another compiler is another key)."""
    assert SOURCE is not None
    digest = hashlib.sha256(repr((variant.file, variant.edits)).encode())
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes())
    digest.update(build.kernel.read_bytes())
    return digest.hexdigest()[:16]


class VariantBuilds:
    """Each variant built on first use, once (per test worker: a worker builds only the variants its tests use).

    With a `keep` directory (the session's pytest cache), a variant's build is kept there under its name and
    `variant_key` and used again by later sessions and by the other workers, while nothing it is made from has
    changed: building one takes a copy of the sources and of the build, a compile and a link (0.2-0.3 s of CPU,
    eleven of them a session). A lock file makes workers take turns; an older build of the same variant is
    removed."""

    def __init__(self, build: project.BuildTree, scratch: Callable[[str], Path], keep: Path | None = None) -> None:
        self.build = build
        self.scratch = scratch  # a new empty directory for the named variant
        self.keep = keep
        self.built: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.built:
            variant = next(v for v in VARIANTS if v.name == name)
            self.built[name] = self._kept(variant) if self.keep is not None else \
                build_variant(variant, self.build, self.scratch(name))
        return self.built[name]

    def _kept(self, variant: Variant) -> Path:
        assert self.keep is not None
        self.keep.mkdir(parents=True, exist_ok=True)
        root = self.keep / f"{variant.name}-{variant_key(variant, self.build)}"
        done = root / "built"  # written last: a build cut short is made again
        with open(self.keep / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                for old in self.keep.glob(f"{variant.name}-*"):
                    shutil.rmtree(old)
                root.mkdir()
                build_variant(variant, self.build, root)
                done.touch()
        return root / "build"
