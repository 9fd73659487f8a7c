"""`dslc explain CODE`: print what a diagnostic code means (exit 2 if unknown).

`dslc explain FILE:LINE --rules PACK`: what the rules did at one place of a
model -- the matches there (applied, or skipped with the reason) and the near
misses (the places that hold a rule's anchors without a match, with the
pattern node, init argument or constraint that did not fit).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import textwrap

from dslc import codes

_PLACE = re.compile(r"^(.+):(\d+)$")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="explain a diagnostic code (e.g. ADR201), or what the rules did at FILE:LINE",
        description="Print the documentation of a diagnostic code; `--list` lists them all.  "
                    "With FILE:LINE, explain what the rules matched at that place of a model, what "
                    "they did not and why (the near-miss report of `dslc apply --near-misses`, for "
                    "one place).",
        epilog="examples:\n  dslc explain ADR201\n  dslc explain --list\n"
               "  dslc explain --rules rulepacks/adopter.adr src/model.py:42",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("code", nargs="?", help="a code such as ADR201, or FILE:LINE")
    p.add_argument("--list", action="store_true", help="list every code with its title")
    p.add_argument("--rules", action="append", default=[], metavar="FILE|DIR",
                   help="with FILE:LINE: the rule packs (repeatable; default: ./rulepacks if it exists)")
    p.add_argument("--select", action="append", default=[], metavar="PACK:RULE",
                   help="with FILE:LINE: only this rule (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    place = _PLACE.match(args.code or "")
    if place and not args.list and codes.lookup(args.code) is None:
        return explain_place(place.group(1), int(place.group(2)), args)
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


# ---------------------------------------------------------------------------
# FILE:LINE


def _usage(message: str) -> int:
    print(f"dslc explain: error: {message}", file=sys.stderr)
    return 2


def _enclosing(tree: ast.AST, line: int) -> tuple[str | None, str | None, tuple[int, int] | None]:
    """The innermost class and function around `line`, and the class's line span."""
    cls = func = None
    span = None
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            lo, hi = getattr(child, "lineno", None), getattr(child, "end_lineno", None)
            if lo is None or hi is None or not lo <= line <= hi:
                continue
            if isinstance(child, ast.ClassDef):
                cls, func, span = child.name, None, (lo, hi)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                func = child.name
            stack.append(child)
    return cls, func, span


def explain_place(path: str, line: int, args) -> int:
    """1. check the place, 2. load the packs, 3. run apply on the file with near
    misses (nothing written), 4. print what concerns the line or its class."""
    from dslc.apply import driver
    from dslc.commands.apply import _render_diagnostics
    from dslc.lang.loader import load_rules

    if os.path.isdir(path):
        return _usage(f"{path} is a directory; give one Python file")
    from dslc.fileio import path_problem

    if not os.path.lexists(path):  # absent, or behind a folder that cannot be searched
        return _usage(path_problem(path) or f"no such file: {path}")
    rules = list(args.rules) or (["rulepacks"] if os.path.isdir("rulepacks") else [])
    if not rules:
        return _usage("FILE:LINE needs --rules (no ./rulepacks here)")
    missing = [problem for problem in map(path_problem, rules) if problem]
    if missing:
        return _usage("; ".join(missing))
    from dslc import fileio

    try:
        text = fileio.read_source(path).text
    except fileio.SourceError as exc:  # a file that is there but cannot be read or decoded: 1, as in apply and structure
        print(f"{fileio.display_path(path)}:{exc.line}:0: error[{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line, no traceback
        return _usage(f"cannot read {path}: {getattr(exc, 'message', exc)}")
    n_lines = len(fileio.source_lines(text))
    if not 1 <= line <= max(n_lines, 1):
        return _usage(f"{path} has {n_lines} line(s), not {line}")
    loaded = load_rules(rules, list(args.select))
    diags = list(loaded.diagnostics)
    if any(d.is_error for d in diags):
        sys.stderr.write(_render_diagnostics(diags, loaded.sources))
        return _usage("the rule packs have errors")
    if not any(p.rules for p in loaded.packs):
        return _usage("no rules (empty packs, or --select matched nothing)")
    options = driver.ApplyOptions(mode="diff", jobs=1, near_misses=True)
    report = driver.apply_paths([path], loaded.packs, options)
    try:
        cls, func, span = _enclosing(ast.parse(text), line)
    except SyntaxError:
        cls, func, span = None, None, None
    print(explain_text(report, path, line, cls, func, span), end="")
    return 1 if report.errors else 0


def _more(rules) -> str:
    """` +N more rules` after the first rule of a group (as `dslc apply` prints it)."""
    n = len(rules) - 1
    return f" +{n} more rule{'s' if n != 1 else ''}" if n > 0 else ""


def _grouped_matches(matches) -> list[tuple]:
    """(the first match, the names of every rule with it) per place and
    outcome: matches of one class with the same lines, status and reason are
    one entry (the spellings of one rewrite in a generated pack)."""
    groups: dict[tuple, tuple] = {}
    for m in matches:
        key = (m.file, m.class_name, tuple(m.lines), m.status, m.reason)
        if key in groups:
            groups[key][1].append(m.rule)
        else:
            groups[key] = (m, [m.rule])
    return [(m, tuple(dict.fromkeys(rules))) for m, rules in groups.values()]


def explain_text(report, path: str, line: int, cls: str | None, func: str | None, span) -> str:
    """What the report says about `line`: matches there (else in its class)
    and near misses there (else in its class), one line per place and
    reason whatever the number of rules with it (`+N more rules`)."""
    from dslc.apply.report import group_near_misses

    where = f" in {cls}" + (f".{func}" if func else "") if cls else (f" in {func}" if func else "")
    out = [f"{path}:{line}{where}\n"]
    for e in report.errors:
        out.append(f"  error[{e.code}]: {e.message}\n")
    matches = list(report.matches)
    here = [m for m in matches if line in m.lines]
    if not here and cls:
        here = [m for m in matches if m.class_name == cls]
    near = list(report.near_misses or ())
    near_here = [n for n in near if n.line == line and n.kind == "unmatched"]
    if not near_here and cls:
        near_here = [n for n in near if n.class_name == cls and n.kind == "unmatched"]
    for m, rules in _grouped_matches(here):
        lines = f"lines {m.lines[0]}-{m.lines[-1]}" if m.lines else "no lines"
        if m.status == "applied":
            out.append(f"  applied   {m.rule}{_more(rules)} ({lines})\n")
        else:
            out.append(f"  skipped   {m.rule}{_more(rules)} ({lines}): {m.reason or 'no reason given'}\n")
    for n, rules in group_near_misses(near_here):
        code = f" [{n.code}]" if n.code else ""
        out.append(f"  near miss {n.rule}{_more(rules)} (line {n.line}): {n.reason}{code}\n")
    if len(out) == 1:
        scope = f"class {cls}" if cls else "this line"
        out.append(f"  no rule matched, and {scope} holds no rule's anchors "
                   f"(the names and node kinds a rule needs)\n")
    return "".join(out)
