"""Issue 8, wrong rewrites and safety items 1-5, 10, 11, 13: refusals with a reason, or rewrites that verify.

Every model here is written for the test (none comes from the benchmark).
Rewrites are checked through the real analysis, matcher and rewriter; the
applied ones that can run on a CPU are compared with the original in torch
(`test_safety_property.check`: same randomised weights loaded through the
emitted checkpoint mapping, eval mode).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import rewrite_support
from dslc import codes
from test_verify_support import kernel_refs  # noqa: F401 - the fixture (reference kernels importable)

REPO = Path(__file__).resolve().parent.parent
PACKS = [str(REPO / "rulepacks" / "adopter.adr"), str(REPO / "rulepacks" / "examples.adr")]


def run(source: str, packs=tuple(PACKS)):
    """The outcomes as (rule, status, reason with its code) and the new source
    (None: unchanged); `unsafe` rules (linear_batchnorm) are applied too."""
    result = rewrite_support.run(textwrap.dedent(source), rules=packs, unsafe=True)
    assert not result.errors, result.errors
    return [(m.rule.split(":")[-1], m.status, m.reason if m.reason is None else codes.Reason(m.code, m.reason))
            for m in result.matches], result.new_source


def only(outcomes, rule):
    found = [o for o in outcomes if o[0] == rule]
    assert len(found) == 1, outcomes
    return found[0]


HEAD = """\
import torch
from torch import nn
from transformers.activations import ACT2FN
"""


# ---------------------------------------------------------------------------
# 1. A kept output whose value changes (biased_gelu keeps `$lin($x) -> $y`
#    but `$lin` loses its bias): it is treated like a removed one.

INTER = HEAD + """
class Inter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(8, 16)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        y = self.dense(x)
        z = self.act(y)
        {tail}
"""


def test_1_pre_activation_read_after_the_match_is_refused():
    outcomes, new = run(INTER.format(tail="return z + y"))
    _, status, reason = only(outcomes, "biased_gelu")
    assert status == "skipped"
    assert reason == "intermediate `y` (line 12) is read at line 14 after the match"
    assert new is None


def test_1_pre_activation_read_between_is_refused():
    source = INTER.replace("        z = self.act(y)\n", "        print(y.sum())\n        z = self.act(y)\n")
    outcomes, _ = run(source.format(tail="return z"))
    assert only(outcomes, "biased_gelu")[1:] == (
        "skipped", "intermediate `y` (line 12) is read at line 13 between the matched statements")


def test_1_without_the_read_it_applies():
    outcomes, new = run(INTER.format(tail="return z"))
    assert only(outcomes, "biased_gelu")[1] == "applied"
    assert "bias=False" in new


def test_1_reading_only_the_shape_of_the_changed_value_is_fine():
    outcomes, _ = run(INTER.format(tail="return z.view(y.shape[0], -1), y.dtype"))
    assert only(outcomes, "biased_gelu")[1] == "applied"


def test_1_the_changed_value_is_told_from_the_rule():
    from dslc.rewrite.rules import changed_values as _changed_values

    rules = {r.name: r for p in rewrite_support.load_packs(tuple(PACKS)) for r in p.rules}
    assert _changed_values(rules["biased_gelu"]) == {"y"}
    for name in ("dropout_layernorm", "conv_batchnorm", "fused_qkv", "silu", "softmax"):
        assert _changed_values(rules[name]) == set(), name


# ---------------------------------------------------------------------------
# 2. A read in the same statement as the matched call.

CONV_BN = HEAD + """
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.conv(x)
        {last}
"""


@pytest.mark.parametrize("last", ["return self.bn(h) + h", "h = self.bn(h) + h\n        return h",
                                  "return self.bn(h), h"])
def test_2_read_beside_the_matched_call_is_refused(last):
    outcomes, new = run(CONV_BN.format(last=last))
    _, status, reason = only(outcomes, "conv_batchnorm")
    assert status == "skipped"
    assert reason == "intermediate `h` (line 12) is also read at line 13, in the statement that holds the matched call"
    assert new is None


def test_2_linear_batchnorm_too():
    source = HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        h = self.fc(x)
        return self.bn(h) + h
"""
    outcomes, _ = run(source)
    assert only(outcomes, "linear_batchnorm")[1] == "skipped"


def test_2_the_plain_chain_applies_and_verifies(kernel_refs):
    from test_safety_property import check

    assert check(_property_model("h1 = self.conv0(x)\n        h2 = self.bn0(h1)\n        return h2")) == 1


# ---------------------------------------------------------------------------
# 3. Constructor arguments the rule does not name.

OUT = HEAD + """
class Out(nn.Module):
    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = {norm}

    def forward(self, h, res):
        h = self.dropout(h)
        h = self.LayerNorm(h + res)
        return h
"""


@pytest.mark.parametrize("norm, shown", [
    ("nn.LayerNorm(32, eps=1e-12, bias=False)", "`bias=False`"),
    ("nn.LayerNorm(32, 1e-12, False)", "`elementwise_affine=False`"),
    ("nn.LayerNorm(32, dtype=torch.float64)", "`dtype=torch.float64`"),
    ("nn.LayerNorm(32, device=dev)", "`device=dev`"),
])
def test_3_unnamed_constructor_argument_is_refused_by_name(norm, shown):
    outcomes, new = run(OUT.format(norm=norm))
    _, status, reason = only(outcomes, "dropout_layernorm")
    assert status == "skipped"
    assert reason.startswith(f"{shown} of `self.LayerNorm` (line 9) has no counterpart in the target "
                             f"`epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm`")
    assert new is None


def test_3_arguments_equal_to_their_default_may_go():
    outcomes, new = run(OUT.format(norm="nn.LayerNorm(32, eps=1e-5, elementwise_affine=True, bias=True)"))
    assert only(outcomes, "dropout_layernorm")[1] == "applied"
    assert "FusedDropoutAddLayerNorm(32, 0.1, eps=1e-5)" in new  # the literal as written


def test_3_dropout_inplace_is_refused():
    outcomes, _ = run(OUT.format(norm="nn.LayerNorm(32)").replace("nn.Dropout(0.1)", "nn.Dropout(0.1, inplace=True)"))
    assert only(outcomes, "dropout_layernorm")[1:] == (
        "skipped", "`inplace=True` of `self.dropout` (line 8) would be dropped: the rule's target does not build "
                   "`$drop` again")


def test_3_linear_dtype_in_linear_batchnorm_is_refused():
    source = HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8, dtype=torch.float64)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.fc(x))
"""
    outcomes, _ = run(source)
    _, status, reason = only(outcomes, "linear_batchnorm")
    assert status == "skipped" and reason.startswith("`dtype=torch.float64` of `self.fc` (line 8)")


def test_3_device_on_the_biased_linear_cannot_reach_the_fused_bias():
    source = INTER.format(tail="return z").replace("nn.Linear(8, 16)", "nn.Linear(8, 16, device='cpu')")
    outcomes, _ = run(source)
    assert only(outcomes, "biased_gelu")[1:] == (
        "skipped", "`device='cpu'` of `self.dense` (line 8) would not reach `$act`, which takes over its `bias`")


def test_3_embedded_constructor_calls_keep_every_argument():
    source = CONV_BN.format(last="return self.bn(h)").replace(
        "nn.Conv2d(4, 4, 3, padding=1)", "nn.Conv2d(4, 4, 3, padding=1, bias=False, dtype=torch.float64)")
    outcomes, new = run(source)
    assert only(outcomes, "conv_batchnorm")[1] == "applied"
    assert "ConvBn2d(nn.Conv2d(4, 4, 3, padding=1, bias=False, dtype=torch.float64), nn.BatchNorm2d(4))" in new


CARRY_PACK = """\
pack carry "carry-over test"
rule alpha "Dropout -> AlphaDropout" {
  kernel torch.nn.AlphaDropout
  exact
  init {
    torch.nn.Dropout($p) -> $d;
  } => {
    torch.nn.AlphaDropout($p) -> $d;
  }
  forward {
    $d($x) -> $y;
  } => {
    $d($x) -> $y;
  }
}
"""


def test_3_an_argument_the_target_accepts_is_carried_over(tmp_path):
    pack = tmp_path / "carry.adr"
    pack.write_text(CARRY_PACK)
    source = HEAD + """
class D(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2, inplace=True)

    def forward(self, x):
        return self.drop(x)
"""
    outcomes, new = run(source, packs=(str(pack),))
    assert only(outcomes, "alpha")[1] == "applied"
    assert "self.drop = nn.AlphaDropout(0.2, inplace=True)" in new


# ---------------------------------------------------------------------------
# 4. Subclasses still using a replaced or removed attribute.

ATTN = HEAD + """
class Attn(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.num_heads = 4
        self.head_dim = h // 4

    def _split_heads(self, t, nh, hd):
        return t.view(t.size(0), t.size(1), nh, hd).permute(0, 2, 1, 3)

    def forward(self, x):
        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        q = self._split_heads(q, self.num_heads, self.head_dim)
        k = self._split_heads(k, self.num_heads, self.head_dim)
        v = self._split_heads(v, self.num_heads, self.head_dim)
        return q + k + v
"""


def test_4_subclass_calling_a_removed_projection_is_refused():
    source = ATTN + """

class FlashAttn(Attn):
    def forward(self, x):
        return self.k_proj(x)
"""
    outcomes, new = run(source)
    assert ("fused_qkv", "skipped", "attribute `self.k_proj`, which the rewrite removes, is also used by the subclass "
            "`FlashAttn` at line 29 (in `forward`)") in outcomes
    assert new is None


def test_4_grandchild_too_and_a_subclass_not_using_it_is_fine():
    source = CONV_BN.format(last="return self.bn(h)") + """

class Mid(Block):
    pass


class Leaf(Mid):
    def extra(self, x):
        return self.bn(x)
"""
    outcomes, _ = run(source)
    reasons = [r for name, status, r in outcomes if name == "conv_batchnorm" and status == "skipped"]
    assert "attribute `self.bn`, which the rewrite removes, is also used by the subclass `Leaf` at line 22 (in `extra`)" in reasons
    outcomes, _ = run(CONV_BN.format(last="return self.bn(h)") + "\n\nclass Other(Block):\n    pass\n")
    assert ("conv_batchnorm", "applied", None) in outcomes


# ---------------------------------------------------------------------------
# 5. An inherited match is reported at the file (and lines) of its code.

def test_5_inherited_match_is_reported_in_the_base_file(tmp_path):
    from dslc.apply.driver import ApplyOptions, apply_paths

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "base.py").write_text(CONV_BN.format(last="return self.bn(h)"))
    (pkg / "sub" / "child.py").write_text(
        "import torch\nfrom pkg.base import Block\n\n\nclass Child(Block):\n"
        "    def __init__(self):\n        super().__init__()\n        self.extra = torch.nn.Linear(2, 2)\n")
    # (The whole pack: the pre-filter keeps the child file for its `Linear`;
    # with conv_batchnorm alone it skips the file, see the report of issue 8.)
    packs = rewrite_support.load_packs(PACKS[0])
    report = apply_paths([str(pkg / "sub")], packs, ApplyOptions(mode="diff", jobs=1))
    entries = [m for m in report.matches if m.class_name and m.class_name.endswith("Child")]
    assert entries, report
    for entry in entries:
        assert entry.file.replace("\\", "/").endswith("base.py"), entry
        assert max(entry.lines) <= len((pkg / "base.py").read_text().splitlines())
        assert min(entry.lines) >= 8


# ---------------------------------------------------------------------------
# 10. Reaching definitions per path, not by name.

LOOP = HEAD + """
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x, xs):
        h = self.conv(x)
        o = self.bn(h)
        {middle}
        return {result}
"""


def test_10_a_loop_target_reassigns_before_the_read():
    outcomes, new = run(LOOP.format(middle="for h in xs:\n            o = o + h", result="o"))
    assert only(outcomes, "conv_batchnorm")[1:] == ("applied", None)


def test_10_comprehension_variables_are_not_the_intermediate():
    outcomes, _ = run(LOOP.format(middle="extra = [h * 2 for h in xs]", result="o + sum(extra)"))
    assert only(outcomes, "conv_batchnorm")[1] == "applied"


def test_10_a_loop_may_run_zero_times_so_its_write_is_not_definite():
    outcomes, _ = run(LOOP.format(middle="for h in xs:\n            pass", result="o + h"))
    assert only(outcomes, "conv_batchnorm")[1:] == (
        "skipped", "intermediate `h` (line 12) is read at line 16 after the match")


def test_10_a_read_inside_the_loop_before_the_write_counts():
    outcomes, _ = run(LOOP.format(middle="for t in xs:\n            o = o + h\n            h = t", result="o"))
    assert only(outcomes, "conv_batchnorm")[1] == "skipped"


def test_10_with_as_target_writes():
    outcomes, _ = run(LOOP.format(middle="with torch.no_grad() as h:\n            pass", result="o, h"))
    assert only(outcomes, "conv_batchnorm")[1] == "applied"


# ---------------------------------------------------------------------------
# 11. Reads of shape, dtype and device only.

SHAPES = HEAD + """
class Out(nn.Module):
    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(16, eps=1e-12)

    def forward(self, h, res):
        {out} = self.dropout(h)
        {read}
        h = self.LayerNorm({out} + res)
        return h
"""


@pytest.mark.parametrize("read", [
    "bsz = h.size(0)", "assert h.shape[-1] == 16, h.dtype", "print(h.device, h.ndim, h.dim())",
])
def test_11_metadata_reads_between_are_allowed(read):
    outcomes, new = run(SHAPES.format(out="h", read=read))
    assert only(outcomes, "dropout_layernorm")[1:] == ("applied", None)
    assert read in new


@pytest.mark.parametrize("out, read", [
    ("h", "s = h.sum()"),          # a value read
    ("h", "n = h.size(0) + h[0]"),  # one of the reads is not metadata
    ("y", "bsz = y.size(0)"),      # `y` would be undefined after the rewrite
])
def test_11_other_reads_are_refused(out, read):
    outcomes, _ = run(SHAPES.format(out=out, read=read))
    _, status, reason = only(outcomes, "dropout_layernorm")
    assert status == "skipped" and "between the matched statements" in reason


def test_11_without_the_option_metadata_reads_are_refused(tmp_path):
    text = (REPO / "rulepacks" / "adopter.adr").read_text().replace('option keeps = "shape,dtype,device"', "")
    pack = tmp_path / "adopter.adr"
    pack.write_text(text)
    outcomes, _ = run(SHAPES.format(out="h", read="bsz = h.size(0)"), packs=(str(pack),))
    assert only(outcomes, "dropout_layernorm")[1] == "skipped"


def test_11_the_option_is_checked(tmp_path):
    from dslc.cli import main

    bad = tmp_path / "bad.adr"
    bad.write_text(CARRY_PACK.replace("  exact\n", '  exact\n  option keeps = "shape,colour"\n'))
    assert main(["check", str(bad), "--format", "json"]) == 1
    good = tmp_path / "good.adr"
    good.write_text(CARRY_PACK.replace("  exact\n", '  exact\n  option keeps = "shape,dtype"\n'))
    assert main(["check", str(good)]) == 0


# ---------------------------------------------------------------------------
# 13. A parameter-free layer used elsewhere stays for those uses.

SHARED = HEAD + """
class Out(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(6, 6)
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(6, eps=1e-12)

    def forward(self, h, res):
        a = self.dropout(self.dense(res))
        h = self.dropout(h)
        h = self.LayerNorm(h + a)
        return h
"""


def test_13_shared_dropout_is_kept_for_its_other_use(kernel_refs):
    outcomes, new = run(SHARED)
    assert ("dropout_layernorm", "applied", None) in outcomes
    assert "self.dropout = nn.Dropout(0.1)" in new
    assert "h = self.dropout(h)" in new
    import torch

    torch.manual_seed(0)
    old = rewrite_support.load_module(textwrap.dedent(SHARED), "old13").Out().eval()
    new_model = rewrite_support.load_module(new, "new13").Out().eval()
    new_model.load_state_dict(old.state_dict(), strict=True)
    h, res = torch.randn(3, 6), torch.randn(3, 6)
    with torch.no_grad():
        assert torch.allclose(old(h, res), new_model(h, res), atol=1e-5)


def test_13_a_shared_layer_with_parameters_is_still_refused():
    source = SHARED.replace("        return h\n", "        return h + self.LayerNorm(res)\n")
    outcomes, _ = run(source)
    reasons = {r for name, status, r in outcomes if name == "dropout_layernorm"}
    assert all(r and "`self.LayerNorm`, which the rewrite replaces" in r or (r or "").startswith("overlaps")
               for r in reasons), reasons


# ---------------------------------------------------------------------------


def _property_model(body: str) -> str:
    from test_safety_property import HEADER, LAYERS

    return HEADER + "".join(
        f"        self.{kind}{i} = {ctor.format(extra='')}\n" for kind, ctor in LAYERS.items() for i in range(2)
    ) + "\n    def forward(self, x):\n        " + body + "\n"


def test_4_subclass_in_a_sibling_module_is_refused(tmp_path):
    from dslc.apply.driver import ApplyOptions, apply_paths

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "modeling.py").write_text(textwrap.dedent(ATTN))
    (pkg / "flash.py").write_text("from .modeling import Attn\n\n\nclass FlashAttn(Attn):\n"
                                  "    def forward(self, x):\n        return self.v_proj(x)\n")
    packs = rewrite_support.load_packs(PACKS[0])
    report = apply_paths([str(pkg / "modeling.py")], packs, ApplyOptions(mode="diff", jobs=1, unsafe=True))
    entry = [m for m in report.matches if m.rule == "adopter:fused_qkv"]
    assert entry and entry[0].status == "skipped"
    assert entry[0].reason == ("attribute `self.v_proj`, which the rewrite removes, is also used by the subclass "
                               "`FlashAttn` in flash.py at line 6 (in `forward`)")
    (pkg / "flash.py").write_text("from .modeling import Attn\n\n\nclass FlashAttn(Attn):\n    pass\n")
    report = apply_paths([str(pkg / "modeling.py")], packs, ApplyOptions(mode="diff", jobs=1, unsafe=True))
    assert [m.status for m in report.matches if m.rule == "adopter:fused_qkv"] == ["applied"]


def test_1_every_call_site_of_the_changed_layer_is_checked():
    """Found by the property test: `self.dense` loses its bias for every call, not only the matched one."""
    source = HEAD + """
class Inter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(8, 8)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        x = self.dense(x)
        x = self.act(x)
        y = self.dense(x)
        z = self.act(y)
        return z + y
"""
    outcomes, new = run(source)
    assert [o[1] for o in outcomes if o[0] == "biased_gelu"] == ["skipped", "skipped"]
    assert ("biased_gelu", "skipped", "at line 14, another call of the changed layer: intermediate `y` (line 14) is "
            "read at line 16 after the match") in outcomes
    assert new is None


# ---------------------------------------------------------------------------
# A layer called inside a value the target copies (the residual is a nested
# `self.drop1(x)` in the matched statement) is still used after the rewrite.

COPIED = HEAD + """

class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.drop1 = nn.Dropout(0.1)
        self.norm0 = nn.LayerNorm(6)
        self.lin = {layer}

    def forward(self, x):
        h1 = self.drop1(x)
        h2 = self.norm0({residual} + h1)
        return h2
"""


def test_a_parameter_free_layer_in_a_copied_value_is_kept():
    outcomes, new = run(COPIED.format(layer="nn.Identity()", residual="self.drop1(x)"))
    assert ("dropout_layernorm", "applied", None) in outcomes
    assert "self.drop1 = nn.Dropout(0.1)" in new
    assert "self.norm0(x, self.drop1(x))" in new



# ---------------------------------------------------------------------------
# Layers built in an inherited `__init__`: a subclass's match must not edit
# the base's `__init__`, which the base (and every other subclass) shares.

INHERITED_INIT = HEAD + """

class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x) * 2)


class Sub(Base):
    def forward(self, x):
        return self.bn(self.conv(x))
"""


def test_a_match_over_an_inherited_init_is_refused():
    outcomes, new = run(INHERITED_INIT)
    _, status, reason = only(outcomes, "conv_batchnorm")
    assert status == "skipped"
    assert reason == ("`self.conv` is built in `Base.__init__`, inherited; "
                      "editing it would change every class that shares it")
    assert reason.code == "S210"
    assert new is None
