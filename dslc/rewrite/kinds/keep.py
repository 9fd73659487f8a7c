"""Values kept for a run-time condition (`keep $p, $pd`): a per-call guard.

A forward rewrite removes the chain's intermediates.  Where a rule keeps
some of them (`keep`, docs/adr-language.md "Values kept for a run-time
condition") and the code needs them only under a run-time condition, the
matched statements are not refused but guarded per call:

    if output_attentions or head_mask is not None:
        <the original statements, unchanged>
    else:
        <the rewritten statements>
        probs = None

The conditions, each proved from the source (`KeepGuard.prepare`,
`read_ok`):

* an `if T:` without `else` between the first and the final matched
  statement (in their block, holding no matched statement) that writes a
  kept value: `T` (where it is false the `if` is dead, so the rewritten
  branch leaves it out; the paths through its body run the original);
* a read of a kept value after the match whose every occurrence in its
  statement lies in one branch of `c` (`(ctx, p) if c else (ctx,)`, or the
  statement inside `if c:`): `c` (or `not c`); the rewritten branch binds
  the value to None (the read does not run there).

Each condition is call-free, and nothing it reads (a name, or the root of
an attribute chain, called or stored through) is written in the function
between the first matched statement and the place it is tested: so the
guard, evaluated once before the statements, has the value the original
code tests later.  All matched statements must sit in one block (an
optional node's `if` counts as one of its statements); a matched statement
nested in a compound statement of that block gets no guard (the rewritten
branch would copy the compound statement, and the matched statement in it,
whole): the match takes the plain checks, which refuse it; except directly
in an `if T:` without `else` (`if self.scale: s = s / d`): the guard takes
`not T` on and the rewritten branch holds the `if`'s body without the `if`
(kinds/keepflat.py).  The rule without that node may still apply, guarded
on the `if`'s test like any `if` that updates a kept value.  A match inside the
original branch of a guard written by an earlier run is left alone (S407).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.edits import indent_lines
from dslc.rewrite.kinds import keepflat
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.kinds.keepchecks import multiline_string
from dslc.rewrite.kinds.keepelse import else_ok, else_text
from dslc.rewrite.plan import Plan, Skip

_BAD_TEST = (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
             ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass
class Region:
    """The statements one guard holds, and what it is guarded on."""

    body: list  # the block's statements from the first matched one to the final one
    function: ast.AST
    guard_ifs: list  # `if T:` statements dropped from the rewritten branch
    kept: set[str]  # names bound to kept variables
    tests: list = field(default_factory=list)  # ast tests, source order, deduplicated by text
    # why a condition cannot be guarded (the match then gets the plain checks)
    problem: str | None = None
    read_later: list = field(default_factory=list)  # kept names read after the match (bound to None)
    view_ifs: list = field(default_factory=list)  # a mask added through views (kinds/keepviews.py)
    # `if T:` statements holding matched statements, flattened in the rewritten branch (kinds/keepflat.py)
    taken_ifs: list = field(default_factory=list)

    def add_test(self, test: ast.expr) -> None:
        text = ast.unparse(test)
        if all(ast.unparse(t) != text for t in self.tests):
            self.tests.append(test)

    def condition(self) -> str:
        if len(self.tests) == 1:
            return ast.unparse(self.tests[0])
        return ast.unparse(ast.BoolOp(ast.Or(), list(self.tests)))


class KeepGuard(Planner):
    """The per-call guard of a rule with `keep` (see the module docstring)."""

    def prepare(self, match: ir.Match, groups) -> Region | None:
        """The region of the match and its `if`s that update a kept value (None: no `keep`)."""
        rule = match.rule
        if not rule.keep:
            return None
        final = groups[-1][2]
        _, _, block = self.mod.block_of(final)
        kept = {b.text for v in rule.keep if (b := match.bindings.get(v)) is not None and b.kind == "name"}
        tops, taken = [], []
        optional = {id(match.nodes[k]) for k, pn in enumerate(rule.forward.source)
                    if pn.optional and k < len(match.nodes)}
        for _, nodes, stmt in groups:
            top = self._top_in(stmt, block)
            if top is None:  # hoisted across blocks: the plain rewrite, no guard
                return Region([], None, [], kept, problem=(
                    f"line {stmt.lineno} is not in the block of the final statement (line {final.lineno}); "
                    f"a per-call guard holds one block"))
            if top is not stmt:  # nested: only in an `if T:` flattened where T holds (kinds/keepflat.py)
                problem = (keepflat.taken_if(stmt, top, any(id(n) in optional for n in nodes))
                           if isinstance(top, ast.If) else _nested_problem(stmt, top))
                if problem is not None:
                    return Region([], None, [], kept, problem=problem)
                if not any(t is top for t in taken):
                    taken.append(top)
            tops.append(top)
        lo = min(block.index(t) for t in tops)
        body = block[lo:block.index(final) + 1]
        region = Region(body, self._function(final), [], kept)
        for top in taken:
            problem = self.test_problem(region, top.test, top.lineno)
            if problem is not None:
                return Region([], None, [], kept, problem=problem)
            region.taken_ifs.append(top)
            region.add_test(keepflat.negated(top.test))
        ids = {id(t) for t in tops}
        for stmt in body:
            if id(stmt) in ids or not isinstance(stmt, ast.If) or not (_stores(stmt.body) & kept):
                continue
            # else: not guarded; its paths get the plain data-flow checks
            # (an `else` that updates no kept value is the rewritten branch's: kinds/keepelse.py)
            problem = (f"the `if` at line {stmt.lineno} updates a kept value and has an `else`"
                       if stmt.orelse and not else_ok(stmt, kept)
                       else self.test_problem(region, stmt.test, stmt.lineno))
            if problem:
                region.problem = region.problem or problem
                continue
            region.guard_ifs.append(stmt)
            region.add_test(stmt.test)
        return region

    def _top_in(self, stmt: ast.stmt, block: list):
        node = stmt
        while not any(node is s for s in block):
            if id(node) not in self.mod.parent:
                return None
            node = self.mod.parent[id(node)][0]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                return None
        return node

    def _function(self, stmt: ast.stmt):
        node = stmt
        while id(node) in self.mod.parent:
            node = self.mod.parent[id(node)][0]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        raise Skip(codes.S_KEEP_GUARD, f"line {stmt.lineno} is not inside a function")

    def test_problem(self, region: Region, test: ast.expr, line: int) -> str | None:
        """Why `test` cannot be the guard's: it calls or binds something, or
        what it reads is written between the first matched statement and
        `line` (where the original tests it); None when it can."""
        text = ast.unparse(test)
        for n in ast.walk(test):
            if isinstance(n, _BAD_TEST):
                return (f"the condition `{text}` (line {line}) calls or binds something; "
                        f"the guard evaluates it earlier, so it must be a plain test")
        roots = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
        attr_roots = {_root(n) for n in ast.walk(test) if isinstance(n, ast.Attribute)} - {None}
        start = region.body[0].lineno
        for n in ast.walk(region.function):
            at = getattr(n, "lineno", None)
            if at is None or not start <= at < line:
                continue
            hit = None
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.id in roots:
                hit = n.id
            elif isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, (ast.Store, ast.Del)):
                hit = _root(n) if _root(n) in attr_roots else None
            elif isinstance(n, ast.Call) and _root(n.func) in attr_roots and isinstance(n.func, ast.Attribute):
                hit = _root(n.func)
            if hit:
                return (f"`{hit}` in the condition `{text}` (line {line}) may change at line {at}, "
                        f"after the guard would test it")
        return None

    def read_ok(self, region: Region, match: ir.Match, path, q: int, name: str, condition) -> bool:
        """A read of a kept value after the match, under a condition the guard takes on."""
        if name not in region.kept or not region.body:
            return False
        node = path.nodes[q]
        found = condition(match, node, name)
        if found is None:
            return False
        test, holds = found
        problem = self.test_problem(region, test, safety.first_line(node))
        if problem:
            raise Skip(codes.S_KEEP_GUARD, problem)
        if not holds:
            negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
            test = test.operand if negated else ast.UnaryOp(ast.Not(), test)
        region.add_test(test)
        if name not in region.read_later:
            region.read_later.append(name)
        return True

    def skip_path(self, region: Region, method: str):
        """The paths through a guarded `if`'s body run the original code."""
        spans = [(s.body[0].lineno, s.body[-1].end_lineno) for s in region.guard_ifs + region.view_ifs]

        def skip(path) -> bool:
            return any(n.stmt.method == method and a <= n.stmt.lines[0] <= b for n in path.nodes for a, b in spans)
        return skip

    def effects(self, region: Region, method: str, effects):
        """What a node reads and writes, the test of a guarded `if` reading
        its test only (where the `if` is not taken, which is where the
        rewritten branch runs; `effects` sees the whole statement)."""
        tests = {s.lineno: s.test for s in region.guard_ifs + region.view_ifs}

        def at(path, q):
            node = path.nodes[q]
            test = tests.get(node.stmt.lines[0]) if node.kind == "stmt" and node.stmt.method == method else None
            if test is None:
                return effects(path, q) if effects is not None else None
            return {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}, set()
        return at

    def emit(self, plan: Plan, region: Region, groups, final_text: str, lo: int, hi: int) -> None:
        """`if <cond>: <original> else: <rewritten>` in place of the region."""
        final = groups[-1][2]
        cond = region.condition()
        callee = final_text.split("(", 1)[0].strip()
        for parent, fname in self.mod.chain(final):
            if isinstance(parent, ast.If) and fname == "body" and ast.unparse(parent.test) == cond:
                raise Skip(codes.S_GENERATED, f"inside the original branch of the per-call guard `if {cond}:` "
                           f"(line {parent.lineno})")
            # a guard of an earlier run on other flags (kinds/keepflat.py): its `else` calls the kernel
            if (isinstance(parent, ast.If) and fname == "body" and callee and parent.orelse
                    and callee + "(" in "\n".join(ast.unparse(x) for x in parent.orelse)):
                raise Skip(codes.S_GENERATED, f"inside the original branch of the per-call guard "
                           f"`if {ast.unparse(parent.test)}:` (line {parent.lineno}), whose `else` calls the kernel")
        smap = self.mod.smap
        for stmt in region.body:
            self.mod.stmt_range(stmt)  # alone on its lines (S_MULTI_STMT)
        start, end = smap.line_start(region.body[0].lineno), smap.line_end(final.end_lineno)
        spans = multiline_string(smap.text[start:end])  # a string token, not implicitly joined literals
        if spans is not None:
            raise Skip(codes.S_KEEP_GUARD, f"the string at line {region.body[0].lineno + spans - 1} spans lines; "
                       f"re-indenting it would change it")
        indent = self.mod.indent(region.body[0])
        unit = "\t" if indent.startswith("\t") else "    "
        nl = self.mod.nl
        original = smap.text[start:end]
        deleted = {id(s) for _, _, s in groups[:-1]} | {id(s) for s in region.guard_ifs}
        fast = self.fast_lines(plan, region, region.body, deleted, final, final_text, lo, hi)
        fast += [f"{indent}{name} = None{nl}" for name in region.read_later]
        if not original.endswith(("\n", "\r")):
            original += nl
        text = (f"{indent}if {cond}:{nl}" + indent_lines(original, unit)
                + f"{indent}else:{nl}" + indent_lines("".join(fast), unit))
        self.ctx.claim(plan, start, end, text, final)
        plan.lines.update(range(region.body[0].lineno, final.end_lineno + 1))

    def fast_lines(self, plan: Plan, region: Region, stmts, deleted, final, final_text: str, lo: int, hi: int):
        """The rewritten branch's text of `stmts`, one string per statement."""
        smap = self.mod.smap
        fast = []
        for stmt in stmts:
            a, b = self.mod.stmt_range(stmt)
            if any(stmt is t for t in region.taken_ifs):  # where its test holds: its body (kinds/keepflat.py)
                inner = self.fast_lines(plan, region, stmt.body, deleted, final, final_text, lo, hi)
                fast.append(keepflat.flat_text(self.mod, stmt, list(zip(stmt.body, inner))) if inner else "")
                continue
            if stmt is final:
                fast.append(smap.text[a:lo] + final_text + smap.text[hi:b])
            elif id(stmt) in plan.probes:
                fast.append(plan.probes[id(stmt)])
            elif id(stmt) in plan.checks:  # `option shape` (kinds/keepchecks.py)
                fast.append(plan.checks[id(stmt)])
            elif id(stmt) not in deleted:
                fast.append(smap.text[a:b])
            elif any(stmt is s for s in region.guard_ifs) and stmt.orelse:  # where the test is false
                fast.append(else_text(self.mod, stmt))
            else:
                fast.append("")
        return fast


def _nested_problem(stmt: ast.stmt, top: ast.stmt) -> str:
    """Why a matched statement nested in a compound statement of the guarded
    block cannot be guarded: the rewritten branch would keep the compound
    statement (it holds more than the chain) and with it the matched
    statement, which then reads a value the rewrite no longer computes."""
    what = type(top).__name__.lower().replace("asyncfor", "async for").replace("asyncwith", "async with")
    return (f"line {stmt.lineno} sits inside the `{what}` at line {top.lineno}; a per-call guard holds "
            f"matched statements of one block, not statements nested in it")


def _root(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _stores(stmts) -> set[str]:
    return {n.id for s in stmts for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
