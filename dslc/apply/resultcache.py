"""The per-file result cache of `dslc apply` (issue 11: warm runs near parse speed).

A warm run should do next to nothing for a file whose content, rule packs
and dslc are unchanged.  The analysis cache (`dslc.analysis.api`) saves the
analysis only; matching, safety and rewriting still ran.  This cache keeps
the whole outcome of `dslc.apply.driver.process_file` for a file: its match
entries, errors, warnings and rewritten text.

Key: SHA-256 of (dslc's code version, the packs' fingerprint, the options
that change results, the file's absolute path and display name, the file's
bytes).

* code version: a hash of every source file of `dslc` and `dslc.analysis`
  and of the data files (`dslc/data`), so any change of dslc misses;
* packs: the `repr` of the loaded `ir.Pack` values (rules, selection,
  constants; deterministic: the IR holds tuples, not sets);
* options: every `ApplyOptions` field but those in `NOT_IN_KEY` (mode,
  jobs, verify, patch folder, file selection and the cache folder do not
  change `process_file`'s result: verification and writing run after it,
  every time);
* path and display name: the module name follows from the path, and the
  report's messages carry the display name.

Value: JSON (never pickle: nothing in an entry is code) sealed by
`dslc.analysis.cachefile`: checked before decoding, and it must record the
same key, content hash and code version, or it is a miss.  It also lists the
(path, SHA-256) of every other file the analysis read for it (in-tree bases
and re-exports): a result whose base class changed in another file is a miss.
A result whose checks read the sibling modules of the file's package
(subclasses there, uses from outside the class: `dslc.rewrite.flow`) lists
the folder (the digest of its list of `*.py` files) and each of those files
too: a sibling changed, added or removed is a miss.

Results with an internal error (E199) are never stored.  A cache that
cannot be read or written is only slower; nothing here raises.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache

from dslc.analysis import cachefile
from dslc.apply import results

_DSLC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMAT = 1


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of dslc's and its analysis's sources and data files."""
    from dslc.analysis import analysis_version

    digest = hashlib.sha256(f"format {FORMAT}\0analysis {analysis_version()}\0".encode())
    for folder, subdirs, names in os.walk(_DSLC):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        rel = os.path.relpath(folder, _DSLC)
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(folder, name)
            try:
                with open(full, "rb") as fh:
                    digest.update(f"{rel}/{name}".encode() + b"\0" + fh.read() + b"\0")
            except OSError:
                digest.update(f"{rel}/{name}".encode() + b"\0?\0")
    return digest.hexdigest()[:24]


def packs_fingerprint(packs) -> str:
    return hashlib.sha256(repr(list(packs)).encode()).hexdigest()


# ApplyOptions fields that do not change `process_file`'s result (what the
# cache stores); every other field is part of the key.
NOT_IN_KEY = frozenset({"mode", "patch_dir", "jobs", "excludes", "gitignore", "cache_dir", "verify"})


def options_fingerprint(options) -> str:
    import dataclasses

    items = []
    for f in dataclasses.fields(options):
        if f.name in NOT_IN_KEY:
            continue
        value = getattr(options, f.name)
        if f.name == "root" and value:
            value = os.path.abspath(value)
        items.append(f"{f.name}={value!r}")
    return ";".join(items)


def _py_files(folder: str) -> list[str]:
    """The names of the `*.py` files of `folder` (what `dslc.rewrite.flow` reads as its siblings)."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    except OSError:
        return []
    return [n for n in names if os.path.isfile(os.path.join(folder, n))]


def dep_digest(path: str) -> str | None:
    """A dependency's digest: a file's SHA-256, a folder's list of `*.py` files; None when unreadable."""
    if os.path.isdir(path):
        return "folder " + hashlib.sha256("\0".join(_py_files(path)).encode("utf-8", "surrogateescape")).hexdigest()
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


class ResultCache:
    """One run's view of the result cache under `<cache_dir>/results/`."""

    def __init__(self, cache_dir: str, packs, options) -> None:
        self.dir = os.path.join(cache_dir, "results")
        self.prefix = json.dumps([code_version(), packs_fingerprint(packs), options_fingerprint(options)]).encode()
        self.memo: dict = {}
        self.version = code_version()

    def key(self, path: str, display: str, data: bytes) -> str:
        digest = hashlib.sha256(self.prefix)
        digest.update(b"\0" + os.path.abspath(path).encode("utf-8", "surrogateescape"))
        digest.update(b"\0" + display.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(data)
        return digest.hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], key + ".json")

    def _dep_hash(self, path: str) -> str | None:
        if path not in self.memo:
            self.memo[path] = dep_digest(path)
        return self.memo[path]

    def folder_deps(self, folders) -> list[tuple[str, str | None]]:
        """The dependencies of a result that read the modules of `folders` (the
        sibling checks): each folder's list of `*.py` files and each one's content."""
        deps = []
        for folder in sorted(folders):
            deps.append((folder, self._dep_hash(folder)))
            for name in _py_files(folder):
                path = os.path.join(folder, name)
                deps.append((path, self._dep_hash(path)))
        return deps

    def get(self, key: str, content: str) -> dict | None:
        """The stored result (a dict, see `put`) or None; never raises."""
        entry = self._path(key)
        payload = cachefile.read(entry)
        if payload is None:
            return None
        try:
            value = json.loads(payload.decode("utf-8"))
            if not isinstance(value, dict) or value.get("key") != key or value.get("version") != self.version \
                    or value.get("content") != content:
                raise cachefile.Bad("made for another file, content or version")
            deps = value["deps"]
            if not isinstance(deps, list) or not all(isinstance(d, list) and len(d) == 2 for d in deps):
                raise cachefile.Bad("malformed dependencies")
            if not isinstance(value.get("result"), dict):
                raise cachefile.Bad("malformed result")
        except Exception as exc:  # noqa: BLE001 - MemoryError, RecursionError, ... too
            cachefile.bad(entry, str(exc) if isinstance(exc, cachefile.Bad) else f"{type(exc).__name__}")
            return None
        for dep, digest in deps:
            if self._dep_hash(str(dep)) != digest:
                return None  # another file it depends on changed: an ordinary miss
        return value["result"]

    def put(self, key: str, content: str, deps, result: dict) -> None:
        try:
            payload = json.dumps({"key": key, "version": self.version, "content": content,
                                  "deps": [[str(p), d] for p, d in deps], "result": result},
                                 ensure_ascii=False).encode("utf-8", "surrogatepass")
        except Exception:  # noqa: BLE001 - not serialisable: not cached
            return
        cachefile.write(self._path(key), payload)


# ---------------------------------------------------------------------------
# FileResult <-> JSON (the fields `process_file` fills)
#
# Entries are stored field by field (`dataclasses.fields`), so that a field
# added to MatchEntry, FileError or another entry type is stored too; the
# `file` field is the display name, filled in again on reading.

_ENTRY_FIELDS = ("matches", "errors", "warnings", "near_misses")


def _fields(obj) -> dict:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "file"}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store {type(value).__name__}")


def to_json(result) -> dict:
    out: dict = {"new_source": result.new_source}
    for name in _ENTRY_FIELDS:
        entries = getattr(result, name, None)
        if entries is None:
            continue
        out[name] = [{"type": type(e).__name__, **{k: _plain(v) for k, v in _fields(e).items()}} for e in entries]
    return out


def from_json(value: dict, found, text: str):
    """The FileResult of a stored result, for `found` whose text is `text`.

    Raises (ValueError, TypeError, KeyError) on a malformed value: the caller
    treats that as a miss.
    """
    import dataclasses

    name = found.display
    kwargs: dict = {}
    for field_name in _ENTRY_FIELDS:
        if field_name not in value:
            continue
        entries = []
        for item in value[field_name]:
            cls = getattr(results, item["type"], None)
            if cls is None or not dataclasses.is_dataclass(cls) or item["type"] not in (
                    "MatchEntry", "FileError", "NearMissEntry"):
                raise ValueError(f"unknown entry type {item['type']!r}")
            names = {f.name: f for f in dataclasses.fields(cls)}
            args = {"file": name} if "file" in names else {}
            for k, v in item.items():
                if k == "type":
                    continue
                if k not in names:
                    raise ValueError(f"unknown field {k!r}")
                args[k] = tuple(v) if isinstance(v, list) else v
            entries.append(cls(**args))
        kwargs[field_name] = tuple(entries)
    new_source = value["new_source"]
    if new_source is not None and not isinstance(new_source, str):
        raise TypeError("expected text")
    for m in kwargs.get("matches", ()):
        if m.status not in ("applied", "skipped"):
            raise ValueError("bad match status")
    return results.FileResult(found, original=text, new_source=new_source, **kwargs)
