"""Lowering to the rule IR, rule selection, and the shipped rule packs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dslc import cli
from dslc.match import ir
from dslc.lang.loader import load_rules
from dslc.lang.parser import parse_source
from dslc.lang.lower import lower_file
from dslc.match.compiler import compile_pack

REPO = Path(__file__).resolve().parent.parent
ADOPTER = str(REPO / "rulepacks" / "adopter.adr")
NAMES = ["bert_self_attention", "t5_attention", "gpt2_attention", "softmax", "dropout_layernorm",
         "biased_gelu", "conv_batchnorm", "linear_batchnorm", "fused_qkv"]


@pytest.fixture(scope="module")
def adopter() -> ir.Pack:
    result = load_rules([ADOPTER])
    assert result.ok, result.diagnostics
    (pack,) = result.packs
    return pack


def rule(pack: ir.Pack, name: str) -> ir.Rule:
    return next(r for r in pack.rules if r.name == name)


def test_adopter_has_the_nine_rules(adopter):
    assert adopter.name == "adopter"
    assert [r.name for r in adopter.rules] == NAMES
    req = {q.package: q for q in adopter.requires}
    assert req["epoi"].install == "pip install git+https://github.com/comaniac/epoi"
    assert req["xformers"].version == "<0.0.23" and req["xformers"].module == "xformers.triton.softmax"


def test_dropout_layernorm_ir(adopter):
    r = rule(adopter, "dropout_layernorm")
    v = ir.Var
    assert r.kernels == ("epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm",)
    assert r.contract == ir.Contract(False, 1e-5, 1e-4, False, r.contract.note)
    assert r.init.source == (
        ir.PatNode("layer", ir.Callee("torch.nn.Dropout"), args=(v("p"),), outputs=(v("drop"),)),
        ir.PatNode("layer", ir.Callee("torch.nn.LayerNorm"), args=(v("h"),), kwargs=(("eps", v("eps")),),
                   outputs=(v("norm"),)),
    )
    assert r.init.target == (
        ir.PatNode("layer", ir.Callee("epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm"),
                   args=(v("h"), v("p")), kwargs=(("eps", v("eps")),), outputs=(v("norm"),)),
    )
    assert r.forward.source == (
        ir.PatNode("layer", ir.Callee(var=v("drop")), args=(v("x"),), outputs=(v("y"),), layer_var="drop"),
        ir.PatNode("op", op="+", args=(v("y"), v("res")), outputs=(v("z"),)),
        ir.PatNode("layer", ir.Callee(var=v("norm")), args=(v("z"),), outputs=(v("out"),), layer_var="norm"),
    )
    assert r.forward.target == (
        ir.PatNode("layer", ir.Callee(var=v("norm")), args=(v("x"), v("res")), outputs=(v("out"),),
                   layer_var="norm"),
    )
    assert r.params == (
        ir.ParamMap(ir.AttrOf(v("norm"), "layer_norm.weight"), ir.AttrOf(v("norm"), "weight")),
        ir.ParamMap(ir.AttrOf(v("norm"), "layer_norm.bias"), ir.AttrOf(v("norm"), "bias")),
    )
    # spans point into the file
    assert r.forward.source[1].span.path == ADOPTER and r.forward.source[1].span.line > 1


def test_other_adopter_rules(adopter):
    soft = rule(adopter, "softmax")
    assert soft.init is None and soft.contract.deterministic
    (node,) = soft.forward.source
    assert node.callee.qualname == "torch.nn.functional.softmax" and node.layer_var is None
    assert node.kwargs == (("dim", ir.Const(-1)),) and node.args[-1] == ir.Const(Ellipsis)
    assert "0.0.23" in soft.contract.note

    gelu = rule(adopter, "biased_gelu")
    assert not gelu.contract.exact and "tanh" in gelu.contract.note
    assert gelu.option("when").startswith("$cfg.hidden_act in (\"gelu_new\"")
    act = gelu.init.source[1]
    assert act.callee == ir.Callee("transformers.activations.ACT2FN",
                                   subscript=ir.AttrOf(ir.Var("cfg"), "hidden_act"))
    fused = gelu.init.target[1]
    assert fused.kwargs == (("prev_weight", ir.AttrOf(ir.Var("lin"), "weight")),)

    conv = rule(adopter, "conv_batchnorm")
    assert conv.contract.exact
    assert ir.ParamMap(ir.AttrOf(ir.Var("conv"), "1.running_mean"), ir.AttrOf(ir.Var("bn"), "running_mean")) in conv.params
    assert [n.layer_var for n in conv.forward.source] == ["conv", "bn"]

    lbn = rule(adopter, "linear_batchnorm")
    assert "NOT numerically equivalent" in lbn.contract.note

    qkv = rule(adopter, "fused_qkv")
    split = qkv.forward.source[3]
    assert split.callee.qualname == "self._split_heads" and split.layer_var is None
    assert [n.layer_var for n in qkv.forward.source[:3]] == ["q_proj", "k_proj", "v_proj"]

    for name in NAMES[:3]:
        r = rule(adopter, name)
        assert r.forward.target is None and r.init.target is not None


def test_layer_var_by_type():
    text = '''pack p "d"
rule r "d" {
  kernel torch.nn.X exact
  init { torch.nn.Linear($i, $o) -> $lin; } => { torch.nn.Linear($i, $o, bias=False) -> $lin; }
  forward { torch.nn.Linear($x) -> $y; torch.relu($y) -> $z; } => { torch.nn.Linear($x) -> $z; }
}'''
    pack = lower_file(parse_source(text, "t.adr").file)
    fwd = pack.rules[0].forward
    assert [n.layer_var for n in fwd.source] == ["lin", None]
    assert fwd.target[0].layer_var == "lin"


def test_select(adopter):
    result = load_rules([str(REPO / "rulepacks")], ["adopter:softmax", "silu"])
    assert [(p.name, [r.name for r in p.rules]) for p in result.packs] == [
        ("adopter", ["softmax"]), ("examples", ["silu"])]
    bad = load_rules([ADOPTER], ["adopter:nope"])
    assert [d.code for d in bad.diagnostics if d.is_error] == ["ADR401"] and bad.packs == []


def test_duplicate_pack_across_files(tmp_path):
    (tmp_path / "a.adr").write_text(Path(ADOPTER).read_text())
    (tmp_path / "b.adr").write_text(Path(ADOPTER).read_text())
    result = load_rules([str(tmp_path)])
    assert "ADR104" in [d.code for d in result.diagnostics]
    assert len(result.packs) == 2


def test_rulepacks_check_clean(capsys):
    assert cli.main(["check", str(REPO / "rulepacks")]) == 0
    out = capsys.readouterr().out
    # every shipped pack (their number grows): clean
    assert re.search(r"checked \d+ rules in \d+ packs: 0 errors, 0 warnings", out), out


def test_rulepacks_compile():
    result = load_rules([str(REPO / "rulepacks")])
    assert result.ok and result.packs, result.diagnostics
    for pack in result.packs:
        assert compile_pack(pack).dump()


def test_cli_usage_and_json(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing.adr")]) == 2
    assert cli.main(["check", str(tmp_path)]) == 2  # no .adr files
    assert cli.main(["explain", "ADR999"]) == 2
    assert cli.main(["explain", "adr201"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.adr"
    bad.write_text('pack p "d"\nrule r "d" { kernel torch.x exact forward { torch.f($x) -> $y; } => { torch.g($w) -> $y; } }\n')
    assert cli.main(["check", "--format", "json", str(bad)]) == 1
    data = json.loads(capsys.readouterr().out)
    keys = {"file", "line", "col", "end_line", "end_col", "code", "severity", "message", "help"}
    assert all(keys <= set(d) for d in data)
    assert {(d["code"], d["line"]) for d in data} >= {("ADR201", 2)}
    big = tmp_path / "big.adr"
    big.write_bytes(b"#" * 2_000_000)
    assert cli.main(["check", str(big)]) == 1
    assert "error[ADR005]" in capsys.readouterr().out


def test_quiet_prints_errors_only(tmp_path, capsys):
    f = tmp_path / "w.adr"
    f.write_text('pack p "d"\nrule r "d" { kernel torch.x forward { torch.f($x) -> $y; } => _ }\n')
    assert cli.main(["check", "--quiet", str(f)]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["check", str(f)]) == 0
    out = capsys.readouterr().out
    assert "warning[ADR112]" in out and "0 errors, 1 warning" in out


def test_select_in_a_broken_file_is_not_unknown(tmp_path):
    f = tmp_path / "b.adr"
    f.write_text('pack p "d"\nrule r "d" { kernel torch.x exact forward { torch.f($x) -> $y; } => { torch.g($w) -> $y; } }\n')
    result = load_rules([str(f)], ["p:r"])
    assert [d.code for d in result.diagnostics if d.is_error] == ["ADR201"] and result.packs == []
