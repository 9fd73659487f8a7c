"""Rule source files: text, line table, offset -> line:col, line text.

Decoding is strict: a file that is not UTF-8 text (invalid bytes, NUL bytes,
a byte-order mark is accepted and dropped) yields a reason instead of text, so
that the caller can turn it into a located diagnostic.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from dslc.match.ir import Span

# Rule files are small; anything larger is a mistake (or an attack on the
# parser) and is refused with a diagnostic before lexing.
MAX_SOURCE_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why bytes are not rule text: `offset` is the first bad byte."""

    message: str
    offset: int
    line: int
    col: int


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str
    _starts: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        find = self.text.find
        pos = find("\n")
        while pos >= 0:
            starts.append(pos + 1)
            pos = find("\n", pos + 1)
        object.__setattr__(self, "_starts", tuple(starts))

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, col) of a character offset (clamped to the text)."""
        offset = max(0, min(offset, len(self.text)))
        index = bisect.bisect_right(self._starts, offset) - 1
        return index + 1, offset - self._starts[index] + 1

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, without its newline ('' if out of range)."""
        if line < 1 or line > len(self._starts):
            return ""
        start = self._starts[line - 1]
        end = self._starts[line] - 1 if line < len(self._starts) else len(self.text)
        return self.text[start:end].rstrip("\r")

    def span(self, start: int, end: int) -> Span:
        line, col = self.position(start)
        end_line, end_col = self.position(end)
        return Span(self.path, line, col, end_line, end_col)


_LONE_CR = re.compile(r"\r(?!\n)")


def normalize_newlines(text: str) -> str:
    """Old Mac line ends (a lone `\r`) become `\n`, as Python's universal
    newlines read them; one character for one, so offsets stay the same.
    Without it a CR-only file is one line: its first `#` comment runs to the
    end of the file and the parser reports a missing pack header."""
    return _LONE_CR.sub("\n", text) if "\r" in text else text


def decode(data: bytes) -> str | DecodeError:
    """Decode rule-file bytes.

    1. Drop a UTF-8 byte-order mark.
    2. Refuse NUL bytes (a binary file), pointing at the first one.
    3. Decode strictly as UTF-8, pointing at the first invalid byte.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nul = data.find(b"\x00")
    if nul >= 0:
        return _located("binary file: NUL byte", data, nul)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _located(f"not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                        data, exc.start)


def _located(message: str, data: bytes, offset: int) -> DecodeError:
    before = re.sub(rb"\r(?!\n)", b"\n", data[:offset + 1])[:offset]
    line = before.count(b"\n") + 1
    col = offset - (before.rfind(b"\n") + 1) + 1
    return DecodeError(message, offset, line, col)
