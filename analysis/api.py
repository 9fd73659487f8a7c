"""The analysis entry points: one source, one file, many files (cached, parallel).

`analyze_source` never raises for bad input: a file that does not parse, or
that the analysis cannot handle, comes back as `FileFacts.problems`.

`analyze_paths` algorithm:

1. For each file, the cache key is the SHA-256 of (analysis version = hash of
   this package's sources, options, `want`, the file's bytes).
2. A cache entry stores the facts and the (path, hash) of every other in-tree
   file the resolution read (bases, re-exports); it is a hit only when those
   files still have those hashes.
3. Misses are analyzed, in `jobs` worker processes when `jobs > 1` (each
   worker keeps one parsed-module cache for its share of the files), and
   written back atomically (temporary file + `os.replace`).  With `lazy`, a
   key analysed for the first time gets a marker entry instead of its facts
   (a key with a marker, or with facts made stale by a changed dependency,
   gets its facts written).
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import hashlib
import io
import operator
import os
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

from . import cachefile, model, scalars
from .budget import Options
from .extract import Extractor
from .model import FileFacts, Problem
from .names import Resolver, build_scope, canonical, module_name_for, tree_root_for

_HERE = os.path.dirname(os.path.abspath(__file__))


@lru_cache(maxsize=1)
def analysis_version() -> str:
    """A hash of this package's sources: any change invalidates the cache."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            with open(os.path.join(_HERE, name), "rb") as fh:
                digest.update(name.encode() + b"\0" + fh.read())
    return digest.hexdigest()[:16]


def mentions_any(source: str, want: frozenset[str] | None) -> bool:
    """The cheap pre-pass: does the text name any of `want` at all?"""
    if want is None:
        return True
    return any(word in source for word in want)


# The trees `analyze_source` parsed, by the exact text it parsed, while a
# `keep_trees()` block is active (None outside one: nothing is kept).
_TREES: dict[str, ast.Module] | None = None


@contextmanager
def keep_trees():
    """Keep the tree of every source analyzed in this block (in this
    process) for `take_tree`, so that a caller that parses the same text
    again (the rewriter) can take it instead.  The analysis never changes
    a tree it parsed.  Everything kept is dropped when the outermost block
    ends; `drop_tree` drops one earlier."""
    global _TREES
    outer = _TREES
    if outer is None:
        _TREES = {}
    try:
        yield
    finally:
        if outer is None:
            _TREES = None


def take_tree(source: str) -> ast.Module | None:
    """The tree the analysis parsed from exactly `source` in the active
    `keep_trees()` block, handed over once (the taker may change it), or None."""
    if _TREES is None:
        return None
    return _TREES.pop(source, None)


def kept_tree(source: str) -> ast.Module | None:
    """The tree kept for exactly `source`, left in place for `take_tree`:
    for a reader that comes before the taker and changes nothing (the
    near-miss report, which would parse the file again otherwise)."""
    return None if _TREES is None else _TREES.get(source)


def parsed(source: str) -> bool:
    """Did the analysis parse exactly `source` (without error) in the active
    `keep_trees()` block, its tree still kept?"""
    return _TREES is not None and source in _TREES


def drop_tree(source: str) -> None:
    """Forget the tree kept for `source`, if any."""
    if _TREES is not None:
        _TREES.pop(source, None)


def _decode(data: bytes, path: str) -> tuple[str | None, Problem | None]:
    try:
        import io
        import tokenize
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding), None
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        line = 1
        if isinstance(exc, UnicodeDecodeError):
            line = data[: exc.start].count(b"\n") + 1
        return None, Problem("encoding", f"cannot decode {os.path.basename(path)}: {exc}", line)


def analyze_source(
    source: str,
    path: str,
    *,
    module: str | None = None,
    root: str | None = None,
    inline: bool = True,
    flatten: bool = False,
    want: frozenset[str] | None = None,
    max_paths: int | None = None,
    optional_ifs=frozenset(),
    compute: bool = True,
    needs=None,
    _modules: dict | None = None,
    _consulted: set | None = None,
) -> FileFacts:
    """Facts of one module's source text (see `extract.py` for the algorithm).

    `module` is its dotted name (default: from `path` and the packages around
    it); `root` the directory that holds the analyzed tree's top package
    (default: derived from `path` and `module`), through which relative and
    in-tree imports are followed.
    """
    try:
        module = module or module_name_for(path, root)
    except (OSError, ValueError):
        module = os.path.splitext(os.path.basename(path))[0]
    if not mentions_any(source, want):
        return FileFacts(path, module, ())
    if source.startswith("\ufeff"):
        source = source[1:]  # a decoded BOM: not Python text (line 1 columns shift by its 3 bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings of the user's code are not ours to print
            tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        msg = exc.msg or "invalid syntax"
        return FileFacts(path, module, (), problems=(Problem("syntax-error", f"{msg} (col {exc.offset or 0})", exc.lineno or 1),))
    except (ValueError, MemoryError, RecursionError) as exc:
        return FileFacts(path, module, (), problems=(Problem("syntax-error", str(exc), 1),))
    if _TREES is not None:
        _TREES[source] = tree
    try:
        is_package = os.path.basename(path) == "__init__.py"
        scope = build_scope(tree, module, path, is_package)
        tree_root = root if root is not None else tree_root_for(path, module)
        resolver = Resolver(tree_root, _modules)
        resolver.register(scope, tree)
        options = Options(inline=inline, flatten=flatten, optional_ifs=frozenset(optional_ifs), compute=compute,
                          needs=tuple(needs) if needs is not None else None)
        if max_paths is not None:
            options.max_paths = max_paths
        extractor = Extractor(tree, scope, resolver, options, source=source)
        classes, functions = extractor.run()
        classes = scalars.annotate(tree, scope, classes, frozenset(extractor.gated))
        imports = []
        for name, bindings in scope.names.items():
            if len(bindings) == 1 and bindings[0].kind == "import":
                imports.append((name, canonical(bindings[0].target)))
        if _consulted is not None:
            _consulted |= {p for p in resolver.consulted if os.path.abspath(p) != os.path.abspath(path)}
        return FileFacts(path, module, tuple(classes), tuple(functions), tuple(sorted(imports)),
                         tuple(extractor.problems))
    except RecursionError:
        return FileFacts(path, module, (), problems=(Problem("analysis-error", "too deeply nested to analyze", 1),))
    except Exception as exc:  # never out of the API: reported as a problem
        line = getattr(exc, "lineno", 0) or 0
        return FileFacts(path, module, (), problems=(Problem("analysis-error", f"{type(exc).__name__}: {exc}", line),))


def analyze_file(path: str, *, root: str | None = None, **kwargs) -> FileFacts:
    """`analyze_source` on a file's bytes (decoded per PEP 263)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return FileFacts(str(path), None, (), problems=(Problem("io-error", str(exc), 0),))
    source, problem = _decode(data, str(path))
    if problem is not None:
        return FileFacts(str(path), None, (), problems=(problem,))
    return analyze_source(source, str(path), root=root, **kwargs)


# --------------------------------------------------------------------------
# many files
# --------------------------------------------------------------------------

def _reducer(cls):
    names = tuple(f.name for f in dataclasses.fields(cls))
    # attrgetter of several names gives their values as a tuple, in C
    fields = operator.attrgetter(*names) if len(names) > 1 else (lambda obj: (getattr(obj, names[0]),))

    def reduce(obj):
        return cls, fields(obj)

    return reduce


# Slotted frozen dataclasses unpickle through `dataclasses._dataclass_setstate`,
# which calls `fields()` per object (10x slower than calling the constructor);
# the cache and the worker results use this dispatch table instead.
_DISPATCH = {cls: _reducer(cls) for cls in (
    model.Value, model.StmtRef, model.Guard, model.InitBinding, model.Node, model.Path,
    model.AttrUse, model.ClassFacts, model.Problem, model.FileFacts)}


def dumps(obj) -> bytes:
    """Pickle analysis results quickly (see `_DISPATCH`)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(obj)
    return buffer.getvalue()


def _hash_file(path: str, memo: dict) -> str | None:
    if path in memo:
        return memo[path]
    try:
        with open(path, "rb") as fh:
            memo[path] = hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        memo[path] = None
    return memo[path]


def _key(data: bytes, options: tuple) -> str:
    digest = hashlib.sha256()
    digest.update(analysis_version().encode())
    digest.update(repr(options).encode())
    digest.update(data)
    return digest.hexdigest()


def _allowed() -> dict:
    """The classes an analysis cache entry may contain (see `cachefile.loads`)."""
    out = {(cls.__module__, cls.__name__): cls for cls in _DISPATCH}
    out.update({("builtins", "frozenset"): frozenset, ("builtins", "set"): set,
                ("builtins", "Ellipsis"): Ellipsis, ("builtins", "complex"): complex,
                (model.__name__, "NOT_CONST"): model.NOT_CONST})
    return out


_ALLOWED = _allowed()


def _analysis_dataclass(module: str, name: str):
    """Also allowed in an entry: a dataclass defined in this package (the
    facts' value types, e.g. `compute.Compute`); nothing else."""
    import sys

    package = __name__.rsplit(".", 1)[0]
    if not module.startswith(package + ".") or name.startswith("_"):
        return None
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module:
        return cls
    return None


def _entry_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, key[:2], key + ".pickle")


# `_cache_get`'s answer for an entry that holds no facts but shows that this
# very key was analysed before (a marker: see `analyze_paths`'s `lazy`), or
# one whose facts are stale because a file they depend on changed.
SEEN = object()


def _cache_get(cache_dir: str, key: str, memo: dict, content: str | None = None,
               deps_out: list | None = None):
    """The cached facts for `key`; `SEEN` when the entry is a marker or its
    facts depend on a file that changed since; None when missing or bad.

    The entry is checked before it is decoded and must name this key, this
    content hash and this analysis version (`cachefile`); never raises.
    """
    entry = _entry_path(cache_dir, key)
    payload = cachefile.read(entry)
    if payload is None:
        return None
    try:
        tag, got_key, got_content, version, deps, facts = cachefile.loads(payload, _ALLOWED, _analysis_dataclass)
        if tag not in ("facts", "seen") or got_key != key or version != analysis_version():
            raise cachefile.Bad("made for another key or version")
        if content is not None and got_content != content:
            raise cachefile.Bad("made from other content")
        if tag == "seen":
            if facts is not None or deps:
                raise cachefile.Bad("a marker with facts")
            return SEEN
        if not isinstance(facts, FileFacts):
            raise cachefile.Bad("not file facts")
        deps = [(str(dep), digest) for dep, digest in deps]
    except Exception as exc:  # noqa: BLE001 - MemoryError, RecursionError, SystemError too
        cachefile.bad(entry, str(exc) if isinstance(exc, cachefile.Bad) else f"{type(exc).__name__}: {exc}")
        return None
    for dep, digest in deps:
        if _hash_file(dep, memo) != digest:
            return SEEN
    if deps_out is not None:
        deps_out.extend(deps)
    return facts


def _cache_put(cache_dir: str, key: str, deps: list, facts: FileFacts, content: str | None = None) -> None:
    try:
        payload = dumps(("facts", key, content, analysis_version(), deps, facts))
    except Exception:  # noqa: BLE001 - unpicklable facts: not cached
        return
    cachefile.write(_entry_path(cache_dir, key), payload)


def _cache_mark(cache_dir: str, key: str, content: str | None = None) -> None:
    """Write the marker entry of `key`: analysed once, facts not kept."""
    cachefile.write(_entry_path(cache_dir, key), dumps(("seen", key, content, analysis_version(), (), None)))


def _work(batch: list[tuple[int, str]], root, kwargs) -> list[tuple[int, FileFacts, list]]:
    """Analyze a batch in one process, sharing its parsed-module cache.

    The cyclic garbage collector is paused meanwhile: ASTs are large, acyclic
    enough, and full collections while parsing cost more than the analysis.
    """
    modules: dict = {}
    memo: dict = {}
    out = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for index, path in batch:
            consulted: set = set()
            facts = analyze_file(path, root=root, _modules=modules, _consulted=consulted, **kwargs)
            deps = [(p, _hash_file(p, memo)) for p in sorted(consulted)]
            out.append((index, facts, deps))
    finally:
        if enabled:
            gc.enable()
    return out


def _work_bytes(batch, root, kwargs) -> bytes:
    """`_work` for a worker process: the result pickled the fast way."""
    return dumps(_work(batch, root, kwargs))


def analyze_paths(
    paths,
    *,
    root: str | None = None,
    jobs: int = 1,
    cache_dir: str | None = None,
    want: frozenset[str] | None = None,
    inline: bool = True,
    flatten: bool = False,
    deps_out: list | None = None,
    optional_ifs=frozenset(),
    compute: bool = True,
    lazy: bool = False,
    needs=None,
) -> list[FileFacts]:
    """Facts for many files, in the order given (see the module docstring).

    `deps_out`, when given, receives per file (in order) the list of
    (path, SHA-256) of the other files its facts depend on (bases and
    re-exports read from the tree): what a cache of anything computed from
    these facts must check too.

    `lazy` (for a caller that caches what it computes from the facts, as
    `dslc apply`'s result cache does): a file analysed for the first time
    under its key gets only a small marker entry, not its facts (pickling
    them is most of the cost of a cache write); the facts are written the
    second time the same key is analysed (the marker is there: the caller's
    own cache missed for an unchanged file, e.g. after a pack change that
    keeps the pack's names), and read from the third on.
    """
    enabled = gc.isenabled()
    gc.disable()  # unpickling and building many small objects: no cyclic garbage here
    try:
        return _analyze_paths(paths, root, jobs, cache_dir, want, inline, flatten, deps_out, optional_ifs, compute,
                              lazy, needs)
    finally:
        if enabled:
            gc.enable()


def _analyze_paths(paths, root, jobs, cache_dir, want, inline, flatten, deps_out=None,
                   optional_ifs=frozenset(), compute=True, lazy=False, needs=None) -> list[FileFacts]:
    paths = [str(p) for p in paths]
    kwargs = {"want": want, "inline": inline, "flatten": flatten}
    options: tuple = (root and os.path.abspath(root), sorted(want) if want is not None else None, inline, flatten)
    if optional_ifs:  # only then: the cache keys of other runs stay
        kwargs["optional_ifs"] = tuple(sorted(optional_ifs))
        options += ("optional_ifs", tuple(sorted(optional_ifs)))
    if not compute:  # facts without class graphs: a key of their own
        kwargs["compute"] = False
        options += ("no_compute",)
    if needs is not None:  # the class pre-filter's rules: a key of their own
        kwargs["needs"] = needs = tuple(sorted(needs, key=sorted))
        options += ("needs", tuple(tuple(sorted(n)) for n in needs))
    results: list[FileFacts | None] = [None] * len(paths)
    keys: list[str | None] = [None] * len(paths)
    contents: list[str | None] = [None] * len(paths)
    file_deps: list[list] = [[] for _ in paths]
    seen = [False] * len(paths)  # an entry for the key, without usable facts
    memo: dict = {}
    todo: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        if cache_dir is not None:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = None
            if data is not None:
                contents[i] = cachefile.digest(data)
                keys[i] = _key(data + b"\0" + os.fsencode(os.path.abspath(path)), options)
                hit = _cache_get(cache_dir, keys[i], memo, contents[i], file_deps[i])
                seen[i] = hit is SEEN
                if hit is not None and not seen[i]:
                    results[i] = hit
                    continue
        todo.append((i, path))
    done: list = []
    if jobs > 1 and len(todo) > 1:
        # interleave so that big and small files spread over the workers
        batches = [todo[k::jobs] for k in range(jobs)]
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for part in pool.map(_work_bytes, batches, [root] * len(batches), [kwargs] * len(batches)):
                done.extend(pickle.loads(part))
    elif todo:
        done = _work(todo, root, kwargs)
    for index, facts, deps in done:
        results[index] = facts
        file_deps[index] = list(deps)
        if cache_dir is not None and keys[index] is not None:
            if lazy and not seen[index]:
                _cache_mark(cache_dir, keys[index], contents[index])
            else:
                _cache_put(cache_dir, keys[index], deps, facts, contents[index])
    if deps_out is not None:
        deps_out.extend(file_deps)
    return results  # type: ignore[return-value]
