#!/usr/bin/env python3
"""Turn syscalls.h into syscalls.json for the harness.

The header is the single source of truth for the system-call ABI. Each
`#define SYSCALL_<NAME> <number>  // <ret> <name>(<args>)` line becomes one
entry; `#define E_<NAME> <negative number>` lines become the error table.
Any SYSCALL_ line that does not parse is a build error, so a typo cannot
silently drop a call from the trace decoder.

Usage: gen-syscalls.py syscalls.h > syscalls.json
"""

import json
import re
import sys

# C type (after whitespace normalisation) -> harness type.
# `char*` (non-const) is an output buffer: the harness must not read it as a
# string when the call starts, so it is a plain pointer.
TYPES = {
    "int": "int",
    "long": "int",
    "ssize_t": "int",
    "intptr_t": "int",
    "unsigned": "uint",
    "unsigned int": "uint",
    "unsigned long": "uint",
    "uint32_t": "uint",
    "uint64_t": "uint",
    "size_t": "size",
    "pid_t": "pid",
    "uintptr_t": "ptr",
    "void*": "ptr",
    "const void*": "ptr",
    "char*": "ptr",
    "const char*": "str",
}

DEFINE_RE = re.compile(r"^\s*#\s*define\s+SYSCALL_(\w+)\s+(\d+)\s*(?://\s*(.*))?$")
SIG_RE = re.compile(r"^(.+?)\s*\b(\w+)\s*\((.*)\)\s*$")
ERROR_RE = re.compile(r"^\s*#\s*define\s+(E_\w+)\s+\(?\s*(-\d+)\s*\)?")


def norm_type(t):
    t = re.sub(r"\s*\*\s*", "* ", t.strip())
    return re.sub(r"\s+", " ", t).strip()


def parse_arg(text, where):
    m = re.match(r"^(.*?)(\w+)$", text.strip())
    if not m or not m.group(1).strip():
        raise SystemExit(f"{where}: cannot parse argument {text!r} (need '<type> <name>')")
    ctype, name = norm_type(m.group(1)), m.group(2)
    if ctype not in TYPES:
        raise SystemExit(f"{where}: unknown argument type {ctype!r}")
    return {"name": name, "type": TYPES[ctype], "ctype": ctype}


def parse(path):
    calls, errors, seen = [], [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            m = ERROR_RE.match(line)
            if m:
                errors.append({"number": int(m.group(2)), "name": m.group(1)})
                continue
            if not re.match(r"^\s*#\s*define\s+SYSCALL_", line):
                continue
            m = DEFINE_RE.match(line)
            if not m or not m.group(3):
                raise SystemExit(f"{where}: SYSCALL_ definition without a signature comment")
            macro, number, sig = m.group(1), int(m.group(2)), m.group(3)
            s = SIG_RE.match(sig)
            if not s:
                raise SystemExit(f"{where}: cannot parse signature {sig!r}")
            ret, name, args = norm_type(s.group(1)), s.group(2), s.group(3).strip()
            if name != macro.lower():
                raise SystemExit(f"{where}: signature name {name!r} does not match SYSCALL_{macro}")
            if ret == "void":
                rtype = "void"
            elif ret in TYPES:
                rtype = TYPES[ret]
            else:
                raise SystemExit(f"{where}: unknown return type {ret!r}")
            if number in seen:
                raise SystemExit(f"{where}: number {number} already used by {seen[number]}")
            seen[number] = name
            arglist = [] if args in ("", "void") else [parse_arg(a, where) for a in args.split(",")]
            if len(arglist) > 4:
                raise SystemExit(f"{where}: at most 4 arguments fit the register convention")
            calls.append({"number": number, "name": name, "returns": rtype, "args": arglist})
    if not calls:
        raise SystemExit(f"{path}: no SYSCALL_ definitions found")
    calls.sort(key=lambda c: c["number"])
    return {"syscalls": calls, "errors": errors}


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: gen-syscalls.py syscalls.h")
    json.dump(parse(sys.argv[1]), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
