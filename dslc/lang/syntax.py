"""The `.adr` syntax tree: what the parser builds and the checker reads.

Frozen, slotted dataclasses; every node carries a `span` that does not take
part in `==`, so two trees compare equal when they say the same thing, where
ever it was written (the round-trip property `parse(print(ast)) == ast`).

Terms and expressions
---------------------
`Var` (`$x`), `AttrRef` (`$lin.weight`, `$fused.0.weight`), `Const` (a literal:
int, float, str, bool, None), `Name` (a bare dotted name), `BinOp` (`$a + $b`),
`UnaryOp` (`-$a`), `Subscript` (`qual.ACT2FN[$key]`), `Call` (`callee(args)`).

Nodes
-----
A pattern `Node` is an expression plus its outputs (`-> $y, $z`); `Wildcard`
is `*` (with optional outputs).  An `Item` is `source => target` (`target is
None` for `_`).

Rules and files
---------------
`Rule` keeps its clauses in source order so that the printer can write them
back; `File` holds the pack header, the `requires` lines and the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from dslc.match.ir import Span

# ---------------------------------------------------------------------------
# Terms


@dataclass(frozen=True, slots=True)
class Var:
    name: str  # without the `$`
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AttrRef:
    """`$lin.weight`: `path` is the dotted attribute path (`0.weight`)."""

    var: Var
    path: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Const:
    value: object  # int | float | str | bool | None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Name:
    """A bare qualified name (`torch.nn.Linear`), as a callee or a term."""

    qualname: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # + - * / @
    left: "Expr"
    right: "Expr"
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UnaryOp:
    op: str  # -
    operand: "Expr"
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Subscript:
    """`transformers.activations.ACT2FN[$key]`: a qualified container looked up."""

    container: Name
    key: "Expr"
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Arg:
    """One call argument: positional (`name is None`), keyword, or `...` (`rest`)."""

    name: str | None
    value: Union["Expr", None]
    rest: bool = False
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    callee: Union[Name, Var, Subscript]
    args: tuple[Arg, ...]
    span: Span | None = field(default=None, compare=False)


Expr = Union[Var, AttrRef, Const, Name, BinOp, UnaryOp, Subscript, Call]

# ---------------------------------------------------------------------------
# Pattern nodes and items


@dataclass(frozen=True, slots=True)
class Node:
    expr: Expr
    outputs: tuple[Var, ...] = ()
    span: Span | None = field(default=None, compare=False)
    # `-> $s2 optional when $m is not None`: the variable the node is optional on
    optional: Var | None = None


@dataclass(frozen=True, slots=True)
class Wildcard:
    outputs: tuple[Var, ...] = ()
    span: Span | None = field(default=None, compare=False)


PatternNode = Union[Node, Wildcard]


@dataclass(frozen=True, slots=True)
class Item:
    source: tuple[PatternNode, ...]
    target: tuple[PatternNode, ...] | None  # None: `_`, detect only
    span: Span | None = field(default=None, compare=False)
    target_span: Span | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------
# Conditions (`when`) and constraints (`where`)


@dataclass(frozen=True, slots=True)
class TupleLit:
    items: tuple[Const, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != in "not in"
    left: "Cond"
    right: "Cond"
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and | or
    left: "Cond"
    right: "Cond"
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    operand: "Cond"
    span: Span | None = field(default=None, compare=False)


Cond = Union[Var, AttrRef, Const, TupleLit, Compare, BoolOp, Not]


@dataclass(frozen=True, slots=True)
class Constraint:
    var: Var
    op: str  # == != in "not in"
    values: tuple[Const | Name, ...]  # Name: a dotted constant, matched by spelling
    span: Span | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------
# Rule clauses


@dataclass(frozen=True, slots=True)
class Kernel:
    qualname: Name
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Exact:
    deterministic: bool = False
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TolArg:
    name: str  # atol | rtol (others are diagnosed by the checker)
    value: Const
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Tolerance:
    args: tuple[TolArg, ...]
    deterministic: bool = False
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Section:
    """`init { ... } => { ... }` or `forward ...`: `kind` is `init` | `forward`."""

    kind: str
    item: Item
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Where:
    constraints: tuple[Constraint, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class When:
    cond: Cond
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ParamMap:
    target: AttrRef
    source: AttrRef
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Params:
    maps: tuple[ParamMap, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    value: Const
    span: Span | None = field(default=None, compare=False)
    name_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DtypeTol:
    """`bf16 atol=1e-2 rtol=1.6e-2`: one dtype's tolerance."""

    dtype: str
    args: tuple[TolArg, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DtypeTolerance:
    """`tolerance fp32 atol=.. rtol=..; bf16 atol=.. rtol=..`."""

    dtypes: tuple[DtypeTol, ...]
    deterministic: bool = False
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Safety:
    """`safe` or `unsafe`."""

    kind: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RuleRequires:
    """`requires liger-kernel device cuda on $x` inside a rule."""

    package: str
    device: str | None = None
    var: Var | None = None
    span: Span | None = field(default=None, compare=False)
    package_span: Span | None = field(default=None, compare=False)
    device_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Fallback:
    """`fallback original`."""

    kind: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Keep:
    """`keep $p, $pd`: forward intermediates the rewrite may keep for a run-time condition."""

    vars: tuple[Var, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ClassItem:
    """`class { init {..} scalar $e; forward($x) {..} } => {..} | _`."""

    init: tuple[PatternNode, ...] | None
    scalars: tuple[Var, ...]
    inputs: tuple[Var, ...]
    forward: tuple[PatternNode, ...]
    target: tuple[PatternNode, ...] | None
    span: Span | None = field(default=None, compare=False)
    target_span: Span | None = field(default=None, compare=False)
    forward_span: Span | None = field(default=None, compare=False)


Clause = Union[Kernel, Exact, Tolerance, Section, Where, When, Params, Option, Note,
               DtypeTolerance, Safety, RuleRequires, Fallback, Keep, ClassItem]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str
    clauses: tuple[Clause, ...]
    span: Span | None = field(default=None, compare=False)
    name_span: Span | None = field(default=None, compare=False)

    def of(self, kind: type) -> list:
        """The clauses of one class, in source order."""
        return [c for c in self.clauses if isinstance(c, kind)]

    def section(self, kind: str) -> Section | None:
        for clause in self.clauses:
            if isinstance(clause, Section) and clause.kind == kind:
                return clause
        return None


@dataclass(frozen=True, slots=True)
class PackHeader:
    name: str
    description: str
    span: Span | None = field(default=None, compare=False)
    name_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Requires:
    package: str
    version: Const | None = None  # the specifier string
    module: Name | None = None
    install: Const | None = None
    span: Span | None = field(default=None, compare=False)
    package_span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class File:
    headers: tuple[PackHeader, ...]  # normally exactly one
    requires: tuple[Requires, ...]
    rules: tuple[Rule, ...]
    path: str = field(default="", compare=False)
    span: Span | None = field(default=None, compare=False)

    @property
    def header(self) -> PackHeader | None:
        return self.headers[0] if self.headers else None
