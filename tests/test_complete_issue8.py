"""Issue 8, places that were missed (items 6-9, 12, 14, 15).

Each test is a small model written for the test: the real pipeline (loader,
compiler, analysis, matcher, rewriter) must find the place and rewrite it
(before/after), or refuse it with a reason where a rewrite is unsafe.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dslc.analysis import analyze_source
from dslc.compiler import compile_pack
from dslc.loader import load_rules
from dslc.matcher import match_file
from dslc.rewriter import rewrite_source

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"


@pytest.fixture(scope="module")
def compiled():
    result = load_rules([str(PACK)])
    return compile_pack(result.packs[0])


def run(compiled, source: str, path: str = "m.py"):
    facts = analyze_source(source, path)
    matches = match_file(compiled, facts)
    return facts, rewrite_source(source, facts, matches, path=path)


def outcomes(result, rule: str):
    return [(o.match.class_name, o.status, o.reason) for o in result.outcomes if o.match.rule.name == rule]


def stable(compiled, new: str) -> None:
    """The output parses and a second apply changes nothing."""
    ast.parse(new)
    _, again = run(compiled, new)
    assert again.new_source is None
    assert all(o.status != "applied" for o in again.outcomes)


# ---------------------------------------------------------------------------
# 6. classes nested inside classes

NESTED = '''import torch
from torch import nn


class Outer(nn.Module):
    class Inner(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h)

    def __init__(self, c):
        super().__init__()
        self.inner = Outer.Inner(c)

    def forward(self, x):
        return self.inner(x)
'''


def test_nested_class_is_analysed_with_its_qualified_name():
    facts = analyze_source(NESTED, "m.py")
    names = {c.name: c for c in facts.classes}
    assert set(names) == {"Outer", "Outer.Inner"}
    inner = names["Outer.Inner"]
    assert inner.qualname == "m.Outer.Inner"
    assert [b.attr for b in inner.init] == ["conv", "bn"]
    assert [n.attr for n in inner.paths[0].nodes if n.kind == "layer"] == ["conv", "bn"]
    # the outer class's layer resolves to the nested class
    assert names["Outer"].init[0].type == "m.Outer.Inner"


def test_nested_class_is_rewritten(compiled):
    _, result = run(compiled, NESTED)
    assert outcomes(result, "conv_batchnorm") == [("Outer.Inner", "applied", None)]
    new = result.new_source
    assert "            self.conv = ConvBn2d(nn.Conv2d(c, c, 3), nn.BatchNorm2d(c))\n" in new
    assert "        def forward(self, x):\n            return self.conv(x)\n" in new
    # the outer class is untouched
    assert "        self.inner = Outer.Inner(c)\n" in new
    stable(compiled, new)


def test_nested_class_with_a_sibling_base_and_a_top_level_namesake(compiled):
    source = '''import torch
from torch import nn


class Outer(nn.Module):
    class Base(nn.Module):
        pass

    class Inner(Base):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h)


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.conv2 = nn.Conv2d(c, c, 3)

    def forward(self, x):
        return self.conv2(self.conv(x))
'''
    facts = analyze_source(source, "m.py")
    inner = next(c for c in facts.classes if c.name == "Outer.Inner")
    assert inner.bases == ("m.Outer.Base",)
    _, result = run(compiled, source)
    assert outcomes(result, "conv_batchnorm") == [("Outer.Inner", "applied", None)]
    # the top-level namesake keeps its code
    assert "        return self.conv2(self.conv(x))\n" in result.new_source
    stable(compiled, result.new_source)
