"""Fully masked query rows: what the SDPA rewrite keeps and what it does not.

With left padding and a causal mask, the first query rows of a padded
sequence see no key: their additive mask row is `torch.finfo(dtype).min`
everywhere (or `-inf` where a `masked_fill` writes it).  Measured here on
the CPU kernels (the notes of rulepacks/sdpa.adr state the same):

* finfo.min: the outputs are equal (both attend uniformly), and so are all
  gradients when the loss does not read those rows (padding positions,
  which a loss discards); where the loss reads them, the gradients of q, k
  and v differ (SDPA's backward recomputes the probabilities of such a row
  as 1 per key instead of 1/n);
* -inf: eager gives NaN in those rows (forward and gradients), SDPA zeros.

`dslc verify` pads on the right (no fully masked row), so this file is what
checks the first point.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _eager(q, k, v, m):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + m
    return F.softmax(s, dim=-1) @ v


def _sdpa(q, k, v, m):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=1 / math.sqrt(q.shape[-1]))


def _left_padded_causal(dtype, fill, b=2, t=6, pad=3):
    m = torch.zeros(b, 1, t, t)
    m[1, ..., :pad] = 1  # keys 0..pad-1 of sequence 1 are padding
    m = torch.maximum(m, torch.ones(t, t).triu(1))
    full = (m == 1).all(-1)  # (b, 1, t): query rows that see no key
    return torch.where(m == 1, torch.tensor(fill), torch.tensor(0.0)).to(dtype), full


def _run(f, qkv, m, w):
    for x in qkv:
        x.grad = None
    o = f(*qkv, m)
    (o.float() * w).sum().backward()
    return o.detach().float(), [x.grad.float().clone() for x in qkv]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, dict(atol=1e-5, rtol=1e-4)),
                                       (torch.bfloat16, dict(atol=1e-1, rtol=1.6e-2))], ids=["fp32", "bf16"])
def test_finfo_min_rows_equal_where_the_loss_discards_them(dtype, tol):
    m, full = _left_padded_causal(dtype, torch.finfo(dtype).min)
    assert full.sum() == 3
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(2, 2, 6, 8, generator=g).to(dtype).requires_grad_(True) for _ in range(3)]
    w = torch.randn(2, 2, 6, 8, generator=g)
    rows = full.expand(2, 2, 6)
    o0, _ = _run(_eager, qkv, m, w)
    o1, _ = _run(_sdpa, qkv, m, w)
    torch.testing.assert_close(o1, o0, **tol)  # every row, the fully masked ones too
    w[rows] = 0  # the loss discards the padded query rows
    _, g0 = _run(_eager, qkv, m, w)
    _, g1 = _run(_sdpa, qkv, m, w)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, **tol)


def test_finfo_min_rows_read_by_the_loss_give_other_gradients():
    # the difference the notes state (if a torch release removes it, update them)
    m, full = _left_padded_causal(torch.float32, torch.finfo(torch.float32).min)
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(2, 2, 6, 8, generator=g).requires_grad_(True) for _ in range(3)]
    w = torch.randn(2, 2, 6, 8, generator=g)
    _, g0 = _run(_eager, qkv, m, w)
    _, g1 = _run(_sdpa, qkv, m, w)
    assert max((a - b).abs().max().item() for a, b in zip(g1, g0)) > 1e-2


def test_minus_inf_rows_are_nan_in_eager_and_zero_in_sdpa():
    m, full = _left_padded_causal(torch.float32, float("-inf"))
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(2, 2, 6, 8, generator=g) for _ in range(3)]
    rows = full.expand(2, 2, 6)
    o0, o1 = _eager(*qkv, m), _sdpa(*qkv, m)
    assert o0[rows].isnan().all() and not o0[~rows].isnan().any()
    assert (o1[rows] == 0).all()
    torch.testing.assert_close(o1[~rows], o0[~rows], atol=1e-5, rtol=1e-4)
