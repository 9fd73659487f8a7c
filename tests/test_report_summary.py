"""The per-rule summary table: every rule for a small selection, only the
rules that found something (and a count of the others) for a large one."""

from __future__ import annotations

from pathlib import Path

from dslc import cli

REPO = Path(__file__).resolve().parent.parent


def _summary(capsys, *rules: str) -> str:
    args = ["apply", "--no-cache"]
    for r in rules:
        args += ["--rules", str(REPO / "rulepacks" / r)]
    cli.main(args + [str(REPO / "examples" / "tiny_llm.py")])
    return capsys.readouterr().err


def test_a_small_pack_lists_every_rule(capsys):
    err = _summary(capsys, "adopter.adr")
    assert "adopter:fused_qkv" in err  # found nothing, still listed
    assert "found nothing" not in err


def test_a_large_selection_lists_only_rules_that_found_something(capsys):
    err = _summary(capsys, "sdpa.adr", "liger.adr")
    rows = [line for line in err.splitlines() if line.startswith(("sdpa:", "liger:"))]
    assert rows and len(rows) < 20
    assert all(not line.split()[1:] == ["0", "0", "0"] for line in rows)
    assert "other rules found nothing; --format json lists every rule)" in err
