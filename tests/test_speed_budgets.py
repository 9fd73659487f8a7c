"""Worst-case bounds (issue 11): every per-function stage has a budget.

The generated files of benchmarks/worst_cases.py hold a pathological class
`Big` and, after it, an ordinary class `Small` that the adopter pack
rewrites.  Going over a budget must be a warning with a code on `Big`, and
`Small` must still be analysed and rewritten.  No timing here: the times are
`benchmarks/speed.py --only worst`'s business.  The cases are generated at
sizes that trip the budgets (or, for the guard tests, with the budget
lowered) while staying fast.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dslc.apply import driver as apply
from dslc.analysis import analyze_source, budget, guards
from rewrite_support import load_packs

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"


def _cases():
    spec = importlib.util.spec_from_file_location("worst_cases", REPO / "benchmarks" / "worst_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


W = _cases()


@pytest.fixture(scope="module")
def packs():
    return load_packs(str(PACK))


def _apply(tmp_path, name, text, packs, near_misses=False):
    f = tmp_path / f"{name}.py"
    f.write_text(text)
    report = apply.apply_paths([str(f)], packs, apply.ApplyOptions(jobs=1, near_misses=near_misses))
    (result,) = report.files
    return result


def _small_rewritten(result) -> bool:
    applied = {(m.class_name, m.rule) for m in result.matches if m.status == "applied"}
    return ("Small", "adopter:dropout_layernorm") in applied and ("Small", "adopter:softmax") in applied


def test_a_huge_sequential_literal_is_a_node_budget_warning_and_small_is_rewritten(tmp_path, packs):
    result = _apply(tmp_path, "seq", W.big_sequential(budget.MAX_CONTAINER_ELEMENTS + 10), packs)
    assert any(w.code == "W105" and w.message.startswith("node-budget:") for w in result.warnings), result.warnings
    assert _small_rewritten(result)
    assert not result.errors


def test_a_very_long_function_is_a_node_budget_warning_and_small_is_rewritten(tmp_path, packs):
    result = _apply(tmp_path, "long", W.long_function(budget.MAX_PATH_NODES + 100), packs)
    assert any(w.code == "W105" and w.message.startswith("node-budget:") and "Big.forward" in w.message
               for w in result.warnings), result.warnings
    assert _small_rewritten(result)
    # nothing of Big was matched: its paths were dropped, not half-analysed
    assert not [m for m in result.matches if m.class_name == "Big" and m.function == "forward"]


def test_the_work_budget_drops_one_function_and_keeps_the_others(monkeypatch):
    monkeypatch.setattr(budget, "MAX_WORK", 2_000)
    facts = analyze_source(W.long_branchy_function(600), "branchy.py")
    assert any(p.code == "path-budget" and "Big.forward" in p.message for p in facts.problems), facts.problems
    by_name = {c.name: c for c in facts.classes}
    assert by_name["Big"].paths == ()
    assert by_name["Big"].init, "the init bindings of the class are kept"
    assert by_name["Small"].paths, "the other class is still analysed"


def test_the_solver_budget_assumes_feasible_and_says_so(monkeypatch):
    monkeypatch.setattr(budget, "MAX_GUARD_QUERIES", 20)
    # cached answers are free: an earlier test of this worker that asked the
    # same guards (the same generated chain) would leave nothing to count
    guards.feasible_key.cache_clear()
    guards._solve_group.cache_clear()
    facts = analyze_source(W.if_else_chain(12), "chain.py")
    assert any(p.code == "solver-budget" for p in facts.problems), facts.problems
    assert {c.name for c in facts.classes} == {"Big", "Small"}
    assert facts.classes[1].paths


def test_budgets_do_not_change_ordinary_files():
    facts = analyze_source(W.if_else_chain(5), "chain.py")
    assert not [p for p in facts.problems if p.code.endswith("-budget")]
    # 5 independent-ish if/else over one symbol: 6 feasible orders of `mode > i`
    big = facts.classes[0]
    assert 2 <= len(big.paths) <= 32


@pytest.mark.parametrize("name", sorted(W.CASES))
def test_every_generated_worst_case_finishes_with_small_rewritten(tmp_path, packs, name, monkeypatch):
    # the 5000/10000-size cases run in benchmarks/speed.py; here at W.TEST_SIZES, with budgets scaled to match
    generate, _ = W.CASES[name]
    monkeypatch.setattr(budget, "MAX_CONTAINER_ELEMENTS", 200)
    monkeypatch.setattr(budget, "MAX_PATH_NODES", 300)
    monkeypatch.setattr(budget, "MAX_WORK", 20_000)
    result = _apply(tmp_path, name, generate(W.TEST_SIZES[name]), packs)
    assert not result.errors, result.errors
    assert _small_rewritten(result), (name, result.matches, result.warnings)


@pytest.mark.parametrize("name", sorted(W.CASES))
def test_every_worst_case_with_the_three_packs_and_near_misses_keeps_small_rewritten(tmp_path, name, monkeypatch):
    # what a demanding user runs (benchmarks/speed.py --only worst times it at full size): the
    # shared near-miss source, the guard caches and the lower z3 budget must keep `Small` as it was
    packs = load_packs(tuple(str(REPO / "rulepacks" / f"{n}.adr") for n in ("adopter", "sdpa", "liger")))
    generate, _ = W.CASES[name]
    monkeypatch.setattr(budget, "MAX_CONTAINER_ELEMENTS", 200)
    monkeypatch.setattr(budget, "MAX_PATH_NODES", 300)
    monkeypatch.setattr(budget, "MAX_WORK", 20_000)
    monkeypatch.setattr(budget, "MAX_GUARD_QUERIES", 2_000)
    result = _apply(tmp_path, name, generate(W.TEST_SIZES[name]), packs, near_misses=True)
    assert not result.errors, result.errors
    assert _small_rewritten(result), (name, result.matches, result.warnings)
    small = [n for n in result.near_misses if n.class_name == "Small"]
    assert not [n for n in small if n.code == "N405"], small  # Small is fully analysed


def test_every_case_has_a_test_size():
    assert set(W.TEST_SIZES) == set(W.CASES)


def test_propositional_groups_give_the_same_answer_as_one_enumeration():
    # 16 independent atoms (more than the 12 one enumeration takes) plus one contradiction
    keys = tuple((f"flags[{i}]", False, ()) for i in range(16))
    assert guards.feasible_key(keys) is guards.Answer.PROVED
    assert guards.feasible_key(keys + (("flags[3]", True, ()),)) is guards.Answer.REFUTED
    linked = (("a and b", False, ()), ("b or c", False, ()), ("not c", False, ()), ("not a", False, ()))
    assert guards.feasible_key(linked) is guards.Answer.REFUTED
    assert guards.feasible_key(linked[:3]) is guards.Answer.PROVED
