"""Row reshapings: `option rows = "$a: $b"` (fused linear cross-entropy).

A loss is often computed on a reshaped view of the logits, not on the
logits themselves: `F.cross_entropy(logits.view(-1, logits.size(-1)), ...)`,
`logits[..., :-1, :].contiguous().view(...)`, `logits.flatten(0, -2)`.
Those operations regroup or slice the leading dims and keep the last one,
so they commute with a linear layer over the last dim:
`rows(head(h)) == head(rows(h))`.  A rule states with `option rows` which
pattern variable may be matched through such a chain (`$logits`) and which
target value gets the same chain (`$h`).

`row_chain(text, root)` decides whether the source text of an argument is
such a chain over the local name `root` and gives it as a function of one
tensor.  Accepted, on a receiver r (the chain's value so far):

* `r.contiguous()`;
* `r.view(a, ..., L)` / `r.reshape(a, ..., L)` (or one tuple argument),
  where L is the root's last dim spelt `root.size(-1)` or `root.shape[-1]`
  (the chain keeps the last dim, so it is r's too) and no other argument
  names the root;
* `r.flatten(s, e)` with literal ints, e negative and at most -2;
* `r[i, ...]` with slices, literal ints and at most one `...`: the last dim
  is untouched when the last index after `...` is `:`, or, without `...`,
  when the indices are fewer than r's dims (checked at run time when r's
  rank depends on the root's: `min_dim`).

Anything else (a last dim given as a number or an attribute, `view(-1)`,
`permute`, `transpose`, tensor indices, `None`) is refused with the reason.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

_RESHAPE = ("view", "reshape")


@dataclass(frozen=True)
class RowChain:
    """A row reshaping: `func` is `lambda <param>: <chain over param>`; the
    chain is only valid on tensors of at least `min_dim` dims (0: any)."""

    func: str
    min_dim: int = 0


class _Refused(Exception):
    pass


def _int_literal(node: ast.expr) -> int | None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_root(node: ast.expr, root: str) -> bool:
    return isinstance(node, ast.Name) and node.id == root


def _is_last_dim_of_root(node: ast.expr, root: str) -> bool:
    """`root.size(-1)` or `root.shape[-1]`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "size" \
            and _is_root(node.func.value, root) and len(node.args) == 1 and not node.keywords:
        return _int_literal(node.args[0]) == -1
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "shape" \
            and _is_root(node.value.value, root):
        return _int_literal(node.slice) == -1
    return False


def _names_root(node: ast.AST, root: str) -> bool:
    return any(_is_root(n, root) for n in ast.walk(node))


def _reshape(call: ast.Call, root: str, method: str) -> int:
    """The rank after `view`/`reshape`; refuses a shape whose last entry is not the root's last dim."""
    if call.keywords:
        raise _Refused(f"`.{method}()` with keyword arguments")
    args = list(call.args)
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
        args = list(args[0].elts)
    if len(args) < 2 or any(isinstance(a, ast.Starred) for a in args):
        raise _Refused(f"`.{method}({', '.join(ast.unparse(a) for a in call.args)})` does not keep the last dim as its own")
    if not _is_last_dim_of_root(args[-1], root):
        raise _Refused(f"the last size of `.{method}(...)`, `{ast.unparse(args[-1])}`, is not written `{root}.size(-1)` "
                       f"or `{root}.shape[-1]`, so it is not provably the logits' last dim")
    if any(_names_root(a, root) for a in args[:-1]):
        raise _Refused(f"a leading size of `.{method}(...)` reads `{root}`")
    return len(args)


def _flatten(call: ast.Call) -> tuple[int, int]:
    params = dict(zip(("start_dim", "end_dim"), call.args))
    for kw in call.keywords:
        if kw.arg not in ("start_dim", "end_dim") or kw.arg in params:
            raise _Refused("`.flatten()` with an unknown or repeated argument")
        params[kw.arg] = kw.value
    start = _int_literal(params["start_dim"]) if "start_dim" in params else 0
    end = _int_literal(params["end_dim"]) if "end_dim" in params else -1
    if len(call.args) > 2 or start is None or end is None or end > -2 or (start < 0 and start > end):
        raise _Refused("`.flatten(...)` merges the last dim (only `flatten(s, e)` with literal e <= -2 keeps it)")
    return start, end


def _index(sub: ast.Subscript, root: str, rank: tuple[str, int], min_dim: int) -> tuple[tuple[str, int], int]:
    """The rank after `r[...]` and the run-time rank requirement."""
    items = list(sub.slice.elts) if isinstance(sub.slice, ast.Tuple) else [sub.slice]
    ints = 0
    for it in items:
        if isinstance(it, ast.Slice):
            if _names_root(it, root):
                raise _Refused(f"a slice bound reads `{root}`")
        elif isinstance(it, ast.Constant) and it.value is Ellipsis:
            pass
        elif _int_literal(it) is not None:
            ints += 1
        else:
            raise _Refused(f"the index `{ast.unparse(it)}` is not a slice or a literal int")
    dots = [i for i, it in enumerate(items) if isinstance(it, ast.Constant) and it.value is Ellipsis]
    last_full = isinstance(items[-1], ast.Slice) and items[-1].lower is None and items[-1].upper is None and items[-1].step is None
    if len(dots) > 1:
        raise _Refused("more than one `...` in an index")
    if dots:
        if dots[0] != len(items) - 1 and not last_full:
            raise _Refused(f"the index `[{ast.unparse(sub.slice)}]` changes the last dim")
    elif not last_full:
        need = len(items) + 1
        kind, k = rank
        if kind == "abs":
            if k < need:
                raise _Refused(f"the index `[{ast.unparse(sub.slice)}]` reaches the last dim")
        else:
            min_dim = max(min_dim, need - k)
    kind, k = rank
    return (kind, k - ints), min_dim


def row_chain(text: str, root: str) -> RowChain | str:
    """The chain of row operations `text` applies to `root`, or why it is not one."""
    try:
        expr = ast.parse(text, mode="eval").body
    except SyntaxError:
        return f"`{text}` does not parse"
    ops: list[ast.expr] = []
    node = expr
    while not _is_root(node, root):
        ops.append(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return f"`{text}` is not a chain of view/reshape/flatten/contiguous/slicing over `{root}`"
    if not ops:
        return f"`{text}` is `{root}` itself"
    rank: tuple[str, int] = ("rel", 0)  # ("abs", n): n dims; ("rel", d): the root's dims + d
    min_dim = 0
    try:
        for op in reversed(ops):
            if isinstance(op, ast.Subscript):
                rank, min_dim = _index(op, root, rank, min_dim)
                continue
            method = op.func.attr
            if method == "contiguous" and not op.args and not op.keywords:
                continue
            if method in _RESHAPE:
                rank = ("abs", _reshape(op, root, method))
            elif method == "flatten":
                start, end = _flatten(op)
                rank = ("abs", start - end) if start >= 0 else (rank[0], rank[1] + start - end)
            else:
                raise _Refused(f"`.{method}(...)` may move or change the last dim")
    except _Refused as exc:
        return str(exc)
    used = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    param = "_t"
    while param in used:
        param += "_"

    class _Sub(ast.NodeTransformer):
        def visit_Name(self, n: ast.Name) -> ast.AST:
            return ast.copy_location(ast.Name(param, n.ctx), n) if n.id == root else n

    body = ast.unparse(_Sub().visit(ast.parse(text, mode="eval")).body)
    return RowChain(f"lambda {param}: {body}", min_dim)
