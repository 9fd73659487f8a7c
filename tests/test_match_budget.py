"""The matching budget (issue 11): a path set whose rules fire too many
pattern steps is left unmatched, with a W105 warning and N405 near misses.

A function at the path cap under a pack of hundreds of spellings (the
generated sdpa pack) tried millions of pattern steps: minutes per file.
Here the budget is lowered so that a small generated class trips it; the
other class of the file must still be matched and rewritten, the class
over budget must get no rewrite at all (never a match found on some of its
paths only), and `--near-misses` must say its places were not fully
analysed.  No timing here: benchmarks/worst_cases.py prints the seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dslc.apply import driver as apply
from dslc.match import matcher
from dslc.rewrite import nearmiss
from rewrite_support import load_packs

REPO = Path(__file__).resolve().parent.parent
PACKS = tuple(str(REPO / "rulepacks" / f"{n}.adr") for n in ("adopter", "sdpa", "liger"))


def _cases():
    spec = importlib.util.spec_from_file_location("worst_cases", REPO / "benchmarks" / "worst_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


W = _cases()

# an attention-like class with 6 ifs (64 paths), each path holding the same
# eager attention chain: every rule anchored at matmul runs on every path
ATTENTION = '''import math
import torch
from torch import nn


class Dense(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.head = config.hidden_size

    def forward(self, hidden_states, mask, flags):
        q = self.query(hidden_states)
{ifs}        k = self.key(hidden_states)
        v = self.value(hidden_states)
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores / math.sqrt(self.head)
        scores = scores + mask
        probs = nn.functional.softmax(scores, dim=-1)
        probs = self.dropout(probs)
        return torch.matmul(probs, v)
'''


def _dense(n_ifs: int) -> str:
    ifs = "".join(f"        if flags[{i}]:\n            q = self.query(q)\n" for i in range(n_ifs))
    return ATTENTION.format(ifs=ifs) + W.SMALL


@pytest.fixture(scope="module")
def packs():
    return load_packs(PACKS)


def _apply(tmp_path, name, text, packs, near=True):
    f = tmp_path / f"{name}.py"
    f.write_text(text)
    report = apply.apply_paths([str(f)], packs, apply.ApplyOptions(jobs=1, near_misses=near))
    (result,) = report.files
    return result


def _small_rewritten(result) -> bool:
    applied = {(m.class_name, m.rule) for m in result.matches if m.status == "applied"}
    return ("Small", "adopter:dropout_layernorm") in applied


def test_a_path_set_over_the_match_budget_is_left_unmatched_with_w105_and_n405(tmp_path, packs, monkeypatch):
    monkeypatch.setattr(matcher, "MAX_MATCH_FIRES", 2_000)
    result = _apply(tmp_path, "dense", _dense(6), packs)
    assert not result.errors, result.errors
    budget = [w for w in result.warnings if w.code == "W105" and "match-budget" in w.message]
    assert budget and all("Dense.forward" in w.message for w in budget), result.warnings
    # the budget is per pack: sdpa's hundreds of spellings ran out of it in Dense
    assert any("no rule of sdpa is matched" in w.message for w in budget), budget
    assert not [m for m in result.matches if m.class_name == "Dense" and m.rule.startswith("sdpa:")]
    assert _small_rewritten(result), (result.matches, result.warnings)
    dense = [n for n in result.near_misses if n.class_name == "Dense" and n.rule.startswith("sdpa:")]
    assert dense and {n.code for n in dense} == {"N405"}, dense
    assert not [n for n in result.near_misses if n.class_name == "Small" and n.code == "N405"]


def test_under_the_budget_the_same_class_is_matched(tmp_path, packs):
    # the same file with the default budget: the sdpa chain is found in Dense
    result = _apply(tmp_path, "dense", _dense(6), packs, near=False)
    assert not [w for w in result.warnings if "match-budget" in w.message], result.warnings
    assert [m for m in result.matches if m.class_name == "Dense" and m.rule.startswith("sdpa:")], result.matches
    assert _small_rewritten(result)


def test_the_match_budget_counts_steps_per_path_set(monkeypatch):
    # the counter is per path set: Small's steps are not charged to Dense's
    from dslc.analysis import analyze_source
    from dslc.match.compiler import compile_rules

    facts = analyze_source(_dense(6), "dense.py")
    compiled = compile_rules(load_packs(PACKS[1])[0].rules)
    monkeypatch.setattr(matcher, "MAX_MATCH_FIRES", 2_000)
    over: list = []
    found = matcher.match_file(compiled, facts, over=over)
    assert [(s.cls.name, s.paths_of) for s in over] == [("Dense", None)]
    assert all(s.fires > s.max_fires for s in over)
    assert not [m for m in found if m.class_name == "Dense"]
    rec = nearmiss.Recorder()
    matcher.match_file(compiled, facts, recorder=rec)
    assert rec.over == {(facts.classes[0].qualname, None)}


@pytest.mark.parametrize("name", sorted(W.CASES))
def test_every_generated_worst_case_with_all_packs_and_near_misses(tmp_path, packs, name, monkeypatch):
    # the three packs of the benchmark and --near-misses (the near-miss run
    # matches again with a recorder); sizes and analysis budgets as in
    # test_speed_budgets, the match budget lowered to match
    from dslc.analysis import budget

    generate, _ = W.CASES[name]
    monkeypatch.setattr(budget, "MAX_CONTAINER_ELEMENTS", 200)
    monkeypatch.setattr(budget, "MAX_PATH_NODES", 300)
    monkeypatch.setattr(budget, "MAX_WORK", 20_000)
    monkeypatch.setattr(matcher, "MAX_MATCH_FIRES", 20_000)
    result = _apply(tmp_path, name, generate(W.TEST_SIZES[name]), packs)
    assert not result.errors, result.errors
    assert not [w for w in result.warnings if w.code in ("E199", "W199")], result.warnings
    assert _small_rewritten(result), (name, result.matches, result.warnings)


def test_near_misses_from_the_matching_run_recorder_are_those_of_a_second_run():
    # apply --near-misses records during its one matching run; `near_misses`
    # without a recorder matches again: the report must be the same
    from dslc.analysis import analyze_source
    from dslc.match.compiler import compile_rules

    src = _dense(2) + W.if_helpers(3).split("\n\n\nclass Small", 1)[0].split("from torch import nn\n", 1)[1]
    facts = analyze_source(src, "dense.py")
    seen = 0
    for pack in PACKS:
        compiled = compile_rules(load_packs(pack)[0].rules)
        rec = nearmiss.Recorder()
        found = matcher.match_file(compiled, facts, recorder=rec)
        assert [m.rule.qualified_name for m in found] == [m.rule.qualified_name for m in matcher.match_file(compiled, facts)]
        again = nearmiss.near_misses(compiled, facts, found, file="dense.py", source=src)
        once = nearmiss.near_misses(compiled, facts, found, file="dense.py", source=src, recorder=rec)
        assert once == again
        seen += len(again)
    assert seen, "the file has near misses to compare"
