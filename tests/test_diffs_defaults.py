"""Diffs a reviewer accepts: a default the source did not write is not filled
into the emitted constructor call when the target's own default is provably
the same value; otherwise (unknown target signature, different default) it
stays explicit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
ADOPTER = REPO / "rulepacks" / "adopter.adr"
BERT = (REPO / "examples" / "bert_self_output.py").read_text()
OMITTED = BERT.replace("nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)", "nn.LayerNorm(config.hidden_size)")

PACK = '''pack local "test rules"

rule drop_ln "Drop the dropout before a residual LayerNorm" {
  kernel TARGET
  tolerance atol=1e-5 rtol=1e-4
  init {
    torch.nn.Dropout($_p) -> $drop;
    torch.nn.LayerNorm($h, eps=$eps) -> $norm;
  } => {
    TARGET($h, eps=$eps, elementwise_affine=True) -> $norm;
  }
  forward {
    $drop($x) -> $y;
    $y + $res -> $z;
    $norm($z) -> $out;
  } => {
    $x + $res -> $z;
    $norm($z) -> $out;
  }
}
'''


def apply(tmp_path, capsys, source: str, rules: Path) -> str:
    f = tmp_path / "m.py"
    f.write_text(source)
    code = main(["apply", "--rules", str(rules), "--no-cache", "--jobs", "1", "-q", "--write", str(f)])
    capsys.readouterr()
    assert code == 0
    new = f.read_text()
    ast.parse(new)
    # A second apply changes nothing.
    assert main(["apply", "--rules", str(rules), "--no-cache", "--jobs", "1", "-q", "--write", str(f)]) == 0
    capsys.readouterr()
    assert f.read_text() == new
    return new


def pack(tmp_path, target: str) -> Path:
    p = tmp_path / "local.adr"
    p.write_text(PACK.replace("TARGET", target))
    return p


def init_line(new: str) -> str:
    return next(line.strip() for line in new.splitlines() if line.strip().startswith("self.LayerNorm ="))


def test_unwritten_default_equal_to_the_known_target_default_is_left_out(tmp_path, capsys):
    new = apply(tmp_path, capsys, OMITTED, pack(tmp_path, "torch.nn.LayerNorm"))
    assert init_line(new) == "self.LayerNorm = nn.LayerNorm(config.hidden_size, elementwise_affine=True)"


def test_written_value_stays(tmp_path, capsys):
    new = apply(tmp_path, capsys, BERT, pack(tmp_path, "torch.nn.LayerNorm"))
    assert init_line(new) == "self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=True)"


def test_written_default_value_stays(tmp_path, capsys):
    # Written in the source (even if equal to the default): copied as written.
    source = BERT.replace("eps=config.layer_norm_eps", "eps=1e-05")
    new = apply(tmp_path, capsys, source, pack(tmp_path, "torch.nn.LayerNorm"))
    assert init_line(new) == "self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-05, elementwise_affine=True)"


def test_known_target_with_a_different_default_keeps_it(tmp_path, capsys):
    # torch.nn.RMSNorm's eps defaults to None, not LayerNorm's 1e-05.
    new = apply(tmp_path, capsys, OMITTED, pack(tmp_path, "torch.nn.RMSNorm"))
    assert "RMSNorm(config.hidden_size, eps=1e-05, elementwise_affine=True)" in init_line(new)


def test_unknown_target_signature_keeps_the_default_explicit(tmp_path, capsys):
    new = apply(tmp_path, capsys, OMITTED, ADOPTER)
    assert "FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=1e-05)" in init_line(new)
