#!/usr/bin/env python3
"""Turn commands.h into commands.json for the harness.

commands.h is the single list of command-line words that are not programs:
pseudo-commands (`COMMAND(friends, "alice eve")`) and kernel options
(`OPTION(memviewer, "...")`). The harness reads the JSON to accept those
words; the kernel compiles the same header. A line that mentions COMMAND( or
OPTION( but does not parse is a build error, so the two cannot drift apart.

Usage: gen-commands.py commands.h > commands.json
"""

import json
import re
import sys

ENTRY_RE = re.compile(r'^\s*(COMMAND|OPTION)\(\s*([A-Za-z_]\w*)\s*,\s*"([^"\\]*)"\s*\)\s*\\?\s*$')
MENTION_RE = re.compile(r"\b(COMMAND|OPTION)\(\s*\w")


def parse(path):
    commands, options = {}, {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if line.lstrip().startswith(("//", "#")) or not MENTION_RE.search(line):
                continue
            m = ENTRY_RE.match(line)
            if not m:
                raise SystemExit(f"{where}: cannot parse {line.strip()!r}")
            kind, name, text = m.groups()
            if name in commands or name in options:
                raise SystemExit(f"{where}: {name!r} defined twice")
            if kind == "COMMAND":
                words = text.split()
                if not words:
                    raise SystemExit(f"{where}: command {name!r} expands to nothing")
                commands[name] = words
            else:
                options[name] = text
    for name, words in commands.items():
        nested = [w for w in words if w in commands or w in options]
        if nested:
            raise SystemExit(f"{path}: command {name!r} names {nested[0]!r}, which is not a program")
    return {"commands": commands, "options": options}


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: gen-commands.py commands.h")
    json.dump(parse(sys.argv[1]), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
