"""Minimal text edits over the original source (ruff's `Edit`, black's safety).

An `Edit` replaces the characters `[start, end)` of the original text with
`text`.  A rewrite is a set of non-overlapping edits applied right to left, so
that every character outside the edited ranges stays byte-identical
(comments, blank lines, formatting, newline style).

Positions from the stdlib `ast` are (1-based line, 0-based UTF-8 *byte*
column); `SourceMap` converts them to string offsets of the original text.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from bisect import bisect_right
from dataclasses import dataclass

from dslc.fileio import source_lines


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace `source[start:end]` (string offsets) with `text`."""

    start: int
    end: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad edit range {self.start}..{self.end}")


class EditConflict(ValueError):
    """Two edits overlap: the rewrite is ill-formed and must not be applied."""


# The indentation of a line (as `source_lines` splits: at LF, CRLF or CR)
# whose first other character is no line end and no `#`.
_INDENT = re.compile(r"(?:\A|(?<=\n)|(?<=\r)(?!\n))([ \t]+)[^ \t\r\n#]")
_INDENT_LF = re.compile(r"^([ \t]+)[^ \t\r\n#]", re.M)  # the same for a text without CR (4x faster)


class SourceMap:
    """Offsets, lines and indentation of one source text.

    1. Split the text into lines keeping their terminators, where the
       tokenizer does (`fileio.source_lines`: not at a form feed or U+2028).
    2. Remember the string offset where each line starts.
    3. Convert (line, byte column) to a string offset by decoding the line's
       UTF-8 prefix (columns of the stdlib `ast` count bytes).
    """

    def __init__(self, text: str):
        self.text = text
        self.lines = source_lines(text, keepends=True)
        if not self.lines or self.lines[-1].endswith(("\n", "\r")):
            self.lines.append("")
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line)
        self.newline = detect_newline(text)

    def line_text(self, lineno: int) -> str:
        """The text of a 1-based line, without its terminator."""
        return self.lines[lineno - 1].rstrip("\r\n")

    def offset(self, lineno: int, col_bytes: int) -> int:
        line = self.lines[lineno - 1]
        prefix = line.encode("utf-8")[:col_bytes].decode("utf-8", errors="ignore")
        return self.starts[lineno - 1] + len(prefix)

    def line_start(self, lineno: int) -> int:
        return self.starts[lineno - 1]

    def line_end(self, lineno: int) -> int:
        """Offset just after the line's terminator (start of the next line)."""
        return self.starts[lineno - 1] + len(self.lines[lineno - 1])

    def indent_of(self, lineno: int) -> str:
        line = self.line_text(lineno)
        return line[: len(line) - len(line.lstrip(" \t"))]

    def span_text(self, span: tuple[int, int, int, int]) -> str:
        lo, col, hi, end_col = span
        return self.text[self.offset(lo, col) : self.offset(hi, end_col)]

    def node_span(self, node: ast.AST) -> tuple[int, int]:
        return (
            self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset),
        )

    def indent_unit(self, tree: ast.AST | None = None, starts=()) -> str:
        """The file's indentation step: the smallest positive indent seen, else 4 spaces.

        Blank lines, comments and (given the file's `tree`) the lines inside a
        multi-line string do not count: a docstring's two-space example is
        its value, not the file's style.  `starts`: lines where statements
        start, never inside a string; when one of them has the smallest
        indent, the strings need not be looked at.
        """
        best = self._smallest_indent(frozenset())
        if tree is None or best is None or any(self.indent_of(n) == best for n in starts):
            return best or "    "
        return self._smallest_indent(multiline_string_lines(tree)) or "    "

    def _smallest_indent(self, skip: frozenset[int]) -> str | None:
        """The smallest positive indent (the first of that length) of a line
        not in `skip` that holds more than blanks and is no comment."""
        if not skip:
            found = (_INDENT if "\r" in self.text else _INDENT_LF).findall(self.text)
            return min(found, key=len, default=None)
        best: str | None = None
        for n, raw in enumerate(self.lines, 1):
            if n in skip:
                continue
            line = raw.rstrip("\r\n")
            stripped = line.lstrip(" \t")
            if not stripped or stripped.startswith("#"):
                continue
            indent = line[: len(line) - len(stripped)]
            if indent and (best is None or len(indent) < len(best)):
                best = indent
        return best


def multiline_string_lines(tree: ast.AST) -> frozenset[int]:
    """1-based lines that begin inside a string literal spanning lines."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno and node.end_lineno > node.lineno:
            out.update(range(node.lineno + 1, node.end_lineno + 1))
    return frozenset(out)


def detect_newline(text: str) -> str:
    """The file's newline style: the first terminator found, `\\n` by default."""
    match = re.search(r"\r\n|\n|\r", text)
    return match.group(0) if match else "\n"


def apply_edits(text: str, edits: list[Edit] | tuple[Edit, ...]) -> str:
    """Apply non-overlapping edits right to left.

    1. Sort by (start, end); identical pure insertions at one offset keep
       their given order.
    2. Reject overlaps (an insertion at the boundary of a replacement is not
       an overlap).
    3. Splice from the right so earlier offsets stay valid.
    """
    ordered = sorted(enumerate(edits), key=lambda item: (item[1].start, item[1].end, item[0]))
    previous_end = -1
    for _, edit in ordered:
        if edit.end > len(text):
            raise EditConflict(f"edit {edit.start}..{edit.end} runs past the end of the text")
        if edit.start < previous_end:
            raise EditConflict(f"edits overlap at offset {edit.start}")
        previous_end = max(previous_end, edit.end)
    result = text
    for _, edit in reversed(ordered):
        result = result[: edit.start] + edit.text + result[edit.end :]
    return result


def untouched_regions_identical(original: str, new: str, edits: list[Edit] | tuple[Edit, ...]) -> bool:
    """Check that every character outside the edits is unchanged in `new`.

    1. Walk the edits in order, keeping the shift the earlier ones caused.
    2. Each gap between edits must appear, shifted, unchanged in `new`.
    """
    ordered = sorted(enumerate(edits), key=lambda item: (item[1].start, item[1].end, item[0]))
    shift = 0
    cursor = 0
    for _, edit in ordered:
        gap = original[cursor : edit.start]
        if new[cursor + shift : edit.start + shift] != gap:
            return False
        shift += len(edit.text) - (edit.end - edit.start)
        cursor = edit.end
    return new[cursor + shift :] == original[cursor:] and len(new) == len(original) + shift


def parse_error(text: str) -> str | None:
    """None when `text` parses as Python, else a short located message."""
    try:
        ast.parse(text)
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # null bytes
        return str(exc)
    return None


_NEWLINE = re.compile(r"\r\n|\r|\n")  # what the tokenizer counts as a line end (not \f, \v, \u2028)


def statement_starts(text: str, tree: ast.Module) -> list[int]:
    """Offsets in `text` (which parsed as `tree`) where the tokenizer is in
    its initial state: 0, and the start of the line of each top-level
    statement that begins a fresh logical line.

    A statement counts when its first token (its first decorator's `@`)
    is at column 0 of its line and the line before does not end with a
    backslash: no bracket, string or continuation is open there, and the
    indentation is 0.  Statements that share a line, or start after a
    `;` or a continuation, are left out (their text joins the block of
    the statement before).  Increasing offsets.
    """
    line_starts = [0]
    line_starts.extend(m.end() for m in _NEWLINE.finditer(text))
    out = [0]
    for stmt in tree.body:
        decorators = getattr(stmt, "decorator_list", None)
        line = decorators[0].lineno if decorators else stmt.lineno
        start = line_starts[line - 1]
        if decorators:
            if text[start : start + 1] != "@":
                continue
        elif stmt.col_offset:
            continue
        before = text[max(0, start - 3) : start].rstrip("\r\n")
        if start <= out[-1] or before.endswith("\\"):
            continue
        out.append(start)
    return out


def edited_blocks_parse(original: str, new: str, edits, starts: list[int]) -> bool:
    """True when `new` is proven to parse by parsing only the top-level
    blocks that hold an edit; False when that does not prove it (then
    parse the whole text for the answer and its message).

    `original` parses, `new` is `original` with `edits` applied and
    byte-identical outside them (`untouched_regions_identical`), and
    `starts` are `statement_starts(original, ...)`: the original is cut
    there into blocks, each a sequence of whole top-level statements
    (with the comments after them), starting in the tokenizer's initial
    state.  The blocks an edit touches (an insertion at a cut goes to the
    block after it) are merged into runs, and each run's new text is
    parsed alone.  When every run parses, and every run but the file's
    last ends with a line end, `new` is the untouched blocks (each a whole
    statement sequence of the original, starting and ending clean) and
    the runs (each a statement sequence ending clean, since it parsed
    alone) in order: module statements in a row, which parse as one
    module (`ast.parse` checks no context across top-level statements:
    not even `from __future__` placement).
    """
    bounds = list(starts) + [len(original)]
    last_block = len(starts) - 1
    spans = []
    for edit in edits:
        lo = min(bisect_right(bounds, edit.start) - 1, last_block)
        hi = min(bisect_right(bounds, max(edit.start, edit.end - 1)) - 1, last_block)
        spans.append((lo, hi))
    runs: list[list[int]] = []
    for lo, hi in sorted(spans):
        if runs and lo <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], hi)
        else:
            runs.append([lo, hi])

    def shift(offset: int) -> int:  # how far the edits before `offset` moved it
        return sum(len(e.text) - (e.end - e.start) for e in edits if e.start < offset)

    for lo, hi in runs:
        a = bounds[lo] + shift(bounds[lo])
        b = len(new) if hi == last_block else bounds[hi + 1] + shift(bounds[hi + 1])
        part = new[a:b]
        if hi != last_block and not part.endswith(("\n", "\r")):
            return False
        try:
            ast.parse(part)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False
    return True


def string_interior_lines(text: str) -> frozenset[int]:
    """0-based indices of the lines of `text` (whole statements or a
    bracketed expression) that begin inside a multi-line string literal.

    Re-indenting must leave those lines alone: their leading spaces are
    part of the string's value.  Text the tokenizer cannot read gives the
    empty set (nothing is known to be inside a string).
    """
    if '"""' not in text and "'''" not in text and "\\\n" not in text and "\\\r" not in text:
        return frozenset()  # no literal can span lines
    out: set[int] = set()
    starts: list[int] = []  # open f-strings (Python 3.12+ tokenizes their parts)
    fstart, fend = getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_END", -1)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(text)).readline):
            if tok.type == fstart:
                starts.append(tok.start[0])
            elif tok.type == fend and starts:
                out.update(range(starts.pop(), tok.end[0]))
            elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                out.update(range(tok.start[0], tok.end[0]))
    except (tokenize.TokenError, SyntaxError):
        return frozenset()
    return frozenset(out)


def reindent(text: str, old: str, new: str, *, first: bool = True) -> str:
    """`text` with the indentation `old` swapped for `new` on every line that
    starts with it (the first line too unless `first=False`); lines inside a
    multi-line string keep their spaces (they are its value), and line ends
    are kept as they are."""
    inside = string_interior_lines(text)
    return "".join(new + line[len(old):] if (i or first) and line.startswith(old) and i not in inside else line
                   for i, line in enumerate(source_lines(text, keepends=True)))


def indent_lines(text: str, unit: str) -> str:
    """`text` one `unit` deeper (blank lines as they are); lines inside a
    multi-line string keep their spaces (they are its value)."""
    inside = string_interior_lines(text)
    return "".join(unit + line if line.strip() and i not in inside else line
                   for i, line in enumerate(source_lines(text, keepends=True)))
