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


def _outcomes(text: str = "") -> dict[str, set[tuple[str, str]]]:
    """Apply each rule of the case (or of `text`) alone (lowered without the
    checker, as `dslc apply` would see it were the error not caught) to
    MODEL: (code or status, reason) per match."""
    parsed = parse_source(text or CASE.read_text(), str(CASE))
    pack = lower_file(parsed.file)
    out: dict[str, set[tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.py"
        path.write_text(MODEL)
        for rule in pack.rules:
            report = apply_paths([str(path)], [dataclasses.replace(pack, rules=(rule,))], ApplyOptions(mode="diff", jobs=1, cache_dir=None))
            out[rule.name] = {(m.code or m.status, m.reason or "") for m in report.matches}
    return out


def _refused_with_s305() -> dict[str, set[str]]:
    return {name: {code for code, _ in seen} for name, seen in _outcomes().items()}


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


def test_s305_reason_names_its_cause():
    """`when`, a per-construction fallback, or both: the reason says which."""
    text = CASE.read_text()
    both = text[text.index("rule fallback_forward"):text.index("# Not flagged")]
    both = both.replace("rule fallback_forward", "rule both_forward").replace("\n}", "\n  when not $h == 0\n}")
    reasons = {name: [r for code, r in seen if code == "S305"] for name, seen in _outcomes(text + both).items()}
    (when,), (fallback,), (both_reason,) = reasons["when_forward"], reasons["fallback_forward"], reasons["both_forward"]
    assert when.startswith("a rule with `when` must leave forward unchanged")
    assert fallback.startswith("a rule with a per-construction fallback (`fallback original` with `needs`")
    assert "`when`" not in fallback
    assert both_reason.startswith("a rule with `when` and a per-construction fallback")
