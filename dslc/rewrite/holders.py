"""Which object an outside use reaches when its chain starts at an unknown
name (issue 8, S220): the holders of an attribute name in the package.

`outside.reaches` decides the chains it can type (`self.a.b` through the
file's `self.a = K(...)` bindings, imported names, classes); a chain rooted
at a parameter or a local (`b.rel_attn.layer_norm` in a weight-map builder,
`pointer.LayerNorm` in a checkpoint loader) may be anything, and refuses.
This module proves some of those reach another object:

- the object that holds the attribute is the value of an attribute `L` of
  something (`<expr>.L.<attr>`), or a local name whose one reaching
  definition, on the straight-line path before the use, is `<expr>.L`,
  `getattr(<expr>, "L")` or `K(...)`;
- every store of an attribute `L` in the package (the file and the other
  modules of its folder: `x.L = v`, `setattr(x, "L", v)`, `add_module("L",
  v)`, `L = v` or a method `L` in a class body) stores a value that is not
  an instance of the rewritten class: a new instance of a class defined in
  that module which does not derive from it (by name, through the module's
  classes), a literal, a lambda, a plain method;
- and no module of the package stores attributes under computed names
  (`setattr(x, name, v)`, `add_module(name, v)`, `x.__dict__[k] = v`)
  or defines `__getattr__` / `__getattribute__` / `__new__` where the
  argument above would rely on it.

The assumption (the same as the outside check's scope): instances of the
rewritten class are held only where the package's own code stores them.
An object built elsewhere (a wrapper of another library holding a layer
under its own attribute name) is not seen.  A pickled object's `__dict__`
restored in `__setstate__` holds what the stores seen put there.

Anything else is unknown, and the use still refuses.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

_SETATTRS = {"setattr": 1, "__setattr__": 1, "add_module": 0, "register_module": 0}
_DYNAMIC_DEFS = {"__getattr__", "__getattribute__"}
_STATICS = {"staticmethod", "classmethod"}
# Text that may make a module's answer differ from "it stores nothing": a
# store under a computed name, a lookup hook, a dict write.
DYNAMIC_TEXT = re.compile(r"setattr|add_module|register_module|__getattr|__dict__|__new__|__class__|_modules|vars\(")


@dataclass
class Holders:
    """What one module stores under attribute names, for any name."""

    # name -> the values stored under it: ("class", K) a new instance of K
    # (a class of this module), ("other",) not an instance of any class of
    # the package, ("unknown",) anything
    stores: dict[str, list[tuple]] = field(default_factory=dict)
    classes: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)  # name -> bases, per definition
    makers: set[str] = field(default_factory=set)  # classes defining __new__
    rebound: set[str] = field(default_factory=set)  # names bound anywhere other than by `class` (imports, stores, parameters)
    relative: set[str] = field(default_factory=set)  # names imported from this folder (`from .x import K`)
    dynamic: list[int] = field(default_factory=list)  # lines storing under computed names / lookup hooks

    def family(self, base: str) -> set[str]:
        """This module's classes that are `base` or derive from it by name."""
        names = {base}
        grew = True
        while grew:
            grew = False
            for name, defs in self.classes.items():
                if name not in names and any(b in names for bases in defs for b in bases):
                    names.add(name)
                    grew = True
        return names

    def foreign(self, name: str) -> bool:
        """`name` (a class of this module) has a base imported from this folder,
        through its bases defined here: it might derive from anything there."""
        seen, todo = set(), [name]
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            for bases in self.classes.get(c, ()):
                for b in bases:
                    if b in self.classes:
                        todo.append(b)
                    elif b in self.relative or b in self.rebound:
                        return True
        return bool(seen & self.makers)


def _tail(expr) -> str | None:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return None


_LITERALS = (ast.Constant, ast.JoinedStr, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp,
             ast.DictComp, ast.GeneratorExp, ast.Lambda)


def _value(value: ast.expr | None) -> tuple:
    """What a stored value is, as far as one module tells."""
    if value is None:
        return ("unknown",)
    if isinstance(value, _LITERALS):
        return ("other",)
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        return ("class", value.func.id)
    return ("unknown",)


class _Walker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.h = Holders()
        self.func: list[str] = []

    def store(self, name: str, value: tuple) -> None:
        self.h.stores.setdefault(name, []).append(value)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 1:
            self.h.relative.update(a.asname or a.name for a in node.names)
        else:
            self.h.rebound.update(a.asname or a.name for a in node.names if a.name != "*")

    def visit_Import(self, node: ast.Import) -> None:
        self.h.rebound.update((a.asname or a.name).split(".")[0] for a in node.names)

    def visit_arg(self, node: ast.arg) -> None:
        self.h.rebound.add(node.arg)

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.h.rebound.add(node.id)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.h.classes.setdefault(node.name, []).append(tuple(filter(None, map(_tail, node.bases))))
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                plain = all(_tail(d) in _STATICS for d in item.decorator_list)
                self.store(item.name, ("other",) if plain else ("unknown",))
                if item.name in _DYNAMIC_DEFS:
                    self.h.dynamic.append(item.lineno)
                if item.name == "__new__":
                    self.h.makers.add(node.name)
            elif isinstance(item, ast.ClassDef):
                self.store(item.name, ("other",))
            elif isinstance(item, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                            # an annotated name is a field: a generated `__init__`
                            # (dataclass, NamedTuple) stores whatever it is given
                            plain = isinstance(t, ast.Name) and isinstance(item, ast.Assign)
                            self.store(n.id, _value(item.value) if plain else ("unknown",))
        self.generic_visit(node)

    def visit_FunctionDef(self, node) -> None:
        self.func.append(node.name)
        self.generic_visit(node)
        self.func.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _assign(self, targets: list, value: ast.expr | None, plain: bool) -> None:
        for t in targets:
            simple = plain and isinstance(t, ast.Attribute)
            for n in ast.walk(t):
                if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                    self.store(n.attr, _value(value) if simple and n is t else ("unknown",))
                    if n.attr in ("__dict__", "__class__"):
                        self._dict_write(n)
                elif isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store) and _dicty(n.value):
                    self.h.dynamic.append(n.lineno)
                elif isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                    self.h.rebound.add(n.id)

    def _dict_write(self, node) -> None:
        if not (node.attr == "__dict__" and self.func and self.func[-1] == "__setstate__"):
            self.h.dynamic.append(node.lineno)

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assign(node.targets, node.value, True)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._assign([node.target], node.value, True)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._assign([node.target], None, False)
        self.generic_visit(node)

    def visit_For(self, node) -> None:
        self._assign([node.target], None, False)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None:
            self._assign([node.optional_vars], None, False)
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._assign([node.target], None, False)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _tail(node.func)
        if name in _SETATTRS:
            at = _SETATTRS[name]
            if name == "__setattr__" and isinstance(node.func, ast.Attribute) and len(node.args) == 3:
                at = 1  # object.__setattr__(obj, name, value)
            elif name == "__setattr__":
                at = 0
            if len(node.args) > at + 1:
                key, value = node.args[at], node.args[at + 1]
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    self.store(key.value, _value(value))
                else:
                    self.h.dynamic.append(node.lineno)
            elif name in ("setattr", "__setattr__") or node.keywords:
                self.h.dynamic.append(node.lineno)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("update", "setdefault", "__setitem__") \
                and _dicty(node.func.value):
            if isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "__dict__":
                self._dict_write(node.func.value)
            else:
                self.h.dynamic.append(node.lineno)
        self.generic_visit(node)


def _dicty(expr) -> bool:
    """`x.__dict__`, `x._modules` (and the other nn.Module tables), `vars(x)`."""
    if isinstance(expr, ast.Attribute):
        return expr.attr in ("__dict__", "_modules", "_parameters", "_buffers")
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "vars"


def holders(tree: ast.AST) -> Holders:
    w = _Walker()
    w.visit(tree)
    return w.h


# ---------------------------------------------------------------------------
# The question


def not_ours(h: Holders, cls_name: str, found: tuple) -> bool:
    """A value `found` (`_value`) stored in the module of `h` is provably no
    instance of `cls_name`: a literal or plain method, or a new instance of a
    class defined there that is not `cls_name` and derives from it through
    none of that module's classes (in a sibling module a class of that name
    counts as it too; one imported from the folder is unknown)."""
    if found[0] == "other":
        return True
    if found[0] != "class":
        return False
    k = found[1]
    if k in h.classes:
        return k not in h.family(cls_name) and not h.foreign(k) and k not in h.rebound
    return False


def link_elsewhere(package: list[tuple[Holders, bool]], cls_name: str, link: str) -> bool:
    """Every store of attribute `link` in the package (`(holders, is the
    class's module)` per module) stores something that is no instance of
    `cls_name`, at least one does, and no module stores under computed names."""
    seen = False
    for h, _ in package:
        if h.dynamic:
            return False
        for found in h.stores.get(link, ()):
            if not not_ours(h, cls_name, found):
                return False
            seen = True
    return seen


# ---------------------------------------------------------------------------
# A local name's one reaching definition


def _stores_name(node: ast.AST, name: str) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load):
            return True
        if isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names:
            return True
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name:
            return True
        if isinstance(n, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name).split(".")[0] == name
                                                                for a in n.names):
            return True
        if isinstance(n, ast.ExceptHandler) and n.name == name:
            return True
        if isinstance(n, ast.arg) and n.arg == name:
            return True
    return False


def _header(stmt: ast.stmt) -> list[ast.AST]:
    """The parts of a compound statement evaluated before its body runs."""
    if isinstance(stmt, (ast.If, ast.While)):
        return [stmt.test]
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return [stmt.target, stmt.iter]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return list(stmt.items)
    return []


def _index(body: list, owner, parents: dict) -> None:
    for i, s in enumerate(body):
        parents[id(s)] = (body, i, owner)
        for fld in ("body", "orelse", "finalbody"):
            sub = getattr(s, fld, None)
            if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt) \
                    and not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                _index(sub, s, parents)
        for handler in getattr(s, "handlers", None) or ():
            _index(handler.body, handler, parents)
        for case in getattr(s, "cases", None) or ():
            _index(case.body, case, parents)


def reaching_value(fn, stmt: ast.stmt, name: str) -> tuple[ast.expr, ast.stmt] | None:
    """The value of the one definition of local `name` that reaches `stmt`
    (a statement of `fn`'s own body, not of a nested function) on the
    straight-line path before it: `name = <value>` with nothing between that
    may bind `name` again, through enclosing `if` / `with` / `try` bodies,
    and loops that bind it nowhere; with that statement.  None when it is
    not that simple."""
    if any(isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names for n in ast.walk(fn)):
        return None
    parents: dict = {}
    _index(fn.body, fn, parents)
    if id(stmt) not in parents:
        return None
    while True:
        body, i, owner = parents[id(stmt)]
        for prev in reversed(body[:i]):
            if isinstance(prev, (ast.Assign, ast.AnnAssign)) and prev.value is not None:
                targets = prev.targets if isinstance(prev, ast.Assign) else [prev.target]
                if all(isinstance(t, ast.Name) for t in targets) and any(t.id == name for t in targets) \
                        and not _stores_name(prev.value, name):
                    return prev.value, prev
            if _stores_name(prev, name):
                return None
        if owner is fn:
            return None  # a parameter, a global, or unbound
        if isinstance(owner, (ast.For, ast.AsyncFor, ast.While)):
            if _stores_name(owner, name):
                return None  # another iteration's definition may reach
        elif isinstance(owner, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            if body is not owner.body:
                return None  # an `else` / `finally` body: after any part of the `try`
        elif isinstance(owner, (ast.If, ast.With, ast.AsyncWith)):
            if any(_stores_name(part, name) for part in _header(owner)):
                return None
        else:
            return None  # an `except` handler, a `match` case
        stmt = owner


def _statement_of(fn, node: ast.AST) -> ast.stmt | None:
    """The innermost statement of `fn` holding `node` (not inside a nested
    function, lambda or comprehension, whose names are their own)."""
    todo: list[tuple[ast.AST, ast.stmt | None]] = [(fn, None)]
    while todo:
        n, stmt = todo.pop()
        if n is node:
            return stmt
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda,
                                      ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                todo.append((child, child if isinstance(child, ast.stmt) else stmt))
    return None


# ---------------------------------------------------------------------------
# From a use to its holder


def find_use_node(functions, use):
    """([(the node of `use`, the expression of the object holding the
    attribute)] for every spelling of it on its line, the innermost function
    holding them): `<holder>.<attr>` or `getattr(<holder>, "<attr>")`.
    `functions`: every function definition of the module, in `ast.walk`
    order (`function_defs`)."""
    best = None
    for fn in functions:
        if fn.lineno <= use.line <= (fn.end_lineno or fn.lineno) and (best is None or fn.lineno >= best.lineno):
            best = fn
    if best is None:
        return None
    hits = []
    for n in ast.walk(best):
        if getattr(n, "lineno", None) != use.line:
            continue
        if isinstance(n, ast.Attribute) and n.attr == use.attr:
            hits.append((n, n.value))
        elif isinstance(n, ast.Call) and _tail(n.func) in ("getattr", "hasattr", "setattr", "delattr") \
                and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and n.args[1].value == use.attr:
            hits.append((n, n.args[0]))
    return (hits, best) if hits else None


def function_defs(statements) -> list:
    """The function definitions among `statements` (a module's, in `ast.walk`
    order: `astutil.index_statements`); functions are statements, so these
    are the module's functions in the order `ast.walk` finds them."""
    return [s for s in statements if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]


def holder_link(functions, use) -> list[tuple[str, str]] | None:
    """For each spelling of `use` on its line: how its holder is known, as
    ("link", L) (the value of an attribute `L`) or ("class", K) (a new `K`
    instance, K by name); None when some spelling's holder is unknown.
    `functions`: as for `find_use_node`."""
    got = find_use_node(functions, use)
    if got is None:
        return None
    hits, fn = got
    out = []
    for node, holder in hits:
        stmt = _statement_of(fn, node)
        if stmt is None:
            return None
        how = _holder(fn, stmt, node, holder, depth=0)
        if how is None:
            return None
        out.append(how)
    return out


_SIMPLE = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return, ast.Delete)


def _holder(fn, stmt: ast.stmt, node: ast.AST | None, holder: ast.expr, depth: int) -> tuple[str, str] | None:
    """How the object `holder` (an expression evaluated in `stmt`) is known."""
    if depth > 8:
        return None
    if isinstance(holder, ast.Attribute):
        return ("link", holder.attr)
    if isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name) and holder.func.id == "getattr" \
            and len(holder.args) == 2 and not holder.keywords and isinstance(holder.args[1], ast.Constant) \
            and isinstance(holder.args[1].value, str):
        return ("link", holder.args[1].value)
    if isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name):
        return ("class", holder.func.id)
    if not isinstance(holder, ast.Name) or holder.id == "self":
        return None
    name = holder.id
    if _walrus_binds(stmt, name):
        return None
    if not isinstance(stmt, (*_SIMPLE, ast.If)) and _stores_name(stmt, name):
        return None  # a loop header read again after its body, a `with` item after another's target
    if isinstance(stmt, _SIMPLE) and node is not None and _stores_name(stmt, name) \
            and any(node in set(ast.walk(t)) for t in getattr(stmt, "targets", [getattr(stmt, "target", None)]) if t):
        return None  # read in a target, maybe after the name is bound again
    found = reaching_value(fn, stmt, name)
    if found is None:
        return None
    value, where = found
    return _holder(fn, where, None, value, depth + 1)


def _walrus_binds(stmt: ast.stmt, name: str) -> bool:
    return any(isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name) and n.target.id == name
               for n in ast.walk(stmt))


def gate(link: str) -> re.Pattern:
    """Text of a module that may store attribute `link` or store under computed names."""
    return re.compile(r"\b%s\b|%s" % (re.escape(link), DYNAMIC_TEXT.pattern))


def elsewhere(functions, use, cls_name: str, here, package) -> bool:
    """`use` (an `outside.Use` in the module of the class, whose function
    definitions are `functions`, as for `find_use_node`) provably reaches no
    instance of `cls_name`.  `here()`: that module's `holders`;
    `package(link)`: [(holders, is the class's module)] for every module of
    the package that may store `link`."""
    try:
        how = holder_link(functions, use)
        if not how:
            return False
        for kind, name in how:
            if kind == "link":
                if not link_elsewhere(package(name), cls_name, name):
                    return False
            elif not not_ours(here(), cls_name, ("class", name)):
                return False
        return True
    except RecursionError:  # code nested too deep to follow: unknown
        return False
