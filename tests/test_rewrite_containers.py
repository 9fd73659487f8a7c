"""Rewrites of matches whose layers are elements of one `nn.Sequential(...)` literal.

The real pipeline (loader, compiler, analysis, matcher, rewriter) on small
models: element i becomes the fused layer, element i+1 `nn.Identity()`,
forward is untouched, old checkpoints load through the pre-hook, and every
shape the emitter cannot prove safe is skipped with its reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dslc.analysis import analyze_source
from dslc.match.compiler import compile_pack
from dslc.match.matcher import match_file
from dslc.rewrite.rewriter import rewrite_source
from rewrite_support import REPO, assert_rewrite, load_packs, remap_hook, run

PACK = REPO / "rulepacks" / "adopter.adr"


def outcomes(result, rule: str):
    return [(m.status, m.reason) for m in result.matches if m.rule.split(":")[-1] == rule]


HEAD = '''import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin=3, cout=8):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )
        self.out = nn.Conv2d(cout, 2, 1)

    def forward(self, x):
{forward}
'''

FORWARD = "        h = self.head(x)\n        return self.out(h)"


def block(forward: str = FORWARD, head: str | None = None) -> str:
    source = HEAD.replace("{forward}", forward)
    if head is not None:
        start = source.index("        self.head = ")
        end = source.index("        self.out = ")
        source = source[:start] + head + source[end:]
    return source


def test_sequential_conv_bn_is_fused_in_place():
    # Element 0 becomes the fused layer, element 1 nn.Identity(); forward is untouched.
    assert_rewrite(block(), """\
        import torch
        from torch import nn
        from torch.ao.nn.intrinsic import ConvBn2d
        """ + remap_hook() + """

        class Block(nn.Module):
            def __init__(self, cin=3, cout=8):
                super().__init__()
                self.head = nn.Sequential(
                    ConvBn2d(nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout)),
                    nn.Identity(),
                    nn.ReLU(),
                )
                self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                    ('head.0.0.weight', 'head.0.weight', False),
                    ('head.0.0.bias', 'head.0.bias', False),
                    ('head.0.1.weight', 'head.1.weight', False),
                    ('head.0.1.bias', 'head.1.bias', False),
                    ('head.0.1.running_mean', 'head.1.running_mean', False),
                    ('head.0.1.running_var', 'head.1.running_var', False),
                    ('head.0.1.num_batches_tracked', 'head.1.num_batches_tracked', False),
                )))
                self.out = nn.Conv2d(cout, 2, 1)

            def forward(self, x):
                h = self.head(x)
                return self.out(h)
        """, applied=["conv_batchnorm"])


def test_identity_uses_the_files_own_spelling():
    source = block(head="        self.head = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3), torch.nn.BatchNorm2d(cout))\n")
    new = run(source).new_source
    assert "torch.nn.Sequential(ConvBn2d(torch.nn.Conv2d(cin, cout, 3), torch.nn.BatchNorm2d(cout)), torch.nn.Identity())" in new
    bare = block(head="        self.head = Sequential(nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout))\n").replace(
        "from torch import nn\n", "from torch import nn\nfrom torch.nn import Sequential\n")
    new = run(bare).new_source
    assert new is not None and "Sequential(ConvBn2d(nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout)), nn.Identity())" in new


def test_linear_bn_in_sequential():
    source = block(head="        self.head = nn.Sequential(nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU())\n")
    result = run(source, unsafe=True)  # linear_batchnorm is an `unsafe` rule
    assert outcomes(result, "linear_batchnorm") == [("applied", None)]
    new = result.new_source
    assert "        self.head = nn.Sequential(LinearBn1d(cin, cout, bias=True, eps=1e-05, momentum=0.1), nn.Identity(), nn.ReLU())\n" in new
    assert "from torch.ao.nn.intrinsic.qat import LinearBn1d\n" in new
    assert "('head.0.bn.running_var', 'head.1.running_var', False)" in new


def test_container_called_twice_is_one_location():
    """Each call runs the whole container: fusing two of its elements is one
    init change, right for every call (groupvit's projections)."""
    result = run(block("        return self.head(x) + self.head(x * 2)"))
    got = outcomes(result, "conv_batchnorm")
    assert got[0] == ("applied", None), got
    assert all(status == "skipped" and "edited once" in why for status, why in got[1:]), got
    assert "ConvBn2d(nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout)),\n            nn.Identity()," in result.new_source
    assert "return self.head(x) + self.head(x * 2)" in result.new_source


@pytest.mark.parametrize("forward, head, reason", [
    (FORWARD + "\n\n    def first(self):\n        return self.head[0]", None, "`self.head` is also indexed at line"),
    ("        for m in self.head:\n            x = m(x)\n        return self.head(x)", None, "`self.head` is also iterated at line"),
    ("        n = len(self.head)\n        return self.out(self.head(x)) * n", None, "`self.head` is also used at line"),
    (FORWARD + "\n\n    def grow(self):\n        self.head.add_module('extra', nn.ReLU())", None, "`self.head.add_module` is used at line"),
    (FORWARD, "        layers = [nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout)]\n        self.head = nn.Sequential(*layers)\n", None),
    (FORWARD, "        self.head = nn.Sequential(nn.Conv2d(cin, cout, 3), nn.Dropout(0.0), nn.BatchNorm2d(cout))\n", None),
])
def test_unsafe_shapes_are_skipped(forward, head, reason):
    source = block(forward, head)
    result = run(source)
    got = outcomes(result, "conv_batchnorm")
    if reason is None:
        # Not found at all, or skipped: never applied.
        assert all(status == "skipped" for status, _ in got), got
        assert result.new_source is None or "ConvBn2d" not in result.new_source
    else:
        assert got and got[0][0] == "skipped", got
        assert got[0][1].startswith(reason), got
        assert result.new_source is None or "ConvBn2d" not in result.new_source


def test_star_args_reason():
    from dataclasses import replace
    # A Sequential whose first elements are literal but which ends in *rest.
    source = block(head="        rest = [nn.ReLU()]\n        self.head = nn.Sequential(nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), *rest)\n")
    got = outcomes(run(source), "conv_batchnorm")
    assert got and got[0][0] == "skipped" and "`*args`" in got[0][1], got


def test_sequential_assigned_twice_is_skipped():
    head = ("        if cin > 1:\n"
            "            self.head = nn.Sequential(nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout))\n"
            "        else:\n"
            "            self.head = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU())\n")
    result = run(block(head=head))
    got = outcomes(result, "conv_batchnorm")
    assert all(status == "skipped" for status, _ in got), got


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_torch_checkpoint_and_outputs_are_identical(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch.ao.nn.intrinsic")
    from dslc.cli import main

    source = block() + '''

class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, momentum=0.3))

    def forward(self, x):
        return self.body(x)
'''
    orig = tmp_path / "orig_containers.py"
    orig.write_text(source)
    rewritten = tmp_path / "rw_containers.py"
    rewritten.write_text(source)
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--write", str(rewritten)])
    capsys.readouterr()
    assert code == 0
    new = rewritten.read_text()
    assert new.count("ConvBn2d(") == 3, new
    assert "nn.Sequential(ConvBn2d(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)), nn.Identity(), nn.ReLU(),\n" \
           "                                  ConvBn2d(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, momentum=0.3)), nn.Identity())" in new
    a = _load(orig, "dslc_test_orig_containers")
    b = _load(rewritten, "dslc_test_rw_containers")
    x = torch.randn(2, 3, 8, 8)
    for name in ("Block", "Two"):
        torch.manual_seed(0)
        ma = getattr(a, name)()
        torch.manual_seed(1)
        mb = getattr(b, name)()
        ma.train()
        ma(x)  # non-trivial running statistics
        mb.load_state_dict(ma.state_dict(), strict=True)
        for mode in ("eval", "train"):
            getattr(ma, mode)()
            getattr(mb, mode)()
            assert torch.equal(ma(x), mb(x)), (name, mode)
        assert torch.equal(ma.state_dict()[next(k for k in ma.state_dict() if k.endswith("running_mean"))],
                           mb.state_dict()[next(k for k in mb.state_dict() if k.endswith("running_mean"))])

    factory = tmp_path / "factory_containers.py"
    factory.write_text("import torch\n\ndef build(cls):\n    torch.manual_seed(0)\n    return cls(), (torch.randn(2, 3, 8, 8),)\n")
    code = main(["verify", str(orig), str(rewritten), "--factory", f"{factory}:build", "--rules", str(PACK)])
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert "2 passed, 0 failed" in out, out


def test_non_adjacent_elements_are_skipped():
    import dataclasses
    # The matcher only chains adjacent elements; a match naming elements 0
    # and 2 (built by hand) must still be refused by the emitter.
    source = block(head="        self.head = nn.Sequential(nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), nn.BatchNorm2d(cout))\n")
    facts = analyze_source(source, "m.py")
    compiled = compile_pack(load_packs("adopter")[0])
    match = next(m for m in match_file(compiled, facts) if m.rule.name == "conv_batchnorm")
    bn_var = next(v for v, b in match.init_nodes.items() if b.attr == "head.1")
    other = next(b for c in facts.classes for b in c.init if b.attr == "head.2")
    nodes = tuple(dataclasses.replace(n, attr="head.2") if n.attr == "head.1" else n for n in match.nodes)
    forged = dataclasses.replace(match, nodes=nodes, init_nodes={**match.init_nodes, bn_var: other})
    result = rewrite_source(source, facts, [forged], path="m.py")
    assert result.outcomes[0].status == "skipped"
    assert result.outcomes[0].reason == "the matched elements `self.head.0` and `self.head.2` are not adjacent in `self.head`"


def test_subclass_indexing_the_sequential_is_seen():
    source = block() + '''

class Child(Block):
    def first(self):
        return self.head[1]
'''
    got = outcomes(run(source), "conv_batchnorm")
    assert got and all(status == "skipped" for status, _ in got), got
    assert any(reason.startswith("`self.head` is also indexed at line 22") for _, reason in got), got
