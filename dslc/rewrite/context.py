"""The per-file context every kind of rewrite works in.

`Module` is the stdlib `ast` of the file, indexed for the emitter
(statements by position, parents, classes, top-level imports and guarded
imports, the indentation unit).  `Context` holds what the matches of one
run share: the module, the analysis facts, the edits accepted so far and
the offsets they claimed, the attribute names taken per class, and the
import scheduler; its methods spell callees and target nodes
(`callee`, `render_node`), pick fresh attribute names, and build the
common edits (`claim` a statement's text, `delete_stmt`, `fit`).
"""

from __future__ import annotations

import ast
import dataclasses
import keyword
import re

from dslc import codes
from dslc.analysis.api import take_tree
from dslc.fileio import source_lines
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import NameSet, has_word, index_statements
from dslc.rewrite.edits import Edit, SourceMap, reindent, string_interior_lines
from dslc.rewrite.imports import ImportScheduler
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Absent, Env, paren, render_args


class Module:
    """The stdlib `ast` of the source, indexed for the emitter."""

    def __init__(self, source: str, facts):
        self.source = source
        self.smap = SourceMap(source)
        # the tree the analysis parsed from this very text, when it kept it
        self.tree = take_tree(source) or ast.parse(source)
        self.facts = facts
        # every statement (in `ast.walk` order), their parents and positions,
        # the classes: walked over statements only
        self.statements, self.parent, self.stmt_at, self.classes = index_statements(self.tree)
        self.functions: dict[str, ast.FunctionDef] = {}
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
        # classes nested in class bodies also by their dotted name (`Outer.Inner`)
        nested = [(node, node.name) for node in self.tree.body if isinstance(node, ast.ClassDef)]
        while nested:
            outer, prefix = nested.pop()
            for node in outer.body:
                if isinstance(node, ast.ClassDef):
                    self.classes[f"{prefix}.{node.name}"] = node
                    nested.append((node, f"{prefix}.{node.name}"))
        self.imports: dict[str, str] = {}
        self.last_import: ast.stmt | None = None
        for node in self.tree.body:
            if isinstance(node, ast.Import):
                self.last_import = node
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        self.imports[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                self.last_import = node
                if node.module and not node.level:
                    for alias in node.names:
                        self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        # Guarded imports of optional kernels (`try: from m import n` at the
        # top level), as an earlier `dslc apply` wrote them: qualname -> local.
        self.guarded: dict[str, str] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Try):
                for sub in node.body:
                    if isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                        for alias in sub.names:
                            self.guarded[f"{sub.module}.{alias.name}"] = alias.asname or alias.name
        # Only top-level imports are reused: a function-local alias is not in
        # scope where the new code goes.
        sure = {n for n in self.classes if "." not in n} | set(self.functions) | set(self.imports)
        self.all_names = NameSet(self.tree, source, sure, statements=self.statements)  # walked when a question needs it
        self.unit = self.smap.indent_unit(self.tree, (s.lineno for s in self.statements))
        self.block_unit = _block_unit(self.tree, self.smap) or self.unit
        self.nl = self.smap.newline

    # -- statements -------------------------------------------------------

    def stmt(self, ref) -> ast.stmt:
        found = self.stmt_at.get((ref.lines[0], ref.col))
        if found is None:
            raise Skip(codes.S_LOCATE, f"cannot locate the statement at line {ref.lines[0]}")
        return found

    def block_of(self, stmt: ast.stmt) -> tuple[ast.AST, str, list]:
        parent, fname = self.parent[id(stmt)]
        return parent, fname, getattr(parent, fname)

    def chain(self, stmt: ast.stmt) -> list[tuple[ast.AST, str]]:
        """Enclosing compound statements up to the function, outermost first."""
        out = []
        node = stmt
        while id(node) in self.parent:
            parent, fname = self.parent[id(node)]
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                break
            out.append((parent, fname))
            node = parent
        return list(reversed(out))

    def indent(self, stmt: ast.stmt) -> str:
        return self.smap.indent_of(stmt.lineno)

    def stmt_range(self, stmt: ast.stmt) -> tuple[int, int]:
        """Whole lines of a statement that stands alone on them."""
        line = self.smap.line_text(stmt.lineno)
        before = line.encode("utf-8")[: stmt.col_offset].decode("utf-8", errors="ignore")
        after_line = self.smap.line_text(stmt.end_lineno)
        after = after_line.encode("utf-8")[stmt.end_col_offset :].decode("utf-8", errors="ignore").strip()
        if before.strip() or (after and not after.startswith("#")):
            raise Skip(codes.S_MULTI_STMT, f"line {stmt.lineno} holds more than one statement")
        return self.smap.line_start(stmt.lineno), self.smap.line_end(stmt.end_lineno)

    def stmt_text(self, stmt: ast.stmt, indent: str) -> str:
        """The statement's lines re-indented to `indent` (with the newline)."""
        start, end = self.stmt_range(stmt)
        return self.nl.join(source_lines(reindent(self.source[start:end], self.indent(stmt), indent))) + self.nl

    def ends_with_newline(self, lineno: int) -> bool:
        return self.smap.lines[lineno - 1].endswith(("\n", "\r"))


def _block_unit(tree: ast.Module, smap) -> str | None:
    """The indentation step of the file's blocks: the body of its first
    top-level `def`/`class` (a continuation line indented by 2 does not count)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            inner = smap.indent_of(node.body[0].lineno)
            outer = smap.indent_of(node.lineno)
            if len(inner) > len(outer) and inner.startswith(outer):
                return inner[len(outer):]
    return None


class Context:
    """What the matches of one file share, and the edit helpers of every kind."""

    def __init__(self, source: str, facts, path: str):
        self.source = source
        self.facts = facts
        self.path = path
        self.mod = Module(source, facts)
        self.imports = ImportScheduler(self.mod, facts)
        self.accepted: list[Edit] = []
        self.claimed: list[tuple[int, int, str]] = []  # (start, end, who)
        self.taken: dict[str, set[str]] = {}
        self._scripted: list | None = None  # see scripted_functions()
        self.done_locations: dict[tuple, int] = {}
        self.matches: list[ir.Match] = []

    # -- names ------------------------------------------------------------

    def class_names(self, class_name: str | None) -> set[str]:
        if class_name is None:
            return set()
        if class_name not in self.taken:
            names: set[str] = set()
            node = self.mod.classes.get(class_name) or self.mod.classes.get(class_name.rsplit(".", 1)[-1])
            if node is not None:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                        names.add(sub.attr)
                    elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(sub.name)
            cls = safety.find_class(self.facts, class_name)
            if cls is not None:
                names |= set(cls.methods) | {b.attr for b in cls.init} | {u.attr for u in cls.attr_uses}
            self.taken[class_name] = names
        return self.taken[class_name]

    def fresh_attr(self, class_name: str | None, var: str, extra: set[str]) -> str:
        base = re.sub(r"\W", "_", var) or "fused"
        if keyword.iskeyword(base):
            base += "_"
        taken = self.class_names(class_name) | extra
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        return name

    def callee(self, node: ir.PatNode, env: Env, plan: Plan) -> str:
        callee = node.callee
        if callee is None:
            raise Skip(codes.S_TARGET, "target node has no callee")
        if callee.var is not None:
            try:
                return env.var(callee.var.name)
            except Absent:
                raise Skip(codes.S_TARGET, f"target layer `${callee.var.name}` is bound to nothing") from None
        if node.layer_var is not None:
            try:
                return env.var(node.layer_var)
            except Absent:
                raise Skip(codes.S_TARGET, f"target layer `${node.layer_var}` is bound to nothing") from None
        text = self.imports.spell(callee.qualname, plan)
        if callee.subscript is not None:
            text = f"{text}[{env.term(callee.subscript)}]"
        return text

    def render_node(self, pn: ir.PatNode, env: Env, plan: Plan) -> str:
        if pn.kind == "op":
            ops = [paren(env.term(t)) for t in pn.args]
            if len(ops) != 2:
                raise Skip(codes.S_TARGET, f"operator `{pn.op}` needs two operands")
            return f"{ops[0]} {pn.op} {ops[1]}"
        if pn.kind == "unary":
            return f"{pn.op}{paren(env.term(pn.args[0]))}"
        if pn.kind == "wildcard":
            raise Skip(codes.S_TARGET, "a wildcard cannot be emitted")
        callee = pn.callee
        if callee is not None and callee.var is None and pn.layer_var is None and callee.subscript is None \
                and (callee.qualname or "").startswith("torch.Tensor.") and pn.args:
            # a tensor method (the analysis records `x.float()` as `torch.Tensor.float(x)`):
            # written as the method on its first argument (`torch.Tensor` is not a module to import from)
            body = render_args(env, dataclasses.replace(pn, args=pn.args[1:]))
            return f"{paren(env.term(pn.args[0]))}.{callee.qualname.rsplit('.', 1)[1]}({body})"
        args = render_args(env, pn)
        extra = env.extra_args.get(pn.outputs[0].name, ()) if len(pn.outputs) == 1 else ()
        if extra:
            args = ", ".join([a for a in [args] if a] + [f"{k}={v}" for k, v in extra])
        return f"{self.callee(pn, env, plan)}({args})"

    # -- the matched code ------------------------------------------------

    def literal_texts(self, match: ir.Match) -> dict[str, str]:
        """Constants of the matched statements: canonical text -> text as written."""
        ranges = [tuple(n.stmt.lines) for n in match.nodes]
        ranges += [tuple(b.stmt.lines) for b in match.init_nodes.values() if b.stmt is not None]
        ranges = [(lo, hi) for lo, hi in ranges if lo and hi >= lo]
        if not ranges:
            return {}
        out: dict[str, str] = {}
        ranges = sorted(set(ranges))
        stack = [self.mod.tree]
        while stack:  # only the subtrees that reach into one of the matched statements' lines
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if not hasattr(child, "lineno") or any(
                        child.lineno <= hi and (child.end_lineno or child.lineno) >= lo for lo, hi in ranges):
                    stack.append(child)
            if not hasattr(node, "lineno"):
                continue
            is_lit = isinstance(node, ast.Constant) and not isinstance(node.value, bool) and node.value is not None \
                or isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant)
            if not is_lit or not any(lo <= node.lineno and node.end_lineno <= hi for lo, hi in ranges):
                continue
            canonical = ast.unparse(node)
            written = self.mod.smap.span_text((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset))
            if written != canonical and "\n" not in written:
                out.setdefault(canonical, written)
        return out

    def temp_texts(self, match: ir.Match, paths) -> dict[str, str]:
        """Temporaries produced by unmatched nested nodes -> their source text."""
        out: dict[str, str] = {}
        matched = {safety.node_key(n) for n in match.nodes}
        for path in paths[:1]:
            for node in path.nodes:
                if node.expr_span is None or safety.node_key(node) in matched:
                    continue
                for name in node.outputs:
                    if safety.TEMP_RE.match(name):
                        out[name] = self.mod.smap.span_text(node.expr_span)
        for node in match.nodes:
            if matched_view(node):
                out[node.outputs[0]] = self.mod.smap.span_text(node.expr_span)
        return out

    def statements_between(self, lo: ast.stmt, hi: ast.stmt) -> list[ast.stmt]:
        """Statements that start after `lo` ends and end before `hi` starts."""
        lo_end, hi_start = lo.end_lineno or lo.lineno, hi.lineno
        return [st for st in self.mod.statements if st.lineno > lo_end and (st.end_lineno or st.lineno) < hi_start]

    def check_scripted(self, match: ir.Match) -> str | None:
        """A match inside a TorchScript-compiled function is not rewritten.

        `@torch.jit.script` compiles the function when the module is
        imported; a call of an external kernel (a Triton or epoi op) there
        fails to compile, so the rewrite would break the import.  Rules
        whose kernels are all `torch.*` stay applicable.
        """
        if not match.nodes or all(k.startswith("torch.") for k in match.rule.kernels):
            return None
        line = match.nodes[-1].stmt.lines[0]
        for fn, text in self.scripted_functions():
            if fn.lineno <= line <= (fn.end_lineno or fn.lineno):
                return (f"`{fn.name}` (line {fn.lineno}) is compiled by @{text}: "
                        f"the kernel {', '.join(match.rule.kernels)} cannot be called from TorchScript")
        return None

    def scripted_functions(self) -> list:
        """The functions decorated with `torch.jit.script` (one walk per file)."""
        if self._scripted is None:
            self._scripted = []
            if has_word(self.mod.source, "script"):  # `...script` ends the decorator's text
                for fn in self.mod.statements:
                    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        continue
                    for deco in fn.decorator_list:
                        target = deco.func if isinstance(deco, ast.Call) else deco
                        text = ast.unparse(target)
                        head, _, last = text.rpartition(".")
                        origin = self.mod.imports.get(text) or self.mod.imports.get(head.split(".")[0], "")
                        if last == "script" and ("jit" in head or "jit" in origin):
                            self._scripted.append((fn, text))
        return self._scripted

    # -- edit helpers -----------------------------------------------------

    def relative_text(self, expr: ast.expr, stmt: ast.stmt) -> str:
        """An expression's source; continuation lines lose the statement's indentation."""
        text = self.mod.smap.span_text((expr.lineno, expr.col_offset, expr.end_lineno, expr.end_col_offset))
        return "\n".join(source_lines(reindent(text, self.mod.indent(stmt), "", first=False)))

    def lines_text(self, items: list[str], indent: str) -> str:
        """Statements (possibly multi-line, relative indentation) at `indent`."""
        out = []
        for item in items:
            inside = string_interior_lines(item)  # a multi-line string's lines are its value: kept
            for i, line in enumerate(item.split("\n")):
                out.append(line if i in inside else indent + line if line.strip() else "")
        return "".join(line + self.mod.nl for line in out)

    def fit(self, text: str, stmt: ast.stmt) -> str:
        """Drop the final newline when the replaced statement had none (end of file)."""
        if not self.mod.ends_with_newline(stmt.end_lineno) and text.endswith(("\n", "\r")):
            return text.rstrip("\r\n")
        return text

    def span_offsets(self, span) -> tuple[int, int]:
        lo, col, hi, end_col = span
        return self.mod.smap.offset(lo, col), self.mod.smap.offset(hi, end_col)

    @staticmethod
    def span_len(span) -> tuple:
        if span is None:
            return (-1,)
        return (span[2] - span[0], span[3] - span[1] if span[2] == span[0] else span[3])

    def claim(self, plan: Plan, start: int, end: int, text: str, stmt: ast.stmt) -> None:
        plan.edits.append(Edit(start, end, text))
        plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))

    def delete_stmt(self, plan: Plan, stmt: ast.stmt, *, also_deleted: set[int], merge_blank: bool = True) -> None:
        """Delete a statement's lines; the last deleted statement of a block that empties gets `pass`."""
        mod = self.mod
        start, end = mod.stmt_range(stmt)
        # Deleting a statement between two blank lines would leave a double gap.
        before = stmt.lineno - 1
        after = stmt.end_lineno + 1
        if merge_blank and before >= 1 and after <= len(mod.smap.lines) and not mod.smap.line_text(before).strip() \
                and not mod.smap.line_text(after).strip() and mod.ends_with_newline(after):
            end = mod.smap.line_end(after)
        _, _, body = mod.block_of(stmt)
        text = ""
        if all(id(s) in also_deleted for s in body) and stmt is max(body, key=lambda s: s.lineno):
            text = self.fit(mod.indent(stmt) + "pass" + mod.nl, stmt)
        plan.edits.append(Edit(start, end, text))
        plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))


def matched_view(node) -> bool:
    """A matched nested `name.transpose(c, c)` (a view of a name, constant
    dims): the target may spell its temporary by its source text, which
    reads only that name (`ForwardFusion` checks it is not reassigned
    before the final statement)."""
    return (node.kind == "call" and node.type == "torch.Tensor.transpose" and node.expr_span is not None
            and len(node.outputs) == 1 and bool(safety.TEMP_RE.match(node.outputs[0]))
            and len(node.inputs) == 3 and node.inputs[0].kind == "name"
            and all(v.is_const for v in node.inputs[1:]) and not node.kwargs)
