"""A mask added through views, in the `if` of an optional mask (a rule with
`keep` whose absent variant matched: kinds/keep.py's region).

BART's attention (and its copies) holds the scores as (bsz * heads, tgt,
src) and adds a (bsz, 1, tgt, src) mask through a view:

    if attention_mask is not None:
        if attention_mask.size() != (bsz, 1, tgt_len, src_len):
            raise ValueError(...)
        attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + attention_mask
        attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)

The rule's optional node (`$s1 + $m -> $s2 optional when $m is not None`)
does not match `s.view(A) + m`, so the rule's absent variant matches where
the `if` is not taken, and the guard (kinds/keep.py) would run the original
wherever a mask is given.  Instead, when the `if` is exactly that (`if m is
not None:`, no `else`; raise-only checks that do not read the scores; then
`s = s.view(A) + m` (or `m + s.view(A)`) and `s = s.view(B)`, A and B
call-free; `s` the value that flows into the optional node's place), the
rewritten branch passes the mask of the rule as written (its `present`
rule) with `$m` read as

    torch.broadcast_to(m, torch.broadcast_shapes(m.shape, (A))).reshape(B)

and keeps the `if` with its checks only.  Why it is the same: where the
original does not raise, s.view(A) is s's memory in the shape A (s is the
contiguous product), the broadcast sum has the shape A (else the view back
to B would not have s's number of elements), so view(B) of the sum is
s.reshape(B) + M elementwise, M = m broadcast to the sum's shape and
reshaped to B (the sum's shape is A, or A with leading 1s where m has more
dims: `m.expand(A)` would raise there); and B is s's shape
(else the next product, a `torch.bmm` with v, which takes 3-d tensors
and does not broadcast, would fail on its shapes: only a chain ending in
`torch.bmm` is taken).  Where the sum has more elements than A (a mask
larger than A), the reshape to B raises, as the original's view does,
unless B holds a -1 (the original's larger scores go on): a `-1` (any
negative literal) in B, or in A (`view`'s inferred size, which neither
`expand` nor `broadcast_shapes` infers), leaves the `if` to the guard
(the original runs where a mask is given); so does an A of fewer than
two sizes (it may be one shape object).  So the scores are s + M: the
rule's present form with that mask.

The paths through the `if`'s body are left out of the data-flow checks
(their statements are the ones above, which write only `s`); the names that
A, B and `m` read must not be written, nor their attribute roots stored
through or called, between the `if` and the final statement (the mask is
now computed at the kernel call).  Only one such `if` per match.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from dslc.match import ir, optional
from dslc.rewrite.kinds.keepchecks import raise_only

_BAD = (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom,
        ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Starred)


@dataclass
class ViewMask:
    stmt: ast.If  # the `if m is not None:` holding the views
    var: str  # the rule's mask variable (`m` of `$m`)
    mask: str  # the mask's name in the source
    text: str  # what `$m` reads as: `m.expand(A).reshape(B)`
    fast: str  # the `if`'s lines in the rewritten branch (its checks only, or nothing)


def _is_view(node, name: str):
    """The arguments of `name.view(args)` (no keywords, no starred, call-free), or None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "view"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == name and node.args
            and not node.keywords):
        return None
    for a in node.args:
        if any(isinstance(n, _BAD) for n in ast.walk(a)) or any(
                isinstance(n, ast.Name) and n.id == name for n in ast.walk(a)):
            return None
    return node.args


def _assigns(stmt, name: str):
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
            and stmt.targets[0].id == name:
        return stmt.value
    return None


def view_if(stmt: ast.stmt, s: str):
    """(mask name, A, B, the checks) when `stmt` is the `if` of the module
    docstring for the scores' name `s`, else None."""
    if not isinstance(stmt, ast.If) or stmt.orelse or len(stmt.body) < 2:
        return None
    test = stmt.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)
            and isinstance(test.left, ast.Name) and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value is None):
        return None
    m = test.left.id
    *checks, add, back = stmt.body
    for c in checks:
        if not raise_only(c) or any(isinstance(n, ast.Name) and n.id == s for n in ast.walk(c)):
            return None
    value = _assigns(add, s)
    if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add)):
        return None
    sides = [(value.left, value.right), (value.right, value.left)]
    a = next((_is_view(v, s) for v, o in sides if isinstance(o, ast.Name) and o.id == m and _is_view(v, s)), None)
    b = _is_view(_assigns(back, s), s)
    if a is None or b is None or m == s:
        return None
    return m, a, b, checks


def _stable(mod, region, after: ast.stmt, reads: list, final: ast.stmt) -> bool:
    """Nothing `reads` (expressions) read is written between `after` and
    the end of `final`: no store or deletion of a name they read, no store
    through the root of an attribute chain they read, no method call on it."""
    names = {n.id for e in reads for n in ast.walk(e) if isinstance(n, ast.Name)}
    roots = {_root(n) for e in reads for n in ast.walk(e) if isinstance(n, ast.Attribute)} - {None}
    start = after.end_lineno
    for stmt in region.body:
        if stmt.lineno <= start:
            continue
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.id in names:
                return False
            if isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, (ast.Store, ast.Del)) \
                    and _root(n) in roots | names:
                return False
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and _root(n.func) in roots | names:
                return False
        if stmt is final:
            break
    return True


def _root(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def exact_views(a, b) -> bool:
    """A and B as `broadcast_to(m, broadcast_shapes(m.shape, A)).reshape(B)`
    needs them (module docstring): two or more sizes for A (a tuple of
    numbers, whatever each is), and no negative literal in either.  A `-1`
    in B lets the original's larger sum go on (scores of another shape,
    where the mask's rewrite would raise); in A it is `view`'s inferred
    size, which `expand` and `broadcast_shapes` do not infer."""
    if len(a) < 2 or any(isinstance(x, (ast.Tuple, ast.List)) for x in a):
        return False
    for e in (*a, *b):
        for n in ast.walk(e):
            if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub) \
                    or isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and n.value < 0:
                return False
    return True


def take_view_ifs(mod, region, match: ir.Match, torch_name=lambda: "torch") -> ViewMask | None:
    """Move the `if` of the module docstring from the region's guard `if`s
    to its `view_ifs` (its test leaves the guard's condition); what the
    rewritten branch needs, or None when there is none."""
    present = getattr(match.rule, "present", None)
    if region is None or not region.guard_ifs or present is None or not region.body:
        return None
    k = optional.optional_index(present)
    flow = optional.pass_through(present)
    pn = present.forward.source[k] if k is not None else None
    if pn is None or flow is None or pn.kind != "op" or pn.op != "+" or not 0 < k < len(match.nodes):
        return None
    if getattr(match.nodes[-1], "type", None) != "torch.bmm":  # B is then the product's shape (docstring)
        return None
    bound = match.bindings.get(flow)
    if bound is None or bound.kind != "name":
        return None
    before, after = match.nodes[k - 1], match.nodes[k]
    final = region.body[-1]
    found = []
    for stmt in region.guard_ifs:
        shape = view_if(stmt, bound.text)
        if shape is not None and before.stmt.lines[1] < stmt.lineno and stmt.end_lineno < after.stmt.lines[0]:
            found.append((stmt, shape))
    if len(found) != 1:
        return None
    stmt, (m, a, b, checks) = found[0]
    for s in stmt.body:  # each alone on its lines (the rewritten branch drops the last two by lines)
        line = mod.smap.line_text(s.lineno)
        if line[:s.col_offset].strip() or mod.smap.line_text(s.end_lineno)[s.end_col_offset:].strip(" \t\r\n;"):
            return None
    if not _stable(mod, region, stmt, [stmt.test, *a, *b], final):
        return None
    text = mod.smap.text

    def args(nodes) -> str:
        spans = [mod.smap.node_span(n) for n in nodes]
        return ", ".join(text[x:y] for x, y in spans)

    if not exact_views(a, b):
        return None
    torch = torch_name()  # may raise Skip: `torch` names something else here
    mask = f"{torch}.broadcast_to({m}, {torch}.broadcast_shapes({m}.shape, ({args(a)}))).reshape({args(b)})"
    if checks:
        start = mod.smap.line_start(stmt.lineno)
        cut = mod.smap.line_start(stmt.body[-2].lineno)
        fast = text[start:cut]
        end = mod.smap.line_end(stmt.end_lineno)
        tail = text[mod.smap.line_end(stmt.body[-1].end_lineno):end]
        fast += tail
    else:
        fast = ""
    region.guard_ifs.remove(stmt)
    region.view_ifs.append(stmt)
    region.tests = []
    for g in region.guard_ifs:
        region.add_test(g.test)
    return ViewMask(stmt, pn.optional, m, mask, fast)
