"""`dslc structure`: print the model structures the analysis extracts.

Exit codes: 0 success, 1 when the file cannot be read (E100), decoded
(E102) or parsed (E101), or `--class` names no class of the file (E120),
2 on usage errors (bad arguments, a directory instead of a file).
"""

from __future__ import annotations

import argparse
import json
import sys

from dslc import codes

# The analysis's fatal problem kinds -> registered codes (`dslc explain`).
PROBLEM_CODES = {
    "io-error": codes.E_UNREADABLE,
    "syntax-error": codes.E_SYNTAX,
    "encoding": codes.E_NOT_TEXT,
    "analysis-error": codes.E_INTERNAL,
}

EPILOG = """\
examples:
  dslc structure examples/bert_self_output.py
  dslc structure examples/dpt_preact_residual.py --stmts
  dslc structure modeling_bert.py --class BertSelfOutput --format json
  dslc structure modeling_gpt2.py --class GPT2Attention --no-inline

Output, per torch.nn.Module subclass: the init bindings
(`torch.nn.Linear(config.hidden_size, ...) → dense;`, with the `if` guards
they run under) and one DSL sequence per feasible control-flow path of
`forward` in the paper's notation (`torch.nn.Dropout(hidden_states) → temp_1;`),
each node with its line.  Nested expressions get temporaries temp_1, temp_2...
Helpers called as `self.<method>(...)` are inlined (`--no-inline` keeps them
as calls); `--flatten` gives the paper's ADOPTER_p ablation (one path, no
guards).  Non-DL statements are hidden unless `--stmts`.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "structure", help="show the model structures (init bindings, forward paths) of a Python file",
        description="Extract and print the model structures of every torch.nn.Module subclass in FILE.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a Python source file")
    p.add_argument("--class", dest="cls", metavar="NAME", help="only this class")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default: the paper's notation) or json (the report.md contract)")
    p.add_argument("--no-inline", action="store_true", help="do not inline self.<method>() helpers")
    p.add_argument("--flatten", action="store_true",
                   help="flatten control flow into one path without guards (ablation ADOPTER_p)")
    p.add_argument("--stmts", action="store_true",
                   help="text mode: also list non-DL statements with what they read and write")
    p.add_argument("--root", metavar="DIR",
                   help="directory holding the analyzed tree's top package (default: found from FILE)")
    p.set_defaults(func=run)


def _error(path: str, line: int, col: int, code: str, message: str) -> None:
    from dslc.fileio import display_path

    print(f"{display_path(path)}:{line}:{col}: error[{code}]: {message}", file=sys.stderr)


def run(args) -> int:
    import os

    from dslc.analysis import analyze_source

    path = args.file
    if args.root is not None and not os.path.isdir(args.root):
        print(f"dslc structure: error: --root {args.root}: not a directory", file=sys.stderr)
        return 2
    if not os.path.lexists(path):  # absent, or behind a folder that cannot be searched: a usage error (2), as in apply
        from dslc.fileio import NO_SUCH_PATH, display_path, path_problem

        why = path_problem(path) or f"{NO_SUCH_PATH}: {display_path(path)}"
        print(f"dslc structure: error: {why}", file=sys.stderr)
        return 2
    if os.path.isdir(path):
        print(f"dslc structure: error: {path} is a directory; give one Python file", file=sys.stderr)
        return 2
    from dslc import fileio

    try:  # only a regular file of a sane size is read (a FIFO or /dev/zero would hang), decoded as apply does
        source = fileio.read_source(path, fileio.DEFAULT_MAX_FILE_SIZE)
    except fileio.SourceError as exc:
        _error(path, exc.line, 0, exc.code, exc.message)
        return 1
    facts = analyze_source(source.text, path, root=args.root, inline=not args.no_inline, flatten=args.flatten)
    fatal = [p for p in facts.problems if p.code in ("syntax-error", "encoding", "io-error", "analysis-error")]
    if fatal:
        for p in fatal:
            col = 0
            message = p.message
            if message.endswith(")") and "(col " in message:
                message, _, rest = message.rpartition(" (col ")
                col = int(rest.rstrip(")") or 0)
            _error(path, p.line, col, PROBLEM_CODES.get(p.code, codes.E_INTERNAL), message)
        return 1
    if args.cls and not any(c.name == args.cls for c in facts.classes):
        names = ", ".join(c.name for c in facts.classes) or "none"
        _error(path, 1, 0, codes.E_NO_CLASS, f"no torch.nn.Module subclass `{args.cls}` (classes: {names})")
        return 1
    from dslc.analysis.render import file_json, file_text

    if args.format == "json":
        from dslc.output import write_json

        write_json(json.dumps(file_json(facts, only=args.cls), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(file_text(facts, show_stmts=args.stmts, only=args.cls))
    return 0
