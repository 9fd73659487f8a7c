"""The source text of an expression as `ast.unparse` writes it, faster.

The analysis spells many expressions (`Value.text`, guard texts, callee
spellings): 106 000 `ast.unparse` calls on the benchmark corpus, 40 % of
them on a node already spelled (an `if` test read by the path walk and by the
guard table, a base `__init__` walked once per subclass).  `node_text`
remembers the text per node; `unparse` writes the common expression forms
(names, attributes, constants, calls, operators, subscripts, tuples and
lists, conditional expressions) without `ast._Unparser`'s per-call set-up and
per-node dispatch, and hands anything else to `ast.unparse`.  The text is
`ast.unparse`'s, character for character: the same precedence rules
(`_P_*`, `ast._Precedence`'s values), parentheses and constant spellings;
tests/test_analysis_nodetext.py compares the two on every expression of the
corpus and on generated ones.
"""

from __future__ import annotations

import ast
import sys

from .nodememo import NodeMemo

# ast._Precedence's values (an operand gets parentheses when the precedence
# its parent asks for is above its operator's)
_P_TUPLE, _P_TEST, _P_OR, _P_AND, _P_NOT, _P_CMP, _P_EXPR = 2, 4, 5, 6, 7, 8, 9
_P_BXOR, _P_BAND, _P_SHIFT, _P_ARITH, _P_TERM, _P_FACTOR, _P_POWER, _P_ATOM = 10, 11, 12, 13, 14, 15, 16, 18

_BINOPS = {
    ast.Add: (" + ", _P_ARITH), ast.Sub: (" - ", _P_ARITH), ast.Mult: (" * ", _P_TERM),
    ast.MatMult: (" @ ", _P_TERM), ast.Div: (" / ", _P_TERM), ast.Mod: (" % ", _P_TERM),
    ast.FloorDiv: (" // ", _P_TERM), ast.LShift: (" << ", _P_SHIFT), ast.RShift: (" >> ", _P_SHIFT),
    ast.BitOr: (" | ", _P_EXPR), ast.BitXor: (" ^ ", _P_BXOR), ast.BitAnd: (" & ", _P_BAND),
    ast.Pow: (" ** ", _P_POWER),
}
_UNARYOPS = {ast.USub: ("-", _P_FACTOR), ast.UAdd: ("+", _P_FACTOR), ast.Invert: ("~", _P_FACTOR),
             ast.Not: ("not ", _P_NOT)}
_CMPOPS = {ast.Eq: " == ", ast.NotEq: " != ", ast.Lt: " < ", ast.LtE: " <= ", ast.Gt: " > ",
           ast.GtE: " >= ", ast.Is: " is ", ast.IsNot: " is not ", ast.In: " in ", ast.NotIn: " not in "}
_INFSTR = "1e" + repr(sys.float_info.max_10_exp + 1)


class _Other(Exception):
    """A form `_write` does not spell: `ast.unparse` spells the whole expression."""


def unparse(node: ast.AST) -> str:
    """`ast.unparse(node)`."""
    out: list[str] = []
    try:
        _write(node, _P_TEST, out)
    except _Other:
        return ast.unparse(node)
    return "".join(out)


_TEXTS = NodeMemo()


def node_text(node: ast.AST) -> str:
    """`ast.unparse(node)`, remembered per node: by identity, the node kept
    with its text (a tree the analysis reads is never changed)."""
    text = _TEXTS.get(node)
    if text is None:
        text = unparse(node)
        _TEXTS.put(node, text)
    return text


def _constant(value, out: list) -> None:
    cls = type(value)
    if cls is str or cls is int or cls is bool or value is None or cls is bytes:
        out.append(repr(value))
    elif cls is float or cls is complex:
        out.append(repr(value).replace("inf", _INFSTR).replace("nan", f"({_INFSTR}-{_INFSTR})"))
    elif value is ...:
        out.append("...")
    else:
        raise _Other  # a tuple or frozenset constant, a subclass


def _write(node, prec: int, out: list) -> None:
    """Append the text of `node`, asked for at precedence `prec` by its parent."""
    writer = _WRITERS.get(type(node))
    if writer is None:
        raise _Other
    writer(node, prec, out)


def _open(prec: int, own: int, out: list) -> bool:
    """Open a parenthesis when the parent binds tighter than `own`."""
    if prec > own:
        out.append("(")
        return True
    return False


def _name(node, prec, out) -> None:
    out.append(node.id)


def _attribute(node, prec, out) -> None:
    value = node.value
    _write(value, _P_ATOM, out)
    if type(value) is ast.Constant and isinstance(value.value, int):
        out.append(" ")  # `1 .real`
    out.append(".")
    out.append(node.attr)


def _constant_node(node, prec, out) -> None:
    if node.kind == "u":
        out.append("u")
    _constant(node.value, out)


def _call(node, prec, out) -> None:
    _write(node.func, _P_ATOM, out)
    out.append("(")
    comma = False
    for arg in node.args:
        if comma:
            out.append(", ")
        comma = True
        _write(arg, _P_TEST, out)
    for kw in node.keywords:
        if comma:
            out.append(", ")
        comma = True
        out.append("**" if kw.arg is None else kw.arg + "=")
        _write(kw.value, _P_TEST, out)
    out.append(")")


def _binop(node, prec, out) -> None:
    op, own = _BINOPS[type(node.op)]
    paren = _open(prec, own, out)
    if own == _P_POWER:  # right-associative
        _write(node.left, own + 1, out)
        out.append(op)
        _write(node.right, own, out)
    else:
        _write(node.left, own, out)
        out.append(op)
        _write(node.right, own + 1, out)
    if paren:
        out.append(")")


def _unaryop(node, prec, out) -> None:
    op, own = _UNARYOPS[type(node.op)]
    paren = _open(prec, own, out)
    out.append(op)
    _write(node.operand, own, out)
    if paren:
        out.append(")")


def _compare(node, prec, out) -> None:
    paren = _open(prec, _P_CMP, out)
    _write(node.left, _P_EXPR, out)
    for op, right in zip(node.ops, node.comparators):
        out.append(_CMPOPS[type(op)])
        _write(right, _P_EXPR, out)
    if paren:
        out.append(")")


def _boolop(node, prec, out) -> None:
    if type(node.op) is ast.And:
        word, own = " and ", _P_AND
    else:
        word, own = " or ", _P_OR
    paren = _open(prec, own, out)
    level = own
    for i, value in enumerate(node.values):
        if i:
            out.append(word)
        level = min(level + 1, _P_ATOM)  # each operand one level up (ast's `increasing_level_traverse`)
        _write(value, level, out)
    if paren:
        out.append(")")


def _subscript(node, prec, out) -> None:
    _write(node.value, _P_ATOM, out)
    out.append("[")
    index = node.slice
    if type(index) is ast.Tuple and index.elts:
        _items(index.elts, out)
    else:
        _write(index, _P_TEST, out)
    out.append("]")


def _tuple(node, prec, out) -> None:
    parens = not node.elts or prec > _P_TUPLE
    if parens:
        out.append("(")
    _items(node.elts, out)
    if parens:
        out.append(")")


def _list(node, prec, out) -> None:
    out.append("[")
    for i, elt in enumerate(node.elts):
        if i:
            out.append(", ")
        _write(elt, _P_TEST, out)
    out.append("]")


def _starred(node, prec, out) -> None:
    out.append("*")
    _write(node.value, _P_EXPR, out)


def _ifexp(node, prec, out) -> None:
    paren = _open(prec, _P_TEST, out)
    _write(node.body, _P_OR, out)
    out.append(" if ")
    _write(node.test, _P_OR, out)
    out.append(" else ")
    _write(node.orelse, _P_TEST, out)
    if paren:
        out.append(")")


def _slice(node, prec, out) -> None:
    if node.lower:
        _write(node.lower, _P_TEST, out)
    out.append(":")
    if node.upper:
        _write(node.upper, _P_TEST, out)
    if node.step:
        out.append(":")
        _write(node.step, _P_TEST, out)


_WRITERS = {ast.Name: _name, ast.Attribute: _attribute, ast.Constant: _constant_node, ast.Call: _call,
            ast.BinOp: _binop, ast.UnaryOp: _unaryop, ast.Compare: _compare, ast.BoolOp: _boolop,
            ast.Subscript: _subscript, ast.Tuple: _tuple, ast.List: _list, ast.Starred: _starred,
            ast.IfExp: _ifexp, ast.Slice: _slice}


def _items(elts: list, out: list) -> None:
    """ast's `items_view`: a one-element sequence gets a trailing comma."""
    if len(elts) == 1:
        _write(elts[0], _P_TEST, out)
        out.append(",")
        return
    for i, elt in enumerate(elts):
        if i:
            out.append(", ")
        _write(elt, _P_TEST, out)
