"""Rendering an apply `Report`: unified diffs, the JSON contract, the text summary.

Pure functions from `dslc.apply.results` values to text; the command prints them.
The JSON shape is docs/report-format.md (`dslc`, `rules`, `files_scanned`,
`seconds`, `matches`, `errors` are the core; everything else is an added
field, never a changed one).
"""

from __future__ import annotations

import difflib
import json
import os

from dslc import __version__
from dslc import codes
from dslc.fileio import display_path, git_top, source_lines
from dslc.apply.results import FileResult, Report


def diff_path(result: FileResult) -> str:
    """The file's name in diff headers, such that `patch -p1` and `git apply`
    accept it (no `..`, no leading `/`).

    1. A file under the current folder: its path relative to it, so the
       patch applies from the folder dslc ran in.
    2. Otherwise (`../models/x.py`, `/tmp/x.py`): its path relative to the
       top of the git work tree that holds it (apply from there), else to
       the folder of the command-line PATH it was found under.
    """
    return display_path(_diff_path(result))


def _diff_path(result: FileResult) -> str:
    path = os.path.abspath(result.found.path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        rel = None
    if rel is not None and not rel.startswith(os.pardir):
        return rel.replace(os.sep, "/")
    top = git_top(os.path.dirname(path))
    if top is not None:
        return os.path.relpath(path, top).replace(os.sep, "/")
    arg = os.path.abspath(result.found.arg)
    base = arg if os.path.isdir(arg) else os.path.dirname(arg)
    rel = os.path.relpath(path, base) if path.startswith(base + os.sep) else os.path.basename(path)
    return rel.replace(os.sep, "/")


def file_diff(result: FileResult, *, bom: bool = False) -> str:
    """A unified diff (3 lines of context) from the original to the rewritten text.

    Lines without a final newline get git's `\\ No newline at end of file`
    marker so that `patch` and `git apply` accept the output.  With `bom`,
    the first line carries the file's byte-order mark, as on disk (for
    patch files, which must match the file's bytes).
    """
    if not result.changed:
        return ""
    name = diff_path(result)
    prefix = "\ufeff" if bom else ""
    old = source_lines(prefix + result.original, keepends=True)
    new = source_lines(prefix + result.new_source, keepends=True)
    out = []
    for line in difflib.unified_diff(old, new, f"a/{name}", f"b/{name}"):
        if line.startswith(("---", "+++")) and not line.endswith("\n"):
            line += "\n"
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)


def summary_counts(report: Report) -> dict[str, dict[str, int]]:
    """Per rule (every selected rule, in pack order): found, applied, skipped,
    suppressed (found = applied + skipped + suppressed; a suppressed match is
    `skipped` with code S406 in the match list); with near misses asked for,
    also `near_misses` (the unmatched places)."""
    keys = ("found", "applied", "skipped", "suppressed") + (("near_misses",) if report.near_misses is not None else ())
    counts = {r: dict.fromkeys(keys, 0) for r in report.rules}
    for m in report.matches:
        c = counts.setdefault(m.rule, dict.fromkeys(keys, 0))
        c["found"] += 1
        if m.status == "applied":
            c["applied"] += 1
        elif getattr(m, "code", None) == codes.S_SUPPRESSED:
            c["suppressed"] += 1
        else:
            c["skipped"] += 1
    for n, rules in group_near_misses(report.near_misses or ()):
        if n.kind == "unmatched":
            for rule in rules:  # a rule's near misses at one place with one reason count once
                counts.setdefault(rule, dict.fromkeys(keys, 0))["near_misses"] += 1
    return counts


def _error_json(e) -> dict:
    return {"file": e.file, "line": e.line, "code": e.code, "message": e.message}


def to_json(report: Report) -> dict:
    """The report as the JSON contract's object (report.md) plus added fields."""
    return {
        "dslc": __version__,
        "rules": list(report.rules),
        "files_scanned": report.files_scanned,
        "seconds": round(report.seconds, 3),
        "matches": [
            {
                "rule": m.rule,
                "file": m.file,
                "class": m.class_name,
                "lines": list(m.lines),
                "status": m.status,
                "reason": m.reason,
                "code": m.code,
                "function": m.function,
            }
            for m in report.matches
        ],
        "errors": [_error_json(e) for e in report.errors],
        # Added fields.
        "mode": report.mode,
        "files_changed": [f.found.display for f in report.files if f.changed],
        "files_written": [f.found.display for f in report.files if f.written],
        "patches": [f.patch for f in report.files if f.patch],
        "summary": summary_counts(report),
        "suppressed": sum(1 for m in report.matches if m.code == codes.S_SUPPRESSED),
        "warnings": [_error_json(w) for w in report.warnings],
        **({} if report.near_misses is None else {"near_misses": [
            {"rule": n.rule, "file": n.file, "class": n.class_name, "line": n.line, "reason": n.reason,
             "function": n.function, "kind": n.kind, "code": n.code, "rules": list(rules)}
            for n, rules in group_near_misses(report.near_misses)
        ]}),
        "missing_kernels": [
            {
                "pack": k.pack,
                "package": k.package,
                "module": k.module,
                "version": k.version,
                "install": k.install,
                "reason": k.reason,
                "rules": list(k.rules),
                "applied": k.applied,
                "guarded": getattr(k, "guarded", False),
            }
            for k in report.missing_kernels
        ],
        "left_out": [{"rule": name, "safety": "unsafe", "reason": why}
                     for name, why in getattr(report, "left_out", ())],
    }


def render_json(report: Report) -> str:
    return json.dumps(to_json(report), indent=2) + "\n"


def render_diff(report: Report) -> str:
    return "".join(file_diff(f) for f in report.files if f.changed)


def render_errors(report: Report) -> str:
    """`file:line: error[CODE]: message`, one per line (greppable, editor-clickable)."""
    lines = []
    for e in report.errors:
        where = f"{e.file}:{e.line}" if e.line else e.file
        lines.append(f"{where}: error[{e.code}]: {e.message}\n")
    return "".join(lines)


def render_notes(report: Report, *, skipped: bool = True, warnings: bool = True) -> str:
    """Skipped matches, analysis warnings and missing kernels, for stderr."""
    lines = []
    if skipped:
        for m in report.matches:
            if m.status == "skipped":
                first = m.lines[0] if m.lines else 0
                where = f"{m.file}:{first}" if first else m.file
                cls = f" in {m.class_name}" if m.class_name else ""
                code = f"[{m.code}]" if m.code else ""
                lines.append(f"{where}: skipped{code} {m.rule}{cls}: {m.reason or 'no reason given'}\n")
    if warnings:
        for w in report.warnings:
            where = f"{w.file}:{w.line}" if w.line else w.file
            level = "note" if w.code.startswith("I") else "warning"
            lines.append(f"{where}: {level}[{w.code}]: {w.message}\n")
    for k in report.missing_kernels:
        if not k.applied:  # no rewrite of this run needs it: nothing to act on
            continue
        need = f" ({k.applied} {'rewrites in this run import' if k.applied != 1 else 'rewrite in this run imports'} it)" if k.applied else ""
        hint = f"; install it with: {k.install}" if k.install else ""
        if getattr(k, "guarded", False):
            hint = " (guarded: without it the rewritten code runs the original computation)" + hint
        lines.append(f"note[{codes.I_MISSING_KERNEL}]: pack `{k.pack}` requires {k.package}"
                     f"{' ' + k.version if k.version else ''}: {k.reason}{need}{hint}\n")
    for name, _ in getattr(report, "left_out", ()):
        lines.append(f"note[{codes.I_UNSAFE_LEFT_OUT}]: left out unsafe rule {name} (known to change numbers or not to construct; "
                     f"--unsafe applies it)\n")
    return "".join(lines)


def group_near_misses(near) -> list[tuple]:
    """(the first near miss, the names of every rule with it) per place and
    reason: near misses of one file, class, function and line with the same
    kind, code and reason are one entry, whatever the rules (the spellings
    of one rewrite in a generated pack fail alike), in the order given."""
    groups: dict[tuple, tuple] = {}
    for n in near:
        key = (n.file, n.class_name, n.function, n.line, n.kind, n.code, n.reason)
        if key in groups:
            groups[key][1].append(n.rule)
        else:
            groups[key] = (n, [n.rule])
    return [(n, tuple(dict.fromkeys(rules))) for n, rules in groups.values()]


def render_near_misses(report: Report) -> str:
    """`file:line: near-miss[rule]: reason`, grouped per file (files in run
    order); one line per place and reason (`near-miss[rule +N more rules]`)."""
    if not report.near_misses:
        return ""
    lines = []
    for n, rules in group_near_misses(report.near_misses):
        where = f"{n.file}:{n.line}" if n.line else n.file
        cls = f" in {n.class_name}" if n.class_name else ""
        how = "skipped: " if n.kind == "skipped" else ""
        code = f" [{n.code}]" if n.code else ""
        more = f" +{len(rules) - 1} more rule{'s' if len(rules) != 2 else ''}" if len(rules) > 1 else ""
        lines.append(f"{where}: near-miss[{n.rule}{more}]{cls}: {how}{n.reason}{code}\n")
    return "".join(lines)


# Up to this many selected rules, the summary table shows every rule.
SUMMARY_ALL_ROWS = 20


def render_summary(report: Report) -> str:
    """The per-rule table (found / applied / skipped) and a one-line total."""
    counts = summary_counts(report)
    width = max([len("rule")] + [len(r) for r in counts])
    # The `suppressed` column appears when a `# dslc: ignore` comment held a match back.
    sup = any(c["suppressed"] for c in counts.values())
    near = report.near_misses is not None
    extra = (f"  {'suppressed':>10}" if sup else "") + ("  near-miss" if near else "")
    rows = [f"{'rule':<{width}}  {'found':>5}  {'applied':>7}  {'skipped':>7}{extra}"]
    tot = {"found": 0, "applied": 0, "skipped": 0, "suppressed": 0, "near_misses": 0}

    def row(name, c):
        return (f"{name:<{width}}  {c['found']:>5}  {c['applied']:>7}  {c['skipped']:>7}"
                + (f"  {c['suppressed']:>10}" if sup else "")
                + (f"  {c['near_misses']:>9}" if near else ""))

    # A large selection (a generated pack has hundreds of rules) lists only the
    # rules that found something; a small one lists every rule, zeros included.
    quiet = len(counts) > SUMMARY_ALL_ROWS
    hidden = 0
    for rule, c in counts.items():
        if quiet and not any(c.values()):
            hidden += 1
        else:
            rows.append(row(rule, c))
        for k in c:
            tot[k] += c[k]
    rows.append(row("total", tot))
    if hidden:
        rows.append(f"({hidden} other rule{'s' if hidden != 1 else ''} found nothing; --format json lists every rule)")
    changed = sum(1 for f in report.files if f.changed)
    verb = {"diff": "would change", "write": "changed", "patch": "patched"}[report.mode]
    if report.mode == "write":
        changed = sum(1 for f in report.files if f.written)
    elif report.mode == "patch":  # only patches actually written (a full disk is an E103, not a patch)
        changed = sum(1 for f in report.files if f.patch)
    n_err = len(report.errors)
    rows.append(
        f"{report.files_scanned} file{'s' if report.files_scanned != 1 else ''} scanned in "
        f"{report.seconds:.1f} s: {verb} {changed}, {n_err} error{'s' if n_err != 1 else ''}"
    )
    return "\n".join(rows) + "\n"
