"""Issue 8 item 15: layers of two `nn.ModuleList`s walked in step by
`for conv, bn in zip(self.convs, self.bns):`.

The analysis makes each loop name a call of its container's elements; the
rewrite fuses the i-th elements in `__init__` (the fused layers in the first
container, `nn.Identity()` in the other) and leaves forward alone, with a
pre-hook that renames each element's checkpoint keys.  Where the pairing of
the elements cannot be proved the match is refused with the reason.  Small
models written for these tests; each applied rewrite is run against the
original with the original state_dict loaded strictly.
"""

from __future__ import annotations

import pytest

from dslc import codes
from rewrite_support import assert_rewrite, load_module, remap_hook, run, stable

ZIP = '''import torch
from torch import nn


class ZipComp(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(n)])
        self.act = nn.ReLU()
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for _ in range(n)])

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = self.act(bn(conv(x)))
        return x


class ZipLiteral(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1, bias=False)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(c), nn.BatchNorm2d(c, eps=1e-3)])

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            h = conv(x)
            x = bn(h)
        return x
'''

RENAMES = '''\
            for new, old, keep in (
                ('convs.{i}.0.weight', 'convs.{i}.weight', False),
                ('convs.{i}.0.bias', 'convs.{i}.bias', False),
                ('convs.{i}.1.weight', 'bns.{i}.weight', False),
                ('convs.{i}.1.bias', 'bns.{i}.bias', False),
                ('convs.{i}.1.running_mean', 'bns.{i}.running_mean', False),
                ('convs.{i}.1.running_var', 'bns.{i}.running_var', False),
                ('convs.{i}.1.num_batches_tracked', 'bns.{i}.num_batches_tracked', False),
            )
'''
HOOK = '''\
        self._register_load_state_dict_pre_hook(_dslc_remap_state_dict(tuple(
            (new.format(i=i), old.format(i=i), keep)
            for i in range(len(self.convs))
''' + RENAMES + '''\
        )))
'''


def test_zip_of_two_module_lists_before_after():
    expected = ZIP.replace("from torch import nn\n", "from torch import nn\nfrom torch.ao.nn.intrinsic import ConvBn2d\n" + remap_hook(0), 1)
    expected = expected.replace(
        "        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(n)])\n"
        "        self.act = nn.ReLU()\n"
        "        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for _ in range(n)])\n",
        "        self.convs = nn.ModuleList([ConvBn2d(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)) for _ in range(n)])\n"
        "        self.act = nn.ReLU()\n"
        "        self.bns = nn.ModuleList([nn.Identity() for _ in range(n)])\n" + HOOK)
    expected = expected.replace(
        "        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1, bias=False)])\n"
        "        self.bns = nn.ModuleList([nn.BatchNorm2d(c), nn.BatchNorm2d(c, eps=1e-3)])\n",
        "        self.convs = nn.ModuleList([ConvBn2d(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)), "
        "ConvBn2d(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, eps=1e-3))])\n"
        "        self.bns = nn.ModuleList([nn.Identity(), nn.Identity()])\n" + HOOK)
    assert expected.count("ConvBn2d(nn.Conv2d") == 3 and expected.count("_register_load_state_dict_pre_hook") == 2
    # (only init lines were replaced: forward is untouched, each iteration computes Identity(fused(x)))
    assert_rewrite(ZIP, expected, applied=["conv_batchnorm"] * 2)


def test_zip_rewrite_computes_the_same_with_the_old_state_dict():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    result = run(ZIP)
    assert sorted(m.class_name for m in result.matches if m.status == "applied") == ["ZipComp", "ZipLiteral"]
    stable(result.new_source)
    old_ns, new_ns = vars(load_module(ZIP, "old_zip")), vars(load_module(result.new_source, "new_zip"))
    for name in ("ZipComp", "ZipLiteral"):
        torch.manual_seed(0)
        old = old_ns[name](3, 3)
        with torch.no_grad():
            for bn in old.bns:
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 2)
        new = new_ns[name](3, 3)
        new.load_state_dict(old.state_dict())  # strict: every old key is consumed, none is missing
        assert not any(k.startswith("bns.") for k in new.state_dict())
        x = torch.randn(2, 3, 8, 8)
        for train in (False, True):
            old.train(train)
            new.train(train)
            torch.testing.assert_close(new(x), old(x), msg=name)
        for i, bn in enumerate(old.bns):
            torch.testing.assert_close(new.convs[i][1].running_mean, bn.running_mean)


COMP = ZIP[: ZIP.index("\n\nclass ZipLiteral")] + "\n"
LITERAL = ZIP[: ZIP.index("class ZipComp")] + ZIP[ZIP.index("class ZipLiteral"):]


@pytest.mark.parametrize("source, change, expected, code, reason", [
    # lengths that cannot be proved equal (zip stops at the shorter one)
    (COMP, "[nn.BatchNorm2d(c) for _ in range(n)]", "[nn.BatchNorm2d(c) for _ in range(n + 1)]",
     codes.S_CONTAINER, "do not have the same `for` clauses"),
    (LITERAL, "nn.BatchNorm2d(c, eps=1e-3)])", "nn.BatchNorm2d(c, eps=1e-3), nn.BatchNorm2d(c)])",
     codes.S_CONTAINER, "have different lengths (2, 3)"),
    (COMP, "[nn.BatchNorm2d(c) for _ in range(n)]", "[nn.BatchNorm2d(c), nn.BatchNorm2d(c)]",
     codes.S_CONTAINER, "their pairing cannot be proved"),
    # the moved element reads a name written between the two statements
    (COMP, "        self.act = nn.ReLU()\n", "        self.act = nn.ReLU()\n        c = c\n",
     codes.S_CONTAINER, "`c` changes between the statements"),
    # a container used elsewhere
    (COMP, "        return x\n", "        return x + self.bns[0].weight.sum()\n",
     codes.S_CONTAINER_USE, "`self.bns` is also used at line"),
    # a loop name used beside its call
    (COMP, "x = self.act(bn(conv(x)))", "x = self.act(bn(conv(x))) + conv.bias.sum()",
     codes.S_CONTAINER_USE, "the loop's `conv` is also used"),
    # the intermediate is read again
    (LITERAL, "            x = bn(h)\n", "            x = bn(h) + h\n", codes.S_VALUE_READ, "the intermediate `h` is also read"),
    (LITERAL, "            h = conv(x)\n", "            h = conv(x)\n            print(h.sum())\n",
     codes.S_VALUE_READ, "the intermediate `h` is also read"),
    # a loop-carried read of the intermediate by the first call of the next iteration
    (LITERAL, "        for conv, bn in zip(self.convs, self.bns):\n            h = conv(x)\n",
     "        h = x\n        for conv, bn in zip(self.convs, self.bns):\n            h = conv(h)\n",
     codes.S_VALUE_READ, "the intermediate `h` is also read"),
    # something may leave between the two calls
    (LITERAL, "            h = conv(x)\n", "            h = conv(x)\n            if self.training:\n                break\n",
     codes.S_CONTAINER, "may leave between the matched calls"),
])
def test_zip_refusals(source, change, expected, code, reason):
    changed = source.replace(change, expected)
    assert changed != source
    result = run(changed)
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert got and all(status == "skipped" and c == code and reason in why for status, c, why in got), got


@pytest.mark.parametrize("change, expected", [
    # not every element is the layer the rule needs: no match at all
    ("nn.BatchNorm2d(c, eps=1e-3)]", "nn.Identity()]"),
    ("nn.BatchNorm2d(c, eps=1e-3)]", "nn.BatchNorm2d(c, affine=False)]"),
    # `zip` is not the builtin
    ("import torch\n", "import torch\nfrom itertools import zip_longest as zip\n"),
])
def test_zip_elements_that_do_not_all_match(change, expected):
    changed = LITERAL.replace(change, expected)
    assert changed != LITERAL
    result = run(changed)
    assert not [m for m in result.matches if m.rule.endswith("conv_batchnorm") and m.status == "applied"]
    assert result.new_source in (None, changed)


APPEND = '''import torch
from torch import nn


class ZipAppend(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for i in range(n):
            self.convs.append(nn.Conv2d(c, c, 3, padding=1, dilation=i + 1))
            self.bns.append(nn.BatchNorm2d(c))
        self.act = nn.ReLU()

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = self.act(bn(conv(x)))
        return x
'''


def test_zip_of_lists_filled_by_appends_in_one_loop():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    expected = APPEND.replace("from torch import nn\n", "from torch import nn\nfrom torch.ao.nn.intrinsic import ConvBn2d\n" + remap_hook(0), 1)
    expected = expected.replace(
        "            self.convs.append(nn.Conv2d(c, c, 3, padding=1, dilation=i + 1))\n"
        "            self.bns.append(nn.BatchNorm2d(c))\n",
        "            self.convs.append(ConvBn2d(nn.Conv2d(c, c, 3, padding=1, dilation=i + 1), nn.BatchNorm2d(c)))\n"
        "            self.bns.append(nn.Identity())\n" + HOOK)
    assert expected.count("ConvBn2d(nn.Conv2d") == 1
    result = assert_rewrite(APPEND, expected, applied=["conv_batchnorm"])
    old_ns, new_ns = vars(load_module(APPEND, "old_append")), vars(load_module(result.new_source, "new_append"))
    torch.manual_seed(0)
    old = old_ns["ZipAppend"](3, 3)
    with torch.no_grad():
        for bn in old.bns:
            bn.running_mean.uniform_(-1, 1)
    new = new_ns["ZipAppend"](3, 3)
    new.load_state_dict(old.state_dict())
    x = torch.randn(2, 3, 12, 12)
    for train in (False, True):
        old.train(train)
        new.train(train)
        torch.testing.assert_close(new(x), old(x))


@pytest.mark.parametrize("change, expected, code, reason", [
    # an append that runs on some iterations only
    ("            self.bns.append(nn.BatchNorm2d(c))\n",
     "            if i < n:\n                self.bns.append(nn.BatchNorm2d(c))\n", codes.S_CONTAINER, "are not statements of one `for` body"),
    # a `continue` between the two appends
    ("            self.bns.append(nn.BatchNorm2d(c))\n",
     "            if i == 1:\n                continue\n            self.bns.append(nn.BatchNorm2d(c))\n",
     codes.S_CONTAINER, "may leave between the appends"),
    # the two lists filled by two loops
    ("            self.bns.append(nn.BatchNorm2d(c))\n",
     "        for j in range(n):\n            self.bns.append(nn.BatchNorm2d(c))\n", codes.S_CONTAINER, "are not statements of one `for` body"),
    # one more element
    ("        self.act = nn.ReLU()\n", "        self.bns.append(nn.BatchNorm2d(c))\n        self.act = nn.ReLU()\n",
     codes.S_CONTAINER, "is not filled by one `self.bns.append(<layer>)`"),
])
def test_zip_of_appended_lists_refusals(change, expected, code, reason):
    changed = APPEND.replace(change, expected)
    assert changed != APPEND
    result = run(changed)
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert got and all(status == "skipped" and c == code and reason in why for status, c, why in got), got


def test_zip_under_enumerate():
    source = COMP.replace("        for conv, bn in zip(self.convs, self.bns):\n            x = self.act(bn(conv(x)))\n",
                          "        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):\n"
                          "            x = self.act(bn(conv(x))) * (i + 1)\n")
    assert source != COMP
    result = run(source)
    assert [m.status for m in result.matches if m.rule.endswith("conv_batchnorm")] == ["applied"]
    assert "        self.bns = nn.ModuleList([nn.Identity() for _ in range(n)])\n" in result.new_source
    stable(result.new_source)


# ---------------------------------------------------------------------------
# A container zipped with an iterable that is not one of the class's
# containers (`zip(self.blocks, past_key_values)`): only the class's
# containers' names hold its layers; the other name stays a plain local.

WITH_LOCAL = '''import torch
from torch import nn


class M(nn.Module):
    def __init__(self, c, n=2):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(n)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for _ in range(n)])

    def forward(self, x, scales=(1.0, 2.0)):
{body}
        return x
'''


@pytest.mark.parametrize("body", [
    "        for conv, bn, s in zip(self.convs, self.bns, scales):\n            x = bn(conv(x)) * s",
    # zip stops at the shortest: the elements not reached are fused all the same
    "        for conv, bn, s in zip(self.convs, self.bns, scales[:1]):\n            x = bn(conv(x)) * s",
    "        for i, (conv, s, bn) in enumerate(zip(self.convs, scales, self.bns)):\n            x = bn(conv(x)) * s + i",
    "        for conv, bn, s in zip(self.convs, self.bns, scales):\n            s = s * 2\n            x = bn(conv(x)) * s",
])
def test_zip_with_a_local_iterable_fuses_the_containers_elements(body):
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    source = WITH_LOCAL.format(body=body)
    result = run(source)
    assert [m.status for m in result.matches if m.rule.endswith("conv_batchnorm")] == ["applied"]
    new = result.new_source
    assert "self.convs = nn.ModuleList([ConvBn2d(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)) for _ in range(n)])" in new
    assert new.split("def forward", 1)[1] == source.split("def forward", 1)[1]
    stable(new)
    torch.manual_seed(0)
    old = vars(load_module(source, "old_local"))["M"](3)
    with torch.no_grad():
        for bn in old.bns:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    fresh = vars(load_module(new, "new_local"))["M"](3)
    fresh.load_state_dict(old.state_dict())
    x = torch.randn(2, 3, 6, 6)
    for train in (False, True):
        old.train(train)
        fresh.train(train)
        torch.testing.assert_close(fresh(x), old(x))


def test_zip_with_a_local_iterable_holding_a_layer_of_the_container_is_refused():
    body = "        for conv, bn, s in zip(self.convs, self.bns, [self.bns[0]] * 2):\n            x = s(bn(conv(x)))"
    result = run(WITH_LOCAL.format(body=body))
    got = [(m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert got and all(st == "skipped" and c == codes.S_CONTAINER_USE and "`self.bns` is also used" in why
                       for st, c, why in got), got


PAST = '''import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertSelfAttention


class Past(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([BertSelfAttention(config, position_embedding_type="absolute") for _ in range(config.n)])

    def forward(self, x, past_key_values):
        for layer, past in zip(self.layers, past_key_values):
            x = layer(x, past_key_value=past)[0]
        return x
'''


def test_module_list_zipped_with_past_key_values_is_replaced():
    result = run(PAST)
    assert [(m.rule, m.status) for m in result.matches] == [("adopter:bert_self_attention", "applied")]
    assert ("        self.layers = nn.ModuleList([BertSelfAttentionWithXF(config, position_embedding_type='absolute', "
            "attn_op_name='cutlass') for _ in range(config.n)])\n") in result.new_source
    assert result.new_source.split("def forward", 1)[1] == PAST.split("def forward", 1)[1]
    stable(result.new_source)
    # the element's name rebound in the body holds something else there: not followed
    rebound = PAST.replace("            x = layer(", "            layer = layer if past is not None else layer\n            x = layer(")
    assert not [m for m in run(rebound).matches if m.status == "applied"]
