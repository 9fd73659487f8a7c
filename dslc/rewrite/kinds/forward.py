"""Forward fusion: the matched forward statements become the target expression.

The matched nodes are grouped by statement; the statement of the last node
keeps its place and gets the target expression in place of the last node's
expression (`Node.expr_span`); every other matched statement must be a
plain `name = <matched call>` (or `name += x`, the matched op `name + x`;
not `/=` and the others: Falcon's `s /= d` feeds a softmax whose `dtype=`
the SDPA target does not keep)
and is deleted (kept on empty slices where `option probe` says so) (hoisted across `if` branches
by `Hoisting` when they sit in different blocks).  Earlier target nodes are
inlined into later ones; a call's `dtype=` argument the pattern does not
name becomes a cast of its input.  The data flow is checked
(`safety.check_dataflow`) before any edit; a `fallback original` rule gets a
per-call dispatch helper (`CallDispatch`) instead of the kernel call.
"""

from __future__ import annotations

import ast
import re

from dslc import codes
from dslc.match import ir, optional
from dslc.rewrite import safety
from dslc.rewrite.astutil import is_prefix, loop_carried_read, owner_name
from dslc.rewrite.context import matched_view
from dslc.rewrite.flow import FlowChecks
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.kinds.call import CallDispatch
from dslc.rewrite.kinds.hoist import Hoisting
from dslc.rewrite.kinds.keep import KeepGuard
from dslc.rewrite.kinds.keepcall import KeepCall
from dslc.rewrite.kinds.keepchecks import ShapeChecks, emit_plain
from dslc.rewrite.kinds.keepviews import take_view_ifs
from dslc.rewrite.kinds.probe import metadata_with_probe, probe_index, probe_line
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env, paren
from dslc.rewrite.rules import node_vars, values_produced_again


class ForwardFusion(Planner):
    """The forward edits of a match (its statements, hoisted where needed)."""

    def __init__(self, ctx, flow: FlowChecks):
        super().__init__(ctx)
        self.flow = flow
        self.calls = CallDispatch(ctx)
        self.hoist = Hoisting(ctx)
        self.keep = KeepGuard(ctx)
        self.keepcall = KeepCall(ctx, self.keep)

    def forward_groups(self, match: ir.Match) -> list[tuple[tuple, list, ast.stmt]]:
        """Matched nodes grouped by statement, in source order; last = the final statement."""
        groups: dict[tuple, list] = {}
        holder: dict[tuple, object] = {}  # key -> the node whose statement it is
        guarded = self._guard(match)
        for i, node in enumerate(match.nodes):
            if node.kind == "stmt":
                raise Skip(codes.S_TARGET, f"a wildcard matched a plain statement at line {node.stmt.lines[0]}")
            # a guarded optional node: its statement is the `if` that holds it (deleted whole)
            at = guarded[1] if guarded is not None and i == guarded[0] else node
            groups.setdefault(safety.stmt_key(at), []).append(node)
            holder.setdefault(safety.stmt_key(at), at)
        methods = {key[0] for key in groups}
        if len(methods) > 1:
            names = " and ".join(f"`{m}`" for m in sorted(methods))
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods {names}; the emitter cannot edit across them")
        if match.class_name:
            mine = match.class_name
            for node in match.nodes:
                owner = owner_name(node.stmt.owner, mine)
                if owner != mine:
                    raise Skip(codes.S_INHERITED,
                        f"the matched code at line {node.stmt.lines[0]} is `{owner}.{node.stmt.method}`, inherited; "
                        f"editing it would change every class that shares it"
                    )
        last_key = safety.stmt_key(match.nodes[-1])
        ordered = sorted((k for k in groups if k != last_key), key=lambda k: (k[2][0], k[3]))
        ordered.append(last_key)
        return [(key, groups[key], self.mod.stmt(holder[key].stmt)) for key in ordered]

    def _guard(self, match: ir.Match):
        """A guarded optional node (`dslc.match.optional`): check that its `if`
        is exactly `if m is not None: <that statement>` and that the absent
        variant matched where it is not taken (else S330)."""
        guarded = getattr(match, "guarded", None)
        if guarded is None:
            return None
        k, test, paired = guarded
        node = match.nodes[k]
        pn = match.rule.forward.source[k]
        bound = match.bindings.get(pn.optional)
        name = bound.text if bound is not None and bound.kind == "name" else None
        if_stmt = self.mod.stmt(test.stmt) if test is not None else None
        problem = optional.guard_problem(if_stmt, tuple(node.stmt.lines), name)
        if problem is None and not paired:
            problem = (f"where the `if` at line {if_stmt.lineno} is not taken, the rest of the chain does not match "
                       f"(the rule without its optional node)")
        if problem is not None:
            raise Skip(codes.S_OPTIONAL_GUARD, problem)
        self.guarded_name = name
        return guarded

    def plan(self, match: ir.Match, groups, env: Env, plan: Plan, paths) -> None:
        """The forward edits of `match` (see the module docstring)."""
        rule = match.rule
        self.guarded_name = None
        if getattr(match, "guarded", None):
            self._guard(match)
        final_key, final_nodes, final_stmt = groups[-1]
        lo, hi, deleted_keys = self._check_statements(match, groups)
        self._casts(match, env)
        final_text, target = self._target_text(rule, env, plan)
        self._check_casts_kept(match, env)
        final_pn = target[-1]
        region = self.keep.prepare(match, groups)
        self.keepcall.prepare(match, region)  # a match in a helper: the guard may go to its call
        views = take_view_ifs(self.mod, region, match, lambda: self.ctx.imports.torch_module(plan))  # kinds/keepviews.py
        if views is not None:
            final_text, target = self._through_views(match, views, env, plan)
            final_pn = target[-1]
        self.probe_used: list = []
        self.shape_checks = ShapeChecks(self.mod, self.flow)
        self._check_dataflow(match, env, target, paths, deleted_keys, final_key, region)
        if self.probe_used:
            self._probe(match, groups, plan)
        self._plan_checks(match, groups, plan, views)
        across = self.keepcall.site is not None and self.keepcall.site.handed
        if region is not None and (region.tests or across):
            # kept values needed under a run-time condition: a per-call guard
            if len(final_pn.outputs) != 1:
                raise Skip(codes.S_KEEP_GUARD, "a per-call guard needs a one-output target")
            if across:  # at the helper's call site (kinds/keepcall.py)
                self.keepcall.emit(plan, region, groups, final_text, lo, hi)
            else:
                self.keep.emit(plan, region, groups, final_text, lo, hi)
            return
        source_nodes = rule.forward.source
        if rule.fallback == "original" and rule.needs and (rule.init is None or rule.init.target is None):
            # Per call: a generated helper chooses the kernel or the original call
            # (whatever the statement: one output or several, hoisted or not;
            # `q, k = helper(...)` too).
            if len(target) != 1:
                raise Skip(codes.S_FALLBACK, "a per-call fallback needs one target node")
            if len(source_nodes) == 1:
                final_text = self.calls.dispatch_call(match, plan, env, source_nodes[0], target[0])
            else:
                final_text = self.calls.dispatch_chain(match, plan, env, source_nodes, target[0])

        final_chain = self.mod.chain(final_stmt)
        reverse = [stmt for _, _, stmt in groups[:-1]
                   if self.hoist.needs_hoist(stmt, final_stmt) and is_prefix(final_chain, self.mod.chain(stmt))]
        if reverse and plan.probes:
            raise Skip(codes.S_HOIST, "the product whose dtype and device are read would move with the hoisted call")
        if reverse and plan.checks:
            raise Skip(codes.S_HOIST, "the size check of the product would stay behind the hoisted call")
        if reverse:
            self.hoist.reverse(plan, groups, final_stmt, final_text, (lo, hi), len(final_pn.outputs))
            return

        if len(final_pn.outputs) == 1 and not plan.probes and not plan.checks and self.hoist.merge_identical_branches(plan, groups, final_stmt, final_text, (lo, hi)):
            return

        # The final statement.
        if len(final_pn.outputs) > 1:
            if not (isinstance(final_stmt, ast.Assign) and len(final_stmt.targets) == 1):
                raise Skip(codes.S_STMT_SHAPE, f"line {final_stmt.lineno} must be a plain assignment to take several outputs")
            names = []
            for out in final_pn.outputs:
                bound = match.bindings.get(out.name)
                if bound is None or bound.kind != "name":
                    raise Skip(codes.S_TARGET, f"target output `${out.name}` is bound to no name")
                names.append(bound.text)
            start, end = self.mod.smap.node_span(final_stmt)
            self.ctx.claim(plan, start, end, f"{', '.join(names)} = {final_text}", final_stmt)
        else:
            self.ctx.claim(plan, lo, hi, final_text, final_stmt)

        self.hoist.hoist_earlier(plan, groups, final_stmt)
        emit_plain(self.ctx, plan, plan.checks, self.check_stmts)
        plan.lines.update(range(final_stmt.lineno, final_stmt.end_lineno + 1))

    def _through_views(self, match: ir.Match, views, env: Env, plan: Plan):
        """The target once the mask added through views is the kernel's mask
        (kinds/keepviews.py): the full rule's text, the guard on the mask."""
        self.guarded_name = views.mask
        env.inline[views.var] = views.text
        return self._target_text(match.rule.present, env, plan)

    def _plan_checks(self, match: ir.Match, groups, plan: Plan, views) -> None:
        """`option shape`: raise-only size checks of a removed value,
        rewritten (kinds/keepchecks.py); the view-`if`'s checks with them."""
        plan.checks = self.shape_checks.plan(match, groups, plan)
        self.check_stmts = {sid: s for sid, (s, _) in self.shape_checks.found.items()}
        if views is not None:
            plan.checks[id(views.stmt)] = views.fast
            self.check_stmts[id(views.stmt)] = views.stmt

    def _probe(self, match: ir.Match, groups, plan: Plan) -> None:
        """`option probe`: the product's statement stays, on empty slices (kinds/probe.py)."""
        key = safety.stmt_key(match.nodes[probe_index(match)])
        stmt = next((s for k, _, s in groups[:-1] if k == key), None)
        if stmt is None or self.hoist.needs_hoist(stmt, groups[-1][2]):
            raise Skip(codes.S_STMT_SHAPE, "the product whose dtype and device are read is not a statement "
                       "of the final statement's block before it")
        plan.probes[id(stmt)] = probe_line(self.mod, match, stmt)

    def _check_statements(self, match: ir.Match, groups) -> tuple[int, int, set[tuple]]:
        """The offsets of the last node's expression, and the keys of the
        earlier statements, each a plain `name = <matched call>` to delete."""
        _, final_nodes, final_stmt = groups[-1]
        last = match.nodes[-1]
        if last.expr_span is None:
            raise Skip(codes.S_STMT_SHAPE, f"no expression span for the matched call at line {last.stmt.lines[0]}")
        if isinstance(final_stmt, ast.AugAssign):
            raise Skip(codes.S_STMT_SHAPE, f"line {final_stmt.lineno} is an augmented assignment; the emitter does not rewrite its hidden operand")
        lo, hi = self.ctx.span_offsets(last.expr_span)
        for node in final_nodes:
            if node.expr_span is None:
                continue
            a, b = self.ctx.span_offsets(node.expr_span)
            if a < lo or b > hi:
                raise Skip(codes.S_STMT_SHAPE, f"matched node at line {node.stmt.lines[0]} is not part of the last node's expression")

        deleted_keys: set[tuple] = set()
        for key, nodes, stmt in groups[:-1]:
            outer = max(nodes, key=lambda n: self.ctx.span_len(n.expr_span))
            guarded_if = isinstance(stmt, ast.If) and getattr(match, "guarded", None)
            if guarded_if:
                # the guarded optional node's `if` (checked by `_guard`): its one statement
                deleted_keys.add(safety.stmt_key(outer))
                stmt = stmt.body[0]
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
            # (not in a guarded optional `if`: MPNet's `if position_bias is not None: s += position_bias`
            # stays refused, as before, so that its other mask stays the rewritten one)
            if not guarded_if and isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) and isinstance(stmt.target, ast.Name) \
                    and outer.kind == "op" \
                    and outer.expr_span is not None and tuple(outer.expr_span) == (
                        stmt.lineno, stmt.col_offset, stmt.end_lineno, stmt.end_col_offset):
                deleted_keys.add(key)  # `s += m` (an additive mask), the matched op `s + m -> s`
                continue
            ok = (
                value is not None
                and (not isinstance(stmt, ast.Assign) or (len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)))
                and (not isinstance(stmt, ast.AnnAssign) or isinstance(stmt.target, ast.Name))
                and outer.expr_span is not None
                and tuple(outer.expr_span) == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)
            )
            if not ok:
                raise Skip(codes.S_STMT_SHAPE, f"line {stmt.lineno} is not a plain `name = <matched call>` and cannot be removed")
            deleted_keys.add(key)
        return lo, hi, deleted_keys

    def _casts(self, match: ir.Match, env: Env) -> None:
        """Extra arguments of matched function calls the pattern did not mention."""
        last = match.nodes[-1]
        extras = getattr(match, "extras", {}) or {}
        source_nodes = match.rule.forward.source
        for index, items in extras.items():
            pn = source_nodes[index] if 0 <= index < len(source_nodes) else None
            for name, value in items:
                text = getattr(value, "text", str(value))
                # `f(x, ..., dtype=d)` casts its input first (softmax & co.): keep that as `x.to(d)`.
                is_function = pn is not None and pn.layer_var is None and (pn.callee is None or pn.callee.var is None)
                if name == "dtype" and is_function and pn.args and isinstance(pn.args[0], ir.Var):
                    env.casts[pn.args[0].name] = text
                    continue
                line = match.nodes[index].stmt.lines[0] if index < len(match.nodes) else last.stmt.lines[0]
                raise Skip(codes.S_EXTRA_ARG, f"argument `{name}={text}` of the call at line {line} has no counterpart in the target")

    def _check_casts_kept(self, match: ir.Match, env: Env) -> None:
        """A cast `_casts` recorded reaches the target: the target reads the
        cast variable as the source binds it.  Where the target binds it
        itself (an inlined earlier target node: SDPA's `$s2` is the converted
        mask, not the softmax's input) or does not read it (SDPA without a
        mask), the `dtype=` would be dropped: refused."""
        for name, dtype in env.casts.items():
            if name not in env.cast_used:
                where = "binds it to another value" if name in env.inline else "does not read it"
                raise Skip(codes.S_EXTRA_ARG, f"argument `dtype={dtype}` casts `${name}` (`{self._bound_text(match, name)}`), "
                           f"and the target {where}: the cast would be dropped")

    @staticmethod
    def _bound_text(match: ir.Match, name: str) -> str:
        bound = match.bindings.get(name)
        return bound.text if bound is not None and bound.text else f"${name}"

    def _target_text(self, rule: ir.Rule, env: Env, plan: Plan) -> tuple[str, list]:
        """The target expression: earlier target nodes are inlined into later ones."""
        target = rule.forward.target
        uses: dict[str, int] = {}
        for pn in target:
            for v in node_vars(pn):
                uses[v] = uses.get(v, 0) + 1
        final_text = None
        guarded = getattr(self, "guarded_name", None)
        for i, pn in enumerate(target):
            text = self.ctx.render_node(pn, env, plan)
            inner = len(pn.outputs) == 1 and any(
                q.optional is not None and pn.outputs[0].name in node_vars(q) for q in target[i + 1:])
            if pn.optional is not None and guarded is not None and not inner:
                # the optional source node ran only where its name is not None
                # (a node that adds to its chain input: that input there, `through_target`)
                absent = "None"
                if i == optional.through_target(rule):
                    flow = optional.pass_through(rule)
                    absent = paren(env.inline[flow]) if flow in env.inline else None
                    if absent is None:
                        raise Skip(codes.S_TEMP_VAR, "the value the optional target node adds to is not a target expression")
                text = f"{absent} if {guarded} is None else {text}"
            if i == len(target) - 1:
                final_text = text
                break
            if len(pn.outputs) != 1 or uses.get(pn.outputs[0].name, 0) != 1:
                raise Skip(codes.S_TEMP_VAR, "the target needs a temporary variable, which the emitter does not introduce")
            env.inline[pn.outputs[0].name] = paren(text) if pn.kind in ("op", "unary") else text
        return final_text, target

    def _check_dataflow(self, match: ir.Match, env: Env, target, paths, deleted_keys, final_key, region=None) -> None:
        """The removed intermediates are read nowhere else; the target's inputs still hold their values."""
        produced_again = values_produced_again(match)
        target_inputs: set[str] = set()
        for pn in target:
            for v in node_vars(pn):
                bound = match.bindings.get(v)
                if bound is not None and bound.kind == "name" and v not in env.inline and bound.text not in env.temps:
                    target_inputs.add(bound.text)
        for node in match.nodes:  # a matched view the target spells (`k.transpose(3, 2)`) reads its name
            if matched_view(node) and any(b.kind == "name" and b.text == node.outputs[0] for b in match.bindings.values()):
                target_inputs.add(node.inputs[0].text)
        reason = safety.check_dataflow(
            match, paths,
            produced_again=produced_again,
            target_inputs=target_inputs,
            deleted_stmts=deleted_keys,
            final_stmt=final_key,
            metadata_ok=self.shape_checks.metadata_ok(
                match, metadata_with_probe(match, self.flow, self.flow.metadata_check(match), self.probe_used)),
            effects=self.flow.stmt_effects if region is None or not (region.guard_ifs or region.view_ifs) else self.keep.effects(
                region, match.nodes[-1].stmt.method, self.flow.stmt_effects),
            read_note=lambda path, q, name: self.conditional_read(match, path.nodes[q], name, region),
            read_ok=None if region is None else (
                lambda path, q, name: self.keepcall.read_ok(region, match, path, q, name, self.read_condition)),
            skip_path=None if region is None or not (region.guard_ifs or region.view_ifs) else self.keep.skip_path(
                region, match.nodes[-1].stmt.method),
        )
        if reason:
            raise Skip(reason)
        self._check_loop_carried(match, target_inputs)

    def _check_loop_carried(self, match: ir.Match, target_inputs: set[str]) -> None:
        """An intermediate the rewrite no longer assigns (the final statement
        does not write it again) is not read elsewhere in a loop around the
        match, nor by the target itself (`h = self.conv(h); x = self.bn(h)`
        becomes `x = self.conv(h)`, which reads the `h` of the loop's entry on
        every iteration): the next iteration would read what the rewrite left
        there."""
        stmts = [self.mod.stmt(n.stmt) for n in match.nodes]
        final = stmts[-1]
        written = {n.id for n in ast.walk(final) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        names = {o for n in match.nodes[:-1] for o in n.outputs} - written
        chain = self.mod.chain(final)
        fed = sorted(names & target_inputs)
        if fed and any(isinstance(c, (ast.For, ast.AsyncFor, ast.While)) and f == "body" for c, f in chain):
            raise Skip(codes.S_VALUE_READ, f"the intermediate `{fed[0]}` is also the input of the match, inside a loop; "
                       f"the rewrite no longer assigns it, so the next iteration would read a stale value")
        hit = loop_carried_read(chain, names, {id(s) for s in stmts}) if names else None
        if hit:
            raise Skip(codes.S_VALUE_READ, f"the intermediate `{hit[0]}` is read at line {hit[1]} inside the loop around the match; "
                       f"the next iteration would read the value the rewrite leaves there")

    def conditional_read(self, match: ir.Match, node, name: str, region=None) -> str:
        """How a read after the match happens when it is conditional (see
        `read_condition`): the value is needed only where `c` holds; a rule
        that does not `keep` it cannot guard the rewrite on `c`."""
        found = self.read_condition(match, node, name)
        if found is None:
            return ""
        test, holds = found
        when = f"`{ast.unparse(test)}`" + (" holds" if holds else " is false")
        why = (region.problem if region is not None and region.problem and not region.body
               else "the rule does not `keep` it for a per-call guard on that condition")
        return f", where {when} (the rewrite does not compute it; {why})"

    def read_condition(self, match: ir.Match, node, name: str):
        """(test, holds) when every occurrence of `name` in the reading
        statement is in one branch of `a if c else b`, or the statement sits
        in an `if` that does not hold the matched code (`return (out, probs)
        if output_attentions else (out,)`); else None."""
        try:
            stmt = self.mod.stmt(node.stmt)
            final = self.mod.stmt(match.nodes[-1].stmt)
        except Skip:
            return None
        parents = {id(c): (p, f) for p in ast.walk(stmt) for f, v in ast.iter_fields(p)
                   for c in (v if isinstance(v, list) else [v]) if isinstance(c, ast.AST)}
        conds = set()
        for n in ast.walk(stmt):
            if not (isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)):
                continue
            cond, child = None, n
            while id(child) in parents and cond is None:
                parent, field = parents[id(child)]
                if isinstance(parent, (ast.IfExp, ast.If)) and field in ("body", "orelse"):
                    cond = (parent.test, field == "body")
                child = parent
            conds.add(cond)
        if None in conds or len(conds) != 1:
            final_chain = [c for c, _ in self.mod.chain(final)]
            outer = [(c, f) for c, f in self.mod.chain(stmt) if isinstance(c, ast.If) and f in ("body", "orelse")
                     and not any(c is fc for fc in final_chain)]
            if not outer:
                return None
            conds = {(outer[-1][0].test, outer[-1][1] == "body")}
        (test, holds), = conds
        return test, holds

    def copied_layer_uses(self, match: ir.Match, paths) -> dict[str, str]:
        """Attributes `self.<a>` named in a value the forward target copies: attr -> variable."""
        rule = match.rule
        wanted: set[str] = set()
        for pn in rule.forward.target:
            wanted |= node_vars(pn)
        temps = self.ctx.temp_texts(match, paths)
        out: dict[str, str] = {}
        for var in sorted(wanted):
            bound = match.bindings.get(var)
            if bound is None or bound.kind not in ("name", "expr") or not bound.text:
                continue
            text = temps.get(bound.text, bound.text)
            for attr in re.findall(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)", text):
                out.setdefault(attr, var)
        return out
