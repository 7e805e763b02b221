"""Serve local pip indexes and wheel directories over HTTP to a `docker build` on Docker's bridge network.

    python3 docker/pip_bridge.py --port-file FILE [--host ADDRESS] [--port N] PATH...

A host's pip configuration may name local paths (file:///srv/pypi/simple, a find-links directory, a CA bundle):
the build container cannot see them. The build runs on Docker's bridge network, never the host's, so the bridge
listens on the bridge's gateway address (--host, e.g. 172.17.0.1), which only the host and its containers reach;
a wildcard address is refused. Each PATH (a directory or a file) is served under its own absolute path
(http://ADDRESS:PORT/srv/pypi/simple/), so the relative links of a simple index keep working, and nothing outside
the given PATHs is served.

The chosen port is written to FILE once the server listens (FILE's directory should be private: docker/test.sh
makes one with mktemp -d). --port asks for a fixed port, so that the URLs, and with them Docker's layer cache, stay
the same from run to run; it falls back to any free port when that one is taken. The URLs are plain HTTP, so the
build names the address as a pip trusted host.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import ipaddress
import os
import sys
from pathlib import Path


class Handler(http.server.SimpleHTTPRequestHandler):
    roots: tuple[str, ...] = ()

    def translate_path(self, path: str) -> str:
        # The base class resolves the URL against directory="/" and drops "..": map it, then confine it.
        local = os.path.realpath(super().translate_path(path))
        if any(local == root or local.startswith(root + os.sep) for root in self.roots):
            return local
        return "/nonexistent/pip-bridge/refused"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (never a wildcard)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    try:
        if ipaddress.ip_address(args.host).is_unspecified:
            print(f"pip_bridge: refusing to listen on every interface ({args.host})", file=sys.stderr)
            return 1
    except ValueError:
        print(f"pip_bridge: --host {args.host} is not an IP address", file=sys.stderr)
        return 1
    roots = tuple(sorted({os.path.realpath(p) for p in args.paths if os.path.exists(p)}))
    if not roots:
        print("pip_bridge: none of the paths exists", file=sys.stderr)
        return 1
    handler = type("ConfinedHandler", (Handler,), {"roots": roots})
    factory = functools.partial(handler, directory="/")
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), factory)
    except OSError:
        server = http.server.ThreadingHTTPServer((args.host, 0), factory)
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(f"{server.server_address[1]}\n")
    tmp.replace(args.port_file)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
