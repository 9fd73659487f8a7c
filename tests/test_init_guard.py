"""A matched layer that `__init__` builds only under a condition, with another
layer on the other branch (issue 8, `dslc.rewrite.initguard`): a rule that
only changes `__init__` (biased_gelu) is applied under that condition too,
the other branch keeps the original code; anything the rewrite cannot
confine soundly stays refused (S216)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rewrite_support import load_module, run, stable

MODEL = '''import torch
from torch import nn
from transformers.activations import ACT2FN


class Blocked(nn.Module):
    """A projection with a block-diagonal weight (its own bias)."""

    def __init__(self, width, out, blocks):
        super().__init__()
        self.blocks = blocks
        self.weight = nn.Parameter(torch.randn(blocks, width // blocks, out // blocks) * 0.1)
        self.bias = nn.Parameter(torch.randn(out) * 0.1)

    def forward(self, x):
        parts = x.reshape(*x.shape[:-1], self.blocks, -1).unsqueeze(-2)
        y = torch.matmul(parts, self.weight).squeeze(-2)
        return y.reshape(*x.shape[:-1], -1) + self.bias


class Up(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.blocks == 1:
            self.proj = nn.Linear(cfg.width, cfg.inner)
        else:
            self.proj = Blocked(cfg.width, cfg.inner, cfg.blocks)
        if isinstance(cfg.hidden_act, str):
            self.act = ACT2FN[cfg.hidden_act]
        else:
            self.act = cfg.hidden_act

    def forward(self, h):
        h = self.proj(h)
        return self.act(h)
'''

GUARD = ('        if cfg.hidden_act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate") '
         'and cfg.blocks == 1:\n')


def _biased_gelu(result):
    return [(m.status, m.code or "", m.reason or "") for m in result.matches if m.rule.endswith(":biased_gelu")]


def test_layer_built_under_a_guard_is_fused_under_that_guard():
    result = run(MODEL)
    assert [s[0] for s in _biased_gelu(result)] == ["applied"], _biased_gelu(result)
    new = result.new_source
    stable(new)
    init = new[new.index("class Up"):new.index("    def forward(self, h)")]
    assert GUARD in init
    # the `else:` of the new `if` is the original run, the other layer included
    old_run = MODEL[MODEL.index("        if cfg.blocks == 1:"):MODEL.index("    def forward(self, h)")]
    indented = "".join("    " + line if line.strip() else line for line in old_run.splitlines(True))
    assert "        else:\n" + indented.rstrip("\n") in init
    # where the new test holds, the `if cfg.blocks == 1:` of the run takes its
    # first branch: only that branch is written
    assert init.index(GUARD) + len(GUARD) == init.index(
        "            self.proj = nn.Linear(cfg.width, cfg.inner, bias=False)\n"
        "            if isinstance(cfg.hidden_act, str):\n"
        "                self.act = FusedBiasGELU(cfg.inner, prev_weight=self.proj.weight)\n")
    assert init.count("Blocked(") == 1
    # forward and everything outside the edited run are unchanged
    assert new.endswith(MODEL[MODEL.index("    def forward(self, h)"):])


# the matched layer in the `else:` branch, and a comment in the branch kept
ELSE_MODEL = MODEL.replace(
    "        if cfg.blocks == 1:\n            self.proj = nn.Linear(cfg.width, cfg.inner)\n"
    "        else:\n            self.proj = Blocked(cfg.width, cfg.inner, cfg.blocks)\n",
    "        if cfg.blocks != 1:\n            self.proj = Blocked(cfg.width, cfg.inner, cfg.blocks)\n"
    "        else:\n            # one block\n            self.proj = nn.Linear(cfg.width, cfg.inner)\n")


def test_layer_built_in_the_else_branch_is_fused_under_its_negation():
    assert ELSE_MODEL != MODEL
    result = run(ELSE_MODEL)
    assert [s[0] for s in _biased_gelu(result)] == ["applied"], _biased_gelu(result)
    new = result.new_source
    stable(new)
    guard = GUARD.replace("and cfg.blocks == 1:", "and not (cfg.blocks != 1):")
    assert guard + "            # one block\n            self.proj = nn.Linear(cfg.width, cfg.inner, bias=False)\n" in new


def test_an_elif_branch_is_kept_whole():
    source = ELSE_MODEL.replace("        else:\n            # one block\n", "        elif cfg.blocks == 1:\n")
    result = run(source)
    assert [s[0] for s in _biased_gelu(result)] == ["applied"], _biased_gelu(result)
    stable(result.new_source)
    assert result.new_source.count("Blocked(cfg.width") == 2


@pytest.mark.parametrize("model", [MODEL, ELSE_MODEL])
@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_the_guarded_rewrite_keeps_the_numbers(monkeypatch, model, blocks, act):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    new_source = run(model).new_source
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "kernel_refs"))
    for name in [n for n in sys.modules if n.split(".")[0] == "epoi"]:
        monkeypatch.delitem(sys.modules, name)
    cfg = SimpleNamespace(width=8, inner=6, blocks=blocks, hidden_act=act)
    torch.manual_seed(0)
    old = load_module(model, "old").Up(cfg)
    try:
        new = load_module(new_source, "new").Up(cfg)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "epoi"]:
            del sys.modules[name]
    fused = blocks == 1 and act == "gelu_new"
    assert type(new.proj).__name__ == type(old.proj).__name__
    assert (type(new.act).__name__ == "FusedBiasGELU") == fused
    new.load_state_dict(old.state_dict())  # strict: the hook moves `proj.bias` where it goes
    x = torch.randn(3, 8)
    torch.testing.assert_close(new(x), old(x), atol=1e-5, rtol=1e-4)


# What a rewrite without the guard would do (the refusal before this
# change): where `blocks != 1`, the block projection keeps its bias and the
# fused activation adds another.
def test_the_unguarded_rewrite_would_be_wrong(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    wrong = MODEL.replace(
        "        if isinstance(cfg.hidden_act, str):\n            self.act = ACT2FN[cfg.hidden_act]\n",
        "        if isinstance(cfg.hidden_act, str):\n"
        "            self.act = FusedBiasGELU(cfg.inner)\n").replace(
        "from transformers.activations import ACT2FN\n",
        "from transformers.activations import ACT2FN\nfrom epoi.ops.torchscript_ops import FusedBiasGELU\n")
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "kernel_refs"))
    for name in [n for n in sys.modules if n.split(".")[0] == "epoi"]:
        monkeypatch.delitem(sys.modules, name)
    cfg = SimpleNamespace(width=8, inner=6, blocks=2, hidden_act="gelu_new")
    old = load_module(MODEL, "old").Up(cfg)
    try:
        new = load_module(wrong, "new").Up(cfg)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "epoi"]:
            del sys.modules[name]
    with torch.no_grad():
        new.act.bias.fill_(0.5)
    new.proj.load_state_dict(old.proj.state_dict())
    x = torch.randn(3, 8)
    assert not torch.allclose(new(x), old(x))


@pytest.mark.parametrize("old, new, why", [
    # the two bindings' conditions overlap: both may run, the second wins
    ("        else:\n            self.proj = Blocked(",
     "        if cfg.wide:\n            self.proj = Blocked(",
     "which forward would call in place of the `Linear`"),
    # the condition calls something: testing it twice may not give one answer
    ("        if cfg.blocks == 1:\n", "        if cfg.count() == 1:\n", "may have effects"),
])
def test_refusals(old, new, why):
    source = MODEL.replace(old, new)
    assert source != MODEL
    got = _biased_gelu(run(source))
    assert [(s[0], s[1]) for s in got] == [("skipped", "S216")], got
    assert why in got[0][2], got


def test_the_test_must_come_first_in_the_duplicated_run():
    # the activation is built before the `if`: the new test would run before
    # `Hook(cfg)`, which may change what `cfg.blocks` holds
    source = MODEL.replace(
        "        super().__init__()\n        if cfg.blocks == 1:",
        "        super().__init__()\n        self.act = ACT2FN[cfg.hidden_act]\n        self.hook = Hook(cfg)\n"
        "        if cfg.blocks == 1:").replace(
        "        if isinstance(cfg.hidden_act, str):\n            self.act = ACT2FN[cfg.hidden_act]\n"
        "        else:\n            self.act = cfg.hidden_act\n", "")
    assert source.count("ACT2FN[") == 1
    got = _biased_gelu(run(source))
    assert [(s[0], s[1]) for s in got] == [("skipped", "S216")], got
    assert "is not the first statement" in got[0][2], got


NORM_MODEL = '''import torch
from torch import nn


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.g = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.g


class Out(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.drop = nn.Dropout(cfg.p)
        if cfg.plain:
            self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        else:
            self.norm = Scale(cfg.width)

    def forward(self, x, res):
        return self.norm(self.drop(x) + res)
'''


def test_a_rule_that_edits_forward_stays_refused():
    # dropout_layernorm rewrites forward: where `not cfg.plain` the new
    # forward would call `Scale` with two arguments
    got = [(m.status, m.code) for m in run(NORM_MODEL).matches if m.rule.endswith(":dropout_layernorm")]
    assert got == [("skipped", "S216")], got


def test_a_binding_in_a_loop_stays_refused():
    # with the `if` inside a loop, the test at the top of the run would be
    # evaluated once before the loop, not at each iteration where the `if`
    # tests it (the guard may read the loop's variable)
    for loop in ("for _ in range(cfg.repeat):", "while cfg.more():"):
        source = MODEL.replace(
            "        if cfg.blocks == 1:\n            self.proj = nn.Linear(cfg.width, cfg.inner)\n"
            "        else:\n            self.proj = Blocked(cfg.width, cfg.inner, cfg.blocks)\n",
            f"        {loop}\n            if cfg.blocks == 1:\n"
            "                self.proj = nn.Linear(cfg.width, cfg.inner)\n"
            "            else:\n                self.proj = Blocked(cfg.width, cfg.inner, cfg.blocks)\n")
        assert source != MODEL
        got = _biased_gelu(run(source))
        assert [(s[0], s[1]) for s in got] == [("skipped", "S216")], got
        assert "inside a loop" in got[0][2], got
