"""Init replacement: the edits of `__init__` for the layers a match changes.

Init statements of source variables that the target does not produce again
are deleted (unless a hoisted copy still calls the layer or the target reads
`$v.attr`); those it produces again are replaced in place; a replaced layer
that a hoisted copy still calls keeps its statement and is re-assigned
under the branch's guard (paper Fig. 5(b)); new variables get fresh
attribute names.  New statements go where the last changed statement was
(same block, so a conditional init stays under its guard).  A layer
variable used as a target argument stands for its original constructor
call, and constructor arguments the rule does not name are carried over to
the target (`ctor_extras`) or refused.  Non-identity `params` mappings
register the checkpoint pre-hook.  With `when`, the edits are wrapped by
`WhenGuard`.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import names_in
from dslc.rewrite.imports import hook_registration, param_renames
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.kinds.when import WhenGuard
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.rules import attrof_bases


class InitReplacement(Planner):
    """The `__init__` edits of a match (used by the fusion and across-helper kinds)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.when = WhenGuard(ctx)

    def plan(self, match, target_vars, kinds, env, plan, condition, hoist_guards) -> None:
        """Edits of `__init__` (see the module docstring).

        1. Locate each matched binding's statement (a plain `self.a = ...`).
        2. Render the target statements; a layer variable used as an argument
           stands for its original constructor call, `$v.attr` for the
           attribute of the layer after the rewrite.
        3. Anchor: the last (in source order) statement that is deleted or
           replaced; the new statements (and the checkpoint hook) go there.
        4. Replaced statements change in place, deleted ones go; a replaced
           layer that a hoisted copy still calls keeps its statement and is
           re-assigned at the anchor, which must sit under a guard equivalent
           to the forward branch that calls the fused layer.
        5. With `when`, the smallest run of statements holding all the edits is
           duplicated: `if <cond>: <edited run> else: <original run>`; the
           unchanged statements of the run go before the `if` instead when
           that provably changes nothing (`WhenGuard.wrap_moved`).
        """
        rule = match.rule
        bindings = match.init_nodes
        stmts, env.ctor = self._statements(match, kinds)
        rendered: dict[str, str] = {}
        order = []
        for pn in rule.init.target:
            if len(pn.outputs) != 1:
                raise Skip(codes.S_TARGET, "an init target node must bind exactly one variable")
            var = pn.outputs[0].name
            rendered[var] = f"self.{env.attrs[var]} = {self.ctx.render_node(pn, env, plan)}"
            order.append(var)
        env.ctor = {}
        # Checkpoint compatibility: `$new.key <- $old.key` that is not an identity.
        renames = param_renames(rule, env.attrs.get, lambda v: getattr(bindings.get(v), "attr", None),
                                keep=lambda v: kinds.get(v) == "kept")
        self._order(rule, kinds, stmts)
        candidates = [v for v, k in kinds.items() if k != "kept"]
        if not candidates:
            raise Skip(codes.S_ANCHOR, "nothing in `__init__` to anchor the new layers to")
        anchor_var = max(candidates, key=lambda v: (stmts[v].lineno, stmts[v].col_offset))
        if kinds[anchor_var] == "reassigned":
            raise Skip(codes.S_ANCHOR, f"`self.{bindings[anchor_var].attr}` must stay as it is for the branch that does not use the fused layer, and nothing else anchors the new one")
        reassigned = [v for v, k in kinds.items() if k == "reassigned"]
        if reassigned:
            self.check_reassign_guard(bindings[anchor_var], hoist_guards, bindings[reassigned[0]].attr)
        new_lines = [rendered[v] for v in order if kinds.get(v) in (None, "reassigned", "moved")]
        if renames:
            plan.needs_hook = True
            new_lines.append(hook_registration(renames, self.mod.unit))
        init_plan = self._edits(kinds, stmts, rendered, anchor_var, new_lines)
        if condition:
            self.when.wrap(init_plan, [stmts[v] for v in candidates], condition, rule)
        plan.edits.extend(init_plan.edits)
        plan.claimed |= init_plan.claimed
        plan.lines |= init_plan.lines
        plan.absorbed.extend(init_plan.absorbed)

    def _statements(self, match: ir.Match, kinds: dict[str, str]) -> tuple[dict[str, ast.stmt], dict[str, str]]:
        """Each changed variable's statement (a plain `self.a = ...`) and its constructor text."""
        stmts: dict[str, ast.stmt] = {}
        ctor: dict[str, str] = {}
        for var in kinds:
            binding = match.init_nodes[var]
            if binding.stmt is None:
                raise Skip(codes.S_LOCATE, f"no statement recorded for `self.{binding.attr}`")
            stmt = self.mod.stmt(binding.stmt)
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute)):
                raise Skip(codes.S_STMT_SHAPE, f"line {stmt.lineno} is not a plain `self.{binding.attr} = ...`")
            stmts[var] = stmt
            ctor[var] = self.ctx.relative_text(stmt.value, stmt)
        return stmts, ctor

    def _order(self, rule: ir.Rule, kinds: dict[str, str], stmts: dict[str, ast.stmt]) -> None:
        """Replaced statements that must move to the anchor become "moved";
        a constructor call may not move above an assignment of a local it reads."""
        # A replaced statement that reads `$u.attr` of a layer built later
        # (`self.act = ...` above `self.fc1 = ...`) moves to the anchor, after it.
        target_of = {pn.outputs[0].name: pn for pn in rule.init.target}
        for var, kind in list(kinds.items()):
            if kind == "replaced":
                deps = [d for d in attrof_bases(target_of[var]) if d in stmts and d != var]
                if any(stmts[d].lineno > stmts[var].lineno for d in deps):
                    kinds[var] = "moved"
        # A target statement that embeds the constructor call of a layer built
        # later (`ConvBn2d(<conv call>, <bn call>)` at the conv's line) must
        # not move that call above an assignment of a local it reads.
        for var, kind in kinds.items():
            if kind not in ("replaced", "reassigned", "moved"):
                continue
            for arg in list(target_of[var].args) + [v for _, v in target_of[var].kwargs]:
                d = arg.name if isinstance(arg, ir.Var) else None
                if d is None or d not in stmts or d == var:
                    continue
                lo, hi = sorted((stmts[var], stmts[d]), key=lambda st: st.lineno)
                reads = names_in(stmts[d].value)
                for st in self.ctx.statements_between(lo, hi):
                    written = {n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
                    if written & reads:
                        raise Skip(codes.S_INPUT_CHANGED, f"`{', '.join(sorted(written & reads))}`, which the call at line {stmts[d].lineno} reads, "
                                   f"is assigned at line {st.lineno}, between the statements the fused layer joins")

    def _edits(self, kinds, stmts, rendered, anchor_var: str, new_lines: list[str]) -> Plan:
        """Replaced statements change in place, deleted and moved ones go; the
        anchor gets its own target statement (unless deleted) and the new ones."""
        mod, ctx = self.mod, self.ctx
        anchor = stmts[anchor_var]
        init_plan = Plan()
        deleted_ids = {id(stmts[v]) for v, k in kinds.items() if k in ("deleted", "moved")}
        for var, kind in kinds.items():
            if var == anchor_var:
                continue
            stmt = stmts[var]
            if kind == "replaced":
                start, end = mod.stmt_range(stmt)
                ctx.claim(init_plan, start, end, ctx.fit(ctx.lines_text([rendered[var]], mod.indent(stmt)), stmt), stmt)
            elif kind in ("deleted", "moved"):
                ctx.delete_stmt(init_plan, stmt, also_deleted=deleted_ids)
        start, end = mod.stmt_range(anchor)
        if kinds[anchor_var] == "deleted" and not new_lines:
            ctx.delete_stmt(init_plan, anchor, also_deleted=deleted_ids)
        else:
            lines = new_lines if kinds[anchor_var] == "deleted" else [rendered[anchor_var]] + new_lines
            ctx.claim(init_plan, start, end, ctx.fit(ctx.lines_text(lines, mod.indent(anchor)), anchor), anchor)
        return init_plan

    def check_reassign_guard(self, anchor_binding, hoist_guards, attr) -> None:
        init_guards = list(getattr(anchor_binding, "guards", ()) or ())
        text_i = " and ".join(str(g) for g in init_guards) or "True"
        text_f = " and ".join(str(g) for g in hoist_guards) or "True"
        answer = safety.guards.equivalent(init_guards, hoist_guards).value
        if answer != "proved":
            raise Skip(codes.S_ANCHOR,
                f"the hoisted copy needs the original `self.{attr}` where `{text_f}` is false, "
                f"but the fused layer would be built where `{text_i}` holds"
            )


def _is_default(value, default) -> bool:
    return (default is not None and default.is_const and getattr(value, "is_const", False)
            and type(value.const) is type(default.const) and value.const == default.const)


def ctor_extras(match: ir.Match, kinds: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Constructor arguments the rule's init source does not name, per target variable.

    For each source init node `Type(...) -> $v` and the binding it matched:
    1. The arguments the call gives that the pattern does not name (by
       parameter name through the signature table; by position past the
       pattern's and by keyword without it); an argument equal to the
       parameter's default is dropped (it changes nothing).
    2. A variable whose constructor call the target embeds whole (`$conv` as
       an argument of `ConvBn2d($conv, $bn)`) keeps all of them; a kept one
       (still built as it was) too.
    3. Otherwise they go, as keywords, to the target node that binds `$v`
       again, when its signature is known and accepts them (not already given);
       `device`/`dtype` must also reach every other target layer that takes
       over `$v`'s parameters (`params`), which they cannot: refused.
    Anything else is a Skip naming the argument: dropping it would build a
    different layer (`bias=False`, `elementwise_affine=False`, `dtype=`).
    """
    from dslc.match import signatures

    rule = match.rule
    if rule.init is None or rule.init.target is None:
        return {}
    embedded: set[str] = set()
    for pn in rule.init.target:
        for t in list(pn.args) + [v for _, v in pn.kwargs]:
            if isinstance(t, ir.Var):
                embedded.add(t.name)
    target_of = {o.name: pn for pn in rule.init.target for o in pn.outputs}
    out: dict[str, list[tuple[str, str]]] = {}
    for spn in rule.init.source:
        if len(spn.outputs) != 1 or spn.callee is None or spn.callee.subscript is not None:
            continue
        var = spn.outputs[0].name
        binding = match.init_nodes.get(var)
        if binding is None or getattr(binding, "kind", "call") != "call" or var in embedded or kinds.get(var) == "kept":
            continue
        qual = spn.callee.qualname
        pargs = [a for a in spn.args if not (isinstance(a, ir.Const) and a.value is Ellipsis)]
        sig = signatures.signature(qual)
        extras: list[tuple[str, object]] = []
        if sig is not None:
            named = set(signatures.explicit_params(qual, pargs, spn.kwargs) or ())
            given = signatures.explicit_params(qual, binding.args, binding.kwargs)
            values = signatures.normalize(qual, binding.args, binding.kwargs)
            if given is None or values is None:
                raise Skip(codes.S_EXTRA_ARG, f"the arguments of `self.{binding.attr}` do not fit the signature of `{qual}`")
            defaults = {p.name: p.default for p in sig.params}
            extras = [(p, values[p]) for p in given if p not in named and not _is_default(values[p], defaults.get(p))]
        else:
            pkw = {k for k, _ in spn.kwargs}
            extras = [(f"#{i}", v) for i, v in enumerate(binding.args) if i >= len(pargs)]
            extras += [(k, v) for k, v in binding.kwargs if k not in pkw]
        if not extras:
            continue
        line = binding.stmt.lines[0] if getattr(binding, "stmt", None) else 0
        where = f"`self.{binding.attr}` (line {line})"
        tpn = target_of.get(var)
        for name, value in extras:
            text = getattr(value, "text", str(value))
            shown = f"`{text}` (argument {int(name[1:]) + 1})" if name.startswith("#") else f"`{name}={text}`"
            if tpn is None:
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} would be dropped: the rule's target does not build `${var}` again")
            tqual = tpn.callee.qualname if tpn.callee is not None else None
            tsig = signatures.signature(tqual)
            if name.startswith("*") or text.startswith("*"):
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} cannot be carried over to the target")
            if tsig is None or name.startswith("#"):
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} has no counterpart in the target `{tqual}` (its parameters are unknown)")
            taken = set(signatures.explicit_params(tqual, tpn.args, tpn.kwargs) or ())
            if name not in tsig.names or name in taken:
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} has no counterpart in the target `{tqual}`")
            if name in ("device", "dtype"):
                for pm in rule.params:
                    if pm.source.base.name == var and pm.target.base.name != var:
                        raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} would not reach `${pm.target.base.name}`, which takes over its "
                                   f"`{pm.source.attr}`")
            out.setdefault(var, []).append((name, text))
    return out
