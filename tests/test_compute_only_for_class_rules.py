"""The forward graphs (`ClassFacts.compute`) are built only when a loaded
rule is a class rule (issue 11: a cold run without class rules skips them)."""

from __future__ import annotations

from pathlib import Path

from dslc.analysis.api import analyze_source
from dslc.apply import driver
from dslc.lang.loader import load_rules

REPO = Path(__file__).resolve().parent.parent
SRC = """\
import torch
from torch import nn


class Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
"""


def test_analysis_skips_the_graph_when_asked():
    (with_graph,) = analyze_source(SRC, "m.py").classes
    (without,) = analyze_source(SRC, "m.py", compute=False).classes
    assert with_graph.compute is not None and with_graph.compute.problem is None
    assert without.compute is None


def test_driver_asks_for_graphs_only_with_class_rules():
    adopter = driver.compile_packs(load_rules([str(REPO / "rulepacks" / "adopter.adr")]).packs)
    liger = driver.compile_packs(load_rules([str(REPO / "rulepacks" / "liger.adr")]).packs)
    assert not adopter.class_rules and liger.class_rules
    opts = driver.ApplyOptions()
    assert driver._analysis_kwargs(opts, adopter.want, adopter.optional_ifs, adopter.class_rules)["compute"] is False
    assert "compute" not in driver._analysis_kwargs(opts, liger.want, liger.optional_ifs, liger.class_rules)
