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

    def empty(product) -> str | None:
        if isinstance(product, ast.BinOp) and isinstance(product.op, ast.MatMult):
            return f"{seg(product.left)}[..., :0, :] @ {seg(product.right)}[..., :0]"
        if (isinstance(product, ast.Call) and len(product.args) == 2 and not product.keywords
                and not any(isinstance(a, ast.Starred) for a in product.args)):
            a, b = mod.smap.node_span(product.func)
            return f"{text[a:b]}({seg(product.args[0])}[..., :0, :], {seg(product.args[1])}[..., :0])"
        return None

    expr = empty(value)
    if (expr is None and isinstance(value, ast.BinOp) and isinstance(value.op, (ast.Mult, ast.Div))
            and number_expr(value.right) and (inner := empty(value.left)) is not None):
        # `s = (q @ kᵀ) * c`, c a number: scaled in the same statement (causal Bark)
        expr = f"({inner}) {'*' if isinstance(value.op, ast.Mult) else '/'} {seg(value.right)}"
    if expr is None:
        raise Skip(codes.S_STMT_SHAPE, f"line {stmt.lineno}: the product whose dtype and device are read "
                   f"is not `torch.matmul(a, b)`, `torch.bmm(a, b)` or `a @ b` (times a number)")
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
    if left.kind != "name" or left.text != name:
        return False
    if node.outputs != (name,):
        # `s = (q @ kᵀ) * c` in one statement: the product is a temporary; the
        # probe keeps the statement, scaled by the same number (`probe_line`)
        return node.stmt == product.stmt and _number(path, pos, right)
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


# Functions whose result is a Python number (or that raise).
_NUMBER_FUNCS = frozenset({"math.sqrt", "math.log", "math.exp", "math.pow", "builtins.float", "builtins.int",
                           "float", "int"})


def _number(path, pos: int, value, depth: int = 0) -> bool:
    """`value` (an input of the node at `pos`) is a Python number: a numeric
    literal, or the temporary of an arithmetic node over numbers or of a
    call of `_NUMBER_FUNCS` (`1.0 / math.sqrt(self.head_dim)`)."""
    if value.kind == "const":
        return isinstance(value.const, (int, float)) and not isinstance(value.const, bool)
    if value.kind != "name" or depth > 4:
        return False
    writer = next((n for n in reversed(path.nodes[:pos]) if value.text in n.outputs), None)
    if writer is None or len(writer.outputs) != 1:
        return False
    at = path.nodes.index(writer)
    if writer.kind == "op" and writer.op in ("+", "-", "*", "/", "**"):
        return all(_number(path, at, v, depth + 1) for v in writer.inputs)
    if writer.kind == "call" and writer.type in _NUMBER_FUNCS:
        return True
    return False


def number_expr(e: ast.expr) -> bool:
    """A call-free arithmetic expression over numeric literals, names and
    attributes, or calls of `math.<f>` / `float` / `int` on such (the scale
    `1.0 / math.sqrt(self.head_dim)`): evaluated once more by the probe, it
    reads, writes and calls nothing else."""
    for n in ast.walk(e):
        if isinstance(n, ast.Call):
            f = n.func
            ok = ((isinstance(f, ast.Name) and f.id in ("float", "int"))
                  or (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math"))
            if not ok or n.keywords:
                return False
        elif not isinstance(n, (ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Attribute, ast.Load,
                                ast.operator, ast.unaryop)):
            return False
    return True
