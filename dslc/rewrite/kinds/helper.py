"""Across a helper: the removed layer's call sits in a helper forward calls (issue 8 item 7).

The conv is called in `forward`, its BatchNorm in `self._bn_act(h)`: the
call `v = self.<bn>(v)` is deleted from the helper and the init changes;
the rest of forward stays.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import exit_between, self_attr_name
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.kinds.init import InitReplacement
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite.rules import renamed_key


class AcrossHelper(Kind):
    """The removed layer's call is in a helper inlined into the method of the other matched nodes."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.init = InitReplacement(ctx)

    def select(self, match: ir.Match, setup: Setup | None):
        return self.removed_in_helper(match)

    def removed_in_helper(self, match: ir.Match):
        """The index of the matched call of a layer the rewrite removes when
        it sits in a helper inlined into the method of the other matched
        nodes (conv in `forward`, its BatchNorm in `self._bn_act(h)`)."""
        rule = match.rule
        if rule.forward is None or rule.forward.target is None or rule.init is None or rule.init.target is None:
            return None
        if len(match.nodes) != len(rule.forward.source) or len({n.stmt.method for n in match.nodes}) != 2:
            return None
        target_vars = {o.name for pn in rule.init.target for o in pn.outputs}
        removed = [i for i, pn in enumerate(rule.forward.source) if pn.layer_var and pn.layer_var not in target_vars]
        if len(removed) != 1:
            return None
        index = removed[0]
        node = match.nodes[index]
        others = [n for i, n in enumerate(match.nodes) if i != index]
        if any(n.stmt.method == node.stmt.method for n in others):
            return None
        return index

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        """Delete the removed layer's call `v = self.a(v)` from the helper and
        make the init change; the rest of forward stays.

        Only when the rule's forward target is its source without that call
        (so the unchanged code computes the target), the helper is the
        class's own method called once (from the matched code) and by no
        subclass, the call in the helper runs on every path that runs the
        other matched calls, and the value between them is read by nothing
        but the helper's parameter binding: then, under the fused layer, the
        helper's `v` holds the value the deleted call produced."""
        index = found
        helper, where = self._check_rule(match, index, setup.condition)
        others, site, stmt = self._check_helper(match, setup.cls, index, helper, where)
        self._check_exits(match, index, others, helper, where, site, stmt)
        self._check_alias_reads(match, index, others, helper, where, site, setup.paths)
        self._init_change(match, setup.cls, where, stmt, plan)

    def _check_rule(self, match: ir.Match, index: int, condition) -> tuple[str, str]:
        """The rule's forward target is its source without the helper's call."""
        rule = match.rule
        node = match.nodes[index]
        helper = node.stmt.method
        where = f"the call of `self.{node.attr}` in the helper `{helper}` (line {node.stmt.lines[0]})"
        if condition:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: a rule with `when` is not rewritten across methods")
        if index != len(match.nodes) - 1 or index == 0:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{helper}` and `{match.nodes[0].stmt.method}`; the emitter edits "
                       f"across them only when the removed layer's call is the last one, in a helper")
        source_pn = rule.forward.source[index]
        if len(source_pn.args) != 1 or source_pn.kwargs or len(source_pn.outputs) != 1 \
                or not isinstance(source_pn.args[0], ir.Var):
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the removed layer's pattern is not `$a($in) -> $out`; the emitter cannot edit across methods")
        rename = {source_pn.outputs[0].name: source_pn.args[0].name}
        rest = [renamed_key(pn, rename) for j, pn in enumerate(rule.forward.source) if j != index]
        if rest != [renamed_key(pn, rename) for pn in rule.forward.target]:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{helper}` and `{match.nodes[0].stmt.method if index else match.nodes[-1].stmt.method}`; "
                       f"the emitter cannot edit across them (the rule's forward target is not its source without the helper's call)")
        return helper, where

    def _check_helper(self, match: ir.Match, cls, index: int, helper: str, where: str):
        """The helper is the class's own method called once, from the matched
        code, and by no subclass; its call is `v = self.<layer>(v)`."""
        mod = self.mod
        node = match.nodes[index]
        others = [n for i, n in enumerate(match.nodes) if i != index]
        caller = others[0].stmt.method
        if any(n.stmt.method != caller or n.inlined_from != others[0].inlined_from for n in others) \
                or node.inlined_from[:-1] != others[0].inlined_from or node.inlined_from[-1][0] != caller:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{helper}` and `{caller}`; the emitter edits across them only "
                       f"when the removed layer's call is in a helper that the other matched calls' method calls")
        if cls is None or node.stmt.owner != cls.qualname or any(n.stmt.owner != cls.qualname for n in others):
            raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
        for other in self.facts.classes:
            if cls.qualname in other.bases:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: `{other.name}` subclasses `{cls.name}` and could call `{helper}`")
        uses = [u for u in cls.attr_uses if u.attr == helper]
        site = node.inlined_from[-1][1]
        if len(uses) != 1 or uses[0].kind != "call" or uses[0].method != caller or not site[0] <= uses[0].lines[0] <= site[1]:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: `self.{helper}` is used elsewhere too, so its call cannot be deleted")
        stmt = mod.stmt(node.stmt)
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if not (value is not None and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
                and isinstance(value.args[0], ast.Name) and value.args[0].id == stmt.targets[0].id
                and node.expr_span == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)):
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the call is not `v = self.<layer>(v)`")
        if len(mod.block_of(stmt)[2]) < 2:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: it is the only statement of its block")
        return others, site, stmt

    def _check_exits(self, match: ir.Match, index: int, others, helper: str, where: str, site, stmt: ast.stmt) -> None:
        """Every path that runs the other matched calls runs the helper's call, and nothing leaves between them."""
        mod = self.mod
        node = match.nodes[index]
        keys = [safety.node_key(n) for n in others]
        mine = safety.node_key(node)
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if any(k in have for k in keys) and mine not in have:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: some path runs the matched code without the helper's call")
            if mine in have and not all(k in have for k in keys):
                raise Skip(codes.S_CROSS_METHOD, f"{where}: some path runs the helper's call without the other matched code")
        site_stmt = next((st for st in ast.walk(mod.tree) if isinstance(st, ast.stmt)
                          and st.lineno <= site[0] and site[1] <= (st.end_lineno or st.lineno)
                          and not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                          and not any(isinstance(c, ast.stmt) for c in ast.iter_child_nodes(st))), None)
        first_stmt = mod.stmt(others[0].stmt)
        helper_fn = next((f for f in ast.walk(mod.tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                          and f.name == helper and f.lineno <= stmt.lineno <= (f.end_lineno or f.lineno)), None)
        if site_stmt is None or helper_fn is None or site_stmt.lineno < first_stmt.lineno:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: cannot locate the helper's call site")
        before = self.ctx.statements_between(first_stmt, site_stmt) + [
            st for st in ast.walk(helper_fn) if isinstance(st, ast.stmt) and st is not helper_fn
            and (st.end_lineno or st.lineno) < stmt.lineno]
        exit_line = exit_between(before)
        if exit_line:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: line {exit_line} may leave before it (the fused layer would already have run)")

    def _check_alias_reads(self, match: ir.Match, index: int, others, helper: str, where: str, site, paths) -> None:
        """The value between the producer and the helper's call: read only by the parameter binding."""
        keys = [safety.node_key(n) for n in others]
        mine = safety.node_key(match.nodes[index])

        def site_stmt_lines(n):
            return n.stmt.lines if n.stmt.lines[0] <= site[0] and site[1] <= n.stmt.lines[1] else None

        for path in paths:
            pos = {safety.node_key(n): k for k, n in enumerate(path.nodes)}
            at = pos.get(mine)
            if at is None:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the matched calls are not on one path")
            prev = max(pos[k] for k in keys if pos.get(k, at) < at) if any(pos.get(k, at) < at for k in keys) else None
            if prev is None:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the helper's call does not follow the other matched calls")
            alias = set(path.nodes[prev].outputs)
            for k in range(prev + 1, len(path.nodes)):
                n = path.nodes[k]
                if k == at:
                    alias -= set(n.outputs)
                    continue
                copied = {t for t, src in n.copies if src in alias}
                read = n.reads & alias
                if copied and k < at and n.stmt.lines == site_stmt_lines(n) and n.inlined_from == others[0].inlined_from:
                    # the helper's parameter binding: alias names passed as whole arguments only
                    read -= {src for _, src in n.copies} - self._names_in_argument_expressions(helper, site)
                if read:
                    raise Skip(codes.S_VALUE_READ, f"{where}: the value it normalises, `{sorted(read)[0]}`, is also read at line {n.stmt.lines[0]}")
                alias = (alias - set(n.writes)) | copied

    def _init_change(self, match: ir.Match, cls, where: str, stmt: ast.stmt, plan: Plan) -> None:
        """The init change (the shared planner) and the deletion of the helper's call."""
        rule = match.rule
        source_vars = {o.name for pn in rule.init.source for o in pn.outputs}
        target_vars = {o.name for pn in rule.init.target for o in pn.outputs}
        if target_vars - source_vars:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the target builds a new layer; the emitter does not do that across methods")
        kinds, changed = {}, {}
        for v in source_vars:
            b = match.init_nodes.get(v)
            if b is None:
                raise Skip(codes.S_NO_BINDING, f"init variable `${v}` matched no binding")
            kinds[v] = "replaced" if v in target_vars else "deleted"
            changed[b.attr] = "replaces" if v in target_vars else "removes"
        reason = safety.check_attr_uses(match, cls, changed, interface_kept=False)
        if reason:
            raise Skip(reason)
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = Env(match, attrs, {})
        self.init.plan(match, target_vars, kinds, env, plan, None, [])
        self.ctx.delete_stmt(plan, stmt, also_deleted={id(stmt)})

    def _names_in_argument_expressions(self, helper: str, site: tuple[int, int]) -> set[str]:
        """Names read inside the non-name arguments of the call `self.<helper>(...)`
        at lines `site` (every name of the call when it cannot be found)."""
        for node in ast.walk(self.mod.tree):
            if isinstance(node, ast.Call) and self_attr_name(node.func) == helper \
                    and (node.lineno, node.end_lineno) == tuple(site):
                out: set[str] = set()
                for arg in list(node.args) + [k.value for k in node.keywords]:
                    if not isinstance(arg, ast.Name):
                        out |= {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
                return out
        return {"*"}
