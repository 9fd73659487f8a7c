"""Hoisting: the forward statements of a match that sit in different blocks.

An earlier matched statement that sits outside the `if` holding the last
one is hoisted: copied to the start of the other branch (an `else:` is
created when missing) and deleted from its place (paper Fig. 4-5).
Mirrored: when the earlier statements sit in a branch and the last one
after it, the last one (fused) moves to the end of that branch and an
unchanged copy goes to the end of every other branch (`reverse`).  When
hoisting would write `if c: S else: S`, the `if` is dropped instead
(`merge_identical_branches`).  Only `if` boundaries are crossed; a `for`,
`while`, `with` or `try` between the statements refuses the match.
"""

from __future__ import annotations

import ast
import textwrap

from dslc.analysis.model import Guard
from dslc import codes
from dslc.rewrite.astutil import is_prefix, names_in
from dslc.rewrite.edits import Edit, reindent
from dslc.rewrite.kinds.base import Planner
from dslc.rewrite.plan import Plan, Skip


class Hoisting(Planner):
    """Moves and copies of forward statements across `if` branches."""

    def needs_hoist(self, earlier: ast.stmt, final: ast.stmt) -> bool:
        return self.mod.block_of(earlier)[2] is not self.mod.block_of(final)[2]

    def crossed_guards(self, groups) -> tuple[set[str], list]:
        """The attributes of the layers a hoisted copy still calls, and the
        guards of the branches crossed (for the init's re-assignment)."""
        hoisted_attrs: set[str] = set()
        hoist_guards: list = []
        final_stmt = groups[-1][2]
        final_chain = self.mod.chain(final_stmt)
        for _, nodes, stmt in groups[:-1]:
            if self.needs_hoist(stmt, final_stmt):
                chain = self.mod.chain(stmt)
                if is_prefix(final_chain, chain):
                    # The last statement follows the branch: it is the one copied.
                    hoisted_attrs |= {n.attr for n in groups[-1][1] if n.kind == "layer" and n.attr}
                    crossed = chain[len(final_chain):]
                else:
                    hoisted_attrs |= {n.attr for n in nodes if n.kind == "layer" and n.attr}
                    crossed = final_chain[len(chain):]
                for compound, _ in crossed:
                    if not isinstance(compound, ast.If):
                        raise Skip(codes.S_HOIST, _hoist_reason(stmt, final_stmt, compound))
                hoist_guards = [_branch_guard(compound, branch) for compound, branch in crossed]
        return hoisted_attrs, hoist_guards

    def hoist_earlier(self, plan: Plan, groups, final_stmt: ast.stmt) -> None:
        """Earlier statements: delete; hoist out of the branch when needed."""
        mod = self.mod
        hoisted_by_if: dict[int, tuple[ast.If, str, list[ast.stmt]]] = {}
        final_chain = mod.chain(final_stmt)
        matched_stmts = {id(stmt) for _, _, stmt in groups}
        for key, nodes, stmt in groups[:-1]:
            if self.needs_hoist(stmt, final_stmt):
                chain = mod.chain(stmt)
                if final_chain[: len(chain)] != chain or len(final_chain) <= len(chain):
                    raise Skip(codes.S_HOIST, f"line {stmt.lineno} sits in a branch that does not hold line {final_stmt.lineno}; cannot hoist")
                self.check_hoist(stmt, final_stmt, chain, final_chain, matched_stmts)
                for compound, branch in final_chain[len(chain):]:
                    if not isinstance(compound, ast.If):
                        kind = type(compound).__name__.lower()
                        raise Skip(codes.S_HOIST, f"cannot hoist line {stmt.lineno} into the `{kind}` at line {compound.lineno}")
                    entry = hoisted_by_if.setdefault(id(compound), (compound, branch, []))
                    entry[2].append(stmt)
            if id(stmt) in plan.probes:  # `option probe`: kept on empty slices
                start, end = mod.stmt_range(stmt)
                self.ctx.claim(plan, start, end, plan.probes[id(stmt)], stmt)
                continue
            self.ctx.delete_stmt(plan, stmt, also_deleted={id(s) for _, _, s in groups[:-1]})
        for compound, branch, stmts in hoisted_by_if.values():
            self.copy_into_other_branch(plan, compound, branch, stmts)

    def reverse(self, plan: Plan, groups, final_stmt, final_text: str, span: tuple[int, int], n_outputs: int) -> None:
        """The earlier statements sit in a branch and the last one after it (Fig. 4, mirrored).

        1. The last statement, with the target expression in place of the last
           node's, moves to the end of the branch that holds the earlier ones.
        2. Every other branch crossed gets an unchanged copy of it at its end
           (an `else:` is created when missing), innermost first.
        3. The earlier statements and the original last statement are deleted.
        Statements between the `if` and the last statement must not touch its
        names (it now runs before them).
        """
        mod = self.mod
        earlier = [stmt for _, _, stmt in groups[:-1]]
        chains = [mod.chain(stmt) for stmt in earlier]
        if n_outputs > 1 or any(c != chains[0] for c in chains[1:]):
            raise Skip(codes.S_HOIST, f"cannot move line {final_stmt.lineno} into the branch: the matched statements are spread over several branches")
        final_chain = mod.chain(final_stmt)
        crossed = chains[0][len(final_chain):]
        for compound, _ in crossed:
            if not isinstance(compound, ast.If):
                raise Skip(codes.S_HOIST, f"cannot move line {final_stmt.lineno} into the `{type(compound).__name__.lower()}` at line {compound.lineno}")
        outer = crossed[0][0]
        _, _, block = mod.block_of(final_stmt)
        names = names_in(final_stmt)
        for other in block[block.index(outer) + 1 : block.index(final_stmt)]:
            common = names & names_in(other)
            if common:
                raise Skip(codes.S_REORDER, f"moving line {final_stmt.lineno} before line {other.lineno}, which uses `{sorted(common)[0]}`, would change it")
        start, end = mod.stmt_range(final_stmt)
        original = mod.source[start:end]
        fused = original[: span[0] - start] + final_text + original[span[1] - start :]
        if not fused.endswith(("\n", "\r")):
            fused += mod.nl
            original += mod.nl
        old_indent = mod.indent(final_stmt)

        def at_indent(text: str, indent: str) -> str:
            return reindent(text, old_indent, indent)

        # The branch gets the fused statement, so it never empties: no `pass`.
        for stmt in earlier:
            self.ctx.delete_stmt(plan, stmt, also_deleted=set(), merge_blank=False)
        self.ctx.delete_stmt(plan, final_stmt, also_deleted=set(), merge_blank=False)
        _, _, inner = mod.block_of(earlier[0])
        last = inner[-1]
        plan.edits.append(Edit(mod.smap.line_end(last.end_lineno), mod.smap.line_end(last.end_lineno), at_indent(fused, mod.indent(earlier[0]))))
        for compound, branch in reversed(crossed):
            other = compound.orelse if branch == "body" else compound.body
            if other and branch == "body" and len(other) == 1 and isinstance(other[0], ast.If) \
                    and mod.smap.line_text(other[0].lineno).lstrip().startswith("elif"):
                raise Skip(codes.S_HOIST, f"cannot copy line {final_stmt.lineno} into the `elif` at line {other[0].lineno}")
            if other:
                at = mod.smap.line_end(other[-1].end_lineno)
                plan.edits.append(Edit(at, at, at_indent(original, mod.indent(other[-1]))))
            else:
                at = mod.smap.line_end(compound.end_lineno)
                text = mod.indent(compound) + "else:" + mod.nl + at_indent(original, mod.indent(compound.body[0]))
                plan.edits.append(Edit(at, at, text))
        plan.lines.update(range(final_stmt.lineno, final_stmt.end_lineno + 1))

    def merge_identical_branches(self, plan: Plan, groups, final_stmt, final_text: str, span: tuple[int, int]) -> bool:
        """Hoisting would write `if c: S else: S`: write nothing but drop the `if`.

        When the earlier statements sit before an `if c:` whose only statement
        is the final one, hoisting deletes them, puts the fused statement in the
        `if` and copies them into a new `else:`.  If the fused statement is the
        earlier ones (same syntax tree; e.g. `h = self.conv(h)` when only the
        init changes) and `c` has no side effects, both branches would run the
        same code: the earlier statements stay as they are and the `if`
        (holding only the final statement) is deleted.  True when done.
        """
        mod = self.mod
        earlier = [stmt for _, _, stmt in groups[:-1]]
        if not earlier or not all(self.needs_hoist(stmt, final_stmt) for stmt in earlier):
            return False
        final_chain = mod.chain(final_stmt)
        chains = [mod.chain(stmt) for stmt in earlier]
        if any(c != chains[0] for c in chains) or len(final_chain) != len(chains[0]) + 1 \
                or final_chain[: len(chains[0])] != chains[0]:
            return False
        compound, branch = final_chain[-1]
        if not isinstance(compound, ast.If) or branch != "body" or compound.orelse \
                or compound.body != [final_stmt] or not mod.smap.line_text(compound.lineno).lstrip().startswith("if"):
            return False
        if any(isinstance(n, (ast.Call, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)) for n in ast.walk(compound.test)):
            return False
        _, _, block = mod.block_of(compound)
        if any(mod.block_of(stmt)[2] is not block for stmt in earlier):
            return False
        start, end = mod.stmt_range(final_stmt)
        fused = mod.source[start:span[0]] + final_text + mod.source[span[1]:end]
        try:
            new = ast.parse(textwrap.dedent(fused)).body
            old = ast.parse(textwrap.dedent("".join(mod.source[a:b] for a, b in map(mod.stmt_range, earlier)))).body
        except SyntaxError:
            return False
        if [ast.dump(n) for n in new] != [ast.dump(n) for n in old]:
            return False
        # Nothing between the earlier statements and the `if` may see a difference: they stay where they were.
        self.ctx.delete_stmt(plan, compound, also_deleted={id(compound)})
        for stmt in earlier:
            plan.claimed.add(mod.stmt_range(stmt))
            plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))
        plan.lines.update(range(final_stmt.lineno, final_stmt.end_lineno + 1))
        return True

    def check_hoist(self, stmt, final_stmt, chain, final_chain, matched_stmts) -> None:
        """Statements the hoisted copy moves past must not touch its names."""
        names = names_in(stmt)
        parent, fname, body = self.mod.block_of(stmt)
        compound = final_chain[len(chain)][0]
        movers: list[ast.AST] = []
        i = body.index(stmt)
        for other in body[i + 1 :]:
            if other is compound:
                break
            movers.append(other)
        for level, (comp, branch) in enumerate(final_chain[len(chain):]):
            movers.append(comp.test)
            inner = getattr(comp, branch)
            stop = final_chain[len(chain) + level + 1][0] if len(chain) + level + 1 < len(final_chain) else final_stmt
            for other in inner:
                if other is stop:
                    break
                movers.append(other)
        for other in movers:
            if id(other) in matched_stmts:
                continue
            common = names & names_in(other)
            if common:
                line = getattr(other, "lineno", stmt.lineno)
                raise Skip(codes.S_REORDER,
                    f"hoisting line {stmt.lineno} would move it past line {line}, which uses `{sorted(common)[0]}`"
                )

    def copy_into_other_branch(self, plan: Plan, compound: ast.If, branch: str, stmts: list[ast.stmt]) -> None:
        mod = self.mod
        stmts = sorted(stmts, key=lambda s: s.lineno)
        if self.dead_in_other_branch(compound, branch, stmts):
            return  # `else: logits = self.head(h)` where nothing reads `logits` after: dead code, not written
        if branch == "body":
            other = compound.orelse
            if other:
                if len(other) == 1 and isinstance(other[0], ast.If) and mod.smap.line_text(other[0].lineno).lstrip().startswith("elif"):
                    raise Skip(codes.S_HOIST, f"cannot hoist into the `elif` at line {other[0].lineno}")
                first = other[0]
                indent = mod.indent(first)
                text = "".join(mod.stmt_text(s, indent) for s in stmts)
                at = mod.smap.line_start(first.lineno)
                plan.edits.append(Edit(at, at, text))
            else:
                head = mod.smap.line_text(compound.lineno)
                if head.lstrip().startswith("elif"):
                    indent = mod.indent(compound)
                else:
                    indent = mod.indent(compound)
                body_indent = mod.indent(compound.body[0])
                text = indent + "else:" + mod.nl + "".join(mod.stmt_text(s, body_indent) for s in stmts)
                end_line = compound.end_lineno
                at = mod.smap.line_end(end_line)
                if not mod.ends_with_newline(end_line):
                    text = mod.nl + text.rstrip("\r\n")
                plan.edits.append(Edit(at, at, text))
        else:
            first = compound.body[0]
            indent = mod.indent(first)
            text = "".join(mod.stmt_text(s, indent) for s in stmts)
            at = mod.smap.line_start(first.lineno)
            plan.edits.append(Edit(at, at, text))


    def dead_in_other_branch(self, compound: ast.If, branch: str, stmts: list[ast.stmt]) -> bool:
        """Would the copies of the hoisted `stmts` in the other branch of
        `compound` be dead?  True only when each is `name = <call>` (names
        only: a matched layer call, which the rewrite already treats as
        removable) and nothing that can run after them reads or deletes
        those names: no read in the other branch nor after the `if` in the
        function, the `if` in no loop, no nested function or lambda reading
        them, no `global`/`nonlocal`, no `locals()`/`vars()`/`eval`/`exec`."""
        names: set[str] = set()
        for stmt in stmts:
            if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)
                    and all(isinstance(t, ast.Name) for t in stmt.targets)):
                return False
            names |= {t.id for t in stmt.targets}
        func = compound
        while id(func) in self.mod.parent and not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = self.mod.parent[id(func)][0]
            if isinstance(func, (ast.For, ast.AsyncFor, ast.While, ast.ClassDef, ast.Module)):
                return False
        other = compound.orelse if branch == "body" else compound.body
        later = {id(n) for s in other for n in ast.walk(s)}
        for n in ast.walk(func):
            if isinstance(n, (ast.Global, ast.Nonlocal)) and names & set(n.names):
                return False
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("locals", "vars", "eval", "exec"):
                return False
            if isinstance(n, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)) and n is not func \
                    and names & {m.id for m in ast.walk(n) if isinstance(m, ast.Name)}:
                return False
            if isinstance(n, ast.Name) and n.id in names and not isinstance(n.ctx, ast.Store) \
                    and (id(n) in later or n.lineno > compound.end_lineno):
                return False
        return True


def _hoist_reason(stmt: ast.stmt, final: ast.stmt, compound: ast.AST) -> str:
    """Why matched statements on both sides of a `for`/`while`/`with`/`try`
    boundary are not joined: the fused call would run under the context
    manager, as often as the loop body, or in the handler's paths."""
    kind = {ast.For: "for", ast.AsyncFor: "async for", ast.While: "while", ast.With: "with",
            ast.AsyncWith: "async with"}.get(type(compound), type(compound).__name__.lower())
    what = {"with": "would run the earlier part under its context manager",
            "async with": "would run the earlier part under its context manager",
            "for": "runs once per iteration (or never)", "async for": "runs once per iteration (or never)",
            "while": "runs once per iteration (or never)"}.get(kind, "does not run exactly once")
    lo, hi = sorted((stmt.lineno, final.lineno))
    return (f"lines {lo} and {hi} sit on both sides of the `{kind}` at line {compound.lineno}, whose body "
            f"{what}: the emitter does not hoist across it")


def _branch_guard(compound: ast.AST, branch: str):
    return Guard(ast.unparse(compound.test), branch == "orelse", (compound.lineno, compound.lineno))
