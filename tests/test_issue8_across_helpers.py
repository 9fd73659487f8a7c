"""Issue 8 item 7, both directions: a fusion whose calls are split between
a method and a helper it calls.

The removed layer's call may sit in the helper (conv in `forward`, its
BatchNorm in `self._bn_act(h)`) or in the caller (the conv in
`self._conv(x)`, the BatchNorm on its result in `forward`), and it may be
nested in an expression (`return self.act(self.bn(y))`): the call is then
replaced by its argument.  Small models written for these tests; each
applied rewrite is run against the original with the original state_dict
loaded strictly.
"""

from __future__ import annotations

import pytest

from rewrite_support import assert_rewrite, fixture, load_module, remap_hook, run, stable

HOOK_ARGS = '''\
        self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
            ('conv.0.weight', 'conv.weight', False),
            ('conv.0.bias', 'conv.bias', False),
            ('conv.1.weight', 'bn.weight', False),
            ('conv.1.bias', 'bn.bias', False),
            ('conv.1.running_mean', 'bn.running_mean', False),
            ('conv.1.running_var', 'bn.running_var', False),
            ('conv.1.num_batches_tracked', 'bn.num_batches_tracked', False),
        )))
'''

INIT = '''\
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()
'''

FUSED_INIT = '''\
    def __init__(self, c):
        super().__init__()
        self.conv = ConvBn2d(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
''' + HOOK_ARGS + '''\
        self.act = nn.ReLU()
'''

# (class name, body after __init__, expected body after the rewrite)
CASES = {
    # the conv in a helper, its BatchNorm on the helper's result in forward
    "ConvInHelper": ('''
    def _conv(self, z):
        return self.conv(z)

    def forward(self, x):
        o = self._conv(x)
        return self.act(self.bn(o))
''', '''
    def _conv(self, z):
        return self.conv(z)

    def forward(self, x):
        o = self._conv(x)
        return self.act(o)
'''),
    # the same, the BatchNorm a statement of its own (deleted) and the helper's value named
    "ConvInHelperStatement": ('''
    def _conv(self, z):
        t = self.conv(z)
        return t

    def forward(self, x):
        o = self._conv(x)
        o = self.bn(o)
        return self.act(o) * 2
''', '''
    def _conv(self, z):
        t = self.conv(z)
        return t

    def forward(self, x):
        o = self._conv(x)
        return self.act(o) * 2
'''),
    # the helper's call is the BatchNorm's argument
    "ConvInHelperInline": ('''
    def _conv(self, z):
        return self.conv(z)

    def forward(self, x):
        return self.bn(self._conv(x)) + 1
''', None),
    # the BatchNorm nested in an expression of the helper
    "BnNestedInHelper": ('''
    def _bn_act(self, y):
        return self.act(self.bn(y))

    def forward(self, x):
        h = self.conv(x)
        return self._bn_act(h) - x
''', '''
    def _bn_act(self, y):
        return self.act(y)

    def forward(self, x):
        h = self.conv(x)
        return self._bn_act(h) - x
'''),
    # the helper's parameter has the caller's name and is bound to that variable
    "SameNameParameter": ('''
    def _bn_act(self, h):
        out = self.bn(h)
        return self.act(out)

    def forward(self, x):
        h = self.conv(x)
        return self._bn_act(h)
''', '''
    def _bn_act(self, h):
        out = h
        return self.act(out)

    def forward(self, x):
        h = self.conv(x)
        return self._bn_act(h)
'''),
}

HEAD = "import torch\nfrom torch import nn\n"
FUSED_HEAD = "import torch\nfrom torch import nn\nfrom torch.ao.nn.intrinsic import ConvBn2d\n" + remap_hook(0)


def model(name: str, body: str) -> str:
    return f"\n\nclass {name}(nn.Module):\n" + INIT + body


def source_of(names) -> str:
    return HEAD + "".join(model(n, CASES[n][0]) for n in names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fusion_across_a_helper_before_after(name):
    before, after = CASES[name]
    if after is None:
        after = before.replace("self.bn(self._conv(x))", "self._conv(x)")
    expected = FUSED_HEAD + f"\n\nclass {name}(nn.Module):\n" + FUSED_INIT + after
    assert_rewrite(source_of([name]), expected, applied=["conv_batchnorm"])


def test_fusion_across_a_helper_computes_the_same_with_the_old_state_dict():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    source = source_of(sorted(CASES))
    result = run(source)
    assert sorted(m.class_name for m in result.matches if m.status == "applied") == sorted(CASES)
    stable(result.new_source)
    old_ns, new_ns = vars(load_module(source, "old_across")), vars(load_module(result.new_source, "new_across"))
    for name in sorted(CASES):
        torch.manual_seed(0)
        old = old_ns[name](3)
        with torch.no_grad():
            old.bn.running_mean.uniform_(-1, 1)
            old.bn.running_var.uniform_(0.5, 2)
            old.bn.weight.uniform_(0.5, 2)
        new = new_ns[name](3)
        new.load_state_dict(old.state_dict())  # strict: every old key is consumed, none is missing
        x = torch.randn(2, 3, 8, 8)
        for train in (False, True):
            old.train(train)
            new.train(train)
            torch.testing.assert_close(new(x), old(x), msg=name)
        torch.testing.assert_close(new.conv[1].running_mean, old.bn.running_mean)


MIRROR = CASES["ConvInHelper"][0]
NESTED = CASES["BnNestedInHelper"][0]


@pytest.mark.parametrize("body, change, expected, reason", [
    # the helper that runs the conv is called twice: the second call would get the BatchNorm too
    (MIRROR, "        return self.act(self.bn(o))\n", "        return self.act(self.bn(o)) + self._conv(x)\n",
     "`self._conv` is used elsewhere too"),
    # the conv's output is read again
    (MIRROR, "        return self.act(self.bn(o))\n", "        return self.act(self.bn(o)) + o\n", "is also read at line"),
    (MIRROR, "        return self.conv(z)\n", "        t = self.conv(z)\n        self.last = t.mean()\n        return t\n",
     "is also read at line"),
    # the BatchNorm does not run on every path that runs the conv
    (MIRROR, "        return self.act(self.bn(o))\n",
     "        if x.dim() == 4:\n            o = self.bn(o)\n        return self.act(o)\n", "some path"),
    # something may leave between the two calls
    (MIRROR, "        return self.act(self.bn(o))\n",
     "        if self.training:\n            raise ValueError('eval only')\n        return self.act(self.bn(o))\n",
     "may leave before it"),
    (MIRROR, "        return self.conv(z)\n",
     "        t = self.conv(z)\n        if self.training:\n            raise ValueError('eval only')\n        return t\n",
     "may leave before it"),
    # the BatchNorm's input by keyword: the call is not `self.bn(v)`
    (MIRROR, "self.bn(o)", "self.bn(input=o)", "is not `self.<layer>(v)` on a variable"),
    # the helper binds a name that holds the conv output in forward
    (NESTED, "        return self.act(self.bn(y))\n", "        h = self.bn(y)\n        return self.act(h)\n",
     "the data flow across the helper cannot be told apart"),
    (NESTED, "        return self._bn_act(h) - x\n", "        return self._bn_act(h) - h\n", "is also read at line"),
])
def test_fusion_across_a_helper_refusals(body, change, expected, reason):
    changed = body.replace(change, expected)
    assert changed != body
    result = run(HEAD + model("M", changed))
    got = [(m.status, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert got and all(status == "skipped" and reason in why for status, why in got), got


def test_a_subclass_could_call_the_helper():
    source = source_of(["ConvInHelper"]) + fixture('''


        class Sub(ConvInHelper):
            def forward(self, x):
                return self._conv(x)
        ''')
    result = run(source)
    got = [(m.class_name, m.status, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert ("ConvInHelper", "skipped") in [g[:2] for g in got] and "subclasses" in got[0][2], got
    assert all(status != "applied" for _, status, _ in got), got


def test_the_name_clash_refusal_prevents_a_wrong_rewrite():
    """`h` of the helper is not `h` of forward: fusing would change `o + h`."""
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    body = NESTED.replace("        return self.act(self.bn(y))\n", "        y = self.bn(y)\n        h = y * 2\n        return h\n") \
        .replace("        return self._bn_act(h) - x\n", "        o = self._bn_act(h)\n        return o + h\n")
    source = HEAD + model("M", body)
    assert [m.status for m in run(source).matches if m.rule.endswith("conv_batchnorm")] == ["skipped"]
    # what the fused version would compute: the conv output `h` read at the end is normalised too
    ns = vars(load_module(source, "clash"))
    torch.manual_seed(0)
    m = ns["M"](3).eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        x = torch.randn(2, 3, 8, 8)
        h = m.conv(x)
        fused = m.bn(h)
        assert not torch.allclose(m(x), fused * 2 + fused)


# ---------------------------------------------------------------------------
# A loop around the match: the paths walk its body once, so a read of the
# intermediate earlier in the body (the next iteration's) is checked apart.

LOOPS = '''import torch
from torch import nn


class InLoop(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def _conv(self, z):
        return self.conv(z)

    def _bn(self, y):
        return self.bn(y)

    def forward(self, x):
        s = 0
        for _ in range(2):
            h = self.conv(x)
            x = self.bn(h)
        return x, s
'''

SAME = ("            h = self.conv(x)\n            x = self.bn(h)\n")
CONV_HELPER = "    def _conv(self, z):\n        return self.conv(z)\n\n"
BN_HELPER = "    def _bn(self, y):\n        return self.bn(y)\n\n"


def loops(change: str = SAME, expected: str = SAME) -> str:
    """LOOPS with `change` replaced, keeping only the helpers it calls (another
    helper calling the layer would be a second use of it)."""
    source = LOOPS.replace(change, expected)
    for helper, call in ((CONV_HELPER, "self._conv("), (BN_HELPER, "self._bn(")):
        if call not in source:
            source = source.replace(helper, "")
    return source
CARRIED = [
    # one method (the general fusion)
    ("        s = 0\n" + "        for _ in range(2):\n" + SAME,
     "        s, h = 0, x\n        for _ in range(2):\n            s = s + h.sum()\n" + SAME,
     "the intermediate `h` is read at line"),
    # the BatchNorm in a helper
    ("        s = 0\n" + "        for _ in range(2):\n" + SAME,
     "        s, h = 0, x\n        for _ in range(2):\n            s = s + h.sum()\n"
     "            h = self.conv(x)\n            x = self._bn(h)\n",
     "the value between the calls, `h`, is read at line"),
    # the conv in a helper
    ("        s = 0\n" + "        for _ in range(2):\n" + SAME,
     "        s, h = 0, x\n        for _ in range(2):\n            s = s + h.sum()\n"
     "            h = self._conv(x)\n            x = self.bn(h)\n",
     "the value between the calls, `h`, is read at line"),
]


@pytest.mark.parametrize("change, expected, reason", CARRIED)
def test_a_read_of_the_intermediate_by_the_next_iteration_refuses(change, expected, reason):
    torch = pytest.importorskip("torch", reason="torch shows that the naive rewrite would differ")
    source = loops(change, expected)
    assert "s = s + h.sum()" in source
    result = run(source)
    got = [(m.status, m.reason) for m in result.matches if m.rule.endswith("conv_batchnorm")]
    assert got and all(status == "skipped" and reason in why for status, why in got), got
    # what fusing would compute: `h` of the second iteration's `s` is normalised
    m = vars(load_module(source, "carried"))["InLoop"](3).eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        x = torch.randn(1, 3, 6, 6)
        h1 = m.conv(x)
        plain = x.sum() + h1.sum()
        fused = x.sum() + m.bn(h1).sum()
        torch.testing.assert_close(m(x)[1], plain)
        assert not torch.allclose(plain, fused)


def test_the_same_match_in_a_loop_without_that_read_is_rewritten():
    for body in (SAME, "            h = self.conv(x)\n            x = self._bn(h)\n",
                 "            h = self._conv(x)\n            x = self.bn(h)\n"):
        source = loops(SAME, body)
        result = run(source)
        assert [m.status for m in result.matches if m.rule.endswith("conv_batchnorm")] == ["applied"], body
        stable(result.new_source)
