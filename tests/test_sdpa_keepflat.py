"""sdpa.adr on a chain whose steps run under flags (dslc/rewrite/kinds/keepflat.py).

An attention written here from scratch scales its scores only `if
self.scaled:` (by a 0-d tensor of the scores' dtype), rescales them `if
self.by_depth:`, applies its causal `torch.where` (on `s.to(s.dtype)`) only
`if not self.cross:`, adds an optional mask, casts the probabilities back
with `.type(v.dtype)` (or `.to`), and hands them back.  `dslc apply` must
match the chain where the flags select the scale and the causal mask, guard
it per call on the flags' negations (and the head mask, the returned
weights), flatten the flagged `if`s in the rewritten branch, and the result
must equal the original (outputs, returned weights, input and parameter
gradients, fp32) for every combination of the flags and the run-time
conditions, SDPA running exactly where the guard is false.  Once in a
helper whose caller receives the weights (the guard at the call), once
inline in forward.  Refusals: an `if` with `else`, a flag written between
the first matched statement and its `if`, a flag test that calls.  A second
apply changes nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
from pathlib import Path

import pytest

from dslc.cli import main

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "sdpa.adr"
TOL = dict(atol=1e-5, rtol=1e-4)

HEAD = '''\
import torch
from torch import nn


class Flagged(nn.Module):
    def __init__(self, width=16, n_heads=4, span=8, p=0.2, scaled=True, by_depth=False, cross=False, depth=2):
        super().__init__()
        self.n_heads = n_heads
        self.scaled = scaled
        self.by_depth = by_depth
        self.cross = cross
        self.depth = depth
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(p)
        lower = torch.ones((span, span), dtype=torch.bool).tril()
        self.register_buffer("lower", lower[None, None], persistent=False)

    def heads(self, x):
        b, t, c = x.shape
        return x.reshape(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
'''

CHAIN = '''\
s = torch.matmul(q, k.transpose(-1, -2))
if self.scaled:
    s = s / torch.full([], v.size(-1) ** 0.5, dtype=s.dtype, device=s.device)
if self.by_depth:
    s = s / float(self.depth + 1)
if not self.cross:
    n_q, n_k = q.size(-2), k.size(-2)
    allowed = self.lower[:, :, n_k - n_q : n_k, :n_k]
    low = torch.full([], torch.finfo(s.dtype).min, dtype=s.dtype).to(s.device)
    s = torch.where(allowed, s.to(s.dtype), low)
if mask is not None:
    s = s + mask
w = nn.functional.softmax(s, dim=-1)
w = w.type(v.dtype)
w = self.drop(w)
if head_mask is not None:
    w = w * head_mask
out = torch.matmul(w, v)
'''


def _indent(text: str, n: int) -> str:
    return "".join(" " * n + line if line.strip() else line for line in text.splitlines(keepends=True))


HELPER = HEAD + '''
    def _scores(self, q, k, v, mask=None, head_mask=None):
''' + _indent(CHAIN, 8) + '''        return out, w

    def forward(self, x, mask=None, head_mask=None, want_probs=False):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        ctx, probs = self._scores(q, k, v, mask, head_mask)
        b, h, t, d = ctx.shape
        y = self.proj(ctx.transpose(1, 2).reshape(b, t, h * d))
        result = (y,)
        if want_probs:
            result = result + (probs,)
        return result
'''

INLINE = HEAD + '''
    def forward(self, x, mask=None, head_mask=None, want_probs=False):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
''' + _indent(CHAIN.replace("w = w.type(v.dtype)", "w = w.to(v.dtype)"), 8) + '''        b, h, t, d = out.shape
        y = self.proj(out.transpose(1, 2).reshape(b, t, h * d))
        return (y, w) if want_probs else (y,)
'''


def _apply(path: Path, *extra: str) -> tuple[int, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--format", "json",
                     "--near-misses", *extra, str(path)])
    return code, json.loads(buf.getvalue())


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rewrite(tmp_path: Path, name: str, text: str):
    orig = tmp_path / f"{name}_orig.py"
    orig.write_text(text)
    new = tmp_path / f"{name}_new.py"
    new.write_text(text)
    code, report = _apply(new, "--write")
    assert code == 0
    return _load(orig, f"{name}_orig"), _load(new, f"{name}_new"), report, new


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keepflat_helper"), "flag_helper", HELPER)


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keepflat_inline"), "flag_inline", INLINE)


GUARD = "not self.scaled or self.cross or self.by_depth"


def test_helper_guard_on_the_flags_and_a_flat_fast_copy(helper):
    _, _, report, new = helper
    applied = [m for m in report["matches"] if m["status"] == "applied"]
    assert [m["rule"] for m in applied] == ["sdpa:matmul_tm1m2_div_causal_add_softmaxtype_drop"], report["matches"]
    text = new.read_text()
    assert (f"        if {GUARD} or (head_mask is not None) or want_probs:\n"
            "            ctx, probs = self._scores(q, k, v, mask, head_mask)\n"
            "        else:\n"
            "            ctx, probs = self._scores_fast(q, k, v, mask, head_mask)\n") in text
    fast = text.split("    def _scores_fast")[1].split("    def forward")[0]
    assert "if self." not in fast  # the flagged `if`s: bodies flattened, the by-depth one dropped
    assert "        allowed = self.lower[:, :, n_k - n_q : n_k, :n_k]\n" in fast
    assert "scale=1.0 / torch.full([], v.size(-1) ** 0.5, dtype=s.dtype, device=s.device)).type(v.dtype)" in fast


def test_inline_guard_on_the_flags(inline):
    _, _, report, new = inline
    applied = [m for m in report["matches"] if m["status"] == "applied"]
    assert [m["rule"] for m in applied] == ["sdpa:matmul_tm1m2_div_causal_add_softmaxto_drop"], report["matches"]
    assert f"        if {GUARD} or (head_mask is not None) or want_probs:\n" in new.read_text()


def _spy(monkeypatch, mod):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dropout_p"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "scaled_dot_product_attention", spy)
    return calls


def _run(module, x, kwargs):
    x = x.clone().requires_grad_(True)
    outs = module(x, **kwargs)
    weights = torch.linspace(-1, 2, outs[0].numel()).view_as(outs[0])
    (outs[0] * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return [o.detach() for o in outs], x.grad, grads


def _compare(mod0, mod1, flags, kwargs, monkeypatch, *, fused: bool, train: bool):
    torch.manual_seed(0)
    p = 0.0 if train else 0.3  # train mode without dropout: the same numbers (SDPA's RNG differs)
    m0, m1 = mod0.Flagged(p=p, **flags), mod1.Flagged(p=p, **flags)
    m1.load_state_dict(m0.state_dict(), strict=True)
    m0.train(train)
    m1.train(train)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 16, generator=g) * 1.5 + 0.3
    o0, gx0, gp0 = _run(m0, x, kwargs)
    calls = _spy(monkeypatch, mod1)
    o1, gx1, gp1 = _run(m1, x, kwargs)
    monkeypatch.undo()
    assert len(calls) == (1 if fused else 0), "SDPA must run exactly where the guard is false"
    assert len(o0) == len(o1)
    for a, b in zip(o1, o0):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(gx1, gx0, **TOL)
    assert gp0.keys() == gp1.keys() and gp0
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **TOL, msg=lambda m: f"{name}: {m}")


FLAGS = [dict(scaled=a, by_depth=b, cross=c) for a, b, c in itertools.product((True, False), repeat=3)]


@pytest.mark.parametrize("which", ["helper", "inline"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_every_flag_combination_equals_the_original(request, monkeypatch, which, flags):
    orig, new, _, _ = request.getfixturevalue(which)
    hit = flags["scaled"] and not flags["by_depth"] and not flags["cross"]
    m = torch.zeros(2, 1, 1, 6)
    m[1, ..., -2:] = torch.finfo(torch.float32).min  # right padding
    for kwargs, train in [({}, False), ({"mask": m}, True), ({"mask": m, "want_probs": True}, False),
                          ({"head_mask": torch.tensor([1.0, 0.5, 0.0, 1.0]).view(1, 4, 1, 1)}, True)]:
        fused = hit and "want_probs" not in kwargs and "head_mask" not in kwargs
        _compare(orig, new, flags, kwargs, monkeypatch, fused=fused, train=train)


def test_second_apply_changes_nothing(helper, inline):
    for new in (helper[3], inline[3]):
        before = new.read_bytes()
        code, report = _apply(new, "--write")
        assert code == 0 and new.read_bytes() == before
        assert not [m for m in report["matches"] if m["status"] == "applied"], report["matches"]


def _outcomes(tmp_path: Path, text: str) -> list[dict]:
    src = tmp_path / "attn.py"
    src.write_text(text)
    code, report = _apply(src)
    assert code == 0 and src.read_text() == text
    return [m for m in report["matches"] if m["status"] in ("skipped", "applied")]


def _refused(ms: list[dict]) -> bool:
    """No rewrite that runs SDPA where the scale or the causal step is skipped."""
    return all(m["status"] == "skipped" or "div_causal" not in m["rule"] for m in ms)


def test_flag_if_with_else_is_not_flattened(tmp_path):
    text = HELPER.replace("            s = torch.where(allowed, s.to(s.dtype), low)\n",
                          "            s = torch.where(allowed, s.to(s.dtype), low)\n"
                          "        else:\n            s = s * 2.0\n")
    ms = _outcomes(tmp_path, text)
    assert _refused(ms), ms


def test_flag_written_before_its_if_is_refused(tmp_path):
    text = HELPER.replace("        if not self.cross:\n", "        self.cross = q.size(-2) > 3\n        if not self.cross:\n")
    ms = _outcomes(tmp_path, text)
    assert _refused(ms), ms


def test_flag_test_that_calls_is_refused(tmp_path):
    text = HELPER.replace("        if self.scaled:\n", "        if self.is_scaled():\n") + \
        "\n    def is_scaled(self):\n        return self.scaled\n"
    ms = _outcomes(tmp_path, text)
    assert _refused(ms), ms
