"""Optional forward nodes (`... -> $s2 optional when $m is not None`).

A rule whose forward source has an optional node matches three ways:

* **present**: the node is on the path; the rule as written;
* **absent**: the node is not on the path; `absent_variant` derives the rule
  for that (the compiler compiles it beside the rule): the node is left out
  of the source, its output is its chain input (`$s2` reads as `$s1`), the
  target leaves out its optional nodes, a keyword argument whose value one
  of them computed is left out of the call (the callee's default, None,
  applies), and any other use of such a value is the constant None;
* **guarded**: the node is alone in `if m is not None:` (no `else`), `m`
  the name bound to `$m`.  The paths split at that `if`: the present rule
  matches where it is taken, the absent variant where it is not, over the
  same other nodes.  `pair_guarded` (matcher step 5) makes the two one
  match that deletes the `if`; its target writes each optional target node
  as `(None if m is None else <node>)`, so one call is right on both paths.
  An optional node under any other `if` refuses the match (S330), with what
  differs.
"""

from __future__ import annotations

import ast
from dataclasses import replace

from dslc.match import ir


def optional_index(rule: ir.Rule) -> int | None:
    """The position of the optional source node of a forward item, or None."""
    if rule.forward is None or rule.klass is not None:
        return None
    return next((i for i, n in enumerate(rule.forward.source) if n.optional is not None), None)


def _node_terms(n: ir.PatNode) -> list[ir.Term]:
    return list(n.args) + [t for _, t in n.kwargs]


def _vars(t: ir.Term) -> set[str]:
    if isinstance(t, ir.Var):
        return {t.name}
    if isinstance(t, ir.AttrOf):
        return {t.base.name}
    if isinstance(t, ir.Expr):
        return set().union(*(_vars(x) for x in t.operands)) if t.operands else set()
    return set()


def pass_through(rule: ir.Rule) -> str | None:
    """The operand of the optional node that flows on when it is absent."""
    k = optional_index(rule)
    if k is None:
        return None
    src = rule.forward.source
    earlier = {v.name for n in src[:k] for v in n.outputs}
    found = [v for t in _node_terms(src[k]) for v in sorted(_vars(t)) if v in earlier]
    return found[0] if len(found) == 1 else None


def _subst(t: ir.Term, rename: dict[str, str], none: set[str]) -> ir.Term:
    if isinstance(t, ir.Var):
        if t.name in none:
            return ir.Const(None, span=t.span)
        return ir.Var(rename.get(t.name, t.name), span=t.span)
    if isinstance(t, ir.AttrOf):
        return ir.AttrOf(ir.Var(rename.get(t.base.name, t.base.name), span=t.base.span), t.attr, span=t.span)
    if isinstance(t, ir.Expr):
        return ir.Expr(t.op, tuple(_subst(x, rename, none) for x in t.operands), span=t.span)
    return t


def _rewrite_node(n: ir.PatNode, rename: dict[str, str], none: set[str]) -> ir.PatNode:
    kwargs = tuple((k, _subst(t, rename, none)) for k, t in n.kwargs
                   if not (isinstance(t, ir.Var) and t.name in none))
    callee = n.callee
    if callee is not None and callee.var is not None and callee.var.name in rename:
        callee = replace(callee, var=ir.Var(rename[callee.var.name], span=callee.var.span))
    return replace(n, callee=callee, args=tuple(_subst(t, rename, none) for t in n.args), kwargs=kwargs,
                   outputs=tuple(ir.Var(rename.get(v.name, v.name), span=v.span) for v in n.outputs))


def absent_variant(rule: ir.Rule) -> ir.Rule | None:
    """The rule where its optional node is absent (see the module docstring)."""
    k = optional_index(rule)
    flow = pass_through(rule)
    if k is None or flow is None:
        return None
    src = rule.forward.source
    out = src[k].outputs[0].name
    others = {v for i, n in enumerate(src) if i != k for t in _node_terms(n) for v in _vars(t)}
    others |= {v.name for i, n in enumerate(src) if i != k for v in n.outputs}
    if rule.init is not None:
        others |= {v for n in rule.init.source for t in _node_terms(n) for v in _vars(t)}
        others |= {v.name for n in rule.init.source for v in n.outputs}
    only = {v for t in _node_terms(src[k]) for v in _vars(t)} - others
    rename = {out: flow}
    source = tuple(_rewrite_node(n, rename, set()) for i, n in enumerate(src) if i != k)
    target = rule.forward.target
    if target is not None:
        gone = {v.name for n in target if n.optional is not None for v in n.outputs} | only
        if through_target(rule) is not None:
            gone.discard(out)  # the optional target node's output reads as its chain input (`through_target`)
        target = tuple(_rewrite_node(n, rename, gone) for n in target if n.optional is None)
    where = tuple(c for c in rule.where if c.var.name not in only | {out})
    return replace(rule, forward=replace(rule.forward, source=source, target=target), where=where, present=rule)


def through_target(rule: ir.Rule) -> int | None:
    """The index of an optional target node that adds to a value an earlier
    (not optional) target node computes, when it writes the optional source
    node's output: `torch.where($c, 0.0, $mv) -> $s1; $s1 + $mm -> $s2
    optional when $m is not None` (a causal mask plus the optional one).
    Where the source node is absent its output is its chain input (`$s2`
    reads as `$s1`), and so is this node's: the value computed without the
    optional part, not None; guarded, it is written `<$s1> if m is None else
    <$s1 + ...>`.  None when the rule has no such node."""
    k = optional_index(rule)
    flow = pass_through(rule)
    if k is None or flow is None or rule.forward.target is None:
        return None
    out = rule.forward.source[k].outputs[0].name
    target = rule.forward.target
    for i, n in enumerate(target):
        if n.optional is None or [v.name for v in n.outputs] != [out]:
            continue
        earlier = {v.name for m in target[:i] if m.optional is None for v in m.outputs}
        if flow in earlier and flow in {v for t in _node_terms(n) for v in _vars(t)}:
            return i
    return None


# ---------------------------------------------------------------------------
# The guarded case: the `if` around the optional node.


def guard_problem(if_stmt: ast.stmt | None, body_stmt_lines: tuple[int, int], name: str | None) -> str | None:
    """Why the `if` around the optional node cannot be deleted with the chain
    (None: it is exactly `if <name> is not None: <that statement>`)."""
    if not isinstance(if_stmt, ast.If):
        kind = type(if_stmt).__name__.lower() if if_stmt is not None else "block"
        return f"the optional node at line {body_stmt_lines[0]} sits in a `{kind}`, not in an `if`"
    where = f"the `if` at line {if_stmt.lineno}"
    body_lines = [(s.lineno, s.end_lineno) for s in if_stmt.body]
    if tuple(body_lines[:1]) != (tuple(body_stmt_lines),) and tuple(body_stmt_lines) not in body_lines:
        return f"the optional node at line {body_stmt_lines[0]} is in the `else` branch of {where}"
    if if_stmt.orelse:
        return f"{where} has an `else` branch"
    if len(if_stmt.body) != 1:
        return f"{where} holds other statements beside line {body_stmt_lines[0]}"
    if name is None:
        return f"the optional node's `when` variable is bound to no local name ({where})"
    test = if_stmt.test
    ok = (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)
          and isinstance(test.left, ast.Name) and test.left.id == name
          and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None)
    if not ok:
        return f"{where} tests `{ast.unparse(test)}`, not `{name} is not None`"
    return None


def _same_scope(a, b) -> bool:
    return a.scope.paths_of == b.scope.paths_of and a.scope.cls is b.scope.cls


def _nested(f) -> tuple | None:
    """The optional node's position and its enclosing block `(if path, branch)`,
    when it sits one block deeper than the other matched nodes (else None)."""
    k = optional_index(f.rule.rule)
    if k is None or f.rule.variant_of is not None or k >= len(f.nodes):
        return None
    blocks = {n.stmt.blocks for i, n in enumerate(f.nodes) if i != k}
    base = f.nodes[-1].stmt.blocks if k != len(f.nodes) - 1 else None
    # the others in the final node's block, or one `if` deeper (a step under
    # a flag, flattened by the per-call guard: dslc/rewrite/kinds/keepflat.py)
    deeper = [b for b in blocks if b != base]
    if base is None or (deeper and not f.rule.rule.keep) or any(
            len(b) != len(base) + 1 or b[: len(base)] != base or b[-1][1] != "body" for b in deeper):
        return None
    inner = f.nodes[k].stmt.blocks
    if len(inner) != len(base) + 1 or inner[: len(base)] != base:
        return None
    return k, inner[-1]


def _test_node(f, paths, k: int, block: tuple):
    """The `stmt` node of the `if` test that holds the optional node (on f's path)."""
    opt = f.nodes[k].stmt
    for pi in f.paths:
        for n in paths[pi].nodes if 0 <= pi < len(paths) else ():
            if n.kind == "stmt" and n.stmt.index_path == block[0] and n.stmt.method == opt.method:
                return n
    return None


def pair_guarded(found: list, node_id, paths_of) -> list:
    """Matcher step 5b (see the module docstring): join each match whose
    optional node sits one `if` deeper with the absent variant's match over
    the same other nodes (`f.guarded = (k, test node, paired)`); drop the
    absent matches so joined, and those that repeat an earlier rule's absent
    match over the same nodes (the same rewrite: no mask either way)."""
    absent: dict[tuple, list] = {}
    for f in found:
        for origin in f.rule.variant_origins:
            absent.setdefault((origin, frozenset(node_id(n) for n in f.nodes)), []).append(f)
    dropped: set[int] = set()
    for f in found:
        where = _nested(f)
        if where is None:
            continue
        k, block = where
        ids = frozenset(node_id(n) for i, n in enumerate(f.nodes) if i != k)
        partners = [b for b in absent.get((f.rule.index, ids), []) if _same_scope(b, f)]
        f.guarded = (k, _test_node(f, paths_of(f), k, block), bool(partners))
        for b in partners:
            dropped.add(id(b))
            f.paths.extend(pi for pi in b.paths if pi not in f.paths)
    joined = [f for f in found if f.guarded is not None and f.guarded[2]]
    seen: dict[frozenset, int] = {}
    for f in sorted((f for f in found if f.rule.variant_of is not None), key=lambda f: f.rule.rank):
        ids = frozenset(node_id(n) for n in f.nodes)
        if any(ids <= frozenset(node_id(n) for n in j.nodes) and set(f.paths) <= set(j.paths) and _same_scope(f, j)
               for j in joined):
            dropped.add(id(f))
        key = (ids, f.scope.paths_of, id(f.scope.cls))
        if key in seen and seen[key] != f.rule.rank:
            dropped.add(id(f))
        seen.setdefault(key, f.rule.rank)
    return [f for f in found if id(f) not in dropped]


def optional_updates(rule_lists) -> frozenset:
    """What the analysis splits a call-free `if` for
    (`analysis.budget.Options.optional_ifs`): per optional node of compiled
    rules (lists of `CompiledRule`), the pair (its update: the operator `+`
    or the tensor method `masked_fill`; the op or function of the source node
    whose output it updates: `/`, `torch.matmul`)."""
    out = set()
    for rules in rule_lists:
        for c in rules:
            rule = getattr(c, "rule", None)
            k = optional_index(rule) if rule is not None and getattr(c, "variant_of", None) is None else None
            flow = pass_through(rule) if k is not None else None
            if flow is None:
                continue
            update = _node_key(rule.forward.source[k])
            writer = next((_node_key(n) for n in rule.forward.source[:k] if flow in {v.name for v in n.outputs}), None)
            if update and writer:
                out.add((update.rsplit("torch.Tensor.", 1)[-1], writer))
        out |= kept_updates(rules)
    return frozenset(out)


# How the kept value that the last source node reads (`keep $pd`) may be
# updated in an `if` without `else` between the matched statements (the head
# mask: `if head_mask is not None: p = p * head_mask`): the analysis splits
# such an `if` so that the chain matches where it is not taken (the rewrite
# then runs the original statements where it is, dslc.rewrite.kinds.keep).
KEPT_UPDATES = ("*", "view")


def kept_updates(rules) -> set:
    """(update, writer) pairs for the kept values of `rules` (see KEPT_UPDATES)."""
    out = set()
    for c in rules:
        rule = getattr(c, "rule", None)
        if rule is None or not rule.keep or rule.forward is None or getattr(c, "variant_of", None) is not None:
            continue
        source = rule.forward.source
        last_reads = {v for t in _node_terms(source[-1]) for v in _vars(t)} if source else set()
        layers = {v.name: n.callee.qualname for n in (rule.init.source if rule.init is not None else ())
                  for v in n.outputs if n.callee is not None}
        probs = set(rule.keep) & last_reads
        for n in reversed(source[:-1]):  # through a dropout: the probabilities before it too
            writer = _node_key(n) or (layers.get(n.layer_var) if n.layer_var else None)
            if {v.name for v in n.outputs} & probs and writer in DROPOUTS:
                probs |= {v for t in _node_terms(n) for v in _vars(t)} & set(rule.keep)
        for n in source[:-1]:
            if not {v.name for v in n.outputs} & probs:
                continue
            writer = _node_key(n) or (layers.get(n.layer_var) if n.layer_var else None)
            if writer:
                out.update((u, writer) for u in KEPT_UPDATES)
        out |= _score_updates(source, set(rule.keep) - probs)
    return out


# How a kept score (a kept value other than the probabilities) may be
# updated in an `if` without `else`: rescaled (`if self.scale_by_layer: s =
# s / float(self.layer_idx + 1)`, GPT-2's layer-wise scaling).  The analysis
# splits such a call-free `if` so that the chain matches where it is not
# taken; where it is, the per-call guard runs the original (kinds/keep.py).
SCORE_UPDATES = ("/",)


def _score_updates(source, scores: set) -> set:
    """(update, writer) pairs for the kept scores (see SCORE_UPDATES)."""
    out = set()
    for n in source[:-1]:
        writer = _node_key(n)
        if writer and {v.name for v in n.outputs} & scores:
            out.update((u, writer) for u in SCORE_UPDATES)
    return out


# The dropouts that the probabilities a rule keeps may pass through (BART's
# head mask multiplies them before the dropout, BERT's after), and the
# method by which a returned copy may be reshaped in an `if` with `else`
# (`if output_attentions: r = p.view(...); p = r.view(...) else: r = None`,
# dslc/rewrite/kinds/keepelse.py).
DROPOUTS = frozenset({"torch.nn.functional.dropout", "torch.nn.Dropout"})


def _node_key(n: ir.PatNode) -> str | None:
    """The op (`+`) or the function (`torch.matmul`) of a pattern node, as the
    analysis records it (None for a layer of `__init__`)."""
    if n.kind in ("op", "unary"):
        return n.op
    if n.kind == "layer" and n.layer_var is None and n.callee is not None and n.callee.var is None:
        return n.callee.qualname
    return None
