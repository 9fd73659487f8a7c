"""Module trees walked by computed attribute names (W112).

`outside` finds the uses of a changed attribute by name: `x.LayerNorm`,
`getattr(x, "LayerNorm")`.  A checkpoint loader that walks the model by the
names a checkpoint holds (transformers' `load_tf_weights_in_bert`:
`pointer = getattr(pointer, scope_names[0])`, then `pointer.weight`) names
no attribute in its text, so the check cannot see it; after a rewrite that
replaces `LayerNorm` by a fused module (its parameters under
`LayerNorm.layer_norm`), such a loader stops at a missing attribute
(AttributeError: loud, at load time; some loaders catch it and skip that
weight).  Refusing every rewrite of a package that has such a loader would
drop most BERT-family rewrites for a path few use (TF checkpoints), so the
rewrite stays and carries a warning naming the loader (W112;
docs/reliability.md).

A walk is `p = getattr(p, <not a literal>)` (the name it assigns is its
first argument) in a function of the file or of a sibling module; the walk
of `outside.index` finds them (`FileIndex.walks`: the first of each
function, in the order of the tree), as it finds the attribute uses.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

GATE = re.compile(r"\bgetattr\s*\(")


@dataclass(frozen=True)
class Walk:
    function: str  # the enclosing function (`load_tf_weights_in_bert`), or "module level"
    line: int
    text: str  # `pointer = getattr(pointer, scope_names[0])`


def is_walk(node) -> bool:
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
        return False
    call = node.value
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "getattr"
            and len(call.args) >= 2 and isinstance(call.args[0], ast.Name)
            and call.args[0].id == node.targets[0].id and not isinstance(call.args[1], ast.Constant))


def describe(walk: Walk, file: str, changed: dict[str, str]) -> str:
    attrs = ", ".join(f"`{a}`" for a in sorted(changed))
    return (f"`{walk.function}` in {file} walks a module tree by computed names (`{walk.text}`, line "
            f"{walk.line}): a checkpoint it loads may name {attrs}, which the rewrite changes, and fail "
            f"there (or skip that weight)")
