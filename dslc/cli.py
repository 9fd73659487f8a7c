"""Command-line entry point: the only place with I/O and exit codes.

Each sub-command lives in `dslc.commands.<name>` and exposes
`add_parser(subparsers)` (registers its arguments and sets `func`) and a
`run(args) -> int`.  Exit codes: 0 success, 1 findings/failures, 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dslc import __version__

COMMANDS = ("check", "explain", "structure", "apply", "verify")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslc",
        description=(
            "Put optimized deep-learning kernels into PyTorch model source, "
            "driven by .adr rule packs (ADOPTER, ISSTA'24)."
        ),
        epilog=(
            "examples:\n"
            "  dslc check rulepacks/                      check every rule pack\n"
            "  dslc structure examples/bert_self_output.py  show model structures\n"
            "  dslc apply --rules rulepacks/adopter.adr examples/   dry run: print a diff\n"
            "  dslc apply --rules rulepacks/ --write src/            rewrite in place\n"
            "  dslc verify before.py after.py                  equivalence test\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dslc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dslc.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name != f"dslc.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("dslc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
