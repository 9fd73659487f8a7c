"""A kept value updated in an `if` with an `else` (kinds/keep.py's guard).

BART's attention (and its copies) reshapes the probabilities it returns:

    if output_attentions:
        attn_weights_reshaped = attn_weights.view(bsz, self.num_heads, tgt_len, src_len)
        attn_weights = attn_weights_reshaped.view(bsz * self.num_heads, tgt_len, src_len)
    else:
        attn_weights_reshaped = None

The body writes a kept value, so the guard takes the test on (as for an
`if` without `else`: where it holds, the original runs).  Where the test is
false the `else` runs: the rewritten branch holds the `else` block in the
`if`'s place, one level less indented.  Allowed only when the `else` writes
no kept value (anything it reads is on the matched path, where the
data-flow checks see it) and is a plain block (not an `elif`).
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.rewrite.plan import Skip


def _stores(stmts) -> set[str]:
    return {n.id for s in stmts for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def else_ok(stmt: ast.If, kept: set[str]) -> bool:
    """Can the rewritten branch run `stmt`'s `else` in its place?  (Not an
    `elif` / `else: if`; no kept value written.)"""
    if not stmt.orelse or (len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.If)):
        return False
    return not (_stores(stmt.orelse) & kept)


def else_text(mod, stmt: ast.If) -> str:
    """The `else` block's lines, indented as the `if`."""
    smap = mod.smap
    first, last = stmt.orelse[0], stmt.orelse[-1]
    start, end = smap.line_start(first.lineno), smap.line_end(last.end_lineno)
    inner, outer = mod.indent(first), mod.indent(stmt)
    if not inner.startswith(outer) or inner == outer:
        raise Skip(codes.S_KEEP_GUARD, f"line {first.lineno}: the `else` block's indentation is not the `if`'s plus a unit")
    lines = smap.text[start:end].splitlines(keepends=True)
    out = []
    for line in lines:
        if line.startswith(inner):
            out.append(outer + line[len(inner):])
        elif not line.strip():
            out.append(line)
        else:
            raise Skip(codes.S_KEEP_GUARD, f"the `else` block at line {first.lineno} has a line indented less than "
                       f"its statements")
    return "".join(out)
