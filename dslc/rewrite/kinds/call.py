"""Call replacement with a run-time fallback (rules with `requires` and `fallback original`).

A rule whose kernel has run-time needs (a package that may be missing, a
tensor on CUDA) replaces a call by a choice: where the needs are met the
kernel runs, else the original code.  Per call, the matched call becomes
`_dslc_<pack>_<rule>(args)`, a module-level helper generated once per file
(`CallDispatch.dispatch_call`); per construction (an init target), the
`when`-style test `needs_condition` guards the new layer.  The kernel is
imported under a guard (bound to None when the import fails), which the
import scheduler writes.
"""

from __future__ import annotations

import keyword
import re

from dslc import codes
from dslc.match import ir
from dslc.rewrite.astutil import container_reason
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Absent, Env, paren
from dslc.rewrite.rules import layer_var_of, node_vars, vars_in


class CallDispatch(Planner):
    """The run-time test of a rule's needs and the per-call dispatch helper."""

    def needs_condition(self, match: ir.Match, plan: Plan, target, *, per_call: bool, env: Env | None = None) -> str:
        """The run-time test that the kernel's needs are met (rule `requires`).

        Every target callee from a required package is imported under a
        guard (bound to None when the import fails); the test checks those
        names, and the device: per call, the tensor bound to `on $x`
        (`x.is_cuda`); per construction, `torch.cuda.is_available()`.
        """
        rule = match.rule
        parts: list[str] = []
        for pn in target:
            if pn.callee is None or pn.callee.var is not None or not pn.callee.qualname:
                continue
            qual = pn.callee.qualname
            if any(qual == n.module or qual.startswith(n.module + ".") for n in rule.needs):
                parts.append(f"{self.ctx.imports.guarded_import(qual, plan)} is not None")
        if not parts:
            raise Skip(codes.S_FALLBACK, "the rule requires a package but its target calls nothing from it")
        if per_call and env is not None and rule.option("check"):
            parts.append(paren(self.check_text(str(rule.option("check")), env)))
        for need in rule.needs:
            if need.device == "cuda":
                if per_call and need.var is not None and env is not None:
                    try:
                        parts.append(f"{paren(env.var(need.var.name))}.is_cuda")
                    except Absent:
                        raise Skip(codes.S_FALLBACK, f"`${need.var.name}` (the tensor whose device is checked) is bound to nothing") from None
                else:
                    parts.append(f"{self.ctx.imports.torch_module(plan)}.cuda.is_available()")
        return " and ".join(dict.fromkeys(parts))

    @staticmethod
    def check_text(text: str, env: Env) -> str:
        """`option check`: `$v` / `$v.attr` replaced by the bound source text."""
        def sub(m: re.Match) -> str:
            try:
                return paren(env.var(m.group(1)))
            except Absent:
                raise Skip(codes.S_FALLBACK, f"`option check` names `${m.group(1)}`, which is bound to nothing here") from None
        return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)

    def dispatch_call(self, match: ir.Match, plan: Plan, env: Env, spn: ir.PatNode, tpn: ir.PatNode) -> str:
        """`_dslc_<pack>_<rule>(args)`: a module-level helper (once per file) that
        calls the kernel where its needs are met and the original call else.

        Every bound value is an argument of the helper, so it is evaluated
        once, at the call site, in the original order.
        """
        rule = match.rule
        for b in match.init_nodes.values():
            if getattr(b, "container", None):
                raise Skip(container_reason(b))
        if env.casts:
            raise Skip(codes.S_FALLBACK, "the matched call casts its input (dtype=...); the per-call dispatch does not keep casts")
        if any(isinstance(t, ir.Const) and t.value is Ellipsis for t in spn.args):
            raise Skip(codes.S_FALLBACK, "the source pattern takes further arguments (`...`), which the dispatch cannot pass on")
        params: list[str] = []

        def add(names) -> None:
            for v in names:
                if v not in params and v != "_":
                    params.append(v)

        lv = layer_var_of(spn)
        if lv is not None:
            add([lv])
        for t in list(spn.args) + [t for _, t in spn.kwargs]:
            add(sorted(vars_in(t)))
        add(sorted(node_vars(tpn)))
        add(sorted(_check_vars(rule)))
        add([n.var.name for n in rule.needs if n.var is not None])
        kw_only = set()
        for pn in (spn, tpn):
            for _, t in pn.kwargs:
                if isinstance(t, ir.Var):
                    kw_only.add(t.name)
        for pn in (spn, tpn):
            for t in pn.args:
                kw_only -= vars_in(t)
            if pn.callee is not None and pn.callee.var is not None:
                kw_only.discard(pn.callee.var.name)
        kw_only -= _check_vars(rule) | {n.var.name for n in rule.needs if n.var is not None}
        call_args = []
        present = []
        for v in params:
            try:
                call_args.append(env.var(v))
                present.append(v)
            except Absent:
                if v not in kw_only:
                    raise Skip(codes.S_FALLBACK, f"`${v}` is bound to nothing at this call") from None
                # a keyword the call does not give: left out of both calls
        params = present
        names = {v: (v + "_" if keyword.iskeyword(v) else v) for v in params}
        henv = Env(match, {}, {})
        henv.inline = {v: names[v] for v in params}
        kernel = self.ctx.render_node(tpn, henv, plan)
        original = self.ctx.render_node(spn, henv, plan)
        cond = self.needs_condition(match, plan, [tpn], per_call=True, env=henv)
        base = re.sub(r"\W", "_", f"_dslc_{rule.pack}_{rule.name}")
        unit, nl = self.mod.block_unit, self.mod.nl
        body = (f"({', '.join(names[v] for v in params)}):{nl}"
                f'{unit}"""Added by `dslc apply` ({rule.qualified_name}): the kernel where it can run, else the original call."""{nl}'
                f"{unit}if {cond}:{nl}{unit * 2}return {kernel}{nl}{unit}return {original}{nl}")
        helper = self.ctx.imports.dispatch_helper(base, body, plan)
        return f"{helper}({', '.join(call_args)})"


def _check_vars(rule: ir.Rule) -> set[str]:
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", str(rule.option("check") or "")))
