"""File I/O for `dslc apply`: finding sources, decoding them, writing atomically.

Everything here touches the file system; the rest of the pipeline works on
decoded text and never opens a file itself.

* `discover(paths, excludes)` turns command-line paths into the `.py` files to
  process, honouring `.gitignore` files and `--exclude` globs.
* `read_source(path)` decodes a file the way Python would run it (PEP 263
  coding cookie, UTF-8 BOM) and raises `SourceError` for what is not text.
* `encode_source(text, encoding)` is its inverse (the BOM comes back).
* `atomic_write(path, data)` replaces a file through a temporary file in the
  same directory and `os.replace`, keeping the file's mode.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import stat
import tempfile
import tokenize
from dataclasses import dataclass

# Error codes of the apply report (`errors[].code`); README.md lists them.
E_UNREADABLE = "E100"  # the file cannot be read (permissions, vanished, a directory)
E_SYNTAX = "E101"  # the file does not parse as Python
E_NOT_TEXT = "E102"  # not valid text in its declared encoding, NUL bytes, bad cookie
E_WRITE = "E103"  # the rewritten file cannot be written
E_ENCODE = "E104"  # the rewrite cannot be encoded in the file's encoding
E_CHANGED = "E105"  # the file changed on disk while dslc was working on it
E_VERIFY = "E110"  # --verify found the rewrite not equivalent
E_INTERNAL = "E199"  # a pipeline stage raised: a dslc bug, reported per file

# Directories never worth descending into, even without a .gitignore.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules", ".eggs",
    "site-packages", ".dslc-cache",
})


class SourceError(Exception):
    """A file that cannot be processed: `code` (E1xx), `message`, 1-based `line` (0: whole file)."""

    def __init__(self, code: str, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A decoded source file.

    `text` has the BOM removed and the line endings exactly as on disk;
    `encoding` is the codec that round-trips it (`utf-8-sig` when the file
    had a BOM); `data` are the bytes as read (to detect concurrent changes).
    """

    path: str
    text: str
    encoding: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Found:
    """A file to process: its path on disk and its name in reports.

    `display` is relative to the command-line path it was found under (the
    path itself, as given, when that path is a file); `arg` is that path.
    """

    path: str
    display: str
    arg: str


# ---------------------------------------------------------------------------
# Decoding and encoding


def read_source(path: str) -> SourceFile:
    """Read and decode a Python source file.

    1. Read the bytes (OSError -> E100).
    2. Reject NUL bytes: Python refuses them, and they mean a binary file.
    3. Find the encoding as the interpreter does (`tokenize.detect_encoding`:
       BOM, then a PEP 263 cookie on line 1 or 2, else UTF-8); an unknown
       codec or a BOM that contradicts the cookie -> E102.
    4. Decode strictly; a failure names the line of the first bad byte.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except IsADirectoryError:
        raise SourceError(E_UNREADABLE, "is a directory") from None
    except OSError as exc:
        raise SourceError(E_UNREADABLE, f"cannot read: {exc.strerror or exc}") from None
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise SourceError(E_NOT_TEXT, "not a text file (contains NUL bytes)", line)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        if "invalid or missing encoding" not in str(exc):
            raise SourceError(E_NOT_TEXT, f"bad encoding declaration: {exc.msg}", exc.lineno or 1) from None
        # Undecodable bytes in the first two lines: let the decoder below say where.
        encoding = "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            E_NOT_TEXT,
            f"not valid {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "declare the encoding with a coding cookie (PEP 263) or convert the file",
            line,
        ) from None
    return SourceFile(path=path, text=text, encoding=encoding, data=data)


def encode_source(text: str, encoding: str) -> bytes:
    """Encode text back to the file's encoding (E104 when a character has no encoding)."""
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise SourceError(
            E_ENCODE, f"the rewrite contains {text[exc.start]!r}, which {encoding} cannot encode", line
        ) from None


# ---------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: str, data: bytes, *, expect: bytes | None = None) -> None:
    """Replace the file at `path` with `data`, all or nothing.

    1. Resolve symlinks: the link's target is rewritten, the link stays.
    2. Refuse a file we may not write (a read-only file would otherwise be
       silently replaced, since os.replace needs only the directory).
    3. When `expect` is given, refuse if the file no longer holds those bytes
       (it changed while we worked on it).
    4. Write a temporary file in the same directory (same file system, so
       os.replace is atomic), flush and fsync it, give it the original mode
       (and owner, where permitted), then os.replace it over the original.
       On any failure the temporary file is removed and the original is intact.

    Raises SourceError (E103 / E105).
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise SourceError(E_WRITE, f"cannot write: {exc.strerror or exc}") from None
    if not os.access(real, os.W_OK):
        raise SourceError(E_WRITE, "cannot write: permission denied (the file is read-only)")
    if expect is not None:
        try:
            with open(real, "rb") as fh:
                current = fh.read()
        except OSError as exc:
            raise SourceError(E_WRITE, f"cannot write: {exc.strerror or exc}") from None
        if current != expect:
            raise SourceError(E_CHANGED, "the file changed on disk while dslc was running; not written")
    _replace_atomically(real, data, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid), "cannot write")


# ---------------------------------------------------------------------------
# .gitignore


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """One .gitignore line: its regex over paths relative to `base` (posix, '' = top)."""

    base: str
    regex: re.Pattern
    negated: bool
    dir_only: bool
    source: str


def _glob_to_regex(pattern: str) -> str:
    """Translate a gitignore glob (already stripped of `!`, leading/trailing `/`).

    `*` and `?` do not cross `/`; `**/` matches zero or more directories;
    a trailing `/**` everything inside; `[...]` is a class (`[!...]` negated);
    a backslash escapes the next character.
    """
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i) and (i == 0 or pattern[i - 1] == "/") and i + 2 == n:
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "^", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:j]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse_gitignore(text: str, base: str) -> list[IgnoreRule]:
    """Parse one .gitignore; `base` is its directory relative to the walk's top.

    Supported: comments, blank lines, `\\#`/`\\!` escapes, trailing-space
    trimming, `!` negation, a trailing `/` (directories only), anchoring by a
    `/` at the start or in the middle, `**`, `*`, `?`, `[...]`.
    """
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        # Trailing spaces are ignored unless escaped.
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(stripped) < len(line):
            stripped += " "
        line = stripped
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        body = _glob_to_regex(line)
        regex = body if anchored else "(?:.*/)?" + body
        rules.append(IgnoreRule(base, re.compile(regex + r"\Z", re.DOTALL), negated, dir_only, raw))
    return rules


class IgnoreSet:
    """All .gitignore rules met so far, evaluated git-style: the last match wins."""

    def __init__(self) -> None:
        self.rules: list[IgnoreRule] = []

    def load(self, directory: str, base: str) -> None:
        for name in (".gitignore",):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                try:
                    with open(path, encoding="utf-8", errors="replace") as fh:
                        self.rules.extend(parse_gitignore(fh.read(), base))
                except OSError:  # an unreadable .gitignore ignores nothing
                    pass

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether `rel` (posix, relative to the top) is ignored."""
        verdict = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.base:
                if not rel.startswith(rule.base + "/"):
                    continue
                sub = rel[len(rule.base) + 1:]
            else:
                sub = rel
            if rule.regex.match(sub):
                verdict = not rule.negated
        return verdict


def _git_top(directory: str) -> str | None:
    """The nearest ancestor (or itself) holding a `.git`, else None."""
    current = os.path.abspath(directory)
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def excluded(rel: str, globs: tuple[str, ...] | list[str]) -> bool:
    """Whether an `--exclude` glob matches the path, its name, or a folder above it.

    `rel` is posix and relative to the command-line path.  `*` matches across
    `/` here (fnmatch), so `--exclude 'tests/*'` and `--exclude tests` both
    drop everything under `tests/`.
    """
    if not globs:
        return False
    parts = rel.split("/")
    candidates = [rel, parts[-1]]
    candidates += ["/".join(parts[:i]) for i in range(1, len(parts))]
    candidates += parts[:-1]
    return any(fnmatch.fnmatchcase(c, g.rstrip("/")) for g in globs for c in candidates)


def discover(paths: list[str], excludes: tuple[str, ...] = (), *, gitignore: bool = True) -> tuple[list[Found], list[tuple[str, str]]]:
    """Turn command-line paths into the files to process.

    1. A file argument is taken as is (whatever its suffix) unless an
       `--exclude` glob matches it; a missing path is a problem.
    2. A directory is walked (sorted, symlinked directories not followed)
       for `*.py`, skipping SKIP_DIRS, `--exclude` matches, and, with
       `gitignore`, what the `.gitignore` files ignore: those of the
       enclosing git work tree from its top down to the directory, and those
       met during the walk, each relative to its own folder.
    3. A file reached twice (overlapping arguments) is processed once.

    Returns (found files, problems as (path, message)).
    """
    found: list[Found] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str, display: str, arg: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(Found(path, display, arg))

    for arg in paths:
        if os.path.isfile(arg):
            if not excluded(os.path.basename(arg), excludes) and not excluded(arg.replace(os.sep, "/"), excludes):
                add(arg, arg, arg)
            continue
        if not os.path.isdir(arg):
            problems.append((arg, "no such file or directory"))
            continue
        top_abs = os.path.abspath(arg)
        ignores = IgnoreSet()
        git_top = _git_top(top_abs) if gitignore else None
        anchor = git_top or top_abs

        def rel_to_anchor(p: str, anchor: str = anchor) -> str:
            rel = os.path.relpath(p, anchor).replace(os.sep, "/")
            return "" if rel == "." else rel
        if gitignore:
            # .gitignore files above the argument, from the work tree's top down.
            chain = []
            current = top_abs
            while git_top is not None:
                chain.append(current)
                if current == git_top:
                    break
                current = os.path.dirname(current)
            for directory in reversed(chain[1:]):
                ignores.load(directory, rel_to_anchor(directory))

        for dirpath, dirnames, filenames in os.walk(arg):
            dir_abs = os.path.abspath(dirpath)
            if gitignore:
                ignores.load(dirpath, rel_to_anchor(dir_abs))
            keep = []
            for name in sorted(dirnames):
                if name in SKIP_DIRS:
                    continue
                sub = os.path.join(dirpath, name)
                rel = os.path.relpath(sub, arg).replace(os.sep, "/")
                if excluded(rel, excludes):
                    continue
                if gitignore and ignores.ignored(rel_to_anchor(os.path.abspath(sub)), True):
                    continue
                keep.append(name)
            dirnames[:] = keep
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                full = os.path.normpath(os.path.join(dirpath, name))
                rel = os.path.relpath(full, arg).replace(os.sep, "/")
                if excluded(rel, excludes):
                    continue
                if gitignore and ignores.ignored(rel_to_anchor(os.path.abspath(full)), False):
                    continue
                add(full, rel, arg)
    return found, problems


def atomic_write_new(path: str, data: bytes) -> None:
    """Create or replace `path` (a file dslc owns, e.g. a .patch) atomically, mode per umask."""
    umask = os.umask(0)
    os.umask(umask)
    _replace_atomically(os.path.abspath(path), data, 0o666 & ~umask, None, f"cannot write {path}")


def _replace_atomically(target: str, data: bytes, mode: int, owner: tuple[int, int] | None, what: str) -> None:
    """Write `data` to a temporary file beside `target` (same file system),
    fsync it, give it `mode` (and `owner` where permitted), then os.replace
    it over `target`; on any failure the temporary file is removed and
    `target` is intact.  Raises SourceError (E103) saying `what` failed."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".dslc-tmp",
                                   dir=os.path.dirname(target) or ".")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if owner is not None and hasattr(os, "chown"):
            try:
                os.chown(tmp, *owner)
            except OSError:  # only root may give files away; the mode is what matters
                pass
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise SourceError(E_WRITE, f"{what}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
