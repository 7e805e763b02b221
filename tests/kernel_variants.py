"""Deliberately broken variants of our kernel (test-only patches), for the checker's tests.

Each variant is built from a copy of weensyos-src and of the session's build (so make recompiles only the patched
file and relinks); the session fixture `variant_builds` (conftest.py) builds them all side by side, once.
tests/test_check.py requires each to fail exactly the check it breaks; tests/test_check_submissions.py grades
them as submissions.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import project

SOURCE = project.default_source_dir()


@dataclass(frozen=True)
class Variant:
    """A test-only patch of our kernel: in `file`, each edit's original text becomes its broken text; it breaks
    the check `breaks`."""

    name: str
    file: str
    edits: tuple[tuple[str, str], ...]
    breaks: str
    explanation: tuple[str, ...]  # what the failing check's explanation must say
    not_applicable: tuple[tuple[str, str], ...] = ()  # checks the breakage makes meaningless, with their reason


VARIANTS = [
    # exit frees nothing the process mapped: its pages stay owned by the dead process
    Variant("leaky-exit", "k-proc.cc",
            (("        if (it.user()) {\n            kfree(it.kptr());",
              "        if (it.user() && false) {\n            kfree(it.kptr());"),),
            "exit-frees", ("fork+exit cycles", "pages are not free", "owned by exited processes",
                           "exited still owning", "first leaked at cycle", "exit must free every page")),
    # every process maps the kernel image user-accessible (and writable)
    Variant("user-kernel-page", "k-proc.cc",
            (("if (vmiter(pt, va).try_map(va, PTE_PW) < 0) {", "if (vmiter(pt, va).try_map(va, PTE_PWU) < 0) {"),),
            "kernel-isolation", ("maps VA 0x40000 -> PA 0x40000", "a kernel page (the kernel image) is "
                                 "user-accessible", "kernel isolation is broken"),
            # a kernel pointer the process may use itself is no confused deputy
            (("confused-deputy", "is user-accessible to the process (kernel isolation is broken)"),)),
    # fork copies half of each page into the child's own page
    Variant("half-copying-fork", "k-proc.cc",
            (("                memcpy(page, it.kptr(), PAGESIZE);",
              "                memcpy(page, it.kptr(), PAGESIZE / 2);"),),
            "fork", ("after fork, child 2 of process 1 at VA 0x100000: the child's copy", "differs from the "
                     "parent's", "first at VA 0x100800: fork must copy the whole contents", "more such pages")),
    # system calls check that a range is present (and writable), not that it is the process's
    Variant("trusting-deputy", "k-usermem.cc",
            (("uint64_t need = PTE_PU | (write ? PTE_W : 0);", "uint64_t need = PTE_P | (write ? PTE_W : 0);"),
             ("        assert(it.user());\n        size_t chunk",
              "        assert(it.present());\n        size_t chunk")),
            "confused-deputy", ("getsysname(0x40000) returned 0 and changed", "bytes of the kernel's text at "
                                "0x40000", "(and 1 more call: pipewrite)", "the confused deputy")),
]


def start_variant_build(variant: Variant, build: project.BuildTree, root: Path) -> tuple[Path, subprocess.Popen[str]]:
    """Copy the sources and the session's build (copy2 keeps the times: make recompiles only the patched file
    and relinks the kernel), apply the patch, and start make; the caller waits."""
    assert SOURCE is not None
    source, directory = root / "weensyos-src", root / "build"
    shutil.copytree(SOURCE, source)
    shutil.copytree(build.directory, directory)
    path = source / variant.file
    text = path.read_text()
    for original, broken in variant.edits:
        assert text.count(original) == 1, f"the {variant.name} patch no longer applies to {variant.file}"
        text = text.replace(original, broken)
    path.write_text(text)
    make = subprocess.Popen(["make", "-C", str(source), f"BUILD={directory}", str(directory / "kernel")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return directory, make
