"""Command-line entry point: the only place with I/O and exit codes.

Each sub-command lives in `dslc.commands.<name>` and exposes
`add_parser(subparsers)` (registers its arguments and sets `func`) and a
`run(args) -> int`.  Exit codes: 0 success, 1 findings/failures, 2 usage,
130 interrupted (Ctrl-C).  Every byte of output goes through `dslc.output`
(streams that escape what the terminal cannot encode).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
        importlib.import_module(f"dslc.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an interrupt (Ctrl-C) is exit 130 with one line, never a traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return _interrupted()


def _interrupted() -> int:
    import signal

    try:  # a second Ctrl-C while we say so must not raise either
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread
        pass
    try:
        sys.stderr.write("dslc: interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return 130


def _main(argv: list[str] | None) -> int:
    from dslc import output

    output.setup()
    if os.environ.get("DSLC_MATCH_DEBUG"):  # the matcher's debug log (dslc/match/matcher.py) on stderr
        logging.basicConfig(stream=sys.stderr, format="%(message)s")
        logging.getLogger("dslc.match.matcher").setLevel(logging.DEBUG)
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
    except BrokenPipeError:
        # The reader went away (`dslc ... | head`): stop quietly, and keep
        # the interpreter's final flush from complaining about it again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
