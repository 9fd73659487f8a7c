"""`dslc apply`: find where rules match in model source and rewrite it.

The command parses arguments, loads the rule packs, runs
`dslc.apply.driver.apply_paths` and prints what `dslc.apply.report` renders.  Exit codes:
0 every file processed, 1 some file failed (unreadable, does not parse, not
writable, verification failed; the rest were still processed), 2 usage errors
and rule packs with errors.
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Match the rules of .adr packs against PyTorch model source and put the
kernels in.  By default a dry run: the unified diff of every change is
printed on stdout and nothing is written.  Directories are searched for
*.py files; .gitignore'd files, version-control and virtual-env folders are
skipped.  A per-rule summary (found / applied / skipped) and the reasons of
skipped matches go to stderr.
"""

EPILOG = """\
examples:
  dslc apply --rules rulepacks/adopter.adr examples/
      dry run: print the diff of every rewrite
  dslc apply --rules rulepacks/ --write src/models/
      rewrite the files in place (atomically; unchanged files untouched)
  dslc apply --rules rulepacks/adopter.adr --select adopter:softmax --patch-dir out/ model.py
      one rule only; write out/model.py.patch instead of editing
  dslc apply --rules rulepacks/adopter.adr --format json transformers/models/ > report.json
      machine-readable report (rule, file, class, lines, status, reason)
  dslc apply --rules rulepacks/ --exclude 'tests/*' --exclude '*_old.py' --jobs 2 src/
  dslc apply --check src/
      CI / pre-commit: change nothing, exit 1 when some safe rewrite applies
  dslc apply --format sarif src/ > dslc.sarif
      a SARIF 2.1.0 log for code scanning (the fixes included)

configuration: `[tool.dslc]` in the nearest pyproject.toml above the first
PATH (keys rules, select, ignore, exclude, unsafe, jobs, cache-dir); a flag
given on the command line wins.  A match with `# dslc: ignore` (or
`# dslc: ignore[pack:rule]`) on one of its lines is suppressed.

exit status: 0 all files processed, 1 some file failed (the others were still
processed) or, with --check, some file would change, 2 usage error or a rule
pack with errors, 130 interrupted.

Every outcome has a code (skipped[S204], warning[W101], error[E101]);
`dslc explain CODE` says what it means and `dslc explain --list` lists them.

error codes: E100 cannot read (or list a folder), E101 does not parse, E102
not text in its encoding, E103 cannot write (read-only), E104 cannot encode
the rewrite, E105 changed on disk during the run, E106 not a regular file
(FIFO, device, socket: never opened), E107 --write through a symlink out of
the paths given, E108 symlink loop, E109 larger than --max-file-size, E110
--verify failed, E199 internal error (a dslc bug); warning W199: the
near-miss report of a file failed (its rewrites stand).  `dslc explain E107`
says more.  Only regular files are read; symlinked folders are not entered;
see docs/reliability.md.
"""


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/dslc/facts`, else `~/.cache/dslc/facts`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dslc", "facts")


def _size(text: str) -> int:
    """`--max-file-size`: bytes, or with a k/M/G suffix (powers of 1024); 0 = no limit."""
    units = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = raw[-1:] if raw[-1:] in ("k", "m", "g") else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 10M, 500k or 1048576, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return int(value * units[unit])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "apply",
        help="rewrite model source with rule packs (dry run by default)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="model files or directories (searched for *.py)")
    p.add_argument("--rules", action="append", metavar="FILE|DIR",
                   help="an .adr rule pack, or a directory of them (repeatable; "
                        "default: `rules` of [tool.dslc] in pyproject.toml)")
    p.add_argument("--select", action="append", metavar="PACK:RULE",
                   help="apply only this rule (repeatable; default: every rule of the packs)")
    p.add_argument("--ignore", action="append", metavar="PACK:RULE",
                   help="do not apply this rule (repeatable; PACK:RULE, PACK or RULE)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--diff", dest="mode", action="store_const", const="diff",
                     help="print a unified diff and change nothing (the default)")
    out.add_argument("--write", dest="mode", action="store_const", const="write",
                     help="edit the files in place, atomically, keeping their mode")
    out.add_argument("--patch-dir", metavar="DIR",
                     help="write one .patch per changed file into DIR (created if needed)")
    p.add_argument("--unsafe", action="store_true", default=None,
                   help="also apply rules declared `unsafe` (known to change numbers or not to "
                        "construct); by default they are left out and listed ([tool.dslc] unsafe = true)")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 when some safe rewrite applies (for CI and "
                        "pre-commit); with --diff also print the diff")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                   help="text: diff on stdout, summary on stderr; json: the report on stdout; "
                        "sarif: a SARIF 2.1.0 log on stdout (code scanning)")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None, metavar="N",
                   help="worker processes for analysis, matching and rewriting "
                        f"(default: `jobs` of [tool.dslc], else min(4, CPUs) = {default_jobs()})")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="skip paths matching GLOB (matched against the path relative to PATH, "
                        "its name and its folders; repeatable)")
    p.add_argument("--no-gitignore", dest="gitignore", action="store_false",
                   help="do not skip the files that .gitignore files ignore")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the caches (analysis facts, per-file results, loaded packs)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help=f"cache location: analysis facts, per-file results under results/, loaded rule packs under packs/ (default: {default_cache_dir()})")
    p.add_argument("--verify", action="store_true",
                   help="check each rewrite with `dslc verify` before emitting it; a rewrite "
                        "that fails is not written and the file is an error")
    p.add_argument("--max-file-size", type=_size, default=None, metavar="SIZE",
                   help="refuse (E109) source files larger than SIZE (bytes, or 500k, 10M; 0: no limit; "
                        "default 10M)")
    p.add_argument("--follow-symlinks-outside", action="store_true",
                   help="with --write, also rewrite the target of a symlink that points outside the "
                        "paths given (refused by default: E107)")
    p.add_argument("--force", action="store_true",
                   help="with --write, also replace read-only files and files in read-only folders "
                        "(refused by default: E103)")
    p.add_argument("--near-misses", action="store_true",
                   help="also report every place that holds a rule's anchors but got no rewrite, with "
                        "the reason (the pattern node, init argument or constraint that did not fit, or "
                        "the check that refused it): `file:line: near-miss[rule]: reason` on stderr, "
                        "`near_misses` in JSON")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="text mode: no notes on skipped matches and analysis warnings")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output (auto: on a terminal, unless NO_COLOR is set; "
                        "FORCE_COLOR forces it)")
    conf = p.add_mutually_exclusive_group()
    conf.add_argument("--config", metavar="PYPROJECT",
                      help="read [tool.dslc] from this file instead of the nearest pyproject.toml")
    conf.add_argument("--no-config", action="store_true",
                      help="ignore [tool.dslc] in pyproject.toml files")
    p.set_defaults(func=run, mode=None)
    return p


class _Progress:
    """A one-line `\\r` progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        self.stream.write(f"\rdslc apply [{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def _render_diagnostics(diags, sources) -> str:
    """`sources`: the rule files' text (`LoadResult.sources`) for the snippets."""
    from dslc.lang.diagnostics import render

    return render(list(diags), fmt="text", sources=sources).rstrip("\n") + "\n"


def _usage(message: str) -> int:
    print(f"dslc apply: error: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace):
    """Merge `[tool.dslc]` (dslc.config) under the flags: a flag given wins.

    Returns (settings namespace, None) or (None, usage error message).
    """
    from dslc import config

    try:
        if args.no_config:
            conf = config.Config()
        elif args.config:
            conf = config.load_config(args.config)
        else:
            conf = config.find_config(list(args.paths))
    except config.ConfigError as exc:
        return None, str(exc)
    out = argparse.Namespace(config=conf.path)
    out.rules = list(args.rules) if args.rules else list(conf.rules)
    out.select = list(args.select) if args.select is not None else list(conf.select)
    out.ignore = list(args.ignore) if args.ignore is not None else list(conf.ignore)
    out.exclude = list(args.exclude) if args.exclude is not None else list(conf.exclude)
    out.jobs = args.jobs or conf.jobs or default_jobs()
    out.cache_dir = args.cache_dir or conf.cache_dir or default_cache_dir()
    out.unsafe = bool(args.unsafe) if args.unsafe else bool(conf.unsafe)  # rules marked unsafe too
    if not out.rules:
        where = f" (and `rules` is not set in [tool.dslc] of {conf.path})" if conf.path else \
            " (or set `rules` in [tool.dslc] of pyproject.toml)"
        return None, f"no rule packs: give --rules FILE|DIR{where}"
    return out, None


class _UsageError(Exception):
    """`dslc apply: error: MESSAGE` on stderr, exit status 2."""


def run(args: argparse.Namespace) -> int:
    """1. check paths, options and [tool.dslc], 2. load the packs, 3. apply,
    4. print, 5. exit code."""
    from dslc.apply import driver

    try:
        mode, settings = _check(args)
        loaded = _load(settings, None if args.no_cache else settings.cache_dir)
    except _UsageError as exc:
        return _usage(str(exc))
    options = _apply_options(args, mode, settings)
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    try:
        result = driver.apply_paths(list(args.paths), loaded.packs, options, progress=progress,
                                    compiled=loaded.compiled)
    finally:
        if progress:
            progress.clear()
    _print(args, mode, result, loaded.packs)
    if result.errors:
        return 1
    if args.check and any(f.changed for f in result.files):
        return 1
    return 0


def _check(args: argparse.Namespace):
    """(mode, settings) once the flags, paths and [tool.dslc] make sense; _UsageError otherwise."""
    from dslc.apply import driver
    from dslc.output import display_path

    if args.check and (args.mode == "write" or args.patch_dir):
        raise _UsageError("--check changes nothing; it cannot be combined with --write or --patch-dir")
    mode = "patch" if args.patch_dir else (args.mode or "diff")
    settings, problem = _settings(args)
    if problem:
        raise _UsageError(problem)
    missing = [p for p in list(args.paths) + list(settings.rules) if not os.path.lexists(p)]
    if missing:  # absent, or behind a folder that cannot be searched
        from dslc.fileio import NO_SUCH_PATH, path_problem

        absent = [display_path(m) for m in missing if path_problem(m) in (None, f"{NO_SUCH_PATH}: {display_path(m)}")]
        others = [path_problem(m) for m in missing if display_path(m) not in absent]
        raise _UsageError("; ".join(([f"{NO_SUCH_PATH}: {', '.join(absent)}"] if absent else []) + others))
    if args.patch_dir:
        try:
            os.makedirs(args.patch_dir, exist_ok=True)
        except OSError as exc:
            raise _UsageError(f"--patch-dir {display_path(args.patch_dir)}: {exc.strerror or exc}") from None
    if args.verify and not driver.verify_available():
        raise _UsageError("--verify needs PyTorch, which is not installed: pip install 'dslc[verify]'")
    return mode, settings


def _load(settings: argparse.Namespace, cache_dir: str | None):
    """The packs of `settings.rules` (their diagnostics printed; through the
    pack cache in `cache_dir`, None: none); _UsageError when they have errors
    or leave no rule to apply."""
    from dslc.commands import packcache

    loaded = packcache.load_rules(list(settings.rules), list(settings.select), list(settings.ignore), cache_dir)
    diags = list(loaded.diagnostics)
    if diags:
        sys.stderr.write(_render_diagnostics(diags, loaded.sources))
    if any(d.is_error for d in diags):
        raise _UsageError("the rule packs have errors; nothing was applied")
    if not any(p.rules for p in loaded.packs):
        raise _UsageError("no rules to apply (empty packs, or --select/--ignore left none)")
    return loaded


def _apply_options(args: argparse.Namespace, mode: str, settings: argparse.Namespace):
    from dslc.apply import driver
    from dslc.fileio import DEFAULT_MAX_FILE_SIZE

    return driver.ApplyOptions(
        mode=mode,
        patch_dir=args.patch_dir,
        jobs=settings.jobs,
        excludes=tuple(settings.exclude),
        gitignore=args.gitignore,
        cache_dir=None if args.no_cache else settings.cache_dir,
        verify=args.verify,
        max_file_size=(DEFAULT_MAX_FILE_SIZE if args.max_file_size is None
                       else (args.max_file_size or None)),
        follow_symlinks_outside=args.follow_symlinks_outside,
        force=args.force,
        near_misses=args.near_misses,
        unsafe=settings.unsafe,  # the --unsafe flag or [tool.dslc] unsafe = true
    )


def _print(args: argparse.Namespace, mode: str, result, packs) -> None:
    """The report on stdout (diff, JSON or SARIF); notes, summary and what was written on stderr."""
    from dslc import color
    from dslc.apply import report as render
    from dslc import codes
    from dslc.output import write_json

    notes_out = ""
    if args.format == "json":
        write_json(render.render_json(result))
    elif args.format == "sarif":
        from dslc.apply import sarif

        write_json(sarif.render_sarif(result, packs))
    else:
        if mode == "diff" and (not args.check or args.mode == "diff"):
            diff = render.render_diff(result)
            sys.stdout.write(color.paint_diff(diff) if color.enabled(sys.stdout, args.color) else diff)
        sys.stdout.flush()
        notes_out += _text_notes(args, result)
    if result.removed_temp_files:
        n = len(result.removed_temp_files)
        notes_out += (f"note[{codes.I_TEMP_REMOVED}]: removed {n} temporary file{'s' * (n != 1)} left by an interrupted dslc run: "
                      f"{', '.join(result.removed_temp_files)}\n")
    if args.format != "text" and (result.missing_kernels or result.left_out):
        # Also tell a human watching the terminal; the JSON field carries the data.
        notes_out += render.render_notes(result, skipped=False, warnings=False)
    sys.stderr.write(color.paint_notes(notes_out) if color.enabled(sys.stderr, args.color) else notes_out)


def _text_notes(args: argparse.Namespace, result) -> str:
    """What `--format text` tells on stderr: notes, near misses, errors, summary, files written."""
    from dslc.apply import report as render
    from dslc.output import display_path

    notes_out = render.render_notes(result, skipped=not args.quiet, warnings=not args.quiet)
    notes_out += render.render_near_misses(result)
    notes_out += render.render_errors(result)
    if args.check:
        notes_out += "".join(f"would rewrite {render.diff_path(f)}\n" for f in result.files if f.changed)
    notes_out += render.render_summary(result)
    for f in result.files:
        if f.patch:
            notes_out += f"wrote {display_path(f.patch)}\n"
        elif f.written:
            notes_out += f"rewrote {display_path(f.found.path)}\n"
    return notes_out
