"""Guarded `when`: the init edits of a rule with `option when` run only where it holds.

The run of statements holding the edits is duplicated as
`if <cond>: <new> else: <old>` (`WhenGuard.wrap`); such matches go last in
a run, so other rewrites in that run land in both branches.  Unchanged
parameter-free torch.nn layers in that run that nothing on either side
reads go before the `if` instead (`WhenGuard.wrap_moved`).  The condition
is the rule's `when` text with `$v` replaced by the bound source text
(`WhenGuard.condition`).
"""

from __future__ import annotations

import ast
import re
import textwrap

from dslc import codes
from dslc.match import ir
from dslc.rewrite import initguard
from dslc.rewrite.astutil import dotted_name, is_self_attr
from dslc.rewrite.edits import Edit, EditConflict, apply_edits, indent_lines
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Absent, Env, paren
from dslc.rewrite.rules import conditional_rule

# torch.nn layers with no parameters and no buffers (so none draws random
# numbers when built): moving a `when` rewrite's statements across them keeps
# every layer's initial values under a fixed seed and the order of
# `parameters()` / `buffers()` (optimizer checkpoints are positional).
_NO_RANDOM_INIT = frozenset(f"torch.nn.{n}" for n in (
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "Flatten", "Unflatten",
    "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "LeakyReLU", "ELU", "Mish",
    "Hardswish", "Hardsigmoid", "Softplus", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d"))


class WhenGuard(Planner):
    """The `when` condition of a match and the `if` around its init edits."""

    def condition(self, match: ir.Match) -> str | None:
        raw = match.rule.option("when")
        if not raw:
            return None
        text = str(raw)
        env = Env(match, {v: b.attr for v, b in match.init_nodes.items()}, {})
        env.literals = self.ctx.literal_texts(match)

        def sub(m: re.Match) -> str:
            try:
                return paren(env.var(m.group(1)))
            except Absent:
                raise Skip(codes.S_TARGET, f"`when` names `${m.group(1)}`, which is bound to nothing") from None

        return re.sub(r"\$([A-Za-z_]\w*)", sub, text)

    def wrap(self, init_plan: Plan, stmts: list[ast.stmt], condition: str, rule: ir.Rule) -> None:
        """Replace the run of statements holding the init edits by `if cond: <new> else: <old>`."""
        mod = self.mod
        cause = conditional_rule(rule)
        # The innermost block that holds (an ancestor of) every edited statement.
        chains = [[(None, None)] + mod.chain(s) for s in stmts]
        depth = 0
        while all(len(c) > depth + 1 for c in chains) and len({(id(c[depth + 1][0]), c[depth + 1][1]) for c in chains}) == 1:
            depth += 1
        tops = []
        for s, c in zip(stmts, chains):
            tops.append(c[depth + 1][0] if len(c) > depth + 1 else s)
        _, _, body = mod.block_of(tops[0])
        indices = sorted(body.index(t) for t in tops)
        if getattr(self.ctx, "init_guarded", None):
            # the condition holds the guards of a binding built under an `if`: that `if` must come first
            initguard.check_first(mod, self.ctx.init_guarded, depth, body[indices[0]], chains[0])
        if self.wrap_moved(init_plan, stmts, tops, body, indices, condition):
            return
        first, last = body[indices[0]], body[indices[-1]]
        region_start = mod.smap.line_start(first.lineno)
        region_end = mod.smap.line_end(last.end_lineno)
        for e in init_plan.edits:
            if e.start < region_start or e.end > region_end:
                raise Skip(codes.S_WHEN_REGION, f"{cause}: the init statements it changes must be in one run of statements")
        # Earlier rewrites inside the run go into both branches (`when` rules run last).
        absorbed = []
        for e in self.ctx.accepted:
            boundary_insert = e.start == e.end and e.start in (region_start, region_end)
            if region_start <= e.start and e.end <= region_end and not boundary_insert:
                absorbed.append(e)
            elif e.start < region_end and e.end > region_start and not boundary_insert:
                raise Skip(codes.S_WHEN_REGION, f"{cause}: overlaps an earlier rewrite around the init statements it duplicates")

        def shifted(edits):
            return [Edit(e.start - region_start, e.end - region_start, e.text) for e in edits]

        try:
            old = apply_edits(mod.source[region_start:region_end], shifted(absorbed))
            new = apply_edits(mod.source[region_start:region_end], shifted(absorbed + init_plan.edits))
        except EditConflict:
            raise Skip(codes.S_WHEN_REGION, f"{cause}: its init statements were already changed by another rewrite in the run "
                                             "it duplicates") from None
        if getattr(self.ctx, "init_guarded", None):
            new = initguard.prune(new, first, self.ctx.init_guarded, mod.unit)
        init_plan.absorbed = absorbed
        indent = mod.indent(first)
        nl = mod.nl
        if not old.endswith(("\n", "\r")):
            old += nl
            new += nl
        text = (indent + f"if {condition}:" + nl + indent_lines(new, mod.unit)
                + indent + "else:" + nl + indent_lines(old, mod.unit))
        init_plan.edits = [Edit(region_start, region_end, self.ctx.fit(text, last))]
        init_plan.claimed = {(region_start, region_end)}
        init_plan.lines.update(range(first.lineno, last.end_lineno + 1))

    def wrap_moved(self, init_plan: Plan, stmts: list[ast.stmt], tops: list, body: list,
                   indices: list[int], condition: str) -> bool:
        """`wrap` without duplicating unrelated statements: when the
        statements between the first and the last edited one are all
        `self.u = <constructor of a torch.nn layer without parameters or
        buffers>(<arguments without `self` or calls>)` and no edited
        statement (old or new) mentions `self.u`, those statements go first,
        unchanged, and `if cond: <new edited> else: <old edited>` follows them.
        Moving the edited statements below them is then harmless: nothing
        reads across, the random-number stream the edited constructors draw
        from is the same, and so is the order of parameters and buffers.
        Returns False (the caller duplicates the whole run, as before) for
        any other shape, and when an earlier rewrite touches the run."""
        mod = self.mod
        changed = [body[i] for i in indices]
        between = [st for st in body[indices[0]:indices[-1] + 1] if not any(st is c for c in changed)]
        if not between or {id(t) for t in tops} != {id(s) for s in stmts}:
            return False
        run = body[indices[0]:indices[-1] + 1]
        seg_of = self._segments(run)
        if seg_of is None:
            return False
        texts = self._edited_texts(init_plan, changed, seg_of)
        if texts is None:
            return False
        old, new, new_tree = texts
        mentioned = _self_attrs_mentioned(changed + [new_tree])
        if mentioned is None or not self._all_movable(between, changed[0], mentioned):
            return False
        nl = mod.nl
        first = changed[0]
        indent = mod.indent(first)
        text = "".join(mod.source[seg_of[id(st)][0]:seg_of[id(st)][1]] for st in between)
        text += (indent + f"if {condition}:" + nl + indent_lines(new, mod.unit)
                 + indent + "else:" + nl + indent_lines(old, mod.unit))
        last = run[-1]
        region_start, region_end = seg_of[id(run[0])][0], seg_of[id(last)][1]
        init_plan.absorbed = []
        init_plan.edits = [Edit(region_start, region_end, self.ctx.fit(text, last))]
        init_plan.claimed = {(region_start, region_end)}
        init_plan.lines.update(range(first.lineno, last.end_lineno + 1))
        return True

    def _segments(self, run: list[ast.stmt]) -> dict[int, tuple[int, int]] | None:
        """The offsets of each statement of the run, or None when something
        (comments, blank lines, a statement sharing a line) sits between them or
        an earlier rewrite touches the run."""
        # One statement per line range, nothing (comments, blank lines) between them.
        for a, b in zip(run, run[1:]):
            if a.end_lineno + 1 != b.lineno:
                return None
        segments = []
        for st in run:
            try:
                segments.append((st, *self.mod.stmt_range(st)))
            except Skip:
                return None
        region_start, region_end = segments[0][1], segments[-1][2]
        # Earlier rewrites touching the run: keep the plain duplication.
        for e in self.ctx.accepted:
            if e.start < region_end and e.end > region_start or (e.start == e.end and region_start < e.start < region_end):
                return None
        return {id(st): (lo, hi) for st, lo, hi in segments}

    def _edited_texts(self, init_plan: Plan, changed: list[ast.stmt], seg_of) -> tuple[str, str, ast.Module] | None:
        """The edited statements before and after the init edits (and the
        latter parsed), or None when an edit is not inside one of them."""
        mod = self.mod
        per_stmt: dict[int, list[Edit]] = {}
        for e in init_plan.edits:
            home = [c for c in changed if seg_of[id(c)][0] <= e.start and e.end <= seg_of[id(c)][1]]
            if len(home) != 1:
                return None
            lo = seg_of[id(home[0])][0]
            per_stmt.setdefault(id(home[0]), []).append(Edit(e.start - lo, e.end - lo, e.text))
        old_parts, new_parts = [], []
        try:
            for c in changed:
                lo, hi = seg_of[id(c)]
                text = mod.source[lo:hi]
                old_parts.append(text)
                new_parts.append(apply_edits(text, per_stmt.get(id(c), [])))
        except EditConflict:
            return None
        old, new = "".join(old_parts), "".join(new_parts)
        if not new.strip() or not old.endswith(("\n", "\r")) or not new.endswith(("\n", "\r")):
            return None
        try:
            new_tree = ast.parse(textwrap.dedent(new)) if new.strip() else ast.Module(body=[], type_ignores=[])
        except SyntaxError:
            return None
        return old, new, new_tree

    def _all_movable(self, between: list[ast.stmt], first: ast.stmt, mentioned: set[str]) -> bool:
        """Is every statement between the edited ones `self.u = <parameter-free
        torch.nn layer>(<plain arguments>)` with `u` not in `mentioned`?"""
        mod = self.mod
        func = mod.parent.get(id(first), (None, None))[0]
        while func is not None and not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = mod.parent.get(id(func), (None, None))[0]
        if func is None:
            return False
        local = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        for st in between:
            if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and is_self_attr(st.targets[0])
                    and isinstance(st.value, ast.Call)):
                return False
            if st.targets[0].attr in mentioned:
                return False
            call = st.value
            qual = dotted_name(call.func)
            if qual is None:
                return False
            head, _, rest = qual.partition(".")
            if head in local or head not in mod.imports:
                return False
            full = mod.imports[head] + ("." + rest if rest else "")
            if full not in _NO_RANDOM_INIT or not _plain_arguments(call):
                return False
        return True


def _self_attrs_mentioned(trees: list[ast.AST]) -> set[str] | None:
    """What the edited statements (before and after the rewrite) mention of
    `self`, or None when they use `self` otherwise than as `self.<attr>` (no
    `self` passed on, no method call but the checkpoint hook's): then these
    are all the attributes they touch."""
    mentioned: set[str] = set()
    for tree in trees:
        nodes = list(ast.walk(tree))
        bases = {id(n.value) for n in nodes if is_self_attr(n)}
        if any(isinstance(n, ast.Name) and n.id == "self" and id(n) not in bases for n in nodes):
            return None
        if any(isinstance(n, ast.Call) and is_self_attr(n.func) and n.func.attr != "_register_load_state_dict_pre_hook"
               for n in nodes):
            return None
        mentioned |= {n.attr for n in nodes if is_self_attr(n)}
    return mentioned


def _plain_arguments(call: ast.Call) -> bool:
    """No call, comprehension, `self`, unpacking or other effect in the arguments."""
    for arg in list(call.args) + [k.value for k in call.keywords]:
        for n in ast.walk(arg):
            if isinstance(n, (ast.Call, ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom,
                              ast.Starred, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                return False
            if isinstance(n, ast.Name) and n.id == "self":
                return False
    return not any(k.arg is None for k in call.keywords)
