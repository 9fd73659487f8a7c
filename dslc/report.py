"""Rendering an apply `Report`: unified diffs, the JSON contract, the text summary.

Pure functions from `dslc.apply` values to text; the command prints them.
The JSON shape is /work/shared/spec/report.md (`dslc`, `rules`,
`files_scanned`, `seconds`, `matches`, `errors`); everything else here is an
added field, never a changed one.
"""

from __future__ import annotations

import difflib
import json
import os

from dslc import __version__
from dslc.apply import FileResult, Report


def diff_path(result: FileResult) -> str:
    """The file's name in diff headers: as reachable from the current directory.

    Relative command-line paths give relative names, so `patch -p1` /
    `git apply` run from the same directory find the files; absolute ones lose
    their leading `/` (the `a/` prefix must be followed by a relative path).
    """
    from dslc.fileio import display_path

    path = display_path(os.path.normpath(result.found.path))
    if os.path.isabs(path):
        try:
            rel = os.path.relpath(path)
            if not rel.startswith(".."):
                path = rel
        except ValueError:  # another drive on Windows
            pass
    return path.replace(os.sep, "/").lstrip("/")


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
    old = (prefix + result.original).splitlines(keepends=True)
    new = (prefix + result.new_source).splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(old, new, f"a/{name}", f"b/{name}"):
        if line.startswith(("---", "+++")) and not line.endswith("\n"):
            line += "\n"
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)


def summary_counts(report: Report) -> dict[str, dict[str, int]]:
    """Per rule (every selected rule, in pack order): found, applied, skipped;
    with near misses asked for, also `near_misses` (the unmatched places)."""
    keys = ("found", "applied", "skipped") + (("near_misses",) if report.near_misses is not None else ())
    counts = {r: dict.fromkeys(keys, 0) for r in report.rules}
    for m in report.matches:
        c = counts.setdefault(m.rule, dict.fromkeys(keys, 0))
        c["found"] += 1
        c["applied" if m.status == "applied" else "skipped"] += 1
    for n in report.near_misses or ():
        if n.kind == "unmatched":
            counts.setdefault(n.rule, dict.fromkeys(keys, 0))["near_misses"] += 1
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
        "warnings": [_error_json(w) for w in report.warnings],
        **({} if report.near_misses is None else {"near_misses": [
            {"rule": n.rule, "file": n.file, "class": n.class_name, "line": n.line, "reason": n.reason,
             "function": n.function, "kind": n.kind, "code": n.code}
            for n in report.near_misses
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
            }
            for k in report.missing_kernels
        ],
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
                lines.append(f"{where}: skipped {m.rule}{cls}: {m.reason or 'no reason given'}\n")
    if warnings:
        for w in report.warnings:
            where = f"{w.file}:{w.line}" if w.line else w.file
            level = "note" if w.code.startswith("I") else "warning"
            lines.append(f"{where}: {level}[{w.code}]: {w.message}\n")
    for k in report.missing_kernels:
        need = f" ({k.applied} {'rewrites in this run import' if k.applied != 1 else 'rewrite in this run imports'} it)" if k.applied else ""
        hint = f"; install it with: {k.install}" if k.install else ""
        lines.append(f"note: pack `{k.pack}` requires {k.package}"
                     f"{' ' + k.version if k.version else ''}: {k.reason}{need}{hint}\n")
    return "".join(lines)


def render_near_misses(report: Report) -> str:
    """`file:line: near-miss[rule]: reason`, grouped per file (files in run order)."""
    if not report.near_misses:
        return ""
    lines = []
    for n in report.near_misses:
        where = f"{n.file}:{n.line}" if n.line else n.file
        cls = f" in {n.class_name}" if n.class_name else ""
        how = "skipped: " if n.kind == "skipped" else ""
        code = f" [{n.code}]" if n.code else ""
        lines.append(f"{where}: near-miss[{n.rule}]{cls}: {how}{n.reason}{code}\n")
    return "".join(lines)


def render_summary(report: Report) -> str:
    """The per-rule table (found / applied / skipped) and a one-line total."""
    counts = summary_counts(report)
    width = max([len("rule")] + [len(r) for r in counts])
    near = report.near_misses is not None
    rows = [f"{'rule':<{width}}  {'found':>5}  {'applied':>7}  {'skipped':>7}" + ("  near-miss" if near else "")]
    tot = {"found": 0, "applied": 0, "skipped": 0, "near_misses": 0}
    for rule, c in counts.items():
        rows.append(f"{rule:<{width}}  {c['found']:>5}  {c['applied']:>7}  {c['skipped']:>7}"
                    + (f"  {c['near_misses']:>9}" if near else ""))
        for k in c:
            tot[k] += c[k]
    rows.append(f"{'total':<{width}}  {tot['found']:>5}  {tot['applied']:>7}  {tot['skipped']:>7}"
                + (f"  {tot['near_misses']:>9}" if near else ""))
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
