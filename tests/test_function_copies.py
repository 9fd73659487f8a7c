"""Copies of library functions (analysis/copies.py): transformers 5.x defines
its own `apply_rotary_pos_emb` and `rotate_half` in every modeling file (119
of the 5.24.0 files hold Llama's word for word); such a copy resolves to
Llama's qualified name, so liger's `rotary_pos_emb` rule rewrites its calls.
A function that differs in anything that could change what it computes keeps
its own name and is left alone."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from dslc.analysis.copies import copies
from dslc.cli import main
from rewrite_support import ROPE_SAME_OUTPUTS_AND_GRADS, run_without_liger

REPO = Path(__file__).resolve().parent.parent
LIGER = REPO / "rulepacks" / "liger.adr"
LLAMA = "transformers.models.llama.modeling_llama.apply_rotary_pos_emb"
PHI3 = "transformers.models.phi3.modeling_phi3.apply_rotary_pos_emb"

# transformers 5.24.0 modeling_gemma.py, the two functions as they are there.
GEMMA = '''\
import torch
from torch import nn

from ...integrations import use_kernel_forward_from_hub


def rotate_half(x):
    """Rotates half the hidden dims of the input."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


@use_kernel_forward_from_hub("rotary_pos_emb")
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Applies Rotary Position Embedding to the query and key tensors."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed
'''

# transformers 5.24.0 modeling_phi3.py: partial rotary.
PHI3_FUNCS = GEMMA.replace('''@use_kernel_forward_from_hub("rotary_pos_emb")
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Applies Rotary Position Embedding to the query and key tensors."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed''', '''def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)

    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]

    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed''')

# transformers 5.24.0 modeling_olmo2.py: Llama's, cast back.
OLMO2_FUNCS = GEMMA.replace('''    """Applies Rotary Position Embedding to the query and key tensors."""
    cos = cos.unsqueeze(unsqueeze_dim)''', '''    q_type, k_type = q.dtype, k.dtype
    cos = cos.unsqueeze(unsqueeze_dim)''').replace(
    "    return q_embed, k_embed", "    return q_embed.to(q_type), k_embed.to(k_type)")

# transformers 5.24.0 modeling_glm4_moe.py: Phi3's partial rotary in more statements.
GLM4_MOE_FUNCS = PHI3_FUNCS.replace('''    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)''', '''    # Apply rotary embeddings on the first half or full tensor
    q_embed = (q_rot * cos) + (rotate_half(q_rot) * sin)
    k_embed = (k_rot * cos) + (rotate_half(k_rot) * sin)

    # Concatenate back to full shape
    q_embed = torch.cat([q_embed, q_pass], dim=-1)
    k_embed = torch.cat([k_embed, k_pass], dim=-1)''')

ATTN = '''

class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.k_proj = nn.Linear(16, 8)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, 4, 4).transpose(1, 2)
        k = self.k_proj(x).view(b, s, 2, 4).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k
'''


def _copies(source: str, module: str = "transformers.models.gemma.modeling_gemma") -> dict[str, str]:
    return copies(ast.parse(source), module)


def test_a_word_for_word_copy_resolves_to_the_canonical_name():
    assert _copies(GEMMA) == {"apply_rotary_pos_emb": LLAMA}
    # without the decorator, without docstrings: the same computation
    bare = GEMMA.replace('@use_kernel_forward_from_hub("rotary_pos_emb")\n', "")
    bare = bare.replace('    """Rotates half the hidden dims of the input."""\n', "")
    assert _copies(bare) == {"apply_rotary_pos_emb": LLAMA}
    assert _copies(PHI3_FUNCS, "transformers.models.phi4_multimodal.modeling_phi4_multimodal") == {
        "apply_rotary_pos_emb": PHI3}
    assert _copies(OLMO2_FUNCS, "transformers.models.olmo3.modeling_olmo3") == {
        "apply_rotary_pos_emb": "transformers.models.olmo2.modeling_olmo2.apply_rotary_pos_emb"}
    assert _copies(GLM4_MOE_FUNCS, "transformers.models.bamba.modeling_bamba") == {
        "apply_rotary_pos_emb": "transformers.models.glm4_moe.modeling_glm4_moe.apply_rotary_pos_emb"}
    # the canonical module itself keeps its own name (nothing to map)
    assert _copies(GEMMA, "transformers.models.llama.modeling_llama") == {}


@pytest.mark.parametrize("why, source", [
    ("interleaved halves (GLM)", GEMMA.replace("torch.cat((-x2, x1), dim=-1)", "torch.stack((-x2, x1), dim=-1).flatten(-2)")),
    ("another default layout", GEMMA.replace("unsqueeze_dim=1):", "unsqueeze_dim=2):")),
    ("one more statement", GEMMA.replace("    return q_embed, k_embed", "    q_embed = q_embed * 2\n    return q_embed, k_embed")),
    ("another decorator", GEMMA.replace('@use_kernel_forward_from_hub("rotary_pos_emb")', "@torch.jit.script")),
    ("rotate_half defined twice", GEMMA + "\n\ndef rotate_half(x):\n    return x\n"),
    ("rotate_half rebound", GEMMA + "\nrotate_half = lambda x: x\n"),
    ("rotate_half rebound through `global`", GEMMA + "\n\ndef f():\n    global rotate_half\n    rotate_half = None\n"),
    ("rotate_half imported, not defined", GEMMA.replace("def rotate_half(x):", "def _unused(x):")
     + "from elsewhere import rotate_half\n"),
    ("torch is something else", GEMMA.replace("import torch\n", "import numpy as torch\n")),
    ("apply_rotary_pos_emb rebound", GEMMA + "\napply_rotary_pos_emb = None\n"),
])
def test_anything_that_may_compute_otherwise_is_no_copy(why, source):
    assert _copies(source) == {}, why


def _fake_modeling(tmp_path: Path, arch: str, funcs: str) -> Path:
    """transformers/models/<arch>/modeling_<arch>.py holding its own copy (as 5.x does)."""
    root = tmp_path / "fake"
    pkg = root / "transformers" / "models" / arch
    pkg.mkdir(parents=True)
    for d in (root / "transformers", root / "transformers" / "models", pkg):
        (d / "__init__.py").write_text("")
    (root / "transformers" / "integrations.py").write_text(
        "def use_kernel_forward_from_hub(name):\n    return lambda fn: fn\n")
    path = pkg / f"modeling_{arch}.py"
    path.write_text(funcs + ATTN)
    return path


@pytest.mark.parametrize("arch, funcs, rule", [("gemma", GEMMA, "rotary_pos_emb"),
                                               ("phi4_multimodal", PHI3_FUNCS, "phi3_rotary_pos_emb"),
                                               ("olmo3", OLMO2_FUNCS, "olmo2_rotary_pos_emb"),
                                               ("bamba", GLM4_MOE_FUNCS, "glm4_moe_rotary_pos_emb")])
def test_the_copys_calls_are_rewritten_and_compute_the_same(tmp_path, capsys, arch, funcs, rule):
    path = _fake_modeling(tmp_path, arch, funcs)
    original = tmp_path / "original.py"
    original.write_text(path.read_text())
    code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "--format", "json", "--write", str(path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(m["rule"], m["status"]) for m in report["matches"] if "rotary" in m["rule"]] == [(f"liger:{rule}", "applied")]
    text = path.read_text()
    assert "import transformers" not in text  # the fallback calls the file's own function
    assert "    return apply_rotary_pos_emb(q, k, cos, sin)\n" in text
    assert f"        q, k = _dslc_liger_{rule}(q, k, cos, sin)\n" in text
    root = tmp_path / "fake"
    proc = run_without_liger(tmp_path, textwrap.dedent(f"""
        import importlib
        a = importlib.import_module("transformers.models.{arch}.modeling_{arch}")
        torch.manual_seed(0)
        mb = a.Attn()
        spec = importlib.util.spec_from_file_location("transformers.models.{arch}.orig", {str(original)!r})
        o = importlib.util.module_from_spec(spec); spec.loader.exec_module(o)
        ma = o.Attn()
    """) + ROPE_SAME_OUTPUTS_AND_GRADS, sys_path=root)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_olmo2s_and_glm4_moes_are_llamas_under_the_rules_check():
    """olmo2_rotary_pos_emb's check (one dtype) makes the casts back no-ops;
    glm4_moe_rotary_pos_emb's (cos as wide as the head) the partial rotary full."""
    torch = pytest.importorskip("torch")
    fns = {}
    for name, src in (("llama", GEMMA), ("olmo2", OLMO2_FUNCS), ("glm4_moe", GLM4_MOE_FUNCS)):
        ns = {}
        exec(compile(src.replace("from ...integrations import use_kernel_forward_from_hub\n", "")
                     .replace('@use_kernel_forward_from_hub("rotary_pos_emb")\n', ""), name, "exec"), ns)
        fns[name] = ns["apply_rotary_pos_emb"]
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        q, k = torch.randn(2, 4, 5, 8, generator=g).to(dtype), torch.randn(2, 2, 5, 8, generator=g).to(dtype)
        ang = torch.rand(1, 5, 4, generator=g) * 3
        cos, sin = torch.cat((ang, ang), -1).cos().to(dtype), torch.cat((ang, ang), -1).sin().to(dtype)
        want = fns["llama"](q, k, cos, sin)
        for name in ("olmo2", "glm4_moe"):
            for a, b in zip(want, fns[name](q, k, cos, sin)):
                assert a.dtype == b.dtype and torch.equal(a, b), name


def test_phi3s_partial_rotary_is_llamas_where_cos_is_as_wide_as_the_head():
    """What phi3_rotary_pos_emb's run-time check relies on: with cos as wide as
    the head, Phi3's function computes Llama's (bit for bit); narrower, not."""
    torch = pytest.importorskip("torch")
    ns_l, ns_p = {}, {}
    exec(compile(textwrap.dedent(GEMMA.replace("from ...integrations import use_kernel_forward_from_hub\n", "")
                                 .replace('@use_kernel_forward_from_hub("rotary_pos_emb")\n', "")), "l", "exec"), ns_l)
    exec(compile(PHI3_FUNCS.replace("from ...integrations import use_kernel_forward_from_hub\n", ""), "p", "exec"), ns_p)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    ang = torch.rand(1, 5, 4, generator=g) * 3
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    for a, b in zip(ns_l["apply_rotary_pos_emb"](q, k, cos, sin), ns_p["apply_rotary_pos_emb"](q, k, cos, sin)):
        assert torch.equal(a, b)
    half = (cos[..., :4], sin[..., :4])  # partial rotary (the check sends it to the original)
    assert torch.equal(ns_p["apply_rotary_pos_emb"](q, k, *half)[0][..., 4:], q[..., 4:])  # passed through
    with pytest.raises(RuntimeError):
        ns_l["apply_rotary_pos_emb"](q, k, *half)  # Llama's is another function there


def test_a_namesake_that_is_no_copy_is_left_alone_with_a_reason(tmp_path, capsys):
    glm = GEMMA.replace("torch.cat((-x2, x1), dim=-1)", "torch.stack((-x2, x1), dim=-1).flatten(-2)")
    path = _fake_modeling(tmp_path, "glm", glm)
    before = path.read_text()
    code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "--near-misses", "--format", "json",
                 "--write", str(path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and path.read_text() == before
    assert not [m for m in report["matches"] if "rotary" in m["rule"]]
    (near,) = [n for n in report["near_misses"] if n["code"] == "N403"]
    assert near["class"] == "Attn" and "own function" in near["reason"]
    assert set(near["rules"]) == {"liger:rotary_pos_emb", "liger:mistral_rotary_pos_emb",
                                  "liger:qwen2_rotary_pos_emb", "liger:phi3_rotary_pos_emb",
                                  "liger:olmo2_rotary_pos_emb", "liger:glm4_moe_rotary_pos_emb"}
