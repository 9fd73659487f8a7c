"""`option inner` (issue 8, recall): other uses of a layer that the rewrite
rebuilds around itself read the original layer inside the new one.

conv_batchnorm's target `ConvBn2d($conv, $bn) -> $conv` keeps the original
conv at `self.conv[0]`.  A use of `self.conv` outside the matched code (the
conv passed to a padding function that reads `.stride` / `.kernel_size`, a
second call, an attribute read) used to refuse the match (S207); with
`option inner = "$conv[0]"` it becomes `self.conv[0]`, or, where only one
branch of `__init__` builds the ConvBn2d (the guarded kind),
`(self.conv[0] if isinstance(self.conv, ConvBn2d) else self.conv)`.

1. `dslc check`: the option's format (ADR106) and its meaning (ADR121).
2. The unguarded rewrite, exact, and in torch: same numbers (eval, train,
   the second call, the padding), the original checkpoint loads strictly.
3. The guarded rewrite, exact, and in torch on both branches.
4. Refusals, each with its reason: a write through the attribute, a use in
   `__init__`, in a subclass, in a nested function with its own `self`, in
   a static method, a store of the attribute, a rule without the option.

The models are written for these tests (not taken from the benchmark).
"""

from __future__ import annotations

import pytest

from dslc.lang.checker import check_file
from dslc.lang.parser import parse_source
from dslc.match.ir import parse_inner
from rewrite_support import REMAP_HOOK, assert_rewrite, fixture, load_module, run

# ---------------------------------------------------------------------------
# 1. the checker


def codes_of(text: str) -> list[str]:
    result = parse_source(text, "t.adr")
    assert result.file is not None, result.diagnostics
    return sorted(d.code for d in check_file(result.file))


RULE = '''pack p "d"
rule r "conv then bn" {
  kernel torch.ao.nn.intrinsic.ConvBn2d
  exact
  init {
    torch.nn.Conv2d(...) -> $conv;
    torch.nn.BatchNorm2d(...) -> $bn;
  } => {
    %s
  }
  forward {
    $conv($x) -> $h;
    $bn($h) -> $o;
  } => {
    $conv($x) -> $o;
  }
  %s
}
'''
FUSED = "torch.ao.nn.intrinsic.ConvBn2d($conv, $bn) -> $conv;"


def test_parse_inner():
    assert parse_inner("$conv[0]") == {"conv": "[0]"}
    assert parse_inner(" $a[0][1] , $b.inner ") == {"a": "[0][1]", "b": ".inner"}
    for bad in ("", "$conv", "conv[0]", "$conv[x]", "$a[0], $a[1]", "$conv[0],", 3, None):
        assert parse_inner(bad) is None, bad


def test_option_inner_checked():
    assert codes_of(RULE % (FUSED, 'option inner = "$conv[0]"')) == []
    assert codes_of(RULE % (FUSED, 'option inner = "$conv"')) == ["ADR106"]
    assert codes_of(RULE % (FUSED, "option inner = 0")) == ["ADR106"]
    # the layer is removed, not kept
    assert codes_of(RULE % (FUSED, 'option inner = "$bn[1]"')) == ["ADR121"]
    # bound by no source
    assert codes_of(RULE % (FUSED, 'option inner = "$zz[0]"')) == ["ADR121"]
    # the new layer is not built around the original one
    other = "torch.ao.nn.intrinsic.ConvBn2d($bn, $bn) -> $conv;"
    assert "ADR121" in codes_of(RULE % (other, 'option inner = "$conv[0]"'))


def test_shipped_packs_declare_it_and_check_clean():
    from dslc.lang.loader import load_rules
    from rewrite_support import RULEPACKS

    result = load_rules([str(RULEPACKS)], ())
    assert result.ok, [str(d) for d in result.diagnostics if d.is_error]
    declared = {r.qualified_name: r.inner() for p in result.packs for r in p.rules if r.inner()}
    assert declared == {"adopter:conv_batchnorm": {"conv": "[0]"}}


# ---------------------------------------------------------------------------
# 2. unguarded: the conv's binding becomes the ConvBn2d

HEAD = '''import torch
from torch import nn


def same_pad(x, conv):
    sh, sw = conv.stride
    kh, kw = conv.kernel_size
    ph, pw = max(kh - sh, 0), max(kw - sw, 0)
    return nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
'''
HEAD_AFTER = HEAD.replace("from torch import nn\n", "from torch import nn\nfrom torch.ao.nn.intrinsic import ConvBn2d\n"
                          + REMAP_HOOK, 1)

HOOK = '''        self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
            ('conv.0.weight', 'conv.weight', False),
            ('conv.0.bias', 'conv.bias', False),
            ('conv.1.weight', 'bn.weight', False),
            ('conv.1.bias', 'bn.bias', False),
            ('conv.1.running_mean', 'bn.running_mean', False),
            ('conv.1.running_var', 'bn.running_var', False),
            ('conv.1.num_batches_tracked', 'bn.num_batches_tracked', False),
        )))
'''

BLOCK = HEAD + '''

class Block(nn.Module):
    def __init__(self, cin, cout, stride=2):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = same_pad(x, self.conv)
        x = self.conv(x)
        x = self.bn(x)
        return x

    def features(self, y):
        return self.conv(y) * self.conv.stride[0]

    @property
    def width(self):
        return self.conv.out_channels
'''

BLOCK_AFTER = HEAD_AFTER + '''

class Block(nn.Module):
    def __init__(self, cin, cout, stride=2):
        super().__init__()
        self.conv = ConvBn2d(nn.Conv2d(cin, cout, 3, stride=stride), nn.BatchNorm2d(cout))
''' + HOOK + '''
    def forward(self, x):
        x = same_pad(x, self.conv[0])
        x = self.conv(x)
        return x

    def features(self, y):
        return self.conv[0](y) * self.conv[0].stride[0]

    @property
    def width(self):
        return self.conv[0].out_channels
'''


def _perturbed(module, torch):
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-1, 1)
        for key, b in module.named_buffers():
            if "running" in key:
                b.uniform_(0.5, 1.5)


def _same(old, new, torch, *, extra=()):
    """The original's state_dict loads strictly; outputs (and `extra`
    methods) agree in eval and train, and so do the running statistics."""
    new.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(2, old_in(old), 9, 9)
    for train in (False, True):
        old.train(train)
        new.train(train)
        torch.testing.assert_close(new(x), old(x))
        for name in extra:
            torch.testing.assert_close(getattr(new, name)(x), getattr(old, name)(x))
    stats = lambda m: sorted(v.float().sum().item() for k, v in m.state_dict().items() if "running" in k)  # noqa: E731
    assert stats(new) == pytest.approx(stats(old))


def old_in(module) -> int:
    return next(m for m in module.modules() if type(m).__name__ == "Conv2d").in_channels


def test_unguarded_uses_read_the_inner_conv():
    result = assert_rewrite(BLOCK, BLOCK_AFTER, applied=["conv_batchnorm"])
    (m,) = result.matches
    assert m.status == "applied"


def test_unguarded_same_numbers_in_torch():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    old_ns, new_ns = vars(load_module(BLOCK, "old")), vars(load_module(fixture(BLOCK_AFTER), "new"))
    for stride in (1, 2):
        torch.manual_seed(0)
        old, new = old_ns["Block"](3, 4, stride), new_ns["Block"](3, 4, stride)
        _perturbed(old, torch)
        _same(old, new, torch, extra=("features",))
        assert new.width == old.width == 4
        # the padding function sees the original conv object
        assert type(new.conv[0]) is torch.nn.Conv2d and new.conv[0].stride == (stride, stride)


# ---------------------------------------------------------------------------
# 3. guarded: the BatchNorm is bound under a condition, `None` elsewhere

LAYER = HEAD + '''

class ConvLayer(nn.Module):
    def __init__(self, cin, cout, stride=2, use_norm=True, tf_pad=True):
        super().__init__()
        self.tf_pad = tf_pad
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, bias=False)
        if use_norm:
            self.norm = nn.BatchNorm2d(cout, momentum=0.9997)
        else:
            self.norm = None

    def forward(self, x):
        if self.tf_pad:
            x = same_pad(x, self.conv)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def again(self, x):
        return self.conv(same_pad(x, self.conv))
'''

INNER = "(self.conv[0] if isinstance(self.conv, ConvBn2d) else self.conv)"

LAYER_AFTER = HEAD_AFTER + '''

class ConvLayer(nn.Module):
    def __init__(self, cin, cout, stride=2, use_norm=True, tf_pad=True):
        super().__init__()
        self.tf_pad = tf_pad
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, bias=False)
        if use_norm:
            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout, momentum=0.9997))
            self.norm = None
''' + HOOK.replace("        ", "            ", 1).replace("\n            (", "\n                (").replace(
    "\n        )))", "\n            )))").replace("'bn.", "'norm.") + '''        else:
            self.norm = None

    def forward(self, x):
        if self.tf_pad:
            x = same_pad(x, INNER)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def again(self, x):
        return INNER(same_pad(x, INNER))
'''.replace("INNER", INNER)


def test_guarded_uses_work_on_both_branches():
    assert_rewrite(LAYER, LAYER_AFTER, applied=["conv_batchnorm"])


def test_guarded_same_numbers_in_torch():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    old_ns, new_ns = vars(load_module(LAYER, "old")), vars(load_module(fixture(LAYER_AFTER), "new"))
    for use_norm in (True, False):
        for tf_pad in (True, False):
            torch.manual_seed(0)
            old = old_ns["ConvLayer"](3, 4, use_norm=use_norm, tf_pad=tf_pad)
            new = new_ns["ConvLayer"](3, 4, use_norm=use_norm, tf_pad=tf_pad)
            _perturbed(old, torch)
            _same(old, new, torch, extra=("again",))
            if not use_norm:
                # where the condition fails nothing changed, keys included
                assert list(new.state_dict()) == list(old.state_dict())
                assert type(new.conv) is torch.nn.Conv2d


# ---------------------------------------------------------------------------
# 4. refusals


def _refused(source: str, piece: str, code: str = "S207", **kw) -> None:
    assert_rewrite(source, None, skipped=[("conv_batchnorm", code, piece)], **kw)


def test_write_through_the_attribute_is_refused():
    src = BLOCK + '''
    def drop_bias(self):
        self.conv.bias = None
'''
    _refused(src, "`option inner` cannot redirect it: it writes to the layer through the attribute")


def test_setattr_is_refused():
    src = BLOCK + '''
    def drop_bias(self):
        setattr(self.conv, "bias", None)
'''
    _refused(src, "`setattr` writes to the layer")


def test_use_in_init_is_refused():
    src = BLOCK.replace("        self.bn = nn.BatchNorm2d(cout)\n",
                        "        self.bn = nn.BatchNorm2d(cout)\n        self.k = self.conv.kernel_size\n")
    _refused(src, "it is in `__init__`")
    guarded = LAYER.replace("            self.norm = None\n\n", "            self.norm = None\n"
                            "        self.k = self.conv.kernel_size\n\n")
    _refused(guarded, "it is in `__init__`")


def test_subclass_use_is_refused():
    src = BLOCK + '''

class Padded(Block):
    def forward(self, x):
        return super().forward(same_pad(x, self.conv))
'''
    _refused(src, "used by the subclass `Padded`")


def test_nested_function_with_its_own_self_is_refused():
    src = BLOCK + '''
    def probe(self, other):
        def inner(self):
            return self.conv
        return inner(other)
'''
    _refused(src, "inside a nested function with its own `self`")


def test_static_method_is_refused():
    src = BLOCK + '''
    @staticmethod
    def probe(self):
        return self.conv
'''
    _refused(src, "`probe` is a staticmethod")


def test_store_elsewhere_stays_s206():
    src = BLOCK + '''
    def swap(self):
        self.conv = nn.Identity()
'''
    _refused(src, "is assigned outside `__init__`", code="S206")


def test_rule_without_the_option_refuses(tmp_path):
    from rewrite_support import RULEPACKS

    text = (RULEPACKS / "adopter.adr").read_text()
    assert '  option inner = "$conv[0]"\n' in text
    pack = tmp_path / "adopter.adr"
    pack.write_text(text.replace('  option inner = "$conv[0]"\n', ""))
    result = run(BLOCK, rules=(str(pack),), select=("adopter:conv_batchnorm",))
    assert result.new_source is None
    (m,) = result.matches
    assert (m.status, m.code) == ("skipped", "S207")
    assert "is also used at line" in m.reason and "option inner" not in m.reason


def test_conv_bound_on_two_branches_is_refused():
    src = BLOCK.replace("        self.conv = nn.Conv2d(cin, cout, 3, stride=stride)\n",
                        "        if stride == 1:\n            self.conv = nn.Conv2d(cin, cout, 3)\n"
                        "        else:\n            self.conv = nn.Conv2d(cin, cout, 5, stride=stride)\n")
    _refused(src, "`self.conv` is bound more than once in `__init__`")


def test_the_removed_layer_is_not_redirected():
    # the BatchNorm is removed, not kept inside under its own name
    src = BLOCK.replace("        return self.conv(y) * self.conv.stride[0]\n",
                        "        return self.bn(self.conv(y)) * self.conv.stride[0]\n")
    _refused(src, "attribute `self.bn`, which the rewrite removes, is also used at line")


def test_f_string_use_is_refused():
    src = BLOCK + '''
    def extra_repr(self):
        return f"conv={self.conv}"
'''
    _refused(src, "it is inside an f-string")


def test_two_pairs_in_one_class_each_redirected():
    src = HEAD + '''

class Two(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        a = self.conv1(same_pad(x, self.conv1) if self.training else same_pad(x, self.conv1))
        a = self.bn1(a)
        k = self.conv1.kernel_size[0] + self.conv2.kernel_size[0]
        b = self.conv2(same_pad(a, self.conv2))
        b = self.bn2(b)
        return b * k
'''
    result = run(src)
    assert [m.status for m in result.matches] == ["skipped", "skipped"], [m.reason for m in result.matches]
    # the uses inside the matched statements stay refused (the target copies their text)
    assert all(m.code == "S207" for m in result.matches)
    src = src.replace("        a = self.conv1(same_pad(x, self.conv1) if self.training else same_pad(x, self.conv1))\n",
                      "        a = same_pad(x, self.conv1) if self.training else same_pad(x, self.conv1)\n"
                      "        a = self.conv1(a)\n").replace(
        "        b = self.conv2(same_pad(a, self.conv2))\n", "        b = same_pad(a, self.conv2)\n        b = self.conv2(b)\n")
    result = run(src)
    assert [m.status for m in result.matches] == ["applied", "applied"], [m.reason for m in result.matches]
    new = result.new_source
    assert "a = same_pad(x, self.conv1[0]) if self.training else same_pad(x, self.conv1[0])\n" in new
    assert "k = self.conv1[0].kernel_size[0] + self.conv2[0].kernel_size[0]\n" in new
    assert "b = same_pad(a, self.conv2[0])\n" in new
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    old_m, new_m = load_module(src, "old").Two(3), load_module(new, "new").Two(3)
    _perturbed(old_m, torch)
    _same(old_m, new_m, torch)


def test_method_defined_twice_is_refused():
    # the analysis keeps one definition per name: the getter's use would go unseen
    src = BLOCK + '''
    @property
    def kernel(self):
        return self.conv.kernel_size

    @kernel.setter
    def kernel(self, value):
        raise AttributeError("read-only")
'''
    _refused(src, "`kernel` is defined more than once in the class and uses it")
