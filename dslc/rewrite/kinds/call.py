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

    def needs_condition(self, match: ir.Match, plan: Plan, target, *, per_call: bool, env: Env | None = None,
                        check: bool = True) -> str:
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
        if check and per_call and env is not None and rule.option("check"):
            parts.append(self._check(match, plan, env))
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

    def dispatch_chain(self, match: ir.Match, plan: Plan, env: Env, source: tuple, tpn: ir.PatNode) -> str:
        """`_dslc_<pack>_<rule>(args)` for a source of several nodes (a chain:
        each earlier node's output is read by a later one only) and a
        one-node target: the helper runs the kernel where its needs are met,
        else the source nodes in order, their intermediates local to it.

        With `option rows = "$a: $b"` and a match that reached `$a` through a
        row reshaping (`~rows`), the helper takes that reshaping as a
        function: the original code applies it to `$a`, the kernel branch
        to `$b` (`rows(head(h)) == head(rows(h))`, dslc/match/rows.py).
        """
        rule = match.rule
        if env.casts:
            raise Skip(codes.S_FALLBACK, "a matched call casts its input (dtype=...); the per-call dispatch does not keep casts")
        produced = [o.name for pn in source[:-1] for o in pn.outputs]
        if len(source[-1].outputs) != 1 or any(v in node_vars(tpn) for v in produced):
            raise Skip(codes.S_FALLBACK, "the per-call fallback of a chain needs a target over the chain's inputs and one output")
        params, call_args = self._chain_params(match, env, source, tpn, set(produced))
        names = {v: (v + "_" if keyword.iskeyword(v) else v) for v in params}
        taken = set(names.values()) | set(produced)
        rows_fn, rows_in = _fresh("rows", taken), _fresh("rows_in", taken)
        chain, rows_pair = self._rows_chain(match)
        if chain is not None and (rows_pair[1] not in names or rows_pair[0] not in set(produced) | set(names)):
            raise Skip(codes.S_FALLBACK, f"`option rows`: `${rows_pair[1]}` is not an input of the dispatch here")
        henv = Env(match, {}, {})
        henv.inline = {v: names[v] for v in params}
        henv.inline.update({v: v + "_" if keyword.iskeyword(v) else v for v in produced})
        unit, nl = self.mod.block_unit, self.mod.nl
        lines = []
        for pn in source[:-1]:
            lines.append(f"{', '.join(henv.inline.get(o.name, '_') for o in pn.outputs)} = {self.ctx.render_node(pn, henv, plan)}")
        if chain is not None:
            henv.inline[rows_pair[0]] = f"{rows_fn}({henv.inline[rows_pair[0]]})"
        original = lines + [f"return {self.ctx.render_node(source[-1], henv, plan)}"]
        cond = self.needs_condition(match, plan, [tpn], per_call=True, env=henv, check=False)
        kernel_env = Env(match, {}, {})
        kernel_env.inline = dict(henv.inline)
        if chain is None:
            inner = self._check(match, plan, kernel_env)
            cond += f" and {inner}" if inner else ""
            branch = [f"if {cond}:", f"{unit}return {self.ctx.render_node(tpn, kernel_env, plan)}"]
        else:
            params.append(rows_fn)
            call_args.append(chain.func)
            if chain.min_dim:
                cond += f" and {names[rows_pair[1]]}.dim() >= {chain.min_dim}"
            kernel_env.inline[rows_pair[1]] = rows_in
            branch = [f"if {cond}:", f"{unit}{rows_in} = {rows_fn}({names[rows_pair[1]]}.contiguous())"]
            inner = self._check(match, plan, kernel_env)
            kernel = f"return {self.ctx.render_node(tpn, kernel_env, plan)}"
            branch += [f"{unit}if {inner}:", f"{unit * 2}{kernel}"] if inner else [f"{unit}{kernel}"]
        base = re.sub(r"\W", "_", f"_dslc_{rule.pack}_{rule.name}")
        body = (f"({', '.join(names.get(v, v) for v in params)}):{nl}"
                f'{unit}"""Added by `dslc apply` ({rule.qualified_name}): the kernel where it can run, else the original calls."""{nl}'
                + "".join(f"{unit}{line}{nl}" for line in branch + original))
        helper = self.ctx.imports.dispatch_helper(base, body, plan)
        return f"{helper}({', '.join(call_args)})"

    def _chain_params(self, match: ir.Match, env: Env, source: tuple, tpn: ir.PatNode, produced: set[str]):
        """The helper's parameters (every bound value the chain and the
        target read, in a stable order) and the call's arguments."""
        rule = match.rule
        for b in match.init_nodes.values():
            if getattr(b, "container", None):
                raise Skip(container_reason(b))
        params: list[str] = []
        kw_only: set[str] = set()
        for pn in list(source) + [tpn]:
            if any(isinstance(t, ir.Const) and t.value is Ellipsis for t in pn.args) and pn is not tpn:
                raise Skip(codes.S_FALLBACK, "the source pattern takes further arguments (`...`), which the dispatch cannot pass on")
            lv = layer_var_of(pn)
            names = ([lv] if lv else []) + [v for t in pn.args for v in sorted(vars_in(t))]
            names += [v for _, t in pn.kwargs for v in sorted(vars_in(t))] + sorted(node_vars(pn))
            kw_only |= {t.name for _, t in pn.kwargs if isinstance(t, ir.Var)}
            for v in names:
                if v not in params and v not in produced and v != "_":
                    params.append(v)
        for v in sorted(_check_vars(rule)) + [n.var.name for n in rule.needs if n.var is not None]:
            if v not in params and v not in produced:
                params.append(v)
        for pn in list(source) + [tpn]:
            for t in pn.args:
                kw_only -= vars_in(t)
        present, call_args = [], []
        for v in params:
            try:
                call_args.append(env.var(v))
                present.append(v)
            except Absent:
                if v not in kw_only:
                    raise Skip(codes.S_FALLBACK, f"`${v}` is bound to nothing at this call") from None
        return present, call_args

    def _rows_chain(self, match: ir.Match):
        """The row reshaping the match went through (`~rows`), re-derived from its text."""
        from dslc.match.compiler import rows_option
        from dslc.match.rows import row_chain

        pair = rows_option(match.rule)
        bound = match.bindings.get("~rows")
        if pair is None or bound is None:
            return None, pair
        root = match.bindings.get(pair[0])
        chain = row_chain(bound.text, root.text) if root is not None else "unbound"
        if isinstance(chain, str):
            raise Skip(codes.S_FALLBACK, f"`{bound.text}` is not a row reshaping: {chain}")
        return chain, pair

    def _check(self, match: ir.Match, plan: Plan, env: Env) -> str:
        """`option check` over the kernel's inputs (`torch.` spelt as the file names torch)."""
        text = match.rule.option("check")
        if not text:
            return ""
        if re.search(r"(?<![\w.$])torch\.", str(text)):
            text = re.sub(r"(?<![\w.$])torch\.", self.ctx.imports.torch_module(plan) + ".", str(text))
        return paren(self.check_text(str(text), env))


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    return name


def _check_vars(rule: ir.Rule) -> set[str]:
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", str(rule.option("check") or "")))
