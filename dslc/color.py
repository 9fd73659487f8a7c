"""Colour for text output: on a terminal, off in pipes and files.

`enabled(stream, mode)`: `mode` is the `--color` choice.  `always`/`never`
decide; `auto` follows the conventions: `NO_COLOR` set to anything but the
empty string turns colour off (https://no-color.org), `FORCE_COLOR` set
(and not `0`/`false`) turns it on, otherwise colour is on when the stream is
a terminal and `TERM` is not `dumb`.  The painters only add ANSI SGR codes
around whole lines or line prefixes, so stripping them gives the plain text.
"""

from __future__ import annotations

import os
import re

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
RED = "\x1b[31m"
GREEN = "\x1b[32m"
YELLOW = "\x1b[33m"
BLUE = "\x1b[34m"
CYAN = "\x1b[36m"
DIM = "\x1b[2m"

_SGR = re.compile(r"\x1b\[[0-9;]*m")


def enabled(stream, mode: str = "auto") -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    if os.environ.get("NO_COLOR", ""):
        return False
    force = os.environ.get("FORCE_COLOR", "")
    if force and force.lower() not in ("0", "false", "no"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def strip(text: str) -> str:
    return _SGR.sub("", text)


def paint_diff(text: str) -> str:
    """Unified diff: headers bold, hunks cyan, removals red, additions green."""
    out = []
    for line in text.splitlines(keepends=True):
        body, nl = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        if line.startswith(("--- ", "+++ ")):
            out.append(f"{BOLD}{body}{RESET}{nl}")
        elif line.startswith("@@"):
            out.append(f"{CYAN}{body}{RESET}{nl}")
        elif line.startswith("-"):
            out.append(f"{RED}{body}{RESET}{nl}")
        elif line.startswith("+"):
            out.append(f"{GREEN}{body}{RESET}{nl}")
        else:
            out.append(line)
    return "".join(out)


_LEVEL = re.compile(r"^(?P<where>[^\s].*?: )?(?P<level>error|warning|note|skipped)(?P<code>\[[A-Z]+\d+\])?(?=[: ])")
_COLOURS = {"error": RED + BOLD, "warning": YELLOW + BOLD, "note": BLUE + BOLD, "skipped": DIM + BOLD}


def paint_notes(text: str) -> str:
    """`file:line: level[CODE]: ...` lines: the location bold, the level in its colour."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _LEVEL.match(line)
        if not m:
            out.append(line)
            continue
        where = f"{BOLD}{m['where']}{RESET}" if m["where"] else ""
        level = f"{_COLOURS[m['level']]}{m['level']}{m['code'] or ''}{RESET}"
        out.append(where + level + line[m.end():])
    return "".join(out)
