"""The loaded rule packs, cached by the bytes of their files.

Loading the three shipped packs costs about 2 s of CPU (lark parses
sdpa.adr's 167k tokens; then the checker, lowering and the automata), which
every `dslc apply` paid before it looked at a single file.  A pack's checked,
lowered and compiled form depends only on its files' bytes, the selection,
and dslc's own code, so `dslc apply` keeps it in its cache folder
(`packs/`), as it keeps analysis facts and per-file results:

* key: SHA-256 over dslc's code version (`resultcache.code_version`), each
  rule file's absolute path and the SHA-256 of its bytes, `select` and
  `ignore`;
* entry: sealed and checked like every cache entry (`analysis/cachefile.py`),
  records its key, and is unpickled by an unpickler that builds only the
  rule IR's and the automata's own classes;
* only loads without diagnostics are cached (a pack with warnings is loaded
  every time, so its warnings are printed every time);
* `--no-cache` reads and writes nothing here.

Any failure is a miss: the packs are then loaded as without a cache.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
from typing import Iterable

from dslc.analysis import cachefile

FORMAT = 1
# The modules whose classes a cached pack may hold (dataclasses of the IR,
# the compiled automata); anything else in an entry makes it a bad entry.
_MODULES = frozenset({"dslc.match.ir", "dslc.match.automaton", "dslc.match.compiler"})


def _policy(module: str, name: str):
    if (module, name) == ("builtins", "Ellipsis"):
        return Ellipsis
    if module in _MODULES:
        import importlib

        found = getattr(importlib.import_module(module), name, None)
        if isinstance(found, type):
            return found
    return None


def _loader():
    # Looked up per call, as `from dslc.lang.loader import ...` would: the
    # module in sys.modules (a stand-in loader without `expand` is not cached).
    return importlib.import_module("dslc.lang.loader")


def _key(loader, files: list[str], select: list[str], ignore: list[str]) -> str | None:
    from dslc.apply.resultcache import code_version

    parts = [FORMAT, code_version(), list(select), list(ignore)]
    for path in files:
        try:
            data = loader.read_bytes(path, loader.MAX_SOURCE_BYTES)
        except Exception:  # noqa: BLE001 - unreadable: the loader reports it
            return None
        parts.append([os.path.abspath(path), hashlib.sha256(data).hexdigest()])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _load(paths: list[str], select: list[str], ignore: list[str]):
    load = _loader().load_rules
    return load(paths, select, ignore) if ignore else load(paths, select)


def load_rules(paths: list[str], select: Iterable[str] = (), ignore: Iterable[str] = (),
               cache_dir: str | None = None):
    """`loader.load_rules(paths, select, ignore)`, through the cache in
    `cache_dir` (None: no cache)."""
    select, ignore = list(select), list(ignore)
    loader = _loader()
    if cache_dir is None or not hasattr(loader, "expand"):
        return _load(paths, select, ignore)
    files, diags = loader.expand(paths)
    key = None if diags or not files else _key(loader, files, select, ignore)
    if key is None:
        return _load(paths, select, ignore)
    entry = os.path.join(cache_dir, "packs", f"{key}.pack")
    payload = cachefile.read(entry)
    if payload is not None:
        try:
            made_for, packs, compiled = cachefile.loads(payload, {}, _policy)
            if made_for != key or not isinstance(packs, list) or not isinstance(compiled, dict):
                raise cachefile.Bad("made for another key, or malformed")
            return loader.LoadResult(packs, [], {}, tuple(files), (), compiled)
        except Exception as exc:  # noqa: BLE001 - a bad entry is a miss
            cachefile.bad(entry, str(exc) if isinstance(exc, cachefile.Bad) else type(exc).__name__)
    result = _load(paths, select, ignore)
    if not result.diagnostics and tuple(result.files) == tuple(files):
        try:
            cachefile.write(entry, pickle.dumps((key, result.packs, result.compiled), protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # noqa: BLE001 - a cache that cannot be written is only slower
            pass
    return result
