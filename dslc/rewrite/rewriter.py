"""Synthesis of the rewritten code: a `Match` + its rule's targets -> edits.

`rewrite_source(source, facts, matches)` is a pure function.  For each match,
in order (paper §3.5):

1. Safety (`dslc.rewrite.safety`): conflicts from the matcher, guards, `where`
   constraints over non-static values, `when`, data flow, attribute uses.
2. Plan the forward edits: group the matched nodes by statement; the
   statement of the last node keeps its place and gets the target
   expression in place of the last node's expression (`Node.expr_span`);
   every other matched statement must be a plain `name = <matched call>` and
   is deleted.  An earlier statement that sits outside the `if` holding the
   last one is hoisted: copied to the start of the other branch (an `else:`
   is created when missing) and deleted from its place (paper Fig. 4–5).
   Mirrored: when the earlier statements sit in a branch and the last one
   after it, the last one (fused) moves to the end of that branch and an
   unchanged copy goes to the end of every other branch.
3. Plan the init edits (`plan_init`): init statements of source variables
   that the target does not produce again are deleted (unless a hoisted copy
   still calls the layer or the target reads `$v.attr`); those it produces
   again are replaced in place; a replaced layer that a hoisted copy still
   calls keeps its statement and is re-assigned under the branch's guard
   (Fig. 5(b)); new variables get fresh attribute names.  New statements go
   where the last changed statement was (same block, so a conditional init
   stays under its guard).  A layer variable used as a target argument
   stands for its original constructor call.  A `when` option duplicates the
   run of statements holding the edits as `if <cond>: <new> else: <old>`
   (such matches go last, so other rewrites in that run land in both
   branches); unchanged parameter-free torch.nn layers in that run that
   nothing on either side reads go before the `if` instead
   (`wrap_when_moved`).
   Layers inside a container: when the matched layers are consecutive
   elements of one `self.<seq> = nn.Sequential(e0, e1, ...)` literal and
   the match is the one call of `self.<seq>`, forward is left alone and
   only that constructor call changes: element i becomes the init target
   (built from the element expressions), the later matched elements
   `nn.Identity()`, so no index moves (`plan_sequential`; the refusals are
   listed there and in `_sequential_uses`).  Other containers are skipped.
4. Checkpoint names: non-identity `params` mappings register a
   load_state_dict pre-hook (a helper emitted once per file).
5. Imports for new qualified callees, once per file, after the last
   top-level import.
6. Every match's edits are combined with the accepted ones; a match whose
   edits overlap accepted ones is skipped with the reason.  The combined
   output must parse and be unchanged outside the edits
   (`safety.verify_output`); if it does not parse, the run is repeated with
   a parse after each match so that only the culprit is skipped.
"""

from __future__ import annotations

import ast
import keyword
import re
import textwrap
from dataclasses import dataclass, field
from typing import Literal

from dslc.lang import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.analysis.model import Guard
from dslc.rewrite.edits import Edit, EditConflict, SourceMap, apply_edits, parse_error

HOOK_HELPER = "_dslc_remap_state_dict"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one match: `applied`, or `skipped` with the reason."""

    match: ir.Match
    status: Literal["applied", "skipped"]
    reason: str | None
    lines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RewriteResult:
    """The new source (None when nothing changed) and one outcome per match."""

    new_source: str | None
    outcomes: tuple[Outcome, ...]


class Skip(Exception):
    """A match cannot be rewritten: `Skip(CODE, message)` or `Skip(reason)`.

    `reason` (a `codes.Reason`) is the report's reason: the message and its
    registered code (dslc/lang/codes.py).  A plain string without a code gets
    S499, which the tests flag.
    """

    def __init__(self, code_or_reason: str, message: str | None = None) -> None:
        if message is not None:
            reason = codes.reason(code_or_reason, message)
        elif isinstance(code_or_reason, codes.Reason):
            reason = code_or_reason
        else:
            reason = codes.Reason(codes.S_UNCLASSIFIED, str(code_or_reason))
        super().__init__(str(reason))
        self.reason = reason


@dataclass
class _Plan:
    edits: list[Edit] = field(default_factory=list)
    imports: dict[str, str] = field(default_factory=dict)  # qualname -> how it is spelled
    import_lines: list[str] = field(default_factory=list)
    needs_hook: bool = False
    claimed: set[tuple[int, int]] = field(default_factory=set)  # (start, end) offsets of edited statements
    new_attrs: dict[str, set[str]] = field(default_factory=dict)  # class -> new attribute names
    lines: set[int] = field(default_factory=set)
    # Accepted edits (of earlier matches) that a `when` region absorbed into both branches.
    absorbed: list[Edit] = field(default_factory=list)
    # Generated per-call dispatch helpers: name -> definition (rules with `fallback`).
    helper_defs: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The module: statements, parents, names


class _Module:
    """The stdlib `ast` of the source, indexed for the emitter."""

    def __init__(self, source: str, facts):
        self.source = source
        self.smap = SourceMap(source)
        self.tree = ast.parse(source)
        self.facts = facts
        self.parent: dict[int, tuple[ast.AST, str]] = {}
        self.stmt_at: dict[tuple[int, int], ast.stmt] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.all_names: set[str] = set()
        for node in ast.walk(self.tree):
            for fname, value in ast.iter_fields(node):
                if isinstance(value, list):
                    for child in value:
                        if isinstance(child, ast.stmt):
                            self.parent[id(child)] = (node, fname)
            if isinstance(node, ast.stmt):
                self.stmt_at.setdefault((node.lineno, node.col_offset), node)
            if isinstance(node, ast.ClassDef):
                self.classes.setdefault(node.name, node)
            if isinstance(node, ast.Name):
                self.all_names.add(node.id)
            elif isinstance(node, ast.arg):
                self.all_names.add(node.arg)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.all_names.add(node.name)
            elif isinstance(node, ast.alias):
                self.all_names.add((node.asname or node.name).split(".")[0])
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
        self.unit = self.smap.indent_unit()
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
        old = self.indent(stmt)
        out = []
        for raw in self.source[start:end].splitlines():
            out.append(indent + raw[len(old):] if raw.startswith(old) else raw)
        return self.nl.join(out) + self.nl

    def ends_with_newline(self, lineno: int) -> bool:
        return self.smap.lines[lineno - 1].endswith(("\n", "\r"))


# ---------------------------------------------------------------------------
# Rendering target terms


class _Absent(Exception):
    pass


_ATOM = (ast.Name, ast.Attribute, ast.Call, ast.Constant, ast.Subscript, ast.List, ast.Tuple, ast.Dict)


def _paren(text: str) -> str:
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return f"({text})"
    if isinstance(node, _ATOM) and not (isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and text.startswith("-")):
        return text
    return f"({text})"


class _Env:
    """Abstract variable -> source text, for one match."""

    def __init__(self, match: ir.Match, attrs: dict[str, str], temps: dict[str, str]):
        self.match = match
        self.attrs = attrs  # layer var -> attribute name (after the rewrite)
        self.temps = temps  # temp name -> source expression
        self.inline: dict[str, str] = {}
        self.casts: dict[str, str] = {}
        # Init targets: a layer variable as an argument is its original constructor call.
        self.ctor: dict[str, str] = {}
        # A constant's canonical text -> its spelling in the matched statements
        # (`1e-06` -> `1e-6`): literals are copied from the source, not re-printed.
        self.literals: dict[str, str] = {}
        # Init targets: constructor arguments the rule does not name, carried
        # over to the target node that binds the same variable (`_ctor_extras`).
        self.extra_args: dict[str, list[tuple[str, str]]] = {}

    def var(self, name: str) -> str:
        if name in self.inline:
            return self.inline[name]
        if name in self.attrs:
            return f"self.{self.attrs[name]}"
        bound = self.match.bindings.get(name)
        if bound is None:
            raise _Absent(name)
        if bound.kind == "layer":
            text = f"self.{bound.text}"
        elif bound.kind == "const":
            text = bound.text if bound.text else repr(bound.value)
            text = self.literals.get(text, text)
        else:
            if not bound.text:
                raise _Absent(name)
            text = self.temps.get(bound.text, bound.text)
            if safety.TEMP_RE.match(text):
                # the result of an inlined helper (`self.iterative_inv(k)`):
                # no expression of the source to put in the target
                raise Skip(codes.S_INLINED_VALUE, f"`${name}` is the result of an inlined call (`{text}`), which the target cannot spell")
        if name in self.casts:
            text = f"{_paren(text)}.to({self.casts[name]})"
        return text

    def term(self, term) -> str:
        if isinstance(term, ir.Var):
            if term.name in self.ctor:
                return self.ctor[term.name]
            return self.var(term.name)
        if isinstance(term, ir.Const):
            return repr(term.value)
        if isinstance(term, ir.AttrOf):
            return f"{_paren(self.var(term.base.name))}.{term.attr}"
        if isinstance(term, ir.Expr):
            ops = [_paren(self.term(t)) for t in term.operands]
            if len(ops) == 1:
                return f"{term.op}{ops[0]}"
            return f" {term.op} ".join(ops)
        raise Skip(codes.S_TARGET, f"cannot render target term {term!r}")


def _render_args(env: _Env, node: ir.PatNode) -> str:
    parts = []
    for arg in node.args:
        try:
            parts.append(env.term(arg))
        except _Absent as exc:
            raise Skip(codes.S_TARGET, f"target argument `${exc.args[0]}` has no value in the source") from None
    for key, value in node.kwargs:
        if _unwritten_default(env, node, key, value):
            continue  # the source did not write it and the callee's default is the same value
        try:
            parts.append(f"{key}={env.term(value)}")
        except _Absent:
            continue  # an absent keyword is omitted (the callee's default applies)
    return ", ".join(parts)


def _unwritten_default(env: _Env, node: ir.PatNode, key: str, value) -> bool:
    """A target keyword whose variable the matched call left to the source
    signature's default (`nn.LayerNorm(6)`: `$eps` is 1e-05) is left out of
    the emitted call only when that provably changes nothing: the target's
    signature is known and its default for `key` is the same constant.  An
    unknown target signature keeps the keyword (its default is not assumed)."""
    from dslc.match import signatures

    if not isinstance(value, ir.Var) or value.name in env.inline or value.name in env.attrs \
            or value.name in env.casts or value.name in env.ctor:
        return False
    bound = env.match.bindings.get(value.name)
    if bound is None or not bound.defaulted or bound.kind != "const":
        return False
    qual = node.callee.qualname if node.callee is not None else None
    sig = signatures.signature(qual) if qual else None
    if sig is None:
        return False
    param = next((p for p in sig.params if p.name == key and p.kind in ("pos", "kwonly")), None)
    d = param.default if param is not None else None
    return (d is not None and d.is_const and type(d.const) is type(bound.value) and _const_same(d.const, bound.value))


def _const_same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(type(x) is type(y) and _const_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


# torch.nn layers with no parameters and no buffers (so none draws random
# numbers when built): moving a `when` rewrite's statements across them keeps
# every layer's initial values under a fixed seed and the order of
# `parameters()` / `buffers()` (optimizer checkpoints are positional).
_NO_RANDOM_INIT = frozenset(f"torch.nn.{n}" for n in (
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "Flatten", "Unflatten",
    "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "LeakyReLU", "ELU", "Mish",
    "Hardswish", "Hardsigmoid", "Softplus", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d"))


def _self_attr(node) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id] + parts[::-1])


def _vars_in(term) -> set[str]:
    if isinstance(term, ir.Var):
        return {term.name}
    if isinstance(term, ir.AttrOf):
        return {term.base.name}
    if isinstance(term, ir.Expr):
        out: set[str] = set()
        for t in term.operands:
            out |= _vars_in(t)
        return out
    return set()


def _attrof_bases(node: ir.PatNode) -> set[str]:
    out: set[str] = set()

    def walk(term) -> None:
        if isinstance(term, ir.AttrOf):
            out.add(term.base.name)
        elif isinstance(term, ir.Expr):
            for t in term.operands:
                walk(t)

    for t in list(node.args) + [v for _, v in node.kwargs]:
        walk(t)
    return out


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
    from dslc.analysis.model import Guard

    return Guard(ast.unparse(compound.test), branch == "orelse", (compound.lineno, compound.lineno))


def _indent_lines(text: str, unit: str) -> str:
    return "".join(unit + line if line.strip() else line for line in text.splitlines(keepends=True))


def _node_vars(node: ir.PatNode) -> set[str]:
    out: set[str] = set()
    for t in list(node.args) + [v for _, v in node.kwargs]:
        out |= _vars_in(t)
    if node.callee is not None:
        if node.callee.var is not None:
            out.add(node.callee.var.name)
        if node.callee.subscript is not None:
            out |= _vars_in(node.callee.subscript)
    return out


# ---------------------------------------------------------------------------
# The rewriter


class _Rewriter:
    def __init__(self, source: str, facts, path: str):
        self.source = source
        self.facts = facts
        self.path = path
        self.mod = _Module(source, facts)
        self.accepted: list[Edit] = []
        self.claimed: list[tuple[int, int, str]] = []  # (start, end, who)
        self.imports: dict[str, str] = {}  # qualname -> spelling
        self.import_lines: list[str] = []
        self.needs_hook = HOOK_HELPER in self.mod.all_names
        self.hook_present = self.needs_hook
        self.helper_defs: dict[str, str] = {}
        self.taken: dict[str, set[str]] = {}
        self._scripted: list | None = None  # see scripted_functions()
        self.done_locations: dict[tuple, int] = {}
        self._effects_cache: dict[tuple, object] = {}
        self._sibling_cache: dict[tuple, list] = {}
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

    def spell(self, qualname: str, plan: _Plan) -> str:
        """How the file names `qualname`: an existing import or alias, else a new import."""
        if qualname in self.imports:
            return self.imports[qualname]
        if qualname in plan.imports:
            return plan.imports[qualname]
        imports = self.mod.imports
        for local, qual in sorted(imports.items()):
            if qual == qualname:
                plan.imports[qualname] = local
                return local
        if "." not in qualname:
            plan.imports[qualname] = qualname
            return qualname
        module, name = qualname.rsplit(".", 1)
        if module == getattr(self.facts, "module", None) and name not in imports and any(
                isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and st.name == name
                for st in self.mod.tree.body):
            # defined in this very file (transformers' modeling_llama calling its
            # own apply_rotary_pos_emb): its own name, not a self-import
            plan.imports[qualname] = name
            return name
        for local, qual in sorted(imports.items()):
            if qual == module:
                spelled = f"{local}.{name}"
                plan.imports[qualname] = spelled
                return spelled
        taken = self.mod.all_names | {s.split(".")[0] for s in self.imports.values()} | {s.split(".")[0] for s in plan.imports.values()}
        if name not in taken:
            plan.imports[qualname] = name
            plan.import_lines.append(f"from {module} import {name}")
            return name
        root = module.split(".")[0]
        if root in imports and imports[root] != root:
            raise Skip(codes.S_IMPORT_CLASH, f"cannot import `{qualname}`: `{name}` and `{root}` are both taken in this file")
        plan.imports[qualname] = qualname
        if imports.get(root) != root or module != root:
            plan.import_lines.append(f"import {module}")
        return qualname

    def callee(self, node: ir.PatNode, env: _Env, plan: _Plan) -> str:
        callee = node.callee
        if callee is None:
            raise Skip(codes.S_TARGET, "target node has no callee")
        if callee.var is not None:
            try:
                return env.var(callee.var.name)
            except _Absent:
                raise Skip(codes.S_TARGET, f"target layer `${callee.var.name}` is bound to nothing") from None
        if node.layer_var is not None:
            try:
                return env.var(node.layer_var)
            except _Absent:
                raise Skip(codes.S_TARGET, f"target layer `${node.layer_var}` is bound to nothing") from None
        text = self.spell(callee.qualname, plan)
        if callee.subscript is not None:
            text = f"{text}[{env.term(callee.subscript)}]"
        return text

    # -- reads of shape, dtype and device -----------------------------------

    def metadata_check(self, match: ir.Match):
        """`metadata_ok(path, pos, q, name)` for `safety.check_dataflow`, or None.

        With `option keeps = "shape,dtype,..."` a read at node `q` of the
        value the matched node at `pos` bound to `name` may stay when it looks
        only at properties the rule keeps (`name.shape`, `name.size()`,
        `name.dim()`, `name.ndim`, `name.dtype`, `name.device`) and, after the
        rewrite, `name` there still holds a value with those properties:
        1. the matched statement stays (the forward target equals the source)
           and the rule keeps the properties of every value it changes;
        2. the matched statement goes: `name` then falls back to its earlier
           definition, which must be the input of a chain of matched calls,
           each of a layer that keeps its input's shape, dtype and device
           (`h = self.dropout(h)`: `h` is the Dropout's input again).
        """
        keeps = {k.strip() for k in str(match.rule.option("keeps") or "").split(",") if k.strip()}
        if not keeps:
            return None
        unchanged_forward = _forward_unchanged(match.rule)
        keys = [safety.node_key(n) for n in match.nodes]

        def ok(path, pos, q, name) -> bool:
            needs = self.metadata_reads(path, q, name)
            if needs is None or not needs <= keeps:
                return False
            if unchanged_forward:
                return True
            positions = safety._positions(path, keys) or []
            while True:
                node = path.nodes[pos]
                if node.kind not in ("layer", "call") or node.type not in SHAPE_KEEPING:
                    return False
                first = node.inputs[0] if node.inputs else None
                if first is None or first.kind != "name" or first.text != name:
                    return False
                earlier = next((r for r in range(pos - 1, -1, -1) if name in safety.writes_of(path.nodes[r])), None)
                if earlier is None or earlier not in positions:
                    return True
                pos = earlier

        return ok

    def package_subclass_uses(self, cls, changed: dict[str, str], *, interface_kept: bool) -> str | None:
        """Subclasses in the other modules of this file's package that use a changed attribute.

        The analysis sees one file; a subclass in a sibling module (same
        folder) inherits the rewritten `__init__` too.  A sibling whose text
        names the class is parsed; a class there that derives from it (by
        name, directly or through other classes of that file) must not call,
        read or assign the attribute in its own methods.  Names are matched
        by spelling, so an unrelated class of the same name refuses too.
        """
        import os

        if cls is None or not changed:
            return None
        here = getattr(self.facts, "path", None) or self.path
        folder = os.path.dirname(os.path.abspath(here))
        try:
            siblings = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
        except OSError:
            return None
        pattern = re.compile(r"\b" + re.escape(cls.name) + r"\b")
        for name in siblings:
            path = os.path.join(folder, name)
            if os.path.abspath(path) == os.path.abspath(here) or not os.path.isfile(path):
                continue
            found = self._sibling_cache.get((path, cls.name))
            if found is None:
                found = []
                try:
                    with open(path, "rb") as fh:
                        raw = fh.read()
                    text = raw.decode("utf-8", errors="replace")
                    if pattern.search(text):
                        found = _subclass_attr_uses(ast.parse(raw), cls.name)
                except (OSError, SyntaxError, ValueError, RecursionError):
                    found = []
                self._sibling_cache[(path, cls.name)] = found
            for sub, attr, line, method, kind in found:
                if attr not in changed or (interface_kept and kind != "store"):
                    continue
                return codes.reason(codes.S_ATTR_USED, f"attribute `self.{attr}`, which the rewrite {changed[attr]}, is also used by the subclass "
                        f"`{sub}` in {name} at line {line} (in `{method}`)")
        return None

    def local_code(self, node) -> bool:
        """Is the node's statement in this file (not inherited from another module)?"""
        owner = node.stmt.owner or ""
        module = getattr(self.facts, "module", None)
        return not owner or owner == module or owner.rsplit(".", 1)[-1] in self.mod.classes \
            or owner.rsplit(".", 1)[-1] in self.mod.functions

    def stmt_effects(self, path, q: int):
        """(reads, definite writes) of a statement the analysis keeps as one opaque node, else None.

        The analysis summarises a loop or `with` without layers as one `stmt`
        node with every name it reads or writes; order and conditions are
        lost (`for h in xs: o = o + h` reads `h` only after writing it, and
        may write nothing), and a comprehension's own variables count as
        reads (`[h * 2 for h in xs]`).  `safety.stmt_effects` recovers them
        from the statement (only when no part of it is a node of its own).
        """
        node = path.nodes[q]
        if node.kind != "stmt" or not self.local_code(node):
            return None
        cache = self._effects_cache
        key = (node.stmt.lines, node.stmt.col)
        if key not in cache:
            found = None
            stmt = self.mod.stmt_at.get((node.stmt.lines[0], node.stmt.col))
            if stmt is not None and (stmt.lineno, stmt.end_lineno) == tuple(node.stmt.lines):
                found = safety.stmt_effects(stmt)
                if found is None and isinstance(stmt, safety._COMPOUND):
                    found = (set(node.reads), frozenset())
            cache[key] = found
        found = cache[key]
        if found is None:
            return None
        lo, hi = node.stmt.lines
        if any(other is not node and lo <= other.stmt.lines[0] <= hi for other in path.nodes):
            return None  # parts of the statement are on the path as nodes of their own
        return found

    def metadata_reads(self, path, q: int, name: str) -> set[str] | None:
        """The properties (shape / dtype / device) the node at `q` reads of `name`,
        or None when some read of `name` there looks at more than those."""
        node = path.nodes[q]
        if not self.local_code(node):
            return None
        try:
            stmt = self.mod.stmt(node.stmt)
        except Skip:
            return None
        if (stmt.lineno, stmt.end_lineno) != tuple(node.stmt.lines):
            return None  # code of another file (inherited)
        whole = (stmt.lineno, stmt.col_offset, stmt.end_lineno, stmt.end_col_offset)
        region = tuple(node.expr_span) if node.expr_span is not None else whole
        key = safety.stmt_key(node)
        inner = [tuple(n.expr_span) for n in path.nodes
                 if n is not node and n.expr_span is not None and safety.stmt_key(n) == key
                 and tuple(n.expr_span) != region and _span_in(tuple(n.expr_span), region)]
        parents: dict[int, ast.AST] = {}
        for sub in ast.walk(stmt):
            for child in ast.iter_child_nodes(sub):
                parents[id(child)] = sub
        needs: set[str] = set()
        for sub in ast.walk(stmt):
            if not (isinstance(sub, ast.Name) and sub.id == name and isinstance(sub.ctx, ast.Load)):
                continue
            at = (sub.lineno, sub.col_offset, sub.end_lineno, sub.end_col_offset)
            if not _span_in(at, region) or any(_span_in(at, span) for span in inner):
                continue
            parent = parents.get(id(sub))
            if isinstance(parent, ast.Attribute) and parent.attr in _META_ATTRS:
                needs.add(_META_ATTRS[parent.attr])
                continue
            if isinstance(parent, ast.Attribute) and parent.attr in _META_METHODS:
                call = parents.get(id(parent))
                if isinstance(call, ast.Call) and call.func is parent:
                    needs.add(_META_METHODS[parent.attr])
                    continue
            return None
        return needs

    # -- one match --------------------------------------------------------

    def copied_layer_uses(self, match: ir.Match, paths) -> dict[str, str]:
        """Attributes `self.<a>` named in a value the forward target copies: attr -> variable."""
        rule = match.rule
        wanted: set[str] = set()
        for pn in rule.forward.target:
            wanted |= _node_vars(pn)
        temps = self.temp_texts(match, paths)
        out: dict[str, str] = {}
        for var in sorted(wanted):
            bound = match.bindings.get(var)
            if bound is None or bound.kind not in ("name", "expr") or not bound.text:
                continue
            text = temps.get(bound.text, bound.text)
            for attr in re.findall(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)", text):
                out.setdefault(attr, var)
        return out

    def statements_between(self, lo: ast.stmt, hi: ast.stmt) -> list[ast.stmt]:
        """Statements that start after `lo` ends and end before `hi` starts."""
        lo_end, hi_start = lo.end_lineno or lo.lineno, hi.lineno
        return [st for st in ast.walk(self.mod.tree)
                if isinstance(st, ast.stmt) and st.lineno > lo_end and (st.end_lineno or st.lineno) < hi_start]

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
            if "script" in self.mod.source:
                for fn in ast.walk(self.mod.tree):
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

    def plan(self, match: ir.Match) -> _Plan:
        rule = match.rule
        plan = _Plan()
        reason = safety.check_conflict(match)
        if reason:
            raise Skip(reason)
        if match.function.startswith("_dslc_"):
            raise Skip(codes.S_GENERATED, f"inside `{match.function}`, a dispatch helper that dslc generated")
        if match.klass is not None:
            reason = safety.check_constraints(match)
            if reason:
                raise Skip(reason)
            self.plan_class(match, plan)
            return plan
        if rule.fallback == "original" and rule.needs:
            # Kernels of required packages are imported under a guard.
            for item in (rule.init, rule.forward):
                for pn in (item.target or ()) if item is not None else ():
                    qual = pn.callee.qualname if pn.callee is not None and pn.callee.var is None else None
                    if qual and any(qual == n.module or qual.startswith(n.module + ".") for n in rule.needs):
                        self.guarded_import(qual, plan)
        reason = self.check_scripted(match)
        if reason:
            raise Skip(codes.S_SCRIPTED, reason)
        reason = safety.check_constraints(match)
        if reason:
            raise Skip(reason)
        condition = self.when_condition(match)
        forward_edit = rule.forward is not None and rule.forward.target is not None
        init_edit = rule.init is not None and rule.init.target is not None
        if rule.fallback == "original" and rule.needs and init_edit:
            # Per construction: the kernel's layer where its needs are met, else the original.
            needs = self.needs_condition(match, plan, rule.init.target, per_call=False)
            condition = f"{needs} and ({condition})" if condition else needs
        reason = safety.check_when(match, condition)
        if reason:
            raise Skip(reason)
        cls = safety.find_class(self.facts, match.class_name)
        paths = safety.paths_through(match, self.facts) if match.nodes else []
        if match.nodes and not paths:
            raise Skip(codes.S_NO_PATH, f"the matched nodes are on no path of `{match.function}`; the data flow cannot be checked")
        reason, feasible = safety.check_guards(match, paths)
        if reason:
            raise Skip(reason)

        guarded = self.none_guarded_layer(match)
        if guarded is not None:
            self.plan_none_guarded(match, cls, guarded, condition, plan, feasible or paths)
            return plan
        across = self.removed_in_helper(match)
        if across is not None:
            self.plan_across_helper(match, cls, across, condition, plan, feasible or paths)
            return plan

        forward_edit = rule.forward is not None and rule.forward.target is not None
        # An init item whose target is its source only names a layer the
        # forward calls (sdpa.adr's attention Dropout): no init edit, and the
        # attribute is neither replaced nor removed.
        init_edit = rule.init is not None and rule.init.target is not None and rule.init.target != rule.init.source
        if init_edit and any(getattr(b, "container", None) for b in match.init_nodes.values()):
            if self.module_list_replacement(match, cls):
                self.plan_module_list(match, cls, condition, plan)
            else:
                self.plan_sequential(match, cls, condition, plan)
            return plan
        if rule.forward is not None and not match.nodes:
            raise Skip(codes.S_NOT_CALLED, "no forward call of the matched layer was found")
        if rule.forward is None and rule.init is not None and cls is not None:
            attrs = {b.attr for b in match.init_nodes.values()}
            if not any(u.attr in attrs and u.kind == "call" for u in cls.attr_uses):
                raise Skip(codes.S_NOT_CALLED, "the matched layer is never called, so replacing it is pointless")

        # Forward structure: statements, hoisting.  A forward target equal to
        # its source (biased_gelu: only the init changes) needs no forward edit.
        detect_only = rule.forward is None or rule.forward.target is None
        unchanged_forward = forward_edit and _forward_unchanged(rule)
        if unchanged_forward:
            forward_edit = False
        if condition and forward_edit:
            raise Skip(codes.S_WHEN_FORWARD, "a rule with `when` must leave forward unchanged (its old layers live only in the `else` branch)")
        groups = self.forward_groups(match) if forward_edit else []
        hoisted_attrs: set[str] = set()
        hoist_guards: list = []
        if groups:
            final_stmt = groups[-1][2]
            final_chain = self.mod.chain(final_stmt)
            for _, nodes, stmt in groups[:-1]:
                if self.needs_hoist(stmt, final_stmt):
                    chain = self.mod.chain(stmt)
                    if _is_prefix(final_chain, chain):
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

        # Init changes: which source layers are deleted, replaced in place,
        # kept (still called by a hoisted copy / referenced as `$v.attr`), or
        # kept and re-assigned under the branch's guard (hoisted and replaced).
        source_vars, target_vars = {}, {}
        if init_edit:
            for pn in rule.init.source:
                for out in pn.outputs:
                    source_vars[out.name] = pn
            for pn in rule.init.target:
                for out in pn.outputs:
                    target_vars[out.name] = pn
        attr_refs: set[str] = set()
        for pn in (rule.init.target if init_edit else ()):
            attr_refs |= _attrof_bases(pn)
        bindings = dict(match.init_nodes)
        changed: dict[str, str] = {}
        kinds: dict[str, str] = {}
        for var in source_vars:
            binding = bindings.get(var)
            if binding is None:
                raise Skip(codes.S_NO_BINDING, f"init variable `${var}` matched no binding")
            hoisted = binding.attr in hoisted_attrs
            if var in target_vars:
                kinds[var] = "reassigned" if hoisted else "replaced"
                changed[binding.attr] = "replaces"
            elif hoisted or var in attr_refs:
                kinds[var] = "kept"
            else:
                kinds[var] = "deleted"
                changed[binding.attr] = "removes"

        # A value the forward target copies (a residual `self.drop(x)` nested
        # in the matched statement) keeps its own uses of layers: those uses
        # survive the rewrite although they sit in a matched statement.
        copied_uses = self.copied_layer_uses(match, feasible or paths) if forward_edit else {}

        # A parameter-free layer the rewrite would delete but that other code
        # still uses (a shared `self.dropout`) stays as it is for those uses:
        # the fused layer is built from its arguments, so nothing is tied.
        for var, kind in list(kinds.items()):
            binding = bindings[var]
            if kind != "deleted" or binding.type not in STATELESS:
                continue
            alone = {binding.attr: "removes"}
            if (binding.attr in copied_uses
                    or safety.check_attr_uses(match, cls, alone, interface_kept=detect_only)
                    or safety.check_subclass_uses(self.facts, cls, alone, interface_kept=detect_only)):
                kinds[var] = "kept"
                del changed[binding.attr]
        for attr, var in copied_uses.items():
            if attr in changed:
                raise Skip(codes.S_ATTR_USED, f"attribute `self.{attr}`, which the rewrite {changed[attr]}, is also used "
                           f"in the value of `${var}`, which the rewritten statement keeps")

        # A rule whose forward target equals its source (biased_gelu) changes
        # only the init: every call site it matched shares that one change, so
        # the calls at those sites are not "uses elsewhere".
        siblings: list = []
        if unchanged_forward:
            mine = _init_attrs(match)
            siblings = [n for m in self.matches if m.rule is rule and _init_attrs(m) == mine for n in m.nodes]
        # A layer built in an inherited `__init__` is shared by every class
        # that inherits it (the base itself, its other subclasses): editing
        # that `__init__` from one subclass's match would change them all.
        # The base's own analysis finds and checks its matches.
        mine = match.class_name or ""
        for binding in bindings.values():
            if binding.attr in changed and binding.stmt is not None:
                owner = _owner_name(binding.stmt.owner, mine)
                if owner != mine:
                    raise Skip(codes.S_INHERITED, f"`self.{binding.attr}` is built in `{owner}.__init__`, inherited; "
                               f"editing it would change every class that shares it")
        reason = safety.check_attr_uses(match, cls, changed, interface_kept=detect_only, also_allowed=siblings)
        if reason:
            raise Skip(reason)
        reason = safety.check_subclass_uses(self.facts, cls, changed, interface_kept=detect_only)
        if reason:
            raise Skip(reason)
        reason = self.package_subclass_uses(cls, changed, interface_kept=detect_only)
        if reason:
            raise Skip(reason)

        # Attribute names after the rewrite.
        attrs: dict[str, str] = {}
        for var, binding in bindings.items():
            attrs[var] = binding.attr
        new_names: set[str] = set()
        for var in target_vars:
            if var not in source_vars:
                name = self.fresh_attr(match.class_name, var, new_names)
                new_names.add(name)
                attrs[var] = name
        temps = self.temp_texts(match, feasible or paths)
        env = _Env(match, attrs, temps)
        env.literals = self.literal_texts(match)
        if init_edit:
            env.extra_args = _ctor_extras(match, kinds)
        if unchanged_forward and match.nodes:
            # No statement changes, but a value the target binds again may
            # (biased_gelu moves the Linear's bias into the activation): such
            # a value must not be read anywhere else, like a removed one.  The
            # init change reaches every call site of the layer, so every site
            # that shares it (the siblings) must pass too.
            sites = [match] + [m for m in self.matches if m is not match and m.rule is rule
                               and m.nodes and _init_attrs(m) == _init_attrs(match)]
            for site in sites:
                site_paths = safety.paths_through(site, self.facts)
                reason = safety.check_dataflow(
                    site, site_paths,
                    produced_again=_produced_again(site),
                    target_inputs=set(), deleted_stmts=set(),
                    final_stmt=safety.stmt_key(site.nodes[-1]),
                    metadata_ok=self.metadata_check(site),
                    effects=self.stmt_effects,
                    scan={site.bindings[v].text for v in _changed_values(rule)
                          if v in site.bindings and site.bindings[v].kind == "name"},
                )
                if reason:
                    if site is not match:
                        reason = codes.Reason(codes.code_of(reason), f"at line {site.nodes[0].stmt.lines[0]}, another call of the changed layer: {reason}")
                    raise Skip(reason)

        if groups:
            self.plan_forward(match, groups, env, plan, feasible or paths)
        if init_edit:
            self.plan_init(match, target_vars, kinds, env, plan, condition, hoist_guards)
        if new_names:
            plan.new_attrs.setdefault(match.class_name or "", set()).update(new_names)
        return plan

    # -- class items --------------------------------------------------------

    def plan_class(self, match: ir.Match, plan: _Plan) -> None:
        """A class item: a dispatch at the top of the class's forward.

        `if <needs met>: <target>; return <result>` goes before the first
        statement of the body; the original body stays as the fallback, so
        the parameters, their names and the computation without the kernel
        are unchanged.  The guard: each kernel import of a required package
        succeeded (a guarded import at the top of the file binds the name to
        None when it fails), the tensor named by `device ... on $x` is on
        that device, every `scalar` variable is a Python number, and the
        run-time type checks of the match (`ACT2FN[key]` activations) hold,
        and the rule's `option check` and `when` conditions.  A rule with no
        needs and no conditions gets `if True:` (the original body stays,
        unreachable, so a checkpoint and a second run see the same class); a
        rule with needs but no `fallback original` is refused.
        """
        rule = match.rule
        k = rule.klass
        if k.target is None:
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
        produced = {o.name for pn in k.forward for o in pn.outputs}
        locals_ = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {a.arg for a in fn.args.args}
        env = _Env(match, {}, {})
        taken = set(locals_) | self.mod.all_names
        stmts: list[str] = []
        # Kernel imports of required packages: guarded, bound to None when missing.
        flags: list[str] = []
        for pn in k.target:
            qual = pn.callee.qualname if pn.callee is not None and pn.kind == "layer" and pn.layer_var is None \
                and pn.callee.var is None else None
            if not qual:
                continue
            need = next((n for n in rule.needs if qual == n.module or qual.startswith(n.module + ".")), None)
            if need is None:
                continue
            name = self.guarded_import(qual, plan)
            flags.append(f"{name} is not None")
        for pn in k.target:
            for v in _node_vars(pn):
                if v in produced and v not in {o.name for t in k.target for o in t.outputs}:
                    raise Skip(codes.S_CLASS_DISPATCH, f"the target reads `${v}`, an intermediate value of the original forward")
        for pn in k.target:
            text = self.render_node(pn, env, plan)
            outs = []
            for o in pn.outputs:
                name = _fresh(f"_dslc_{o.name}", taken)
                taken.add(name)
                env.inline[o.name] = name
                outs.append(name)
            stmts.append(f"{', '.join(outs)} = {text}" if outs else text)
        result = k.forward[-1].outputs[0].name
        if result not in env.inline:
            raise Skip(codes.S_CLASS_DISPATCH, f"the target does not compute `${result}`")
        stmts.append(f"return {env.inline[result]}")
        guard = list(dict.fromkeys(flags))
        for need in rule.needs:
            if need.device is not None and need.var is not None:
                x = env.var(need.var.name)
                guard.append(f"{_paren(x)}.is_cuda" if need.device == "cuda" else f"{_paren(x)}.device.type == 'cpu'")
        for v in k.scalars:
            guard.append(f"isinstance({env.var(v.name)}, (int, float))")
        for expr, typ in getattr(match.klass, "type_checks", ()):
            guard.append(f"isinstance({expr}, {self.spell(typ, plan)})")
        if rule.option("check"):
            guard.append(_paren(self.check_text(str(rule.option("check")), env)))
        condition = self.when_condition(match)
        if condition:  # `when`: one more run-time condition of the dispatch
            guard.append(_paren(condition))
        if not guard:
            guard = ["True"]
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
        text += self.lines_text(stmts, indent + unit)
        at = self.mod.smap.line_start(first.lineno)
        plan.edits.append(Edit(at, at, text))
        plan.claimed.add((at, at))
        plan.lines.update(range(fn.lineno, (fn.end_lineno or fn.lineno) + 1))

    def needs_condition(self, match: ir.Match, plan: _Plan, target, *, per_call: bool, env: "_Env | None" = None) -> str:
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
                parts.append(f"{self.guarded_import(qual, plan)} is not None")
        if not parts:
            raise Skip(codes.S_FALLBACK, "the rule requires a package but its target calls nothing from it")
        if per_call and env is not None and rule.option("check"):
            parts.append(_paren(self.check_text(str(rule.option("check")), env)))
        for need in rule.needs:
            if need.device == "cuda":
                if per_call and need.var is not None and env is not None:
                    try:
                        parts.append(f"{_paren(env.var(need.var.name))}.is_cuda")
                    except _Absent:
                        raise Skip(codes.S_FALLBACK, f"`${need.var.name}` (the tensor whose device is checked) is bound to nothing") from None
                else:
                    parts.append(f"{self.torch_module(plan)}.cuda.is_available()")
        return " and ".join(dict.fromkeys(parts))

    @staticmethod
    def check_text(text: str, env: "_Env") -> str:
        """`option check`: `$v` / `$v.attr` replaced by the bound source text."""
        def sub(m: re.Match) -> str:
            try:
                return _paren(env.var(m.group(1)))
            except _Absent:
                raise Skip(codes.S_FALLBACK, f"`option check` names `${m.group(1)}`, which is bound to nothing here") from None
        return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)

    def dispatch_call(self, match: ir.Match, plan: _Plan, env: "_Env", spn: ir.PatNode, tpn: ir.PatNode) -> str:
        """`_dslc_<pack>_<rule>(args)`: a module-level helper (once per file) that
        calls the kernel where its needs are met and the original call else.

        Every bound value is an argument of the helper, so it is evaluated
        once, at the call site, in the original order.
        """
        rule = match.rule
        for b in match.init_nodes.values():
            if getattr(b, "container", None):
                raise Skip(_container_reason(b))
        if env.casts:
            raise Skip(codes.S_FALLBACK, "the matched call casts its input (dtype=...); the per-call dispatch does not keep casts")
        if any(isinstance(t, ir.Const) and t.value is Ellipsis for t in spn.args):
            raise Skip(codes.S_FALLBACK, "the source pattern takes further arguments (`...`), which the dispatch cannot pass on")
        params: list[str] = []

        def add(names) -> None:
            for v in names:
                if v not in params and v != "_":
                    params.append(v)

        lv = _layer_var(spn)
        if lv is not None:
            add([lv])
        for t in list(spn.args) + [t for _, t in spn.kwargs]:
            add(sorted(_vars_in(t)))
        add(sorted(_node_vars(tpn)))
        add(sorted(_check_vars(rule)))
        add([n.var.name for n in rule.needs if n.var is not None])
        kw_only = set()
        for pn in (spn, tpn):
            for _, t in pn.kwargs:
                if isinstance(t, ir.Var):
                    kw_only.add(t.name)
        for pn in (spn, tpn):
            for t in pn.args:
                kw_only -= _vars_in(t)
            if pn.callee is not None and pn.callee.var is not None:
                kw_only.discard(pn.callee.var.name)
        kw_only -= _check_vars(rule) | {n.var.name for n in rule.needs if n.var is not None}
        call_args = []
        present = []
        for v in params:
            try:
                call_args.append(env.var(v))
                present.append(v)
            except _Absent:
                if v not in kw_only:
                    raise Skip(codes.S_FALLBACK, f"`${v}` is bound to nothing at this call") from None
                # a keyword the call does not give: left out of both calls
        params = present
        names = {v: (v + "_" if keyword.iskeyword(v) else v) for v in params}
        henv = _Env(match, {}, {})
        henv.inline = {v: names[v] for v in params}
        kernel = self.render_node(tpn, henv, plan)
        original = self.render_node(spn, henv, plan)
        cond = self.needs_condition(match, plan, [tpn], per_call=True, env=henv)
        base = re.sub(r"\W", "_", f"_dslc_{rule.pack}_{rule.name}")
        unit, nl = self.mod.block_unit, self.mod.nl
        body = (f"({', '.join(names[v] for v in params)}):{nl}"
                f'{unit}"""Added by `dslc apply` ({rule.qualified_name}): the kernel where it can run, else the original call."""{nl}'
                f"{unit}if {cond}:{nl}{unit * 2}return {kernel}{nl}{unit}return {original}{nl}")
        defs = {**self.helper_defs, **plan.helper_defs}
        helper, n = base, 1
        while True:
            if defs.get(helper) == f"def {helper}{body}":
                break  # the same helper, already generated
            if helper not in defs and self.same_function(helper, f"def {helper}{body}"):
                break  # written by an earlier run
            if helper not in defs and helper not in self.mod.all_names:
                plan.helper_defs[helper] = f"def {helper}{body}"
                break
            n += 1
            helper = f"{base}_{n}"
        return f"{helper}({', '.join(call_args)})"

    def torch_module(self, plan: _Plan) -> str:
        """How the file names the `torch` module (`import torch` added when it has none)."""
        for local, qual in sorted(self.mod.imports.items()):
            if qual == "torch":
                return local
        if "torch" in self.mod.all_names:
            raise Skip(codes.S_FALLBACK, "`torch` names something else in this file; the run-time check needs the torch module")
        if "import torch" not in plan.import_lines and "import torch" not in self.import_lines:
            plan.import_lines.append("import torch")
        return "torch"

    def same_function(self, name: str, text: str) -> bool:
        """Is the module-level function `name` of the file `text` (same code)?"""
        fn = self.mod.functions.get(name)
        if fn is None:
            return False
        try:
            new = ast.parse(text).body[0]
        except SyntaxError:
            return False
        return ast.dump(fn) == ast.dump(new)

    def guarded_import(self, qualname: str, plan: _Plan) -> str:
        """`try: from m import n / except ImportError: n = None` once per file; the local name."""
        if qualname in self.imports:
            return self.imports[qualname]
        if qualname in plan.imports:
            return plan.imports[qualname]
        if qualname in self.mod.guarded:  # written by an earlier run
            plan.imports[qualname] = self.mod.guarded[qualname]
            return self.mod.guarded[qualname]
        module, name = qualname.rsplit(".", 1)
        taken = self.mod.all_names | {v for v in self.imports.values()} | set(plan.imports.values())
        local = name if name not in taken else _fresh(f"_dslc_{name}", taken)
        alias = f" as {local}" if local != name else ""
        unit, nl = self.mod.block_unit, self.mod.nl
        plan.imports[qualname] = local
        plan.import_lines.append(f"try:{nl}{unit}from {module} import {name}{alias}{nl}"
                                 f"except Exception:  # optional kernel (missing package, no Triton): the original code runs{nl}"
                                 f"{unit}{local} = None")
        return local

    def check_scripted_class(self, match: ir.Match, fn: ast.FunctionDef) -> str | None:
        for other, text in self.scripted_functions():
            if other is fn:
                return codes.reason(codes.S_SCRIPTED, f"`forward` is compiled by @{text}: the kernel cannot be called from TorchScript")
        return None

    def literal_texts(self, match: ir.Match) -> dict[str, str]:
        """Constants of the matched statements: canonical text -> text as written."""
        ranges = [tuple(n.stmt.lines) for n in match.nodes]
        ranges += [tuple(b.stmt.lines) for b in match.init_nodes.values() if b.stmt is not None]
        ranges = [(lo, hi) for lo, hi in ranges if lo and hi >= lo]
        if not ranges:
            return {}
        out: dict[str, str] = {}
        lo_all, hi_all = min(lo for lo, _ in ranges), max(hi for _, hi in ranges)
        stack = [self.mod.tree]
        while stack:  # only the subtrees that reach into the matched lines
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if not hasattr(child, "lineno") or (child.lineno <= hi_all and (child.end_lineno or child.lineno) >= lo_all):
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

    def when_condition(self, match: ir.Match) -> str | None:
        raw = match.rule.option("when")
        if not raw:
            return None
        text = str(raw)
        env = _Env(match, {v: b.attr for v, b in match.init_nodes.items()}, {})
        env.literals = self.literal_texts(match)

        def sub(m: re.Match) -> str:
            try:
                return _paren(env.var(m.group(1)))
            except _Absent:
                raise Skip(codes.S_TARGET, f"`when` names `${m.group(1)}`, which is bound to nothing") from None

        return re.sub(r"\$([A-Za-z_]\w*)", sub, text)

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
        return out

    # -- forward ----------------------------------------------------------

    def forward_groups(self, match: ir.Match) -> list[tuple[tuple, list, ast.stmt]]:
        """Matched nodes grouped by statement, in source order; last = the final statement."""
        groups: dict[tuple, list] = {}
        for node in match.nodes:
            if node.kind == "stmt":
                raise Skip(codes.S_TARGET, f"a wildcard matched a plain statement at line {node.stmt.lines[0]}")
            groups.setdefault(safety.stmt_key(node), []).append(node)
        methods = {key[0] for key in groups}
        if len(methods) > 1:
            names = " and ".join(f"`{m}`" for m in sorted(methods))
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods {names}; the emitter cannot edit across them")
        if match.class_name:
            mine = match.class_name
            for node in match.nodes:
                owner = _owner_name(node.stmt.owner, mine)
                if owner != mine:
                    raise Skip(codes.S_INHERITED,
                        f"the matched code at line {node.stmt.lines[0]} is `{owner}.{node.stmt.method}`, inherited; "
                        f"editing it would change every class that shares it"
                    )
        last_key = safety.stmt_key(match.nodes[-1])
        ordered = sorted((k for k in groups if k != last_key), key=lambda k: (k[2][0], k[3]))
        ordered.append(last_key)
        return [(key, groups[key], self.mod.stmt(groups[key][0].stmt)) for key in ordered]

    def needs_hoist(self, earlier: ast.stmt, final: ast.stmt) -> bool:
        return self.mod.block_of(earlier)[2] is not self.mod.block_of(final)[2]

    def plan_forward(self, match: ir.Match, groups, env: _Env, plan: _Plan, paths) -> None:
        rule = match.rule
        mod = self.mod
        smap = mod.smap
        final_key, final_nodes, final_stmt = groups[-1]
        last = match.nodes[-1]
        if last.expr_span is None:
            raise Skip(codes.S_STMT_SHAPE, f"no expression span for the matched call at line {last.stmt.lines[0]}")
        if isinstance(final_stmt, ast.AugAssign):
            raise Skip(codes.S_STMT_SHAPE, f"line {final_stmt.lineno} is an augmented assignment; the emitter does not rewrite its hidden operand")
        lo, hi = self.span_offsets(last.expr_span)
        for node in final_nodes:
            if node.expr_span is None:
                continue
            a, b = self.span_offsets(node.expr_span)
            if a < lo or b > hi:
                raise Skip(codes.S_STMT_SHAPE, f"matched node at line {node.stmt.lines[0]} is not part of the last node's expression")

        deleted_keys: set[tuple] = set()
        for key, nodes, stmt in groups[:-1]:
            outer = max(nodes, key=lambda n: self.span_len(n.expr_span))
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
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

        # Extra arguments of matched function calls the pattern did not mention.
        extras = getattr(match, "extras", {}) or {}
        source_nodes = rule.forward.source
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

        # The target expression: earlier target nodes are inlined into later ones.
        target = rule.forward.target
        uses: dict[str, int] = {}
        for pn in target:
            for v in _node_vars(pn):
                uses[v] = uses.get(v, 0) + 1
        final_text = None
        for i, pn in enumerate(target):
            text = self.render_node(pn, env, plan)
            if i == len(target) - 1:
                final_text = text
                break
            if len(pn.outputs) != 1 or uses.get(pn.outputs[0].name, 0) != 1:
                raise Skip(codes.S_TEMP_VAR, "the target needs a temporary variable, which the emitter does not introduce")
            env.inline[pn.outputs[0].name] = _paren(text) if pn.kind in ("op", "unary") else text
        final_pn = target[-1]

        # Data flow.
        produced_again = _produced_again(match)
        target_inputs: set[str] = set()
        for pn in target:
            for v in _node_vars(pn):
                bound = match.bindings.get(v)
                if bound is not None and bound.kind == "name" and v not in env.inline and bound.text not in env.temps:
                    target_inputs.add(bound.text)
        reason = safety.check_dataflow(
            match, paths,
            produced_again=produced_again,
            target_inputs=target_inputs,
            deleted_stmts=deleted_keys,
            final_stmt=final_key,
            metadata_ok=self.metadata_check(match),
            effects=self.stmt_effects,
        )
        if reason:
            raise Skip(reason)

        if rule.fallback == "original" and rule.needs and (rule.init is None or rule.init.target is None):
            # Per call: a generated helper chooses the kernel or the original call
            # (whatever the statement: one output or several, hoisted or not;
            # `q, k = helper(...)` too).
            if len(target) != 1 or len(source_nodes) != 1:
                raise Skip(codes.S_FALLBACK, "a per-call fallback needs one source node and one target node")
            final_text = self.dispatch_call(match, plan, env, source_nodes[0], target[0])

        final_chain = mod.chain(final_stmt)
        reverse = [stmt for _, _, stmt in groups[:-1]
                   if self.needs_hoist(stmt, final_stmt) and _is_prefix(final_chain, mod.chain(stmt))]
        if reverse:
            self.plan_reverse_hoist(plan, groups, final_stmt, final_text, (lo, hi), len(final_pn.outputs))
            return

        if len(final_pn.outputs) == 1 and self.merge_identical_branches(plan, groups, final_stmt, final_text, (lo, hi)):
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
            start, end = smap.node_span(final_stmt)
            self.claim(plan, start, end, f"{', '.join(names)} = {final_text}", final_stmt)
        else:
            self.claim(plan, lo, hi, final_text, final_stmt)

        # Earlier statements: delete; hoist out of the branch when needed.
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
            self.delete_stmt(plan, stmt, also_deleted={id(s) for _, _, s in groups[:-1]})
        for compound, branch, stmts in hoisted_by_if.values():
            self.copy_into_other_branch(plan, compound, branch, stmts)
        plan.lines.update(range(final_stmt.lineno, final_stmt.end_lineno + 1))

    def plan_reverse_hoist(self, plan: _Plan, groups, final_stmt, final_text: str, span: tuple[int, int], n_outputs: int) -> None:
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
        names = _names(final_stmt)
        for other in block[block.index(outer) + 1 : block.index(final_stmt)]:
            common = names & _names(other)
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
            return "".join(indent + line[len(old_indent):] if line.startswith(old_indent) else line
                           for line in text.splitlines(keepends=True))

        # The branch gets the fused statement, so it never empties: no `pass`.
        for stmt in earlier:
            self.delete_stmt(plan, stmt, also_deleted=set(), merge_blank=False)
        self.delete_stmt(plan, final_stmt, also_deleted=set(), merge_blank=False)
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

    def merge_identical_branches(self, plan: _Plan, groups, final_stmt, final_text: str, span: tuple[int, int]) -> bool:
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
        self.delete_stmt(plan, compound, also_deleted={id(compound)})
        for stmt in earlier:
            plan.claimed.add(mod.stmt_range(stmt))
            plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))
        plan.lines.update(range(final_stmt.lineno, final_stmt.end_lineno + 1))
        return True

    def check_hoist(self, stmt, final_stmt, chain, final_chain, matched_stmts) -> None:
        """Statements the hoisted copy moves past must not touch its names."""
        names = _names(stmt)
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
            common = names & _names(other)
            if common:
                line = getattr(other, "lineno", stmt.lineno)
                raise Skip(codes.S_REORDER,
                    f"hoisting line {stmt.lineno} would move it past line {line}, which uses `{sorted(common)[0]}`"
                )

    def copy_into_other_branch(self, plan: _Plan, compound: ast.If, branch: str, stmts: list[ast.stmt]) -> None:
        mod = self.mod
        stmts = sorted(stmts, key=lambda s: s.lineno)
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

    def render_node(self, pn: ir.PatNode, env: _Env, plan: _Plan) -> str:
        if pn.kind == "op":
            ops = [_paren(env.term(t)) for t in pn.args]
            if len(ops) != 2:
                raise Skip(codes.S_TARGET, f"operator `{pn.op}` needs two operands")
            return f"{ops[0]} {pn.op} {ops[1]}"
        if pn.kind == "unary":
            return f"{pn.op}{_paren(env.term(pn.args[0]))}"
        if pn.kind == "wildcard":
            raise Skip(codes.S_TARGET, "a wildcard cannot be emitted")
        args = _render_args(env, pn)
        extra = env.extra_args.get(pn.outputs[0].name, ()) if len(pn.outputs) == 1 else ()
        if extra:
            args = ", ".join([a for a in [args] if a] + [f"{k}={v}" for k, v in extra])
        return f"{self.callee(pn, env, plan)}({args})"

    # -- init -------------------------------------------------------------

    def plan_init(self, match, target_vars, kinds, env, plan, condition, hoist_guards) -> None:
        """Edits of `__init__` (see the module docstring, step 3).

        1. Locate each matched binding's statement (a plain `self.a = ...`).
        2. Render the target statements; a layer variable used as an argument
           stands for its original constructor call, `$v.attr` for the
           attribute of the layer after the rewrite.
        3. Anchor: the last (in source order) statement that is deleted or
           replaced; the new statements (and the checkpoint hook) go there.
        4. Replaced statements change in place, deleted ones go; a replaced
           layer that a hoisted copy still calls keeps its statement and is
           re-assigned at the anchor, which must sit under a guard equivalent
           to the forward branch that calls the fused layer.
        5. With `when`, the smallest run of statements holding all the edits is
           duplicated: `if <cond>: <edited run> else: <original run>`; the
           unchanged statements of the run go before the `if` instead when
           that provably changes nothing (`wrap_when_moved`).
        """
        mod = self.mod
        rule = match.rule
        bindings = match.init_nodes
        stmts: dict[str, ast.stmt] = {}
        ctor: dict[str, str] = {}
        for var in kinds:
            binding = bindings[var]
            if binding.stmt is None:
                raise Skip(codes.S_LOCATE, f"no statement recorded for `self.{binding.attr}`")
            stmt = mod.stmt(binding.stmt)
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute)):
                raise Skip(codes.S_STMT_SHAPE, f"line {stmt.lineno} is not a plain `self.{binding.attr} = ...`")
            stmts[var] = stmt
            ctor[var] = self.relative_text(stmt.value, stmt)
        env.ctor = ctor
        rendered: dict[str, str] = {}
        order = []
        for pn in rule.init.target:
            if len(pn.outputs) != 1:
                raise Skip(codes.S_TARGET, "an init target node must bind exactly one variable")
            var = pn.outputs[0].name
            rendered[var] = f"self.{env.attrs[var]} = {self.render_node(pn, env, plan)}"
            order.append(var)
        env.ctor = {}
        # Checkpoint compatibility: `$new.key <- $old.key` that is not an identity.
        renames = _param_renames(rule, env.attrs.get, lambda v: getattr(bindings.get(v), "attr", None),
                                 keep=lambda v: kinds.get(v) == "kept")
        # A replaced statement that reads `$u.attr` of a layer built later
        # (`self.act = ...` above `self.fc1 = ...`) moves to the anchor, after it.
        target_of = {pn.outputs[0].name: pn for pn in rule.init.target}
        for var, kind in list(kinds.items()):
            if kind == "replaced":
                deps = [d for d in _attrof_bases(target_of[var]) if d in stmts and d != var]
                if any(stmts[d].lineno > stmts[var].lineno for d in deps):
                    kinds[var] = "moved"
        # A target statement that embeds the constructor call of a layer built
        # later (`ConvBn2d(<conv call>, <bn call>)` at the conv's line) must
        # not move that call above an assignment of a local it reads.
        for var, kind in kinds.items():
            if kind not in ("replaced", "reassigned", "moved"):
                continue
            for arg in list(target_of[var].args) + [v for _, v in target_of[var].kwargs]:
                d = arg.name if isinstance(arg, ir.Var) else None
                if d is None or d not in stmts or d == var:
                    continue
                lo, hi = sorted((stmts[var], stmts[d]), key=lambda st: st.lineno)
                reads = _names(stmts[d].value)
                for st in self.statements_between(lo, hi):
                    written = {n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
                    if written & reads:
                        raise Skip(codes.S_INPUT_CHANGED, f"`{', '.join(sorted(written & reads))}`, which the call at line {stmts[d].lineno} reads, "
                                   f"is assigned at line {st.lineno}, between the statements the fused layer joins")
        candidates = [v for v, k in kinds.items() if k != "kept"]
        if not candidates:
            raise Skip(codes.S_ANCHOR, "nothing in `__init__` to anchor the new layers to")
        anchor_var = max(candidates, key=lambda v: (stmts[v].lineno, stmts[v].col_offset))
        anchor = stmts[anchor_var]
        if kinds[anchor_var] == "reassigned":
            raise Skip(codes.S_ANCHOR, f"`self.{bindings[anchor_var].attr}` must stay as it is for the branch that does not use the fused layer, and nothing else anchors the new one")
        reassigned = [v for v, k in kinds.items() if k == "reassigned"]
        if reassigned:
            self.check_reassign_guard(bindings[anchor_var], hoist_guards, bindings[reassigned[0]].attr)
        indent = mod.indent(anchor)
        new_lines = [rendered[v] for v in order if kinds.get(v) in (None, "reassigned", "moved")]
        if renames:
            plan.needs_hook = True
            new_lines.append(_hook_registration(renames, mod.unit))
        init_plan = _Plan()
        deleted_ids = {id(stmts[v]) for v, k in kinds.items() if k in ("deleted", "moved")}
        for var, kind in kinds.items():
            if var == anchor_var:
                continue
            stmt = stmts[var]
            if kind == "replaced":
                start, end = mod.stmt_range(stmt)
                self.claim(init_plan, start, end, self.fit(self.lines_text([rendered[var]], mod.indent(stmt)), stmt), stmt)
            elif kind in ("deleted", "moved"):
                self.delete_stmt(init_plan, stmt, also_deleted=deleted_ids)
        start, end = mod.stmt_range(anchor)
        if kinds[anchor_var] == "deleted" and not new_lines:
            self.delete_stmt(init_plan, anchor, also_deleted=deleted_ids)
        else:
            lines = new_lines if kinds[anchor_var] == "deleted" else [rendered[anchor_var]] + new_lines
            self.claim(init_plan, start, end, self.fit(self.lines_text(lines, indent), anchor), anchor)
        if condition:
            self.wrap_when(init_plan, [stmts[v] for v in candidates], condition)
        plan.edits.extend(init_plan.edits)
        plan.claimed |= init_plan.claimed
        plan.lines |= init_plan.lines
        plan.absorbed.extend(init_plan.absorbed)

    # -- a layer guarded by `if self.<attr> is not None:` (issue 8 item 12) --

    def none_guarded_layer(self, match: ir.Match):
        """(var, node index, `if` statement) when the matched call of a layer
        the rewrite removes is the only statement of `if self.<attr> is not
        None:` (mobilenet/mobilevit: `__init__` binds the layer under a
        condition and `None` otherwise); None for any other shape."""
        rule = match.rule
        if rule.forward is None or rule.forward.target is None or rule.init is None or rule.init.target is None:
            return None
        if len(match.nodes) != len(rule.forward.source):
            return None
        target_vars = {o.name for pn in rule.init.target for o in pn.outputs}
        for i, (pn, node) in enumerate(zip(rule.forward.source, match.nodes)):
            var = pn.layer_var
            if var is None or var in target_vars or node.kind != "layer" or not node.attr:
                continue
            try:
                stmt = self.mod.stmt(node.stmt)
            except Skip:
                return None
            parent, fname = self.mod.parent.get(id(stmt), (None, None))
            if isinstance(parent, ast.If) and fname == "body" and _is_not_none_test(parent.test, node.attr):
                return var, i, parent
        return None

    def plan_none_guarded(self, match: ir.Match, cls, guarded, condition, plan: _Plan, paths) -> None:
        """Rewrite a match whose removed layer `$a` is called under
        `if self.a is not None:` while `__init__` binds `self.a` to the layer
        under a guard G and to `None` where G fails.

        Forward stays as it is.  At the layer's binding (under G) the statement
        becomes the rule's init target, built from the layers that already
        exist (`self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(...))`), then
        `self.a = None`: under G the fused layer runs and the guarded call is
        skipped; where G fails nothing changes.  Only for rules whose forward
        target is the source without the removed layer's call (`$conv($x) ->
        $h; $bn($h) -> $o` => `$conv($x) -> $o`), so that the unchanged
        forward computes the target; every other shape is refused here with
        its reason."""
        var, index, if_stmt = guarded
        rule = match.rule
        mod = self.mod
        where = f"the call of `self.{match.nodes[index].attr}` under `if ... is not None:` at line {if_stmt.lineno}"
        if condition:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: a rule with `when` is not rewritten there")
        if index != len(match.nodes) - 1 or index == 0:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: it is not the last matched call after the others")
        source_pn = rule.forward.source[index]
        if len(source_pn.args) != 1 or source_pn.kwargs or len(source_pn.outputs) != 1 \
                or not isinstance(source_pn.args[0], ir.Var):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the removed layer's pattern is not `$a($in) -> $out`")
        rename = {source_pn.outputs[0].name: source_pn.args[0].name}
        rest = [_renamed(pn, rename) for j, pn in enumerate(rule.forward.source) if j != index]
        if rest != [_renamed(pn, rename) for pn in rule.forward.target]:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the rule's forward target is not its source without that call")
        node = match.nodes[index]
        stmt = if_stmt.body[0]
        if len(if_stmt.body) != 1 or if_stmt.orelse:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the `if` holds more than the call")
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if not (value is not None and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
                and isinstance(value.args[0], ast.Name) and value.args[0].id == stmt.targets[0].id
                and node.expr_span == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the call is not `v = self.<layer>(v)`")
        name = stmt.targets[0].id
        for other in match.nodes:
            if other.stmt.method != node.stmt.method or other.inlined_from != node.inlined_from:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: the matched calls are in different methods")
        # Every path runs all the matched calls, or (`self.a` is None) all but the guarded one.
        keys = [safety.node_key(n) for j, n in enumerate(match.nodes) if j != index]
        mine = safety.node_key(node)
        around = Guard(ast.unparse(if_stmt.test), True)
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if mine in have and not all(k in have for k in keys):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: some path runs it without the other matched calls")
            if any(k in have for k in keys) and mine not in have and not any(
                    g.text == around.text and g.negated for g in path.guards):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: some path runs the other matched calls but not the guarded one")
        first = mod.stmt(match.nodes[0].stmt) if index else None
        if first is not None:
            exit_line = _exit_between(self.statements_between(first, if_stmt))
            if exit_line:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: line {exit_line} may leave before it (the fused layer would already have run)")
            if match.class_name and _owner_name(other.stmt.owner, match.class_name) != match.class_name:
                raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
        # The value before the guarded call is read by nothing but that call.
        for path in paths:
            positions = [next((k for k, n in enumerate(path.nodes) if safety.node_key(n) == safety.node_key(m)), None)
                         for m in match.nodes]
            if None in positions:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: the matched calls are not on one path")
            producers = [k for k in range(positions[index]) if name in path.nodes[k].writes]
            start = producers[-1] if producers else -1
            for k in range(start + 1, positions[index]):
                if name in path.nodes[k].reads:
                    raise Skip(codes.S_VALUE_READ, f"{where}: `{name}` is read at line {path.nodes[k].stmt.lines[0]} before it")
        # __init__: the layer under G, None (and nothing else) where G fails.
        attr = node.attr
        layer = match.init_nodes.get(var)
        if layer is None or layer.stmt is None or not layer.guards:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is not bound under a condition in `__init__`")
        from dslc.analysis import guards as guardlib
        for b in (cls.init if cls is not None else ()):
            if b.attr != attr or b is layer:
                continue
            none = b.kind == "other" and len(b.args) == 1 and b.args[0].is_const and b.args[0].const is None
            if not none:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is also bound to something else than `None` at line {b.stmt.lines[0] if b.stmt else 0}")
            if b.stmt is not None and b.stmt.method == layer.stmt.method and b.stmt.owner == layer.stmt.owner \
                    and b.stmt.lines[1] < layer.stmt.lines[0] \
                    and not any(isinstance(c, (ast.For, ast.AsyncFor, ast.While))
                                for c, _ in mod.chain(mod.stmt(layer.stmt)) + mod.chain(mod.stmt(b.stmt))):
                continue  # `self.a = None` first, then the layer under G: the layer's binding wins
            if guardlib.consistent(tuple(layer.guards) + tuple(b.guards)) is not guardlib.Answer.REFUTED:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr} = None` (line {b.stmt.lines[0] if b.stmt else 0}) may run with the layer's binding")
        layer_stmt = mod.stmt(layer.stmt)
        if not (isinstance(layer_stmt, ast.Assign) and len(layer_stmt.targets) == 1):
            raise Skip(codes.S_GUARDED_LAYER, f"line {layer_stmt.lineno} is not a plain `self.{attr} = ...`")
        if_lines = (if_stmt.lineno, if_stmt.end_lineno)
        for use in (cls.attr_uses if cls is not None else ()):
            if use.attr != attr:
                continue
            if use.kind == "store" and use.method == layer.stmt.method and any(
                    b.stmt is not None and b.attr == attr and b.stmt.lines[0] <= use.lines[0] <= b.stmt.lines[1]
                    for b in cls.init):
                continue
            if use.kind != "store" and use.method == node.stmt.method and if_lines[0] <= use.lines[0] <= if_lines[1]:
                continue
            raise Skip(codes.S_ATTR_USED, f"{where}: `self.{attr}` is also used at line {use.lines[0]} (in `{use.method}`)")
        if cls is not None:
            for other in self.facts.classes:
                if cls.qualname in other.bases:
                    raise Skip(codes.S_GUARDED_LAYER, f"{where}: `{other.name}` subclasses `{cls.name}` and would share the change")
        # The layers the target replaces exist, unconditionally, before the binding.
        source_vars = {o.name for pn in rule.init.source for o in pn.outputs}
        changed = {}
        env_ctor = {var: self.relative_text(layer_stmt.value, layer_stmt)}
        for pn in rule.init.target:
            for out in pn.outputs:
                if out.name not in source_vars:
                    raise Skip(codes.S_GUARDED_LAYER, f"{where}: the target builds a new layer `${out.name}`")
        for v in source_vars:
            if v == var:
                continue
            b = match.init_nodes.get(v)
            if b is None or b.stmt is None:
                raise Skip(codes.S_NO_BINDING, f"init variable `${v}` matched no binding")
            if [x for x in (cls.init if cls is not None else ()) if x.attr == b.attr] != [b]:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{b.attr}` is bound more than once")
            if b.stmt.method != layer.stmt.method or b.stmt.owner != layer.stmt.owner \
                    or b.stmt.lines[1] >= layer.stmt.lines[0] or not set(b.guards) <= set(layer.guards):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{b.attr}` is not built before `self.{attr}` wherever that is")
            changed[b.attr] = "replaces"
            env_ctor[v] = f"self.{b.attr}"
        reason = safety.check_attr_uses(match, cls, changed, interface_kept=False)
        if reason:
            raise Skip(reason)
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = _Env(match, attrs, {})
        env.ctor = env_ctor
        lines = []
        for pn in rule.init.target:
            out = pn.outputs[0].name
            lines.append(f"self.{attrs[out]} = {self.render_node(pn, env, plan)}")
        lines.append(f"self.{attr} = None")
        renames = _param_renames(rule, attrs.get, lambda v: getattr(match.init_nodes.get(v), "attr", None))
        if renames:
            plan.needs_hook = True
            lines.append(_hook_registration(renames, mod.unit))
        start, end = mod.stmt_range(layer_stmt)
        self.claim(plan, start, end, self.fit(self.lines_text(lines, mod.indent(layer_stmt)), layer_stmt), layer_stmt)

    # -- the removed layer's call in a helper forward calls (item 7) ---------

    def removed_in_helper(self, match: ir.Match):
        """The index of the matched call of a layer the rewrite removes when
        it sits in a helper inlined into the method of the other matched
        nodes (conv in `forward`, its BatchNorm in `self._bn_act(h)`)."""
        rule = match.rule
        if rule.forward is None or rule.forward.target is None or rule.init is None or rule.init.target is None:
            return None
        if len(match.nodes) != len(rule.forward.source) or len({n.stmt.method for n in match.nodes}) != 2:
            return None
        target_vars = {o.name for pn in rule.init.target for o in pn.outputs}
        removed = [i for i, pn in enumerate(rule.forward.source) if pn.layer_var and pn.layer_var not in target_vars]
        if len(removed) != 1:
            return None
        index = removed[0]
        node = match.nodes[index]
        others = [n for i, n in enumerate(match.nodes) if i != index]
        if any(n.stmt.method == node.stmt.method for n in others):
            return None
        return index

    def plan_across_helper(self, match: ir.Match, cls, index: int, condition, plan: _Plan, paths) -> None:
        """Delete the removed layer's call `v = self.a(v)` from the helper and
        make the init change; the rest of forward stays.

        Only when the rule's forward target is its source without that call
        (so the unchanged code computes the target), the helper is the
        class's own method called once (from the matched code) and by no
        subclass, the call in the helper runs on every path that runs the
        other matched calls, and the value between them is read by nothing
        but the helper's parameter binding: then, under the fused layer, the
        helper's `v` holds the value the deleted call produced."""
        rule = match.rule
        mod = self.mod
        node = match.nodes[index]
        helper = node.stmt.method
        where = f"the call of `self.{node.attr}` in the helper `{helper}` (line {node.stmt.lines[0]})"
        if condition:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: a rule with `when` is not rewritten across methods")
        if index != len(match.nodes) - 1 or index == 0:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{helper}` and `{match.nodes[0].stmt.method}`; the emitter edits "
                       f"across them only when the removed layer's call is the last one, in a helper")
        source_pn = rule.forward.source[index]
        if len(source_pn.args) != 1 or source_pn.kwargs or len(source_pn.outputs) != 1 \
                or not isinstance(source_pn.args[0], ir.Var):
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the removed layer's pattern is not `$a($in) -> $out`; the emitter cannot edit across methods")
        rename = {source_pn.outputs[0].name: source_pn.args[0].name}
        rest = [_renamed(pn, rename) for j, pn in enumerate(rule.forward.source) if j != index]
        if rest != [_renamed(pn, rename) for pn in rule.forward.target]:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{helper}` and `{match.nodes[0].stmt.method if index else match.nodes[-1].stmt.method}`; "
                       f"the emitter cannot edit across them (the rule's forward target is not its source without the helper's call)")
        others = [n for i, n in enumerate(match.nodes) if i != index]
        caller = others[0].stmt.method
        if any(n.stmt.method != caller or n.inlined_from != others[0].inlined_from for n in others) \
                or node.inlined_from[:-1] != others[0].inlined_from or node.inlined_from[-1][0] != caller:
            raise Skip(codes.S_CROSS_METHOD, f"the match crosses methods `{helper}` and `{caller}`; the emitter edits across them only "
                       f"when the removed layer's call is in a helper that the other matched calls' method calls")
        if cls is None or node.stmt.owner != cls.qualname or any(n.stmt.owner != cls.qualname for n in others):
            raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
        for other in self.facts.classes:
            if cls.qualname in other.bases:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: `{other.name}` subclasses `{cls.name}` and could call `{helper}`")
        uses = [u for u in cls.attr_uses if u.attr == helper]
        site = node.inlined_from[-1][1]
        if len(uses) != 1 or uses[0].kind != "call" or uses[0].method != caller or not site[0] <= uses[0].lines[0] <= site[1]:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: `self.{helper}` is used elsewhere too, so its call cannot be deleted")
        stmt = mod.stmt(node.stmt)
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if not (value is not None and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
                and isinstance(value.args[0], ast.Name) and value.args[0].id == stmt.targets[0].id
                and node.expr_span == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)):
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the call is not `v = self.<layer>(v)`")
        if len(mod.block_of(stmt)[2]) < 2:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: it is the only statement of its block")
        # Every path that runs the other matched calls runs the helper's call.
        keys = [safety.node_key(n) for n in others]
        mine = safety.node_key(node)
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if any(k in have for k in keys) and mine not in have:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: some path runs the matched code without the helper's call")
            if mine in have and not all(k in have for k in keys):
                raise Skip(codes.S_CROSS_METHOD, f"{where}: some path runs the helper's call without the other matched code")
        site_stmt = next((st for st in ast.walk(mod.tree) if isinstance(st, ast.stmt)
                          and st.lineno <= site[0] and site[1] <= (st.end_lineno or st.lineno)
                          and not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                          and not any(isinstance(c, ast.stmt) for c in ast.iter_child_nodes(st))), None)
        first_stmt = mod.stmt(others[0].stmt)
        helper_fn = next((f for f in ast.walk(mod.tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                          and f.name == helper and f.lineno <= stmt.lineno <= (f.end_lineno or f.lineno)), None)
        if site_stmt is None or helper_fn is None or site_stmt.lineno < first_stmt.lineno:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: cannot locate the helper's call site")
        before = self.statements_between(first_stmt, site_stmt) + [
            st for st in ast.walk(helper_fn) if isinstance(st, ast.stmt) and st is not helper_fn
            and (st.end_lineno or st.lineno) < stmt.lineno]
        exit_line = _exit_between(before)
        if exit_line:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: line {exit_line} may leave before it (the fused layer would already have run)")
        # The value between the producer and the helper's call: read only by the parameter binding.
        def site_stmt_lines(n):
            return n.stmt.lines if n.stmt.lines[0] <= site[0] and site[1] <= n.stmt.lines[1] else None

        for path in paths:
            pos = {safety.node_key(n): k for k, n in enumerate(path.nodes)}
            at = pos.get(mine)
            if at is None:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the matched calls are not on one path")
            prev = max(pos[k] for k in keys if pos.get(k, at) < at) if any(pos.get(k, at) < at for k in keys) else None
            if prev is None:
                raise Skip(codes.S_CROSS_METHOD, f"{where}: the helper's call does not follow the other matched calls")
            alias = set(path.nodes[prev].outputs)
            for k in range(prev + 1, len(path.nodes)):
                n = path.nodes[k]
                if k == at:
                    alias -= set(n.outputs)
                    continue
                copied = {t for t, src in n.copies if src in alias}
                read = n.reads & alias
                if copied and k < at and n.stmt.lines == site_stmt_lines(n) and n.inlined_from == others[0].inlined_from:
                    # the helper's parameter binding: alias names passed as whole arguments only
                    read -= {src for _, src in n.copies} - self._names_in_argument_expressions(helper, site)
                if read:
                    raise Skip(codes.S_VALUE_READ, f"{where}: the value it normalises, `{sorted(read)[0]}`, is also read at line {n.stmt.lines[0]}")
                alias = (alias - set(n.writes)) | copied
        # The init change (the shared planner) and the deletion of the helper's call.
        source_vars = {o.name for pn in rule.init.source for o in pn.outputs}
        target_vars = {o.name for pn in rule.init.target for o in pn.outputs}
        if target_vars - source_vars:
            raise Skip(codes.S_CROSS_METHOD, f"{where}: the target builds a new layer; the emitter does not do that across methods")
        kinds, changed = {}, {}
        for v in source_vars:
            b = match.init_nodes.get(v)
            if b is None:
                raise Skip(codes.S_NO_BINDING, f"init variable `${v}` matched no binding")
            kinds[v] = "replaced" if v in target_vars else "deleted"
            changed[b.attr] = "replaces" if v in target_vars else "removes"
        reason = safety.check_attr_uses(match, cls, changed, interface_kept=False)
        if reason:
            raise Skip(reason)
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = _Env(match, attrs, {})
        self.plan_init(match, target_vars, kinds, env, plan, None, [])
        self.delete_stmt(plan, stmt, also_deleted={id(stmt)})

    def _names_in_argument_expressions(self, helper: str, site: tuple[int, int]) -> set[str]:
        """Names read inside the non-name arguments of the call `self.<helper>(...)`
        at lines `site` (every name of the call when it cannot be found)."""
        for node in ast.walk(self.mod.tree):
            if isinstance(node, ast.Call) and _self_attr_name(node.func) == helper \
                    and (node.lineno, node.end_lineno) == tuple(site):
                out: set[str] = set()
                for arg in list(node.args) + [k.value for k in node.keywords]:
                    if not isinstance(arg, ast.Name):
                        out |= {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
                return out
        return {"*"}

    # -- a drop-in replacement of every element of an nn.ModuleList (item 15) --

    def module_list_replacement(self, match: ir.Match, cls) -> bool:
        """A module-replacement rule (forward `_`) whose layer is an element of
        an `nn.ModuleList` (called by `for layer in self.<list>:`)."""
        rule = match.rule
        if rule.forward is None or rule.forward.target is not None or cls is None:
            return False
        containers = {getattr(b, "container", None) for b in match.init_nodes.values()}
        if len(containers) != 1 or None in containers:
            return False
        (attr,) = containers
        return [b.type for b in cls.init if b.attr == attr] == ["torch.nn.ModuleList"]

    def plan_module_list(self, match: ir.Match, cls, condition: str | None, plan: _Plan) -> None:
        """Replace every element of `self.<list> = nn.ModuleList([...])` (a list
        literal, or a comprehension's element) by the rule's init target.

        The rule keeps the layer's interface (forward `_`), and every element
        is of the matched type and agrees with the same bindings (the
        matcher's rule for a loop over the container), so each element can
        be swapped where it is built; forward is unchanged.  Refused: `when`,
        a checkpoint mapping (the keys would need the element prefixes), a
        rule with more than one init layer, elements that are not constructor
        calls written in the list, and a container assigned more than once."""
        mod = self.mod
        rule = match.rule
        (var,) = match.init_nodes if len(match.init_nodes) == 1 else (None,)
        first = next(iter(match.init_nodes.values()))
        seq = first.container
        if var is None or len(rule.init.target) != 1 or tuple(o.name for o in rule.init.target[0].outputs) != (var,):
            raise Skip(codes.S_CONTAINER, f"inside the container `self.{seq}` only a one-layer replacement is rewritten")
        if condition:
            raise Skip(codes.S_CONTAINER, f"a rule with `when` cannot rewrite layers inside the container `self.{seq}`")
        owns = [b for b in cls.init if b.attr == seq]
        elements = [b for b in cls.init if b.container == seq]
        if len(owns) != 1 or owns[0].stmt is None or first.stmt is None:
            raise Skip(codes.S_CONTAINER, f"`self.{seq}` is assigned more than once in `__init__`; the emitter rewrites only a single `nn.ModuleList(...)`")
        if any(b.type != first.type for b in elements):
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` are not all of type {first.type}")
        mine = match.class_name or ""
        if _owner_name(first.stmt.owner, mine) != mine:
            raise Skip(codes.S_INHERITED, f"`self.{seq}` is built in an inherited `__init__`; editing it would change every class that shares it")
        renames = [pm for pm in rule.params if f"{pm.target.base.name}.{pm.target.attr}" != f"{pm.source.base.name}.{pm.source.attr}"]
        if renames:
            raise Skip(codes.S_CONTAINER, f"the rule renames parameters, which inside the container `self.{seq}` would need per-element keys")
        stmt = mod.stmt(owns[0].stmt)
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        call = stmt.value if isinstance(stmt, ast.Assign) else None
        if not (isinstance(target, ast.Attribute) and _self_attr_name(target) == seq and isinstance(call, ast.Call)
                and len(call.args) == 1 and not call.keywords):
            raise Skip(_container_reason(first))
        arg = call.args[0]
        if isinstance(arg, (ast.ListComp, ast.GeneratorExp)) and len(arg.generators) == 1:
            exprs = [arg.elt]
        elif isinstance(arg, (ast.List, ast.Tuple)) and not any(isinstance(e, ast.Starred) for e in arg.elts):
            exprs = list(arg.elts)
        else:
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) are not written in the `nn.ModuleList(...)`")
        if len(exprs) != len(elements) or any(not isinstance(e, ast.Call) for e in exprs):
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) are not all constructor calls of the matched layer")
        lo, hi = owns[0].stmt.lines
        for use in cls.attr_uses:
            if use.attr == seq and use.kind == "store" and not (use.method == owns[0].stmt.method and lo <= use.lines[0] <= hi):
                raise Skip(codes.S_ATTR_ASSIGNED, f"attribute `self.{seq}` is assigned again at line {use.lines[0]} (in `{use.method}`)")
        env = _Env(match, {var: first.attr}, {})
        fused = self.render_node(rule.init.target[0], env, plan)
        mod.stmt_range(stmt)  # alone on its lines
        for expr in exprs:
            start, end = mod.smap.node_span(expr)
            plan.edits.append(Edit(start, end, fused))
            plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))

    def plan_sequential(self, match: ir.Match, cls, condition: str | None, plan: _Plan) -> None:
        """Matched layers that are consecutive elements of one `nn.Sequential` literal.

        Forward stays as it is (the call of the container).  In the
        `self.<seq> = nn.Sequential(e0, e1, ...)` statement, element i becomes
        the rule's init target built from the element expressions and
        elements i+1.. become `nn.Identity()`, so later indices do not move;
        checkpoints load through the pre-hook (`<seq>.<i>.<p>` renamed by the
        `params` mapping under `<seq>.<i>.`).  Refused (see `_sequential_uses`)
        when the container is indexed, iterated, measured, mutated, passed
        around, assigned twice or called at more than one place, when its
        elements are not a plain positional list of constructor calls, and
        when the matched elements are not adjacent.
        """
        mod = self.mod
        rule = match.rule
        bindings = dict(match.init_nodes)
        first = next(b for b in bindings.values() if getattr(b, "container", None))
        containers = {getattr(b, "container", None) for b in bindings.values()}
        if len(containers) != 1:
            raise Skip(_container_reason(first))  # a chain that leaves the container
        seq = first.container
        if condition:
            raise Skip(codes.S_CONTAINER, f"a rule with `when` cannot rewrite layers inside the container `self.{seq}`")
        if cls is None:
            raise Skip(_container_reason(first))
        owns = [b for b in cls.init if b.attr == seq]
        if len(owns) != 1 or owns[0].type != "torch.nn.Sequential":
            if len(owns) > 1:
                raise Skip(codes.S_CONTAINER, f"`self.{seq}` is assigned more than once in `__init__`; the emitter rewrites only a single `nn.Sequential(...)`")
            raise Skip(_container_reason(first))
        seq_binding = owns[0]
        if first.stmt is None or seq_binding.stmt is None:
            raise Skip(_container_reason(first))
        mine = match.class_name or ""
        owner = _owner_name(first.stmt.owner, mine)
        if owner != mine:
            raise Skip(codes.S_INHERITED, f"`self.{seq}` is built in `{owner}.__init__`, inherited; editing it would change every class that shares it")
        stmt = mod.stmt(first.stmt)
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
                and target.attr == seq and isinstance(stmt.value, ast.Call)):
            raise Skip(_container_reason(first))
        call = stmt.value
        if any(isinstance(a, ast.Starred) for a in call.args) or call.keywords:
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) are built from `*args`; only literal positional elements are rewritten")
        if any(isinstance(a, ast.Call) and _dotted_tail(a.func) in ("OrderedDict", "dict") for a in call.args):
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) come from an OrderedDict; only literal positional elements are rewritten")

        # The matched elements, in forward order: consecutive indices of one call of the container.
        if rule.forward is None or rule.forward.target is None or not match.nodes:
            raise Skip(_container_reason(first))
        var_of_attr = {b.attr: v for v, b in bindings.items()}
        indices = []
        for node in match.nodes:
            attr = node.attr or ""
            head, _, index = attr.rpartition(".")
            if node.kind != "layer" or head != seq or not index.isdigit() or attr not in var_of_attr:
                raise Skip(codes.S_CONTAINER, f"the match at line {node.stmt.lines[0]} mixes elements of `self.{seq}` with other code; "
                           f"only a chain of its elements can be rewritten inside it")
            indices.append(int(index))
        if len({n.expr_span for n in match.nodes}) != 1 or match.nodes[0].expr_span is None:
            raise Skip(codes.S_CONTAINER, f"the matched elements of `self.{seq}` come from more than one call of it")
        if sorted(indices) != list(range(indices[0], indices[0] + len(indices))) or indices != sorted(indices):
            names = " and ".join(f"`self.{seq}.{i}`" for i in indices)
            raise Skip(codes.S_CONTAINER, f"the matched elements {names} are not adjacent in `self.{seq}`")
        if set(var_of_attr) != {n.attr for n in match.nodes}:
            raise Skip(codes.S_CONTAINER, f"the rule's init names a layer outside the matched chain of `self.{seq}`")
        if max(indices) >= len(call.args) or any(not isinstance(call.args[i], ast.Call) for i in indices):
            raise Skip(codes.S_CONTAINER, f"the matched elements of `self.{seq}` (line {stmt.lineno}) are not constructor calls written in the `nn.Sequential(...)`")
        fused_var = var_of_attr[f"{seq}.{indices[0]}"]

        # The rule must be "the first layer, fused, applied to the chain's input".
        source, fwd_target = rule.forward.source, rule.forward.target
        tpn = fwd_target[0] if len(fwd_target) == 1 else None
        ok = (
            tpn is not None and tpn.kind == "layer" and _layer_var(tpn) == fused_var
            and len(tpn.args) == 1 and not tpn.kwargs and source and source[0].args
            and tpn.args[0] == source[0].args[0] and tuple(tpn.outputs) == tuple(source[-1].outputs)
            and all(pn.kind == "layer" and _layer_var(pn) is not None for pn in source)
        )
        init_target = rule.init.target
        ok = ok and len(init_target) == 1 and tuple(o.name for o in init_target[0].outputs) == (fused_var,) \
            and not _attrof_bases(init_target[0])
        if not ok:
            raise Skip(codes.S_CONTAINER, f"inside the container `self.{seq}` only the init can change (the rule's forward target is not "
                       f"its fused layer applied to the chain's input)")
        reason = _sequential_uses(mod, mine, seq, stmt, match.nodes[0])
        if reason:
            raise Skip(codes.S_CONTAINER_USE, reason)

        # Edits inside the `nn.Sequential(...)` call.
        smap = mod.smap
        ctor = {var_of_attr[f"{seq}.{i}"]: smap.span_text((call.args[i].lineno, call.args[i].col_offset,
                                                            call.args[i].end_lineno, call.args[i].end_col_offset))
                for i in indices}
        attrs = {v: b.attr for v, b in bindings.items()}
        env = _Env(match, attrs, {})
        env.literals = self.literal_texts(match)
        env.extra_args = _ctor_extras(match, {v: ("replaced" if v == fused_var else "deleted") for v in bindings})
        env.ctor = ctor
        fused = self.render_node(init_target[0], env, plan)
        env.ctor = {}
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "Sequential":
            identity = smap.span_text((func.value.lineno, func.value.col_offset, func.value.end_lineno, func.value.end_col_offset)) + ".Identity"
        else:
            identity = self.spell("torch.nn.Identity", plan)
        mod.stmt_range(stmt)  # alone on its lines (the hook goes after it)
        for k, i in enumerate(indices):
            arg = call.args[i]
            start, end = smap.node_span(arg)
            plan.edits.append(Edit(start, end, fused if k == 0 else f"{identity}()"))
            plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))

        # Checkpoint names under `<seq>.<i>.`.
        renames = _param_renames(rule, attrs.get, attrs.get)
        if renames:
            plan.needs_hook = True
            text = self.lines_text([_hook_registration(renames, mod.unit)], mod.indent(stmt))
            at = smap.line_end(stmt.end_lineno)
            if not mod.ends_with_newline(stmt.end_lineno):
                text = mod.nl + text.rstrip("\r\n")
            plan.edits.append(Edit(at, at, text))
            plan.claimed.add((at, at))

    def check_reassign_guard(self, anchor_binding, hoist_guards, attr) -> None:
        init_guards = list(getattr(anchor_binding, "guards", ()) or ())
        text_i = " and ".join(str(g) for g in init_guards) or "True"
        text_f = " and ".join(str(g) for g in hoist_guards) or "True"
        answer = safety.guards.equivalent(init_guards, hoist_guards).value
        if answer != "proved":
            raise Skip(codes.S_ANCHOR,
                f"the hoisted copy needs the original `self.{attr}` where `{text_f}` is false, "
                f"but the fused layer would be built where `{text_i}` holds"
            )

    def wrap_when(self, init_plan: _Plan, stmts: list[ast.stmt], condition: str) -> None:
        """Replace the run of statements holding the init edits by `if cond: <new> else: <old>`."""
        mod = self.mod
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
        if self.wrap_when_moved(init_plan, stmts, tops, body, indices, condition):
            return
        first, last = body[indices[0]], body[indices[-1]]
        region_start = mod.smap.line_start(first.lineno)
        region_end = mod.smap.line_end(last.end_lineno)
        for e in init_plan.edits:
            if e.start < region_start or e.end > region_end:
                raise Skip(codes.S_WHEN_REGION, "a `when` rewrite needs all the init statements it changes in one run of statements")
        # Earlier rewrites inside the run go into both branches (`when` rules run last).
        absorbed = []
        for e in self.accepted:
            boundary_insert = e.start == e.end and e.start in (region_start, region_end)
            if region_start <= e.start and e.end <= region_end and not boundary_insert:
                absorbed.append(e)
            elif e.start < region_end and e.end > region_start and not boundary_insert:
                raise Skip(codes.S_WHEN_REGION, "overlaps an earlier rewrite around the init statements a `when` rewrite duplicates")

        def shifted(edits):
            return [Edit(e.start - region_start, e.end - region_start, e.text) for e in edits]

        try:
            old = apply_edits(mod.source[region_start:region_end], shifted(absorbed))
            new = apply_edits(mod.source[region_start:region_end], shifted(absorbed + init_plan.edits))
        except EditConflict:
            raise Skip(codes.S_WHEN_REGION, "its init statements were already changed by another rewrite in the run a `when` rewrite duplicates") from None
        init_plan.absorbed = absorbed
        indent = mod.indent(first)
        nl = mod.nl
        if not old.endswith(("\n", "\r")):
            old += nl
            new += nl
        text = (indent + f"if {condition}:" + nl + _indent_lines(new, mod.unit)
                + indent + "else:" + nl + _indent_lines(old, mod.unit))
        init_plan.edits = [Edit(region_start, region_end, self.fit(text, last))]
        init_plan.claimed = {(region_start, region_end)}
        init_plan.lines.update(range(first.lineno, last.end_lineno + 1))

    def wrap_when_moved(self, init_plan: _Plan, stmts: list[ast.stmt], tops: list, body: list,
                        indices: list[int], condition: str) -> bool:
        """`wrap_when` without duplicating unrelated statements: when the
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
        # One statement per line range, nothing (comments, blank lines) between them.
        for a, b in zip(run, run[1:]):
            if a.end_lineno + 1 != b.lineno:
                return False
        segments = []
        for st in run:
            try:
                segments.append((st, *mod.stmt_range(st)))
            except Skip:
                return False
        region_start, region_end = segments[0][1], segments[-1][2]
        # Earlier rewrites touching the run: keep the plain duplication.
        for e in self.accepted:
            if e.start < region_end and e.end > region_start or (e.start == e.end and region_start < e.start < region_end):
                return False
        seg_of = {id(st): (lo, hi) for st, lo, hi in segments}
        per_stmt: dict[int, list[Edit]] = {}
        for e in init_plan.edits:
            home = [c for c in changed if seg_of[id(c)][0] <= e.start and e.end <= seg_of[id(c)][1]]
            if len(home) != 1:
                return False
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
            return False
        old, new = "".join(old_parts), "".join(new_parts)
        nl = mod.nl
        if not new.strip() or not old.endswith(("\n", "\r")) or not new.endswith(("\n", "\r")):
            return False
        try:
            new_tree = ast.parse(textwrap.dedent(new)) if new.strip() else ast.Module(body=[], type_ignores=[])
        except SyntaxError:
            return False
        # What the edited statements (before and after the rewrite) mention of `self`.
        # `self` only as `self.<attr>` (no `self` passed on, no method call but
        # the checkpoint hook's): then these are all the attributes they touch.
        mentioned: set[str] = set()
        for tree in changed + [new_tree]:
            nodes = list(ast.walk(tree))
            bases = {id(n.value) for n in nodes if _self_attr(n)}
            if any(isinstance(n, ast.Name) and n.id == "self" and id(n) not in bases for n in nodes):
                return False
            if any(isinstance(n, ast.Call) and _self_attr(n.func) and n.func.attr != "_register_load_state_dict_pre_hook"
                   for n in nodes):
                return False
            mentioned |= {n.attr for n in nodes if _self_attr(n)}
        func = mod.parent.get(id(changed[0]), (None, None))[0]
        while func is not None and not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = mod.parent.get(id(func), (None, None))[0]
        if func is None:
            return False
        local = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        for st in between:
            if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and _self_attr(st.targets[0])
                    and isinstance(st.value, ast.Call)):
                return False
            if st.targets[0].attr in mentioned:
                return False
            call = st.value
            qual = _dotted(call.func)
            if qual is None:
                return False
            head, _, rest = qual.partition(".")
            if head in local or head not in mod.imports:
                return False
            full = mod.imports[head] + ("." + rest if rest else "")
            if full not in _NO_RANDOM_INIT:
                return False
            for arg in list(call.args) + [k.value for k in call.keywords]:
                for n in ast.walk(arg):
                    if isinstance(n, (ast.Call, ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom,
                                      ast.Starred, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                        return False
                    if isinstance(n, ast.Name) and n.id == "self":
                        return False
            if any(k.arg is None for k in call.keywords):
                return False
        first = changed[0]
        indent = mod.indent(first)
        text = "".join(mod.source[seg_of[id(st)][0]:seg_of[id(st)][1]] for st in between)
        text += (indent + f"if {condition}:" + nl + _indent_lines(new, mod.unit)
                 + indent + "else:" + nl + _indent_lines(old, mod.unit))
        last = run[-1]
        init_plan.absorbed = []
        init_plan.edits = [Edit(region_start, region_end, self.fit(text, last))]
        init_plan.claimed = {(region_start, region_end)}
        init_plan.lines.update(range(first.lineno, last.end_lineno + 1))
        return True

    def relative_text(self, expr: ast.expr, stmt: ast.stmt) -> str:
        """An expression's source; continuation lines lose the statement's indentation."""
        text = self.mod.smap.span_text((expr.lineno, expr.col_offset, expr.end_lineno, expr.end_col_offset))
        indent = self.mod.indent(stmt)
        lines = text.splitlines()
        out = [lines[0]] + [line[len(indent):] if line.startswith(indent) else line for line in lines[1:]]
        return "\n".join(out)

    def lines_text(self, items: list[str], indent: str) -> str:
        """Statements (possibly multi-line, relative indentation) at `indent`."""
        out = []
        for item in items:
            for line in item.split("\n"):
                out.append(indent + line if line.strip() else "")
        return "".join(line + self.mod.nl for line in out)

    # -- edit helpers -----------------------------------------------------

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

    def claim(self, plan: _Plan, start: int, end: int, text: str, stmt: ast.stmt) -> None:
        plan.edits.append(Edit(start, end, text))
        plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))

    def delete_stmt(self, plan: _Plan, stmt: ast.stmt, *, also_deleted: set[int], merge_blank: bool = True) -> None:
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

    # -- the file ---------------------------------------------------------

    def header_edit(self) -> list[Edit]:
        """New imports placed the way the file groups its imports, and the
        state-dict helper after the last top-level import.

        1. The import groups are the runs of top-level import statements not
           separated by a blank line; the new imports join the group that
           imports torch (kernels are third-party packages like it), else
           the last group.
        2. In a group sorted isort's way (`import x` lines, then `from x
           import y` lines, each by module), a new import goes where it
           sorts; in an unsorted group, or for a multi-statement block, at
           the group's end.
        """
        mod = self.mod
        lines = list(dict.fromkeys(self.import_lines))
        helper = self.needs_hook and not self.hook_present
        if not lines and not helper and not self.helper_defs:
            return []
        nl = mod.nl
        if mod.last_import is not None:
            end_at = mod.smap.line_end(mod.last_import.end_lineno)
            end_prefix = "" if mod.ends_with_newline(mod.last_import.end_lineno) else nl
        else:
            end_at, end_prefix = self.top_of_file()
        inserts: dict[int, list[tuple[tuple, str]]] = {}
        groups = self.import_groups()
        group = next((g for g in groups if any(_import_top(n) == "torch" for n in g)), groups[-1] if groups else None)
        for line in lines:
            key = _import_key_of_text(line)
            at = None
            if group is not None and key is not None:
                keys = [_import_key(n) for n in group]
                if keys == sorted(keys):
                    after = next((n for n, k in zip(group, keys) if k > key), None)
                    if after is not None:
                        at = mod.smap.line_start(after.lineno)
                if at is None:
                    at = mod.smap.line_end(group[-1].end_lineno)
            if at is None:
                at = end_at
            inserts.setdefault(at, []).append((key or (2, ""), line))
        if helper:
            inserts.setdefault(end_at, [])
        edits = []
        for at, items in sorted(inserts.items()):
            text = "".join(line + nl for _, line in sorted(items, key=lambda kv: kv[0]))
            if at == end_at:
                text = end_prefix + text  # after a last line without its newline
                if helper:
                    text += nl + nl + _hook_helper(mod.unit, nl)
                for name in sorted(self.helper_defs):  # per-call dispatch helpers
                    text += nl + nl + self.helper_defs[name]
            edits.append(Edit(at, at, text))
        return edits

    def import_groups(self) -> list[list[ast.stmt]]:
        """Runs of top-level imports (not `__future__`) with no blank line between."""
        mod = self.mod
        rows = mod.source.splitlines()
        groups: list[list[ast.stmt]] = []
        cur: list[ast.stmt] = []
        for node in mod.tree.body:
            is_import = isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.module != "__future__")
            if not is_import:
                if cur:
                    groups.append(cur)
                    cur = []
                continue
            if cur and any(not rows[i].strip() for i in range(cur[-1].end_lineno, node.lineno - 1) if i < len(rows)):
                groups.append(cur)
                cur = []
            cur.append(node)
        if cur:
            groups.append(cur)
        return groups

    def top_of_file(self) -> tuple[int, str]:
        mod = self.mod
        body = mod.tree.body
        pos = 0
        for node in body:
            is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
            if (is_doc and node is body[0]) or is_future:
                pos = node.end_lineno
                continue
            break
        if pos == 0:
            return 0, ""
        prefix = "" if mod.ends_with_newline(pos) else mod.nl
        return mod.smap.line_end(pos), prefix


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


def _import_top(node: ast.stmt) -> str:
    if isinstance(node, ast.Import):
        return node.names[0].name.split(".")[0]
    return (node.module or "").split(".")[0] if not node.level else ""


def _import_key(node: ast.stmt) -> tuple:
    """isort's default order inside a section: `import x` lines, then `from x import`, by module."""
    if isinstance(node, ast.Import):
        return (0, node.names[0].name.lower())
    return (1, "." * node.level + (node.module or "").lower())


def _import_key_of_text(line: str) -> tuple | None:
    try:
        body = ast.parse(line).body
    except SyntaxError:
        return None
    if len(body) == 1 and isinstance(body[0], (ast.Import, ast.ImportFrom)):
        return _import_key(body[0])
    return None


def _param_renames(rule: ir.Rule, new_attr, old_attr, keep=lambda var: False) -> list[tuple[str, str, bool]]:
    """The checkpoint renames of the rule's `params { $new.p <- $old.q; }` that
    are not identities: (new key, old key, keep the old key) per mapping.

    `new_attr` / `old_attr` map a variable to the attribute that holds its
    layer after / before the rewrite (None: unbound); `keep(var)` says the old
    layer stays, so its key must stay in the state dict too.
    """
    renames = []
    for pm in rule.params:
        new, old = new_attr(pm.target.base.name), old_attr(pm.source.base.name)
        if new is None or old is None:
            raise Skip(codes.S_TARGET, f"params mapping `{pm.target.base}.{pm.target.attr}` names an unbound variable")
        new_key, old_key = f"{new}.{pm.target.attr}", f"{old}.{pm.source.attr}"
        if new_key != old_key:
            renames.append((new_key, old_key, keep(pm.source.base.name)))
    return renames


def _hook_registration(renames: list[tuple[str, str, bool]], unit: str) -> str:
    """The `__init__` statement registering the checkpoint-rename pre-hook;
    one (new key, old key, keep old) triple per line, for a readable diff."""
    items = "".join(f"{unit}({n!r}, {o!r}, {k}),\n" for n, o, k in renames)
    return f"self._register_load_state_dict_pre_hook({HOOK_HELPER}((\n{items})))"


def _hook_helper(unit: str, nl: str) -> str:
    lines = [
        f"def {HOOK_HELPER}(renames):",
        f'{unit}"""A load_state_dict pre-hook (added by `dslc apply`): load checkpoints saved before the rewrite."""',
        "",
        f"{unit}def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):",
        f"{unit*2}for new, old, keep in renames:",
        f"{unit*3}if prefix + old in state_dict and prefix + new not in state_dict:",
        f"{unit*4}state_dict[prefix + new] = state_dict[prefix + old] if keep else state_dict.pop(prefix + old)",
        "",
        f"{unit}return hook",
        "",
    ]
    return nl.join(lines)


def _check_vars(rule: ir.Rule) -> set[str]:
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", str(rule.option("check") or "")))


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def _exit_between(stmts: list) -> int | None:
    """The line of a `return`/`raise`/`break`/`continue` among `stmts` (which
    the path analysis folds into an opaque `if` when no DL call is near)."""
    for st in stmts:
        if isinstance(st, (ast.Return, ast.Raise, ast.Break, ast.Continue)):
            return st.lineno
    return None


def _self_attr_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return expr.attr
    return None


def _is_not_none_test(test: ast.expr, attr: str) -> bool:
    """`self.<attr> is not None`."""
    return (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None
            and isinstance(test.left, ast.Attribute) and isinstance(test.left.value, ast.Name)
            and test.left.value.id == "self" and test.left.attr == attr)


def _renamed(pn: ir.PatNode, rename: dict[str, str]) -> tuple:
    """A pattern node as comparable data, its variables renamed."""
    def term(t):
        if isinstance(t, ir.Var):
            return ("var", rename.get(t.name, t.name))
        return ("term", repr(t))
    callee = pn.callee
    callee_key = None if callee is None else (callee.qualname, callee.var.name if callee.var else None,
                                              repr(callee.subscript))
    return (pn.kind, callee_key, pn.op, tuple(term(a) for a in pn.args),
            tuple((k, term(v)) for k, v in pn.kwargs), tuple(term(o) for o in pn.outputs), pn.layer_var)


def _owner_name(owner: str | None, class_name: str) -> str:
    """The class that defines code, as the match names its class: `class_name`
    itself when `owner` (a qualname) is that class (`m.Outer.Inner` for
    `Outer.Inner`), else the owner's last component (an inherited base)."""
    if not owner or owner == class_name or owner.endswith("." + class_name):
        return class_name
    return owner.rsplit(".", 1)[-1]


def _container_reason(binding) -> str:
    line = binding.stmt.lines[0] if binding.stmt else 0
    return codes.reason(codes.S_CONTAINER, f"`self.{binding.attr}` lives inside the container `self.{binding.container}` (line {line}); "
                        f"the emitter does not rewrite layers inside containers")


def _layer_var(pn: ir.PatNode) -> str | None:
    if pn.callee is not None and pn.callee.var is not None:
        return pn.callee.var.name
    return pn.layer_var


def _dotted_tail(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return None


def _sequential_uses(mod: _Module, class_name: str, seq: str, init_stmt: ast.stmt, node) -> str | None:
    """Every `self.<seq>` of the class is its one assignment or the one matched call.

    An index (`self.seq[0]`), an iteration, `len(...)`, a method (`.append`,
    `.add_module`), passing it around or a second call would see the element
    indices or types the rewrite changes.
    """
    cls = mod.classes.get(class_name)
    if cls is None:
        return f"cannot find the class `{class_name}` that holds `self.{seq}`"
    # The class and its subclasses in this file (they inherit the container).
    family = [cls]
    names = {class_name}
    grew = True
    while grew:
        grew = False
        for other in mod.classes.values():
            if other not in family and any(_dotted_tail(b) in names for b in other.bases):
                family.append(other)
                names.add(other.name)
                grew = True
    parents: dict[int, ast.AST] = {}
    for klass in family:
        for sub in ast.walk(klass):
            for child in ast.iter_child_nodes(sub):
                parents[id(child)] = sub
    lo, col, hi, end_col = node.expr_span
    calls = []
    for sub in (n for klass in family for n in ast.walk(klass)):
        if not (isinstance(sub, ast.Attribute) and sub.attr == seq and isinstance(sub.value, ast.Name) and sub.value.id == "self"):
            continue
        parent = parents.get(id(sub))
        if isinstance(sub.ctx, ast.Store):
            if parent is init_stmt:
                continue
            return f"`self.{seq}` is assigned again at line {sub.lineno}"
        if isinstance(parent, ast.Call) and parent.func is sub:
            calls.append(parent)
            continue
        if isinstance(parent, ast.Subscript) and parent.value is sub:
            return f"`self.{seq}` is also indexed at line {sub.lineno}; the rewrite changes its elements"
        if isinstance(parent, (ast.For, ast.AsyncFor, ast.comprehension)) and parent.iter is sub:
            return f"`self.{seq}` is also iterated at line {sub.lineno}; the rewrite changes its elements"
        if isinstance(parent, ast.Attribute):
            return f"`self.{seq}.{parent.attr}` is used at line {sub.lineno}; the rewrite changes its elements"
        return f"`self.{seq}` is also used at line {sub.lineno} (`{ast.unparse(parent) if parent is not None else seq}`); the rewrite changes its elements"
    # Several calls are fine: each runs the whole container, so fusing two
    # adjacent elements changes no call's result (the init is one location).
    if not calls:
        return f"`self.{seq}` is never called directly; the rewrite cannot see how its elements are used"
    if not any((c.lineno, c.col_offset, c.end_lineno, c.end_col_offset) == (lo, col, hi, end_col) for c in calls):
        return f"no call of `self.{seq}` (lines {', '.join(str(c.lineno) for c in calls)}) is the matched location"
    return None


def _is_prefix(short: list, long: list) -> bool:
    """Is the chain of compound statements `short` a proper prefix of `long` (by identity)?"""
    return len(short) < len(long) and all(a[0] is b[0] and a[1] == b[1] for a, b in zip(short, long))


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id != "self"}


# Reads that look only at a tensor's metadata, and the property each needs.
_META_ATTRS = {"shape": "shape", "ndim": "shape", "dtype": "dtype", "device": "device", "is_cuda": "device"}
_META_METHODS = {"size": "shape", "dim": "shape"}

# Layers and functions whose output has the shape, dtype and device of their
# first input (elementwise ops, normalisations, dropout).
SHAPE_KEEPING = frozenset(
    [f"torch.nn.{n}" for n in (
        "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "LayerNorm", "RMSNorm", "GroupNorm",
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d",
        "InstanceNorm3d", "GELU", "ReLU", "ReLU6", "SiLU", "Sigmoid", "Tanh", "Identity", "Softmax", "LogSoftmax")]
    + [f"torch.nn.functional.{n}" for n in (
        "dropout", "gelu", "relu", "silu", "softmax", "log_softmax", "layer_norm", "batch_norm", "group_norm")]
)


# Layers with no parameters or buffers: a second instance is indistinguishable.
STATELESS = frozenset(
    [f"torch.nn.{n}" for n in (
        "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "GELU", "ReLU", "ReLU6", "SiLU",
        "Sigmoid", "Tanh", "Identity", "Softmax", "LogSoftmax")]
)


def _subclass_attr_uses(tree: ast.Module, base: str) -> list[tuple[str, str, int, str, str]]:
    """(class, attr, line, method, kind) for `self.<attr>` in the methods of classes deriving from `base` (by name)."""
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    names = {base}
    family: list[ast.ClassDef] = []
    grew = True
    while grew:
        grew = False
        for c in classes:
            if c not in family and c.name != base and any(_dotted_tail(b) in names for b in c.bases):
                family.append(c)
                names.add(c.name)
                grew = True
    out = []
    for c in family:
        for fn in c.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    kind = "store" if isinstance(sub.ctx, ast.Store) else "read"
                    out.append((c.name, sub.attr, sub.lineno, fn.name, kind))
    return out


def _span_in(inner: tuple, outer: tuple) -> bool:
    return (inner[0], inner[1]) >= (outer[0], outer[1]) and (inner[2], inner[3]) <= (outer[2], outer[3])


def _is_default(value, default) -> bool:
    return (default is not None and default.is_const and getattr(value, "is_const", False)
            and type(value.const) is type(default.const) and value.const == default.const)


def _ctor_extras(match: ir.Match, kinds: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Constructor arguments the rule's init source does not name, per target variable.

    For each source init node `Type(...) -> $v` and the binding it matched:
    1. The arguments the call gives that the pattern does not name (by
       parameter name through the signature table; by position past the
       pattern's and by keyword without it); an argument equal to the
       parameter's default is dropped (it changes nothing).
    2. A variable whose constructor call the target embeds whole (`$conv` as
       an argument of `ConvBn2d($conv, $bn)`) keeps all of them; a kept one
       (still built as it was) too.
    3. Otherwise they go, as keywords, to the target node that binds `$v`
       again, when its signature is known and accepts them (not already given);
       `device`/`dtype` must also reach every other target layer that takes
       over `$v`'s parameters (`params`), which they cannot: refused.
    Anything else is a Skip naming the argument: dropping it would build a
    different layer (`bias=False`, `elementwise_affine=False`, `dtype=`).
    """
    from dslc.match import signatures

    rule = match.rule
    if rule.init is None or rule.init.target is None:
        return {}
    embedded: set[str] = set()
    for pn in rule.init.target:
        for t in list(pn.args) + [v for _, v in pn.kwargs]:
            if isinstance(t, ir.Var):
                embedded.add(t.name)
    target_of = {o.name: pn for pn in rule.init.target for o in pn.outputs}
    out: dict[str, list[tuple[str, str]]] = {}
    for spn in rule.init.source:
        if len(spn.outputs) != 1 or spn.callee is None or spn.callee.subscript is not None:
            continue
        var = spn.outputs[0].name
        binding = match.init_nodes.get(var)
        if binding is None or getattr(binding, "kind", "call") != "call" or var in embedded or kinds.get(var) == "kept":
            continue
        qual = spn.callee.qualname
        pargs = [a for a in spn.args if not (isinstance(a, ir.Const) and a.value is Ellipsis)]
        sig = signatures.signature(qual)
        extras: list[tuple[str, object]] = []
        if sig is not None:
            named = set(signatures.explicit_params(qual, pargs, spn.kwargs) or ())
            given = signatures.explicit_params(qual, binding.args, binding.kwargs)
            values = signatures.normalize(qual, binding.args, binding.kwargs)
            if given is None or values is None:
                raise Skip(codes.S_EXTRA_ARG, f"the arguments of `self.{binding.attr}` do not fit the signature of `{qual}`")
            defaults = {p.name: p.default for p in sig.params}
            extras = [(p, values[p]) for p in given if p not in named and not _is_default(values[p], defaults.get(p))]
        else:
            pkw = {k for k, _ in spn.kwargs}
            extras = [(f"#{i}", v) for i, v in enumerate(binding.args) if i >= len(pargs)]
            extras += [(k, v) for k, v in binding.kwargs if k not in pkw]
        if not extras:
            continue
        line = binding.stmt.lines[0] if getattr(binding, "stmt", None) else 0
        where = f"`self.{binding.attr}` (line {line})"
        tpn = target_of.get(var)
        for name, value in extras:
            text = getattr(value, "text", str(value))
            shown = f"`{text}` (argument {int(name[1:]) + 1})" if name.startswith("#") else f"`{name}={text}`"
            if tpn is None:
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} would be dropped: the rule's target does not build `${var}` again")
            tqual = tpn.callee.qualname if tpn.callee is not None else None
            tsig = signatures.signature(tqual)
            if name.startswith("*") or text.startswith("*"):
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} cannot be carried over to the target")
            if tsig is None or name.startswith("#"):
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} has no counterpart in the target `{tqual}` (its parameters are unknown)")
            taken = set(signatures.explicit_params(tqual, tpn.args, tpn.kwargs) or ())
            if name not in tsig.names or name in taken:
                raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} has no counterpart in the target `{tqual}`")
            if name in ("device", "dtype"):
                for pm in rule.params:
                    if pm.source.base.name == var and pm.target.base.name != var:
                        raise Skip(codes.S_EXTRA_ARG, f"{shown} of {where} would not reach `${pm.target.base.name}`, which takes over its "
                                   f"`{pm.source.attr}`")
            out.setdefault(var, []).append((name, text))
    return out


def _changed_values(rule: ir.Rule) -> set[str]:
    """Forward variables the target binds again with a value that differs from the source's.

    The outputs of the source chain that no later source node reads are what
    the rule's contract keeps equal.  Any other variable the target binds
    again keeps its value only when the target node that binds it is the
    source node that bound it (same callee, arguments and outputs), the layer
    it calls keeps its init (its init target, if any, equals its init source)
    and none of its inputs changed.  biased_gelu binds `$y` with `$lin($x)` in
    both, but `$lin` loses its bias: `$y` changes.
    """
    if rule.forward is None or rule.forward.target is None:
        return set()
    source, target = rule.forward.source, rule.forward.target
    init_changed: set[str] = set()
    if rule.init is not None and rule.init.target is not None:
        before = {o.name: pn for pn in rule.init.source for o in pn.outputs}
        for pn in rule.init.target:
            for o in pn.outputs:
                if before.get(o.name) != pn:
                    init_changed.add(o.name)
    bound_by = {o.name: pn for pn in source for o in pn.outputs}
    read: set[str] = set()
    for pn in source:
        read |= _node_vars(pn)
    changed: set[str] = set()
    for pn in target:
        for o in pn.outputs:
            if o.name not in read:
                continue  # a result of the chain: equal by the rule's contract
            old = bound_by.get(o.name)
            layer = _layer_var(pn)
            same = (old is not None and old == pn and (layer is None or layer not in init_changed)
                    and not (_node_vars(pn) & changed))
            if not same:
                changed.add(o.name)
    return changed


def _produced_again(match: ir.Match) -> set[str]:
    """Names the target binds again with the same value (see `_changed_values`)."""
    rule = match.rule
    changed = _changed_values(rule)
    out: set[str] = set()
    for pn in rule.forward.target or ():
        for o in pn.outputs:
            bound = match.bindings.get(o.name)
            if bound is not None and bound.kind == "name" and o.name not in changed:
                out.add(bound.text)
    return out


def _forward_unchanged(rule: ir.Rule) -> bool:
    return rule.forward is not None and rule.forward.target is not None and tuple(rule.forward.target) == tuple(rule.forward.source)


def _init_attrs(match: ir.Match) -> tuple:
    """The init bindings a match changes, as a key: class, variable, attribute, statement lines."""
    return (match.class_name,) + tuple(sorted(
        (var, getattr(b, "attr", None), tuple(b.stmt.lines) if getattr(b, "stmt", None) else ())
        for var, b in match.init_nodes.items()
    ))


def _location_key(match: ir.Match) -> tuple:
    if match.klass is not None:
        return (match.rule.qualified_name, "class", match.class_name)
    if match.rule.fallback and match.nodes and (match.rule.init is None or match.rule.init.target is None):
        # a per-call dispatch edits one expression: two calls in one statement are two locations
        return (match.rule.qualified_name, "call", tuple(n.expr_span for n in match.nodes))
    if _forward_unchanged(match.rule) and match.init_nodes:
        # Only the init changes: one location however many call sites matched.
        return (match.rule.qualified_name, "init", _init_attrs(match))
    return (match.rule.qualified_name, tuple(sorted({safety.stmt_key(n) for n in match.nodes})),
            tuple(sorted((b.attr for b in match.init_nodes.values()))))


def rewrite_source(source: str, facts, matches: list[ir.Match], *, path: str = "<string>") -> RewriteResult:
    """Rewrite every safe match of `source`; see the module docstring for the steps.

    Parsing the whole file after every match is the costly part, so the
    matches are first accepted optimistically (overlaps still checked); only
    when the combined output does not parse is the run repeated with a parse
    after each match, which pins the failure on the match that causes it.
    """
    try:
        result = _rewrite(source, facts, matches, path, check_each=False)
    except SyntaxError as exc:
        reason = codes.reason(codes.S_FILE_PARSE, f"the file does not parse (line {exc.lineno}: {exc.msg})")
        return RewriteResult(None, tuple(Outcome(m, "skipped", reason, tuple(m.lines)) for m in matches))
    if result is None:
        result = _rewrite(source, facts, matches, path, check_each=True)
    return result


def _rewrite(source: str, facts, matches, path: str, *, check_each: bool) -> RewriteResult | None:
    rewriter = _Rewriter(source, facts, path)
    rewriter.matches = list(matches)
    outcomes: dict[int, Outcome] = {}
    # `when` rules duplicate a run of init statements into both branches of an
    # `if`: they go last, so the other rewrites inside that run are composed
    # into both branches instead of blocking each other (a second apply would
    # otherwise find them).
    order = sorted(range(len(matches)), key=lambda i: (bool(matches[i].rule.option("when")), i))
    for index in order:
        match = matches[index]
        key = _location_key(match)
        if key in rewriter.done_locations:
            outcomes[index] = Outcome(match, "skipped", codes.reason(codes.S_SAME_LOCATION, f"same location as the match at line {rewriter.done_locations[key]} (edited once)"), tuple(match.lines))
            continue
        try:
            try:
                plan = rewriter.plan(match)
            except (Skip, SyntaxError):
                raise
            except Exception as exc:  # a bug must cost one match, not the run
                raise Skip(codes.E_INTERNAL, f"internal error in the rewriter ({type(exc).__name__}: {exc})") from None
            absorbed = {id(e) for e in plan.absorbed}
            edits = [e for e in rewriter.accepted if id(e) not in absorbed] + plan.edits
            for start, end in plan.claimed:
                for a, b, who in rewriter.claimed:
                    inside = any(e.start >= start and e.end <= end for e in plan.absorbed) and start <= a and b <= end
                    if start < b and a < end and not inside:
                        raise Skip(codes.S_OVERLAP_REWRITE, f"overlaps the rewrite of {who}")
            try:
                candidate = apply_edits(source, edits)
            except EditConflict as exc:
                raise Skip(codes.S_OVERLAP_REWRITE, f"its edits overlap another rewrite ({exc})") from None
            if check_each:
                err = parse_error(candidate)
                if err is not None:
                    raise Skip(codes.S_NO_PARSE, f"the rewrite would not parse ({err})")
        except Skip as exc:
            outcomes[index] = Outcome(match, "skipped", exc.reason, tuple(match.lines))
            continue
        # Accept.
        rewriter.accepted = edits
        first = min(plan.lines) if plan.lines else (match.lines[0] if match.lines else 0)
        for start, end in plan.claimed:
            rewriter.claimed.append((start, end, f"{match.rule.qualified_name} at line {first}"))
        rewriter.imports.update(plan.imports)
        rewriter.import_lines.extend(plan.import_lines)
        rewriter.needs_hook = rewriter.needs_hook or plan.needs_hook
        rewriter.helper_defs.update(plan.helper_defs)
        for cls, names in plan.new_attrs.items():
            rewriter.taken.setdefault(cls, set()).update(names)
        if match.nodes or key[1:2] == ("init",):
            rewriter.done_locations[key] = first
        outcomes[index] = Outcome(match, "applied", None, tuple(sorted(set(match.lines) | plan.lines)))
    ordered = [outcomes[i] for i in range(len(matches))]
    if not rewriter.accepted:
        return RewriteResult(None, tuple(ordered))
    edits = list(rewriter.accepted)
    edits.extend(rewriter.header_edit())
    new = apply_edits(source, edits)
    reason = safety.verify_output(source, new, edits)
    if reason is not None:
        if not check_each:
            return None  # find the culprit: redo with a parse after each match
        ordered = [Outcome(o.match, "skipped", reason, o.lines) if o.status == "applied" else o for o in ordered]
        return RewriteResult(None, tuple(ordered))
    return RewriteResult(new if new != source else None, tuple(ordered))
