"""Lower a checked syntax tree to the rule IR (`dslc.match.ir`).

Algorithm (`lower_file`):
1. The pack header and `requires` lines become `ir.Pack` / `ir.Requirement`.
2. For each rule: kernels, the contract (`exact` / `tolerance`, the
   `deterministic` flag, the notes joined by newlines), items, `where`
   constraints, `params` mappings, options.  A `when` condition is kept as
   the option `("when", "<canonical text>")` (variables written `$v`), so the
   emitter can substitute bindings and guard the init rewrite with it.
3. Pattern nodes: a call is a `layer` node (callee a qualified name, a
   variable or a subscripted container), a lookup `qual.C[$k] -> $v` a
   `layer` node with `callee.subscript` and no arguments, `$a + $b` an `op`
   node, `-$a` a `unary` node, `*` a `wildcard`.  `...` becomes a trailing
   positional `ir.Const(Ellipsis)` (the compiler's "any further arguments").
4. Forward layer nodes get `layer_var`: `$v(...)` -> "v"; `qual.Type(...)` ->
   the init variable whose node has type `qual.Type` when exactly one does
   (init source for the forward source, init target -- else source -- for
   the forward target); None when none does (a function call).  Ambiguity is
   diagnosed by the checker (ADR207) and lowers to None here.
"""

from __future__ import annotations

import dataclasses

from dslc.match import ir
from dslc.lang import pretty, syntax as S


class LowerError(ValueError):
    """A tree the checker should have refused (a bug, not a user error)."""


def lower_file(f: S.File) -> ir.Pack:
    header = f.header
    if header is None:
        raise LowerError("file has no pack header")
    requires = tuple(
        ir.Requirement(
            package=q.package,
            version=q.version.value if q.version is not None else None,
            install=q.install.value if q.install is not None else None,
            module=q.module.qualname if q.module is not None else None,
            span=q.span,
        )
        for q in f.requires
    )
    modules = {q.package: (q.module.qualname.split(".")[0] if q.module is not None else q.package.replace("-", "_"))
               for q in f.requires}
    rules = tuple(lower_rule(header.name, r, modules) for r in f.rules)
    return ir.Pack(header.name, header.description, requires, rules, path=f.path, span=header.span)


def lower_rule(pack: str, r: S.Rule, modules: dict[str, str] | None = None) -> ir.Rule:
    """`modules`: package -> import name, from the pack's `requires` lines."""
    modules = modules or {}
    kernels = tuple(k.qualname.qualname for k in r.of(S.Kernel))
    notes = [n.text for n in r.of(S.Note)]
    contract = ir.Contract(note="\n".join(notes) if notes else None)
    for c in r.clauses:
        if isinstance(c, S.Exact):
            contract = ir.Contract(True, 0.0, 0.0, c.deterministic, contract.note)
        elif isinstance(c, S.Tolerance):
            tol = {a.name: float(a.value.value) for a in c.args}
            contract = ir.Contract(False, tol.get("atol", 0.0), tol.get("rtol", 0.0),
                                   c.deterministic, contract.note)
        elif isinstance(c, S.DtypeTolerance):
            per = []
            for d in c.dtypes:
                tol = {a.name: float(a.value.value) for a in d.args}
                per.append((d.dtype, tol.get("atol", 0.0), tol.get("rtol", 0.0)))
            main = next((p for p in per if p[0] == "fp32"), per[0] if per else ("fp32", 0.0, 0.0))
            contract = ir.Contract(False, main[1], main[2], c.deterministic, contract.note, tuple(per))
    init_sec, fwd_sec = r.section("init"), r.section("forward")
    init = _item(init_sec.item, None, None) if init_sec else None
    forward = None
    if fwd_sec is not None:
        src_types = _types(init_sec.item.source) if init_sec else {}
        tgt_types = src_types
        if init_sec is not None and init_sec.item.target is not None:
            tgt_types = _types(init_sec.item.target)
        forward = _item(fwd_sec.item, src_types, tgt_types)
    where = tuple(
        ir.Constraint(_var(c.var), c.op, tuple(_where_value(v) for v in c.values), span=c.span)
        for w in r.of(S.Where) for c in w.constraints
    )
    params = tuple(
        ir.ParamMap(_attr(m.target), _attr(m.source), span=m.span)
        for p in r.of(S.Params) for m in p.maps
    )
    options = [(o.name, o.value.value) for o in r.of(S.Option)]
    for w in r.of(S.When):
        options.append(("when", pretty.cond(w.cond)))
    safety = next((c.kind for c in r.of(S.Safety)), "safe")
    needs = tuple(
        ir.Need(q.package, modules.get(q.package, q.package.replace("-", "_")), q.device,
                _var(q.var) if q.var is not None else None, span=q.span)
        for q in r.of(S.RuleRequires)
    )
    fallback = next((c.kind for c in r.of(S.Fallback)), None)
    klass = None
    for c in r.of(S.ClassItem):
        types = _types(c.init or ())
        klass = ir.ClassPattern(
            init=tuple(_node(n, None) for n in (c.init or ())),
            scalars=tuple(_var(v) for v in c.scalars),
            inputs=tuple(_var(v) for v in c.inputs),
            forward=tuple(_node(n, types) for n in c.forward),
            target=None if c.target is None else tuple(_node(n, types) for n in c.target),
            span=c.span,
        )
    return ir.Rule(pack, r.name, r.description, kernels, contract, init, forward, where,
                   params, tuple(options), span=r.span, safety=safety, needs=needs,
                   fallback=fallback, klass=klass,
                   keep=tuple(v.name for c in r.of(S.Keep) for v in c.vars))


def _types(nodes) -> dict[str, list[str]]:
    """Qualified constructor type -> the variables its init nodes bind."""
    found: dict[str, list[str]] = {}
    for n in nodes:
        if isinstance(n, S.Node) and isinstance(n.expr, S.Call) and isinstance(n.expr.callee, S.Name):
            for out in n.outputs:
                found.setdefault(n.expr.callee.qualname, []).append(out.name)
    return found


def _item(it: S.Item, src_types, tgt_types) -> ir.Item:
    source = tuple(_optional(n, _node(n, src_types)) for n in it.source)
    target = None if it.target is None else tuple(_optional(n, _node(n, tgt_types)) for n in it.target)
    return ir.Item(source, target, span=it.span)


def _optional(n, pn: ir.PatNode) -> ir.PatNode:
    """`... optional when $m is not None`: the node carries the variable's name."""
    opt = getattr(n, "optional", None)
    return dataclasses.replace(pn, optional=opt.name) if opt is not None else pn


def _var(v: S.Var) -> ir.Var:
    return ir.Var(v.name, span=v.span)


def _attr(a: S.AttrRef) -> ir.AttrOf:
    return ir.AttrOf(_var(a.var), a.path, span=a.span)


def term(e) -> ir.Term:
    if isinstance(e, S.Var):
        return _var(e)
    if isinstance(e, S.Const):
        return ir.Const(e.value, span=e.span)
    if isinstance(e, S.AttrRef):
        return _attr(e)
    if isinstance(e, S.BinOp):
        return ir.Expr(e.op, (term(e.left), term(e.right)), span=e.span)
    if isinstance(e, S.UnaryOp):
        return ir.Expr(e.op, (term(e.operand),), span=e.span)
    if isinstance(e, S.Name):  # a qualified name (class items: `$x.to(torch.float32)`)
        return ir.Code(e.qualname, span=e.span)
    raise LowerError(f"not a term: {type(e).__name__}")


def _args(args: tuple[S.Arg, ...]):
    pos, kw = [], []
    for a in args:
        if a.rest:
            pos.append(ir.Const(Ellipsis, span=a.span))
        elif a.name is None:
            pos.append(term(a.value))
        else:
            kw.append((a.name, term(a.value)))
    return tuple(pos), tuple(kw)


def _node(n, types) -> ir.PatNode:
    outs = tuple(_var(v) for v in n.outputs)
    if isinstance(n, S.Wildcard):
        return ir.PatNode("wildcard", outputs=outs, span=n.span)
    e = n.expr
    if isinstance(e, S.Call):
        callee = e.callee
        layer_var = None
        if isinstance(callee, S.Var):
            c = ir.Callee(var=_var(callee))
            layer_var = callee.name if types is not None else None
        elif isinstance(callee, S.Subscript):
            c = ir.Callee(qualname=callee.container.qualname, subscript=term(callee.key))
        elif isinstance(callee, S.AttrRef):  # `$x.pow(2)`: a method of a value
            pos, kw = _args(e.args)
            return ir.PatNode("method", ir.Callee(qualname=callee.path, var=_var(callee.var)), None,
                              pos, kw, outs, None, span=n.span)
        else:
            c = ir.Callee(qualname=callee.qualname)
            if types is not None:
                owners = types.get(callee.qualname, [])
                layer_var = owners[0] if len(owners) == 1 else None
        pos, kw = _args(e.args)
        return ir.PatNode("layer", c, None, pos, kw, outs, layer_var, span=n.span)
    if isinstance(e, S.Subscript):
        c = ir.Callee(qualname=e.container.qualname, subscript=term(e.key))
        return ir.PatNode("layer", c, outputs=outs, span=n.span)
    if isinstance(e, S.AttrRef):  # `$x.dtype -> $dt`: an attribute of a value
        return ir.PatNode("attr", ir.Callee(qualname=e.path, var=_var(e.var)), outputs=outs, span=n.span)
    if isinstance(e, S.BinOp):
        return ir.PatNode("op", op=e.op, args=(term(e.left), term(e.right)), outputs=outs, span=n.span)
    if isinstance(e, S.UnaryOp):
        return ir.PatNode("unary", op=e.op, args=(term(e.operand),), outputs=outs, span=n.span)
    raise LowerError(f"not a pattern node: {type(e).__name__}")


def _where_value(v) -> object:
    """A constraint value: a literal's value, or a dotted constant as `ir.Code`
    (matched by the canonical source text of the bound value)."""
    return ir.Code(v.qualname, span=v.span) if isinstance(v, S.Name) else v.value
