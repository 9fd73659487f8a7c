"""astroid as the fallback for callees the import table leaves unresolved.

`names.py` resolves dotted names from the module's import/alias table.  Some
forms need flow within a function or a class body instead:

* a factory held in a local variable: `act = nn.GELU` ... `self.act = act()`;
* a class attribute used as a factory: `norm_cls = nn.LayerNorm` in the
  class body, `self.norm = self.norm_cls(d)` in `__init__`;
* a module-level name bound by an expression the table does not follow:
  `Norm = nn.LayerNorm if FAST else nn.LayerNorm` (both branches agree).

For these the module source is parsed once with astroid (lazily: only when
the extractor meets such a callee, never for files the table resolves),
building only the tree (no transforms, no post-build inference of instance
attributes) so that nothing outside the module is loaded; a module with a
`from x import *` is not inferred at all (the star may bind any name).  The
reaching definitions of a name come from astroid's scope lookup
(`NodeNG.lookup`, which keeps every binding that may reach the use and drops
the ones an unconditional later binding kills).  Each one is evaluated by a
small evaluator that stays inside the module:

* an `Import`/`ImportFrom` gives the imported name, composed as the import
  table does (`import torch.nn as nn` + `.BatchNorm2d` -> `torch.nn.BatchNorm2d`),
  then chased / canonicalised by `Resolver.follow`;
* a module-level `class`/`def` gives `<module>.<name>`;
* `x = <expr>` evaluates `<expr>`; `a if c else b` needs both to agree;
* anything else (a parameter, a call such as `getattr(nn, "LayerNorm")` or
  `partial(...)`, a loop target, a local class) is unknown.

A callee resolves only when every reaching definition evaluates to the same
qualified name.  A parameter is a reaching definition whenever it is not
unconditionally rebound, so the `norm_layer=None` / `if norm_layer is None:
norm_layer = nn.BatchNorm2d` idiom stays unresolved: the caller may pass any
factory.  astroid's own `infer()` is not used: it would descend into the
imported libraries (torch's sources), and the answer must not depend on them.

Soundness guards on top of the lookup: a name declared `global`/`nonlocal`,
a name read from an enclosing function (late binding), or a name rebound
inside a loop that contains the use is unknown.  `self.<attr>` resolves only
when exactly one class of the analyzed class's in-tree hierarchy (or the
class itself) binds `attr` once at class level, every base of the hierarchy
is in the tree (or is `torch.nn.Module`/`object`), and no code of the module
stores an attribute of that name or calls `setattr`.

Each module gets `TIME_BUDGET` CPU seconds of astroid work in all (process
time: the wall clock of a loaded machine would change results); past it, or on
any astroid exception, the answer is None (unresolved).
"""

from __future__ import annotations

import ast
import gc
import time

from .names import Resolver, Scope, resolve_relative

_GC = [0.0, 0.0]  # CPU seconds spent in the cyclic collector so far; start of the current pass


def _gc_clock(phase: str, info: dict) -> None:
    if phase == "start":
        _GC[1] = time.process_time()
    else:
        _GC[0] += time.process_time() - _GC[1]


gc.callbacks.append(_gc_clock)


def _clock() -> float:
    """This process's CPU seconds less those of the cyclic garbage collector:
    a full pass over a large heap (packs loaded, earlier files) falls where it
    falls and must not eat the budget of the module it interrupts."""
    return time.process_time() - _GC[0]


TIME_BUDGET = 2.0  # CPU seconds of astroid work per analyzed module (CPU, not wall: a loaded machine must not change results)
MAX_DEPTH = 24

# how many modules were parsed with astroid in this process (tests use it)
PARSES = 0

_SAFE_BASES = frozenset({"torch.nn.Module", "object", "builtins.object"})


class _Unknown(Exception):
    """A definition that cannot be evaluated soundly."""


class Inferrer:
    """astroid over one module, built on the first question."""

    def __init__(self, source: str, scope: Scope, resolver: Resolver, tree: ast.Module):
        self.source = source
        self.scope = scope
        self.resolver = resolver
        self.tree = tree
        self._module = None
        self._failed = False
        self._index: dict | None = None
        self._spent = 0.0
        self._deadline = 0.0
        self._stored: frozenset[str] | None = None
        self.error: str | None = None

    # -- astroid tree -------------------------------------------------------------

    def _astroid(self):
        if self._module is not None or self._failed:
            return self._module
        global PARSES
        PARSES += 1
        # imported before the clock starts: the first module of a process
        # must not pay astroid's import out of its budget (answers would
        # depend on which module came first)
        import astroid
        from astroid import nodes
        from astroid.builder import AstroidBuilder

        start = _clock()
        try:
            modname = self.scope.module
            # Only the tree: astroid.parse() would also run the transforms and
            # the post-build pass (instance attributes), both of which infer
            # class bases and so load the imported libraries (torch) into
            # astroid's cache.  `_data_build` does neither, nor caches.
            builder = AstroidBuilder(astroid.MANAGER, apply_transforms=False)
            module, rebuilder = builder._data_build(self.source, modname, self.scope.path)
            # the one post-build step needed: `from x import y` names into locals
            for from_node, global_names in rebuilder._import_from_nodes:
                if any(name == "*" for name, _ in from_node.names):
                    # a star import may bind any name: nothing here is sound
                    raise _Unknown("star import")
                builder.add_from_names_to_locals(from_node, global_names)
            index = {}
            for node in module.nodes_of_class((nodes.Name, nodes.Attribute)):
                index[(type(node).__name__, node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)] = node
            self._module, self._index = module, index
        except Exception as exc:  # any astroid failure: unresolved
            self._failed = True
            self.error = f"{type(exc).__name__}: {exc}"
        self._spent += _clock() - start
        return self._module

    def _node_for(self, expr: ast.expr):
        key = (type(expr).__name__, expr.lineno, expr.col_offset, expr.end_lineno, expr.end_col_offset)
        return self._index.get(key) if self._index else None

    # -- entry point --------------------------------------------------------------

    def infer_qualname(self, expr: ast.expr, classes: list | None = None) -> str | None:
        """Qualified, canonical name of what `expr` (a callee, in this module's
        stdlib tree) denotes; None when not every reaching definition agrees.

        `classes`: for `self.<attr>`, the analyzed class's in-tree hierarchy as
        (qualname, ast.ClassDef, in_this_module, base_quals), the class first.
        """
        if self._spent >= TIME_BUDGET or not isinstance(expr, (ast.Name, ast.Attribute)):
            return None
        if self._astroid() is None:
            return None
        start = _clock()
        self._deadline = start + (TIME_BUDGET - self._spent)
        try:
            if (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)
                    and expr.value.id == "self"):
                raw = self._class_attr(expr.attr, classes or [])
            else:
                node = self._node_for(expr)
                if node is None:
                    return None
                raw = self._eval(node, 0)
            if raw is None:
                return None
            return self.resolver.follow(raw)
        except _Unknown:
            return None
        except RecursionError:
            return None
        except Exception as exc:  # astroid internals: unresolved, never out
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            self._spent += _clock() - start

    # -- class attributes -----------------------------------------------------------

    def _stored_attrs(self) -> frozenset[str]:
        """Attribute names stored anywhere in the module (`<x>.<attr> = ...`,
        `del`, augmented); '*' when the module calls setattr."""
        if self._stored is None:
            out = set()
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load):
                    out.add(node.attr)
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                        and node.func.id in ("setattr", "delattr"):
                    out.add("*")
            self._stored = frozenset(out)
        return self._stored

    def _class_attr(self, attr: str, classes: list) -> str | None:
        stored = self._stored_attrs()
        if attr in stored or "*" in stored or not classes:
            return None
        known = {qual for qual, _, _, _ in classes} | _SAFE_BASES
        definers = []
        for qual, cls, local, base_quals in classes:
            if any(q is None or q not in known for q in base_quals):
                return None  # a base we cannot see may define the attribute
            found = [s for s in cls.body if _binds(s, attr)]
            if found:
                definers.append((cls, local, found))
        if not definers:
            return None
        if definers[0][0] is not classes[0][1] and len(definers) > 1:
            return None  # several bases define it: which one wins needs the real MRO
        cls, local, found = definers[0]
        if not local or len(found) != 1 or not isinstance(found[0], (ast.Assign, ast.AnnAssign)):
            return None
        stmt = found[0]
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or stmt.value is None:
            return None
        return self._eval_ast(stmt.value, 0)

    # -- evaluation ---------------------------------------------------------------

    def _eval(self, node, depth: int) -> str | None:
        """Dotted composition that an astroid (or ('ifexp', ast)) node denotes."""
        if depth > MAX_DEPTH or _clock() > self._deadline:
            raise _Unknown
        from astroid import nodes

        if isinstance(node, tuple):  # ("ifexp", ast.IfExp) from a class body
            _, e = node
            return self._agree([self._eval_ast(e.body, depth + 1), self._eval_ast(e.orelse, depth + 1)])
        if isinstance(node, nodes.IfExp):
            return self._agree([self._eval(node.body, depth + 1), self._eval(node.orelse, depth + 1)])
        if isinstance(node, nodes.Attribute):
            if isinstance(node.expr, nodes.Name) and node.expr.name == "self":
                raise _Unknown
            base = self._eval(node.expr, depth + 1)
            return f"{base}.{node.attrname}"
        if isinstance(node, nodes.Name):
            return self._eval_name(node, depth)
        raise _Unknown  # calls (getattr, partial), subscripts, literals: not guessed

    def _eval_ast(self, e: ast.expr, depth: int) -> str | None:
        if isinstance(e, (ast.Name, ast.Attribute)):
            node = self._node_for(e)
            if node is None:
                raise _Unknown
            return self._eval(node, depth)
        if isinstance(e, ast.IfExp):
            return self._eval(("ifexp", e), depth)
        raise _Unknown

    @staticmethod
    def _agree(results: list) -> str:
        if len(set(results)) != 1 or results[0] is None:
            raise _Unknown
        return results[0]

    def _eval_name(self, node, depth: int) -> str:
        from astroid import nodes

        name = node.name
        use_scope = node.scope()
        found_scope, assigns = node.lookup(name)
        if not assigns:
            raise _Unknown  # a builtin or an unbound name
        # late binding: a closure reads its enclosing function's variable at call time
        if isinstance(found_scope, (nodes.FunctionDef, nodes.Lambda)) and found_scope is not use_scope:
            raise _Unknown
        # global / nonlocal rebinding anywhere in the module
        for g in self._module.nodes_of_class((nodes.Global, nodes.Nonlocal)):
            if name in g.names:
                raise _Unknown
        if found_scope is use_scope and not isinstance(use_scope, nodes.Module):
            # a binding later in a loop body reaches the use on the next iteration
            parent = node.parent
            while parent is not None and parent is not use_scope:
                if isinstance(parent, (nodes.For, nodes.While)):
                    for an in parent.nodes_of_class(nodes.AssignName):
                        if an.name == name:
                            raise _Unknown
                parent = parent.parent
        results = []
        for a in assigns:
            results.append(self._eval_binding(a, name, depth))
        return self._agree(results)

    def _eval_binding(self, a, name: str, depth: int) -> str:
        from astroid import nodes

        if isinstance(a, nodes.AssignName):
            parent = a.parent
            if isinstance(parent, nodes.Assign) and a in parent.targets:
                return self._eval(parent.value, depth + 1)
            if isinstance(parent, nodes.AnnAssign) and parent.target is a and parent.value is not None:
                return self._eval(parent.value, depth + 1)
            raise _Unknown  # a parameter, a loop/with/except target, a tuple element, a walrus
        if isinstance(a, nodes.Import):
            for modname, asname in a.names:
                if asname == name:
                    return modname
                if asname is None and modname.split(".")[0] == name:
                    return name
            raise _Unknown
        if isinstance(a, nodes.ImportFrom):
            base = resolve_relative(self.scope.module, self.scope.is_package, a.level or 0, a.modname or None)
            if base is None:
                raise _Unknown
            for orig, asname in a.names:
                if (asname or orig) == name and orig != "*":
                    return f"{base}.{orig}"
            raise _Unknown
        if isinstance(a, (nodes.ClassDef, nodes.FunctionDef)) and isinstance(a.parent, nodes.Module):
            return f"{self.scope.module}.{a.name}"
        raise _Unknown


def _binds(stmt: ast.stmt, name: str) -> bool:
    """Does a class-body statement bind `name`?"""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return stmt.name == name
    if isinstance(stmt, ast.Assign):
        return any(isinstance(n, ast.Name) and n.id == name for t in stmt.targets for n in ast.walk(t))
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        return isinstance(stmt.target, ast.Name) and stmt.target.id == name
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return any((al.asname or al.name.split(".")[0]) == name for al in stmt.names)
    # bindings inside compound statements of the class body: treat as binding
    return any(isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load)
               for n in ast.walk(stmt)) if isinstance(stmt, (ast.If, ast.Try, ast.For, ast.While, ast.With)) else False
