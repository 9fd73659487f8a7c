"""sdpa.adr with `keep`: a matched statement nested in an `if` of the guarded region.

The per-call guard (dslc/rewrite/kinds/keep.py) copies the region's
statements into its rewritten branch except the matched ones.  A matched
statement that sits inside an `if` of the region (`if self.scale_attn:
scores = scores / d`) used to be copied with its `if` into that branch,
where it read the scores the rewrite no longer computes (UnboundLocalError)
while SDPA also applied the scale.  Such a match is now flattened
(dslc/rewrite/kinds/keepflat.py): the guard takes `not self.scale_attn` on
(the original runs without the scale) and the rewritten branch holds the
`if`'s body without the `if`, the matched scale passed as SDPA's `scale=`,
so no statement of the `if` is left there.  Each model, written here, is rewritten by
`dslc apply` and run against the original on every combination of the
run-time conditions: outputs, returned probabilities, input and parameter
gradients (fp32, CPU, the real SDPA kernel).
"""

from __future__ import annotations

import itertools

import pytest

import test_sdpa_keep as base

torch = pytest.importorskip("torch")

NESTED = '''\
import math

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, hidden=16, heads=2, p=0.0, scale_attn=True):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale_attn = scale_attn
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)

    def split(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x, attention_mask=None, head_mask=None, output_attentions=False):
        q = self.split(self.query(x))
        k = self.split(self.key(x))
        v = self.split(self.value(x))

        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.scale_attn:
            scores = scores / DIVISOR
        if attention_mask is not None:
            scores = scores + attention_mask

        probs = nn.functional.softmax(scores, dim=-1)
        probs = self.dropout(probs)

        if head_mask is not None:
            probs = probs * head_mask

        context = torch.matmul(probs, v)
        outputs = (context, probs) if output_attentions else (context,)
        return outputs
'''

MODELS = {
    "math_sqrt": NESTED.replace("DIVISOR", "math.sqrt(self.head_dim)"),
    # a tensor divisor (GPT-2 spells it so): as `scale=` it is a tensor
    "tensor": NESTED.replace("DIVISOR", "torch.full([], self.head_dim ** 0.5)"),
    # the divisor reads the scores' dtype and device
    "tensor_of_scores": NESTED.replace(
        "DIVISOR", "torch.full([], v.size(-1) ** 0.5, dtype=scores.dtype, device=scores.device)"),
    # no head mask, no returned weights: the guard is only the `if`s of the region
    "plain": NESTED.replace("DIVISOR", "math.sqrt(self.head_dim)")
                   .replace("        if head_mask is not None:\n            probs = probs * head_mask\n", "")
                   .replace("(context, probs) if output_attentions else (context,)", "(context,)"),
}


# rewritten only where `self.scale_attn` is false (see the first test)
FLAG_FALSE_ONLY = {"tensor_of_scores"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def rewritten(request, tmp_path_factory):
    name = request.param
    return (name, *base._rewrite(tmp_path_factory.mktemp(f"nested_{name}"), f"nested_{name}", MODELS[name]))


def test_the_nested_scale_is_never_rewritten_into_the_sdpa_branch(rewritten):
    name, _, _, report, path = rewritten
    applied = [m for m in report["matches"] if m["status"] == "applied"]
    assert applied, report["matches"]
    # the scale under `if self.scale_attn:` is SDPA's, where the flag holds; a divisor
    # built from the scores' dtype (no `option probe` in the general rules): the rule
    # without it applies, where the flag is false
    flat = name not in FLAG_FALSE_ONLY
    for m in applied:
        assert ("_div_" if flat else "_noscale_") in m["rule"], m
    for m in report["matches"]:
        if m["status"] == "skipped":
            assert m["code"] and m["reason"], m
    text = path.read_text()
    # the guard: the first `if` of the forward's block, before the original statements
    guard = next(line for line in text.split("v = self.split(self.value(x))")[1].splitlines()
                 if line.startswith("        if "))
    assert ("not self.scale_attn" in guard.split(":")[0]) == flat and "self.scale_attn" in guard, guard
    fast = text.split("        else:\n", 1)[1]
    assert ("scale=1.0 / " if flat else "scale=1.0)") in fast and "if self.scale_attn" not in fast.split("return")[0]


def _run(module, x, kwargs):
    x = x.clone().requires_grad_(True)
    outs = module(x, **kwargs)
    weights = torch.linspace(-1, 2, outs[0].numel()).view_as(outs[0])
    (outs[0] * weights).sum().backward()
    return [o.detach() for o in outs], x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


def test_every_branch_equals_the_original(rewritten, monkeypatch):
    name, orig, new, _, _ = rewritten
    flags = (False, True)
    keeps = flags if name != "plain" else (False,)
    fused_runs = 0
    for scale_attn, mask, head_mask, output_attentions in itertools.product(flags, flags, keeps, keeps):
        torch.manual_seed(0)
        m0 = orig.Attention(scale_attn=scale_attn).eval()
        m1 = new.Attention(scale_attn=scale_attn).eval()
        m1.load_state_dict(m0.state_dict(), strict=True)
        kwargs = {}
        if name != "plain":
            kwargs["output_attentions"] = output_attentions
            if head_mask:
                kwargs["head_mask"] = base._head_mask()
        if mask:
            am = torch.zeros(2, 1, 1, 5)
            am[1, ..., -2:] = -1e4
            kwargs["attention_mask"] = am
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 5, 16, generator=g) * 1.7 + 0.4
        o0, gx0, gp0 = _run(m0, x, kwargs)
        calls = base._spy(monkeypatch, new)
        o1, gx1, gp1 = _run(m1, x, kwargs)
        monkeypatch.undo()
        case = f"scale_attn={scale_attn} mask={mask} head_mask={head_mask} output_attentions={output_attentions}"
        assert len(o0) == len(o1), case
        for a, b in zip(o1, o0):
            torch.testing.assert_close(a, b, **base.TOL, msg=lambda s: f"{case}: {s}")
        torch.testing.assert_close(gx1, gx0, **base.TOL, msg=lambda s: f"{case}: {s}")
        for p in gp0:
            torch.testing.assert_close(gp1[p], gp0[p], **base.TOL, msg=lambda s: f"{case} {p}: {s}")
        # SDPA runs exactly where no condition of the guard holds
        flag_off = scale_attn if name in FLAG_FALSE_ONLY else not scale_attn
        assert len(calls) == (0 if flag_off or head_mask or output_attentions else 1), case
        fused_runs += len(calls)
    assert fused_runs


def test_second_apply_changes_nothing(rewritten):
    path = rewritten[4]
    before = path.read_bytes()
    code, report = base._apply(path, "--write")
    assert code == 0 and path.read_bytes() == before
    assert not [m for m in report["matches"] if m["status"] == "applied"]
