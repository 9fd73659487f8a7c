"""Recognised copies of library functions.

transformers 5.x defines its own `apply_rotary_pos_emb` (and `rotate_half`)
in each modeling file: 119 of the 5.24.0 files hold Llama's two functions
word for word (and 25 more one of three other spellings below), so a call there resolves to `transformers.models.gemma.
modeling_gemma.apply_rotary_pos_emb` and no rule written for Llama's
function sees it.  A module-level function counts as a copy of a canonical
function below, and a call of it resolves to the canonical qualified name
(`names.Resolver.resolve_parts`), when:

1. its definition is the canonical one statement for statement (`ast.dump`
   equality: same parameters and defaults, same body), docstring aside;
2. its decorators are none, or exactly the canonical's;
3. every module-level name it reads that is in the canonical's `helpers`
   is bound once in the module, by a `def` that is itself the canonical
   helper (rule 1), and `torch` is bound only by `import torch`.

So a copy computes what the canonical computes on any input, and a rule
that is sound for the canonical is sound for the copy.  Anything else (a
partial rotary, an interleaved `rotate_half`, another decorator, a
`rotate_half` imported or redefined) keeps its own name.  The texts are
the transformers 5.24.0 definitions (Apache-2.0), canonical names are where
they are defined.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Mapping

_ROTATE_HALF = '''
def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)
'''

_LLAMA_ROPE = '''
@use_kernel_forward_from_hub("rotary_pos_emb")
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed
'''

# Phi3's partial rotary: the first cos.shape[-1] dims rotate, the rest pass.
_PHI3_ROPE = '''
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)

    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]

    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed
'''

# Olmo2's: Llama's computation, the results cast back to q's and k's dtypes.
_OLMO2_ROPE = '''
@use_kernel_forward_from_hub("rotary_pos_emb")
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    q_type, k_type = q.dtype, k.dtype
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed.to(q_type), k_embed.to(k_type)
'''

# GLM4-MoE's partial rotary (Phi3's, spelled in more statements).
_GLM4_MOE_ROPE = '''
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)

    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]

    q_embed = (q_rot * cos) + (rotate_half(q_rot) * sin)
    k_embed = (k_rot * cos) + (rotate_half(k_rot) * sin)

    q_embed = torch.cat([q_embed, q_pass], dim=-1)
    k_embed = torch.cat([k_embed, k_pass], dim=-1)
    return q_embed, k_embed
'''


@dataclass(frozen=True)
class Canonical:
    qualname: str
    source: str
    helpers: Mapping[str, str]  # module-level helper name -> its canonical source


CANONICAL: tuple[Canonical, ...] = (
    Canonical("transformers.models.llama.modeling_llama.apply_rotary_pos_emb", _LLAMA_ROPE,
              {"rotate_half": _ROTATE_HALF}),
    Canonical("transformers.models.phi3.modeling_phi3.apply_rotary_pos_emb", _PHI3_ROPE,
              {"rotate_half": _ROTATE_HALF}),
    Canonical("transformers.models.olmo2.modeling_olmo2.apply_rotary_pos_emb", _OLMO2_ROPE,
              {"rotate_half": _ROTATE_HALF}),
    Canonical("transformers.models.glm4_moe.modeling_glm4_moe.apply_rotary_pos_emb", _GLM4_MOE_ROPE,
              {"rotate_half": _ROTATE_HALF}),
)


def _parsed(source: str) -> ast.FunctionDef:
    fn = ast.parse(source).body[0]
    assert isinstance(fn, ast.FunctionDef)
    return fn


def _body_key(fn: ast.FunctionDef) -> str:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    return ast.dump(fn.args) + "|" + "|".join(ast.dump(s) for s in body)


def _decorators(fn: ast.FunctionDef) -> list[str]:
    return [ast.dump(d) for d in fn.decorator_list]


_BY_NAME: dict[str, list[tuple[Canonical, str, list[str]]]] = {}
for _c in CANONICAL:
    _fn = _parsed(_c.source)
    _BY_NAME.setdefault(_fn.name, []).append((_c, _body_key(_fn), _decorators(_fn)))
_HELPERS: dict[str, str] = {name: _body_key(_parsed(src)) for c in CANONICAL for name, src in c.helpers.items()}


def _same_def(fn: ast.FunctionDef, key: str, decorators: list[str]) -> bool:
    return _body_key(fn) == key and _decorators(fn) in ([], decorators)


def _module_bindings(tree: ast.Module) -> tuple[dict[str, list[ast.AST]], bool]:
    """Every binding of a module-level name (statements at module level, in
    `if`/`try`/`with`/loops there, and names declared `global` anywhere), and
    whether `torch` is bound only by `import torch` (or `import torch.x`)."""
    defs: dict[str, list[ast.AST]] = {}
    torch_ok = True

    def visit(node: ast.AST, top: bool) -> None:
        nonlocal torch_ok
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Global):
                for name in child.names:
                    defs.setdefault(name, []).append(child)
            if not top:
                visit(child, False)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.setdefault(child.name, []).append(child)
                visit(child, False)  # only its `global` statements count
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for a in child.names:
                    bound = a.asname or a.name.split(".")[0]
                    if bound == "torch" and not (isinstance(child, ast.Import) and not a.asname
                                                 and a.name.split(".")[0] == "torch"):
                        torch_ok = False
                    defs.setdefault(bound, []).append(child)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                defs.setdefault(child.id, []).append(child)
            elif isinstance(child, (ast.Lambda, ast.comprehension)):
                visit(child, False)
            else:
                visit(child, True)

    visit(tree, True)
    return defs, torch_ok


def copies(tree: ast.Module, module: str) -> dict[str, str]:
    """{name of a module-level function that is a copy: canonical qualname}
    (module doc); a module's own canonical definition is left out."""
    out: dict[str, str] = {}
    if not any(isinstance(s, ast.FunctionDef) and s.name in _BY_NAME for s in tree.body):
        return out  # the common case: one pass over the top-level statements
    defs, torch_ok = _module_bindings(tree)
    if not torch_ok:
        return out
    for stmt in tree.body:
        if not isinstance(stmt, ast.FunctionDef) or len(defs.get(stmt.name, ())) != 1:
            continue
        for canon, key, decorators in _BY_NAME.get(stmt.name, ()):
            if not _same_def(stmt, key, decorators) or not _helpers_are_copies(canon, defs):
                continue
            if canon.qualname != f"{module}.{stmt.name}":
                out[stmt.name] = canon.qualname
            break
    return out


def _helpers_are_copies(canon: Canonical, defs: Mapping[str, list]) -> bool:
    for name in canon.helpers:
        found = defs.get(name, ())
        if len(found) != 1 or not isinstance(found[0], ast.FunctionDef) or found[0].decorator_list:
            return False
        if _body_key(found[0]) != _HELPERS[name]:
            return False
    return True
