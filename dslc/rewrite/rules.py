"""What a rule's patterns read and change: the variables of a pattern node,
the forward values the target binds again (equal or changed), and the init
bindings a match changes."""

from __future__ import annotations

from dslc.match import ir


def vars_in(term) -> set[str]:
    if isinstance(term, ir.Var):
        return {term.name}
    if isinstance(term, ir.AttrOf):
        return {term.base.name}
    if isinstance(term, ir.Expr):
        out: set[str] = set()
        for t in term.operands:
            out |= vars_in(t)
        return out
    return set()


def attrof_bases(node: ir.PatNode) -> set[str]:
    out: set[str] = set()

    def walk(term) -> None:
        if isinstance(term, ir.AttrOf):
            out.add(term.base.name)
        elif isinstance(term, ir.Expr):
            for t in term.operands:
                walk(t)

    for t in list(node.args) + [v for _, v in node.kwargs]:
        walk(t)
    return out


def node_vars(node: ir.PatNode) -> set[str]:
    out: set[str] = set()
    for t in list(node.args) + [v for _, v in node.kwargs]:
        out |= vars_in(t)
    if node.callee is not None:
        if node.callee.var is not None:
            out.add(node.callee.var.name)
        if node.callee.subscript is not None:
            out |= vars_in(node.callee.subscript)
    return out


def layer_var_of(pn: ir.PatNode) -> str | None:
    if pn.callee is not None and pn.callee.var is not None:
        return pn.callee.var.name
    return pn.layer_var


def renamed_key(pn: ir.PatNode, rename: dict[str, str]) -> tuple:
    """A pattern node as comparable data, its variables renamed."""
    def term(t):
        if isinstance(t, ir.Var):
            return ("var", rename.get(t.name, t.name))
        return ("term", repr(t))
    callee = pn.callee
    callee_key = None if callee is None else (callee.qualname, callee.var.name if callee.var else None,
                                              repr(callee.subscript))
    return (pn.kind, callee_key, pn.op, tuple(term(a) for a in pn.args),
            tuple((k, term(v)) for k, v in pn.kwargs), tuple(term(o) for o in pn.outputs), pn.layer_var)


def changed_values(rule: ir.Rule) -> set[str]:
    """Forward variables the target binds again with a value that differs from the source's.

    The outputs of the source chain that no later source node reads are what
    the rule's contract keeps equal.  Any other variable the target binds
    again keeps its value only when the target node that binds it is the
    source node that bound it (same callee, arguments and outputs), the layer
    it calls keeps its init (its init target, if any, equals its init source)
    and none of its inputs changed.  biased_gelu binds `$y` with `$lin($x)` in
    both, but `$lin` loses its bias: `$y` changes.
    """
    if rule.forward is None or rule.forward.target is None:
        return set()
    source, target = rule.forward.source, rule.forward.target
    init_changed: set[str] = set()
    if rule.init is not None and rule.init.target is not None:
        before = {o.name: pn for pn in rule.init.source for o in pn.outputs}
        for pn in rule.init.target:
            for o in pn.outputs:
                if before.get(o.name) != pn:
                    init_changed.add(o.name)
    bound_by = {o.name: pn for pn in source for o in pn.outputs}
    read: set[str] = set()
    for pn in source:
        read |= node_vars(pn)
    changed: set[str] = set()
    for pn in target:
        for o in pn.outputs:
            if o.name not in read:
                continue  # a result of the chain: equal by the rule's contract
            old = bound_by.get(o.name)
            layer = layer_var_of(pn)
            same = (old is not None and old == pn and (layer is None or layer not in init_changed)
                    and not (node_vars(pn) & changed))
            if not same:
                changed.add(o.name)
    return changed


def values_produced_again(match: ir.Match) -> set[str]:
    """Names the target binds again with the same value (see `changed_values`)."""
    rule = match.rule
    changed = changed_values(rule)
    out: set[str] = set()
    for pn in rule.forward.target or ():
        for o in pn.outputs:
            bound = match.bindings.get(o.name)
            if bound is not None and bound.kind == "name" and o.name not in changed:
                out.add(bound.text)
    return out


def forward_unchanged(rule: ir.Rule) -> bool:
    return rule.forward is not None and rule.forward.target is not None and tuple(rule.forward.target) == tuple(rule.forward.source)


def changes_init(rule: ir.Rule) -> bool:
    """Does the rule edit `__init__`?  An init item whose target is its source
    only names a layer the forward calls (sdpa.adr's attention Dropout): no
    init edit, and the attribute is neither replaced nor removed."""
    return rule.init is not None and rule.init.target is not None and rule.init.target != rule.init.source


def init_attrs(match: ir.Match) -> tuple:
    """The init bindings a match changes, as a key: class, variable, attribute, statement lines."""
    return (match.class_name,) + tuple(sorted(
        (var, getattr(b, "attr", None), tuple(b.stmt.lines) if getattr(b, "stmt", None) else ())
        for var, b in match.init_nodes.items()
    ))


def per_construction(rule: ir.Rule) -> bool:
    """Whether the rule chooses its layers per construction: `fallback
    original` with `needs` and an init target builds the kernel's layers where
    the needs hold, else the original ones (an `if` in `__init__`)."""
    return (rule.fallback == "original" and bool(rule.needs)
            and rule.init is not None and rule.init.target is not None)


def conditional_rule(rule: ir.Rule) -> str:
    """Which rule builds its layers under an `if` in `__init__`, as skip
    reasons say it: through `when`, a per-construction fallback, or both."""
    when = bool(rule.option("when"))
    if when and per_construction(rule):
        return "a rule with `when` and a per-construction fallback (`fallback original` with `needs`)"
    if when:
        return "a rule with `when`"
    return ("a rule with a per-construction fallback (`fallback original` with `needs`: the kernel's layers "
            "where its needs hold, else the original ones)")
