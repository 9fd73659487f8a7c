"""`dslc verify` and `dslc apply --verify` name the rules that rewrote the file
(not every rule whose kernel it uses: sdpa.adr has hundreds of rules and one kernel),
and take the tolerance from those alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dslc.cli import main
from dslc.match import ir
from dslc.verify.report import ClassResult, Tolerance
from dslc.verify.selection import applied_rules, tolerance_for

REPO = Path(__file__).resolve().parent.parent
SDPA = REPO / "rulepacks" / "sdpa.adr"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sdpa_models  # noqa: E402

pytest.importorskip("torch")

APPLIED = sdpa_models.CLASSES["TimmPreScaled"][1]


def _model() -> str:
    body = sdpa_models.CLASSES["TimmPreScaled"][0]
    return sdpa_models.HEAD + "\n\nclass TimmPreScaled(_Base):\n" + body


def _rule(name: str, atol: float) -> ir.Rule:
    return ir.Rule("p", name, "d", ("k.f",), ir.Contract(exact=False, atol=atol, rtol=1e-4))


def test_applied_rules_keep_the_applied_ones_and_count_the_others():
    a, b, c = _rule("a", 1e-5), _rule("b", 1e-3), _rule("c", 1e-5)
    kept, others = applied_rules([a, b, c], (("p:a", "X"), ("p:c", "Y")), within="X")
    assert kept == [a] and others == 2
    tol = tolerance_for(kept, others)
    assert tol.atol == 1e-5  # b's looser contract does not count: it did not apply
    assert "p:a" in tol.describe() and "2 other rules with these kernels did not apply" in tol.describe()
    # a class where no rule applied (changed through a helper): the file's applied rules
    assert applied_rules([a, b, c], (("p:a", "X"), ("p:c", "Y")), within="Z") == ([a, c], 1)
    # unknown (None) or nothing of these applied: every rule, as before
    assert applied_rules([a, b], None) == ([a, b], 0)
    assert applied_rules([a, b], (("p:zz", None),)) == ([a, b], 0)


def test_json_lists_the_applied_rules_and_counts_the_others():
    res = ClassResult("A", "pass", tolerance=Tolerance(rules=("p:a",), others=728))
    assert res.to_dict()["tolerance"]["rules"] == ["p:a"]
    assert res.to_dict()["tolerance"]["other_rules"] == 728


def test_a_long_rule_list_is_cut_in_the_text():
    tol = Tolerance(rules=tuple(f"p:r{i}" for i in range(729)))
    text = tol.describe()
    assert "p:r0" in text and "p:r100" not in text and "726 more rules with these kernels" in text
    assert len(text) < 200


def _rewrite(tmp_path: Path, capsys) -> tuple[Path, Path]:
    before, after = tmp_path / "before.py", tmp_path / "after.py"
    before.write_text(_model())
    after.write_text(_model())
    assert main(["apply", "--rules", str(SDPA), "--no-cache", "--jobs", "1", "--write", "-q", str(after)]) == 0
    capsys.readouterr()
    assert after.read_text() != before.read_text()
    return before, after


def test_verify_names_only_the_applied_rule(tmp_path, capsys):
    before, after = _rewrite(tmp_path, capsys)
    code = main(["verify", str(before), str(after), "--rules", str(SDPA)])
    out = capsys.readouterr().out
    assert code == 0, out
    others = SDPA.read_text().count("\nrule ") - 1  # every rule of the pack names the one kernel
    assert f"({APPLIED}; {others} other rules with these kernels did not apply)" in out
    assert out.count("sdpa:") == 1


def test_the_applied_rules_of_an_edited_rewrite_are_unknown(tmp_path, capsys):
    from dslc.commands.verify import applied_rules as found

    before, after = _rewrite(tmp_path, capsys)
    assert found(str(before), str(after), [str(SDPA)]) == ((APPLIED, "TimmPreScaled"),)
    # edited after the rewrite: dslc apply no longer gives this file, so the
    # applied rules are unknown and every rule with the kernel counts
    after.write_text(after.read_text() + "\nEDITED = 1\n")
    assert found(str(before), str(after), [str(SDPA)]) is None
    assert found(str(before), str(after), []) is None


def test_apply_verify_passes_the_applied_rules(tmp_path, capsys, monkeypatch):
    from dslc.apply import driver

    seen = []
    real = driver.verify_sources

    def spy(original, rewritten, *, path, rules, applied=None):
        seen.append(applied)
        return real(original, rewritten, path=path, rules=rules, applied=applied)

    monkeypatch.setattr(driver, "verify_sources", spy)
    path = tmp_path / "m.py"
    path.write_text(_model())
    assert main(["apply", "--rules", str(SDPA), "--no-cache", "--jobs", "1", "--verify", "-q", str(path)]) == 0
    assert seen == [((APPLIED, "TimmPreScaled"),)]
