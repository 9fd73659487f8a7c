"""`dslc explain CODE`: print what a diagnostic code means (exit 2 if unknown)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from dslc import codes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="explain a diagnostic code (e.g. ADR201)",
        description="Print the documentation of a diagnostic code; `--list` lists them all.",
        epilog="examples:\n  dslc explain ADR201\n  dslc explain --list",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("code", nargs="?", help="a code such as ADR201")
    p.add_argument("--list", action="store_true", help="list every code with its title")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list or not args.code:
        if not args.list:
            print("dslc explain: error: give a CODE (or --list)", file=sys.stderr)
            return 2
        for c in codes.REGISTRY.values():
            print(f"{c.code}  {c.severity:<7}  {c.title}")
        return 0
    entry = codes.lookup(args.code)
    if entry is None:
        print(f"dslc explain: error: unknown code {args.code!r} (try `dslc explain --list`)", file=sys.stderr)
        return 2
    print(f"{entry.code} ({entry.severity}): {entry.title}\n")
    print(textwrap.fill(entry.doc, width=78))
    return 0
