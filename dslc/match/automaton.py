"""Matcher automata: what a rule's source patterns compile to.

A forward source pattern `n_0; n_1; ...; n_{k-1}` becomes a linear automaton
with states `0..k`: state `i` means "pattern nodes `0..i-1` matched".  The
transition `i -> i+1` is guarded by a `Test` (node kind and qualified type,
or "a call of the layer bound to `$v`") and carries `Action`s that bind
abstract variables to the node's arguments/outputs or check them against
bindings and literals.  Every state `1..k-1` also has a *skip* self-loop:
a path node that does not fire the transition is skipped, unless it writes a
name already bound to a variable — that kills the partial match, because the
variable would no longer denote the value it was bound to.

The init source pattern becomes a `SetMatcher`: one `InitTest` per init node,
matched order-insensitively against a class's `InitBinding`s.

These are plain frozen data; `dslc.match.matcher` runs them, `dump()` prints them
(`dslc check --dump`, the committed goldens in tests/compiled/).
"""

from __future__ import annotations

from dataclasses import dataclass

from dslc.match import ir

# Slots name where an action reads a node's value:
#   in<i>    the i-th positional argument / op operand
#   kw:<k>   the keyword argument k (calls with no known signature)
#   p:<k>    the parameter k after normalisation by the callee's signature
#   out<i>   the i-th output name
#   attr     the module attribute a layer call calls
#   sub      the key of a subscript init (`ACT2FN[key]`)


@dataclass(frozen=True, slots=True)
class Test:
    """A transition guard.

    kind: `layer` (a call of a module attribute; `layer_var` names the init
    variable it must be bound to, `type` the init type it must have when the
    variable is not bound yet), `call` (a call of the qualified function
    `type`), `method` (a call `self.<type>(...)` of a method of the class),
    `op` (tensor operator `type` with `arity` operands), `any` (wildcard).
    """

    kind: str
    type: str | None = None
    layer_var: str | None = None
    arity: int | None = None
    commutative: bool = False

    def describe(self) -> str:
        if self.kind == "layer":
            return f"layer ${self.layer_var} : {self.type}"
        if self.kind == "op":
            sym = " (commutative)" if self.commutative else ""
            return f"op {self.type!s}/{self.arity}{sym}"
        if self.kind == "any":
            return "any node"
        return f"{self.kind} {self.type}"

    @property
    def anchor(self) -> tuple[str, str] | None:
        """The index key of nodes this test can fire on (None: any node)."""
        if self.kind == "any":
            return None
        if self.kind == "op":
            return ("op", f"{self.type}/{self.arity}")
        return (self.kind, self.type or "")


@dataclass(frozen=True, slots=True)
class Action:
    """Bind `term` (a `Var`) to the value in `slot`, or check it is equal.

    A `Const` term checks the slot holds that literal.  Binding an already
    bound variable checks equality with its binding (the data-flow
    constraint: one concrete name or value per variable).
    """

    slot: str
    term: ir.Term
    # `option rows`: the slot may hold a row reshaping of the variable's value
    # (`logits.view(-1, logits.size(-1))`; dslc/match/rows.py)
    rows: bool = False

    def describe(self) -> str:
        if isinstance(self.term, ir.Var):
            return f"{self.term} <- {self.slot}"
        if isinstance(self.term, ir.Const):
            return f"{self.slot} == {self.term.value!r}"
        if isinstance(self.term, ir.Code):
            return f"{self.slot} is `{self.term.text}`"
        if isinstance(self.term, ir.AttrOf):
            return f"{self.slot} is `<{self.term.base}>.{self.term.attr}`, {self.term.base} <- its base"
        return f"{self.slot} ~ {self.term!r}"


@dataclass(frozen=True, slots=True)
class Transition:
    """`source -> source+1`, fired by a node passing `test`.

    `signature` names the callee whose parameter names the node's arguments
    are normalised by before the actions run (None: positional slots and
    keywords as written).  `rest` is set when the pattern ends with `...`
    (any further arguments are accepted).
    """

    source: int
    test: Test
    actions: tuple[Action, ...]
    signature: str | None = None
    rest: bool = False
    pattern: ir.PatNode | None = None

    @property
    def target(self) -> int:
        return self.source + 1

    def describe(self) -> str:
        parts = [self.test.describe()]
        if self.signature:
            parts.append(f"args by {self.signature}")
        if self.rest:
            parts.append("rest ...")
        acts = "; ".join(a.describe() for a in self.actions)
        return f"{self.source} -> {self.target}: {', '.join(parts)} {{ {acts} }}"


@dataclass(frozen=True, slots=True)
class Automaton:
    """The forward matcher of one rule: transition `i` leaves state `i`."""

    transitions: tuple[Transition, ...]
    anchor_index: int  # the first transition that is not a wildcard

    @property
    def states(self) -> int:
        return len(self.transitions) + 1

    @property
    def anchor(self) -> tuple[str, str] | None:
        if not self.transitions:
            return None
        return self.transitions[self.anchor_index].test.anchor

    def dump(self) -> str:
        lines = [f"automaton: {self.states} states, final {self.states - 1}, anchor {_anchor_text(self.anchor)} (transition {self.anchor_index})"]
        for t in self.transitions:
            lines.append("  " + t.describe())
            if 0 < t.source:
                lines.append(f"  {t.source} -> {t.source}: skip unless the node writes a bound name")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class InitTest:
    """One init pattern node: `type(args) -> $var` or `type[key] -> $var`."""

    var: str | None
    type: str
    kind: str  # call | subscript
    actions: tuple[Action, ...]
    signature: str | None = None
    rest: bool = False
    pattern: ir.PatNode | None = None

    def describe(self) -> str:
        target = f"${self.var}" if self.var else "_"
        how = "[key]" if self.kind == "subscript" else "(...)"
        parts = [f"{target} := {self.type}{how}"]
        if self.signature:
            parts.append(f"args by {self.signature}")
        if self.rest:
            parts.append("rest ...")
        acts = "; ".join(a.describe() for a in self.actions)
        return f"{', '.join(parts)} {{ {acts} }}"


@dataclass(frozen=True, slots=True)
class SetMatcher:
    """The init matcher: every test must match a distinct init binding."""

    tests: tuple[InitTest, ...]

    def dump(self) -> str:
        lines = [f"init set-matcher: {len(self.tests)} binding(s), order-insensitive"]
        lines += ["  " + t.describe() for t in self.tests]
        return "\n".join(lines)


def _anchor_text(anchor: tuple[str, str] | None) -> str:
    return "*" if anchor is None else f"{anchor[0]}:{anchor[1]}"
