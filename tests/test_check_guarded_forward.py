"""ADR353: `dslc check` flags exactly the rules whose every match `dslc apply`
refuses with S305 (a run-time choice made in `__init__` -- `when`, or
`fallback original` with an init target -- on a rule whose forward changes)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from dslc import cli
from dslc.apply.driver import ApplyOptions, apply_paths
from dslc.lang.checker import check_file
from dslc.lang.lower import lower_file
from dslc.lang.parser import parse_source

REPO = Path(__file__).resolve().parent.parent
CASE = REPO / "tests" / "lang_cases" / "guarded_forward.adr"

MODEL = """\
import torch
from torch import nn
from transformers.activations import ACT2FN


class A(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.ln = nn.LayerNorm(config.hidden_size)

    def forward(self, x):
        return self.ln(self.act(x))
"""


def _flagged() -> set[str]:
    parsed = parse_source(CASE.read_text(), str(CASE))
    assert not parsed.diagnostics
    out = set()
    for d in check_file(parsed.file):
        if d.code == "ADR353":
            line = d.span.line
            rules = [r for r in parsed.file.rules if r.span.line <= line <= r.span.end_line]
            out.add(rules[0].name)
    return out


def _refused_with_s305() -> dict[str, set[str]]:
    """Apply each rule of the case alone (lowered without the checker, as
    `dslc apply` would see it were the error not caught) to MODEL."""
    parsed = parse_source(CASE.read_text(), str(CASE))
    pack = lower_file(parsed.file)
    out: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.py"
        path.write_text(MODEL)
        for rule in pack.rules:
            report = apply_paths([str(path)], [dataclasses.replace(pack, rules=(rule,))], ApplyOptions(mode="diff", jobs=1, cache_dir=None))
            out[rule.name] = {m.code or m.status for m in report.matches}
    return out


def test_check_flags_exactly_the_rules_apply_refuses_with_s305():
    flagged = _flagged()
    assert flagged == {"when_forward", "fallback_forward"}
    outcomes = _refused_with_s305()
    assert set(outcomes) == {"when_forward", "fallback_forward", "when_init_only", "fallback_init_only"}
    for name, codes_seen in outcomes.items():
        assert codes_seen, f"{name} found no match in the model"
        assert ("S305" in codes_seen) == (name in flagged), (name, codes_seen)


def test_shipped_packs_have_no_adr353(capsys):
    assert cli.main(["check", str(REPO / "rulepacks")]) == 0
    assert "ADR353" not in capsys.readouterr().out
