"""Compile rules (`ir.Rule`) to matcher automata and one combined matcher.

`compile_rules(rules)` runs an explicit tuple of passes (`PASSES`) over each
rule, then indexes the compiled rules by anchor:

1. `_resolve_layer_vars`  every forward layer node gets its init variable:
   `$v(...)` calls the layer `$v`; `qual.Type(...)` calls the layer of init
   type `qual.Type` when the init pattern has exactly one such node, else
   the function `qual.Type` itself (`PatNode.layer_var` set by the front end
   wins).
2. `_compile_init`   the init source pattern -> a `SetMatcher` (one
   `InitTest` per node; arguments keyed by parameter name where the
   signature table knows the type).
3. `_compile_forward`  the forward source pattern -> a linear `Automaton`
   (transition `i -> i+1` per pattern node; skip self-loops are implicit).
4. `_collect_names`  the last components of the qualified names the rule
   needs (the file pre-filter of `CompiledPack.anchor_names`).

Rule options read here: `option scope = "forward"` limits an init-less rule
to forward paths (default `"any"`); `option commutative = False` matches the operands
of `+`/`*` in written order only (default: commutative, as
docs/adopter-rules.md settles it).  Pattern terms: `Var` binds,
`Const` is a literal check (a non-static value keeps the match, marked
`conflict`), `Code` matches source text (`ACT2FN[config.hidden_act]`), and a
trailing `Const(Ellipsis)` (`...`) accepts further arguments.

The combined matcher (`CompiledPack`) maps each anchor key — (kind, type) of
an automaton's first non-wildcard transition — to the rules anchored there, so
`dslc.match.matcher` only tries a path node against the rules whose anchor the node
carries: the work per node is one dict lookup plus the rules that can really
start there, however many rules the pack holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from dslc.match import ir, signatures
from dslc.match.automaton import Action, Automaton, InitTest, SetMatcher, Test, Transition
from dslc.match.optional import absent_variant

COMMUTATIVE = frozenset({"+", "*"})


class CompileError(ValueError):
    """A rule that cannot be compiled (the checker should have said so)."""

    def __init__(self, rule: ir.Rule, message: str, span: ir.Span | None = None):
        span = span or rule.span
        where = f"{span.path}:{span.line}:{span.col}: " if span else ""
        super().__init__(f"{where}rule {rule.qualified_name}: {message}")
        self.rule = rule
        self.span = span


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: ir.Rule
    index: int  # position in pack order (overlap resolution: lower wins)
    init: SetMatcher | None
    forward: Automaton | None
    init_types: tuple[tuple[str, str], ...]  # init var -> qualified type
    names: frozenset[str]
    # The absent variant of a rule with an optional node (`dslc.match.optional`):
    # the index of the rule it derives from (its rank in overlap resolution).
    variant_of: int | None = None
    # every rule whose absent variant this is (equal variants are compiled once)
    variant_origins: tuple[int, ...] = ()

    @property
    def rank(self) -> int:
        return self.index if self.variant_of is None else self.variant_of

    @property
    def name(self) -> str:
        return self.rule.qualified_name

    @property
    def class_scoped(self) -> bool:
        """Rules with an init item apply in forward (helpers inlined) only;
        so do init-less rules with `option scope = "forward"` (the default
        for them is `"any"`: every method and module-level function)."""
        return self.init is not None or self.rule.option("scope") == "forward"

    def dump(self) -> str:
        scope = "forward paths of classes" if self.class_scoped else "every function (no init item)"
        if self.rule.klass is not None:
            scope = "module classes, by the forward they compute"
        lines = [f"rule {self.name}  [{scope}]"]
        if self.init is not None:
            lines += ["  " + ln for ln in self.init.dump().splitlines()]
        if self.forward is not None:
            lines += ["  " + ln for ln in self.forward.dump().splitlines()]
        elif self.rule.klass is not None:
            lines.append("  class item: the expression graph of a straight-line forward")
        else:
            lines.append("  forward: none (an instantiation whose layer is called in forward)")
        for c in self.rule.where:
            vals = tuple(v.text if isinstance(v, ir.Code) else repr(v) for v in c.values)
            shown = vals[0] if c.op in ("==", "!=") else "(" + ", ".join(vals) + ")"
            lines.append(f"  where {c.var} {c.op} {shown}")
        lines.append(f"  names: {', '.join(sorted(self.names)) or '-'}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CompiledPack:
    """All rules of one or more packs behind one anchor index."""

    rules: tuple[CompiledRule, ...]
    index: Mapping[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    # Rules whose automaton has no anchor (all wildcards): tried everywhere.
    unanchored: tuple[int, ...] = ()
    # Rules with an init item and no forward item.
    init_only: tuple[int, ...] = ()
    # Rules with a class item (matched by `dslc.match.classmatch`).
    class_rules: tuple[int, ...] = ()

    def candidates(self, key: tuple[str, str]) -> tuple[int, ...]:
        return self.index.get(key, ())

    def anchor_names(self) -> frozenset[str]:
        """Last components of every qualified name some rule needs.

        A file that mentions none of them cannot match.  A rule that needs no
        name at all (only operators) adds `""`, which every file contains.
        """
        out: set[str] = set()
        for rule in self.rules:
            out |= rule.names or {""}
        return frozenset(out)

    def dump(self) -> str:
        lines = [f"combined matcher: {len(self.rules)} rule(s), {len(self.index)} anchor(s)"]
        for key in sorted(self.index):
            names = ", ".join(self.rules[i].name for i in self.index[key])
            lines.append(f"  anchor {key[0]}:{key[1]} -> {names}")
        for i in self.unanchored:
            lines.append(f"  anchor * -> {self.rules[i].name}")
        for i in self.init_only:
            lines.append(f"  init only -> {self.rules[i].name}")
        for i in self.class_rules:
            lines.append(f"  class item -> {self.rules[i].name}")
        for rule in self.rules:
            lines.append("")
            lines.append(rule.dump())
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Passes.  Each takes the working state of one rule and fills part of it.


@dataclass
class _Work:
    rule: ir.Rule
    forward: tuple[ir.PatNode, ...] = ()
    init_types: dict[str, str] = field(default_factory=dict)
    init: SetMatcher | None = None
    automaton: Automaton | None = None
    names: set[str] = field(default_factory=set)


def _is_rest(term: ir.Term) -> bool:
    return (isinstance(term, ir.Const) and term.value is Ellipsis) or (
        isinstance(term, ir.Var) and term.name in ("...", "")
    )


def _is_discard(var: ir.Var) -> bool:
    return var.name == "_"


def _arg_actions(rule: ir.Rule, node: ir.PatNode, qualname: str | None) -> tuple[tuple[Action, ...], str | None, bool]:
    """Actions for a call's arguments: by parameter name when the callee's
    signature is known, else by position / keyword as written."""
    args = list(node.args)
    rest = bool(args) and _is_rest(args[-1])
    if rest:
        args = args[:-1]
    kwargs = [(k, t) for k, t in node.kwargs if not _is_rest(t)]
    sig = signatures.signature(qualname)
    actions: list[Action] = []
    if sig is not None:
        positional = [p.name for p in sig.params if p.kind == "pos"]
        names = set(sig.names)
        varkw = any(p.kind == "varkw" for p in sig.params)
        if len(args) > len(positional):
            raise CompileError(rule, f"{qualname} takes {len(positional)} positional argument(s), the pattern gives {len(args)}", node.span)
        for name, term in zip(positional, args):
            actions.append(Action(f"p:{name}", term))
        for key, term in kwargs:
            if key not in names and not varkw:
                raise CompileError(rule, f"{qualname} has no parameter {key!r} (known: {', '.join(sig.names)})", node.span)
            actions.append(Action(f"p:{key}", term))
        return tuple(actions), qualname, rest
    for i, term in enumerate(args):
        actions.append(Action(f"in{i}", term))
    for key, term in kwargs:
        actions.append(Action(f"kw:{key}", term))
    return tuple(actions), None, rest


def _resolve_layer_vars(w: _Work) -> None:
    rule = w.rule
    if rule.init is not None:
        for node in rule.init.source:
            if node.kind != "layer" or node.callee is None or not node.callee.qualname:
                raise CompileError(rule, "an init pattern node must be `qual.Type(args) -> $v` or `qual.Container[key] -> $v`", node.span)
            for out in node.outputs:
                if not _is_discard(out):
                    w.init_types[out.name] = node.callee.qualname
    if rule.forward is None:
        return
    by_type: dict[str, list[str]] = {}
    for var, typ in w.init_types.items():
        by_type.setdefault(typ, []).append(var)
    resolved = []
    for node in rule.forward.source:
        if node.kind == "layer" and node.layer_var is None and node.callee is not None:
            var = None
            if node.callee.var is not None:
                var = node.callee.var.name
            elif node.callee.qualname and len(by_type.get(node.callee.qualname, ())) == 1:
                var = by_type[node.callee.qualname][0]
            if var is not None:
                node = ir.PatNode(node.kind, node.callee, node.op, node.args, node.kwargs, node.outputs, var, node.span)
        if node.layer_var is not None and node.layer_var not in w.init_types:
            raise CompileError(rule, f"forward calls layer ${node.layer_var}, which no init node binds", node.span)
        resolved.append(node)
    w.forward = tuple(resolved)


def _compile_init(w: _Work) -> None:
    rule = w.rule
    if rule.init is None:
        return
    tests = []
    for node in rule.init.source:
        qual = node.callee.qualname
        var = next((o.name for o in node.outputs if not _is_discard(o)), None)
        if node.callee.subscript is not None:
            tests.append(InitTest(var, qual, "subscript", (Action("sub", node.callee.subscript),), pattern=node))
            continue
        actions, sig, rest = _arg_actions(rule, node, qual)
        tests.append(InitTest(var, qual, "call", actions, sig, rest, node))
    w.init = SetMatcher(tuple(tests))


def _compile_forward(w: _Work) -> None:
    rule = w.rule
    if rule.forward is None:
        return
    # `option commutative = False`: match `+`/`*` operands in written order
    # only (the ADOPTER benchmark labels count `dropout(x) + res`, not
    # `res + dropout(x)`).
    commutative = rule.option("commutative", True) is not False  # the checker admits True/False
    transitions = []
    for i, node in enumerate(w.forward):
        outs = tuple(Action(f"out{j}", o) for j, o in enumerate(node.outputs) if not _is_discard(o))
        if node.kind == "wildcard":
            acts, _, rest = _arg_actions(rule, node, None)
            transitions.append(Transition(i, Test("any"), acts + outs, None, True, node))
        elif node.kind in ("op", "unary"):
            arity = 1 if node.kind == "unary" else len(node.args)
            comm = node.kind == "op" and node.op in COMMUTATIVE and arity == 2 and commutative
            acts = tuple(Action(f"in{j}", t) for j, t in enumerate(node.args))
            transitions.append(Transition(i, Test("op", node.op, None, arity, comm), acts + outs, None, False, node))
        elif node.layer_var is not None:
            acts, _, rest = _arg_actions(rule, node, None)
            test = Test("layer", w.init_types[node.layer_var], node.layer_var)
            transitions.append(Transition(i, test, (Action("attr", ir.Var(node.layer_var)),) + acts + outs, None, rest, node))
        elif node.callee is not None and node.callee.qualname:
            qual = node.callee.qualname
            if qual.startswith("self."):
                acts, _, rest = _arg_actions(rule, node, None)
                transitions.append(Transition(i, Test("method", qual[5:]), acts + outs, None, rest, node))
            else:
                acts, sig, rest = _arg_actions(rule, node, qual)
                transitions.append(Transition(i, Test("call", qual), acts + outs, sig, rest, node))
        else:
            raise CompileError(rule, f"cannot compile forward node of kind {node.kind!r}", node.span)
    rows = rows_option(rule)
    if rows is not None:
        transitions = [replace(t, actions=tuple(
            replace(a, rows=True) if isinstance(a.term, ir.Var) and a.term.name == rows[0]
            and not a.slot.startswith(("out", "attr")) else a for a in t.actions)) for t in transitions]
    anchor = next((t.source for t in transitions if t.test.kind != "any"), 0)
    w.automaton = Automaton(tuple(transitions), anchor)


def rows_option(rule: ir.Rule) -> tuple[str, str] | None:
    """`option rows = "$a: $b"` as ("a", "b"), None without it (or malformed: the checker's ADR106)."""
    text = rule.option("rows")
    m = re.fullmatch(r"\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*:\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*", text) if isinstance(text, str) else None
    return (m.group(1), m.group(2)) if m else None


def _collect_names(w: _Work) -> None:
    for typ in w.init_types.values():
        w.names.add(typ.rsplit(".", 1)[-1])
    if w.init is not None:
        for t in w.init.tests:
            w.names.add(t.type.rsplit(".", 1)[-1])
    if w.automaton is not None:
        for t in w.automaton.transitions:
            if t.test.kind in ("call", "method", "layer") and t.test.type:
                w.names.add(t.test.type.rsplit(".", 1)[-1])


PASSES: tuple[Callable[[_Work], None], ...] = (
    _resolve_layer_vars,
    _compile_init,
    _compile_forward,
    _collect_names,
)


def compile_rule(rule: ir.Rule, index: int = 0) -> CompiledRule:
    """Run `PASSES` over one rule."""
    if rule.klass is not None:
        # A class item is matched on the expression graph of forward
        # (`dslc.match.classmatch`); its names: the init types it needs.
        names = {n.callee.qualname.rsplit(".", 1)[-1] for n in rule.klass.init if n.callee and n.callee.qualname}
        return CompiledRule(rule, index, None, None, (), frozenset(names))
    if rule.init is None and rule.forward is None:
        raise CompileError(rule, "the rule has neither an init nor a forward item")
    w = _Work(rule)
    for run in PASSES:
        run(w)
    return CompiledRule(rule, index, w.init, w.automaton, tuple(sorted(w.init_types.items())), frozenset(w.names))


def compile_rules(rules, done: Mapping[str, CompiledRule] | None = None) -> CompiledPack:
    """Compile rules (in pack order) into one combined, anchor-indexed matcher.

    `done` holds rules compiled before (`LoadResult.compiled`, by qualified
    name): a rule found there (the same `ir.Rule` object) is not compiled again.
    """
    compiled = tuple(_compiled(rule, i, done) for i, rule in enumerate(rules))
    compiled += _absent_variants(compiled)
    index: dict[tuple[str, str], list[int]] = {}
    unanchored, init_only, class_rules = [], [], []
    for c in compiled:
        if c.rule.klass is not None:
            class_rules.append(c.index)
        elif c.forward is None:
            init_only.append(c.index)
        elif c.forward.anchor is None:
            unanchored.append(c.index)
        else:
            index.setdefault(c.forward.anchor, []).append(c.index)
    return CompiledPack(compiled, {k: tuple(v) for k, v in index.items()}, tuple(unanchored), tuple(init_only),
                        tuple(class_rules))


def _absent_variants(compiled: tuple[CompiledRule, ...]) -> tuple[CompiledRule, ...]:
    """One more compiled rule per rule with an optional node: the node absent
    (`dslc.match.optional`); appended, so the indices of the rules stay."""
    out: list[CompiledRule] = []
    seen: dict[tuple, int] = {}  # equal variants (add / masked_fill absent: no mask) once
    for c in compiled:
        variant = absent_variant(c.rule) if c.rule.forward is not None else None
        if variant is None:
            continue
        key = (variant.pack, variant.kernels, variant.contract, variant.init, variant.forward, variant.where,
               variant.params, variant.options, variant.safety, variant.needs, variant.fallback)
        if key in seen:
            j = seen[key]
            out[j] = replace(out[j], variant_origins=out[j].variant_origins + (c.index,))
            continue
        seen[key] = len(out)
        out.append(replace(compile_rule(variant, len(compiled) + len(out)), variant_of=c.index,
                           variant_origins=(c.index,)))
    return tuple(out)


def _compiled(rule: ir.Rule, index: int, done: Mapping[str, CompiledRule] | None) -> CompiledRule:
    before = done.get(rule.qualified_name) if done else None
    if before is None or before.rule is not rule:
        return compile_rule(rule, index)
    return before if before.index == index else replace(before, index=index)


def compile_pack(pack: ir.Pack, done: Mapping[str, CompiledRule] | None = None) -> CompiledPack:
    return compile_rules(pack.rules, done)
