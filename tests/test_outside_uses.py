"""Issue 8 soundness: an attribute the rewrite replaces or removes, reached
from outside its class (module functions, other classes, sibling modules).

Every model here is written for the test.  `dslc.rewrite.outside` decides;
the rewrite is refused with S220 and a reason that names the file and line
of the use, unless the use provably reaches another object.
"""

from __future__ import annotations

import textwrap

import rewrite_support
from dslc import codes
from dslc.apply.driver import ApplyOptions, apply_paths
from dslc.rewrite import outside

SELECT = ("adopter:conv_batchnorm", "adopter:dropout_layernorm")

BLOCK = """\
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.conv(x))

"""


def outcome(source: str, select=SELECT):
    result = rewrite_support.run(textwrap.dedent(source), select=select)
    assert not result.errors, result.errors
    return [(m.rule.split(":")[-1], m.status, m.code, m.reason) for m in result.matches], result.new_source


def skipped_outside(source: str, piece: str) -> None:
    found, new = outcome(source)
    assert new is None, new
    assert [(r, s, c) for r, s, c, _ in found] == [("conv_batchnorm", "skipped", codes.S_OUTSIDE_USE)], found
    assert piece in found[0][3], found[0][3]


def applied(source: str) -> str:
    found, new = outcome(source)
    assert [(r, s) for r, s, _, _ in found] == [("conv_batchnorm", "applied")], found
    assert new is not None
    rewrite_support.stable(new, select=SELECT)
    return new


def test_alone_the_block_is_rewritten():
    assert "ConvBn2d(" in applied(BLOCK)


def test_a_module_level_weight_loader_reading_through_a_chain_refuses():
    skipped_outside(BLOCK + "\ndef load_weights(model, arrays):\n    model.stem.block.conv.weight.data = arrays[0]\n",
                    "attribute `conv`, which the rewrite replaces, is read from outside the class at model.py:16 "
                    "(`model.stem.block.conv` in `load_weights`)")


def test_a_removed_layer_read_by_a_loader_refuses():
    skipped_outside(BLOCK + "\ndef stats(model):\n    return model.block.bn.running_mean\n",
                    "attribute `bn`, which the rewrite removes, is read from outside the class at model.py:16")


def test_another_class_reading_the_layer_in_its_init_refuses():
    """`self.body.layers[-1].conv.out_channels`: the ConvBn2d has no `out_channels`, so the model would not build."""
    skipped_outside(BLOCK + textwrap.dedent("""
        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = Body()
                self.fc = nn.Linear(self.body.layers[-1].conv.out_channels, 2)
        """), "is read from outside the class at model.py:19 (`….conv` in `Head.__init__`)")


def test_a_call_through_a_resolved_chain_refuses():
    """`self.block.conv(x)` where `self.block = Block(8)`: the fused layer would also run the BatchNorm."""
    skipped_outside(BLOCK + textwrap.dedent("""
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = Block(8)

            def forward(self, x):
                return self.block.conv(x)
        """), "is called from outside the class at model.py:21 (`self.block.conv` in `Net.forward`)")


def test_getattr_and_hasattr_with_the_name_refuse():
    skipped_outside(BLOCK + "\ndef has_norm(m):\n    return hasattr(m, 'bn')\n", "`has_norm`")
    skipped_outside(BLOCK + "\ndef swap(m):\n    setattr(m, 'conv', None)\n", "is assigned from outside the class")


def test_a_store_from_outside_refuses():
    skipped_outside(BLOCK + "\ndef freeze(model):\n    model.block.bn = nn.Identity()\n", "is assigned from outside")


def test_a_base_class_method_reaching_the_layer_refuses():
    source = BLOCK.replace("class Block(nn.Module):", "class Block(Base):").replace(
        "\n\nclass Block", textwrap.dedent("""

        class Base(nn.Module):
            def describe(self):
                return self.conv.kernel_size


        class Block"""), 1)
    skipped_outside(source, "(`self.conv` in `Base.describe`)")


def test_another_class_with_its_own_layer_of_that_name_is_another_object():
    applied(BLOCK + textwrap.dedent("""
        class Other(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 3, 1)

            def forward(self, x):
                return self.conv(x) + self.conv.weight.sum()
        """))


def test_a_chain_resolving_to_another_class_is_another_object():
    applied(BLOCK + textwrap.dedent("""
        class Other(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 3, 1)


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.other = Other()

            def forward(self, x):
                return self.other.conv(x)
        """))


def test_module_and_class_attributes_are_not_the_layer():
    applied(BLOCK + "\ndef f(x):\n    return torch.nn.functional.conv2d(x, torch.ones(1)) + nn.bn\n"
            "\n\ndef g():\n    return Block.conv\n")


def test_a_use_in_a_sibling_module_refuses(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "modeling.py").write_text(BLOCK)
    (pkg / "convert.py").write_text("def convert(model, w):\n    model.encoder.block.conv.weight.copy_(w)\n")
    packs = rewrite_support.load_packs(rewrite_support.rule_paths("adopter"), SELECT)
    report = apply_paths([str(pkg / "modeling.py")], packs, ApplyOptions(mode="diff", jobs=1, cache_dir=None))
    entry = [m for m in report.matches if m.rule == "adopter:conv_batchnorm"]
    assert [(m.status, m.code) for m in entry] == [("skipped", codes.S_OUTSIDE_USE)]
    assert "at convert.py:2 (`model.encoder.block.conv` in `convert`)" in entry[0].reason
    (pkg / "convert.py").write_text("def convert(model, w):\n    model.encoder.block.linear.weight.copy_(w)\n")
    report = apply_paths([str(pkg / "modeling.py")], packs, ApplyOptions(mode="diff", jobs=1, cache_dir=None))
    assert [m.status for m in report.matches if m.rule == "adopter:conv_batchnorm"] == ["applied"]


GUARDED = """\
import torch
from torch import nn


class ConvLayer(nn.Module):
    def __init__(self, c, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        if use_norm:
            self.norm = nn.BatchNorm2d(c)
        else:
            self.norm = None

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x

"""


def test_the_guarded_layer_form_checks_outside_uses_too():
    found, new = outcome(GUARDED)
    assert [(r, s) for r, s, _, _ in found] == [("conv_batchnorm", "applied")], found
    found, new = outcome(GUARDED + "\ndef normalized(layer):\n    return layer.norm is not None\n")
    assert [(r, s, c) for r, s, c, _ in found] == [("conv_batchnorm", "skipped", codes.S_OUTSIDE_USE)], found
    assert "attribute `norm`, which the rewrite sets to `None` where it was built, is read from outside the class " \
           "at model.py:22" in found[0][3]


def test_the_text_check_finds_every_spelling_the_walk_finds():
    """The cheap pre-check may only say "maybe": every use the AST walk finds is in text it matches."""
    src = "a . conv\nb.\\\n  conv.weight\ngetattr(c, 'conv')\nhasattr(d, \"conv\")\nx.convolution\n"
    import ast
    uses = outside.scan(ast.parse(src), {"conv"}).uses
    assert [u.line for u in uses] == [1, 2, 4, 5]
    pat = outside.pattern({"conv"})
    for piece in ("a . conv", "b.\\\n  conv.weight", "getattr(c, 'conv')", 'hasattr(d, "conv")'):
        assert pat.search(piece), piece
    for piece in ("x.convolution", "conv(x)", "self.conv_a", "'conv2'"):
        assert not pat.search(piece), piece


def test_a_class_with_a_method_or_a_tuple_store_of_that_name_owns_it():
    """TF/Flax twins in a sibling module: `def convolution(self, x)` or
    `self.q, self.conv = ...` make the name their own attribute."""
    applied(BLOCK + textwrap.dedent("""
        class TwinA:
            def conv(self, x):
                return x

            def call(self, x):
                return self.conv(x)


        class TwinB:
            def setup(self):
                self.bn, self.conv = None, None

            def call(self, x):
                return self.conv(self.bn(x))
        """))


INTER = """\
import torch
from torch import nn
from transformers.activations import ACT2FN


class Inter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(8, 16)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.intermediate_act_fn(self.dense(x))


def init_weights(module):
    if isinstance(module, Inter):
        {use}
"""


def test_a_kept_parameter_of_a_layer_that_keeps_its_class_may_be_read():
    """biased_gelu rebuilds `dense` as a Linear again and moves only its bias:
    `module.dense.weight` is the same parameter after the rewrite (an
    `_init_weights` reads it); its bias, a call or a store are not."""
    sel = ("adopter:biased_gelu",)
    ok = rewrite_support.run(INTER.format(use="nn.init.normal_(module.dense.weight, std=0.02)"), select=sel)
    assert [m.status for m in ok.matches] == ["applied"], ok.matches
    for use, how in (("module.dense.bias.data.zero_()", "read"), ("module.dense(torch.ones(8))", "called"),
                     ("module.dense = nn.Identity()", "assigned")):
        got = rewrite_support.run(INTER.format(use=use), select=sel)
        assert [(m.status, m.code) for m in got.matches] == [("skipped", codes.S_OUTSIDE_USE)], (use, got.matches)
        assert f"is {how} from outside the class at model.py:18 (`module.dense` in `init_weights`)" in got.matches[0].reason


def test_a_script_of_the_package_gets_a_warning_not_a_refusal(tmp_path):
    """A checkpoint converter next to the model (`if __name__ == "__main__":`)
    is a program of its own: the model is rewritten and the report names the
    script's line (W111).  The same code in the model file, or in a module
    the model may import, refuses (S220)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "modeling.py").write_text(BLOCK)
    script = ("def convert(model, w):\n    model.encoder.block.conv.weight.copy_(w)\n\n\n"
              "if __name__ == \"__main__\":\n    convert(None, None)\n")
    (pkg / "convert_block.py").write_text(script)
    packs = rewrite_support.load_packs(rewrite_support.rule_paths("adopter"), SELECT)
    report = apply_paths([str(pkg / "modeling.py")], packs, ApplyOptions(mode="diff", jobs=1, cache_dir=None))
    assert [m.status for m in report.matches if m.rule == "adopter:conv_batchnorm"] == ["applied"]
    (warning,) = [w for f in report.files for w in f.warnings if w.code == codes.W_OUTSIDE_SCRIPT]
    assert warning.message == ("Block: the script convert_block.py reads `model.encoder.block.conv` at line 2 (in "
                               "`convert`), the attribute `conv` that the rewrite replaces: update it for the rewritten layer")
    assert warning.line == 8
    skipped_outside(BLOCK + "\n" + script, "is read from outside the class at model.py:16")


def test_one_index_answers_each_set_of_attributes_as_its_own_walk():
    """`outside.index` walks a file once; each `select` gives the uses of its
    attributes in the walk's order, and each class's bindings in the order of
    a breadth-first walk of the class (a shallower store first)."""
    import ast
    src = textwrap.dedent("""\
        import torch


        class Cell(torch.nn.Module):
            def __init__(self, deep):
                if deep:
                    self.proj = Wide()
                self.proj = Narrow()
                self.gate = Narrow()

            class Inner:
                def setup(self):
                    self.proj = Other()

            def forward(self, x):
                y = self.gate(self.proj(x))
                return getattr(self, "proj").scale + y


        def peek(cell):
            return cell.gate.bias, cell.proj
        """)
    idx = outside.index(ast.parse(src))
    both = idx.select({"proj", "gate"})
    assert [(u.attr, u.line, u.kind, u.owner, u.where, u.then) for u in both.uses] == [
        ("proj", 7, "store", "Cell", "__init__", None), ("proj", 8, "store", "Cell", "__init__", None),
        ("gate", 9, "store", "Cell", "__init__", None), ("proj", 13, "store", "Inner", "setup", None),
        ("gate", 16, "call", "Cell", "forward", None), ("proj", 16, "call", "Cell", "forward", None),
        ("proj", 17, "read", "Cell", "forward", None), ("gate", 21, "read", None, "peek", "bias"),
        ("proj", 21, "read", None, "peek", None)]
    assert [u.line for u in idx.select({"gate"}).uses] == [9, 16, 21]
    assert [u.line for u in outside.scan(ast.parse(src), {"proj"}).uses] == [7, 8, 13, 16, 17, 21]
    assert idx.select({"gate"}).uses == [u for u in both.uses if u.attr == "gate"]
    # `Narrow` (depth 3 in the class) before `Wide` (inside the `if`), then the nested class's store.
    assert both.classes["Cell"].binds["proj"] == ["Narrow", "Wide", "Other"]
    assert both.classes["Inner"].binds["proj"] == ["Other"]
    assert both.classes["Cell"].binds["forward"] == [None] and both.imported == frozenset({"torch"})
