"""The class pre-filter (`dslc.analysis.classgate`, issue 11): a class no
rule can match gets no forward paths, and every class some rule can match
is analysed as before, however its calls reach the names the rule needs."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from dslc.analysis import classgate
from dslc.analysis.api import analyze_source
from dslc.apply import driver
from dslc.apply import report as rep
from dslc.lang.loader import load_rules

REPO = Path(__file__).resolve().parent.parent
SOFTMAX = (frozenset({"softmax"}),)

FILES = {
    "pkg/__init__.py": "",
    "pkg/util.py": """\
        import torch.nn.functional as F

        sm = F.softmax
        """,
    "pkg/base.py": """\
        import torch.nn.functional as F
        from torch import nn


        class Base(nn.Module):
            def forward(self, s):
                p = F.softmax(s, dim=-1)
                return p
        """,
    "pkg/model.py": """\
        import torch
        import torch.nn.functional as F
        from torch import nn

        from .base import Base
        from .util import sm

        alias = F.softmax


        def pick():
            return F.softmax


        class Emb(nn.Module):
            \"\"\"Embeddings; no softmax here (this docstring's words do not count).\"\"\"

            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(10, 4)

            def forward(self, x):
                return self.emb(x)


        class Direct(nn.Module):
            def forward(self, s):
                p = F.softmax(s, dim=-1)
                return p


        class ViaAlias(nn.Module):
            def forward(self, s):
                p = alias(s, dim=-1)
                return p


        class ViaImported(nn.Module):
            def forward(self, s):
                p = sm(s, dim=-1)
                return p


        class Inherits(Direct):
            pass


        class ViaHelper(nn.Module):
            def forward(self, s):
                return self._probs(s)

            def _probs(self, s):
                p = F.softmax(s, dim=-1)
                return p


        class LocalImport(nn.Module):
            def forward(self, s):
                from .util import sm as f
                p = f(s, dim=-1)
                return p


        class ViaFactory(nn.Module):
            def forward(self, s):
                f = pick()
                p = f(s, dim=-1)
                return p


        class FromOtherModule(Base):
            pass


        class Norm(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = nn.LayerNorm(4)
                self.drop = nn.Dropout(0.1)

            def forward(self, x):
                return self.norm(self.drop(x) + x)
        """,
}


@pytest.fixture()
def tree(tmp_path):
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def _facts(tree, needs):
    path = tree / "pkg" / "model.py"
    return {c.name: c for c in analyze_source(path.read_text(), str(path), root=str(tree), needs=needs).classes}


def test_a_class_no_rule_can_match_keeps_its_facts_but_gets_no_paths(tree):
    gated, full = _facts(tree, SOFTMAX), _facts(tree, None)
    assert set(gated) == set(full)
    emb = gated["Emb"]
    assert full["Emb"].paths and not emb.paths and not emb.other_paths
    # what the rewriter's checks read of every class stays
    assert emb.init == full["Emb"].init and emb.attr_uses == full["Emb"].attr_uses and emb.bases == full["Emb"].bases
    assert not gated["Norm"].paths  # its layers are not what the rule needs


@pytest.mark.parametrize("name", ["Direct", "ViaAlias", "ViaImported", "Inherits", "ViaHelper", "LocalImport",
                                  "ViaFactory", "FromOtherModule"])
def test_every_way_of_reaching_the_name_keeps_the_paths(tree, name):
    gated, full = _facts(tree, SOFTMAX), _facts(tree, None)
    assert gated[name].paths == full[name].paths and gated[name].paths


def test_layer_types_count_from_the_init_bindings(tree):
    # `Norm` never spells `Dropout` or `LayerNorm` as a call in forward: its init types carry them
    gated = _facts(tree, (frozenset({"Dropout", "LayerNorm"}),))
    assert gated["Norm"].paths and not gated["Direct"].paths


def test_a_rule_needing_no_name_lets_every_class_through():
    adopter = driver.compile_packs(load_rules([str(REPO / "rulepacks" / "adopter.adr")]).packs)
    assert adopter.needs and all(adopter.needs)
    assert driver._needs([]) is None
    assert driver._needs([type("C", (), {"rules": [type("R", (), {"names": frozenset()})()]})()]) is None


def test_near_miss_reports_analyse_every_class():
    adopter = driver.compile_packs(load_rules([str(REPO / "rulepacks" / "adopter.adr")]).packs)
    kw = driver._analysis_kwargs(driver.ApplyOptions(), adopter.want, needs=adopter.needs)
    assert kw["needs"] == adopter.needs
    near = driver._analysis_kwargs(driver.ApplyOptions(near_misses=True), adopter.want, needs=adopter.needs)
    assert "needs" not in near


def _report(paths, packs, monkeypatch, gate: bool):
    if not gate:
        monkeypatch.setattr(driver, "_needs", lambda compiled: None)
    result = driver.apply_paths([str(p) for p in paths], packs, driver.ApplyOptions(jobs=1))
    data = rep.to_json(result)
    data.pop("seconds", None)
    monkeypatch.undo()
    return json.dumps(data, sort_keys=True), rep.render_diff(result)


@pytest.mark.parametrize("pack", ["adopter", "sdpa", "liger"])
def test_apply_reports_the_same_with_and_without_the_gate(tree, monkeypatch, pack):
    packs = load_rules([str(REPO / "rulepacks" / f"{pack}.adr")]).packs
    files = [tree / "pkg" / "model.py", REPO / "examples" / "bert_self_output.py", REPO / "examples" / "tiny_llm.py",
             REPO / "examples" / "dpt_preact_residual.py"]
    gated = _report(files, packs, monkeypatch, gate=True)
    full = _report(files, packs, monkeypatch, gate=False)
    assert gated == full
    if pack == "adopter":
        found = json.loads(gated[0])["matches"]
        assert {m["class"] for m in found if m["file"].endswith("model.py")} >= {"Direct", "ViaAlias", "ViaImported",
                                                                                 "ViaHelper"}


def _identifiers_by_line(tree):
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            yield n.lineno, n.id
        elif isinstance(n, ast.Attribute):
            yield n.end_lineno, n.attr
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield n.lineno, n.name
        elif isinstance(n, ast.keyword) and n.arg:
            yield n.lineno, n.arg


def test_code_lines_keep_every_identifier_where_it_is():
    """Blanking comments and strings keeps the line count and every name the
    tree has on its line (all of dslc's sources and tests, and odd cases)."""
    odd = ("x = 1  # softmax here\rs = 'a # not a comment'; t = r'\\\\'\r\n"
           "d = '''doc\nwith ' and '' inside\n''' ; e = F.softmax\n"
           "u = f\"{F.gelu(x)!r:>{w}}\" + b'x' + rb\"\\\"\" + 'torch.nn.functional.relu'\n"
           "if\"a\" in s: k = 2\n")
    sources = [odd] + [p.read_text() for d in ("dslc", "analysis", "tests") for p in sorted((REPO / d).rglob("*.py"))]
    for text in sources:
        tree = ast.parse(text)
        lines = classgate.code_lines(text)
        assert len(lines) == len(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        for line, name in _identifiers_by_line(tree):
            assert name in classgate._WORD.findall(lines[line - 1]), (name, line, lines[line - 1])
    odd_lines = classgate.code_lines(odd)
    assert "softmax" not in odd_lines[0] and "comment" not in odd_lines[1]
    assert "gelu" in odd_lines[5] and "relu" in odd_lines[5] and "inside" not in "".join(odd_lines)


# --- the matcher's per-scope filter (`matcher._scope_names`) ---------------

DLN_ONLY = """\
import torch
from torch import nn


class OnlyDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(self.dropout(x))
"""


def test_a_rule_missing_a_name_is_not_run_unless_near_misses_are_asked():
    from dslc.match import matcher

    compiled = driver.compile_packs(load_rules([str(REPO / "rulepacks" / "adopter.adr")]).packs).compiled[0]
    facts = analyze_source(DLN_ONLY, "m.py")
    stats: dict = {}
    assert matcher.match_file(compiled, facts, stats=stats) == [] and stats.get("attempts", 0) == 0

    class Rec:
        def event(self, *a, **k):
            pass

    asked: dict = {}
    matcher.match_file(compiled, facts, stats=asked, recorder=Rec())
    assert asked["attempts"] > 0  # dropout_layernorm starts at the Dropout (and dies without a LayerNorm)


@pytest.mark.parametrize("pack", ["adopter", "sdpa", "liger"])
def test_the_matcher_filter_changes_no_result(tree, monkeypatch, pack):
    from dslc.match import matcher

    packs = load_rules([str(REPO / "rulepacks" / f"{pack}.adr")]).packs
    files = [tree / "pkg" / "model.py", REPO / "examples" / "bert_self_output.py", REPO / "examples" / "tiny_llm.py",
             REPO / "examples" / "dpt_preact_residual.py"]
    filtered = _report(files, packs, monkeypatch, gate=False)
    every = frozenset().union(*(r.names for c in driver.compile_packs(packs).compiled for r in c.rules))
    monkeypatch.setattr(matcher, "_scope_names", lambda scope, paths: every)
    assert _report(files, packs, monkeypatch, gate=False) == filtered
