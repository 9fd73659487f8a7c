"""Anchor calls the source spells but the analysis has no node for, and why.

A rule's anchor call (`k.transpose(-1, -2)`, `torch.einsum(...)`) that the
source spells in a function, where no analysed path holds it as a node, is a
place no pattern is tried at.  The near-miss report (dslc.rewrite.nearmiss)
must still say why, and say it for that function: the user reads "nothing
here" as "nothing to do" otherwise.  This module reads the source (parsed once
per file, only when a report asks) and names the cause, from what the
analysis kept (`covered`: the line spans of every path node of the file):

1. the call sits inside a sub-expression whose parts do not run exactly once,
   in order (a lambda, a comprehension, `a if c else b`, `a and b`): the
   analysis keeps the statement whole;
2. it is a tensor method called on a value the analysis does not follow (the
   result of another method, `k.reshape(...).transpose(-1, -2)`, an
   attribute, a subscript): a tensor method is a node only on a local name or
   on a modelled call's result, so the statement is kept whole;
3. it sits in a statement the analysis keeps whole (a loop it does not
   unroll, a `with`, a `try`): the statement's lines are named;
4. no path node lies on its line at all: the function is on no analysed path
   (forward does not call it, or calls it in a way the analysis does not
   follow: a static method through the class, a function passed as a value).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass

from dslc.rewrite.astutil import dotted_parts

_OPAQUE = {ast.Lambda: "a lambda", ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
           ast.DictComp: "a comprehension", ast.GeneratorExp: "a generator expression",
           ast.IfExp: "a conditional expression (`a if c else b`)", ast.BoolOp: "an `and`/`or` expression"}
_BLOCKS = {ast.For: "`for` loop", ast.AsyncFor: "`for` loop", ast.While: "`while` loop", ast.With: "`with` block",
           ast.AsyncWith: "`with` block", ast.Try: "`try` block", ast.If: "`if` statement",
           ast.Match: "`match` statement"}
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True, slots=True)
class AnchorCall:
    """One call of a rule's anchor in the source."""

    line: int
    call: ast.Call
    function: str | None  # the innermost function around it (None: module level)
    span: tuple[int, int] | None  # that function's lines
    class_name: str | None  # the innermost class around that function
    method: bool  # the anchor is a tensor method (`torch.Tensor.transpose`)


def short(node: ast.AST, width: int = 48) -> str:
    """`k.reshape(b * h, -1, d)` cut to `width` characters."""
    try:
        text = ast.unparse(node)
    except (ValueError, RecursionError):
        return "?"
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


class TreeIndex:
    """One walk of a parsed file (`ast.walk`'s order), for the near-miss
    report: each node's parent, the calls, the class and function
    definitions, and the names each definition mentions.

    A 10 000-line function was walked five times over (its definitions, the
    names of the function and of its class, its calls, its parents): most
    of the near-miss time on such a file.
    """

    def __init__(self, tree: ast.AST | None):
        self.parent: dict[int, ast.AST] = {}
        self.calls: list[ast.Call] = []
        self.defs: list[ast.AST] = []
        # id(definition) -> the names (`x`, `.attr` but not `self.attr`) in
        # it, nested definitions included
        self.names: dict[int, set[str]] = {}
        inside: dict[int, ast.AST] = {}  # id(node) -> the innermost definition holding it
        todo = deque([tree] if tree is not None else ())
        while todo:
            n = todo.popleft()
            kind = type(n)
            name = None
            if kind is ast.Name:
                name = n.id
            elif kind is ast.Attribute and not (type(n.value) is ast.Name and n.value.id == "self"):
                name = n.attr
            elif kind is ast.Call:
                self.calls.append(n)
            elif kind in _DEFS:
                self.defs.append(n)
                self.names[id(n)] = set()
            if name is not None:
                d = inside.get(id(n))
                while d is not None:
                    self.names[id(d)].add(name)
                    d = inside.get(id(d))
            holder = n if kind in _DEFS else inside.get(id(n))
            for c in ast.iter_child_nodes(n):
                self.parent[id(c)] = n
                if holder is not None:
                    inside[id(c)] = holder
                todo.append(c)


class SourceCalls:
    """The calls of one file's source by callee (parsed on first use)."""

    def __init__(self, tree: ast.AST | None, index: TreeIndex | None = None):
        self.tree = tree
        self._tree_index = index
        self._parent: dict[int, ast.AST] | None = None
        self._calls: dict[tuple, list[AnchorCall]] = {}
        # the file's calls in `ast.walk` order, indexed once (a pack asks for
        # hundreds of callees: one walk of the tree each was most of the
        # near-miss time on a long file): by method name, and by callee name
        # through each set of imports asked with
        self._nodes: list[ast.Call] | None = None
        self._by_attr: dict[str, list[int]] = {}
        self._parts: list[list[str]] = []
        self._by_name: dict[tuple, dict[str, list[int]]] = {}

    def _walked(self) -> TreeIndex:
        if self._tree_index is None:
            self._tree_index = TreeIndex(self.tree)
        return self._tree_index

    def parent(self, node: ast.AST) -> ast.AST | None:
        if self._parent is None:
            self._parent = self._walked().parent
        return self._parent.get(id(node))

    def ancestors(self, node: ast.AST):
        p = self.parent(node)
        while p is not None:
            yield p
            p = self.parent(p)

    def _index(self, imports: dict[str, str]) -> tuple[tuple, dict[str, list[int]]]:
        if self._nodes is None:
            self._nodes = self._walked().calls
            for i, n in enumerate(self._nodes):
                if isinstance(n.func, ast.Attribute):
                    self._by_attr.setdefault(n.func.attr, []).append(i)
                self._parts.append(dotted_parts(n.func))
        key = tuple(sorted(imports.items()))
        if key not in self._by_name:
            names: dict[str, list[int]] = {}
            for i, parts in enumerate(self._parts):
                if parts and parts[0] in imports:
                    names.setdefault(".".join([imports[parts[0]], *parts[1:]]), []).append(i)
            self._by_name[key] = names
        return key, self._by_name[key]

    def calls(self, qualname: str, imports: dict[str, str]) -> list[AnchorCall]:
        """Every call of `qualname` (spelled through the file's imports; a
        `torch.Tensor.<m>` method on any value), in source order."""
        key, names = self._index(imports)
        if (qualname, key) in self._calls:
            return self._calls[(qualname, key)]
        method = qualname.startswith("torch.Tensor.") and qualname.rsplit(".", 1)[-1]
        by_method = set(self._by_attr.get(method, ())) if method else set()
        out = []
        # in walk order, as one walk of the tree finds them (the sort below keeps ties in that order)
        for i in sorted(by_method.union(names.get(qualname, ()))):
            out.append(self._anchor_call(self._nodes[i], i in by_method))
        out.sort(key=lambda c: (c.line, c.call.col_offset))
        self._calls[(qualname, key)] = out
        return out

    def _anchor_call(self, call: ast.Call, method: bool) -> AnchorCall:
        fn = cls = None
        for a in self.ancestors(call):
            if fn is None and isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = a
            elif isinstance(a, ast.ClassDef):
                cls = a
                break
        span = (fn.lineno, fn.end_lineno) if fn is not None else None
        return AnchorCall(call.lineno, call, fn.name if fn is not None else None, span,
                          cls.name if cls is not None else None, method)

    def statement(self, node: ast.AST) -> ast.stmt | None:
        """The innermost statement holding `node`."""
        for a in [node, *self.ancestors(node)]:
            if isinstance(a, ast.stmt):
                return a
        return None

    def why(self, c: AnchorCall, covered: list[tuple[int, int]]) -> str:
        """Why no analysed path holds call `c` as a node (module doc)."""
        text = f"`{short(c.call)}` (line {c.line})"
        tail = "no analysed path holds it as a node, so no pattern is tried there"
        around = [s for s in covered if s[0] <= c.line <= s[1]]
        if not around:
            where = f"`{c.function}` (lines {c.span[0]}-{c.span[1]})" if c.function else "module-level code"
            return (f"{text} is in {where}, which is on no analysed path (forward does not call it, or calls it "
                    f"in a way the analysis does not follow: a static method, a function passed as a value): {tail}")
        for a in self.ancestors(c.call):
            if isinstance(a, (ast.stmt, *_DEFS)):
                break
            if type(a) in _OPAQUE:
                return (f"{text} is inside {_OPAQUE[type(a)]}, whose parts do not run exactly once in order: "
                        f"the analysis keeps the statement whole, and {tail}")
        recv = c.call.func.value if c.method else None
        if recv is not None and not isinstance(recv, ast.Name):
            return (f"{text} is a tensor method called on `{short(recv, 40)}`, a value the analysis does not "
                    f"follow (a tensor method is a node only on a local name or on a modelled call's result): "
                    f"the statement is kept whole, and {tail}")
        widest = max(around, key=lambda s: s[1] - s[0])
        stmt = self.statement(c.call)
        block = next((a for a in [stmt, *self.ancestors(stmt)] if type(a) in _BLOCKS
                      and a.lineno <= widest[0] and widest[1] <= a.end_lineno), None) if stmt else None
        if block is not None and widest[1] > widest[0]:
            return (f"{text} is inside the {_BLOCKS[type(block)]} at lines {block.lineno}-{block.end_lineno}, "
                    f"which the analysis keeps as one statement: {tail}")
        return (f"{text} is part of the statement at lines {widest[0]}-{widest[1]}, which the analysis keeps "
                f"whole (no node for this call): {tail}")
