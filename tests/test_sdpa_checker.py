"""ADR210: a `torch.Tensor.m(...)` source node for a method the analysis never records."""

from __future__ import annotations

from dslc.lang import checker
from dslc import cli
from dslc.analysis import exprs


def test_checker_knows_the_recorded_tensor_methods():
    assert checker.TENSOR_METHODS == exprs.TENSOR_METHODS


def test_unrecorded_tensor_method_is_a_warning(tmp_path, capsys):
    bad = tmp_path / "m.adr"
    bad.write_text('pack p "d"\nrule r "d" { kernel torch.exp exact\n'
                   '  forward { torch.Tensor.exp($x) -> $y; } => { torch.exp($x) -> $y; } }\n')
    assert cli.main(["check", str(bad)]) == 0  # a warning
    out = capsys.readouterr().out
    assert "warning[ADR210]" in out and "x.exp(...)" in out
    ok = tmp_path / "ok.adr"
    ok.write_text('pack p "d"\nrule r "d" { kernel torch.transpose exact\n'
                  '  forward { torch.Tensor.transpose($x, -2, -1) -> $y; } => { torch.transpose($x, -2, -1) -> $y; } }\n')
    assert cli.main(["check", str(ok)]) == 0
    assert "ADR210" not in capsys.readouterr().out
