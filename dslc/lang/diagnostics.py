"""Diagnostics: the model and the renderer (rustc/ruff style, or JSON).

Text form, one block per diagnostic::

    rulepacks/conv.adr:12:27: error[ADR201]: unbound variable `$w` in target
       |
    12 |     torch.nn.Conv2d($c, $w) -> $y;
       |                         ^^ not bound in the source pattern
       = note: ...
    help: bind `$w` in the source pattern, or use a constant

The first line is greppable (`path:line:col: severity[CODE]: message`).
JSON form: a list of objects with file, line, col, end_line, end_col, code,
severity, message, help, notes and labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from dslc import codes
from dslc.match.ir import Span

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Label:
    span: Span
    message: str = ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    severity: str
    message: str
    span: Span | None
    labels: tuple[Label, ...] = ()  # the first one, if any, annotates `span`
    notes: tuple[str, ...] = ()
    help: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def sort_key(self) -> tuple:
        s = self.span
        if s is None:
            return ("", 0, 0, self.code)
        return (s.path, s.line, s.col, self.code)


def diag(code: str, message: str, span: Span | None, *, label: str = "",
         notes: Iterable[str] = (), help: str | None = None,
         severity: str | None = None, extra: Iterable[Label] = ()) -> Diagnostic:
    """Build a diagnostic with the registered default severity of `code`."""
    entry = codes.REGISTRY[code]
    labels = ((Label(span, label),) if span is not None else ()) + tuple(extra)
    return Diagnostic(code, severity or entry.severity, message, span, labels,
                      tuple(notes), help)


def count(diags: Iterable[Diagnostic]) -> tuple[int, int]:
    errors = warnings = 0
    for d in diags:
        if d.is_error:
            errors += 1
        else:
            warnings += 1
    return errors, warnings


def render(diags: Iterable[Diagnostic], fmt: str = "text",
           sources: Mapping[str, str] | None = None) -> str:
    """Render diagnostics as text (with source snippets) or as JSON.

    `sources` maps a path to its text (`LoadResult.sources`); a diagnostic
    in a path not in it is shown without a snippet.  Nothing is read here.
    """
    diags = list(diags)
    if fmt == "json":
        return json.dumps([to_json(d) for d in diags], indent=2, ensure_ascii=False)
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    lines = _Lines(sources or {})
    return "\n".join(_render_one(d, lines) for d in diags)


def to_json(d: Diagnostic) -> dict:
    s = d.span
    return {
        "file": s.path if s else None,
        "line": s.line if s else None,
        "col": s.col if s else None,
        "end_line": s.end_line if s else None,
        "end_col": s.end_col if s else None,
        "code": d.code,
        "severity": d.severity,
        "message": d.message,
        "help": d.help,
        "notes": list(d.notes),
        "labels": [
            {"line": l.span.line, "col": l.span.col, "end_line": l.span.end_line,
             "end_col": l.span.end_col, "message": l.message}
            for l in d.labels
        ],
    }


class _Lines:
    """Source lines by path, split on demand."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self._sources = dict(sources)
        self._split: dict[str, list[str]] = {}

    def get(self, path: str, line: int) -> str | None:
        if path not in self._split:
            text = self._sources.get(path)
            self._split[path] = text.split("\n") if text is not None else []
        rows = self._split[path]
        if 1 <= line <= len(rows):
            return rows[line - 1].rstrip("\r")
        return None


# A snippet line longer than this is cut around the caret.
_MAX_WIDTH = 120


def _render_one(d: Diagnostic, lines: _Lines) -> str:
    s = d.span
    where = f"{s.path}:{s.line}:{s.col}: " if s else ""
    out = [f"{where}{d.severity}[{d.code}]: {d.message}"]
    labels = d.labels or ((Label(s, ""),) if s else ())
    shown = [l for l in labels if lines.get(l.span.path, l.span.line) is not None]
    # Snippets in line order (those of the diagnostic's own file first), as the file reads.
    shown.sort(key=lambda l: (s is not None and l.span.path != s.path, l.span.path, l.span.line, l.span.col))
    if shown:
        width = max(len(str(l.span.line)) for l in shown)
        pad = " " * width
        out.append(f"{pad} |")
        for label in shown:
            sp = label.span
            text = lines.get(sp.path, sp.line) or ""
            text = text.replace("\t", " ")
            start = max(sp.col - 1, 0)
            end = sp.end_col - 1 if sp.end_line == sp.line else len(text)
            end = max(end, start + 1)
            # Long lines (minified or generated input): show a window.
            offset = 0
            if len(text) > _MAX_WIDTH:
                offset = max(0, start - 40)
                text = ("..." if offset else "") + text[offset:offset + _MAX_WIDTH]
                shift = 3 if offset else 0
                start, end = start - offset + shift, min(end - offset + shift, len(text) + 1)
            carets = "^" * max(1, min(end, len(text) + 1) - start)
            out.append(f"{sp.line:>{width}} | {text}".rstrip())
            tail = f" {label.message}" if label.message else ""
            out.append(f"{pad} | {' ' * start}{carets}{tail}")
        for note in d.notes:
            out.append(f"{pad} = note: {note}")
    else:
        for note in d.notes:
            out.append(f"  = note: {note}")
    if d.help:
        out.append(f"help: {d.help}")
    return "\n".join(out)
