"""Across a helper: a two-method match, one side in a helper the other calls (issue 8 item 7).

Either the removed layer's call sits in the helper (the conv in `forward`,
its BatchNorm in `self._bn_act(h)`) or the kept one does (the conv in
`self._conv(x)`, whose result `forward` passes to its BatchNorm).  The
removed call goes: a statement `v = self.<bn>(v)` is deleted, a call nested
in an expression (`return self.act(self.bn(y))`) is replaced by its
argument (`return self.act(y)`); the init changes and nothing else of
either method does.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import exit_between, loop_carried_read, self_attr_name
from dslc.rewrite.edits import Edit
from dslc.rewrite.flow import FlowChecks
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.kinds.init import InitReplacement
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite.rules import conditional_rule, renamed_key


class _Sides:
    """Where the two parts of a match across a helper sit."""

    def __init__(self, match: ir.Match, index: int):
        self.index = index
        self.removed = match.nodes[index]
        self.others = [n for i, n in enumerate(match.nodes) if i != index]
        # `mirror`: the kept calls are in the helper, the removed one in its caller
        self.mirror = self.removed.inlined_from == self.others[0].inlined_from[:-1]
        inner = self.others[0] if self.mirror else self.removed
        self.inner = inner  # a matched node inside the helper
        self.helper = inner.stmt.method
        self.caller = inner.inlined_from[-1][0] if inner.inlined_from else ""
        self.site = inner.inlined_from[-1][1] if inner.inlined_from else (0, 0)
        # the inlining chain of the caller's own nodes
        self.outer_chain = self.removed.inlined_from if self.mirror else self.others[0].inlined_from


class AcrossHelper(Kind):
    """A match split between a method and a helper it calls, inlined there."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.init = InitReplacement(ctx)

    def select(self, match: ir.Match, setup: Setup | None):
        return self.removed_across(match)

    def removed_across(self, match: ir.Match):
        """The index of the matched call of a layer the rewrite removes when
        it sits in another method than the other matched nodes (one of the
        two is a helper inlined into the other)."""
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
        """Remove the removed layer's call and make the init change; the rest
        of both methods stays.

        Only when the rule's forward target is its source without that call
        (so the unchanged code computes the target), the helper is the
        class's own method called once (from the matched code) and by no
        subclass, the helper's names are not the caller's (the analysis
        spells both frames' names alike), the matched calls run on the same
        paths with nothing leaving between them, and the value between them
        is read by nothing but the helper's parameter binding or its
        `return`: then, under the fused layer, the removed call's argument
        holds the value the call produced."""
        sides = _Sides(match, found)
        where = self._check_rule(match, sides, setup.condition)
        stmt, helper_fn = self._check_helper(match, setup.cls, sides, where)
        self._check_paths(match, sides, where)
        self._check_exits(match, sides, where, stmt, helper_fn)
        self._check_alias_reads(match, sides, where, setup.paths, self._helper_writes(sides, helper_fn, where))
        self._check_loop_carried(sides, where, stmt)
        removal = self._removal(sides, stmt, where)
        self._init_change(match, setup.cls, where, plan)
        removal(plan)

    def _check_rule(self, match: ir.Match, sides: _Sides, condition) -> str:
        """The rule's forward target is its source without the removed call."""
        rule = match.rule
        index, node = sides.index, sides.removed
        if sides.mirror:
            where = f"the call of `self.{node.attr}` (line {node.stmt.lines[0]}) after the helper `{sides.helper}`"
        else:
            where = f"the call of `self.{node.attr}` in the helper `{sides.helper}` (line {node.stmt.lines[0]})"
        if condition:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: {conditional_rule(rule)} is not rewritten across methods")
        if index != len(match.nodes) - 1 or index == 0:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{sides.helper}` and `{sides.caller or match.nodes[0].stmt.method}`; "
                       f"the emitter edits across them only when the removed layer's call is the last one")
        source_pn = rule.forward.source[index]
        if len(source_pn.args) != 1 or source_pn.kwargs or len(source_pn.outputs) != 1 \
                or not isinstance(source_pn.args[0], ir.Var):
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the removed layer's pattern is not `$a($in) -> $out`; the emitter cannot edit across methods")
        rename = {source_pn.outputs[0].name: source_pn.args[0].name}
        rest = [renamed_key(pn, rename) for j, pn in enumerate(rule.forward.source) if j != index]
        if rest != [renamed_key(pn, rename) for pn in rule.forward.target]:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{sides.helper}` and `{sides.caller}`; "
                       f"the emitter cannot edit across them (the rule's forward target is not its source without the removed call)")
        return where

    def _check_helper(self, match: ir.Match, cls, sides: _Sides, where: str):
        """The helper is the class's own method called once, from the matched
        code, and by no subclass (the fused layer runs at every call of it)."""
        mod = self.mod
        node, others = sides.removed, sides.others
        inner_chain = sides.inner.inlined_from
        chain_ok = (all(n.stmt.method == others[0].stmt.method and n.inlined_from == others[0].inlined_from for n in others)
                    and inner_chain and inner_chain[:-1] == sides.outer_chain
                    and (others[0] if not sides.mirror else node).stmt.method == sides.caller)
        if not chain_ok:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{node.stmt.method}` and `{others[0].stmt.method}`; the emitter edits "
                       f"across them only when one side is a helper that the other side's method calls")
        if cls is None or node.stmt.owner != cls.qualname or any(n.stmt.owner != cls.qualname for n in others):
            raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
        for other in self.facts.classes:
            if cls.qualname in other.bases:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: `{other.name}` subclasses `{cls.name}` and could call `{sides.helper}`")
        uses = [u for u in cls.attr_uses if u.attr == sides.helper]
        site = sides.site
        if len(uses) != 1 or uses[0].kind != "call" or uses[0].method != sides.caller or not site[0] <= uses[0].lines[0] <= site[1]:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: `self.{sides.helper}` is used elsewhere too, so the layers it calls cannot change")
        stmt = mod.stmt(node.stmt)
        inner_stmt = mod.stmt(sides.inner.stmt)
        helper_fn = self._function_of(inner_stmt)
        if helper_fn is None or helper_fn.name != sides.helper:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: cannot locate the helper `{sides.helper}`")
        return stmt, helper_fn

    def _function_of(self, stmt: ast.stmt):
        """The innermost function that holds `stmt`."""
        cur = stmt
        while not isinstance(cur, ast.Module):
            cur = self.mod.block_of(cur)[0]
            if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return cur
        return None

    def _helper_writes(self, sides: _Sides, helper_fn, where: str) -> set[str]:
        """The names the helper binds that may clobber a caller's name in the
        paths (which spell both frames' names alike): its parameters and the
        names it assigns, less a parameter bound to the caller's variable of
        the same name and never rebound (both names then hold one value)."""
        call = self._site_call(sides)
        if call is None:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: cannot locate the call of `self.{sides.helper}`")
        params = [a.arg for a in helper_fn.args.posonlyargs + helper_fn.args.args][1:]
        passed = {p: a.id for p, a in zip(params, call.args) if isinstance(a, ast.Name)}
        passed.update({k.arg: k.value.id for k in call.keywords if k.arg and isinstance(k.value, ast.Name)})
        stored = _stored_names(helper_fn.body)
        names = stored | {a.arg for a in _all_args(helper_fn.args)} - {"self"}
        return {n for n in names if not (passed.get(n) == n and n not in stored)}

    def _site_call(self, sides: _Sides):
        for node in ast.walk(self.mod.tree):
            if isinstance(node, ast.Call) and self_attr_name(node.func) == sides.helper \
                    and (node.lineno, node.end_lineno) == tuple(sides.site):
                return node
        return None

    def _check_paths(self, match: ir.Match, sides: _Sides, where: str) -> None:
        """Every path that runs the other matched calls runs the removed one, and the other way round."""
        keys = [safety.node_key(n) for n in sides.others]
        mine = safety.node_key(sides.removed)
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if any(k in have for k in keys) and mine not in have:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: some path runs the other matched code without it")
            if mine in have and not all(k in have for k in keys):
                raise Skip(codes.S_CROSS_METHOD, f"{where}: some path runs it without the other matched code")

    def _check_exits(self, match: ir.Match, sides: _Sides, where: str, stmt: ast.stmt, helper_fn) -> None:
        """Nothing leaves between the matched calls (a `return`/`raise` the
        paths fold into an opaque statement would skip the removed call
        after the fused layer ran)."""
        mod = self.mod
        site = sides.site
        site_stmt = next((st for st in ast.walk(mod.tree) if isinstance(st, ast.stmt)
                          and st.lineno <= site[0] and site[1] <= (st.end_lineno or st.lineno)
                          and not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                          and not any(isinstance(c, ast.stmt) for c in ast.iter_child_nodes(st))), None)
        if site_stmt is None:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: cannot locate the helper's call site")
        if not sides.mirror:
            first_stmt = mod.stmt(sides.others[0].stmt)
            if site_stmt.lineno < first_stmt.lineno:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the helper is called before the other matched code")
            before = self.ctx.statements_between(first_stmt, site_stmt) + [
                st for st in ast.walk(helper_fn) if isinstance(st, ast.stmt) and st is not helper_fn
                and (st.end_lineno or st.lineno) < stmt.lineno]
        else:
            last_inner = mod.stmt(sides.others[-1].stmt)
            if site_stmt.lineno > stmt.lineno or last_inner not in helper_fn.body:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the helper's matched call is not a statement of its body that runs before it")
            after = helper_fn.body[helper_fn.body.index(last_inner) + 1:]
            tail = [st for top in after for st in ast.walk(top) if isinstance(st, ast.stmt)]
            if after and isinstance(after[-1], ast.Return):
                tail.remove(after[-1])  # the helper's own last `return` hands the value over
            before = tail + self.ctx.statements_between(site_stmt, stmt)
        exit_line = exit_between(before)
        if exit_line:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: line {exit_line} may leave before it (the fused layer would already have run)")

    def _check_alias_reads(self, match: ir.Match, sides: _Sides, where: str, paths, helper_writes: set[str]) -> None:
        """The value between the kept calls and the removed one: read only by
        the parameter binding at the call site (the removed call in the
        helper) or by the helper's `return` (the kept calls in the helper).
        With the removed call in the helper, no name of the caller that holds
        the value may be bound by the helper too (`helper_writes`): the paths
        would take the helper's binding for the end of the caller's value."""
        keys = [safety.node_key(n) for n in sides.others]
        mine = safety.node_key(sides.removed)
        site = sides.site
        passed = self._names_in_argument_expressions(sides.helper, site)

        def handover(n) -> bool:
            if n.kind != "stmt":
                return False
            if sides.mirror:
                return n.inlined_from == sides.inner.inlined_from and isinstance(self.mod.stmt(n.stmt), ast.Return)
            return (n.inlined_from == sides.outer_chain and n.stmt.lines[0] <= site[0] and site[1] <= n.stmt.lines[1])

        for path in paths:
            pos = {safety.node_key(n): k for k, n in enumerate(path.nodes)}
            at = pos.get(mine)
            if at is None:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the matched calls are not on one path")
            prev = max(pos[k] for k in keys if pos.get(k, at) < at) if any(pos.get(k, at) < at for k in keys) else None
            if prev is None:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: it does not follow the other matched calls")
            alias = set(path.nodes[prev].outputs)
            for k in range(prev + 1, len(path.nodes)):
                n = path.nodes[k]
                if k == at:
                    alias -= set(n.outputs)
                    continue
                copied = {t for t, src in n.copies if src in alias}
                read = n.reads & alias
                if not sides.mirror and k < at and handover(n) and alias & helper_writes:
                    name = sorted(alias & helper_writes)[0]
                    raise Skip(codes.S_CROSS_METHOD, f"{where}: `{name}` holds the value in `{sides.caller}` and is also a variable of "
                               f"`{sides.helper}`; the data flow across the helper cannot be told apart")
                if copied and k < at and handover(n):
                    # plain copies only: the binding's whole-name arguments, the `return`'s value
                    read -= {src for _, src in n.copies} - (set() if sides.mirror else passed)
                if read:
                    raise Skip(codes.S_VALUE_READ, f"{where}: the value it normalises, `{sorted(read)[0]}`, is also read at line {n.stmt.lines[0]}")
                alias = (alias - set(n.writes)) | copied

    def _check_loop_carried(self, sides: _Sides, where: str, stmt: ast.stmt) -> None:
        """The caller's names of the value between the calls are not read
        elsewhere in a loop around the caller's matched code (the paths walk
        a loop body once; the next iteration would read the fused value)."""
        mod = self.mod
        site = self._site_call(sides)
        site_stmt = next((st for st in ast.walk(mod.tree) if isinstance(st, ast.stmt)
                          and not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                          and not any(isinstance(c, ast.stmt) for c in ast.iter_child_nodes(st))
                          and any(c is site for c in ast.walk(st))), None)
        if site_stmt is None:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: cannot locate the helper's call site")
        if sides.mirror:
            caller_stmts = [site_stmt, stmt]
            names = _stored(site_stmt) - _stored(stmt)
        else:
            caller_stmts = [mod.stmt(n.stmt) for n in sides.others] + [site_stmt]
            names = {o for n in sides.others for o in n.outputs} - _stored(site_stmt)
        # only the statement that hands the value to the removed call is
        # left out: a read in the other (kept) statement, `h = self.conv(h)`,
        # is a read by the next iteration
        hit = loop_carried_read(mod.chain(caller_stmts[-1]), names, {id(caller_stmts[-1])}) if names else None
        if hit:
            raise Skip(codes.S_VALUE_READ, f"{where}: the value between the calls, `{hit[0]}`, is read at line {hit[1]} inside the loop "
                       f"around them; the next iteration would read the fused value")

    def _removal(self, sides: _Sides, stmt: ast.stmt, where: str):
        """The edit that removes the call `self.<layer>(v)`: the statement
        `v = self.<layer>(v)` is deleted, a call inside an expression is
        replaced by `v` (the fused layer's result)."""
        mod = self.mod
        node = sides.removed
        call = next((c for c in ast.walk(stmt) if isinstance(c, ast.Call)
                     and node.expr_span == (c.lineno, c.col_offset, c.end_lineno, c.end_col_offset)), None)
        value = call.args[0] if call is not None and len(call.args) == 1 and not call.keywords else None
        # the argument: a variable, or (the kept calls in the helper) the helper's call itself
        helper_call = (sides.mirror and isinstance(value, ast.Call) and self_attr_name(value.func) == sides.helper
                       and (value.lineno, value.end_lineno) == tuple(sides.site))
        if self_attr_name(call.func if call else None) != node.attr or not (isinstance(value, ast.Name) or helper_call):
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the call is not `self.<layer>(v)` on a variable")
        arg = mod.smap.span_text((value.lineno, value.col_offset, value.end_lineno, value.end_col_offset))
        whole = (isinstance(stmt, ast.Assign) and stmt.value is call and len(stmt.targets) == 1
                 and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == arg)
        if whole and len(mod.block_of(stmt)[2]) > 1:
            return lambda plan: self.ctx.delete_stmt(plan, stmt, also_deleted={id(stmt)})
        mod.stmt_range(stmt)  # alone on its lines

        def replace(plan: Plan) -> None:
            start, end = mod.smap.node_span(call)
            plan.edits.append(Edit(start, end, arg))
            plan.claimed.add((start, end))
            plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))
        return replace

    def _init_change(self, match: ir.Match, cls, where: str, plan: Plan) -> None:
        """The init change (the shared planner)."""
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
        flow = FlowChecks(self.mod, self.facts, self.ctx.path)
        reason = (safety.check_attr_uses(match, cls, changed, interface_kept=False)
                  or safety.check_subclass_uses(self.facts, cls, changed, interface_kept=False)
                  or flow.package_subclass_uses(cls, changed, interface_kept=False)
                  or flow.outside_uses(cls, changed, interface_kept=False, notes=plan.warnings,
                                       line=min(match.lines) if match.lines else 0))
        if reason:
            raise Skip(reason)
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = Env(match, attrs, {})
        self.init.plan(match, target_vars, kinds, env, plan, None, [])

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


def _all_args(args: ast.arguments) -> list[ast.arg]:
    out = args.posonlyargs + args.args + args.kwonlyargs
    return out + [a for a in (args.vararg, args.kwarg) if a is not None]


def _stored_names(body: list[ast.stmt]) -> set[str]:
    """Names a block binds (assignments, loop and `with` targets, imports, nested defs)."""
    out = set()
    for st in body:
        for n in ast.walk(st):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                out.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(n.name)
            elif isinstance(n, ast.alias):
                out.add((n.asname or n.name).split(".")[0])
            elif isinstance(n, ast.ExceptHandler) and n.name:
                out.add(n.name)
    return out


def _stored(stmt: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
