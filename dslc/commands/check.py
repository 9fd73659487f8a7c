"""`dslc check`: parse and check rule packs, report diagnostics.

Exit codes: 0 when every file is well formed (warnings allowed), 1 when any
diagnostic is an error, 2 on usage errors (a path that does not exist, a
directory without `.adr` files).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dslc.lang import diagnostics as D

EPILOG = """\
examples:
  dslc check rulepacks/                  check every pack in a directory
  dslc check rulepacks/adopter.adr --format json
  dslc check rulepacks/ --dump --select adopter:softmax   show the automaton
  dslc explain ADR201                    what a diagnostic code means

Each problem is reported as `path:line:col: severity[CODE]: message`,
followed by the source line, a caret under the span and a hint.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="parse and check .adr rule packs",
        description="Parse and check .adr rule packs; report every problem with its location.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="FILE|DIR", help=".adr files or directories holding them")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default: rustc-style snippets) or json (a list of objects)")
    p.add_argument("--dump", action="store_true",
                   help="also print what each rule compiled to (matcher automata)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print errors only: no warnings, no summary")
    p.add_argument("--select", action="append", default=[], metavar="PACK:RULE",
                   help="check / dump only these rules (repeatable; `pack`, `rule` or `pack:rule`)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output (auto: on a terminal, unless NO_COLOR is set; "
                        "FORCE_COLOR forces it)")
    p.set_defaults(func=run)


def _usage_error(paths: list[str]) -> str | None:
    from dslc.fileio import path_problem

    for raw in paths:
        p = Path(raw)
        problem = path_problem(raw)  # never raises (Path.exists() does, behind a closed folder)
        if problem:
            return problem
        if os.path.isdir(raw) and not any(f.is_file() for f in p.rglob("*.adr")):
            return f"no .adr files in directory {raw}"
    return None


def run(args) -> int:
    problem = _usage_error(args.paths)
    if args.dump and args.format == "json":
        problem = "--dump prints text; use it without --format json"
    if problem:
        print(f"dslc check: error: {problem}", file=sys.stderr)
        return 2
    # Imported here, not at module level: the command module is imported
    # once by the CLI, and a stub loader (tests) must not stick to it.
    from dslc.lang.checker import check_semantics
    from dslc.lang.loader import load_rules

    start = time.perf_counter()
    result = load_rules(args.paths, args.select)
    diags = list(result.diagnostics)
    # Rules of files that parsed (even with errors elsewhere in them).
    selected = {r.qualified_name for p in result.packs for r in p.rules}
    parsed = [f for f in result.parsed if not args.select or f.header is None
              or any(f"{f.header.name}:{r.name}" in selected for r in f.rules)]
    diags = sorted(diags + check_semantics(parsed), key=D.Diagnostic.sort_key)
    elapsed = time.perf_counter() - start
    errors, warnings = D.count(diags)
    shown = [d for d in diags if d.is_error] if args.quiet else diags
    if args.format == "json":
        from dslc.output import write_json

        write_json(D.render(shown, "json"))
    elif shown:
        from dslc import color

        text = D.render(shown, "text", result.sources)
        print(color.paint_notes(text) if color.enabled(sys.stdout, getattr(args, "color", "auto")) else text)
        print()
    rules = sum(len(f.rules) for f in result.parsed)
    packs = len(result.parsed)
    if not args.quiet:
        summary = (f"checked {rules} rule{'s' * (rules != 1)} in {packs} pack{'s' * (packs != 1)}: "
                   f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} "
                   f"({elapsed:.2f}s)")
        print(summary, file=sys.stderr if args.format == "json" else sys.stdout)
    if errors:
        return 1
    if args.dump:
        return _dump(result)
    return 0


def _dump(result) -> int:
    # Every loaded rule already compiled once (the loader reports the ones
    # that do not as ADR120 and drops them): reuse them.
    from dslc.match.compiler import compile_pack

    for pack in result.packs:
        print(compile_pack(pack, result.compiled).dump())
    return 0
