"""`option shape = "$s0 = <expr>"`: raise-only size checks of a removed product.

BART's attention (and its copies) checks the size of the scores between the
product and the softmax, and raises when it is not the expected one:

    attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))
    if attn_weights.size() != (bsz * self.num_heads, tgt_len, src_len):
        raise ValueError(f"... but is {attn_weights.size()}")

The rewrite removes `attn_weights`.  The rule states, as a Python expression
over its bound variables, the size the removed value has wherever the
original computed it (for `torch.bmm(q, k.transpose(1, 2))`, which takes
3-d tensors only: `$q.shape[:-1] + $k.shape[-2:-1]`, a `torch.Size`).  With
the option, a read of that value may stay when it sits in a *raise-only
check*: an `if` without `else` whose body is one `raise`, every read of the
value in it being `name.size()` (no argument) or `name.shape`; the check
stays where it is, each such read replaced by the stated expression:

    if (query_states.shape[:-1] + key_states.shape[-2:-1]) != (bsz * self.num_heads, tgt_len, src_len):
        raise ValueError(f"... but is {(query_states.shape[:-1] + key_states.shape[-2:-1])}")

The check must be a statement of the final statement's block, before it
(so it runs where the original ran it, after the product and before the
kernel); the variables of the expression must be inputs of the target, so
the data-flow check (`safety.check_dataflow`, rule 2) already proves they
are not written between the product and the kernel call.  Any other read
of the value still refuses the match (S204).  Under a per-call guard
(`keep`, kinds/keep.py) the original branch keeps the original check and
the rewritten branch gets the rewritten one.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.plan import Plan, Skip

SHAPE_FORMAT = re.compile(r"\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S.*?)\s*", re.S)
_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def parse_shape(text) -> tuple[str, str] | None:
    """(variable, expression template) of an `option shape` value, or None
    when it is not `"$v = <Python expression over $variables>"`."""
    if not isinstance(text, str):
        return None
    m = SHAPE_FORMAT.fullmatch(text)
    if m is None:
        return None
    try:
        ast.parse(_VAR.sub(lambda v: "_v_" + v.group(1), m.group(2)), mode="eval")
    except SyntaxError:
        return None
    return m.group(1), m.group(2)


def template_vars(template: str) -> list[str]:
    return _VAR.findall(template)


def _shape_index(match: ir.Match) -> tuple[int, str] | None:
    parsed = parse_shape(match.rule.option("shape"))
    if parsed is None:
        return None
    var, template = parsed
    for k, pn in enumerate(match.rule.forward.source[:-1]):
        if any(o.name == var for o in pn.outputs):
            return (k, template) if k < len(match.nodes) else None
    return None


def raise_only(stmt: ast.stmt) -> bool:
    """`if <test>: raise <exc>`: no `else`, one `raise` in the body."""
    return (isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1
            and isinstance(stmt.body[0], ast.Raise))


def size_reads(stmt: ast.stmt, name: str) -> list[ast.expr] | None:
    """The reads of `name` in `stmt`, each `name.size()` or `name.shape`
    (the whole expression), or None when some read is anything else."""
    parents: dict[int, ast.AST] = {}
    for sub in ast.walk(stmt):
        for child in ast.iter_child_nodes(sub):
            parents[id(child)] = sub
    out = []
    for sub in ast.walk(stmt):
        if not (isinstance(sub, ast.Name) and sub.id == name):
            continue
        if not isinstance(sub.ctx, ast.Load):
            return None
        parent = parents.get(id(sub))
        if isinstance(parent, ast.Attribute) and parent.attr == "shape" and parent.value is sub:
            out.append(parent)
            continue
        call = parents.get(id(parent))
        if (isinstance(parent, ast.Attribute) and parent.attr == "size" and isinstance(call, ast.Call)
                and call.func is parent and not call.args and not call.keywords):
            out.append(call)
            continue
        return None
    return out


class ShapeChecks:
    """The checks of one match that read the removed value's size (see the module docstring)."""

    def __init__(self, mod, flow):
        self.mod = mod
        self.flow = flow
        self.found: dict[int, tuple[ast.stmt, str]] = {}  # id(stmt) -> (the check, the name read)

    def metadata_ok(self, match: ir.Match, base):
        """`metadata_ok` for `safety.check_dataflow`: `base`'s answer, or a
        read of the stated value in a raise-only check (recorded in `found`)."""
        shape = _shape_index(match)
        if shape is None:
            return base
        key = safety.node_key(match.nodes[shape[0]])

        def ok(path, pos, q, name) -> bool:
            if base is not None and base(path, pos, q, name):
                return True
            if safety.node_key(path.nodes[pos]) != key:
                return False
            node = path.nodes[q]
            if node.kind != "stmt" or not self.flow.local_code(node):
                return False
            try:
                stmt = self.mod.stmt(node.stmt)
            except Skip:
                return False
            if (stmt.lineno, stmt.end_lineno) != tuple(node.stmt.lines) or not raise_only(stmt):
                return False
            if not size_reads(stmt, name):
                return False
            self.found[id(stmt)] = (stmt, name)
            return True

        return ok

    def plan(self, match: ir.Match, groups, plan: Plan) -> dict[int, str]:
        """The rewritten text of each recorded check (id(stmt) -> its lines).
        Each must sit in the final statement's block, after the first
        matched statement there and before the final one."""
        if not self.found:
            return {}
        _, template = _shape_index(match)
        final = groups[-1][2]
        _, _, block = self.mod.block_of(final)
        ids = [id(s) for s in block]
        firsts = [ids.index(id(s)) for _, _, s in groups if id(s) in ids]
        texts: dict[int, str] = {}
        expr = self.expression(match, template)
        for sid, (stmt, name) in self.found.items():
            if sid not in ids or not min(firsts) < ids.index(sid) < ids.index(id(final)):
                raise Skip(codes.S_STMT_SHAPE, f"the size check at line {stmt.lineno} is not a statement of the "
                           f"final statement's block between the matched ones (`option shape`)")
            texts[sid] = self.rewrite(stmt, name, expr)
        return texts

    def expression(self, match: ir.Match, template: str) -> str:
        def sub(m) -> str:
            bound = match.bindings.get(m.group(1))
            if bound is None or bound.kind not in ("name", "attr"):
                raise Skip(codes.S_TARGET, f"`${m.group(1)}` of `option shape` is bound to no name")
            return bound.text
        return "(" + _VAR.sub(sub, template) + ")"

    def rewrite(self, stmt: ast.stmt, name: str, expr: str) -> str:
        smap = self.mod.smap
        a, b = self.mod.stmt_range(stmt)
        text = smap.text[a:b]
        edits = []
        for read in size_reads(stmt, name) or ():
            s, e = smap.node_span(read)
            if smap.text[s:e] not in (f"{name}.shape", f"{name}.size()"):  # positions inside an f-string
                raise Skip(codes.S_STMT_SHAPE, f"line {read.lineno}: cannot locate `{name}`'s size read")
            edits.append((s - a, e - a))
        for s, e in sorted(edits, reverse=True):
            text = text[:s] + expr + text[e:]
        return text


def emit_plain(ctx, plan: Plan, texts: dict[int, str], stmts: dict[int, ast.stmt]) -> None:
    """Without a per-call guard: each check is rewritten in place."""
    for sid, text in texts.items():
        stmt = stmts[sid]
        a, b = ctx.mod.stmt_range(stmt)
        ctx.claim(plan, a, b, text, stmt)


def multiline_string(text: str) -> int | None:
    """The first line (1-based in `text`) of a string token that spans lines
    (re-indenting it would change the string), or None.  Implicitly
    concatenated literals on separate lines are separate tokens: the
    whitespace between them is not part of any string."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return 1
    for t in toks:
        if t.type == tokenize.STRING and t.start[0] != t.end[0]:
            return t.start[0]
        if getattr(tokenize, "FSTRING_START", None) is not None and t.type == tokenize.FSTRING_MIDDLE \
                and t.start[0] != t.end[0]:
            return t.start[0]
    return None
