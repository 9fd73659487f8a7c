"""rulepacks/sdpa.adr: eager attention -> torch.nn.functional.scaled_dot_product_attention.

Each spelling of tests/sdpa_models.py is applied with the real pipeline
(`dslc apply`), then the original and rewritten classes are run side by side
with the real SDPA kernel on the CPU: forward and backward, fp32 and bf16,
outputs, input and parameter gradients, on inputs that are scaled and shifted
(not standard normal).  Probabilities returned under `output_attentions`, a
head mask, or a mask `if` that does more: a per-call guard (`keep`; both
branches in tests/test_sdpa_keep.py).  Refusals: probabilities returned
always, a transpose whose meaning depends on the rank.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dslc.cli import main

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "sdpa.adr"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sdpa_models  # noqa: E402

# fp32: the pack's contract; bf16: see test_rewrite_bf16_is_as_close_to_fp32_as_eager_bf16.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4)}
BF16_ATOL = 1e-2


def _apply(tmp_path: Path, capsys, name: str, text: str) -> tuple[str, list[dict]]:
    path = tmp_path / name
    path.write_text(text)
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--write", "--format", "json", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    return path.read_text(), json.loads(out)["matches"]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdpa")
    orig = tmp / "orig_models.py"
    orig.write_text(sdpa_models.source())
    new = tmp / "new_models.py"
    new.write_text(sdpa_models.source())
    # in-process (the pack is loaded once per test process: tests/packcache.py)
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--write", "--format", "json", str(new)])
    assert code == 0, se.getvalue()
    assert "Traceback" not in se.getvalue()
    return _load(orig, "sdpa_orig_models"), _load(new, "sdpa_new_models"), json.loads(so.getvalue())["matches"], new.read_text()


def test_generated_pack_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "rulepacks" / "gen_sdpa.py"), "--check"])
    assert proc.returncode == 0, "rulepacks/sdpa.adr is stale: run python rulepacks/gen_sdpa.py"


def test_each_spelling_is_rewritten_by_its_rule(rewritten):
    _, _, matches, text = rewritten
    applied = {m["class"]: m["rule"] for m in matches if m["status"] == "applied"}
    assert applied == sdpa_models.REWRITTEN
    # TimmFusedBranch already calls SDPA in its other branch (and reads the
    # Dropout's `p` there: the layer is kept, not replaced)
    assert text.count("scaled_dot_product_attention(") == len(sdpa_models.REWRITTEN) + 1


def test_refusals_keep_the_code_and_say_why(rewritten):
    _, _, matches, text = rewritten
    skipped = {m["class"]: m["reason"] for m in matches if m["status"] == "skipped"}
    # probabilities read after the chain: refused with the data-flow reason
    assert "`probs`" in skipped["ReturnsProbs"] and "after the match" in skipped["ReturnsProbs"]
    # v is the result of an inlined helper: no source expression to pass
    assert "inlined call" in skipped["InlinedValue"]
    # an optional mask under an `if` the rewrite cannot delete (S330), or
    # whose other path does not match the chain (the data-flow check)
    codes = {m["class"]: m["code"] for m in matches if m["status"] == "skipped"}
    assert codes["OptionalMaskElse"] == "S330" and "`else` branch" in skipped["OptionalMaskElse"]
    assert codes["OptionalMaskOtherGuard"] == "S330" and "tests `self.p > 0`" in skipped["OptionalMaskOtherGuard"]
    assert codes["OptionalMaskOtherName"] == "S330" and "not `bias is not None`" in skipped["OptionalMaskOtherName"]
    # transpose(2, 3) is the last two dims only for 4-d tensors: no rule accepts it;
    # einsum equations outside the generator's lists (heads in dim 2, scores
    # transposed) match no rule
    for name in sdpa_models.REFUSED:
        body = sdpa_models.CLASSES[name][0]
        assert body in text, f"{name} was changed"


def _einsum_operands(eq: str, g):
    """Random operands for an einsum equation (`...` stands for two dims)."""
    sizes = {"...": (2, 3)}
    shapes = []
    for term in eq.replace(" ", "").split("->")[0].split(","):
        dims = []
        if term.startswith("..."):
            dims += sizes["..."]
            term = term[3:]
        dims += [{"b": 2, "h": 3, "n": 3}.get(c, 0) or 4 + "ijqklsd".index(c) for c in term]
        shapes.append(dims)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("kind", ["qk", "pv"])
def test_every_listed_einsum_equation_is_the_product_it_stands_for(kind):
    """The einsum rules accept an equation only from gen_sdpa's lists: each
    must compute q @ k^T (qk) or p @ v (pv) on tensors of its rank."""
    sys.path.insert(0, str(REPO / "rulepacks"))
    import gen_sdpa

    eqs = gen_sdpa.EINSUM_QK if kind == "qk" else gen_sdpa.EINSUM_PV
    assert len(eqs) == len(set(eqs)) > 10
    g = torch.Generator().manual_seed(1)
    for eq in eqs:
        a, b = _einsum_operands(eq, g)
        want = a @ b.transpose(-2, -1) if kind == "qk" else a @ b
        torch.testing.assert_close(torch.einsum(eq, a, b), want, msg=lambda m: f"{eq}: {m}")
    # the other list's equations are not this product (the lists are disjoint)
    other = gen_sdpa.EINSUM_PV if kind == "qk" else gen_sdpa.EINSUM_QK
    assert not set(eqs) & set(other)


def _inputs(cls_name: str, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 5, 16, generator=g) * 2.5 + 0.7).to(dtype)
    kwargs = {}
    if cls_name in ("MatmulDivAddDrop", "EinsumEllipsisDivAddUpcast"):
        # an additive padding mask: large negative values on some keys
        mask = torch.zeros(2, 1, 1, 5)
        mask[1, ..., -2:] = -1e4
        kwargs["mask"] = mask.to(dtype)
    if cls_name == "OptionalMaskAdd":
        mask = torch.zeros(2, 1, 1, 5)
        mask[0, ..., -1:] = -1e4
        mask[1, ..., :2] = -1e4
        kwargs["attention_mask"] = mask.to(dtype)
    if cls_name in ("BmmFillUpcast", "OptionalMaskFill"):
        kwargs["mask"] = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)  # causal
    return x, kwargs


def _run(module, x, kwargs):
    x = x.clone().requires_grad_(True)
    out = module(x, **kwargs)
    if isinstance(out, tuple):  # `(out,)` / `(out, probs)` under `output_attentions`
        out = out[0]
    (out.float() * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    return out.detach(), x.grad, grads


def _build(mod, cls_name, dtype, state=None):
    torch.manual_seed(0)
    m = getattr(mod, cls_name)(p=0.3).eval()
    if state is not None:
        m.load_state_dict(state, strict=True)
    return m.to(dtype)


@pytest.mark.parametrize("cls_name", sorted(sdpa_models.REWRITTEN))
def test_rewrite_equals_eager_fp32(rewritten, cls_name):
    orig, new, _, _ = rewritten
    m0 = _build(orig, cls_name, torch.float32)
    m1 = _build(new, cls_name, torch.float32, m0.state_dict())
    x, kwargs = _inputs(cls_name, torch.float32)
    o0, gx0, gp0 = _run(m0, x, kwargs)
    o1, gx1, gp1 = _run(m1, x, kwargs)
    tol = TOL[torch.float32]
    torch.testing.assert_close(o1, o0, **tol)
    torch.testing.assert_close(gx1, gx0, **tol)
    assert gp0.keys() == gp1.keys() and gp0
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cls_name", ["OptionalMaskAdd", "OptionalMaskFill"])
@pytest.mark.parametrize("given", [True, False], ids=["mask", "no-mask"])
def test_optional_mask_equals_eager_on_both_paths(rewritten, cls_name, given):
    """`if mask is not None: s = s + mask` (or `s.masked_fill(mask, f)`) became
    one SDPA call that converts the mask only where it is not None: the same
    outputs and gradients with the mask and without it (the `if` not taken)."""
    orig, new, _, text = rewritten
    assert "if attention_mask is not None" not in text.split("class OptionalMaskAdd")[1].split("class ")[0]
    m0 = _build(orig, cls_name, torch.float32)
    m1 = _build(new, cls_name, torch.float32, m0.state_dict())
    x, kwargs = _inputs(cls_name, torch.float32)
    if not given:
        kwargs = {}
    o0, gx0, gp0 = _run(m0, x, kwargs)
    o1, gx1, gp1 = _run(m1, x, kwargs)
    tol = TOL[torch.float32]
    torch.testing.assert_close(o1, o0, **tol)
    torch.testing.assert_close(gx1, gx0, **tol)
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **tol, msg=lambda m: f"{name}: {m}")
    if given:  # the mask changes the result: the path with it is not the path without it
        assert not torch.allclose(o0, _run(m0, x, {})[0], atol=1e-3)


@pytest.mark.parametrize("cls_name", sorted(sdpa_models.REWRITTEN))
def test_rewrite_bf16_is_as_close_to_fp32_as_eager_bf16(rewritten, cls_name):
    """bf16: eager rounds every intermediate to bf16, SDPA does not, so the two
    bf16 results are compared through the fp32 eager result: the rewrite's
    error (outputs and every gradient) is at most twice eager bf16's, plus
    BF16_ATOL (the FlashAttention test suite's criterion)."""
    orig, new, _, _ = rewritten
    ref = _build(orig, cls_name, torch.float32)
    state = ref.state_dict()
    x, kwargs = _inputs(cls_name, torch.float32)
    r = _run(ref, x, kwargs)
    xb = x.to(torch.bfloat16)
    kb = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in kwargs.items()}
    e = _run(_build(orig, cls_name, torch.bfloat16, state), xb, kb)
    n = _run(_build(new, cls_name, torch.bfloat16, state), xb, kb)
    pairs = [("output", r[0], e[0], n[0]), ("input grad", r[1], e[1], n[1])]
    pairs += [(name, r[2][name], e[2][name], n[2][name]) for name in r[2]]
    for what, ref_t, eager_t, new_t in pairs:
        eager_err = (eager_t.float() - ref_t).abs().max().item()
        new_err = (new_t.float() - ref_t).abs().max().item()
        assert new_err <= 2 * eager_err + BF16_ATOL, f"{what}: SDPA bf16 error {new_err:.3g}, eager bf16 {eager_err:.3g}"


@pytest.mark.parametrize("cls_name", ["MatmulDivAddDrop", "AtMulTensorSoftmaxFDrop"])
def test_train_mode_passes_the_dropout_probability(rewritten, cls_name, monkeypatch):
    """SDPA drops with its own RNG: train outputs are random, so the wiring
    (dropout_p = p in train mode, 0.0 in eval mode) is checked directly."""
    _, new, _, _ = rewritten
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dropout_p"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    m = getattr(new, cls_name)(p=0.25)
    x, kwargs = _inputs(cls_name, torch.float32)
    m.train()
    m(x, **kwargs)
    m.eval()
    m(x, **kwargs)
    assert seen == [pytest.approx(0.25), 0.0]


def test_tiny_llm_attention_is_rewritten_and_equal(tmp_path, capsys):
    """examples/tiny_llm.py: the causal-buffer attention (masked_fill, nn.Dropout)."""
    src = (REPO / "examples" / "tiny_llm.py").read_text()
    text, matches = _apply(tmp_path, capsys, "tiny_llm_sdpa.py", src)
    applied = [m for m in matches if m["status"] == "applied"]
    assert [m["class"] for m in applied] == ["TinyCausalSelfAttention"]
    assert "scaled_dot_product_attention" in text
    orig = _load(REPO / "examples" / "tiny_llm.py", "tiny_llm_orig")
    new = _load(tmp_path / "tiny_llm_sdpa.py", "tiny_llm_new")
    torch.manual_seed(0)
    m0 = orig.TinyLM(orig.TinyConfig()).eval()
    m1 = new.TinyLM(new.TinyConfig()).eval()
    m1.load_state_dict(m0.state_dict(), strict=True)
    ids = torch.randint(0, orig.TinyConfig.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    (l0, loss0), (l1, loss1) = m0(ids, labels=ids), m1(ids, labels=ids)
    torch.testing.assert_close(l1, l0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss1, loss0, atol=1e-4, rtol=1e-4)
    loss0.backward()
    loss1.backward()
    g0 = dict(m0.named_parameters())
    for name, p in m1.named_parameters():
        torch.testing.assert_close(p.grad, g0[name].grad, atol=1e-4, rtol=1e-4)
    # a second apply changes nothing
    again, _ = _apply(tmp_path, capsys, "tiny_llm_sdpa.py", text)
    assert again == text


WHEN_RULE = '''\
pack guarded "a run-time guard on a forward rewrite"
requires torch ">=2.1" install "pip install torch"
rule guarded_attention "eager attention -> SDPA under a run-time condition" {
  kernel torch.nn.functional.scaled_dot_product_attention
  tolerance atol=1e-5 rtol=1e-4
  forward {
    torch.Tensor.transpose($k, -2, -1) -> $kt;
    torch.matmul($q, $kt) -> $s0;
    $s0 * $c -> $s1;
    torch.nn.functional.softmax($s1, dim=-1) -> $p;
    torch.matmul($p, $v) -> $out;
  } => {
    torch.nn.functional.scaled_dot_product_attention($q, $k, $v, dropout_p=0.0, scale=$c) -> $out;
  }
  when $c != 0
}
'''


def test_when_cannot_guard_a_forward_rewrite(tmp_path, capsys):
    """Why the output_attentions / head-mask rewrite is refused rather than
    guarded (docs/adr-language.md, "What a forward rewrite cannot guard
    yet"): `when` guards init rewrites only, and a rule that uses it on a
    forward rewrite is an error of `dslc check` (ADR353; `dslc apply` would
    skip each match with S305: tests/test_check_guarded_forward.py), so
    apply loads no such pack and leaves the code as it was."""
    pack = tmp_path / "guarded.adr"
    pack.write_text(WHEN_RULE)
    assert main(["check", str(pack)]) == 1
    assert "error[ADR353]" in capsys.readouterr().out
    body = '''\
import torch
from torch import nn
from torch.nn import functional as F


class Attn(nn.Module):
    def forward(self, q, k, v):
        s = torch.matmul(q, k.transpose(-2, -1)) * 0.125
        p = F.softmax(s, dim=-1)
        return torch.matmul(p, v)
'''
    path = tmp_path / "m.py"
    path.write_text(body)
    code = main(["apply", "--rules", str(pack), "--no-cache", "--jobs", "1", "--write", "--format", "json", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "ADR353" in err
    assert path.read_text() == body


def test_bert_like_optional_mask_is_rewritten_and_verifies(tmp_path, capsys):
    """tests/sdpa_bert_like.py: `if attention_mask is not None: scores = scores +
    attention_mask` is deleted with the chain; `dslc verify` passes on the
    attention alone (mask None) and inside a block that passes a mask; a
    second apply changes nothing."""
    src = (REPO / "tests" / "sdpa_bert_like.py").read_text()
    text, matches = _apply(tmp_path, capsys, "bert_like.py", src)
    assert [(m["class"], m["status"]) for m in matches] == [("MiniBertSelfAttention", "applied")]
    assert "        if attention_mask is not None:" not in text
    assert "attn_mask=None if attention_mask is None else torch.as_tensor(attention_mask" in text
    orig = tmp_path / "bert_like_orig.py"
    orig.write_text(src)
    code = main(["verify", "--rules", str(PACK), "--class", "MiniBertSelfAttention", "--class", "MaskedBlock",
                 str(orig), str(tmp_path / "bert_like.py")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "2 passed, 0 failed" in out + err
    again, _ = _apply(tmp_path, capsys, "bert_like.py", text)
    assert again == text
