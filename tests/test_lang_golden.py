"""Golden diagnostics: every tests/lang_cases/*.adr against its .expected.

`DSLC_UPDATE_GOLDEN=1 pytest tests/test_lang_golden.py` rewrites the
.expected files (review the diff before committing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dslc import cli
from dslc.lang.diagnostics import render
from dslc.lang.loader import load_rules

REPO = Path(__file__).resolve().parent.parent
CASES = sorted((REPO / "tests" / "lang_cases").glob("*.adr"))


def _rendered(rel: str) -> str:
    result = load_rules([rel])
    return render(result.diagnostics, "text", result.sources) + "\n"


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden(case: Path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    rel = str(case.relative_to(REPO))
    got = _rendered(rel)
    expected_path = case.with_suffix(".expected")
    if os.environ.get("DSLC_UPDATE_GOLDEN") == "1":
        expected_path.write_text(got, encoding="utf-8")
    assert expected_path.exists(), f"no {expected_path.name}; run with DSLC_UPDATE_GOLDEN=1"
    assert got == expected_path.read_text(encoding="utf-8")
    # Every case is malformed: `dslc check` says so with exit 1, no traceback.
    capsys.readouterr()
    assert cli.main(["check", rel]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "error[ADR" in out


def test_every_code_is_exercised():
    """Each registered code has a golden case, or a named test elsewhere."""
    from dslc.codes import REGISTRY

    elsewhere = {
        "ADR005": "test_lang_roundtrip.test_ten_megabytes_is_refused_quickly",
        "ADR007": "test_lang_golden.test_io_errors",
        "ADR104": "test_lang_lower.test_duplicate_pack_across_files",
        "ADR401": "test_lang_lower.test_select",
        "ADR402": "test_outcomes_integration.test_config_ignore_exclude_and_the_ignore_flag",
        "ADR501": "test_outcomes_check.test_names_and_types",
        "ADR502": "test_outcomes_check.test_names_and_types",
        "ADR503": "test_outcomes_check.test_names_and_types",
        "ADR504": "test_outcomes_check.test_names_and_types",
        "E106": "test_hostile_files.test_fifo_source_and_fifo_rule_pack_do_not_block",
        "E107": "test_hostile_files.test_write_never_goes_through_a_symlink_out_of_the_paths_given",
        "E108": "test_hostile_files.test_symlink_loop_is_reported_not_followed",
        "E109": "test_hostile_files.test_file_size_limit",
        "N101": "test_nearmiss.test_each_miss_says_why",
        "N102": "test_nearmiss.test_each_miss_says_why",
        "N103": "test_nearmiss.test_codes_of_near_misses",
        "N201": "test_nearmiss.test_each_miss_says_why",
        "N301": "test_nearmiss.test_codes_of_near_misses",
        "N401": "test_nearmiss.test_each_miss_says_why",
        "N402": "test_nearmiss.test_codes_of_near_misses",
        "W199": "test_nearmiss.test_a_failing_near_miss_report_keeps_the_rewrites",
    }
    text = "".join(p.with_suffix(".expected").read_text(encoding="utf-8") for p in CASES)
    # Rule-file codes only; the codes of `dslc apply` are tests/test_outcomes_*.py's.
    missing = [c for c in REGISTRY if c.startswith("ADR") and f"[{c}]" not in text and c not in elsewhere]
    assert not missing


def test_io_errors(tmp_path):
    from dslc.lang.loader import parse_path

    result = load_rules([str(tmp_path / "nope.adr"), str(tmp_path)])
    assert [d.code for d in result.diagnostics] == ["ADR007", "ADR007"]
    assert parse_path(str(tmp_path), {}).diagnostics[0].code == "ADR007"  # a directory read as a file
