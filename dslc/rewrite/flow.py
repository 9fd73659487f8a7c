"""Data-flow questions about the rewritten file that need its syntax tree.

`safety.check_dataflow` works on the analysis' paths; three of its answers
need the source itself, and `FlowChecks` gives them for one file:
- `metadata_check`: with `option keeps = "shape,dtype,..."`, a later read
  of a value the rewrite changes may stay when it looks only at properties
  the rule keeps (`h.shape`, `h.size()`, `h.dtype`, ...);
- `stmt_effects`: the reads and definite writes of a loop or `with` that
  the analysis keeps as one opaque node;
- `package_subclass_uses`: subclasses in the sibling modules of the file's
  package that use an attribute the rewrite changes;
- `outside_uses`: code outside the class (module functions, other classes,
  sibling modules) that reaches an attribute the rewrite changes
  (`dslc.rewrite.outside`).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import time
import weakref

from dslc import codes
from dslc.match import ir
from dslc.rewrite import holders, outside, safety, walkers
from dslc.rewrite.astutil import dotted_tail, word_pattern
from dslc.rewrite.plan import Skip
from dslc.rewrite.rules import forward_unchanged

# Reads that look only at a tensor's metadata, and the property each needs.
_META_ATTRS = {"shape": "shape", "ndim": "shape", "dtype": "dtype", "device": "device", "is_cuda": "device"}
_META_METHODS = {"size": "shape", "dim": "shape"}

# Layers and functions whose output has the shape, dtype and device of their
# first input (elementwise ops, normalisations, dropout).
SHAPE_KEEPING = frozenset(
    [f"torch.nn.{n}" for n in (
        "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "LayerNorm", "RMSNorm", "GroupNorm",
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d",
        "InstanceNorm3d", "GELU", "ReLU", "ReLU6", "SiLU", "Sigmoid", "Tanh", "Identity", "Softmax", "LogSoftmax")]
    + [f"torch.nn.functional.{n}" for n in (
        "dropout", "gelu", "relu", "silu", "softmax", "log_softmax", "layer_norm", "batch_norm", "group_norm")]
)


# Module (`dslc.rewrite.context.Module`) -> the caches of its `FlowChecks`.
_MODULE_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class FlowChecks:
    """The source-level answers `safety.check_dataflow` asks for, cached per file."""

    def __init__(self, mod, facts, path: str):
        self.mod = mod
        self.facts = facts
        self.path = path
        # Derived from the module alone: shared by every `FlowChecks` of it
        # (each kind of rewrite and the setup make their own).
        caches = _MODULE_CACHES.get(mod)
        if caches is None:
            caches = _MODULE_CACHES[mod] = ({}, {})
        self._effects_cache, self._outside_cache = caches

    def metadata_check(self, match: ir.Match):
        """`metadata_ok(path, pos, q, name)` for `safety.check_dataflow`, or None.

        With `option keeps = "shape,dtype,..."` a read at node `q` of the
        value the matched node at `pos` bound to `name` may stay when it looks
        only at properties the rule keeps (`name.shape`, `name.size()`,
        `name.dim()`, `name.ndim`, `name.dtype`, `name.device`) and, after the
        rewrite, `name` there still holds a value with those properties:
        1. the matched statement stays (the forward target equals the source)
           and the rule keeps the properties of every value it changes;
        2. the matched statement goes: `name` then falls back to its earlier
           definition, which must be the input of a chain of matched calls,
           each of a layer that keeps its input's shape, dtype and device
           (`h = self.dropout(h)`: `h` is the Dropout's input again).
        """
        keeps = {k.strip() for k in str(match.rule.option("keeps") or "").split(",") if k.strip()}
        if not keeps:
            return None
        unchanged_forward = forward_unchanged(match.rule)
        keys, optional = safety.match_keys(match)

        def ok(path, pos, q, name) -> bool:
            needs = self.metadata_reads(path, q, name)
            if needs is None or not needs <= keeps:
                return False
            if unchanged_forward:
                return True
            positions = safety._positions(path, keys, optional) or []
            while True:
                node = path.nodes[pos]
                if node.kind not in ("layer", "call") or node.type not in SHAPE_KEEPING:
                    return False
                first = node.inputs[0] if node.inputs else None
                if first is None or first.kind != "name" or first.text != name:
                    return False
                earlier = next((r for r in range(pos - 1, -1, -1) if name in safety.writes_of(path.nodes[r])), None)
                if earlier is None or earlier not in positions:
                    return True
                pos = earlier

        return ok

    def metadata_reads(self, path, q: int, name: str) -> set[str] | None:
        """The properties (shape / dtype / device) the node at `q` reads of `name`,
        or None when some read of `name` there looks at more than those."""
        node = path.nodes[q]
        if not self.local_code(node):
            return None
        try:
            stmt = self.mod.stmt(node.stmt)
        except Skip:
            return None
        if (stmt.lineno, stmt.end_lineno) != tuple(node.stmt.lines):
            return None  # code of another file (inherited)
        whole = (stmt.lineno, stmt.col_offset, stmt.end_lineno, stmt.end_col_offset)
        region = tuple(node.expr_span) if node.expr_span is not None else whole
        key = safety.stmt_key(node)
        inner = [tuple(n.expr_span) for n in path.nodes
                 if n is not node and n.expr_span is not None and safety.stmt_key(n) == key
                 and tuple(n.expr_span) != region and _span_in(tuple(n.expr_span), region)]
        parents: dict[int, ast.AST] = {}
        for sub in ast.walk(stmt):
            for child in ast.iter_child_nodes(sub):
                parents[id(child)] = sub
        needs: set[str] = set()
        for sub in ast.walk(stmt):
            if not (isinstance(sub, ast.Name) and sub.id == name and isinstance(sub.ctx, ast.Load)):
                continue
            at = (sub.lineno, sub.col_offset, sub.end_lineno, sub.end_col_offset)
            if not _span_in(at, region) or any(_span_in(at, span) for span in inner):
                continue
            parent = parents.get(id(sub))
            if isinstance(parent, ast.Attribute) and parent.attr in _META_ATTRS:
                needs.add(_META_ATTRS[parent.attr])
                continue
            if isinstance(parent, ast.Attribute) and parent.attr in _META_METHODS:
                call = parents.get(id(parent))
                if isinstance(call, ast.Call) and call.func is parent:
                    needs.add(_META_METHODS[parent.attr])
                    continue
            return None
        return needs

    def local_code(self, node) -> bool:
        """Is the node's statement in this file (not inherited from another module)?"""
        owner = node.stmt.owner or ""
        module = getattr(self.facts, "module", None)
        return not owner or owner == module or owner.rsplit(".", 1)[-1] in self.mod.classes \
            or owner.rsplit(".", 1)[-1] in self.mod.functions

    def stmt_effects(self, path, q: int):
        """(reads, definite writes) of a statement the analysis keeps as one opaque node, else None.

        The analysis summarises a loop or `with` without layers as one `stmt`
        node with every name it reads or writes; order and conditions are
        lost (`for h in xs: o = o + h` reads `h` only after writing it, and
        may write nothing), and a comprehension's own variables count as
        reads (`[h * 2 for h in xs]`).  `safety.stmt_effects` recovers them
        from the statement (only when no part of it is a node of its own).
        """
        node = path.nodes[q]
        if node.kind != "stmt" or not self.local_code(node):
            return None
        cache = self._effects_cache
        key = (node.stmt.lines, node.stmt.col)
        if key not in cache:
            found = None
            stmt = self.mod.stmt_at.get((node.stmt.lines[0], node.stmt.col))
            if stmt is not None and (stmt.lineno, stmt.end_lineno) == tuple(node.stmt.lines):
                found = safety.stmt_effects(stmt)
                if found is None and isinstance(stmt, safety._COMPOUND):
                    found = (set(node.reads), frozenset())
            cache[key] = found
        found = cache[key]
        if found is None:
            return None
        lo, hi = node.stmt.lines
        if any(other is not node and lo <= other.stmt.lines[0] <= hi for other in path.nodes):
            return None  # parts of the statement are on the path as nodes of their own
        return found

    def package_subclass_uses(self, cls, changed: dict[str, str], *, interface_kept: bool) -> str | None:
        """Subclasses in the other modules of this file's package that use a changed attribute.

        The analysis sees one file; a subclass in a sibling module (same
        folder) inherits the rewritten `__init__` too.  A sibling whose text
        names the class is parsed; a class there that derives from it (by
        name, directly or through other classes of that file) must not call,
        read or assign the attribute in its own methods.  Names are matched
        by spelling, so an unrelated class of the same name refuses too.
        Each sibling is read and parsed at most once while its
        content stays the same (`_Siblings`, shared by every file
        of the run).
        """
        if cls is None or not changed:
            return None
        here = getattr(self.facts, "path", None) or self.path
        pattern = word_pattern(cls.name)
        for path in _sibling_paths(here):
            table = _SIBLINGS.derived(path, ("classes",), pattern, _class_table, None)
            found = _subclass_attr_uses(table, cls.name) if table else []
            for sub, attr, line, method, kind in found:
                if attr not in changed or (interface_kept and kind != "store"):
                    continue
                return codes.reason(codes.S_ATTR_USED, f"attribute `self.{attr}`, which the rewrite {changed[attr]}, is also used by the subclass "
                        f"`{sub}` in {os.path.basename(path)} at line {line} (in `{method}`)")
        return None

    def outside_uses(self, cls, changed: dict[str, str], *, interface_kept: bool, kept=None,
                     notes: list | None = None, line: int = 0) -> str | None:
        """A changed attribute reached from outside the class, in this file or
        a sibling module of its package (`dslc.rewrite.outside`): S220.
        `kept`: `outside.kept_params` (reads of those parameters are fine).
        With `notes`, a use in a sibling that is a script of its own (a
        checkpoint converter) is a W111 warning appended there, as
        (`line`, code, message), instead of a refusal."""
        if cls is None or not changed:
            return None
        attrs = frozenset(changed)
        pattern = outside.pattern(attrs)
        here = getattr(self.facts, "path", None) or self.path
        key = ("here", attrs)
        if key not in self._outside_cache:
            found = None
            if pattern.search(self.mod.source):
                found = self._index().select(attrs)
            self._outside_cache[key] = found
        scans = [(os.path.basename(self.path), self._outside_cache[key], True)]
        for path in _sibling_paths(here):
            index = _SIBLINGS.derived(path, ("outside",), pattern, outside.index, None)
            scans.append((os.path.basename(path), index.select(attrs) if index is not None else None, False))
        found = []
        for name, fs, mine in scans:
            if fs is None:
                continue
            in_script = []
            proof = _holders_proof(self, cls.name) if mine else None
            for use, what in outside.problems(fs, changed, cls.name, here=mine, interface_kept=interface_kept, kept=kept,
                                              elsewhere=proof):
                if notes is None or mine or not fs.script:
                    return codes.reason(codes.S_OUTSIDE_USE, outside.describe(use, name, what))
                in_script.append((use, what))
            if in_script:  # one warning per script: its first use, and how many there are
                message = outside.describe_script(in_script[0][0], name, in_script[0][1], len(in_script))
                found.append((line, codes.W_OUTSIDE_SCRIPT, f"{cls.name}: {message}"))
        if notes is not None:
            notes.extend(found)
            if not interface_kept:
                notes.extend((line, codes.W_TREE_WALK, f"{cls.name}: {message}") for message in self._walks(changed))
        return None

    def _index(self) -> outside.FileIndex:
        """`outside.index` of this file, walked once."""
        if "index" not in self._outside_cache:
            self._outside_cache["index"] = outside.index(self.mod.tree)
        return self._outside_cache["index"]

    def _walks(self, changed: dict[str, str]) -> list[str]:
        """W112: computed-name walks of a module tree in this file and its
        siblings (`dslc.rewrite.walkers`), one message per file."""
        if "walks" not in self._outside_cache:
            here = self._index().walks if walkers.GATE.search(self.mod.source) else ()
            self._outside_cache["walks"] = here
        found = [(os.path.basename(self.path), w) for w in self._outside_cache["walks"][:1]]
        for path in _sibling_paths(getattr(self.facts, "path", None) or self.path):
            index = _SIBLINGS.derived(path, ("outside",), walkers.GATE, outside.index, None)
            found += [(os.path.basename(path), w) for w in (index.walks[:1] if index is not None else ())]
        return [walkers.describe(w, name, changed) for name, w in found]


def _holders_proof(self: FlowChecks, cls_name: str):
    """`outside.problems`' `elsewhere` for the file of `self` (`dslc.rewrite.holders`):
    the holders of an attribute name in this file and its sibling modules,
    found when a use first needs them."""
    cache = self._outside_cache
    path = getattr(self.facts, "path", None) or self.path

    def here():
        if ("holders",) not in cache:
            cache[("holders",)] = holders.holders(self.mod.tree)
        return cache[("holders",)]

    def package(link: str):
        out = [(here(), True)]
        for sib in _sibling_paths(path):
            out.append((_SIBLINGS.derived(sib, ("holders",), holders.gate(link), holders.holders, holders.Holders()), False))
        return out

    if ("functions",) not in cache:
        cache[("functions",)] = holders.function_defs(self.mod.statements)
    return lambda use: holders.elsewhere(cache[("functions",)], use, cls_name, here, package)


# The package folders whose modules the checks read while a file is processed
# (`reading_siblings`): the result cache makes them dependencies of its result.
_READ_FOLDERS: list[set[str]] = []


class reading_siblings:
    """`with reading_siblings() as folders:` the folders whose `*.py` files the
    sibling checks (subclasses, outside uses) listed and may have read meanwhile."""

    def __enter__(self) -> set[str]:
        self.folders: set[str] = set()
        _READ_FOLDERS.append(self.folders)
        return self.folders

    def __exit__(self, *exc) -> None:
        _READ_FOLDERS.remove(self.folders)


def _sibling_paths(here: str) -> list[str]:
    """The other `*.py` files of the folder of `here`."""
    folder = os.path.dirname(os.path.abspath(here))
    for folders in _READ_FOLDERS:
        folders.add(folder)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    except OSError:
        return []
    mine = os.path.abspath(here)
    return [p for p in (os.path.join(folder, n) for n in names) if p != mine and os.path.isfile(p)]


class _Siblings:
    """What the checks derive from sibling modules, per file content: a file
    is read again only when it may have changed, parsed only when its text
    matches the question's pattern, and parsed once for all the questions
    asked while it is the most recent one (package folders of multi-MB
    files made the parses the bulk of a run).  The answers of the last
    `KEEP` files are kept (a run goes folder by folder).

    Answers are keyed by (path, content digest).  The stat stamp (inode,
    size, mtime, ctime) says whether to read the file again, but only once
    it has settled: two same-size writes within one timestamp tick leave
    the stamp as it was, so a file changed less than `SETTLE_NS` before it
    was looked at is read (and its digest compared) at every question.  A
    settled file cannot change without a later ctime (no tool sets ctime).
    """

    KEEP = 32
    SETTLE_NS = 2_000_000_000  # above any filesystem's timestamp granularity (FAT: 2 s)

    def __init__(self) -> None:
        self.results: dict[tuple, dict] = {}
        self.texts: dict[tuple, bytes] = {}
        self.tree: tuple[tuple, ast.AST] | None = None
        # path -> (stat stamp, digest, settled)
        self.seen: dict[str, tuple[tuple, bytes, bool]] = {}

    def derived(self, path: str, question: tuple, pattern: re.Pattern, compute, default):
        try:
            key = self._key(path)
        except OSError:
            return default
        known = self.results.pop(key, None)
        if known is None:
            known = {}
            if len(self.results) >= self.KEEP:
                self.results.pop(next(iter(self.results)))
        self.results[key] = known  # the most recent last
        try:
            gate = ("mentions", pattern.pattern)
            if gate not in known:
                known[gate] = pattern.search(self._raw(key).decode("utf-8", errors="replace")) is not None
            if not known[gate]:
                return default
            if question not in known:
                if self.tree is None or self.tree[0] != key:
                    self.tree = None
                    self.tree = (key, ast.parse(self._raw(key)))
                known[question] = compute(self.tree[1])
            return known[question]
        except (OSError, SyntaxError, ValueError, RecursionError):
            known[question] = default
            return default

    def _key(self, path: str) -> tuple:
        """(path, digest of the content); reads the file unless its settled
        stat stamp is the one last seen."""
        now = time.time_ns()
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        seen = self.seen.get(path)
        if seen is not None and seen[0] == stamp and seen[2]:
            return (path, seen[1])
        with open(path, "rb") as fh:
            raw = fh.read()
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        settled = max(st.st_mtime_ns, st.st_ctime_ns) + self.SETTLE_NS < now
        if path not in self.seen and len(self.seen) >= 64 * self.KEEP:
            self.seen.pop(next(iter(self.seen)))
        self.seen[path] = (stamp, digest, settled)
        key = (path, digest)
        if key not in self.texts:
            if len(self.texts) >= 8:
                self.texts.pop(next(iter(self.texts)))
            self.texts[key] = raw
        return key

    def _raw(self, key: tuple) -> bytes:
        raw = self.texts.get(key)
        if raw is None:
            with open(key[0], "rb") as fh:
                raw = fh.read()
            if hashlib.blake2b(raw, digest_size=16).digest() != key[1]:
                raise OSError(f"{key[0]} changed while it was read")
            if len(self.texts) >= 8:
                self.texts.pop(next(iter(self.texts)))
            self.texts[key] = raw
        return raw


_SIBLINGS = _Siblings()


def sibling_subclass(here: str, base: str) -> tuple[str, str] | None:
    """A class of a sibling module (`_sibling_paths`) that derives from a
    class spelled `base` (directly or through other classes of its file; by
    spelling, so an unrelated class of that name counts too), as (class,
    file name); None when there is none.  Read through `_SIBLINGS`."""
    pattern = word_pattern(base)
    for path in _sibling_paths(here):
        table = _SIBLINGS.derived(path, ("classes",), pattern, _class_table, None)
        family = sorted({c[0] for c in _subclass_family(table, base)}) if table else []
        if family:
            return family[0], os.path.basename(path)
    return None


def _subclass_attr_uses(table, base: str) -> list[tuple[str, str, int, str, str]]:
    """(class, attr, line, method, kind) for `self.<attr>` in the methods of the
    classes of `table` (`_class_table`) deriving from `base` (by name)."""
    return [use for c in _subclass_family(table, base) for use in c[2]]


def _subclass_family(table, base: str) -> list:
    """The rows of `table` (`_class_table`) deriving from `base` (by name),
    directly or through other classes of the table."""
    names = {base}
    family: list = []
    grew = True
    while grew:
        grew = False
        for c in table:
            if c not in family and c[0] != base and any(b in names for b in c[1]):
                family.append(c)
                names.add(c[0])
                grew = True
    return family


def _class_table(tree: ast.Module) -> list[tuple[str, tuple, list]]:
    """(name, base names, its methods' `self.<attr>` uses) for every class of
    the file: what `_subclass_attr_uses` needs for any base, from one walk."""
    table = []
    for c in ast.walk(tree):
        if not isinstance(c, ast.ClassDef):
            continue
        uses = []
        for fn in c.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    kind = "store" if isinstance(sub.ctx, ast.Store) else "read"
                    uses.append((c.name, sub.attr, sub.lineno, fn.name, kind))
        table.append((c.name, tuple(filter(None, map(dotted_tail, c.bases))), uses))
    return table


def _span_in(inner: tuple, outer: tuple) -> bool:
    return (inner[0], inner[1]) >= (outer[0], outer[1]) and (inner[2], inner[3]) <= (outer[2], outer[3])
