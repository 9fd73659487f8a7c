"""A mask added through views (dslc/rewrite/kinds/keepviews.py): masks and
views where `m.expand(A).reshape(B)` was not the original's mask.

* a mask with leading 1-dims beyond A (`(1, b, 1, n, n)` against
  `s.view(b, h, n, n)`): the sum has A's elements, the original runs;
  `m.expand(A)` raised.  Now `broadcast_to(m, broadcast_shapes(m.shape,
  A)).reshape(B)`: the same numbers;
* `s.view(b, -1, n, n) + m`: `view`'s -1 is inferred (h), `expand`'s keeps
  the mask's size (1), so the reshape to B raised;
* `s.view(b * h, -1, n)` back: a mask larger than A goes on in the
  original (larger scores, one query row per mask row); the rewrite raised.
A `-1` in A or B now leaves the `if` to the guard: the original runs where
a mask is given.  Each case runs the original and the rewrite on CPU.
"""

from __future__ import annotations

import pytest

from rewrite_support import fixture, load_module, run, stable

torch = pytest.importorskip("torch")

MODEL = fixture('''
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F


    class Attn(nn.Module):
        def __init__(self, dim=16, heads=2):
            super().__init__()
            self.heads, self.hd = heads, dim // heads
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

        def split(self, t, b, n):
            return t.view(b, n, self.heads, self.hd).transpose(1, 2).reshape(b * self.heads, n, self.hd)

        def forward(self, x, mask=None):
            b, n, d = x.shape
            q, k, v = self.split(self.q(x), b, n), self.split(self.k(x), b, n), self.split(self.v(x), b, n)
            s = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.hd)
            if mask is not None:
                s = s.view(b, self.heads, n, n) + mask
                s = s.view(b * self.heads, n, n)
            p = F.softmax(s, dim=-1)
            out = torch.bmm(p, v)
            return out.view(b, self.heads, -1, self.hd).transpose(1, 2).reshape(b, -1, d)
''')

A = "s.view(b, self.heads, n, n) + mask"
B = "s = s.view(b * self.heads, n, n)"
CASES = {
    # name: (source edit, tokens, mask shape)
    "plain": ({}, 5, (2, 1, 5, 5)),
    "key_padding": ({}, 5, (2, 1, 1, 5)),
    "leading_ones": ({}, 5, (1, 2, 1, 5, 5)),
    "inferred_a": ({A: "s.view(b, -1, n, n) + mask"}, 5, (2, 1, 5, 5)),
    "inferred_b": ({B: "s = s.view(b * self.heads, -1, n)"}, 1, (2, 1, 3, 1)),
}


def _source(edits: dict) -> str:
    text = MODEL
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_rewrite_gives_the_original_numbers(case):
    edits, n, shape = CASES[case]
    text = _source(edits)
    result = run(text, rules=("sdpa",))
    assert [m.status for m in result.matches] == ["applied"], result.matches
    stable(result.new_source, rules=("sdpa",))
    orig, new = load_module(text, f"vm_{case}_orig"), load_module(result.new_source, f"vm_{case}_new")
    torch.manual_seed(0)
    a = orig.Attn()
    b = new.Attn()
    b.load_state_dict(a.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, n, 16, generator=g)
    mask = torch.randn(shape, generator=g)
    for m in (mask, None):
        want = a(x, m)
        got = b(x, m)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    inferred = case.startswith("inferred")
    assert ("broadcast_shapes" in result.new_source) != inferred, result.new_source
