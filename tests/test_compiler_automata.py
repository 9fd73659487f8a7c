"""Compiling rules: automata, the combined index, dumps (and their goldens)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dslc.match import ir
from dslc.match.compiler import PASSES, CompileError, compile_rule, compile_rules
from dslc.lang.loader import load_rules
from test_matcher_helpers import K, L, O, V, W, biased_gelu, conv_batchnorm, dropout_layernorm, rule, softmax

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "compiled"
PACK = REPO / "rulepacks" / "adopter.adr"


def test_passes_are_an_explicit_tuple():
    assert [p.__name__ for p in PASSES] == ["_resolve_layer_vars", "_compile_init", "_compile_forward", "_collect_names"]


def test_dropout_layernorm_automaton():
    c = compile_rule(dropout_layernorm())
    auto = c.forward
    assert auto.states == 4 and auto.anchor == ("layer", "torch.nn.Dropout") and auto.anchor_index == 0
    t0, t1, t2 = auto.transitions
    assert t0.test.layer_var == "drop" and [a.slot for a in t0.actions] == ["attr", "in0", "out0"]
    assert t1.test.kind == "op" and t1.test.commutative and t1.test.arity == 2
    assert t2.test.type == "torch.nn.LayerNorm"
    # init: arguments keyed by parameter name from the signature table
    ln = c.init.tests[1]
    assert ln.signature == "torch.nn.LayerNorm" and [a.slot for a in ln.actions] == ["p:normalized_shape", "p:eps"]
    assert c.names == {"Dropout", "LayerNorm"}


def test_qualified_forward_node_resolves_to_the_init_var():
    c = compile_rule(conv_batchnorm())
    assert [t.test.layer_var for t in c.forward.transitions] == ["conv", "bn"]
    # softmax: no init node of that type -> a function call by parameter name
    s = compile_rule(softmax())
    t = s.forward.transitions[0]
    assert t.test.kind == "call" and t.signature == "torch.nn.functional.softmax"
    assert [(a.slot, a.term) for a in t.actions][:2] == [("p:input", V("x")), ("p:dim", K(-1))]


def test_leading_wildcard_anchor_is_first_real_node():
    r = rule("w", init=[L("torch.nn.Dropout", [V("p")], out=["d"])], forward=[W(out=["a"]), L(var="d", args=[V("a")], out=["y"])])
    c = compile_rule(r)
    assert c.forward.anchor_index == 1 and c.forward.anchor == ("layer", "torch.nn.Dropout")


def test_compile_errors_are_located():
    span = ir.Span("r.adr", 7, 5, 7, 20)
    bad_node = ir.PatNode("layer", ir.Callee(var=V("nope")), None, (V("x"),), (), (V("y"),), span=span)
    r = rule("bad", init=[L("torch.nn.Dropout", [V("p")], out=["d"])], forward=[bad_node])
    with pytest.raises(CompileError, match=r"r.adr:7:5: rule t:bad: forward calls layer \$nope"):
        compile_rule(r)
    with pytest.raises(CompileError, match="no parameter 'dimension'"):
        compile_rule(rule("bad2", forward=[L("torch.nn.functional.softmax", [V("x")], [("dimension", K(-1))], out=["y"])]))
    with pytest.raises(CompileError, match="neither"):
        compile_rule(rule("empty"))


def test_combined_index_and_anchor_names():
    pack = compile_rules([dropout_layernorm(), softmax(), conv_batchnorm(), biased_gelu()])
    assert pack.candidates(("layer", "torch.nn.Dropout")) == (0,)
    assert pack.candidates(("call", "torch.nn.functional.softmax")) == (1,)
    assert pack.candidates(("layer", "torch.nn.Conv2d")) == (2,)
    assert pack.candidates(("layer", "torch.nn.Linear")) == (3,)
    assert pack.candidates(("layer", "torch.nn.LayerNorm")) == ()
    assert pack.anchor_names() == {"Dropout", "LayerNorm", "softmax", "Conv2d", "BatchNorm2d", "Linear", "ACT2FN"}
    ops_only = compile_rules([rule("o", forward=[O("+", [V("a"), V("b")], "c")])])
    assert ops_only.anchor_names() == {""}


def test_dump_is_readable():
    text = compile_rules([dropout_layernorm()]).dump()
    assert "anchor layer:torch.nn.Dropout -> t:dropout_layernorm" in text
    assert "0 -> 1: layer $drop : torch.nn.Dropout { $drop <- attr; $x <- in0; $y <- out0 }" in text
    assert "1 -> 1: skip unless the node writes a bound name" in text
    assert "1 -> 2: op +/2 (commutative) { $y <- in0; $res <- in1; $z <- out0 }" in text
    assert "$norm := torch.nn.LayerNorm(...), args by torch.nn.LayerNorm { $h <- p:normalized_shape; $eps <- p:eps }" in text


RESIDUAL = """
import torch
from torch import nn


class Out(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(h, eps=1e-5)

    def forward(self, x, res):
        y = self.dropout(x)
        z = {sum}
        return self.norm(z)
"""

RESIDUAL_RULE = """pack p "d"
rule fuse "d" {{
  kernel torch.x
  exact
  init {{ torch.nn.Dropout($p) -> $drop; torch.nn.LayerNorm($h, eps=$eps) -> $norm; }}
    => {{ torch.x.Fused($h, $p, eps=$eps) -> $norm; }}
  forward {{ $drop($x) -> $y; $y + $res -> $z; $norm($z) -> $out; }} => {{ $norm($x, $res) -> $out; }}
  {option}
}}
"""


@pytest.mark.parametrize("option, swapped_matches", [("", True), ("option commutative = True", True),
                                                    ("option commutative = False", False)])
def test_option_commutative_from_a_rule_file(tmp_path, option, swapped_matches):
    """`option commutative` passes the checker and reaches the matcher: False keeps `y + res` in that order."""
    from dslc.analysis import analyze_source
    from dslc.lang.loader import load_rules
    from dslc.match.compiler import compile_pack
    from dslc.match.matcher import match_file

    (tmp_path / "p.adr").write_text(RESIDUAL_RULE.format(option=option))
    result = load_rules([str(tmp_path / "p.adr")])
    assert not result.diagnostics, result.diagnostics
    compiled = compile_pack(result.packs[0], result.compiled)
    assert ("(commutative)" in compiled.dump()) == swapped_matches
    for text, expected in (("y + res", True), ("res + y", swapped_matches)):
        facts = analyze_source(RESIDUAL.format(sum=text), "m.py")
        assert bool(match_file(compiled, facts)) == expected, text


def _load_adopter():
    result = load_rules([str(PACK)])
    errors = [d for d in result.diagnostics if getattr(d, "severity", "error") == "error"]
    assert not errors, errors
    [pack] = result.packs
    return pack


def test_adopter_dumps_are_up_to_date():
    """tests/compiled/<rule>.txt: the dump of each adopter rule (DSLC_UPDATE_GOLDEN=1 rewrites)."""
    pack = _load_adopter()
    compiled = compile_rules(pack.rules)
    update = os.environ.get("DSLC_UPDATE_GOLDEN") == "1"
    stale = []
    expected_files = set()
    for c in compiled.rules:
        f = GOLDEN / f"{c.rule.name}.txt"
        expected_files.add(f.name)
        text = c.dump() + "\n"
        if update:
            GOLDEN.mkdir(exist_ok=True)
            f.write_text(text)
        elif not f.exists() or f.read_text() != text:
            stale.append(f.name)
    assert not stale, f"stale compiled dumps {stale}: rerun with DSLC_UPDATE_GOLDEN=1 and review the diff"
    assert {f.name for f in GOLDEN.glob("*.txt")} == expected_files
    assert len(compiled.rules) == 9
