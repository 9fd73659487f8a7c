"""sdpa.adr across a helper call (dslc/rewrite/kinds/keepcall.py) and the
causal `torch.where` block of rulepacks/gen_sdpa.py.

A causal self-attention written here from scratch computes its scores in a
helper, in float32, masks them with `torch.where` on a causal buffer, adds an
optional mask, casts the probabilities back to v's dtype and returns them;
its caller returns them only when asked.  `dslc apply` must put the guard at
the call site

    if head_mask is not None or want_probs:
        ctx, probs = self._scores(...)
    else:
        ctx, probs = self._scores_fast(...)

and the rewritten module must give the original's outputs, returned
probabilities, input and parameter gradients (fp32, the real SDPA kernel) on
every combination of the run-time conditions, with SDPA running exactly in
the fast branch.  Refusals: a subclass, an unconditional read in the
caller, a condition rebound between the call and its read, a helper
condition the call site cannot evaluate.  A second apply changes nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from dslc.cli import main

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "sdpa.adr"
TOL = dict(atol=1e-5, rtol=1e-4)

CAUSAL = '''\
import torch
from torch import nn


class Causal(nn.Module):
    def __init__(self, width=16, n_heads=4, span=8, p=0.2):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(p)
        lower = torch.ones((span, span), dtype=torch.bool).tril()
        self.register_buffer("lower", lower[None, None], persistent=False)

    def heads(self, x):
        b, t, c = x.shape
        return x.reshape(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)

    def _scores(self, q, k, v, mask=None, head_mask=None):
        q = q.to(torch.float32)
        k = k.to(torch.float32)
        s = torch.matmul(q, k.transpose(-1, -2))
        n_q, n_k = q.size(-2), k.size(-2)
        allowed = self.lower[:, :, n_k - n_q : n_k, :n_k]
        low = torch.tensor(torch.finfo(s.dtype).min, dtype=s.dtype).to(s.device)
        s = torch.where(allowed, s, low)
        if mask is not None:
            s = s + mask
        w = nn.functional.softmax(s, dim=-1)
        w = w.to(v.dtype)
        w = self.drop(w)
        if head_mask is not None:
            w = w * head_mask
        out = torch.matmul(w, v)
        return out, w

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

# no mask parameter at all: the optional mask is absent, the causal part stays
NO_MASK = (CAUSAL.replace("def _scores(self, q, k, v, mask=None, head_mask=None):",
                          "def _scores(self, q, k, v, head_mask=None):")
           .replace("        if mask is not None:\n            s = s + mask\n", "")
           .replace("self._scores(q, k, v, mask, head_mask)", "self._scores(q, k, v, head_mask)"))


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
def causal(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keepcall"), "causal_kc", CAUSAL)


@pytest.fixture(scope="module")
def nomask(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keepcall_nomask"), "causal_nomask", NO_MASK)


def test_guard_at_the_call_site_and_a_fast_copy(causal):
    _, _, report, new = causal
    applied = [m for m in report["matches"] if m["status"] == "applied"]
    assert [m["rule"] for m in applied] == ["sdpa:matmul_tm1m2_noscale_causal_add_softmaxto_drop"], report["matches"]
    text = new.read_text()
    assert ("        if head_mask is not None or want_probs:\n"
            "            ctx, probs = self._scores(q, k, v, mask, head_mask)\n"
            "        else:\n"
            "            ctx, probs = self._scores_fast(q, k, v, mask, head_mask)\n") in text
    # the helper itself is unchanged; the copy computes SDPA and returns None for the weights
    assert CAUSAL.split("class Causal")[1].split("    def forward")[0] in text
    fast = text.split("    def _scores_fast")[1].split("    def forward")[0]
    assert "scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=(torch.where(allowed, 0.0, low) " \
           "if mask is None else torch.where(allowed, 0.0, low) + torch.as_tensor(mask, dtype=q.dtype))" in fast
    assert "dropout_p=self.drop.p * self.drop.training, scale=1.0).to(v.dtype)" in fast
    assert "head_mask" not in fast.split("\n", 1)[1] and "        w = None\n        return out, w\n" in fast
    assert "s = torch.matmul(q[..., :0, :], k.transpose(-1, -2)[..., :0])" in fast  # the probe


def test_absent_mask_keeps_the_causal_part(nomask):
    _, _, report, new = nomask
    assert [m["status"] for m in report["matches"]] == ["applied"], report["matches"]
    assert "attn_mask=torch.where(allowed, 0.0, low), " in new.read_text()


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


def _compare(mod0, mod1, kwargs, monkeypatch, *, fused: bool, t: int = 6, grads: bool = True):
    torch.manual_seed(0)
    m0, m1 = mod0.Causal(p=0.3), mod1.Causal(p=0.3)
    m1.load_state_dict(m0.state_dict(), strict=True)
    m0.eval()
    m1.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, t, 16, generator=g) * 1.5 + 0.3
    o0, gx0, gp0 = _run(m0, x, kwargs)
    calls = _spy(monkeypatch, mod1)
    o1, gx1, gp1 = _run(m1, x, kwargs)
    monkeypatch.undo()
    assert len(calls) == (1 if fused else 0), "SDPA must run exactly where the guard is false"
    assert len(o0) == len(o1)
    for a, b in zip(o1, o0):
        torch.testing.assert_close(a, b, **TOL)
    if not grads:
        return
    torch.testing.assert_close(gx1, gx0, **TOL)
    assert gp0.keys() == gp1.keys() and gp0
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("want_probs", [False, True], ids=["no-probs", "probs"])
@pytest.mark.parametrize("head_mask", [False, True], ids=["no-head-mask", "head-mask"])
@pytest.mark.parametrize("mask", [None, "padding", "row"], ids=["no-mask", "padding", "masked-row"])
def test_both_branches_equal_the_original(causal, monkeypatch, want_probs, head_mask, mask):
    """Right padding, and rows whose every allowed key is masked (left
    padding, a fully masked sequence): those rows attend uniformly in both
    (outputs equal), but `torch.where` passes no gradient to the scores it
    replaces where an additive mask does, so there only the outputs are
    compared (the generator's comment on the causal block)."""
    orig, new, _, _ = causal
    kwargs = {"want_probs": want_probs}
    if head_mask:
        hm = torch.ones(1, 4, 1, 1)
        hm[0, 1] = 0.5
        kwargs["head_mask"] = hm
    if mask is not None:
        m = torch.zeros(2, 1, 1, 6)
        low = torch.finfo(torch.float32).min
        m[1, ..., -2:] = low  # right padding
        if mask == "row":
            m[1, ..., :2] = low  # left padding: the first query rows of batch 1 see only padded keys
            m[0, ..., :] = low  # every key masked
        kwargs["mask"] = m
    _compare(orig, new, kwargs, monkeypatch, fused=not (want_probs or head_mask), grads=mask != "row")


def test_cached_keys_longer_than_queries(causal, monkeypatch):
    """Fewer queries than keys (the buffer sliced [k-q:k]) in the fast branch."""
    orig, new, _, _ = causal
    torch.manual_seed(0)
    a, b = orig.Causal().eval(), new.Causal().eval()
    b.load_state_dict(a.state_dict(), strict=True)
    q, k, v = (torch.randn(2, 4, n, 4) for n in (3, 7, 7))
    v = v[..., :7, :]
    oa, _ = a._scores(q, k, v)
    calls = _spy(monkeypatch, new)
    ob, wb = b._scores_fast(q, k, v)
    assert calls and wb is None
    torch.testing.assert_close(ob, oa, **TOL)


def test_no_mask_model_equals_the_original(nomask, monkeypatch):
    orig, new, _, _ = nomask
    _compare(orig, new, {}, monkeypatch, fused=True)
    _compare(orig, new, {"want_probs": True}, monkeypatch, fused=False)


def test_train_mode_fast_branch_passes_the_dropout_probability(causal, monkeypatch):
    _, new, _, _ = causal
    seen = _spy(monkeypatch, new)
    m = new.Causal(p=0.25).train()
    x = torch.randn(2, 5, 16)
    m(x)
    m(x, want_probs=True)  # the original branch: the dropout layer, not SDPA
    m.eval()
    m(x)
    assert seen == [pytest.approx(0.25), 0.0]


def test_bfloat16_fast_branch_runs_and_is_close(causal):
    """q and k upcast to float32, v bfloat16: SDPA gets v in float32 and its
    result is cast back (SDPA would refuse mixed dtypes)."""
    orig, new, _, _ = causal
    torch.manual_seed(0)
    a, b = orig.Causal().eval().to(torch.bfloat16), new.Causal().eval().to(torch.bfloat16)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 6, 16, dtype=torch.bfloat16)
    ya, yb = a(x)[0], b(x)[0]
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ya.float(), atol=1e-1, rtol=1.6e-2)


def test_second_apply_changes_nothing(causal):
    new = causal[3]
    before = new.read_bytes()
    code, report = _apply(new, "--write")
    assert code == 0 and new.read_bytes() == before
    assert report["matches"] == [], report["matches"]


def _outcome(tmp_path: Path, text: str) -> dict:
    src = tmp_path / "attn.py"
    src.write_text(text)
    code, report = _apply(src)
    assert code == 0 and src.read_text() == text
    (m,) = [m for m in report["matches"] if m["status"] in ("skipped", "applied")]
    return m


def test_subclass_is_refused(tmp_path):
    m = _outcome(tmp_path, CAUSAL + "\n\nclass Other(Causal):\n    pass\n")
    assert m["status"] == "skipped" and "subclasses" in m["reason"], m


def test_unconditional_read_in_the_caller_is_refused(tmp_path):
    text = CAUSAL.replace("        result = (y,)\n", "        result = (y, probs.sum())\n")
    m = _outcome(tmp_path, text)
    assert m["status"] == "skipped" and m["code"] == "S204" and "`probs`" in m["reason"], m


def test_condition_rebound_after_the_call_is_refused(tmp_path):
    text = CAUSAL.replace("        result = (y,)\n", "        result = (y,)\n        want_probs = True\n")
    m = _outcome(tmp_path, text)
    assert m["status"] == "skipped" and m["code"] == "S331" and "`want_probs`" in m["reason"], m


def test_helper_condition_on_a_local_is_refused(tmp_path):
    text = (CAUSAL.replace("        if head_mask is not None:\n            w = w * head_mask\n",
                           "        if flag:\n            w = w * head_mask\n")
            .replace("        q = q.to(torch.float32)\n", "        q = q.to(torch.float32)\n        flag = head_mask is not None\n"))
    m = _outcome(tmp_path, text)
    assert m["status"] == "skipped" and m["code"] == "S331" and "`flag`" in m["reason"], m


def test_helper_parameter_rebound_before_its_test_is_refused(tmp_path):
    text = CAUSAL.replace("        q = q.to(torch.float32)\n",
                          "        q = q.to(torch.float32)\n        head_mask = None if self.training else head_mask\n")
    m = _outcome(tmp_path, text)
    assert m["status"] == "skipped" and "head_mask" in m["reason"], m


def test_received_under_another_name(tmp_path, monkeypatch):
    """`ctx, probs = ...` receives the helper's `w`: its reads are followed."""
    ok = _outcome(tmp_path, CAUSAL)
    assert ok["status"] == "applied"
    bad = CAUSAL.replace("            result = result + (probs,)\n", "            result = result + (probs,)\n"
                         "        self.seen = probs\n")
    m = _outcome(tmp_path, bad)
    assert m["status"] == "skipped" and "`probs`" in m["reason"], m


# A layer causal or not by construction: its helper masks `if self.causal:`.
# That `if` updates the kept scores, so its test joins the guard, written at
# the call (`self` is the call's own receiver); the non-causal layer runs SDPA.
FLAGGED = '''\
import math

import torch
from torch import nn


class Flagged(nn.Module):
    def __init__(self, width=16, n_heads=2, span=8, causal=False, p=0.2):
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.drop = nn.Dropout(p)
        self.register_buffer("lower", torch.ones((span, span)).tril()[None, None], persistent=False)

    def _mix(self, q, k, v, mask=None, head_mask=None):
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.size(-1)))
        if self.causal:
            n_q, n_k = q.size(-2), k.size(-2)
            s = s.masked_fill(self.lower[:, :, n_k - n_q : n_k, :n_k] == 0, torch.finfo(s.dtype).min)
        if mask is not None:
            s = s + mask
        w = nn.functional.softmax(s, dim=-1)
        w = w.to(v.dtype)
        w = self.drop(w)
        if head_mask is not None:
            w = w * head_mask
        out = torch.matmul(w, v)
        return out, w

    def forward(self, x, mask=None, head_mask=None, want_probs=False):
        b, t, c = x.shape
        q, k, v = (y.reshape(b, t, self.n_heads, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, dim=-1))
        ctx, probs = self._mix(q, k, v, mask, head_mask)
        out = ctx.transpose(1, 2).reshape(b, t, c)
        return (out, probs) if want_probs else (out,)
'''


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keepcall_flag"), "flagged_kc", FLAGGED)


def test_attribute_condition_of_the_helper_joins_the_guard(flagged):
    _, _, report, new = flagged
    applied = [m["rule"] for m in report["matches"] if m["status"] == "applied"]
    assert applied == ["sdpa:matmul_tm1m2_mul_add_upcast_drop"], report["matches"]
    text = new.read_text()
    assert ("        if self.causal or head_mask is not None or want_probs:\n"
            "            ctx, probs = self._mix(q, k, v, mask, head_mask)\n") in text
    assert "self.causal" not in text.split("    def _mix_fast")[1].split("    def forward")[0]


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
@pytest.mark.parametrize("want_probs", [False, True], ids=["no-probs", "probs"])
def test_attribute_condition_both_branches_equal(flagged, monkeypatch, causal, want_probs):
    orig, new, _, _ = flagged
    torch.manual_seed(0)
    a, b = orig.Flagged(causal=causal).eval(), new.Flagged(causal=causal).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    m = torch.zeros(2, 1, 1, 5)
    m[1, ..., -1:] = -1e4
    x = torch.randn(2, 5, 16)
    kwargs = {"mask": m, "want_probs": want_probs}
    o0, gx0, gp0 = _run(a, x, kwargs)
    calls = _spy(monkeypatch, new)
    o1, gx1, gp1 = _run(b, x, kwargs)
    monkeypatch.undo()
    assert len(calls) == (0 if causal or want_probs else 1)
    for u, w in zip(o1, o0):
        torch.testing.assert_close(u, w, **TOL)
    torch.testing.assert_close(gx1, gx0, **TOL)
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **TOL)


def test_subclass_in_a_sibling_module_is_refused(tmp_path):
    (tmp_path / "custom.py").write_text("from attn import Causal\n\n\nclass Mine(Causal):\n"
                                        "    def _scores(self, q, k, v, mask=None, head_mask=None):\n"
                                        "        return super()._scores(q, k, v, mask, head_mask)\n")
    m = _outcome(tmp_path, CAUSAL)
    assert m["status"] == "skipped" and "`Mine` in custom.py" in m["reason"], m


def test_call_inside_a_loop_is_refused(tmp_path):
    text = CAUSAL.replace("        ctx, probs = self._scores(q, k, v, mask, head_mask)\n",
                          "        for _ in range(2):\n            ctx, probs = self._scores(q, k, v, mask, head_mask)\n")
    m = _outcome(tmp_path, text)
    assert m["status"] == "skipped" and "inside the loop" in m["reason"], m


# The scale after the causal `where` (GPT-J's order): by a 0-d tensor
# attribute (GPT-J's `self.scale_attn`) or a product with a Python number.
SCALED = {
    "div-tensor": ("torch.sqrt(torch.tensor(4.0))", "        s = s / self.scale\n",
                   "torch.where(allowed, 0.0, low) / self.scale", "scale=1.0 / self.scale)"),
    "mul-float": ("0.5", "        s = s * self.scale\n",
                  "torch.where(allowed, 0.0, low) * self.scale", "scale=self.scale)"),
}


def _scaled_text(kind: str) -> str:
    init, step, _, _ = SCALED[kind]
    return (CAUSAL.replace("        self.n_heads = n_heads\n", f"        self.n_heads = n_heads\n        self.scale = {init}\n")
            .replace("        s = torch.where(allowed, s, low)\n", "        s = torch.where(allowed, s, low)\n" + step))


@pytest.fixture(scope="module", params=list(SCALED))
def scaled(request, tmp_path_factory):
    kind = request.param
    return kind, _rewrite(tmp_path_factory.mktemp("keepcall_scaled"), f"causal_{kind.replace('-', '_')}",
                          _scaled_text(kind))


def test_scale_after_the_where_is_rewritten(scaled):
    kind, (_, _, report, new) = scaled
    applied = [m["rule"] for m in report["matches"] if m["status"] == "applied"]
    assert applied == [f"sdpa:matmul_tm1m2_causal_{kind.split('-')[0]}_add_softmaxto_drop"], report["matches"]
    fast = new.read_text().split("    def _scores_fast")[1].split("    def forward")[0]
    _, _, mask, scale = SCALED[kind]
    assert mask in fast and scale in fast


@pytest.mark.parametrize("want_probs", [False, True], ids=["no-probs", "probs"])
@pytest.mark.parametrize("mask", [None, "padding", "row"], ids=["no-mask", "padding", "masked-row"])
def test_scale_after_the_where_equals_the_original(scaled, monkeypatch, want_probs, mask):
    """As test_both_branches_equal_the_original: where(c, s, mv) / d runs as
    SDPA with the mask where(c, 0.0, mv) / d and scale 1 / d."""
    _, (orig, new, _, _) = scaled
    kwargs = {"want_probs": want_probs}
    if mask is not None:
        m = torch.zeros(2, 1, 1, 6)
        low = torch.finfo(torch.float32).min
        m[1, ..., -2:] = low
        if mask == "row":
            m[1, ..., :2] = low
            m[0, ..., :] = low
        kwargs["mask"] = m
    _compare(orig, new, kwargs, monkeypatch, fused=not want_probs, grads=mask != "row")


def test_scale_after_the_where_second_apply_changes_nothing(scaled):
    new = scaled[1][3]
    before = new.read_bytes()
    code, report = _apply(new, "--write")
    assert code == 0 and new.read_bytes() == before
    assert report["matches"] == [], report["matches"]
