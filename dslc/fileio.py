"""File I/O for `dslc apply`: finding sources, decoding them, writing atomically.

Everything here touches the file system; the rest of the pipeline works on
decoded text and never opens a file itself.

* `discover(paths, excludes)` turns command-line paths into the `.py` files to
  process, honouring `.gitignore` files and `--exclude` globs.
* `read_source(path)` decodes a file the way Python would run it (PEP 263
  coding cookie, UTF-8 BOM) and raises `SourceError` for what is not text.
* `encode_source(text, encoding)` is its inverse (the BOM comes back).
* `source_lines(text)` splits decoded text into lines where Python's
  tokenizer does (`\n`, `\r\n`, `\r` only), so that ast line numbers index it.
* `atomic_write(path, data)` replaces a file through a temporary file in the
  same directory and `os.replace`, keeping the file's mode.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import re
import stat
import tokenize
from dataclasses import dataclass
from functools import lru_cache

# Error codes of the apply report (`errors[].code`); README.md lists them.
E_UNREADABLE = "E100"  # a file cannot be read or a directory cannot be listed
E_SYNTAX = "E101"  # the file does not parse as Python
E_NOT_TEXT = "E102"  # not valid text in its declared encoding, NUL bytes, bad cookie
E_WRITE = "E103"  # the rewritten file cannot be written
E_ENCODE = "E104"  # the rewrite cannot be encoded in the file's encoding
E_CHANGED = "E105"  # the file changed on disk while dslc was working on it
E_SPECIAL = "E106"  # not a regular file (FIFO, device, socket): never opened
E_OUTSIDE = "E107"  # --write through a symlink whose target lies outside the paths given
E_LOOP = "E108"  # a symlink loop (or a chain too long to resolve)
E_TOO_LARGE = "E109"  # the file is larger than --max-file-size
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


DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024  # bytes; `--max-file-size` changes it

# What `str.splitlines` also breaks on but Python's tokenizer does not.
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


@lru_cache(maxsize=8)
def _other_breaks(text: str) -> bool:
    """Does `text` hold a character of `_OTHER_BREAKS`?  (Kept for the last
    texts: a file's text is split by the source map, the import scheduler
    and the diff.)"""
    return _OTHER_BREAKS.search(text) is not None


def source_lines(text: str, keepends: bool = False) -> list[str]:
    """`text.splitlines(keepends)` with only `\\n`, `\\r\\n` and `\\r` ending a line.

    Line `n` of the result is line `n` of the stdlib `ast` and `tokenize`:
    a form feed, vertical tab, `\\x1c`-`\\x1e`, NEL, or a Unicode line or
    paragraph separator (in a comment, a string, a docstring) stays inside
    its line.  Text without those characters takes `str.splitlines` (fast).
    """
    if not _other_breaks(text):
        return text.splitlines(keepends)
    lines = _LINE.findall(text)
    return lines if keepends else [line.rstrip("\r\n") for line in lines]


def display_path(path: str) -> str:
    """A path as shown in every report (text and JSON): printable, one line.

    Bytes the file system name holds that are not valid in the locale's
    encoding (kept by Python as surrogate escapes) are shown as `\\xNN`,
    control characters (newline, ESC...) as `\\xNN` too, so that a hostile
    file name can neither crash the output nor forge a line or a terminal
    escape sequence.  Ordinary names come back unchanged.
    """
    if path.isprintable() and not any("\udc80" <= c <= "\udcff" for c in path):
        return path
    out = []
    for c in path:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F or (0x80 <= o < 0xA0):
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF or not c.isprintable() and c != " ":
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(c)
    return "".join(out)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _stat_error(exc: OSError, path: str) -> SourceError:
    if exc.errno == errno.ELOOP:
        return SourceError(E_LOOP, "symlink loop: the link resolves to itself (or too many levels of links)")
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return SourceError(E_UNREADABLE, f"broken symlink (its target {display_path(os.readlink(path))} does not exist)")
    return SourceError(E_UNREADABLE, f"cannot read: {exc.strerror or exc}")


NO_SUCH_PATH = "no such file or directory"


def path_reason(path: str) -> str | None:
    """Why a path given on the command line cannot be used; None when it can
    be stat-ed (and, a directory, listed).

    Never raises: a folder on the way that cannot be searched gives
    "cannot read: Permission denied" where `Path.exists()` would raise, a
    symlink loop says so, and only a path that is really absent is
    `NO_SUCH_PATH`.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.islink(path):
            return NO_SUCH_PATH
        return _stat_error(exc, path).message
    if stat.S_ISDIR(st.st_mode):
        try:
            os.listdir(path)
        except OSError as exc:
            return f"cannot list directory: {exc.strerror or exc}"
    return None


def path_problem(path: str) -> str | None:
    """`path_reason` as one line naming the path (None: no problem)."""
    why = path_reason(path)
    if why is None:
        return None
    return f"{NO_SUCH_PATH}: {display_path(path)}" if why == NO_SUCH_PATH else f"{display_path(path)}: {why}"


def read_bytes(path: str, max_size: int | None = DEFAULT_MAX_FILE_SIZE) -> bytes:
    """The bytes of a regular file, never blocking and never reading a device.

    1. `stat` the path (following symlinks): anything but a regular file
       (FIFO, socket, character or block device, directory) is refused
       without being opened (E106; a directory E100); a symlink loop is E108;
       a file larger than `max_size` bytes is E109 (None: no limit).
    2. Open it with O_NONBLOCK (were it swapped for a FIFO meanwhile, the
       open cannot hang), check with `fstat` that the open file is still that
       regular file, and read at most `max_size + 1` bytes.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _stat_error(exc, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(E_UNREADABLE, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(E_SPECIAL, f"not a regular file: {_kind(st.st_mode)}; only regular files are read "
                                     "(skipped without opening it)")
    limit = max_size if max_size is not None and max_size >= 0 else None
    if limit is not None and st.st_size > limit:
        raise SourceError(E_TOO_LARGE, f"file too large: {st.st_size} bytes, the limit is {limit} "
                                       "(raise it with --max-file-size)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _stat_error(exc, path) from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise SourceError(E_SPECIAL, "the file was replaced by a special file while dslc read it")
        chunks = []
        total = 0
        while True:
            want = 1 << 20 if limit is None else min(1 << 20, limit + 1 - total)
            if want <= 0:
                break
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise SourceError(E_UNREADABLE, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise SourceError(E_TOO_LARGE, f"file too large: more than {limit} bytes (it grew while being read; "
                                       "raise the limit with --max-file-size)")
    return data


def read_source(path: str, max_size: int | None = DEFAULT_MAX_FILE_SIZE) -> SourceFile:
    """Read and decode a Python source file.

    1. Read the bytes with `read_bytes` (only a regular file, at most
       `max_size` bytes; E100 / E106 / E108 / E109).
    2. Reject NUL bytes: Python refuses them, and they mean a binary file.
    3. Find the encoding as the interpreter does (`tokenize.detect_encoding`:
       BOM, then a PEP 263 cookie on line 1 or 2, else UTF-8); an unknown
       codec or a BOM that contradicts the cookie -> E102.
    4. Decode strictly; a failure names the line of the first bad byte.
    """
    data = read_bytes(path, max_size)
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


def inside(real: str, roots: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
    """Whether the resolved path `real` is one of `roots` or lies under one."""
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def write_target(path: str, roots, *, follow_outside: bool = False) -> str:
    """The file `--write` replaces for `path`, after the symlink policy.

    `path` resolves (through any symlinks) to its real file; when that file
    is not inside `roots` (the resolved command-line paths) the write is
    refused with E107, unless `follow_outside` (`--follow-symlinks-outside`).
    A symlink loop is E108.
    """
    try:
        os.stat(path)
    except OSError as exc:
        raise _stat_error(exc, path) from None
    real = os.path.realpath(path)
    if roots and not follow_outside and not inside(real, roots):
        raise SourceError(E_OUTSIDE, f"not written: it is a symlink to {display_path(real)}, outside the paths "
                                     "given; pass --follow-symlinks-outside to rewrite symlink targets "
                                     "wherever they are")
    return real


def _read_only_reason(real: str, st: os.stat_result) -> str | None:
    """Why `real` must not be replaced, or None.

    A file we may not write, or one without any write permission bit (as root
    `os.access` says yes to everything: the mode bits are what the owner
    meant); likewise its folder, which `os.replace` writes to.
    """
    if not os.access(real, os.W_OK) or not st.st_mode & 0o222:
        return "the file is read-only"
    folder = os.path.dirname(real) or "."
    try:
        dmode = os.stat(folder).st_mode
    except OSError as exc:
        return f"its folder cannot be examined ({exc.strerror or exc})"
    if not os.access(folder, os.W_OK | os.X_OK) or not dmode & 0o222:
        return "its folder is read-only"
    return None


def atomic_write(path: str, data: bytes, *, expect: bytes | None = None, roots=None,
                 follow_outside: bool = False, force: bool = False) -> None:
    """Replace the file at `path` with `data`, all or nothing.

    1. Resolve symlinks (`write_target`): the link's target is rewritten and
       the link stays, but only when the target lies inside `roots` (when
       given) or `follow_outside` (E107 otherwise; a loop is E108).
    2. Refuse a read-only file or a file in a read-only folder (E103): a
       file without write permission bits, even as root, where os.replace
       would succeed; `force` skips this check (the operating system may
       still refuse).
    3. When `expect` is given, refuse if the file no longer holds those bytes
       (it changed while we worked on it).
    4. Write a temporary file in the same directory (same file system, so
       os.replace is atomic), flush and fsync it, give it the original mode
       (and owner, where permitted), then os.replace it over the original.
       On any failure the temporary file is removed and the original is intact.

    Raises SourceError (E103 / E105 / E107 / E108).
    """
    real = write_target(path, roots or (), follow_outside=follow_outside)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise SourceError(E_WRITE, f"cannot write: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(E_SPECIAL, f"not written: {_kind(st.st_mode)}")
    if not force:
        why = _read_only_reason(real, st)
        if why:
            raise SourceError(E_WRITE, f"cannot write: permission denied ({why}; --force writes it anyway)")
    if expect is not None:
        try:
            current = read_bytes(real, None)
        except SourceError as exc:
            raise SourceError(E_WRITE, f"cannot write: {exc.message}") from None
        if current != expect:
            raise SourceError(E_CHANGED, "the file changed on disk while dslc was running; not written")
    _replace_atomically(real, data, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid), "cannot write")


# ---------------------------------------------------------------------------
# Temporary files: `.<name>.<pid>@<host>.<random>.dslc-tmp`

TMP_SUFFIX = ".dslc-tmp"
STALE_AFTER = 15 * 60  # seconds; for temporary files whose writer cannot be asked
_TMP_RE = re.compile(r"\A\.(?P<name>.+?)\.(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]{0,32})\.)?[a-z0-9_]{8}"
                     + re.escape(TMP_SUFFIX) + r"\Z", re.DOTALL)


def _host() -> str:
    try:
        name = os.uname().nodename
    except (AttributeError, OSError):
        name = ""
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:32]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    except OSError:
        return True
    return True


def stale_temp_files(directory: str, *, now: float | None = None) -> list[str]:
    """dslc's own temporary files in `directory` that no running dslc writes.

    Only names of dslc's pattern, only regular files (never through a link),
    only those of the current user (any when root).  One is stale when the
    process that made it (its pid and host are in the name) is gone, or,
    when that cannot be told (another host, an older dslc without the pid),
    when it is older than STALE_AFTER seconds.  A temporary file lives only
    while one file is written, so a live writer's file is never older.
    """
    import time

    now = time.time() if now is None else now
    host = _host()
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if not name.endswith(TMP_SUFFIX):
            continue
        m = _TMP_RE.match(name)
        if m is None:
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (uid not in (None, 0) and st.st_uid != uid):
            continue
        if m.group("pid") is not None and m.group("host") == host:
            stale = not _pid_alive(int(m.group("pid"))) or now - st.st_mtime > 24 * 3600
        else:
            stale = now - st.st_mtime > STALE_AFTER
        if stale:
            out.append(full)
    return sorted(out)


def remove_stale_temp_files(directory: str) -> list[str]:
    """Remove what `stale_temp_files` finds; returns the paths removed."""
    removed = []
    for path in stale_temp_files(directory):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


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

    def load(self, directory: str, base: str) -> tuple[str, str, str] | None:
        """Add the rules of `directory`'s .gitignore; a problem (path, message, code) when it cannot be read.

        Only a regular file is read (a FIFO or device named .gitignore would
        block or never end); an unreadable one ignores nothing, and says so.
        """
        path = os.path.join(directory, ".gitignore")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return path, f"cannot read .gitignore: {exc.strerror or exc}", E_UNREADABLE
        if stat.S_ISDIR(st.st_mode):
            return None
        try:
            data = read_bytes(path, DEFAULT_MAX_FILE_SIZE)
        except SourceError as exc:
            return path, f".gitignore not used: {exc.message}", exc.code
        self.rules.extend(parse_gitignore(data.decode("utf-8", errors="replace"), base))
        return None

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


def git_top(directory: str) -> str | None:
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


def discover(paths: list[str], excludes: tuple[str, ...] = (), *, gitignore: bool = True) -> tuple[list[Found], list[tuple[str, str, str]]]:
    """Turn command-line paths into the files to process.

    1. A file argument is taken as is (whatever its suffix, and whatever it
       is: `read_source` refuses what is not a regular file) unless an
       `--exclude` glob matches it; a missing path is a problem.
    2. A directory is walked (sorted, symlinked directories not followed)
       for `*.py`, skipping SKIP_DIRS, `--exclude` matches, and, with
       `gitignore`, what the `.gitignore` files ignore: those of the
       enclosing git work tree from its top down to the directory, and those
       met during the walk, each relative to its own folder.  A folder that
       cannot be listed, or a .gitignore that cannot be read, is a problem
       (E100): nothing under it is silently left out.
    3. A file reached twice (overlapping arguments) is processed once.

    Names in reports (`Found.display`, problem paths) go through
    `display_path`.  Returns (found files, problems as (path, message, code)).
    """
    d = _Discovery(excludes, gitignore)
    for arg in paths:
        if os.path.lexists(arg) and not os.path.isdir(arg):
            if not excluded(os.path.basename(arg), excludes) and not excluded(arg.replace(os.sep, "/"), excludes):
                d.add(arg, arg, arg)
            continue
        if not os.path.isdir(arg):
            d.problems.append((display_path(arg), "no such file or directory", E_UNREADABLE))
            continue
        d.directory(arg)
    return d.found, d.problems


class _Discovery:
    """What `discover` has found so far (each file once) and the problems it met."""

    def __init__(self, excludes: tuple[str, ...], gitignore: bool) -> None:
        self.excludes = excludes
        self.gitignore = gitignore
        self.found: list[Found] = []
        self.problems: list[tuple[str, str, str]] = []
        self.seen: set[str] = set()

    def add(self, path: str, display: str, arg: str) -> None:
        key = os.path.realpath(path)
        if key not in self.seen:
            self.seen.add(key)
            self.found.append(Found(path, display_path(display), arg))

    def problem(self, entry) -> None:
        if entry is not None:
            path, message, code = entry
            self.problems.append((display_path(path), message, code))

    def directory(self, arg: str) -> None:
        """Walk a directory argument (step 2 of `discover`)."""
        top_abs = os.path.abspath(arg)
        ignores = IgnoreSet()
        repo_top = git_top(top_abs) if self.gitignore else None
        anchor = repo_top or top_abs

        def rel_to_anchor(p: str) -> str:
            rel = os.path.relpath(p, anchor).replace(os.sep, "/")
            return "" if rel == "." else rel
        if self.gitignore:
            # .gitignore files above the argument, from the work tree's top down.
            chain = []
            current = top_abs
            while repo_top is not None:
                chain.append(current)
                if current == repo_top:
                    break
                current = os.path.dirname(current)
            for directory in reversed(chain[1:]):
                self.problem(ignores.load(directory, rel_to_anchor(directory)))

        def unlistable(exc: OSError) -> None:
            where = exc.filename if isinstance(exc.filename, str) else arg
            self.problems.append((display_path(where), f"cannot list directory: {exc.strerror or exc}; "
                                                       "the files under it were not processed", E_UNREADABLE))

        def wanted(path: str, is_dir: bool) -> bool:
            if excluded(os.path.relpath(path, arg).replace(os.sep, "/"), self.excludes):
                return False
            return not (self.gitignore and ignores.ignored(rel_to_anchor(os.path.abspath(path)), is_dir))

        for dirpath, dirnames, filenames in os.walk(arg, onerror=unlistable):
            if self.gitignore:
                self.problem(ignores.load(dirpath, rel_to_anchor(os.path.abspath(dirpath))))
            dirnames[:] = [name for name in sorted(dirnames)
                           if name not in SKIP_DIRS and wanted(os.path.join(dirpath, name), True)]
            for name in sorted(filenames):
                full = os.path.normpath(os.path.join(dirpath, name))
                if name.endswith(".py") and wanted(full, False):
                    self.add(full, os.path.relpath(full, arg).replace(os.sep, "/"), arg)


def atomic_write_new(path: str, data: bytes) -> None:
    """Create or replace `path` (a file dslc owns, e.g. a .patch) atomically, mode per umask."""
    umask = os.umask(0)
    os.umask(umask)
    _replace_atomically(os.path.abspath(path), data, 0o666 & ~umask, None, f"cannot write {display_path(path)}")


def _replace_atomically(target: str, data: bytes, mode: int, owner: tuple[int, int] | None, what: str) -> None:
    """Write `data` to a temporary file beside `target` (same file system),
    fsync it, give it `mode` (and `owner` where permitted), then os.replace
    it over `target`; on any failure the temporary file is removed and
    `target` is intact.  Raises SourceError (E103) saying `what` failed.

    The temporary file's name carries this process's pid and host, so that
    a later run can tell a leftover of a killed run from a live one's
    (`stale_temp_files`)."""
    from dslc.analysis.cachefile import replace_atomically  # here: importing dslc.analysis loads z3

    def prepare(tmp: str) -> None:
        os.chmod(tmp, mode)
        if owner is not None and hasattr(os, "chown"):
            try:
                os.chown(tmp, *owner)
            except OSError:  # only root may give files away; the mode is what matters
                pass

    try:
        replace_atomically(target, data, prefix=f".{os.path.basename(target)}.{os.getpid()}@{_host()}.",
                           suffix=TMP_SUFFIX, fsync=True, prepare=prepare)
    except OSError as exc:
        raise SourceError(E_WRITE, f"{what}: {exc.strerror or exc}") from None
