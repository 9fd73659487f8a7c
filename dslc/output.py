"""The one writer every command prints through: output never fails on encoding.

* `setup()` (called first by `dslc.cli.main`) switches stdout and stderr to
  the `dslc-escape` error handler: a character the terminal's encoding cannot
  show (`→` under `PYTHONIOENCODING=ascii`, any non-ASCII diff) is written as
  a backslash escape (`\\u2192`), as `errors="backslashreplace"` does, and the
  undecodable bytes of a file name (kept by Python as surrogate escapes) as
  the bytes they were (`\\xff`), never as an exception.
* `write_json(text)` writes a JSON document as UTF-8 whatever the terminal
  takes, after turning undecodable name bytes inside its strings into the
  same `\\xNN` text (so the document stays valid UTF-8 and valid JSON).
* `display_path` (from `dslc.fileio`) makes file names printable and one line.
"""

from __future__ import annotations

import codecs
import json
import re
import sys

from dslc.fileio import display_path

__all__ = ["setup", "write_json", "display_path", "escape_text", "ERRORS"]

ERRORS = "dslc-escape"


def _escape_char(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte the file system name held, undecodable in the locale
        return f"\\x{o - 0xDC00:02x}"
    if o <= 0xFF:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _handler(exc: UnicodeError):
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return "".join(_escape_char(c) for c in exc.object[exc.start:exc.end]), exc.end


codecs.register_error(ERRORS, _handler)


def escape_text(text: str, encoding: str = "utf-8") -> str:
    """`text` as `encoding` can hold it, escaped the way the streams escape it."""
    return text.encode(encoding, ERRORS).decode(encoding)


def setup(streams=None) -> None:
    """Make the standard streams (or `streams`) escape what they cannot encode."""
    for stream in streams if streams is not None else (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        try:
            reconfigure(errors=ERRORS)
        except (ValueError, OSError, TypeError):  # a closed or exotic stream: leave it
            pass


_SURROGATE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89a-f][0-9a-f]{2})", re.IGNORECASE)


def _clean(value):
    if isinstance(value, str):
        return display_path(value) if any("\ud800" <= c <= "\udfff" for c in value) else value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def clean_json(text: str) -> str:
    """`text` (a JSON document) with lone surrogates in its strings shown as `\\xNN` text."""
    if not _SURROGATE_ESCAPE.search(text) and not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return escape_text(text)
    indent = 2 if "\n " in text else None
    return json.dumps(_clean(value), indent=indent, ensure_ascii=False) + ("\n" if text.endswith("\n") else "")


def write_json(text: str, stream=None) -> None:
    """Write a JSON document (adding a final newline when missing) as UTF-8."""
    stream = stream or sys.stdout
    text = clean_json(text)
    if not text.endswith("\n"):
        text += "\n"
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("_", "-")
    buffer = getattr(stream, "buffer", None)
    if encoding in ("utf-8", "utf8") or buffer is None:
        stream.write(text)
        return
    stream.flush()
    buffer.write(text.encode("utf-8", ERRORS))
    buffer.flush()
