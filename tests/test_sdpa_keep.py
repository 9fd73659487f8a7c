"""sdpa.adr with `keep`: attention whose probabilities are returned under
`output_attentions` or multiplied by a head mask gets a per-call guard

    if head_mask is not None or output_attentions:
        <the original statements>
    else:
        <one SDPA call>
        probs = None

(dslc/rewrite/kinds/keep.py).  Two models written here from scratch (a
BERT-like self-attention, a GPT-2-like one with a causal buffer and an
`_attn` helper) are rewritten by `dslc apply`; on every combination of the
run-time conditions the rewritten model gives the original's outputs,
returned probabilities, input and parameter gradients (fp32, CPU, the real
SDPA kernel), and SDPA runs exactly where the guard is false.  Refusals:
probabilities read outside any condition, a condition that changes between
the guard and its test, an `if` with `else`.  A second apply changes
nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import textwrap
from pathlib import Path

import pytest

from dslc.cli import main

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "sdpa.adr"
TOL = dict(atol=1e-5, rtol=1e-4)

BERT_LIKE = '''\
import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden=16, heads=2, p=0.1):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)

    def split(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None, head_mask=None, output_attentions=False):
        query_layer = self.split(self.query(hidden_states))
        key_layer = self.split(self.key(hidden_states))
        value_layer = self.split(self.value(hidden_states))

        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.head_dim)
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask

        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)

        # Mask heads if we want to
        if head_mask is not None:
            attention_probs = attention_probs * head_mask

        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        context_layer = context_layer.view(context_layer.size()[:-2] + (self.heads * self.head_dim,))

        outputs = (context_layer, attention_probs) if output_attentions else (context_layer,)
        return outputs
'''

GPT2_LIKE = '''\
import torch
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden=16, heads=2, max_positions=8, p=0.1):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        future = torch.triu(torch.ones((max_positions, max_positions), dtype=torch.bool), diagonal=1)
        self.register_buffer("bias", future.view(1, 1, max_positions, max_positions), persistent=False)
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.c_proj = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(p)

    def _split_heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def _attn(self, query, key, value, head_mask=None, output_attentions=False):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / (self.head_dim ** 0.5)

        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
        attn_weights = attn_weights.masked_fill(causal_mask, float("-inf"))

        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = self.attn_dropout(attn_weights)

        if head_mask is not None:
            attn_weights = attn_weights * head_mask

        attn_output = torch.matmul(attn_weights, value)

        return attn_output, RETURNED

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        query, key, value = self.c_attn(hidden_states).split(self.heads * self.head_dim, dim=2)
        query = self._split_heads(query)
        key = self._split_heads(key)
        value = self._split_heads(value)
        attn_output, attn_weights = self._attn(query, key, value, head_mask, output_attentions)
        b, h, t, d = attn_output.shape
        attn_output = self.c_proj(attn_output.permute(0, 2, 1, 3).reshape(b, t, h * d))
        outputs = (attn_output,)
        if output_attentions:
            outputs += (attn_weights,)
        return outputs
'''
GPT2_GUARDED = GPT2_LIKE.replace("RETURNED", "(attn_weights if output_attentions else None)")
GPT2_ALWAYS = GPT2_LIKE.replace("RETURNED", "attn_weights")


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
def bert(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keep_bert"), "bert_like", BERT_LIKE)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return _rewrite(tmp_path_factory.mktemp("keep_gpt2"), "gpt2_like", GPT2_GUARDED)


def test_bert_like_is_guarded_on_head_mask_and_output_attentions(bert):
    _, _, report, new = bert
    (m,) = report["matches"]
    assert m["status"] == "applied" and m["rule"] == "sdpa:matmul_tm1m2_div_add_softmax_drop", m
    text = new.read_text()
    body = textwrap.dedent("""\
        if head_mask is not None or output_attentions:
            attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
    """)
    assert textwrap.indent(body, " " * 8) in text
    assert "        else:\n            context_layer = scaled_dot_product_attention(query_layer, key_layer, value_layer, " \
           "attn_mask=None if attention_mask is None else " in text
    assert "            attention_probs = None\n        context_layer = context_layer.permute" in text
    # the original statements are kept, byte for byte, one level deeper
    original = BERT_LIKE.split("        attention_scores = torch.matmul")[1].split("        context_layer = context_layer")[0]
    assert textwrap.indent(textwrap.dedent("        attention_scores = torch.matmul" + original), " " * 12) \
        .replace(" " * 12 + "\n", "\n") in text


def test_gpt2_like_helper_is_guarded(gpt2):
    _, _, report, new = gpt2
    (m,) = [m for m in report["matches"] if m["status"] == "applied"]
    assert m["rule"] == "sdpa:matmul_tm1m2_div_fill_softmax_drop", m
    text = new.read_text()
    assert "        if head_mask is not None or output_attentions:\n" in text
    # the causal slice is not part of the chain: it stays in both branches
    assert text.count("causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]") == 2


def _spy(monkeypatch, mod):
    """Record SDPA's `dropout_p` per call (the rewritten file imports the name)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dropout_p"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    if hasattr(mod, "scaled_dot_product_attention"):
        monkeypatch.setattr(mod, "scaled_dot_product_attention", spy)
    return calls


def _run(module, x, kwargs):
    x = x.clone().requires_grad_(True)
    outs = module(x, **kwargs)
    weights = torch.linspace(-1, 2, outs[0].numel()).view_as(outs[0])
    (outs[0] * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return [o.detach() for o in outs], x.grad, grads


def _compare(mod0, mod1, cls: str, kwargs: dict, monkeypatch, *, fused: bool, train: bool = False):
    torch.manual_seed(0)
    m0 = getattr(mod0, cls)(p=0.0 if train else 0.3)
    m1 = getattr(mod1, cls)(p=0.0 if train else 0.3)
    m1.load_state_dict(m0.state_dict(), strict=True)
    for m in (m0, m1):
        m.train(train)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 16, generator=g) * 1.7 + 0.4
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


def _head_mask():
    hm = torch.ones(1, 2, 1, 1)
    hm[0, 1] = 0.25
    return hm


@pytest.mark.parametrize("output_attentions", [False, True], ids=["no-attn", "attn"])
@pytest.mark.parametrize("head_mask", [False, True], ids=["no-head-mask", "head-mask"])
@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "mask"])
def test_bert_like_both_branches_equal_the_original(bert, monkeypatch, output_attentions, head_mask, mask):
    orig, new, _, _ = bert
    kwargs = {"output_attentions": output_attentions}
    if head_mask:
        kwargs["head_mask"] = _head_mask()
    if mask:
        m = torch.zeros(2, 1, 1, 5)
        m[1, ..., -2:] = -1e4
        kwargs["attention_mask"] = m
    _compare(orig, new, "SelfAttention", kwargs, monkeypatch, fused=not (output_attentions or head_mask))


@pytest.mark.parametrize("output_attentions", [False, True], ids=["no-attn", "attn"])
@pytest.mark.parametrize("head_mask", [False, True], ids=["no-head-mask", "head-mask"])
def test_gpt2_like_both_branches_equal_the_original(gpt2, monkeypatch, output_attentions, head_mask):
    orig, new, _, _ = gpt2
    kwargs = {"output_attentions": output_attentions}
    if head_mask:
        kwargs["head_mask"] = _head_mask()
    _compare(orig, new, "CausalSelfAttention", kwargs, monkeypatch, fused=not (output_attentions or head_mask))


def test_train_mode_fast_branch_is_sdpa_with_the_dropout_probability(bert, monkeypatch):
    _, new, _, _ = bert
    seen = _spy(monkeypatch, new)
    m = new.SelfAttention(p=0.25).train()
    x = torch.randn(2, 5, 16)
    m(x)
    m(x, output_attentions=True)  # the original branch: the dropout layer, not SDPA
    m.eval()
    m(x)
    assert seen == [pytest.approx(0.25), 0.0]


@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_second_apply_changes_nothing(bert, gpt2, which):
    new = (bert if which == "bert" else gpt2)[3]
    before = new.read_bytes()
    code, report = _apply(new, "--write")
    assert code == 0 and new.read_bytes() == before
    assert not [m for m in report["matches"] if m["status"] == "applied"]
    # the original branch of the guard is dslc's own fallback, no location:
    # nothing new is reported (it used to be an S407 skip)
    assert report["matches"] == [], report["matches"]


def _skipped(tmp_path: Path, text: str) -> dict:
    src = tmp_path / "attn.py"
    src.write_text(text)
    code, report = _apply(src)
    assert code == 0 and src.read_text() == text
    assert not [m for m in report["matches"] if m["status"] == "applied"], report["matches"]
    (m,) = [m for m in report["matches"] if m["status"] == "skipped"]
    return m


def test_probabilities_returned_always_are_refused(tmp_path):
    # the helper returns them and its caller reads them unconditionally (a
    # caller that reads them only under a condition is guarded at the call:
    # tests/test_sdpa_keepcall.py)
    text = GPT2_ALWAYS.replace("        outputs = (attn_output,)\n        if output_attentions:\n"
                               "            outputs += (attn_weights,)\n", "        outputs = (attn_output, attn_weights)\n")
    assert text != GPT2_ALWAYS
    m = _skipped(tmp_path, text)
    assert m["code"] == "S204" and "`attn_weights`" in m["reason"] and "after the match" in m["reason"], m


def test_condition_reassigned_before_the_read_is_refused(tmp_path):
    text = BERT_LIKE.replace("        outputs = (context_layer, attention_probs)",
                             "        output_attentions = output_attentions or self.training\n"
                             "        outputs = (context_layer, attention_probs)")
    m = _skipped(tmp_path, text)
    assert m["code"] == "S331" and "`output_attentions`" in m["reason"] and "may change" in m["reason"], m


def test_condition_with_a_call_is_refused(tmp_path):
    text = BERT_LIKE.replace("if output_attentions else", "if self.wants(output_attentions) else")
    m = _skipped(tmp_path, text)
    assert m["code"] == "S331" and "calls or binds" in m["reason"], m


def test_head_mask_if_with_else_is_refused(tmp_path):
    text = BERT_LIKE.replace("            attention_probs = attention_probs * head_mask\n",
                             "            attention_probs = attention_probs * head_mask\n"
                             "        else:\n            attention_probs = attention_probs * 1.0\n")
    src = tmp_path / "attn.py"
    src.write_text(text)
    code, report = _apply(src)
    assert code == 0 and src.read_text() == text
    assert not [m for m in report["matches"] if m["status"] == "applied"]


def test_probabilities_read_between_are_refused(tmp_path):
    text = BERT_LIKE.replace("        # Mask heads if we want to\n",
                             "        self.last = attention_probs\n")
    m = _skipped(tmp_path, text)
    assert m["code"] == "S204" and "between the matched statements" in m["reason"], m


def test_form_feed_inside_the_guarded_region_keeps_lines(tmp_path):
    # Python splits lines only at \n, \r\n and \r: a form feed in a comment of
    # the region the guard re-indents is part of that line, not a line break.
    text = BERT_LIKE.replace("        # Mask heads if we want to\n", "        # Mask heads\x0c if we want to\n")
    orig, new, report, path = _rewrite(tmp_path, "ff", text)
    assert [m["status"] for m in report["matches"]] == ["applied"]
    out = path.read_text()
    assert "\n            # Mask heads\x0c if we want to\n" in out and out.count("\x0c") == 1
    torch.manual_seed(0)
    a, b = orig.SelfAttention().eval(), new.SelfAttention().eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(b(x, output_attentions=True)[1], a(x, output_attentions=True)[1], **TOL)
    torch.testing.assert_close(b(x)[0], a(x)[0], **TOL)
    before = path.read_bytes()
    code, again = _apply(path, "--write")
    assert code == 0 and path.read_bytes() == before
