"""sdpa.adr and a softmax's `dtype=` that the rule does not name.

A call's `dtype=` argument that the pattern does not name becomes a cast of
the call's input in the target (dslc/rewrite/kinds/forward.py, `_casts`).
The SDPA target has no place for the softmax's input: it reads `$s2` only
as its mask (bound by the target to the converted mask) or not at all (no
mask), so the cast used to be dropped without a word.  Such a match is now
refused (S309) with the argument named.  The float32 upcast the rules name
(`F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)`) is unaffected and
still equals the original.  Models written here.
"""

from __future__ import annotations

import pytest

import test_sdpa_keep as base

torch = pytest.importorskip("torch")

MODEL = '''\
import math

import torch
from torch import nn
from torch.nn import functional as F


class Attn(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x, mask=None):
        b, n, d = x.shape
        q, k, v = [t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1)]
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
MASK
SOFTMAX
        out = torch.matmul(p, v)
        return out.transpose(1, 2).flatten(2)
'''

MASKS = {"none": "", "add": "        s = s + mask\n", "optional": "        if mask is not None:\n            s = s + mask\n"}
DROPPED = {
    "functional": "        p = F.softmax(s, dim=-1, dtype=torch.float32)\n",
    "method": "        p = s.softmax(dim=-1, dtype=torch.float32)\n",
    "of_input": "        p = F.softmax(s, dim=-1, dtype=x.dtype)\n",
}
NAMED = {
    "upcast": "        p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)\n",
    "nn_upcast": "        p = nn.functional.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)\n",
    "float_type_as": "        p = F.softmax(s.float(), dim=-1).type_as(s)\n",
}


def _source(mask: str, softmax: str) -> str:
    return MODEL.replace("MASK\n", MASKS[mask]).replace("SOFTMAX\n", softmax)


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("softmax", sorted(DROPPED))
def test_a_dtype_the_target_cannot_take_is_refused(tmp_path, mask, softmax):
    src = tmp_path / "attn.py"
    text = _source(mask, DROPPED[softmax])
    src.write_text(text)
    code, report = base._apply(src)
    assert code == 0 and src.read_text() == text
    assert not [m for m in report["matches"] if m["status"] == "applied"], report["matches"]
    skipped = [m for m in report["matches"] if m["status"] == "skipped"]
    assert skipped and all(m["code"] == "S309" and "dtype=" in m["reason"] for m in skipped), skipped


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("softmax", sorted(NAMED))
def test_named_upcast_still_applies_and_equals_the_original(tmp_path, mask, softmax):
    orig, new, report, _ = base._rewrite(tmp_path, f"cast_{mask}_{softmax}", _source(mask, NAMED[softmax]))
    assert [m["status"] for m in report["matches"]] == ["applied"], report["matches"]
    torch.manual_seed(0)
    m0, m1 = orig.Attn(), new.Attn()
    m1.load_state_dict(m0.state_dict(), strict=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 16, generator=g)
    am = None
    if mask != "none":
        am = torch.zeros(2, 1, 1, 5)
        am[1, ..., -2:] = -1e4
    outs = []
    for m in (m0, m1):
        xi = x.clone().requires_grad_(True)
        o = m(xi, mask=am)
        (o * torch.linspace(-1, 2, o.numel()).view_as(o)).sum().backward()
        outs.append((o.detach(), xi.grad, [p.grad for p in m.parameters()]))
    (o0, g0, p0), (o1, g1, p1) = outs
    torch.testing.assert_close(o1, o0, **base.TOL)
    torch.testing.assert_close(g1, g0, **base.TOL)
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b, **base.TOL)
