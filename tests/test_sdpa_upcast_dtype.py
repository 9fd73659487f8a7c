"""sdpa.adr's upcast rules take a float32 softmax only (issue 8).

`F.softmax(s, dim=-1, dtype=$_f32).to($_dt)` used to bind any `dtype=`:
in a float32 model `dtype=torch.bfloat16` rounds the probabilities to
bfloat16 (the original differs from SDPA by ~1e-2), and a dtype held in a
variable is not known statically.  The rules now say `where $_f32 in
(torch.float32, torch.float)` (a dotted constant, docs/adr-language.md
"Constraints and guards"): bfloat16 does not match, a variable is refused
(S102) with the reason, both float32 spellings still apply.  Models written
here (test_sdpa_softmax_casts.py's attention, other softmax lines).
"""

from __future__ import annotations

import pytest

import test_sdpa_keep as base
import test_sdpa_softmax_casts as casts
from rewrite_support import load_module

torch = pytest.importorskip("torch")

NOT_FLOAT32 = {
    "bf16": "        p = F.softmax(s, dim=-1, dtype=torch.bfloat16).to(v.dtype)\n",
    "half": "        p = F.softmax(s, dim=-1, dtype=torch.half).to(q.dtype)\n",
    "variable": "        dt = torch.bfloat16\n        p = F.softmax(s, dim=-1, dtype=dt).to(v.dtype)\n",
    "attribute": "        p = F.softmax(s, dim=-1, dtype=self.dt).to(v.dtype)\n",
}
FLOAT32 = {
    "float32": "        p = F.softmax(s, dim=-1, dtype=torch.float32).to(v.dtype)\n",
    "float": "        p = F.softmax(s, dim=-1, dtype=torch.float).to(v.dtype)\n",
}


def _source(softmax: str) -> str:
    text = casts._source("add", softmax)
    return text.replace("        self.qkv = ", "        self.dt = torch.bfloat16\n        self.qkv = ")


def _outputs(mod):
    torch.manual_seed(0)
    m = mod.Attn()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 16, generator=g)
    am = torch.zeros(2, 1, 1, 5)
    am[1, ..., -2:] = -1e4
    return m, x, am


@pytest.mark.parametrize("softmax", sorted(NOT_FLOAT32))
def test_a_softmax_not_in_float32_is_not_rewritten(tmp_path, softmax):
    orig, new, report, path = base._rewrite(tmp_path, f"up_{softmax}", _source(NOT_FLOAT32[softmax]))
    assert not [m for m in report["matches"] if m["status"] == "applied"], report["matches"]
    assert path.read_text() == _source(NOT_FLOAT32[softmax])
    if softmax in ("variable", "attribute"):  # not known statically: refused with the reason
        (m,) = [m for m in report["matches"] if m["status"] == "skipped"]
        assert m["code"] == "S102" and "torch.float32" in m["reason"], m["reason"]


def test_the_bf16_softmax_differs_from_sdpa_in_float32():
    """Why the match must not apply: the original's numbers are the bf16 ones."""
    m, x, am = _outputs(load_module(_source(NOT_FLOAT32["bf16"]), "up_bf16_numbers"))
    b, n, d = x.shape
    q, k, v = [t.reshape(b, n, m.heads, m.head_dim).transpose(1, 2) for t in m.qkv(x).chunk(3, dim=-1)]
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=am).transpose(1, 2).flatten(2)
    assert (m(x, mask=am) - sdpa).abs().max().item() > 1e-4


@pytest.mark.parametrize("softmax", sorted(FLOAT32))
def test_both_float32_spellings_still_apply_and_keep_the_numbers(tmp_path, softmax):
    orig, new, report, _ = base._rewrite(tmp_path, f"up32_{softmax}", _source(FLOAT32[softmax]))
    assert [m["status"] for m in report["matches"]] == ["applied"], report["matches"]
    (m0, x, am), (m1, _, _) = _outputs(orig), _outputs(new)
    m1.load_state_dict(m0.state_dict(), strict=True)
    torch.testing.assert_close(m1(x, mask=am), m0(x, mask=am), **base.TOL)
