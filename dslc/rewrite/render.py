"""Rendering a rule's target terms as source text, for one match.

`Env` maps the rule's variables to the text the match bound them to (a
layer variable to its attribute after the rewrite, a constant as written in
the matched statements); `render_args` spells a target node's arguments,
leaving out a keyword whose value is the callee's own default.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.plan import Skip


class Absent(Exception):
    """A target variable the match bound to nothing (an optional keyword is then left out)."""


_ATOM = (ast.Name, ast.Attribute, ast.Call, ast.Constant, ast.Subscript, ast.List, ast.Tuple, ast.Dict)


def paren(text: str) -> str:
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return f"({text})"
    if isinstance(node, _ATOM) and not (isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and text.startswith("-")):
        return text
    return f"({text})"


class Env:
    """Abstract variable -> source text, for one match."""

    def __init__(self, match: ir.Match, attrs: dict[str, str], temps: dict[str, str]):
        self.match = match
        self.attrs = attrs  # layer var -> attribute name (after the rewrite)
        self.temps = temps  # temp name -> source expression
        self.inline: dict[str, str] = {}
        self.casts: dict[str, str] = {}
        self.cast_used: set[str] = set()  # the casts some rendered text applies
        # Init targets: a layer variable as an argument is its original constructor call.
        self.ctor: dict[str, str] = {}
        # A constant's canonical text -> its spelling in the matched statements
        # (`1e-06` -> `1e-6`): literals are copied from the source, not re-printed.
        self.literals: dict[str, str] = {}
        # Init targets: constructor arguments the rule does not name, carried
        # over to the target node that binds the same variable (`ctor_extras`).
        self.extra_args: dict[str, list[tuple[str, str]]] = {}

    def var(self, name: str) -> str:
        if name in self.inline:
            return self.inline[name]
        if name in self.attrs:
            return f"self.{self.attrs[name]}"
        bound = self.match.bindings.get(name)
        if bound is None:
            raise Absent(name)
        if bound.kind == "layer":
            text = f"self.{bound.text}"
        elif bound.kind == "const":
            text = bound.text if bound.text else repr(bound.value)
            text = self.literals.get(text, text)
        else:
            if not bound.text:
                raise Absent(name)
            text = self.temps.get(bound.text, bound.text)
            if safety.TEMP_RE.match(text):
                # the result of an inlined helper (`self.iterative_inv(k)`):
                # no expression of the source to put in the target
                raise Skip(codes.S_INLINED_VALUE, f"`${name}` is the result of an inlined call (`{text}`), which the target cannot spell")
        if name in self.casts:
            text = f"{paren(text)}.to({self.casts[name]})"
            self.cast_used.add(name)
        return text

    def term(self, term) -> str:
        if isinstance(term, ir.Var):
            if term.name in self.ctor:
                return self.ctor[term.name]
            return self.var(term.name)
        if isinstance(term, ir.Const):
            return repr(term.value)
        if isinstance(term, ir.AttrOf):
            return f"{paren(self.var(term.base.name))}.{term.attr}"
        if isinstance(term, ir.Expr):
            ops = [paren(self.term(t)) for t in term.operands]
            if len(ops) == 1:
                return f"{term.op}{ops[0]}"
            return f" {term.op} ".join(ops)
        raise Skip(codes.S_TARGET, f"cannot render target term {term!r}")


def render_args(env: Env, node: ir.PatNode) -> str:
    parts = []
    for arg in node.args:
        try:
            parts.append(env.term(arg))
        except Absent as exc:
            raise Skip(codes.S_TARGET, f"target argument `${exc.args[0]}` has no value in the source") from None
    for key, value in node.kwargs:
        if _unwritten_default(env, node, key, value):
            continue  # the source did not write it and the callee's default is the same value
        try:
            parts.append(f"{key}={env.term(value)}")
        except Absent:
            continue  # an absent keyword is omitted (the callee's default applies)
    return ", ".join(parts)


def _unwritten_default(env: Env, node: ir.PatNode, key: str, value) -> bool:
    """A target keyword whose variable the matched call left to the source
    signature's default (`nn.LayerNorm(6)`: `$eps` is 1e-05) is left out of
    the emitted call only when that provably changes nothing: the target's
    signature is known and its default for `key` is the same constant.  An
    unknown target signature keeps the keyword (its default is not assumed)."""
    from dslc.match import signatures

    if not isinstance(value, ir.Var) or value.name in env.inline or value.name in env.attrs \
            or value.name in env.casts or value.name in env.ctor:
        return False
    bound = env.match.bindings.get(value.name)
    if bound is None or not bound.defaulted or bound.kind != "const":
        return False
    qual = node.callee.qualname if node.callee is not None else None
    sig = signatures.signature(qual) if qual else None
    if sig is None:
        return False
    param = next((p for p in sig.params if p.name == key and p.kind in ("pos", "kwonly")), None)
    d = param.default if param is not None else None
    return (d is not None and d.is_const and type(d.const) is type(bound.value) and _const_same(d.const, bound.value))


def _const_same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(type(x) is type(y) and _const_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False
