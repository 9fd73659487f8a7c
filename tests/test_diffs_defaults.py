"""Diffs a reviewer accepts: a default the source did not write is not filled
into the emitted constructor call when the target's own default is provably
the same value; otherwise (unknown target signature, different default) it
stays explicit."""

from __future__ import annotations

from pathlib import Path

from rewrite_support import BERT_EXAMPLE as BERT
from rewrite_support import RULEPACKS, run, stable

ADOPTER = RULEPACKS / "adopter.adr"
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


def apply(source: str, rules: Path) -> str:
    result = run(source, rules=rules)
    assert not result.errors and result.new_source is not None, (result.errors, result.matches)
    stable(result.new_source, rules=rules)  # parses; a second apply changes nothing
    return result.new_source


def pack(tmp_path, target: str) -> Path:
    p = tmp_path / "local.adr"
    p.write_text(PACK.replace("TARGET", target))
    return p


def init_line(new: str) -> str:
    return next(line.strip() for line in new.splitlines() if line.strip().startswith("self.LayerNorm ="))


def test_unwritten_default_equal_to_the_known_target_default_is_left_out(tmp_path):
    new = apply(OMITTED, pack(tmp_path, "torch.nn.LayerNorm"))
    assert init_line(new) == "self.LayerNorm = nn.LayerNorm(config.hidden_size, elementwise_affine=True)"


def test_written_value_stays(tmp_path):
    new = apply(BERT, pack(tmp_path, "torch.nn.LayerNorm"))
    assert init_line(new) == "self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=True)"


def test_written_default_value_stays(tmp_path):
    # Written in the source (even if equal to the default): copied as written.
    source = BERT.replace("eps=config.layer_norm_eps", "eps=1e-05")
    new = apply(source, pack(tmp_path, "torch.nn.LayerNorm"))
    assert init_line(new) == "self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-05, elementwise_affine=True)"


def test_known_target_with_a_different_default_keeps_it(tmp_path):
    # torch.nn.RMSNorm's eps defaults to None, not LayerNorm's 1e-05.
    new = apply(OMITTED, pack(tmp_path, "torch.nn.RMSNorm"))
    assert "RMSNorm(config.hidden_size, eps=1e-05, elementwise_affine=True)" in init_line(new)


def test_unknown_target_signature_keeps_the_default_explicit():
    new = apply(OMITTED, ADOPTER)
    assert "FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=1e-05)" in init_line(new)
