"""Rules as compiled: the contract between the front end and the back end.

The front end (`parser` -> `syntax` AST -> `checker` -> `compiler.lower`)
produces these values; the matcher consumes them and produces `Match`es; the
rewriter turns a `Match` plus the rule's targets into edits.

Pattern terms
-------------
`Var("x")` is the abstract variable `$x`; `Const(v)` a literal; `AttrOf`
`$lin.weight` (targets only); `Expr` a binary/unary expression of terms
(targets only, e.g. `$a + $i`).  A pattern node (`PatNode`) is a layer call, a
tensor op, a unary op or the wildcard `*`, exactly as in Fig. 2 of the paper.

Forward layer nodes refer to init layers
----------------------------------------
In a `forward` pattern a layer call is either `qual.Type(...)` — a call of a
module attribute whose init type is `qual.Type`, or a call of the function
`qual.Type` itself when the rule has no init node of that type — or
`$var(...)`, a call of the layer that the init pattern bound to `$var`.  The
compiler resolves both forms to `PatNode.layer_var` (the init variable, or
None for a plain function call), so the matcher never has to guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Mapping

# `option inner = "$conv[0]"`: one entry, a variable and its accessors.
INNER_ENTRY = re.compile(r"\s*\$([A-Za-z_][A-Za-z0-9_]*)((?:\[[0-9]+\]|\.[A-Za-z_][A-Za-z0-9_]*)+)\s*")


def parse_inner(text: object) -> dict[str, str] | None:
    """The entries of `option inner` (`"$conv[0]"`, `"$a[0], $b.inner"`):
    variable -> the accessors that reach the original layer inside the new
    one (`"[0]"`); None when the text is not such a list."""
    if not isinstance(text, str) or not text.strip():
        return None
    out: dict[str, str] = {}
    for part in text.split(","):
        m = INNER_ENTRY.fullmatch(part)
        if m is None or m.group(1) in out:
            return None
        out[m.group(1)] = m.group(2)
    return out


@dataclass(frozen=True, slots=True)
class Span:
    """A location in a rule file: 1-based line/column, end exclusive."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int


@dataclass(frozen=True, slots=True)
class Var:
    name: str  # without the `$`
    span: Span | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"${self.name}"


@dataclass(frozen=True, slots=True)
class Const:
    value: object  # int | float | str | bool | None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AttrOf:
    """`$lin.weight`: an attribute of what a variable is bound to (targets)."""

    base: Var
    attr: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Expr:
    """A tensor expression in a target: `$a + $i`, `-$x`."""

    op: str
    operands: tuple["Term", ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Code:
    """Source text matched literally (source patterns; additive): the key in
    `ACT2FN[config.hidden_act]` matches a value whose canonical text
    (`ast.unparse`) is `config.hidden_act`."""

    text: str
    span: Span | None = field(default=None, compare=False)


Term = Var | Const | AttrOf | Expr | Code


@dataclass(frozen=True, slots=True)
class Callee:
    """What a layer node calls.

    Exactly one of: `qualname` (`torch.nn.LayerNorm`), `var` (`$norm(...)`,
    a layer bound in init).  `subscript` is set for `ACT2FN[$key]` style
    lookups: `qualname` is then the container (`transformers.activations.ACT2FN`).
    """

    qualname: str | None = None
    var: Var | None = None
    subscript: Term | None = None


@dataclass(frozen=True, slots=True)
class PatNode:
    # `method` (`$x.pow(2)`: callee.var the receiver, callee.qualname the
    # method name) and `attr` (`$x.dtype`) appear in class items only.
    kind: Literal["layer", "op", "unary", "wildcard", "method", "attr"]
    callee: Callee | None = None
    op: str | None = None  # for op / unary
    args: tuple[Term, ...] = ()
    kwargs: tuple[tuple[str, Term], ...] = ()
    outputs: tuple[Var, ...] = ()
    # Forward layer nodes: the init variable of the layer called (resolved by
    # the compiler), None for a plain function call.
    layer_var: str | None = None
    span: Span | None = field(default=None, compare=False)
    # `... optional when $m is not None` (forward items): the name of `$m`.
    # Source: the node may be absent (its output is then its chain input and
    # the variables only it binds are None) or alone in `if m is not None:`.
    # Target: the node is written only where the source node is present.
    optional: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One rule item, `source => target`; `target is None` means `_`."""

    source: tuple[PatNode, ...]
    target: tuple[PatNode, ...] | None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Constraint:
    """`where $dim == -1`, `where $bias != False`, `where $act in ("gelu", "gelu_new")`.

    op is one of `==`, `!=`, `in`, `not in`; `values` has one element for
    `==`/`!=`.  A constraint on a variable that is bound to a non-constant
    holds for `!=`/`not in` only when the value is a constant (unknown values
    never satisfy a constraint).
    """

    var: Var
    op: str
    values: tuple[object, ...]  # a `Code` value: a dotted constant (`torch.float32`)
    span: Span | None = field(default=None, compare=False)

    def spelled_as(self, kind: str, text: str) -> bool:
        """Whether a non-literal value is one of the dotted constants an `==` /
        `in` constraint lists (`torch.float32`), by its canonical source text
        (`!=` / `not in` take no dotted constant: ADR211)."""
        return self.op in ("==", "in") and kind in ("name", "expr") and any(
            isinstance(v, Code) and v.text == text for v in self.values)


@dataclass(frozen=True, slots=True)
class ParamMap:
    """`params { $norm.weight <- $norm.weight; }`: target param <- source param."""

    target: AttrOf
    source: AttrOf
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Contract:
    """The numerical contract held by the equivalence test."""

    exact: bool = True
    atol: float = 0.0
    rtol: float = 0.0
    # Whether train-mode forward is deterministic (no dropout randomness in
    # the comparison), so train mode can be compared too.
    deterministic: bool = False
    note: str | None = None
    # `tolerance fp32 atol=.. rtol=..; bf16 atol=.. rtol=..`: (dtype, atol, rtol)
    # per dtype; `atol`/`rtol` above then hold the fp32 (else the first) entry.
    per_dtype: tuple[tuple[str, float, float], ...] = ()

    def tolerance_for(self, dtype: str) -> tuple[float, float]:
        """(atol, rtol) for a dtype name (`fp32`, `bf16`, `fp16`, `fp64`)."""
        for name, atol, rtol in self.per_dtype:
            if name == dtype:
                return atol, rtol
        return self.atol, self.rtol


@dataclass(frozen=True, slots=True)
class Requirement:
    """A kernel package a pack needs: `requires epoi >=0.1,<1 install "..."`."""

    package: str
    version: str | None = None  # a PEP 440 specifier set, e.g. ">=0.1,<1"
    install: str | None = None
    module: str | None = None  # import name where it differs from the package
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Need:
    """`requires liger-kernel device cuda on $x` in a rule: what the kernel
    needs at run time.  `module` is the import name (from the pack's
    `requires`, else the package name with `-` as `_`); `device`/`var`: the
    kernel runs only when the tensor bound to `var` is on that device."""

    package: str
    module: str
    device: str | None = None
    var: Var | None = None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ClassPattern:
    """A `class` item: a module class recognised by what its forward computes.

    `init` are init-source patterns over the class's own `__init__` bindings
    (`torch.nn.Parameter(...) -> $w`); `scalars` the variables that must be
    Python numbers at run time (checked by the generated dispatch);
    `inputs` the forward parameters after `self`; `forward` the data-flow
    pattern (nodes of kind layer/method/attr/op/unary) whose last node's
    output is what forward returns; `target` the new computation of that
    output (None: detect only).
    """

    init: tuple[PatNode, ...]
    scalars: tuple[Var, ...]
    inputs: tuple[Var, ...]
    forward: tuple[PatNode, ...]
    target: tuple[PatNode, ...] | None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Rule:
    pack: str
    name: str
    description: str
    kernels: tuple[str, ...]
    contract: Contract
    init: Item | None = None
    forward: Item | None = None
    where: tuple[Constraint, ...] = ()
    params: tuple[ParamMap, ...] = ()
    # Free-form options (`option scope = "any"`, `option guard = ...`).
    options: tuple[tuple[str, object], ...] = ()
    span: Span | None = field(default=None, compare=False)
    # Additive (langpacks): safety class (`safe` | `unsafe`), run-time needs of
    # the kernel, the fallback when they are not met (`original` | None), and a
    # class item.
    safety: str = "safe"
    needs: tuple[Need, ...] = ()
    fallback: str | None = None
    klass: ClassPattern | None = None
    # `keep $p, $pd`: intermediates the forward rewrite may keep for a
    # run-time condition (a per-call guard, dslc.rewrite.kinds.keep)
    keep: tuple[str, ...] = ()
    # An absent variant of a rule with an optional node (dslc.match.optional):
    # the rule as written (dslc.rewrite.kinds.keepviews renders its target)
    present: "Rule | None" = field(default=None, compare=False, repr=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.pack}:{self.name}"

    def option(self, name: str, default: object = None) -> object:
        for key, value in self.options:
            if key == name:
                return value
        return default

    def inner(self) -> dict[str, str]:
        """`option inner`: init variable -> the accessors (`"[0]"`) at which
        the layer the target binds to it keeps the original layer."""
        return parse_inner(self.option("inner")) or {}


@dataclass(frozen=True, slots=True)
class Pack:
    name: str
    description: str
    requires: tuple[Requirement, ...]
    rules: tuple[Rule, ...]
    path: str = ""
    span: Span | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------
# Matches: what the matcher hands to the safety checks and the rewriter.


@dataclass(frozen=True, slots=True)
class Bound:
    """What an abstract variable is bound to.

    `kind` is `name` (a local variable of the composition function),
    `const` (a literal; `value` holds it), `expr` (other source text), or
    `layer` (an init variable: `text` is the attribute name, e.g. `LayerNorm`).
    """

    text: str
    kind: Literal["name", "const", "expr", "layer"]
    value: object = None
    # Additive: the value is the source signature's default of a constructor
    # parameter the matched call does not give (not written in the source).
    defaulted: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Match:
    """One location where a rule's source patterns matched.

    `nodes` are the matched forward nodes in pattern order (wildcards
    included), taken from `path_indices[0]`'s path of `class_name` (or of a
    module-level function when `class_name` is None).  `init_nodes` maps each
    init pattern variable to the analysis `InitBinding` it matched.
    `bindings` maps every abstract variable to what it is bound to.
    `paths` lists the indices of all paths containing this same location.
    """

    rule: Rule
    file: str
    class_name: str | None
    function: str  # the composition function or helper holding the match
    nodes: tuple  # tuple[analysis.model.Node, ...]
    init_nodes: Mapping[str, object]  # var name -> analysis.model.InitBinding
    bindings: Mapping[str, Bound]
    paths: tuple[int, ...] = ()
    # Additive fields (matcher):
    # `conflict`: why this match must not be applied although it matched (it
    # overlaps an earlier match of an earlier rule, or a `where` constraint
    # needs a static value the source does not give, e.g. `bias=config.x`);
    # None for a clean match.  Apply reports such matches `skipped`.
    conflict: str | None = None
    # `yields_to`: when `conflict` is an overlap with earlier rules' matches,
    # the `overlap_key`s of those matches: the rewriter tries this match
    # after all of them were refused (then nothing overlaps it).
    yields_to: tuple = ()
    # `extras`: per forward pattern node index, the arguments the call gives
    # that the pattern does not mention, as (parameter name or `#<pos>`, the
    # analysis Value) pairs (`dtype=torch.float32` on a softmax call).
    extras: Mapping[int, tuple] = field(default_factory=dict)
    # `paths_of`: which paths `paths` indexes: None for `ClassFacts.paths`
    # (forward, helpers inlined), `method:<name>` for `ClassFacts.other_paths`,
    # `function:<name>` for `FileFacts.functions`.
    paths_of: str | None = None
    # A class item's match (`dslc.match.classmatch.ClassMatch`): the forward's
    # expression graph and the run-time type checks; None otherwise.
    klass: object = None
    # An optional node one `if` deeper than the other matched nodes
    # (`dslc.match.optional`): (its index in `nodes`, the analysis `stmt`
    # node of the `if` test or None, whether the absent variant matched the
    # other paths); None otherwise.
    guarded: tuple | None = None

    @property
    def lines(self) -> tuple[int, ...]:
        found: set[int] = set()
        if self.klass is not None:
            lo, hi = self.klass.lines
            found.update(range(lo, hi + 1))
        for node in self.nodes:
            lo, hi = node.stmt.lines
            found.update(range(lo, hi + 1))
        for binding in self.init_nodes.values():
            if binding.stmt is not None:
                lo, hi = binding.stmt.lines
                found.update(range(lo, hi + 1))
        return tuple(sorted(found))


def overlap_key(rule: Rule, nodes, init_nodes) -> tuple:
    """A match's identity for `Match.yields_to`: its rule and where its nodes and init bindings are."""
    return (rule.qualified_name,
            tuple((n.kind, n.stmt.method, tuple(n.stmt.lines), n.expr_span, n.attr) for n in nodes),
            tuple(sorted((b.attr, tuple(b.stmt.lines) if b.stmt else ()) for b in init_nodes.values())))
