"""sdpa.adr on BART-style attention (`torch.bmm` on 3-d heads-flattened
tensors, q scaled at its projection, raise-only size checks between the
matched statements; `option shape`, dslc/rewrite/kinds/keepchecks.py).

A small attention written here from scratch checks the size of the bmm
scores and raises (the message an f-string split over two lines).  The bmm
rules state the scores' size (`option shape = "$s0 = $q.shape[:-1] +
$k.shape[-2:-1]"`), so the check stays, rewritten to read that size, and
the chain becomes one SDPA call: equal outputs and gradients (fp32, CPU,
the real kernel), the check still raising where it raised, with and without
a per-call guard (`output_attentions`).  Refusals: a check that is not
raise-only, one that reads the scores otherwise than `.size()` / `.shape`.
A second apply changes nothing.
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

CHECKED = '''\
import torch
from torch import nn


class HeadsAttention(nn.Module):
    def __init__(self, width=16, heads=2, p=0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.p = p

    def _flat(self, x, n, b):
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2).reshape(b * self.heads, n, self.head_dim)

    def forward(self, x, memory=None, output_attentions=False, expect=None):
        b, n, _ = x.size()
        src = x if memory is None else memory
        m = src.size(1)
        q = self._flat(self.q_proj(x) * self.scaling, n, b)
        k = self._flat(self.k_proj(src), m, b)
        v = self._flat(self.v_proj(src), m, b)
        want = (b * self.heads, n, m) if expect is None else expect
        scores = torch.bmm(q, k.transpose(1, 2))
        if scores.size() != want:
            raise ValueError(
                f"scores should be of size {want}, but is"
                f" {scores.size()}"
            )
        probs = nn.functional.softmax(scores, dim=-1)
        probs = nn.functional.dropout(probs, p=self.p, training=self.training)
        out = torch.bmm(probs, v)
        out = out.view(b, self.heads, n, self.head_dim).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return out, RETURNED
'''
PLAIN = CHECKED.replace("RETURNED", "None")
GUARDED = CHECKED.replace("RETURNED", "(probs if output_attentions else None)")


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
def plain(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("bart_plain"), "bart_plain", PLAIN)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("bart_guarded"), "bart_guarded", GUARDED)


SIZE = "(q.shape[:-1] + k.shape[-2:-1])"


def test_plain_rewrite_keeps_the_check_on_the_stated_size(plain):
    _, _, report, new = plain
    (m,) = report["matches"]
    assert m["status"] == "applied" and m["rule"] == "sdpa:bmm_t12_noscale_add_softmax_fdrop", m
    text = new.read_text()
    assert "scores = torch.bmm" not in text and "scores.size()" not in text
    assert f"        if {SIZE} != want:\n            raise ValueError(\n" in text
    assert f'                f" {{{SIZE}}}"\n' in text
    assert "        out = scaled_dot_product_attention(q, k, v, dropout_p=self.p * self.training, scale=1.0)\n" in text


def test_guarded_rewrite_has_the_original_check_in_one_branch_and_the_stated_size_in_the_other(guarded):
    _, _, report, new = guarded
    (m,) = report["matches"]
    assert m["status"] == "applied", m
    text = new.read_text()
    assert "        if output_attentions:\n            scores = torch.bmm(q, k.transpose(1, 2))\n" \
           "            if scores.size() != want:\n" in text
    assert f"        else:\n            if {SIZE} != want:\n" in text
    assert "            probs = None\n" in text


def _spy(monkeypatch, mod):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "scaled_dot_product_attention", spy)
    return calls


def _run(module, x, kwargs):
    x = x.clone().requires_grad_(True)
    outs = module(x, **kwargs)
    weights = torch.linspace(-1, 2, outs[0].numel()).view_as(outs[0])
    (outs[0] * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return [o.detach() for o in outs if o is not None], x.grad, grads


@pytest.mark.parametrize("which", ["plain", "guarded"])
@pytest.mark.parametrize("output_attentions", [False, True], ids=["no-attn", "attn"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_rewrite_equals_the_original(plain, guarded, monkeypatch, which, output_attentions, cross, train):
    orig, new, _, _ = plain if which == "plain" else guarded
    torch.manual_seed(0)
    m0 = orig.HeadsAttention()
    m1 = new.HeadsAttention()
    m1.load_state_dict(m0.state_dict(), strict=True)
    for m in (m0, m1):
        m.train(train)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 16, generator=g) * 1.7 + 0.4
    kwargs = {"output_attentions": output_attentions}
    if cross:
        kwargs["memory"] = torch.randn(2, 7, 16, generator=g)
    o0, gx0, gp0 = _run(m0, x, kwargs)
    calls = _spy(monkeypatch, new)
    o1, gx1, gp1 = _run(m1, x, kwargs)
    monkeypatch.undo()
    assert len(calls) == (0 if which == "guarded" and output_attentions else 1)
    assert len(o0) == len(o1)
    for a, b in zip(o1, o0):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(gx1, gx0, **TOL)
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], **TOL)


@pytest.mark.parametrize("which", ["plain", "guarded"])
def test_the_check_still_raises_with_the_same_message(plain, guarded, which):
    orig, new, _, _ = plain if which == "plain" else guarded
    x = torch.randn(2, 5, 16)
    msgs = []
    for mod in (orig, new):
        with pytest.raises(ValueError) as err:
            mod.HeadsAttention()(x, expect=(4, 5, 6))
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1] == "scores should be of size (4, 5, 6), but is torch.Size([4, 5, 5])"


@pytest.mark.parametrize("which", ["plain", "guarded"])
def test_second_apply_changes_nothing(plain, guarded, which):
    new = (plain if which == "plain" else guarded)[3]
    before = new.read_bytes()
    code, report = _apply(new, "--write")
    assert code == 0 and new.read_bytes() == before
    assert not [m for m in report["matches"] if m["status"] == "applied"]


def _skipped(tmp_path: Path, text: str) -> dict:
    src = tmp_path / "attn.py"
    src.write_text(text)
    code, report = _apply(src)
    assert code == 0 and src.read_text() == text
    assert not [m for m in report["matches"] if m["status"] == "applied"], report["matches"]
    (m,) = [m for m in report["matches"] if m["status"] == "skipped"]
    return m


@pytest.mark.parametrize("edit", [
    ("raise ValueError(", "print("),  # not raise-only: the check does something else
    ("if scores.size() != want:", "if scores.size(0) != want[0]:"),  # a size with an argument
    ("if scores.size() != want:", "if scores.sum() != want[0]:"),  # the value itself
    ("if scores.size() != want:", "if scores.size() != want:\n            pass\n        else:"),
], ids=["print", "size-arg", "value", "else"])
def test_other_reads_of_the_scores_are_refused(tmp_path, edit):
    text = PLAIN.replace(*edit)
    assert text != PLAIN
    m = _skipped(tmp_path, text)
    assert m["code"] == "S204" and "`scores`" in m["reason"], m


def test_checker_refuses_a_shape_option_on_a_value_the_target_does_not_read(tmp_path):
    pack = tmp_path / "p.adr"
    pack.write_text('''pack p "x"
rule r "x" {
  kernel torch.nn.functional.scaled_dot_product_attention
  tolerance atol=1e-5 rtol=1e-4
  forward {
    torch.bmm($q, $kt) -> $s0;
    torch.nn.functional.softmax($s0, dim=-1) -> $p;
    torch.bmm($p, $v) -> $out;
  } => {
    torch.nn.functional.scaled_dot_product_attention($q, $kt, $v) -> $out;
  }
  option shape = "$s0 = $q.shape[:-1] + $k.shape[-2:-1]"
}
''')
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["check", "--format", "json", str(pack)])
    diags = json.loads(buf.getvalue())
    assert code == 1 and any(d["code"] == "ADR106" and "`$k`" in d["message"] for d in diags), diags
