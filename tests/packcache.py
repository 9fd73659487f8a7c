"""A per-process memo of `dslc.lang.loader.load_rules` for the shipped packs.

Loading rulepacks/sdpa.adr (about 600 generated rules: lark parse, checks,
lowering, compilation) costs over a second of CPU, and dozens of tests load
it, mostly through `dslc apply` run in-process.  `install()` (called once by
conftest.py) replaces the loader's `load_rules` by `cached_load_rules`, which
returns the result of an earlier call with the same arguments, the same
working directory and the same bytes in every rule file, when:

- every file the paths expand to is a regular file under rulepacks/ of this
  repository (packs the tests write, hostile files, FIFOs and folders of
  `tmp_path` always go through the real loader; they are small);
- none of the loader's stages has been replaced (a test that monkeypatches
  `compile_rule`, the checker or the parser to count calls or inject a
  failure sees its patch called).

The first load of each pack in a process is the real one; the memo hands
out a copy of the result with fresh containers (lists and dicts), and the
objects inside are frozen dataclasses.  `DSLC_TEST_NO_PACK_CACHE=1` turns it
off.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULEPACKS = (REPO / "rulepacks").resolve()

_memo: dict[tuple, object] = {}
_lock = threading.Lock()
_original = None
_stages: dict[str, tuple[object, str, object]] = {}
stats = {"hits": 0, "misses": 0, "bypassed": 0}


def _stage_objects():
    from dslc.lang import checker, loader, lower, parser
    from dslc.match import compiler

    return {
        "loader.expand": (loader, "expand"),
        "loader.parse_path": (loader, "parse_path"),
        "loader.lower_file": (loader, "lower_file"),
        "loader._compilable": (loader, "_compilable"),
        "loader.apply_select": (loader, "apply_select"),
        "loader.apply_ignore": (loader, "apply_ignore"),
        "loader.parse_bytes": (loader, "parse_bytes"),
        "loader.checker": (loader, "checker"),
        "checker.check_files": (checker, "check_files"),
        "lower.lower_file": (lower, "lower_file"),
        "parser.parse_bytes": (parser, "parse_bytes"),
        "compiler.compile_rule": (compiler, "compile_rule"),
    }


def _patched() -> bool:
    return any(getattr(mod, attr, None) is not orig for mod, attr, orig in _stages.values())


def _key(paths: list[str], select: tuple, ignore: tuple) -> tuple | None:
    from dslc.lang import loader

    files, diags = loader.expand(paths)
    if diags or not files:
        return None
    digests = []
    for f in files:
        try:
            st = os.stat(f)
            resolved = Path(f).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or RULEPACKS not in resolved.parents:
            return None
        with open(f, "rb") as fh:
            digests.append((f, hashlib.sha256(fh.read()).hexdigest()))
    return (os.getcwd(), tuple(paths), select, ignore, tuple(digests))


def _copy(result):
    return replace(result, packs=list(result.packs), diagnostics=list(result.diagnostics),
                   sources=dict(result.sources), compiled=dict(result.compiled))


def cached_load_rules(paths, select=(), ignore=()):
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    paths = [str(p) for p in paths]
    select, ignore = tuple(select), tuple(ignore)
    if os.environ.get("DSLC_TEST_NO_PACK_CACHE") or _patched():
        stats["bypassed"] += 1
        return _original(paths, select, ignore)
    key = _key(paths, select, ignore)
    if key is None:
        stats["bypassed"] += 1
        return _original(paths, select, ignore)
    with _lock:
        hit = _memo.get(key)
    if hit is not None:
        stats["hits"] += 1
        return _copy(hit)
    stats["misses"] += 1
    result = _original(paths, select, ignore)
    with _lock:
        _memo[key] = result
    return _copy(result)


def install() -> None:
    """Put `cached_load_rules` in place of `dslc.lang.loader.load_rules` (once).
    Modules that import `load_rules` afterwards (every caller in dslc does so
    inside its function, the tests at import) get the cached one."""
    global _original
    from dslc.lang import loader

    if _original is not None:
        return
    _original = loader.load_rules
    _stages.update({name: (mod, attr, getattr(mod, attr)) for name, (mod, attr) in _stage_objects().items()})
    cached_load_rules.__doc__ = _original.__doc__
    loader.load_rules = cached_load_rules
