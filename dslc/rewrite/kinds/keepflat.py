"""Matched statements under a flag: the per-call guard takes the flag on.

GPT-2's eager attention computes some steps of the chain only under
attributes set at construction:

    attn_weights = torch.matmul(query, key.transpose(-1, -2))
    if self.scale_attn_weights:
        attn_weights = attn_weights / torch.full([], value.size(-1) ** 0.5, ...)
    if self.scale_attn_by_inverse_layer_idx:
        attn_weights = attn_weights / float(self.layer_idx + 1)
    if not self.is_cross_attention:
        causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
        mask_value = ...
        attn_weights = torch.where(causal_mask, attn_weights.to(attn_weights.dtype), mask_value)
    ...

The analysis splits the `if`s, and a rule matches the path where the
scale and the causal mask are applied and the layer-wise scaling is not.
That match is the computation only where `self.scale_attn_weights` and
`not self.is_cross_attention` hold: the per-call guard of kinds/keep.py
(`if <cond>: <original> else: <rewritten>`) takes the negation of each such
test on (`not self.scale_attn_weights or self.is_cross_attention or
self.scale_attn_by_inverse_layer_idx or ...`), so the original runs on every
other path, and the rewritten branch holds the body of each such `if`
without the `if` (where the test holds, the body runs exactly so).

A matched statement nested in the guarded block is accepted so (`taken_if`)
only when it is a direct child of an `if T:` of that block with no `else`,
and T passes the guard's test checks (call-free; nothing it reads written
between the first matched statement and the `if`, `KeepGuard.test_problem`).
The body is written one level less indented (`flat_text`): every line of it
must start with the body's indentation (a string spanning lines refuses).
Where a rule matches without the flagged step (the chain without the scale,
on the path where the `if` is not taken), nothing here applies: that is the
update-in-an-`if` case of kinds/keep.py.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.rewrite.plan import Skip


def taken_if(stmt: ast.stmt, top: ast.If, optional: bool) -> str | None:
    """Why `stmt`, nested in the block statement `top`, cannot be flattened
    (None when `top` has no `else` and its body holds `stmt`).  An optional
    node's statement (`optional`) in its `if` is the guarded form's
    (docs/adr-language.md, "Optional nodes"), not flattened: the rule's
    guarded match rewrites both paths."""
    if optional:
        return (f"line {stmt.lineno} is the optional node in the `if` at line {top.lineno}; the guarded "
                f"form rewrites it on both paths")
    if top.orelse:
        return (f"line {stmt.lineno} sits inside the `if` at line {top.lineno}, which has an `else`; a per-call "
                f"guard flattens only an `if` without `else`")
    if not any(s is stmt for s in top.body):
        return (f"line {stmt.lineno} is nested deeper in the `if` at line {top.lineno}; a per-call guard "
                f"flattens one `if` level")
    return None


def flat_text(mod, top: ast.If, texts: list[tuple[ast.stmt, str]]) -> str:
    """The texts of the body statements of `top` (each as the fast branch
    writes it), one indentation level less: at `top`'s own indentation."""
    outer = mod.indent(top)
    inner = mod.indent(top.body[0])
    if not inner.startswith(outer) or inner == outer:
        raise Skip(codes.S_KEEP_GUARD, f"the body of the `if` at line {top.lineno} is not indented under it")
    for n in ast.walk(top):
        if isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes)) and n.end_lineno != n.lineno:
            raise Skip(codes.S_KEEP_GUARD, f"the string at line {n.lineno} spans lines; re-indenting it "
                       f"would change it")
    out = []
    for stmt, text in texts:
        for line in text.splitlines(keepends=True):
            if line.startswith(inner):
                out.append(outer + line[len(inner):])
            elif not line.strip():
                out.append(line)
            else:
                raise Skip(codes.S_KEEP_GUARD, f"line {stmt.lineno} is not indented as the body of the `if` at "
                           f"line {top.lineno}; it cannot be written one level less indented")
    return "".join(out)


def negated(test: ast.expr) -> ast.expr:
    """`not T` (`T` for `not T`): where it holds, the original runs."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return test.operand
    return ast.UnaryOp(ast.Not(), test)
