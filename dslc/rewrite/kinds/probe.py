"""`option probe = "$s"`: reads of the dtype and device of a removed q kᵀ product.

T5's attention reads the scores' dtype and device between the product and
the softmax, to build its position bias:

    scores = torch.matmul(query_states, key_states.transpose(3, 2))
    if position_bias is None:
        position_bias = torch.zeros(..., device=scores.device, dtype=scores.dtype)
    scores += position_bias_masked

The rewrite removes `scores`.  Its dtype is the product's: the operands'
dtype, or autocast's where autocast is on (q's dtype is then not the
scores'), and its device the operands'.  With `option probe`, a read of the
rule's product that looks only at `.dtype` / `.device` (nothing else, in
any statement the matched definition reaches) may stay, and the product's
statement is kept computed on empty slices of its operands:

    scores = torch.matmul(query_states[..., :0, :], key_states.transpose(3, 2)[..., :0])

the same operation on the same operands' dtypes and device (so autocast
casts it alike), with an empty result: no arithmetic.  Only a statement
`name = <product>` (`torch.matmul(a, b)`, `torch.bmm(a, b)`, `a @ b`) is
probed; anything else refuses the match as before.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.plan import Skip

_SAFE_OPERAND = (ast.Name, ast.Attribute, ast.Call, ast.Subscript)


def probe_var(rule: ir.Rule) -> str | None:
    """The variable `option probe` names (without `$`), or None."""
    text = rule.option("probe")
    return text.strip()[1:] if isinstance(text, str) and text.strip().startswith("$") else None


def probe_index(match: ir.Match) -> int | None:
    """The index of the source node whose output the rule probes."""
    var = probe_var(match.rule)
    if var is None:
        return None
    for k, pn in enumerate(match.rule.forward.source):
        if any(o.name == var for o in pn.outputs):
            return k if k < len(match.nodes) else None
    return None


def metadata_with_probe(match: ir.Match, flow, base, used: list):
    """`metadata_ok` for `safety.check_dataflow`: `base`'s answer, or a read
    of the probed product that looks only at its dtype and device (then
    `used` gets True: the statement must be probed, not deleted)."""
    k = probe_index(match)
    if k is None:
        return base
    key = safety.node_key(match.nodes[k])

    def ok(path, pos, q, name) -> bool:
        if base is not None and base(path, pos, q, name):
            return True
        if safety.node_key(path.nodes[pos]) != key and not _same_metadata_scale(match, k, path, pos):
            return False
        needs = flow.metadata_reads(path, q, name)
        if needs is None or not needs <= {"dtype", "device"}:
            return False
        used.append(True)
        return True

    return ok


def probe_line(mod, match: ir.Match, stmt: ast.stmt) -> str:
    """The statement `name = <product>` computed on empty slices (see the module docstring)."""
    value = stmt.value if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
    target = stmt.targets[0] if value is not None else None
    if not isinstance(target, ast.Name):
        raise Skip(codes.S_STMT_SHAPE, f"line {stmt.lineno}: the product whose dtype and device are read "
                   f"is not a plain `name = <product>`")
    text = mod.smap.text

    def seg(node) -> str:
        a, b = mod.smap.node_span(node)
        part = text[a:b]
        return part if isinstance(node, _SAFE_OPERAND) else f"({part})"

    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.MatMult):
        expr = f"{seg(value.left)}[..., :0, :] @ {seg(value.right)}[..., :0]"
    elif (isinstance(value, ast.Call) and len(value.args) == 2 and not value.keywords
          and not any(isinstance(a, ast.Starred) for a in value.args)):
        a, b = mod.smap.node_span(value.func)
        expr = f"{text[a:b]}({seg(value.args[0])}[..., :0, :], {seg(value.args[1])}[..., :0])"
    else:
        raise Skip(codes.S_STMT_SHAPE, f"line {stmt.lineno}: the product whose dtype and device are read "
                   f"is not `torch.matmul(a, b)`, `torch.bmm(a, b)` or `a @ b`")
    comment = "  # dslc: only its dtype and device are read (empty operands: no arithmetic)"
    return f"{mod.indent(stmt)}{target.id} = {expr}{comment}{mod.nl}"


def _same_metadata_scale(match: ir.Match, k: int, path, pos: int) -> bool:
    """The node at `pos` is the matched node right after the probed product,
    `s = s / d` or `s = s * d` rebinding the product's own name, with `d` a
    number or a 0-d tensor of the product's dtype (`torch.full([], x,
    dtype=s.dtype, ...)`, GPT-2's scale): the result has the product's dtype
    and device, and where its statement is deleted the name still holds the
    probed product, so a read of its dtype or device reads the same."""
    if k + 1 >= len(match.nodes) or safety.node_key(path.nodes[pos]) != safety.node_key(match.nodes[k + 1]):
        return False
    node, product = path.nodes[pos], match.nodes[k]
    if node.kind != "op" or node.op not in ("/", "*") or len(node.inputs) != 2 or len(product.outputs) != 1:
        return False
    name = product.outputs[0]
    left, right = node.inputs
    if node.outputs != (name,) or left.kind != "name" or left.text != name:
        return False
    if right.kind == "const":
        return isinstance(right.const, (int, float)) and not isinstance(right.const, bool)
    if right.kind != "name":
        return False
    full = next((n for n in reversed(path.nodes[:pos]) if right.text in n.outputs), None)
    if full is None or full.kind != "call" or full.type != "torch.full" or not full.inputs:
        return False
    kwargs = dict(full.kwargs)
    dtype = kwargs.get("dtype")
    return (full.inputs[0].text in ("[]", "()") and dtype is not None and dtype.text == f"{name}.dtype"
            and set(kwargs) <= {"dtype", "device"})
