"""Values kept across a helper call: the per-call guard at the call site.

A chain matched inside a helper method (`GPTNeoSelfAttention._attn`, inlined
into `forward` by the analysis) often hands its probabilities back:

    def _attn(self, query, key, value, attention_mask=None, head_mask=None):
        ...
        if head_mask is not None:
            attn_weights = attn_weights * head_mask
        attn_output = torch.matmul(attn_weights, value)
        return attn_output, attn_weights

    def forward(self, ..., head_mask=None, output_attentions=False):
        ...
        attn_output, attn_weights = self._attn(query, key, value, attention_mask, head_mask)
        ...
        if output_attentions:
            outputs += (attn_weights,)

The helper's `return` reads the kept value unconditionally, but the caller
reads what it received only where `output_attentions` holds.  The guard
then goes to the call site, and the helper stays as it is:

    if head_mask is not None or output_attentions:
        attn_output, attn_weights = self._attn(query, key, value, attention_mask, head_mask)
    else:
        attn_output, attn_weights = self._attn_fast(query, key, value, attention_mask, head_mask)

`_attn_fast`, added after the helper, is the helper with the matched region
rewritten as `KeepGuard` writes its fast branch (the guarded `if`s left
out, the kept values the helper still reads bound to None).

Soundness, each refused with S331 (or left to the plain checks) otherwise:

* the match sits in one helper, called from a method of the same class at
  one statement `a, b = self.<helper>(args)` (or `a = ...`) whose targets
  are names, and the helper's last statement is `return x` / `return x, y`
  of names, as many as the targets; its other exits refuse the match;
* no class of the file subclasses the class (a subclass's override of the
  helper would be skipped by the fast branch);
* a guarded `if` of the helper tests only the helper's parameters, each
  passed at the call as a plain name or constant or left to a constant
  default, and not rebound in the helper before that `if`: the test is
  written at the call site with the arguments in place of the parameters;
  so is a condition of a read in the helper after the match;
* each read, in the caller, of a name that receives a kept value lies in one
  branch of a condition `c` (as for `KeepGuard`) that reads only local
  names, none written between the call and the read; `c` (or `not c`)
  joins the guard.  The fast branch binds those names to None (the value
  the fast copy returns in their place).
* the call site is not inside the original branch of a guard an earlier
  run wrote (S407), so a second apply changes nothing.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import self_attr_name
from dslc.rewrite.edits import Edit, indent_lines
from dslc.rewrite.flow import sibling_subclass
from dslc.rewrite.kinds import keepflat
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.plan import Plan, Skip

_BAD = (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
        ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Attribute, ast.Subscript, ast.Starred)


@dataclass
class CallSite:
    """The call of the helper that holds a match, and what crosses it."""

    helper: ast.FunctionDef
    caller: ast.FunctionDef
    stmt: ast.Assign  # `a, b = self.<helper>(...)`
    call: ast.Call
    targets: list[str]  # the names the call's results are bound to, in order
    returned: list[str]  # the helper's returned names, in order
    args: dict[str, str]  # helper parameter -> the argument's text at the call
    tests: list = field(default_factory=list)  # caller-side tests (ast), deduplicated by text
    received: list = field(default_factory=list)  # caller names bound to None in the fast branch
    handed: bool = False  # a kept value crosses the call

    def add_test(self, test: ast.expr) -> None:
        text = ast.unparse(test)
        if all(ast.unparse(t) != text for t in self.tests):
            self.tests.append(test)


class KeepCall(Planner):
    """The call-site guard of a `keep` rule matched in a helper (module docstring)."""

    def __init__(self, ctx, keep):
        super().__init__(ctx)
        self.keep = keep
        self.site: CallSite | None = None
        self.problem: str | None = None

    # -- preparation -------------------------------------------------------

    def prepare(self, match: ir.Match, region) -> None:
        """Find the call site of the helper holding the match (None: the match
        is not in a helper, or not in one this kind handles: `self.problem`)."""
        self.site, self.problem, self.helper = None, None, None
        if region is None or not region.body or region.function is None:
            return
        self.helper = region.function
        chains = {tuple(n.inlined_from) for n in match.nodes}
        if len(chains) != 1:
            return
        chain = next(iter(chains))
        if len(chain) != 1:
            if chain:
                self.problem = "the match is in a helper of a helper; the guard goes only one call up"
            return
        caller_name, lines = chain[0]
        helper = region.function
        try:
            self.site = self._site(match, helper, caller_name, tuple(lines))
        except _Refused as e:
            self.problem = str(e)

    def _site(self, match: ir.Match, helper, caller_name: str, lines: tuple) -> CallSite:
        mod = self.mod
        cls_node = mod.parent.get(id(helper), (None,))[0]
        if not isinstance(cls_node, ast.ClassDef) or helper.decorator_list:
            raise _Refused(f"the helper `{helper.name}` is not a plain method of its class")
        for other in ast.walk(mod.tree):
            if isinstance(other, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id == cls_node.name)
                    or (isinstance(b, ast.Attribute) and b.attr == cls_node.name) for b in other.bases):
                raise _Refused(f"`{other.name}` subclasses `{cls_node.name}`; its own `{helper.name}` "
                               f"would be skipped by the rewritten call")
        sub = sibling_subclass(self.ctx.path, cls_node.name) if self.ctx.path else None
        if sub:
            raise _Refused(f"`{sub[0]}` in {sub[1]} may subclass `{cls_node.name}`; its own `{helper.name}` "
                           f"would be skipped by the rewritten call")
        caller = next((f for f in cls_node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       and f.name == caller_name), None)
        if caller is None:
            raise _Refused(f"the caller `{caller_name}` of `{helper.name}` is not a method of `{cls_node.name}`")
        call = next((c for c in ast.walk(caller) if isinstance(c, ast.Call) and self_attr_name(c.func) == helper.name
                     and (c.lineno, c.end_lineno) == lines), None)
        stmt = None
        if call is not None:
            stmt = next((s for s in ast.walk(caller) if isinstance(s, ast.Assign) and s.value is call), None)
        if stmt is None or len(stmt.targets) != 1:
            raise _Refused(f"the call of `self.{helper.name}` (line {lines[0]}) is not `a, b = self.{helper.name}(...)`")
        loop = next((c for c, f in mod.chain(stmt) if isinstance(c, (ast.For, ast.AsyncFor, ast.While))), None)
        if loop is not None:
            raise _Refused(f"the call of `self.{helper.name}` (line {stmt.lineno}) is inside the loop at line "
                           f"{loop.lineno}; a later iteration could read what the fast branch returns")
        tgt = stmt.targets[0]
        elts = tgt.elts if isinstance(tgt, ast.Tuple) else [tgt]
        if not all(isinstance(e, ast.Name) for e in elts):
            raise _Refused(f"line {stmt.lineno} does not bind the helper's results to names")
        last = helper.body[-1]
        value = last.value if isinstance(last, ast.Return) else None
        rets = value.elts if isinstance(value, ast.Tuple) else ([value] if value is not None else [])
        if not rets or not all(isinstance(e, ast.Name) for e in rets) or \
                (isinstance(tgt, ast.Tuple) != isinstance(value, ast.Tuple)) or len(rets) != len(elts):
            raise _Refused(f"the helper `{helper.name}` does not end in `return` of names matching line {stmt.lineno}")
        for n in ast.walk(helper):
            if n is not last and isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)):
                raise _Refused(f"the helper `{helper.name}` has another exit at line {n.lineno}")
        return CallSite(helper, caller, stmt, call, [e.id for e in elts], [e.id for e in rets],
                        self._arguments(helper, call))

    @staticmethod
    def _arguments(helper, call: ast.Call) -> dict[str, str]:
        """Parameter -> the text of its value at the call: a plain name or a
        constant passed, or a constant default; other parameters are left out
        (a test reading them refuses)."""
        a = helper.args
        params = a.posonlyargs + a.args
        out: dict[str, str] = {}
        if params:
            out[params[0].arg] = "self"
        defaults = dict(zip([p.arg for p in params][len(params) - len(a.defaults):], a.defaults))
        defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
        if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
            return out
        given: dict[str, ast.expr] = dict(zip([p.arg for p in params[1:]], call.args))
        given.update({k.arg: k.value for k in call.keywords})
        for name in [p.arg for p in params[1:]] + [p.arg for p in a.kwonlyargs]:
            v = given.get(name, defaults.get(name))
            if isinstance(v, ast.Name) or (isinstance(v, ast.Constant) and not isinstance(v.value, (str, bytes))):
                out[name] = ast.unparse(v)
        return out

    # -- reads -------------------------------------------------------------

    def read_ok(self, region, match: ir.Match, path, q: int, name: str, condition) -> bool:
        """A read of a kept value after the match: the helper's `return`
        handing it to the caller, a read in the caller under a condition,
        else `KeepGuard.read_ok`."""
        site = self.site
        node = path.nodes[q]
        if site is None and self.problem and name in region.kept and _returns_at(self.helper, node) \
                and not self.keep.read_ok(region, match, path, q, name, condition):
            raise Skip(codes.S_KEEP_GUARD, f"the kept `{name}` is returned by `{self.helper.name}`, and the guard "
                       f"cannot go to its call: {self.problem}")
        if site is None or name not in region.kept and not site.handed:
            return self.keep.read_ok(region, match, path, q, name, condition)
        depth = len(match.nodes[-1].inlined_from)
        if len(node.inlined_from) < depth:  # in the caller (the spelling of a received name)
            return self._caller_read(match, path, q, name, condition)
        if _returns_at(site.helper, node) and name in site.returned and name in region.kept:
            site.handed = True
            received = site.targets[site.returned.index(name)]
            if received not in site.received:
                site.received.append(received)
            if received != name:  # the scan goes on under the helper's spelling: follow the caller's
                for k in range(q + 1, len(path.nodes)):
                    other = path.nodes[k]
                    if len(other.inlined_from) >= depth:
                        continue
                    if received in safety.reads_of(other) and not self._caller_read(match, path, k, received, condition):
                        raise Skip(codes.S_VALUE_READ, f"`{received}`, which receives the kept `{name}` from "
                                   f"`{site.helper.name}`, is read at line {safety.first_line(other)} unconditionally")
                    if received in safety.writes_of(other):
                        break
            return True
        return self.keep.read_ok(region, match, path, q, name, condition)

    def _caller_read(self, match: ir.Match, path, q: int, name: str, condition) -> bool:
        site = self.site
        node = path.nodes[q]
        found = condition(match, node, name)
        if found is None:
            return False
        test, holds = found
        line = safety.first_line(node)
        text = ast.unparse(test)
        if any(isinstance(n, _BAD) for n in ast.walk(test)):
            raise Skip(codes.S_KEEP_GUARD, f"the condition `{text}` (line {line}) reads more than local names; "
                       f"the guard at line {site.stmt.lineno} evaluates it before the call")
        names = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
        for n in ast.walk(site.caller):
            at = getattr(n, "lineno", None)
            if at is None or not site.stmt.lineno <= at < line:
                continue
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.id in names:
                raise Skip(codes.S_KEEP_GUARD, f"`{n.id}` in the condition `{text}` (line {line}) may change at "
                           f"line {at}, after the guard at line {site.stmt.lineno} would test it")
        if not holds:
            negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
            test = test.operand if negated else ast.UnaryOp(ast.Not(), test)
        site.add_test(test)
        return True

    # -- emission ----------------------------------------------------------

    def translated(self, region) -> list[ast.expr]:
        """The helper-side tests with the call's arguments for the parameters."""
        site = self.site
        out = []
        for test in region.tests:
            text = ast.unparse(test)
            where = next((s.lineno for s in region.guard_ifs if ast.unparse(s.test) == text), None)
            where = where or next((s.lineno for s in region.taken_ifs  # kinds/keepflat.py
                                   if ast.unparse(keepflat.negated(s.test)) == text), None)
            for n in ast.walk(test):
                if isinstance(n, (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
                                  ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                    raise Skip(codes.S_KEEP_GUARD, f"the condition `{text}` calls or binds something")
                if isinstance(n, ast.Name) and n.id not in site.args:
                    raise Skip(codes.S_KEEP_GUARD, f"the condition `{text}` of `{site.helper.name}` reads `{n.id}`, "
                               f"which is not a parameter passed as a name or constant; the call site cannot test it")
            names = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
            roots = {_root(n) for n in ast.walk(test) if isinstance(n, (ast.Attribute, ast.Subscript))} - {None}
            limit = where or (site.helper.body[-1].lineno + 1)
            for n in ast.walk(site.helper):
                at = getattr(n, "lineno", None)
                if at is None or at >= limit or n is site.helper:
                    continue
                hit = None
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.id in names:
                    hit = n.id
                elif isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, (ast.Store, ast.Del)) \
                        and _root(n) in roots:
                    hit = _root(n)
                elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and _root(n.func) in roots:
                    hit = _root(n.func)
                if hit:
                    raise Skip(codes.S_KEEP_GUARD, f"`{hit}` in the condition `{text}` may change at line {at} of "
                               f"`{site.helper.name}`, after the guard at its call would test it")
            new = _Rename(site.args).visit(ast.parse(text, mode="eval").body)
            out.append(new)
        return out

    def emit(self, plan: Plan, region, groups, final_text: str, lo: int, hi: int) -> None:
        """The guard at the call site and the fast copy of the helper."""
        site = self.site
        mod = self.mod
        smap = mod.smap
        tests = []
        for t in self.translated(region) + site.tests:
            if all(ast.unparse(t) != ast.unparse(u) for u in tests):
                tests.append(t)
        cond = ast.unparse(tests[0] if len(tests) == 1 else ast.BoolOp(ast.Or(), tests))
        for parent, fname in mod.chain(site.stmt):
            if isinstance(parent, ast.If) and fname == "body" and ast.unparse(parent.test) == cond:
                raise Skip(codes.S_GENERATED, f"inside the original branch of the per-call guard `if {cond}:` "
                           f"(line {parent.lineno})")
        # the helper's region, as the fast branch of `KeepGuard.emit` writes it
        final = groups[-1][2]
        deleted = {id(s) for _, _, s in groups[:-1]} | {id(s) for s in region.guard_ifs}
        matched = {id(s) for _, _, s in groups}
        fast = []
        for stmt in region.body:
            a, b = mod.stmt_range(stmt)
            if any(stmt is t for t in region.taken_ifs):  # flattened where its test holds (kinds/keepflat.py)
                fast += self.keep.fast_lines(plan, region, [stmt], deleted, final, final_text, lo, hi)
            elif stmt is final:
                fast.append(smap.text[a:lo] + final_text + smap.text[hi:b])
            elif id(stmt) in plan.probes:
                fast.append(plan.probes[id(stmt)])
            elif id(stmt) not in deleted:
                inner = [s for s in ast.walk(stmt) if s is not stmt and id(s) in matched]
                if inner:
                    raise Skip(codes.S_KEEP_GUARD, f"line {stmt.lineno} holds the matched statement at line "
                               f"{inner[0].lineno}; the fast copy would keep it")
                fast.append(smap.text[a:b])
        indent = mod.indent(region.body[0])
        nl = mod.nl
        fast += [f"{indent}{name} = None{nl}" for name in region.read_later]
        kept_returned = [n for n in site.returned if n in region.kept]
        fast += [f"{indent}{name} = None{nl}" for name in kept_returned if name not in region.read_later]
        for n in ast.walk(site.stmt):
            if isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes)) and n.end_lineno != n.lineno:
                raise Skip(codes.S_KEEP_GUARD, f"the string at line {n.lineno} spans lines; re-indenting it "
                           f"would change it")
        mod.stmt_range(site.stmt)  # alone on its lines (S_MULTI_STMT)
        h_start = smap.line_start(site.helper.lineno)
        h_end = smap.line_end(site.helper.end_lineno)
        r_start, r_end = smap.line_start(region.body[0].lineno), smap.line_end(final.end_lineno)
        name = self._fresh(site.helper.name + "_fast")
        text = smap.text[h_start:r_start] + "".join(fast) + smap.text[r_end:h_end]
        text, count = re.subn(r"\bdef\s+" + re.escape(site.helper.name) + r"\b", "def " + name, text, count=1)
        if count != 1:
            raise Skip(codes.S_KEEP_GUARD, f"cannot rename the copy of `{site.helper.name}`")
        if not text.endswith(("\n", "\r")):
            text += nl
        plan.edits.append(Edit(h_end, h_end, nl + text))
        plan.claimed.add((h_end, h_end))
        # the call site
        s_start, s_end = smap.line_start(site.stmt.lineno), smap.line_end(site.stmt.end_lineno)
        original = smap.text[s_start:s_end]
        if not original.endswith(("\n", "\r")):
            original += nl
        c_start, c_end = smap.node_span(site.call.func)
        f_start = c_start - s_start
        f_end = c_end - s_start
        fast_call = original[:f_start] + original[f_start:f_end].replace(site.helper.name, name) + original[f_end:]
        s_indent = mod.indent(site.stmt)
        unit = "\t" if s_indent.startswith("\t") else "    "
        new = (f"{s_indent}if {cond}:{nl}" + indent_lines(original, unit)
               + f"{s_indent}else:{nl}" + indent_lines(fast_call, unit))
        self.ctx.claim(plan, s_start, s_end, new, site.stmt)
        plan.lines.update(range(region.body[0].lineno, final.end_lineno + 1))

    def _fresh(self, base: str) -> str:
        words = set(re.findall(r"\b\w+\b", self.mod.smap.text))
        name, k = base, 1
        while name in words:
            k += 1
            name = f"{base}{k}"
        return name


class _Refused(Exception):
    pass


class _Rename(ast.NodeTransformer):
    def __init__(self, args: dict[str, str]):
        self.args = args

    def visit_Name(self, node: ast.Name):
        return ast.copy_location(ast.parse(self.args[node.id], mode="eval").body, node)


def _root(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _returns_at(helper, node) -> bool:
    """`node` is the helper's last statement, its `return`."""
    last = helper.body[-1] if helper is not None and helper.body else None
    return (isinstance(last, ast.Return) and node.kind == "stmt" and node.stmt.method == helper.name
            and tuple(node.stmt.lines) == (last.lineno, last.end_lineno))
