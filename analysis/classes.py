"""Classes and their bases: which classes exist, their MRO, which are Modules.

A `ClassIndex` finds a class by qualified name in the analysed module, in
another module of the tree (through the `Resolver`), nested in a class body
(`module.Outer.Inner`), or, only to decide whether it is a
`torch.nn.Module`, in an installed package's sources (never torch's).  It
answers `is_module` (transitively through the bases), `hidden_base` (the
first base whose definition is not visible) and `mro` (the class and its
in-tree bases, depth-first).  Answers are cached per file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from .names import Resolver, Scope, dotted

MODULE_BASE = "torch.nn.Module"


@dataclass(slots=True)
class ClassInfo:
    """A class definition seen by the analysis (in this file or the tree)."""

    name: str
    qualname: str
    node: ast.ClassDef
    scope: Scope
    bases: tuple[str, ...]  # resolved qualnames or spellings
    base_quals: tuple[str | None, ...]
    methods: dict[str, ast.FunctionDef]


class ClassIndex:
    """The classes one analysed module can see (see the module docstring)."""

    def __init__(self, tree: ast.Module, scope: Scope, resolver: Resolver):
        self.tree = tree
        self.scope = scope
        self.module = scope.module
        self.resolver = resolver
        self._class_cache: dict[str, ClassInfo | None] = {}
        self._is_module_cache: dict[str, bool] = {}
        self._installed: Resolver | None = None

    def remember(self, info: ClassInfo) -> None:
        """A class of the analysed module, met while walking it."""
        self._class_cache.setdefault(info.qualname, info)

    def known(self, qual: str) -> ClassInfo | None:
        """The class `qual` when it was already looked up or remembered."""
        return self._class_cache.get(qual)

    def class_info(self, qual: str) -> ClassInfo | None:
        """The class `qual` when it is defined in this module or the tree."""
        if qual in self._class_cache:
            return self._class_cache[qual]
        self._class_cache[qual] = None
        module, _, name = qual.rpartition(".")
        info = None
        if module == self.module:
            tree, scope = self.tree, self.scope
        else:
            entry = self.resolver.load(module) if module else None
            tree, scope = (entry[1], entry[0]) if entry else (None, None)
        if tree is not None:
            for stmt in top_level(tree.body):
                if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                    info = self.make_info(stmt, scope)
        else:
            info = self._nested_class_info(qual)
            if info is None and module and not qual.startswith("torch."):
                info = self._installed_class(qual)
        self._class_cache[qual] = info
        return info

    def _installed_class(self, qual: str, _depth: int = 0) -> ClassInfo | None:
        """A base class from an installed package's sources (never torch):
        only to decide whether a class is a Module (names stay as composed)."""
        if _depth > 5:
            return None
        if self._installed is None:
            self._installed = Resolver(None, installed=True)
        module, _, name = qual.rpartition(".")
        entry = self._installed.load(module)
        if entry is None:
            return None
        scope, tree = entry
        for stmt in top_level(tree.body):
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                return self.make_info(stmt, scope, self._installed)
        target = self._installed.resolve_parts(scope, [name])  # a re-export
        if target and target != qual:
            return self._installed_class(target, _depth + 1)
        return None

    def _nested_class_info(self, qual: str) -> ClassInfo | None:
        """`module.Outer.Inner`: a class nested in a class body (in this
        module or an in-tree one); None when no such class exists."""
        if qual.startswith("torch."):
            return None
        parts = qual.split(".")
        for cut in range(len(parts) - 2, 0, -1):
            module = ".".join(parts[:cut])
            if module == self.module:
                tree, scope = self.tree, self.scope
            else:
                entry = self.resolver.load(module)
                if entry is None:
                    continue
                scope, tree = entry
            body, node, parent = list(top_level(tree.body)), None, None
            for name in parts[cut:]:
                parent = node
                node = next((st for st in body if isinstance(st, ast.ClassDef) and st.name == name), None)
                if node is None:
                    return None
                body = node.body
            return self.make_info(node, scope, prefix=".".join(parts[cut:-1]) + ".", enclosing=parent)
        return None

    def make_info(self, node: ast.ClassDef, scope: Scope, resolver: Resolver | None = None,
                   prefix: str = "", enclosing: ast.ClassDef | None = None) -> ClassInfo:
        """`prefix` is `Outer.` for a class nested in the body of `Outer`:
        its name (and qualname) is then `Outer.Inner`."""
        resolver = resolver or self.resolver
        bases, quals = [], []
        for base in node.bases:
            parts = dotted(base)
            qual = resolver.resolve_parts(scope, parts) if parts else None
            if parts and enclosing is not None and any(
                    isinstance(st, ast.ClassDef) and st.name == parts[0] and st.lineno < node.lineno
                    for st in enclosing.body):
                # a sibling class of the enclosing class body (visible to the bases only)
                qual = f"{scope.module}.{prefix}{'.'.join(parts)}"
            quals.append(qual)
            bases.append(qual or ast.unparse(base))
        methods = {s.name: s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
        name = prefix + node.name
        return ClassInfo(name, f"{scope.module}.{name}", node, scope, tuple(bases), tuple(quals), methods)

    def is_module(self, qual: str | None, _depth: int = 0) -> bool:
        """Is `qual` torch.nn.Module or a subclass of it (through the tree)?"""
        if qual is None or _depth > 20:
            return False
        if qual in self._is_module_cache:
            return self._is_module_cache[qual]
        self._is_module_cache[qual] = False
        result = False
        if qual == MODULE_BASE or (qual.startswith("torch.nn.") and qual.rsplit(".", 1)[1][:1].isupper()
                                   and qual not in ("torch.nn.Parameter",)):
            result = True
        else:
            info = self.class_info(qual)
            if info is not None:
                result = any(self.is_module(b, _depth + 1) for b in info.base_quals)
        self._is_module_cache[qual] = result
        return result

    def hidden_base(self, info: ClassInfo, _depth: int = 0) -> str | None:
        """The first base (transitively) that is neither torch's nor visible."""
        if _depth > 20:
            return None
        for qual, spelling in zip(info.base_quals, info.bases):
            if qual is None:
                return spelling
            if qual.startswith("torch.") or qual in ("object", "builtins.object") or qual.startswith("builtins."):
                continue
            base = self.class_info(qual)
            if base is None:
                return qual
            deeper = self.hidden_base(base, _depth + 1)
            if deeper is not None:
                return deeper
        return None

    def mro(self, info: ClassInfo) -> list[ClassInfo]:
        """The class and its in-tree bases, depth-first (a simple MRO)."""
        out, seen, stack = [], set(), [info]
        while stack:
            cur = stack.pop(0)
            if cur.qualname in seen:
                continue
            seen.add(cur.qualname)
            out.append(cur)
            for qual in cur.base_quals:
                base = self.class_info(qual) if qual else None
                if base is not None:
                    stack.append(base)
        return out


def top_level(stmts):
    """Top-level statements, descending into module-level if/try blocks."""
    for stmt in stmts:
        if isinstance(stmt, ast.If):
            yield from top_level(stmt.body)
            yield from top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from top_level(stmt.body)
            for h in stmt.handlers:
                yield from top_level(h.body)
            yield from top_level(stmt.orelse)
            yield from top_level(stmt.finalbody)
        else:
            yield stmt
