"""Reads and writes (def-use) of statements and expressions (paper §3.2).

What a path node records besides its DL content: the local names and
`self.<attr>`s an expression reads (`reads_of`) and a store writes
(`writes_of`; `target_reads` for what the store itself reads), an
expression as written (`value_of`, `literal`), a function's locals and its
`self.<attr>` uses (`scan`, one cached walk), and the definitions of
shape-only statements (`shape_call`, `unparse_with_temps`; `Node.defs`).
Pure functions of the syntax tree.
"""

from __future__ import annotations

import ast
from functools import lru_cache

from .model import Value
from .names import dotted
from .nodememo import NodeMemo
from .nodetext import node_text, unparse


def literal(expr: ast.expr):
    """The Python value of a literal expression (negative numbers, tuples), or raise."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.USub, ast.UAdd)):
        inner = literal(expr.operand)
        if isinstance(inner, (int, float, complex)) and not isinstance(inner, bool):
            return -inner if isinstance(expr.op, ast.USub) else inner
    if isinstance(expr, ast.Tuple):
        return tuple(literal(e) for e in expr.elts)
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "float"
            and len(expr.args) == 1 and not expr.keywords and isinstance(expr.args[0], ast.Constant)
            and isinstance(expr.args[0].value, str)
            and expr.args[0].value.strip().lower() in ("inf", "-inf", "+inf", "infinity", "-infinity")):
        # `float("-inf")`: the usual spelling of an infinite fill value
        return float(expr.args[0].value)
    raise ValueError("not a literal")


def is_literal(expr: ast.expr) -> bool:
    try:
        literal(expr)
        return True
    except ValueError:
        return False


_VALUES = NodeMemo()


def value_of(expr: ast.expr) -> Value:
    """A `Value` for an expression as written (no DL nodes inside).  The
    `ast.unparse` ones are remembered per node (a path walk asks again for
    many: helpers inlined at several calls, branches walked twice), like
    `scan`: by identity, the node kept with its answer."""
    if isinstance(expr, ast.Name):
        return Value(expr.id, "name")
    if isinstance(expr, ast.Attribute):
        parts = dotted(expr)
        if parts is not None:
            return Value(".".join(parts), "attr")
    known = _VALUES.get(expr)
    if known is not None:
        return known
    text = node_text(expr)
    try:
        value = Value(text, "const", literal(expr))
    except ValueError:
        value = Value(text, "expr")
    _VALUES.put(expr, value)
    return value


# Fields of no use to a walk for names and calls: names and flags (strings,
# ints, in every node class that has them), a constant's value, and `ctx` (a
# `Load`/`Store`/`Del` marker without children, which no walk here looks
# at).  Not `name`: a `type X = ...` statement's is a `Name` node.
_LEAF_FIELDS = frozenset({"ctx", "id", "attr", "arg", "asname", "module", "level", "kind", "type_comment",
                          "is_async", "conversion", "simple"})
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def child_fields(cls: type) -> tuple[str, ...]:
    """The fields of node class `cls` that may hold child nodes other than
    an expression context, in `_fields` order."""
    fields = _CHILD_FIELDS.get(cls)
    if fields is None:
        fields = _CHILD_FIELDS[cls] = () if cls is ast.Constant else tuple(
            f for f in cls._fields if f not in _LEAF_FIELDS)
    return fields


def child_nodes(node: ast.AST) -> list:
    """`ast.iter_child_nodes(node)`, in the same order, less the expression
    contexts (`Load`, `Store`, `Del`), as a list (faster: a hot walk)."""
    out: list = []
    AST = ast.AST
    for f in child_fields(type(node)):
        value = getattr(node, f, None)
        if type(value) is list:
            out.extend(v for v in value if isinstance(v, AST))
        elif isinstance(value, AST):
            out.append(value)
    return out


def self_attr(expr: ast.expr) -> str | None:
    """`self.x` -> 'x'."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return expr.attr
    return None


def reads_of(expr: ast.AST | None, replaced: dict | None = None) -> set[str]:
    """Local names and `self.<attr>` read by `expr`; sub-expressions in
    `replaced` (id -> temp name) count as a read of their temporary."""
    out: set[str] = set()
    if expr is None:
        return out
    replaced = replaced or {}
    stack = [expr]
    while stack:
        node = stack.pop()
        temp = replaced.get(id(node))
        if temp is not None:
            out.add(temp)
            continue
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                out.add(node.id)
            continue
        attr = self_attr(node) if isinstance(node, ast.Attribute) else None
        if attr is not None and isinstance(node.ctx, ast.Load):
            out.add("self." + attr)
            out.add("self")
            continue
        stack.extend(child_nodes(node))
    return out


def writes_of(target: ast.AST) -> set[str]:
    """Names a store to `target` writes (the base name of `x[i] = `, `x.a = `)."""
    out: set[str] = set()
    if isinstance(target, ast.Name):
        out.add(target.id)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            out |= writes_of(elt)
    elif isinstance(target, ast.Starred):
        out |= writes_of(target.value)
    elif isinstance(target, ast.Attribute):
        attr = self_attr(target)
        if attr is not None:
            out.add("self." + attr)
        else:
            base = target.value
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):
                out.add(base.id)
    elif isinstance(target, ast.Subscript):
        base = target.value
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            if self_attr(base) is not None:
                out.add("self." + self_attr(base))
                break
            base = base.value
        if isinstance(base, ast.Name):
            out.add(base.id)
    return out


def target_reads(target: ast.AST) -> set[str]:
    """Names read while storing to `target` (`x[i] = ..` reads i and x)."""
    if isinstance(target, ast.Name):
        return set()
    if isinstance(target, (ast.Tuple, ast.List)):
        out: set[str] = set()
        for elt in target.elts:
            out |= target_reads(elt)
        return out
    if isinstance(target, ast.Starred):
        return target_reads(target.value)
    if isinstance(target, (ast.Attribute, ast.Subscript)):
        out = reads_of(target.value)
        if isinstance(target, ast.Subscript):
            out |= reads_of(target.slice)
        return out
    return set()

_SCANS = NodeMemo()


def local_names(fn: ast.FunctionDef) -> frozenset[str]:
    """Parameters and every name the function body stores (its locals)."""
    return scan(fn)[0]


def scan(fn: ast.FunctionDef) -> tuple[frozenset[str], tuple]:
    """One walk of a function: (its local names, its `self.<attr>` uses as
    (attr, lines, kind) with kind call/read/store).  Cached per node."""
    cached = _SCANS.get(fn)
    if cached is not None:
        return cached
    args = fn.args
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    if args.vararg:
        names.add(args.vararg.arg)
    if args.kwarg:
        names.add(args.kwarg.arg)
    uses = []
    callees = set()
    # (node, collect-locals?) : nested defs/lambdas/classes do not add locals
    stack = [(child, True) for child in fn.body]
    stack += [(d, False) for d in fn.args.defaults + fn.args.kw_defaults if d is not None]
    stack += [(d, False) for d in fn.decorator_list]
    Name, Attribute, Call, Store, Del = ast.Name, ast.Attribute, ast.Call, ast.Store, ast.Del
    while stack:
        node, own = stack.pop()
        cls = type(node)
        if cls is Name:
            if own and type(node.ctx) is not ast.Load:
                names.add(node.id)
            continue
        if cls is Attribute:
            value = node.value
            if type(value) is Name and value.id == "self":
                if id(node) in callees:
                    kind = "call"
                elif type(node.ctx) in (Store, Del):
                    kind = "store"
                else:
                    kind = "read"
                uses.append((node.attr, (node.lineno, node.end_lineno or node.lineno), kind))
                continue
            stack.append((value, own))
            continue
        if cls is Call:
            callees.add(id(node.func))
        elif cls in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
            if own:
                names.add(node.name)
            own = False
        elif cls is ast.Lambda:
            own = False
        elif cls in (ast.Import, ast.ImportFrom):
            continue  # local imports are resolved, not opaque locals
        elif cls is ast.ExceptHandler and node.name and own:
            names.add(node.name)
        elif cls is ast.Constant:
            continue
        fields = _CHILD_FIELDS.get(cls)
        for field_name in child_fields(cls) if fields is None else fields:  # not the name fields, not `ctx`
            value = getattr(node, field_name, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, ast.AST):
                        stack.append((item, own))
            elif isinstance(value, ast.AST):
                stack.append((value, own))
    result = (frozenset(names), tuple(uses))
    _SCANS.put(fn, result)
    return result


def value_reads(v: Value) -> set[str]:
    if v.kind == "name":
        return {v.text}
    if v.kind in ("attr", "expr"):
        return set(text_reads(v.text))
    return set()


@lru_cache(maxsize=16384)
def text_reads(text: str) -> frozenset[str]:
    try:
        return frozenset(reads_of(ast.parse(text, mode="eval").body))
    except SyntaxError:
        return frozenset()


def source_span(e: ast.AST) -> tuple[int, int, int, int]:
    return (e.lineno, e.col_offset, e.end_lineno or e.lineno, e.end_col_offset or 0)


def plain_target(t: ast.AST) -> bool:
    if isinstance(t, ast.Name):
        return True
    if isinstance(t, (ast.Tuple, ast.List)):
        return all(isinstance(x, ast.Name) for x in t.elts)
    return False


def name_order(t: ast.AST):
    order = {}
    if isinstance(t, ast.Name):
        order[t.id] = 0
    else:
        for i, x in enumerate(t.elts):
            order.setdefault(x.id, i)
    return lambda n: order.get(n, 0)

# Tensor methods whose result's rank follows from the call (see Node.defs).
SHAPE_METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "contiguous", "float", "half", "bfloat16", "double",
    "to", "type_as", "clone", "detach",
})


def shape_call(value: ast.expr) -> bool:
    """Is `value` a chain of tensor methods that Node.defs records?"""
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in SHAPE_METHODS


def number_literal(value: ast.expr) -> bool:
    """Is `value` an int/float literal (or its negation)?  Node.defs records
    it: the matcher reads such a value as rank 0."""
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
        value = value.operand
    return isinstance(value, ast.Constant) and type(value.value) in (int, float)


def recorded_def(value: ast.expr) -> bool:
    """Does Node.defs record `name = value`?  (shape calls and number literals)"""
    return shape_call(value) or number_literal(value)


def unparse_with_temps(expr: ast.expr, replaced: dict) -> str:
    """`ast.unparse(expr)` with the sub-expressions that became DL nodes
    written as their temporaries."""
    if not replaced:
        return node_text(expr)

    def copy(node):
        temp = replaced.get(id(node))
        if temp is not None:
            return ast.Name(temp, ast.Load())
        if not isinstance(node, ast.AST):
            return node
        fields = {}
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                fields[name] = [copy(v) for v in value]
            else:
                fields[name] = copy(value)
        return type(node)(**fields)

    return unparse(copy(expr))
