"""sdpa.adr's T5 block on attention written here from scratch (T5's form,
other names), and the places it refuses.

The form (transformers' T5Attention): `torch.matmul(q, k.transpose(3, 2))`
with no scale, a position bias built from the scores' dtype and device,
`scores += bias`, `softmax(scores.float(), dim=-1).type_as(scores)`,
`F.dropout(p, p=..., training=...)`, a head mask and returned weights.  The
rewrite passes `k.transpose(3, 2).mT` as SDPA's key, `scale=1.0`, the bias
as the additive mask, guards the head mask and returned weights per call,
and keeps the product's statement on empty slices for its dtype and device
(`option probe`).  The rewritten module gives the original's outputs,
weights and every gradient (fp32) under every run-time condition, with SDPA
running exactly where the guard is false.  Refused: a read of the scores
that is more than their dtype and device (the shape), a read of the masked
scores' dtype after the match, weights returned unconditionally; not
matched: a clamp between the add and the softmax, an in-place masked_fill_.
`dslc check` refuses `option probe` on a value that is not a product.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.rewrite_support import assert_rewrite, load_module, run

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
PACK = str(REPO / "rulepacks" / "sdpa.adr")
RULE = "matmul_t32_noscale_add_f32typeas_fdrop"

T5_LIKE = '''\
import torch
from torch import nn


class RelAttention(nn.Module):
    def __init__(self, d=16, heads=2, p=0.0, rel=True):
        super().__init__()
        self.heads = heads
        self.dh = d // heads
        self.p = p
        self.rel = rel
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.bias = nn.Embedding(8, heads)

    def split(self, x):
        return x.view(x.shape[0], -1, self.heads, self.dh).transpose(1, 2)

    def forward(self, x, mask=None, bias=None, head_mask=None, want_weights=False):
        q = self.split(self.wq(x))
        k = self.split(self.wk(x))
        v = self.split(self.wv(x))
        n = x.shape[1]
        scores = torch.matmul(q, k.transpose(3, 2))
        if bias is None:
            if self.rel:
                pos = torch.arange(n, device=scores.device)
                bias = self.bias((pos[None, :] - pos[:, None]).clamp(0, 7)).permute(2, 0, 1)[None].to(scores.dtype)
            else:
                bias = torch.zeros((1, self.heads, n, n), device=scores.device, dtype=scores.dtype)
            if mask is not None:
                bias = bias + mask
        scores += bias
        w = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        w = nn.functional.dropout(w, p=self.p, training=self.training)
        if head_mask is not None:
            w = w * head_mask
        out = torch.matmul(w, v).transpose(1, 2).reshape(x.shape[0], n, -1)
        outputs = (out, bias)
        if want_weights:
            outputs = outputs + (w,)
        return outputs
'''


def _rewritten(source: str):
    result = run(source, rules=(PACK,))
    assert not result.errors, result.errors
    return result


def test_t5_form_rewritten_with_probe_and_guard():
    result = _rewritten(T5_LIKE)
    new = result.new_source
    assert [m.rule.split(":")[-1] for m in result.matches if m.status == "applied"] == [RULE]
    assert "if head_mask is not None or want_weights:" in new
    assert "scores = torch.matmul(q[..., :0, :], k.transpose(3, 2)[..., :0])" in new
    assert ("out = scaled_dot_product_attention(q, k.transpose(3, 2).mT, v, attn_mask=torch.as_tensor(bias, "
            "dtype=q.dtype), dropout_p=self.p * self.training, scale=1.0).transpose(1, 2)") in new
    assert_rewrite(T5_LIKE, new, rules=(PACK,), applied=[RULE])  # parses; a second apply changes nothing


@pytest.mark.parametrize("rel", [True, False])
def test_t5_form_same_numbers(rel):
    new = _rewritten(T5_LIKE).new_source
    a_mod, b_mod = load_module(T5_LIKE, "t5_like_a"), load_module(new, "t5_like_b")
    calls = []
    real = b_mod.scaled_dot_product_attention
    b_mod.scaled_dot_product_attention = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    torch.manual_seed(0)
    a = a_mod.RelAttention(rel=rel)
    b = b_mod.RelAttention(rel=rel)
    b.load_state_dict(a.state_dict(), strict=True)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 5, 16, generator=g) * 1.5 + 0.3
    pad = torch.zeros(2, 1, 1, 5)
    pad[0, ..., 3:] = torch.finfo(torch.float32).min
    heads = torch.tensor([1.0, 0.25])[None, :, None, None]
    for mask, head_mask, want, train in itertools.product([None, pad], [None, heads], [False, True], [False, True]):
        outs, grads = [], []
        for m in (a, b):
            m.train(train)
            m.zero_grad()
            x = x0.clone().requires_grad_(True)
            out = m(x, mask=mask, head_mask=head_mask, want_weights=want)
            sum(o.float().sum() * (i + 1) for i, o in enumerate(out)).backward()
            outs.append(out)
            grads.append([x.grad] + [p.grad for p in m.parameters()])
        assert len(outs[0]) == len(outs[1])
        for x, y in zip(outs[0] + tuple(grads[0]), outs[1] + tuple(grads[1])):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
        assert outs[0][1].dtype == outs[1][1].dtype  # the bias built from the scores' dtype
    # SDPA ran where neither a head mask nor the weights were asked for: 2 masks x 2 modes
    assert len(calls) == 4


def test_t5_form_probe_keeps_autocast_dtype():
    """Under autocast the scores are bfloat16 while q is float32: the probe
    (the same matmul on empty slices) gives the bias the scores' dtype."""
    new = _rewritten(T5_LIKE.replace("self.rel = rel", "self.rel = False")).new_source
    a_mod, b_mod = load_module(T5_LIKE, "t5_like_c"), load_module(new, "t5_like_d")
    torch.manual_seed(0)
    a = a_mod.RelAttention(rel=False)
    b = b_mod.RelAttention(rel=False)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ra, rb = a(x), b(x)
    assert ra[1].dtype == rb[1].dtype == torch.bfloat16
    torch.testing.assert_close(rb[0].float(), ra[0].float(), atol=1e-1, rtol=1.6e-2)


@pytest.mark.parametrize("edit, code, reason", [
    # the shape of the scores: more than the probe keeps
    ("n = x.shape[1]\n", "S204", "`scores` (line"),
    # the masked scores' dtype after the match: the probe covers the product only
    ("        return outputs\n", "S204", "is read at line"),
    # the weights returned whatever the call
    ("        if want_weights:\n            outputs = outputs + (w,)\n", "S204", "`w`"),
])
def test_t5_form_refusals(edit, code, reason):
    source = T5_LIKE
    if edit.startswith("n = "):
        source = source.replace("        if bias is None:\n", "        n = scores.shape[-1]\n        if bias is None:\n")
    elif edit.startswith("        return"):
        source = source.replace(edit, "        outputs = outputs + (scores.dtype,)\n" + edit)
    else:
        source = source.replace(edit, "        outputs = outputs + (w,)\n")
    assert_rewrite(source, None, rules=(PACK,), skipped=[(RULE, code, reason)])


@pytest.mark.parametrize("old, new", [
    # Pix2Struct's vision attention clamps the scores between the add and the softmax
    ("        scores += bias\n", "        scores += bias\n        scores = torch.max(scores, torch.tensor(-1e4))\n"),
    # an in-place masked_fill_ is not a node of the analysis
    ("        scores += bias\n", "        scores.masked_fill_(bias < -1, -1e4)\n"),
])
def test_t5_form_not_matched(old, new):
    result = run(T5_LIKE.replace(old, new), rules=(PACK,))
    assert result.new_source is None
    assert not [m for m in result.matches if m.status == "applied"]


def test_check_refuses_probe_on_a_value_that_is_not_a_product(tmp_path):
    from dslc.cli import main

    rule = Path(PACK).read_text().split("\nrule ")[0] + '''
rule bad "probe on the softmax" {
  kernel torch.nn.functional.scaled_dot_product_attention
  tolerance atol=1e-5 rtol=1e-4
  forward {
    torch.matmul($q, $k) -> $s0;
    torch.nn.functional.softmax($s0, dim=-1) -> $p;
    torch.matmul($p, $v) -> $out;
  } => {
    torch.nn.functional.scaled_dot_product_attention($q, $k, $v, scale=1.0) -> $out;
  }
  option probe = "$p"
}
'''
    path = tmp_path / "bad.adr"
    path.write_text(rule)
    assert main(["check", str(path)]) == 1
