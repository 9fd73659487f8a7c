"""Class dispatch: a class item's kernel chosen at the top of the class's forward.

`if <needs met>: <target>; return <result>` goes before the first statement
of the matched class's `forward`; the original body stays as the fallback,
so the parameters, their names and the computation without the kernel are
unchanged.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import fresh_name
from dslc.rewrite.edits import Edit
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.kinds.call import CallDispatch
from dslc.rewrite.kinds.when import WhenGuard
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env, paren
from dslc.rewrite.rules import node_vars


class ClassDispatch(Kind):
    """A class item (`match.klass`): planned before the checks of forward/init matches."""

    needs_setup = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.calls = CallDispatch(ctx)
        self.when = WhenGuard(ctx)

    def select(self, match: ir.Match, setup: Setup | None):
        return True if match.klass is not None else None

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        """A dispatch at the top of the class's forward.

        The guard: each kernel import of a required package
        succeeded (a guarded import at the top of the file binds the name to
        None when it fails), the tensor named by `device ... on $x` is on
        that device, every `scalar` variable is a Python number, and the
        run-time type checks of the match (`ACT2FN[key]` activations) hold,
        and the rule's `option check` and `when` conditions.  A rule with no
        needs and no conditions gets `if True:` (the original body stays,
        unreachable, so a checkpoint and a second run see the same class); a
        rule with needs but no `fallback original` is refused.
        """
        reason = safety.check_constraints(match)
        if reason:
            raise Skip(reason)
        rule = match.rule
        if rule.klass.target is None:
            raise Skip(codes.S_CLASS_DISPATCH, "detect only: the rule has no class target")
        if rule.needs and rule.fallback != "original":
            raise Skip(codes.S_FALLBACK, "the kernel has run-time needs (`requires` in the rule) and the rule declares no "
                       "`fallback original`: the class would lose its computation where they are not met")
        cls_node = self.mod.classes.get(match.class_name)
        fn = None
        if cls_node is not None:
            fn = next((s for s in cls_node.body if isinstance(s, ast.FunctionDef) and s.name == "forward"), None)
        if fn is None:
            raise Skip(codes.S_CLASS_DISPATCH, f"cannot find `{match.class_name}.forward` in the file")
        reason = self.check_scripted_class(match, fn)
        if reason:
            raise Skip(reason)
        env = Env(match, {}, {})
        flags = self._kernel_flags(rule, plan)
        stmts = self._target_statements(match, fn, env, plan)
        guard = self._guard(match, env, flags, plan)
        self._insert(fn, guard, stmts, plan)

    def _kernel_flags(self, rule: ir.Rule, plan: Plan) -> list[str]:
        """Kernel imports of required packages: guarded, bound to None when missing."""
        flags: list[str] = []
        for pn in rule.klass.target:
            qual = pn.callee.qualname if pn.callee is not None and pn.kind == "layer" and pn.layer_var is None \
                and pn.callee.var is None else None
            if not qual:
                continue
            need = next((n for n in rule.needs if qual == n.module or qual.startswith(n.module + ".")), None)
            if need is None:
                continue
            name = self.ctx.imports.guarded_import(qual, plan)
            flags.append(f"{name} is not None")
        return flags

    def _target_statements(self, match: ir.Match, fn: ast.FunctionDef, env: Env, plan: Plan) -> list[str]:
        """The target's statements, each output a fresh local, then `return <result>`."""
        k = match.rule.klass
        produced = {o.name for pn in k.forward for o in pn.outputs}
        locals_ = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {a.arg for a in fn.args.args}
        taken = set(locals_) | self.mod.all_names
        stmts: list[str] = []
        for pn in k.target:
            for v in node_vars(pn):
                if v in produced and v not in {o.name for t in k.target for o in t.outputs}:
                    raise Skip(codes.S_CLASS_DISPATCH, f"the target reads `${v}`, an intermediate value of the original forward")
        for pn in k.target:
            text = self.ctx.render_node(pn, env, plan)
            outs = []
            for o in pn.outputs:
                name = fresh_name(f"_dslc_{o.name}", taken)
                taken.add(name)
                env.inline[o.name] = name
                outs.append(name)
            stmts.append(f"{', '.join(outs)} = {text}" if outs else text)
        result = k.forward[-1].outputs[0].name
        if result not in env.inline:
            raise Skip(codes.S_CLASS_DISPATCH, f"the target does not compute `${result}`")
        stmts.append(f"return {env.inline[result]}")
        return stmts

    def _guard(self, match: ir.Match, env: Env, flags: list[str], plan: Plan) -> list[str]:
        """The conditions of the dispatch (see `plan`)."""
        rule = match.rule
        guard = list(dict.fromkeys(flags))
        for need in rule.needs:
            if need.device is not None and need.var is not None:
                x = env.var(need.var.name)
                guard.append(f"{paren(x)}.is_cuda" if need.device == "cuda" else f"{paren(x)}.device.type == 'cpu'")
        for v in rule.klass.scalars:
            guard.append(f"isinstance({env.var(v.name)}, (int, float))")
        for expr, typ in getattr(match.klass, "type_checks", ()):
            guard.append(f"isinstance({expr}, {self.ctx.imports.spell(typ, plan)})")
        if rule.option("check"):
            guard.append(paren(self.calls.check_text(str(rule.option("check")), env)))
        condition = self.when.condition(match)
        if condition:  # `when`: one more run-time condition of the dispatch
            guard.append(paren(condition))
        if not guard:
            guard = ["True"]
        return guard

    def _insert(self, fn: ast.FunctionDef, guard: list[str], stmts: list[str], plan: Plan) -> None:
        """The `if` before the first statement of forward's body (after its docstring)."""
        body = fn.body
        first = body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str) \
                and len(body) > 1:
            first = body[1]
        if first.lineno <= fn.lineno:
            raise Skip(codes.S_CLASS_DISPATCH, "forward's body is on the line of its `def`; the dispatch needs a line of its own")
        if body[0] is not first and (body[0].end_lineno or body[0].lineno) >= first.lineno:
            raise Skip(codes.S_CLASS_DISPATCH, "forward's docstring ends on the line of its first statement")
        indent = self.mod.indent(first)
        unit = indent[len(self.mod.indent(fn)):] or self.mod.block_unit
        text = indent + "if " + " and ".join(guard) + ":" + self.mod.nl
        text += self.ctx.lines_text(stmts, indent + unit)
        at = self.mod.smap.line_start(first.lineno)
        plan.edits.append(Edit(at, at, text))
        plan.claimed.add((at, at))
        plan.lines.update(range(fn.lineno, (fn.end_lineno or fn.lineno) + 1))

    def check_scripted_class(self, match: ir.Match, fn: ast.FunctionDef) -> str | None:
        for other, text in self.ctx.scripted_functions():
            if other is fn:
                return codes.reason(codes.S_SCRIPTED, f"`forward` is compiled by @{text}: the kernel cannot be called from TorchScript")
        return None
