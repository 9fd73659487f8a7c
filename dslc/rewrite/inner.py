"""`option inner`: other uses of a layer that the rewrite rebuilds around
itself, redirected to the original layer inside the new one.

A rule states with `option inner = "$conv[0]"` that the layer its init
target binds again to `$conv` keeps the original layer at `[0]` (the target
takes `$conv` itself as an argument: `ConvBn2d($conv, $bn) -> $conv`;
`dslc check` enforces that, ADR121).  A use of `self.<conv>` that the
attribute checks would refuse (S207: the layer passed to a function, its
attributes read, a second call) then reads that original layer instead:

* `self.conv[0]` where `__init__` always builds the new layer (the general
  fusion: the attribute's one binding replaced in place);
* `(self.conv[0] if isinstance(self.conv, ConvBn2d) else self.conv)` where
  only one branch of `__init__` builds it (NoneGuardedLayer): on the other
  the attribute is still the original layer.

The kind that plans the match says which form holds (`InnerForm`).  Every
other use keeps its refusal, with the reason why it cannot be redirected: a
write through the attribute (`self.conv.weight = ...`, `setattr`), a use in
`__init__` (the new layer may not be built yet there), in a static or class
method, in a nested function or class that binds its own `self`, in a method
that rebinds `self`, inside an f-string, in a method defined twice or in a
class-level statement (the analysis sees one definition per name).  Stores of the
attribute itself stay S206; uses in subclasses are refused by the subclass
checks, which this module does not relax.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Sequence

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.plan import Plan

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


@dataclass(frozen=True)
class InnerForm:
    """How a use of `self.<attr>` reaches the original layer: `accessor`
    (`"[0]"`) on the new layer; `test` the spelled class of the new layer
    when only some branches of `__init__` build it (None: all of them);
    `refused` why no form holds for this match (None: one does)."""

    accessor: str
    test: str | None = None
    refused: str | None = None

    def text(self, attr: str) -> str:
        inner = f"self.{attr}{self.accessor}"
        if self.test is None:
            return inner
        return f"({inner} if isinstance(self.{attr}, {self.test}) else self.{attr})"


def inner_attrs(match: ir.Match, changed: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The replaced attributes the rule's `option inner` covers: attr -> (init variable, accessor)."""
    inner = match.rule.inner()
    out: dict[str, tuple[str, str]] = {}
    for var, accessor in inner.items():
        binding = match.init_nodes.get(var)
        if binding is not None and changed.get(binding.attr) == "replaces":
            out[binding.attr] = (var, accessor)
    return out


def target_class(match: ir.Match, var: str) -> str | None:
    """The qualified name of the init target node that binds `var` again."""
    init = match.rule.init
    for pn in (init.target or ()) if init is not None else ():
        if any(out.name == var for out in pn.outputs) and pn.callee is not None and pn.callee.qualname:
            return pn.callee.qualname
    return None


class InnerUses:
    """Redirects the other uses of the attributes a match replaces (see the module docstring)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def check(self, match: ir.Match, cls, changed: dict[str, str], plan: Plan, forms: dict[str, InnerForm], *,
              interface_kept: bool = False, also_allowed: Sequence = ()) -> str | None:
        """`safety.check_attr_uses`, except that a use of an attribute in
        `forms` that can read the original layer is redirected there (edits
        added to `plan`).  Returns the reason of the first use that stays in
        the way, None when there is none."""
        todo: list = []
        for use, reason in safety.attr_use_problems(match, cls, changed, interface_kept=interface_kept,
                                                    also_allowed=also_allowed):
            form = forms.get(use.attr)
            if form is None or use.kind == "store":
                return reason
            if form.refused is not None:
                return codes.reason(codes.S_ATTR_USED, f"{reason.message}; `option inner` cannot redirect it: {form.refused}")
            todo.append(use)
        if not todo:
            return None
        edits, why = self._plan(match, cls, todo, forms)
        if why is not None:
            use, text = why
            return codes.reason(codes.S_ATTR_USED, (
                f"attribute `self.{use.attr}`, which the rewrite replaces, is also used at line {use.lines[0]} "
                f"(in `{use.method}`); `option inner` cannot redirect it: {text}"))
        for node, stmt, text in edits:
            start = self.ctx.mod.smap.offset(node.lineno, node.col_offset)
            end = self.ctx.mod.smap.offset(node.end_lineno, node.end_col_offset)
            self.ctx.claim(plan, start, end, text, stmt)
        return None

    def _plan(self, match: ir.Match, cls, todo: list, forms: dict[str, InnerForm]):
        """The edits of the uses in `todo` ((node, statement, new text) each),
        or (a use, why it cannot be redirected)."""
        node = self.ctx.mod.classes.get(match.class_name or "") or self.ctx.mod.classes.get(
            (match.class_name or "").rsplit(".", 1)[-1])
        if node is None or node.lineno != cls.lines[0]:
            return [], (todo[0], "the class's definition was not found")
        attrs = {use.attr for use in todo}
        methods = _method_defs(node)
        stray = _stray_uses(node, attrs, methods)
        if stray is not None:
            return [], (todo[0], stray)
        edits = []
        for use in todo:
            defs = methods.get(use.method, [])
            if len(defs) != 1:
                return [], (use, f"`{use.method}` is defined {len(defs)} times in the class")
            fn = defs[0]
            why = _method_reason(fn)
            if why is not None:
                return [], (use, why)
            found = [n for n in _self_attrs(fn, use.attr) if (n.lineno, n.end_lineno) == tuple(use.lines)]
            if not found:
                return [], (use, "the use was not found in the method's code")
            parents = _parents(fn)
            for n in found:
                why = _use_reason(n, parents, fn)
                if why is not None:
                    return [], (use, why)
                edits.append((n, _statement(n, parents), forms[use.attr].text(use.attr)))
        # one edit per node, each use of a line covered by the same nodes
        unique = {id(n): (n, st, text) for n, st, text in edits}
        counts: dict[tuple, int] = {}
        for use in todo:
            counts[(use.attr, use.method, tuple(use.lines))] = counts.get((use.attr, use.method, tuple(use.lines)), 0) + 1
        for (attr, method, lines), count in counts.items():
            nodes = [n for n, _, _ in unique.values() if n.attr == attr and (n.lineno, n.end_lineno) == lines]
            if len(nodes) != count:
                use = next(u for u in todo if (u.attr, u.method, tuple(u.lines)) == (attr, method, lines))
                return [], (use, "the uses on that line could not be told apart")
        return list(unique.values()), None


def _method_defs(node: ast.ClassDef) -> dict[str, list]:
    """The class body's function definitions by name (several: redefined)."""
    out: dict[str, list] = {}
    for st in node.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.setdefault(st.name, []).append(st)
    return out


def _stray_uses(node: ast.ClassDef, attrs: set[str], methods: dict[str, list]) -> str | None:
    """A `self.<attr>` of `attrs` outside the methods the analysis scans: a
    class-level statement, or a method defined twice (the analysis keeps one)."""
    for st in node.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if len(methods[st.name]) > 1 and any(n.attr in attrs for n in _self_attrs(st, None)):
                return f"`{st.name}` is defined more than once in the class and uses it"
            continue
        if any(n.attr in attrs for n in _self_attrs(st, None)):
            return f"a class-level statement at line {st.lineno} uses it"
    return None


def _method_reason(fn) -> str | None:
    """Why `self` in `fn` may not be the instance (None: it is)."""
    if fn.name == "__init__":
        return "it is in `__init__`, where the new layer may not be built yet"
    for d in fn.decorator_list:
        name = d.id if isinstance(d, ast.Name) else d.attr if isinstance(d, ast.Attribute) else None
        if name in ("staticmethod", "classmethod"):
            return f"`{fn.name}` is a {name}"
    params = fn.args.posonlyargs + fn.args.args
    if not params or params[0].arg != "self":
        return f"`self` is not the first parameter of `{fn.name}`"
    for n in ast.walk(fn):
        if isinstance(n, ast.Name) and n.id == "self" and not isinstance(n.ctx, ast.Load):
            return f"`{fn.name}` assigns `self` (line {n.lineno})"
    return None


def _self_attrs(root: ast.AST, attr: str | None) -> list[ast.Attribute]:
    """Every `self.<attr>` under `root` (any attribute when `attr` is None)."""
    return [n for n in ast.walk(root) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "self" and (attr is None or n.attr == attr)]


def _parents(fn) -> dict[int, ast.AST]:
    out: dict[int, ast.AST] = {}
    for n in ast.walk(fn):
        for child in ast.iter_child_nodes(n):
            out[id(child)] = n
    return out


def _use_reason(node: ast.Attribute, parents: dict[int, ast.AST], fn) -> str | None:
    """Why this `self.<attr>` cannot read the original layer instead (None: it can)."""
    if not isinstance(node.ctx, ast.Load):
        return "it assigns the attribute"
    top = node
    while True:
        up = parents.get(id(top))
        if isinstance(up, (ast.Attribute, ast.Subscript)) and up.value is top:
            top = up
            continue
        break
    if top is not node and not isinstance(top.ctx, ast.Load):
        return "it writes to the layer through the attribute"
    up = parents.get(id(node))
    if isinstance(up, ast.Call) and node in up.args[:1] and isinstance(up.func, ast.Name) \
            and up.func.id in ("setattr", "delattr"):
        return f"`{up.func.id}` writes to the layer"
    cur = parents.get(id(node))
    while cur is not None and cur is not fn:
        if isinstance(cur, ast.JoinedStr):
            return "it is inside an f-string"
        if isinstance(cur, ast.ClassDef):
            return "it is inside a nested class"
        if isinstance(cur, _SCOPES):
            args = cur.args
            names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
            if "self" in names:
                return "it is inside a nested function with its own `self`"
        cur = parents.get(id(cur))
    return None


def _statement(node: ast.AST, parents: dict[int, ast.AST]) -> ast.stmt:
    cur = node
    while not isinstance(cur, ast.stmt):
        cur = parents[id(cur)]
    return cur
