"""Issue 8, the loop-carried audit of every kind of rewrite: the paths walk
a loop body once, so a read of a removed intermediate by the next iteration
(`for ...: s = s + h.sum(); h = self.conv(x); x = self.bn(h)`) is checked
apart, in each kind that leaves a name holding another value than before.

* the guarded kind (a layer `__init__` binds to `None` / `nn.Identity()` on
  another branch): the fused layer's output lands in the conv's name, so a
  read of that name by the next iteration (at the top of the body, or by the
  conv itself, `h = self.conv(h)`) sees the normalised value: refused (S204);
  the form whose guarded call writes the name back (`x = self.norm(x)`)
  still rewrites in a loop;
* the general fusion: `h = self.conv(h); x = self.bn(h)` becomes `x =
  self.conv(h)`, which reads the `h` of the loop's entry on every iteration:
  refused;
* across a helper (`self._bn(h)`, `self._conv(h)`): the kept statement's own
  read of the name is the next iteration's: refused;
* the zip loop: a read of the intermediate anywhere in the body: refused;
* the per-call dispatch (liger's fused linear cross-entropy): the helper no
  longer assigns the logits: refused; the plain cross-entropy call still
  gets its dispatch;
* `nn.Sequential`: the intermediates are inside the container (no name
  holds them), so the rewrite in a loop stays correct; class items replace a
  whole `forward`, which holds no removed intermediate of a caller.

Same-statement reads (item 2) and kept outputs whose value changes (item 1)
are checked per kind here too where no other test did.  Models written for
these tests; torch runs every applied rewrite against the original (strict
state_dict), and shows, for each refusal of the guarded kind, that the
rewrite refused would have changed the numbers.
"""

from __future__ import annotations

import pytest

from dslc import codes
from rewrite_support import RULEPACKS, load_module, run, stable

HEAD = "import torch\nfrom torch import nn\n\n"

GUARDED = HEAD + '''
class M(nn.Module):
    def __init__(self, c, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        if use_norm:
            self.norm = nn.BatchNorm2d(c)
        else:
            self.norm = {neutral}

    def forward(self, x):
        s = x.sum() * 0
        h = x
        i = 0
{loop}
        return x, s
'''

FOR = "        for _ in range(2):\n"
WHILE = "        while i < 2:\n            i += 1\n"

# (neutral binding, loop head, body); each reads the conv's output `h` on the next iteration
GUARDED_CARRIED = {
    "identity, read at the top": ("nn.Identity()", FOR,
                                  "            s = s + h.sum()\n            h = self.conv(x)\n            x = self.norm(h)\n"),
    "identity, while loop": ("nn.Identity()", WHILE,
                             "            x = x + h\n            h = self.conv(x)\n            x = self.norm(h)\n"),
    "identity, the conv reads it": ("nn.Identity()", FOR, "            h = self.conv(h)\n            x = self.norm(h)\n"),
    "else copy, read at the top": ("None", FOR,
                                   "            s = s + h.sum()\n            h = self.conv(x)\n"
                                   "            if self.norm is None:\n                y = h\n"
                                   "            else:\n                y = self.norm(h)\n            x = y\n"),
    "else copy, the conv reads it": ("None", FOR,
                                     "            h = self.conv(h)\n            if self.norm is None:\n                x = h\n"
                                     "            else:\n                x = self.norm(h)\n"),
}


def _guarded(neutral: str, head: str, body: str) -> str:
    return GUARDED.format(neutral=neutral, loop=head + body)


def _perturbed(cls, **kw):
    torch = pytest.importorskip("torch", reason="torch runs the models")
    torch.manual_seed(0)
    m = cls(3, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-1, 1)
        for key, b in m.named_buffers():
            if "running" in key:
                b.uniform_(0.5, 1.5)
    return m.eval()


def _same(old_source: str, new_source: str, name: str, kwargs=({},)) -> None:
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    old_cls, new_cls = vars(load_module(old_source, "old"))[name], vars(load_module(new_source, "new"))[name]
    for kw in kwargs:
        old = _perturbed(old_cls, **kw)
        new = new_cls(3, **kw).eval()
        new.load_state_dict(old.state_dict())
        x = torch.randn(2, 3, 6, 6)
        for a, b in zip(old(x), new(x)):
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("case", sorted(GUARDED_CARRIED))
def test_guarded_layer_read_by_the_next_iteration_is_refused(case):
    torch = pytest.importorskip("torch", reason="torch shows the refused rewrite would differ")
    neutral, head, body = GUARDED_CARRIED[case]
    source = _guarded(neutral, head, body)
    result = run(source)
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert len(got) == 1 and got[0][:2] == ("skipped", codes.S_VALUE_READ), got
    assert "inside the loop around the match" in got[0][2] and "`h`" in got[0][2], got
    assert result.new_source is None
    # what the guarded rewrite computes where the layer exists: the conv
    # followed by the norm (ConvBn2d), the norm itself gone
    m = _perturbed(vars(load_module(source, "carried"))["M"])
    x = torch.randn(2, 3, 6, 6)
    expected = m(x)
    m.conv = torch.nn.Sequential(m.conv, m.norm)
    m.norm = None if neutral == "None" else torch.nn.Identity()
    fused = m(x)
    assert not all(torch.allclose(a, b) for a, b in zip(expected, fused))


@pytest.mark.parametrize("neutral, body", [
    ("nn.Identity()", "            s = s + x.sum()\n            x = self.conv(x)\n            x = self.norm(x)\n"),
    ("None", "            s = s + x.sum()\n            x = self.conv(x)\n"
             "            if self.norm is not None:\n                x = self.norm(x)\n"),
])
def test_guarded_layer_in_a_loop_whose_call_writes_the_name_back_is_rewritten(neutral, body):
    source = _guarded(neutral, FOR, body)
    result = run(source)
    assert [m.status for m in result.matches if m.rule.endswith("conv_batchnorm")] == ["applied"]
    stable(result.new_source)
    _same(source, result.new_source, "M", ({}, {"use_norm": False}))


FUSION = HEAD + '''
class M(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        s = x.sum() * 0
        h = x
        for _ in range(2):
{body}
        return x, s
'''


@pytest.mark.parametrize("body, reason", [
    # the target would read the `h` of the loop's entry on every iteration
    ("            h = self.conv(h)\n            x = self.bn(h)\n", "is also the input of the match, inside a loop"),
    ("            h = self.conv(h)\n            x = self.bn(h) * 2\n", "is also the input of the match, inside a loop"),
    # the read at the top of the body (the general kind's check)
    ("            s = s + h.sum()\n            h = self.conv(x)\n            x = self.bn(h)\n", "inside the loop around the match"),
])
def test_fusion_whose_input_is_its_intermediate_in_a_loop_is_refused(body, reason):
    torch = pytest.importorskip("torch", reason="torch shows the refused rewrite would differ")
    source = FUSION.format(body=body)
    result = run(source)
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert len(got) == 1 and got[0][:2] == ("skipped", codes.S_VALUE_READ) and reason in got[0][2], got
    if "self.conv(h)" in body:
        # what `x = self.conv(h)` (the fused layer, `h` never assigned) would compute
        m = _perturbed(vars(load_module(source, "feed"))["M"])
        x = torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            naive = m.bn(m.conv(x)) * (2 if "* 2" in body else 1)
            assert not torch.allclose(m(x)[0], naive)


def test_fusion_in_a_loop_without_a_carried_read_is_rewritten():
    source = FUSION.format(body="            h = self.conv(x)\n            x = self.bn(h)\n")
    result = run(source)
    assert [m.status for m in result.matches if m.rule.endswith("conv_batchnorm")] == ["applied"]
    stable(result.new_source)
    _same(source, result.new_source, "M")


HELPERS = HEAD + '''
class M(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def {helper}

    def forward(self, x):
        s = x.sum() * 0
        h = x
        for _ in range(2):
{body}
        return x, s
'''


@pytest.mark.parametrize("helper, body", [
    ("_bn(self, y):\n        return self.bn(y)", "            h = self.conv(h)\n            x = self._bn(h)\n"),
    ("_conv(self, z):\n        return self.conv(z)", "            h = self._conv(h)\n            x = self.bn(h)\n"),
])
def test_across_a_helper_the_kept_statement_reading_its_own_output_is_refused(helper, body):
    source = HELPERS.format(helper=helper, body=body)
    result = run(source)
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert len(got) == 1 and got[0][:2] == ("skipped", codes.S_VALUE_READ), got
    assert "the value between the calls, `h`, is read at line 18 inside the loop" in got[0][2], got


ZIP = HEAD + '''
class M(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(2)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for _ in range(2)])

    def forward(self, x):
        s = x.sum() * 0
        h = x
        for conv, bn in zip(self.convs, self.bns):
{body}
        return x, s
'''


@pytest.mark.parametrize("body", [
    "            s = s + h.sum()\n            h = conv(x)\n            x = bn(h)\n",
    "            h = conv(x)\n            x = bn(h) + h\n",
])
def test_zip_loop_reads_of_the_intermediate_are_refused(body):
    result = run(ZIP.format(body=body))
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert got and all(st == "skipped" and c == codes.S_VALUE_READ and "`h` is also read" in why
                       for st, c, why in got), got


SEQUENTIAL = HEAD + '''
class M(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        s = x.sum() * 0
        for _ in range(2):
            s = s + x.sum()
            x = self.seq(x)
        return x, s
'''


def test_sequential_in_a_loop_holds_no_named_intermediate_and_is_rewritten():
    result = run(SEQUENTIAL)
    assert [m.status for m in result.matches if m.rule.endswith("conv_batchnorm")] == ["applied"]
    stable(result.new_source)
    _same(SEQUENTIAL, result.new_source, "M")


LOOP_LM = '''import torch
from torch import nn
from torch.nn import functional as F


class LoopLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx)
        logits = torch.zeros(idx.shape + (37,))
        total = 0.0
        for _ in range(2):
            total = total + logits.sum()
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            x = x * 0.5
        return loss + total
'''


def test_per_call_dispatch_of_a_chain_read_by_the_next_iteration_is_refused():
    liger = (str(RULEPACKS / "liger.adr"),)
    result = run(LOOP_LM, rules=liger)
    got = {m.rule: (m.status, m.code, m.reason or "") for m in result.matches}
    status, code, reason = got["liger:fused_linear_cross_entropy"]
    assert (status, code) == ("skipped", codes.S_VALUE_READ) and "`logits` is read at line 17" in reason
    assert got["liger:cross_entropy"][0] == "applied"  # the loss alone: nothing removed
    plain = LOOP_LM.replace("            total = total + logits.sum()\n", "")
    again = run(plain, rules=liger)
    assert {m.rule: m.status for m in again.matches}["liger:fused_linear_cross_entropy"] == "applied"
    stable(again.new_source, rules=liger)


# ---------------------------------------------------------------------------
# Item 2 per kind: a read of the removed intermediate in the statement that
# holds the matched call (the zip loop's is above, the general fusion's in
# test_safety_issue8.py, the guarded kind across a helper's in
# test_guarded_helpers.py).

SAME_HELPER = HEAD + '''
class M(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def _bn(self, y):
        return self.bn(y)

    def forward(self, x):
        h = self.conv(x)
        return self._bn(h) + h
'''

SAME_CASES = {
    "guarded": (lambda: _guarded("nn.Identity()", "        if True:\n", "            h = self.conv(x)\n            x = self.norm(h) + h\n"),
                ("adopter",), "conv_batchnorm", "intermediate `h` (line 19) is also read at line 20, in the statement that holds"),
    "across a helper": (lambda: SAME_HELPER, ("adopter",), "conv_batchnorm", "the value it normalises, `h`, is also read at line 16"),
    "per-call dispatch": (lambda: LOOP_LM.replace("            total = total + logits.sum()\n", "").replace(
        "targets.view(-1))\n", "targets.view(-1)) + logits.mean()\n"), (str(RULEPACKS / "liger.adr"),),
        "fused_linear_cross_entropy", "intermediate `logits` (line 17) is also read at line 18, in the statement that holds"),
}


@pytest.mark.parametrize("case", sorted(SAME_CASES))
def test_a_read_in_the_statement_of_the_matched_call_is_refused_per_kind(case):
    make, rules, rule, why = SAME_CASES[case]
    source = make()
    result = run(source, rules=rules, select=[rule])
    got = [(m.status, m.code, m.reason or "") for m in result.matches]
    assert len(got) == 1 and got[0][:2] == ("skipped", codes.S_VALUE_READ) and why in got[0][2], got
