"""Path building: the paths through one function (steps 2-4 of
`extract.py`'s docstring).

`PathBuilder.function_paths` walks a function statement by statement,
keeping the live path prefixes (`pathstate.Alt`) under the function's work
budget (`budget.py`).  Each statement appends nodes to every path still
running: the DL nodes of its expressions (`exprs.py`; `run_actions` adds
them, forks on `a if c else b`, and splices inlined helpers in through
`inline.py`), then a `stmt` node with its reads and writes.  Compound
statements that hold DL nodes split the paths (`compound.py`: `if`, loops,
`with`, `try`); `assert` adds a guard; `return` / `raise` end a path,
`break` / `continue` end a loop iteration.  Past `Options.max_paths` live
paths the rest are dropped (a `path-cap` Problem); at the end paths with
equal nodes are merged (`pathstate.merge_paths`).
"""

from __future__ import annotations

import ast

from . import compound
from .budget import ACTIVE, OverBudget, new_budget
from .classes import ClassInfo
from .classify import Classifier
from .context import FileContext
from .defuse import (local_names, name_order, plain_target, reads_of, recorded_def, self_attr, source_span,
                     target_reads, unparse_with_temps, value_of, writes_of)
from .exprs import BINOPS, Expressions
from .inline import inline_call
from .model import Guard, Node, Path, Problem, StmtRef
from .names import import_bindings
from .nodetext import node_text
from .pathstate import Alt, Frame, merge_paths, split_alts


class PathBuilder:
    """The paths of the functions of one module (see the module docstring)."""

    def __init__(self, ctx: FileContext, kinds: Classifier):
        self.ctx = ctx
        self.kinds = kinds
        self.exprs = Expressions(ctx, kinds)
        self.capped = False  # the function being walked had more than max_paths paths
        self.optional_ifs = 0  # `if`s without calls split so far in it (`compound.if_statement`)
        # more than MAX_OPTIONAL_IFS such `if`s in the function: it is walked
        # again splitting none (all or none, so that applying again, after the
        # split ones are rewritten, cannot split and rewrite the rest)
        self.optional_over = False
        self.split_optional = True

    def function_paths(self, fn: ast.FunctionDef, owner: str, info: ClassInfo | None) -> tuple[Path, ...]:
        """The paths of `fn` (a method of `info`, or a function when None)."""
        self.ctx.enter(info)
        self.exprs.temp = 0
        self.capped = False
        self.optional_ifs = 0
        frame = Frame(fn.name, owner, fn, frozenset(local_names(fn)), stack=((owner, fn.name),),
                      scope=info.scope if info is not None else self.ctx.scope)
        problems, where = self.ctx.problems, f"{owner}.{fn.name}"
        outer, budget = ACTIVE[0], new_budget(self.ctx.options)
        ACTIVE[0] = budget
        try:
            self.optional_over, self.split_optional = False, True
            alts = self.cap(self.block(fn.body, ("body",), (), frame, [Alt()]))
            if self.optional_over:
                self.exprs.temp, self.capped, self.optional_ifs, self.split_optional = 0, False, 0, False
                alts = self.cap(self.block(fn.body, ("body",), (), frame, [Alt()]))
        except OverBudget as exc:
            problems.append(Problem(exc.code, f"{exc.code}: {where}: {exc.message}; its paths are not "
                                    f"analysed (no rule is matched in it)", fn.lineno))
            return ()
        finally:
            ACTIVE[0] = outer
        if budget.solver_out:
            problems.append(Problem("solver-budget", f"solver-budget: {where}: z3 questions over more than "
                                    f"{budget.max_queries} guards in all; later guards are assumed feasible (the "
                                    f"guards of every match are still checked)", fn.lineno))
        if self.capped:
            cap = self.ctx.options.max_paths
            problems.append(Problem("path-cap", f"{where}: more than {cap} paths; kept the first {cap}", fn.lineno))
        return merge_paths([Path(a.guards, a.nodes) for a in alts])

    def join(self, *lists: list[Alt]) -> list[Alt]:
        """Concatenate the alternatives of a split; past the cap, interleave
        them so that every branch keeps representatives (the truncation in
        `cap` then drops paths evenly instead of whole branches)."""
        total = sum(len(x) for x in lists)
        if total <= self.ctx.options.max_paths:
            return [a for x in lists for a in x]
        out = []
        for i in range(max(len(x) for x in lists)):
            for x in lists:
                if i < len(x):
                    out.append(x[i])
        return out

    def cap(self, alts: list[Alt]) -> list[Alt]:
        if len(alts) > self.ctx.options.max_paths:
            self.capped = True
            return alts[: self.ctx.options.max_paths]
        return alts

    def ref(self, frame: Frame, stmt: ast.stmt, path: tuple, blocks: tuple) -> StmtRef:
        return StmtRef(frame.method, frame.owner, path, (stmt.lineno, stmt.end_lineno or stmt.lineno),
                       stmt.col_offset, blocks)

    def stmt_node(self, ref: StmtRef, frame: Frame, reads, writes) -> Node:
        return Node("stmt", ref, reads=frozenset(reads), writes=frozenset(writes), inlined_from=frame.inlined_from)

    def block(self, stmts, prefix, blocks, frame: Frame, alts: list[Alt]) -> list[Alt]:
        budget = ACTIVE[0]
        for i, stmt in enumerate(stmts):
            if not any(a.status == "fall" for a in alts):
                break
            path = prefix + (i,)
            live = [a for a in alts if a.status == "fall"]
            done = [a for a in alts if a.status != "fall"]
            if budget is not None:
                budget.charge(live)
            alts = done + self.cap(self.statement(stmt, path, blocks, frame, live))
        return alts

    def statement(self, stmt, path, blocks, frame: Frame, alts: list[Alt]) -> list[Alt]:
        """The paths after one statement (compound ones: `compound.py`)."""
        ref = self.ref(frame, stmt, path, blocks)
        if isinstance(stmt, ast.If):
            return compound.if_statement(self, stmt, ref, path, blocks, frame, alts)
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            return compound.loop_statement(self, stmt, ref, path, blocks, frame, alts)
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            return compound.with_statement(self, stmt, ref, path, blocks, frame, alts)
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            return compound.try_statement(self, stmt, ref, path, blocks, frame, alts)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            frame.local_funcs[stmt.name] = stmt
            return self.opaque(stmt, ref, frame, alts, reads=set(), writes={stmt.name})
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            return self._local_import(stmt, ref, frame, alts)
        if isinstance(stmt, ast.Assert):
            return self._assert(stmt, ref, frame, alts)
        if isinstance(stmt, ast.Return):
            return self._return(stmt, ref, frame, alts)
        flatten = self.ctx.options.flatten
        if isinstance(stmt, ast.Raise):
            alts = self.opaque(stmt, ref, frame, alts)
            if not flatten:
                for a in alts:
                    a.status = "raise"
            return alts
        if isinstance(stmt, (ast.Break, ast.Continue)):
            if not flatten:
                for a in alts:
                    a.status = "break" if isinstance(stmt, ast.Break) else "continue"
            return alts
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            return alts  # `pass`, docstrings, `...`: nothing read or written
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr)):
            return self.simple(stmt, ref, frame, alts)
        # global, nonlocal, del, match, class definitions: opaque
        return self.opaque(stmt, ref, frame, alts)

    def _local_import(self, stmt, ref, frame, alts) -> list[Alt]:
        """An import inside the function: its names resolve from here on."""
        scope = frame.scope or self.ctx.scope
        names = set()
        for name, binding in import_bindings(stmt, scope.module, scope.is_package):
            frame.local_imports[name] = binding.target
            names.add(name)
        return self.opaque(stmt, ref, frame, alts, reads=set(), writes=names)

    def _assert(self, stmt: ast.Assert, ref, frame, alts) -> list[Alt]:
        """`assert c`: the guard `c` on every path (infeasible ones are dropped)."""
        alts = self.run_actions(self.exprs.evaluate(stmt.test, frame, ref), frame, alts)
        reads = reads_of(stmt.test, self.exprs.replaced) | reads_of(stmt.msg)
        flatten = self.ctx.options.flatten
        out = []
        for a in alts:
            a.add_node(self.stmt_node(ref, frame, reads, ()))
            if flatten or a.add_guard(Guard(node_text(stmt.test), False, (stmt.lineno, stmt.end_lineno or stmt.lineno))):
                out.append(a)
        return out

    def _return(self, stmt: ast.Return, ref, frame, alts) -> list[Alt]:
        """`return v` ends the paths (in an inlined helper: writes the call site's targets)."""
        actions = self.exprs.evaluate(stmt.value, frame, ref) if stmt.value is not None else []
        alts = self.run_actions(actions, frame, alts)
        reads = reads_of(stmt.value, self.exprs.replaced)
        writes = frame.result or ()
        node = self.stmt_node(ref, frame, reads, writes)
        value = self.exprs.last_value if stmt.value is not None else None
        if len(writes) == 1 and value is not None and value.kind == "name":
            # `return h` of an inlined helper: the call site's result is h
            node = Node("stmt", ref, reads=node.reads, writes=node.writes, inlined_from=frame.inlined_from,
                        copies=((writes[0], value.text),))
        flatten = self.ctx.options.flatten
        for a in alts:
            a.add_node(node)
            if not flatten:
                a.status = "return"
        return alts

    def opaque(self, stmt, ref, frame, alts, reads=None, writes=None) -> list[Alt]:
        """The whole statement as one `stmt` node (no DL nodes inside)."""
        if reads is None or writes is None:
            r, w = set(), set()
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name):
                    (r if isinstance(node.ctx, ast.Load) else w).add(node.id)
                elif isinstance(node, ast.Attribute) and self_attr(node) is not None:
                    (r if isinstance(node.ctx, ast.Load) else w).add("self." + node.attr)
                elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                    w |= writes_of(node)
            reads = r if reads is None else reads
            writes = w if writes is None else writes
        node = self.stmt_node(ref, frame, reads, writes)
        for a in alts:
            a.add_node(node)
        return alts

    def simple(self, stmt, ref, frame, alts) -> list[Alt]:
        """Assignments and expression statements."""
        if isinstance(stmt, ast.Expr):
            targets, value = [], stmt.value
        elif isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            targets, value = [stmt.target], stmt.value
        else:  # AugAssign: `x += y` is the op `x + y -> x`
            targets, value = [stmt.target], None
        if value is None and not isinstance(stmt, ast.AugAssign):
            return self.opaque(stmt, ref, frame, alts)
        # outputs of the top DL expression, when the targets are plain names
        outputs = None
        if len(targets) == 1 and plain_target(targets[0]):
            outputs = tuple(sorted(writes_of(targets[0]), key=name_order(targets[0])))
        if isinstance(stmt, ast.Expr):
            outputs = ()
        if isinstance(stmt, ast.AugAssign):
            op = BINOPS.get(type(stmt.op))
            actions = self.exprs.evaluate(stmt.value, frame, ref)
            target_value = value_of(stmt.target)
            in_value = self.exprs.last_value
            out_names = outputs if outputs else (self.exprs.new_temp(),)
            if op is not None:
                node = Node("op", ref, op=op, inputs=(target_value, in_value), outputs=out_names,
                            reads=frozenset(reads_of(stmt.target) | reads_of(stmt.value, self.exprs.replaced)),
                            writes=frozenset(out_names), inlined_from=frame.inlined_from,
                            expr_span=source_span(stmt))
                actions.append(("node", node))
            alts = self.run_actions(actions, frame, alts)
            if not outputs:
                node = self.stmt_node(ref, frame, {out_names[0]} | target_reads(stmt.target), writes_of(stmt.target))
                for a in alts:
                    a.add_node(node)
            return alts
        actions = self.exprs.evaluate(value, frame, ref, outputs=outputs)
        alts = self.run_actions(actions, frame, alts)
        if self.exprs.top_consumed and (isinstance(stmt, ast.Expr) or outputs):
            return alts  # the DL node is the whole statement
        reads = reads_of(value, self.exprs.replaced)
        writes: set[str] = set()
        for t in targets:
            writes |= writes_of(t)
            reads |= target_reads(t)
        node = self.stmt_node(ref, frame, reads, writes)
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and recorded_def(value):
            node = Node("stmt", ref, reads=node.reads, writes=node.writes, inlined_from=frame.inlined_from,
                        defs=((targets[0].id, unparse_with_temps(value, self.exprs.replaced)),))
        for a in alts:
            a.add_node(node)
        return alts

    def run_actions(self, actions: list, frame: Frame, alts: list[Alt]) -> list[Alt]:
        """Run an expression's actions (`exprs.py`) on the paths still falling through."""
        for action in actions:
            if action[0] == "node":
                for a in alts:
                    if a.status == "fall":
                        a.add_node(action[1])
                continue
            live = [a for a in alts if a.status == "fall"]
            done = [a for a in alts if a.status != "fall"]
            if action[0] == "fork":
                _, text, lines, body, orelse = action
                if self.ctx.options.flatten:
                    alts = done + self.run_actions(orelse, frame, self.run_actions(body, frame, live))
                    continue
                yes, no = split_alts(live, text, lines)
                alts = done + self.cap(self.join(self.run_actions(body, frame, yes),
                                                 self.run_actions(orelse, frame, no)))
                continue
            alts = done + self.cap(inline_call(self, action, frame, live))
        return alts
