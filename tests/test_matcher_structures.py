"""The matcher on hand-built model structures (no front end, no analysis)."""

from __future__ import annotations

import logging

import pytest

from dslc.match import ir
from dslc.analysis.model import Guard, Path
from dslc.match.compiler import compile_rules
from dslc.match.matcher import Fail, match_file
from test_matcher_helpers import (
    A, C, K, L, N, O, V, W, bert_self_output, biased_gelu, call, cls, conv_batchnorm,
    dropout_layernorm, facts, init, layer, op, rule, softmax, stmt,
)


def run(rules, f, **kw):
    return match_file(compile_rules(rules), f, **kw)


def clean(matches):
    return [m for m in matches if m.conflict is None]


def test_dropout_layernorm_binds_consistently():
    [m] = run([dropout_layernorm()], facts(bert_self_output()))
    assert m.conflict is None
    assert [n.stmt.lines[0] for n in m.nodes] == [11, 12, 12]
    b = m.bindings
    assert b["drop"] == ir.Bound("dropout", "layer")
    assert b["norm"] == ir.Bound("LayerNorm", "layer")
    assert b["x"].text == "hidden_states" and b["res"].text == "input_tensor"
    assert b["z"].text == "temp_1" and b["out"].text == "hidden_states"
    # init arguments by parameter name
    assert b["p"] == ir.Bound("config.hidden_dropout_prob", "expr")
    assert b["eps"] == ir.Bound("config.layer_norm_eps", "expr")
    assert set(m.init_nodes) == {"drop", "norm"}
    assert m.init_nodes["norm"].attr == "LayerNorm"
    assert m.class_name == "BertSelfOutput" and m.function == "forward" and m.paths == (0,)


def test_default_filled_in_for_absent_keyword():
    c = bert_self_output()
    inits = [init("LayerNorm", "torch.nn.LayerNorm", [A("h")], line=3) if b.attr == "LayerNorm" else b for b in c.init]
    c = cls(c.name, inits, c.paths[0].nodes)
    [m] = run([dropout_layernorm()], facts(c))
    assert m.bindings["eps"] == ir.Bound("1e-05", "const", 1e-05)


def test_commutative_add():
    [m] = run([dropout_layernorm()], facts(bert_self_output(first="input_tensor", second="hidden_states")))
    assert m.bindings["res"].text == "input_tensor"


def test_non_commutative_op_keeps_order():
    r = dropout_layernorm()
    fwd = list(r.forward.source)
    fwd[1] = O("-", [V("y"), V("res")], "z")
    r2 = rule("sub", init=r.init.source, forward=fwd)
    c = bert_self_output(first="input_tensor", second="hidden_states")
    c2 = cls(c.name, c.init, [op(12, "-", ["input_tensor", "hidden_states"], "temp_1") if n.kind == "op" else n for n in c.paths[0].nodes])
    assert run([r2], facts(c2)) == []


def test_rebinding_between_nodes_kills_the_match():
    # hidden_states (bound to $y) is rewritten by an unrelated statement.
    c = bert_self_output(between=[stmt(11, reads=["hidden_states"], writes=["hidden_states"])])
    assert run([dropout_layernorm()], facts(c)) == []


def test_unrelated_statement_between_is_skipped():
    c = bert_self_output(between=[stmt(11, reads=["hidden_states"], writes=["shape"]), stmt(11, reads=["shape"])])
    assert len(run([dropout_layernorm()], facts(c))) == 1


def test_data_flow_must_connect():
    # The add does not consume the dropout's output.
    c = bert_self_output(first="other", second="input_tensor")
    assert run([dropout_layernorm()], facts(c)) == []


def test_same_input_required():
    r = rule("same_in",
             init=[L("torch.nn.Linear", [V("a"), V("b")], out=["q"]), L("torch.nn.Linear", [V("c"), V("d")], out=["k"])],
             forward=[L(var="q", args=[V("x")], out=["o1"]), L(var="k", args=[V("x")], out=["o2"])])
    inits = [init("wq", "torch.nn.Linear", [C(4), C(4)]), init("wk", "torch.nn.Linear", [C(4), C(4)], line=2)]
    good = cls("G", inits, [layer(5, "wq", "torch.nn.Linear", ["h"], ["q"]), layer(6, "wk", "torch.nn.Linear", ["h"], ["k"])])
    bad = cls("B", inits, [layer(5, "wq", "torch.nn.Linear", ["h"], ["q"]), layer(6, "wk", "torch.nn.Linear", ["g"], ["k"])])
    assert len(run([r], facts(good))) == 1
    assert run([r], facts(bad)) == []


def test_value_identity_not_just_name():
    # x = drop(x); y = x + x: $x (before) and $y (after) are different values.
    r = rule("r", init=[L("torch.nn.Dropout", [V("p")], out=["drop"])],
             forward=[L(var="drop", args=[V("x")], out=["y"]), O("+", [V("y"), V("x")], "z")])
    c = cls("C", [init("drop", "torch.nn.Dropout", [C(0.1)])],
            [layer(5, "drop", "torch.nn.Dropout", ["x"], ["x"]), op(6, "+", ["x", "x"], "z")])
    assert run([r], facts(c)) == []
    c2 = cls("C", [init("drop", "torch.nn.Dropout", [C(0.1)])],
             [layer(5, "drop", "torch.nn.Dropout", ["x"], ["y"]), op(6, "+", ["y", "x"], "z")])
    assert len(run([r], facts(c2))) == 1


def test_wildcard_matches_any_one_node():
    r = rule("w", init=[L("torch.nn.Dropout", [V("p")], out=["drop"]), L("torch.nn.LayerNorm", [V("h")], out=["norm"])],
             forward=[L(var="drop", args=[V("x")], out=["y"]), W(out=["z"]), L(var="norm", args=[V("z")], out=["o"])])
    [m] = run([r], facts(bert_self_output()))
    assert m.nodes[1].kind == "op" and m.bindings["z"].text == "temp_1"
    # A wildcard never matches an opaque statement.
    r2 = rule("w2", init=[L("torch.nn.Dropout", [V("p")], out=["drop"])],
              forward=[W(out=["a"]), L(var="drop", args=[V("a")], out=["y"])])
    c = cls("C", [init("drop", "torch.nn.Dropout", [C(0.1)])],
            [stmt(4, writes=["h"]), layer(5, "drop", "torch.nn.Dropout", ["h"], ["y"])])
    assert run([r2], facts(c)) == []
    c2 = cls("C", [init("drop", "torch.nn.Dropout", [C(0.1)])],
             [call(4, "torch.tanh", ["x"], ["h"]), layer(5, "drop", "torch.nn.Dropout", ["h"], ["y"])])
    [m] = run([r2], facts(c2))
    assert m.nodes[0].type == "torch.tanh"


def test_type_is_qualified_not_spelled():
    c = bert_self_output()
    inits = [init("LayerNorm", "m.LayerNorm", [A("h")], line=3) if b.attr == "LayerNorm" else b for b in c.init]
    nodes = [layer(12, "LayerNorm", "m.LayerNorm", ["temp_1"], ["hidden_states"]) if n.attr == "LayerNorm" else n for n in c.paths[0].nodes]
    assert run([dropout_layernorm()], facts(cls(c.name, inits, nodes))) == []


def test_layer_must_be_initialised_in_init():
    c = bert_self_output()
    c = cls(c.name, [b for b in c.init if b.attr != "dropout"], c.paths[0].nodes)
    assert run([dropout_layernorm()], facts(c)) == []


def test_softmax_dim_positional_or_keyword_and_extras():
    fn = [
        call(3, "torch.nn.functional.softmax", ["s"], ["a"], kwargs=[("dim", C(-1))]),
        call(4, "torch.nn.functional.softmax", ["s", C(-1)], ["b"]),
        call(5, "torch.nn.functional.softmax", ["s"], ["c"], kwargs=[("dim", N("d"))]),
        call(6, "torch.nn.functional.softmax", ["s"], ["e"], kwargs=[("dim", C(-1)), ("dtype", A("torch.float32"))]),
        call(7, "torch.softmax", ["s", C(-1)], ["f"]),
        call(8, "torch.nn.functional.softmax", ["s"], ["g"], kwargs=[("dim", C(1))]),
    ]
    found = run([softmax()], facts(functions=[("attn", (Path((), tuple(fn)),))]))
    ms = clean(found)
    assert [m.nodes[0].stmt.lines[0] for m in ms] == [3, 4, 6]
    # dim held in a variable: not a location, kept marked so apply can say why.
    [var] = [m for m in found if m.conflict]
    assert var.nodes[0].stmt.lines[0] == 5 and "needs the literal -1" in var.conflict
    assert ms[2].extras == {0: (("dtype", A("torch.float32")),)}
    assert ms[0].class_name is None and ms[0].paths_of == "function:attn"


def test_initless_rule_runs_in_every_method_initful_only_in_forward():
    helper = ("helper", (Path((), (call(20, "torch.nn.functional.softmax", ["s", C(-1)], ["p"], method="helper"),)),))
    c = cls("C", [], [call(10, "torch.nn.functional.softmax", ["s"], ["p"], kwargs=[("dim", C(-1))])], other_paths=[helper])
    ms = run([softmax()], facts(c))
    assert sorted((m.nodes[0].stmt.lines[0], m.paths_of) for m in ms) == [(10, None), (20, "method:helper")]
    # dropout_layernorm in a non-forward method: not a location.
    b = bert_self_output()
    b = cls(b.name, b.init, [], other_paths=[("other", b.paths)])
    assert run([dropout_layernorm()], facts(b)) == []


def test_conv_batchnorm_across_if_and_same_location_on_two_paths():
    inits = [init("conv", "torch.nn.Conv2d", [C(3), C(8), C(3)]),
             init("bn", "torch.nn.BatchNorm2d", [C(8)], line=2, guards=[Guard("self.use_bn")])]
    g = Guard("self.use_bn", lines=(6, 6))
    p1 = Path((g,), (layer(5, "conv", "torch.nn.Conv2d", ["x"], ["h"]), layer(7, "bn", "torch.nn.BatchNorm2d", ["h"], ["h"]), stmt(8, reads=["h"])))
    p2 = Path((Guard("self.use_bn", True, (6, 6)),), (layer(5, "conv", "torch.nn.Conv2d", ["x"], ["h"]), stmt(8, reads=["h"])))
    p3 = Path((g, Guard("self.other")), p1.nodes)
    [m] = run([conv_batchnorm()], facts(cls("C", inits, p1, p2, p3)))
    assert m.paths == (0, 2)
    assert m.bindings["cin"].value == 3 and m.bindings["k"].value == 3
    # affine=False is not a location
    inits2 = [inits[0], init("bn", "torch.nn.BatchNorm2d", [C(8)], [("affine", C(False))], line=2)]
    assert run([conv_batchnorm()], facts(cls("C", inits2, p1))) == []


def test_conditional_init_other_type_is_allowed_same_type_must_agree():
    lin = init("dense", "torch.nn.Linear", [A("c.h"), A("c.i")])
    act = init("act", "transformers.activations.ACT2FN", [A("config.hidden_act")], kind="subscript", line=3, guards=[Guard("isinstance(config.hidden_act, str)")])
    other = init("act", None, [], kind="other", line=5, guards=[Guard("isinstance(config.hidden_act, str)", True)])
    nodes = [layer(10, "dense", "torch.nn.Linear", ["h"], ["h"]), layer(11, "act", "transformers.activations.ACT2FN", ["h"], ["h"])]
    [m] = run([biased_gelu()], facts(cls("I", [lin, act, other], nodes)))
    assert m.conflict is None and m.init_nodes["act"] is act
    assert m.bindings["key"].text == "config.hidden_act"
    # bias=config.x: the constraint needs a static value -> kept, marked.
    lin2 = init("dense", "torch.nn.Linear", [A("c.h"), A("c.i")], [("bias", A("config.bias"))])
    [m2] = run([biased_gelu()], facts(cls("I", [lin2, act, other], nodes)))
    assert m2.conflict and "static" in m2.conflict
    # bias=False: not a match at all.
    lin3 = init("dense", "torch.nn.Linear", [A("c.h"), A("c.i")], [("bias", C(False))])
    assert run([biased_gelu()], facts(cls("I", [lin3, act, other], nodes))) == []
    # Two LayerNorm bindings that disagree on eps: no match.
    c = bert_self_output()
    extra = init("LayerNorm", "torch.nn.LayerNorm", [A("config.hidden_size")], [("eps", C(1e-6))], line=6)
    assert run([dropout_layernorm()], facts(cls(c.name, list(c.init) + [extra], c.paths[0].nodes))) == []


def test_overlap_earlier_rule_wins_loser_marked():
    r1 = rule("first", init=[L("torch.nn.Dropout", [V("p")], out=["d"])], forward=[L(var="d", args=[V("x")], out=["y"])])
    r2 = dropout_layernorm()
    ms = run([r1, r2], facts(bert_self_output()))
    assert [(m.rule.name, m.conflict is None) for m in ms] == [("first", True), ("dropout_layernorm", False)]
    assert "overlaps t:first" in ms[1].conflict


def test_init_only_rule_needs_a_forward_call():
    r = rule("bsa", init=[L("transformers.models.bert.modeling_bert.BertSelfAttention", [V("config")],
                            [("position_embedding_type", V("pet"))], out=["attn"])])
    b = init("self", "transformers.models.bert.modeling_bert.BertSelfAttention", [N("config")], [("position_embedding_type", N("position_embedding_type"))])
    called = cls("BertAttention", [b], [layer(9, "self", b.type, ["h", "m"], ["o"])])
    uncalled = cls("BertAttention", [b], [stmt(9)])
    [m] = run([r], facts(called))
    assert m.bindings["pet"].text == "position_embedding_type" and m.nodes == ()
    assert run([r], facts(uncalled)) == []
    # Default filled in when not passed.
    b2 = init("self", b.type, [N("config")])
    [m] = run([r], facts(cls("X", [b2], [layer(9, "self", b.type, ["h"], ["o"])])))
    assert m.bindings["pet"] == ir.Bound("None", "const", None)


def test_detect_only_forward_with_rest_arguments():
    r = rule("bsa", init=[L("transformers.models.bert.modeling_bert.BertSelfAttention", [V("config"), K(...)], out=["attn"])],
             forward=[ir.PatNode("layer", ir.Callee(var=V("attn")), None, (K(...),), (), (V("_"),))])
    b = init("self", "transformers.models.bert.modeling_bert.BertSelfAttention", [N("config")])
    c = cls("BertAttention", [b], [layer(9, "self", b.type, ["h", "m"], ["o"], kwargs=[("output_attentions", N("oa"))])])
    [m] = run([r], facts(c))
    assert m.nodes[0].attr == "self"
    assert dict(m.extras[0]) == {"#0": N("h"), "#1": N("m"), "output_attentions": N("oa")}


def test_combined_matcher_tries_nodes_only_against_their_anchor():
    rules = [dropout_layernorm(), softmax(), conv_batchnorm(), biased_gelu()]
    f = facts(bert_self_output())
    stats: dict = {}
    ms = match_file(compile_rules(rules), f, stats=stats)
    assert [m.rule.name for m in ms] == ["dropout_layernorm"]
    # Only the Dropout node carries an anchor of these rules (dropout_layernorm);
    # the Linear anchors biased_gelu, which is not run: the class holds no gelu
    # (`matcher._scope_names`).  The op, the LayerNorm and the stmt: none.
    assert stats["attempts"] == 1
    # Many more rules on other anchors: the attempts on this file do not grow.
    many = rules + [rule(f"sm{i}", forward=[L(f"torch.other{i}", [V("x")], out=["y"])]) for i in range(200)]
    stats2: dict = {}
    match_file(compile_rules(many), f, stats=stats2)
    assert stats2["attempts"] == 1


def test_fail_is_falsy_with_reason_and_debug_env(monkeypatch, capsys, caplog):
    f = Fail("needs {}", "x")
    assert not f and f.reason == "needs x"
    monkeypatch.setenv("DSLC_MATCH_DEBUG", "m.py:12")
    caplog.set_level(logging.DEBUG, logger="dslc.match.matcher")
    c = bert_self_output(first="other")
    assert run([dropout_layernorm()], facts(c)) == []
    assert capsys.readouterr().err == ""  # logged, not printed
    assert "m.py:12: t:dropout_layernorm: pattern node 1" in caplog.text and "$y is bound to" in caplog.text


def test_outputs_count_must_agree():
    r = rule("r", forward=[L("torch.matmul", [V("a"), V("b")], out=["c", "d"])])
    fn = [call(3, "torch.matmul", ["q", "k"], ["s"])]
    assert run([r], facts(functions=[("f", (Path((), tuple(fn)),))])) == []


def test_sequential_elements_match_and_two_calls_are_one_location():
    seq = init("block", "torch.nn.Sequential", [A("nn.Conv2d(3, 8, 3)"), A("nn.BatchNorm2d(8)"), A("nn.ReLU()")])
    conv = init("block.0", "torch.nn.Conv2d", [C(3), C(8), C(3)])
    bn = init("block.1", "torch.nn.BatchNorm2d", [C(8)])
    relu = init("block.2", "torch.nn.ReLU")
    conv, bn, relu = (b.__class__(**{**{f: getattr(b, f) for f in b.__slots__}, "container": "block"}) for b in (conv, bn, relu))
    nodes = [layer(10, "block", "torch.nn.Sequential", ["x"], ["y"]), layer(11, "block", "torch.nn.Sequential", ["y"], ["z"])]
    [m] = run([conv_batchnorm()], facts(cls("C", [seq, conv, bn, relu], nodes)))
    assert [n.attr for n in m.nodes] == ["block.0", "block.1"]
    assert m.bindings["x"].text == "x" and m.bindings["h"].text == "block.0:out"
    assert m.nodes[0].stmt.lines == (10, 10)


def test_helper_passed_by_forward_is_in_scope():
    lin = init("dense", "torch.nn.Linear", [A("c.h"), A("c.i")])
    act = init("act", "transformers.activations.ACT2FN", [A("config.hidden_act")], kind="subscript", line=3)
    chunk = [layer(20, "dense", "torch.nn.Linear", ["h"], ["h"], method="ff_chunk"),
             layer(21, "act", "transformers.activations.ACT2FN", ["h"], ["h"], method="ff_chunk")]
    fwd = [call(10, "transformers.pytorch_utils.apply_chunking_to_forward", [A("self.ff_chunk"), "x"], ["o"])]
    fwd[0] = fwd[0].__class__(**{**{f: getattr(fwd[0], f) for f in fwd[0].__slots__}, "reads": frozenset({"x", "self.ff_chunk"})})
    passed = cls("L", [lin, act], fwd, other_paths=[("ff_chunk", (Path((), tuple(chunk)),))])
    [m] = run([biased_gelu()], facts(passed))
    assert m.paths_of == "method:ff_chunk" and m.function == "ff_chunk"
    unrelated = cls("L", [lin, act], [stmt(10, reads=["x"])], other_paths=[("ff_chunk", (Path((), tuple(chunk)),))])
    assert run([biased_gelu()], facts(unrelated)) == []


def test_code_term_matches_source_text():
    r = biased_gelu()
    init_nodes = list(r.init.source)
    init_nodes[1] = L("transformers.activations.ACT2FN", sub=ir.Code("config.hidden_act"), out=["act"])
    r2 = rule("bg", init=init_nodes, forward=r.forward.source)
    lin = init("dense", "torch.nn.Linear", [A("c.h"), A("c.i")])
    nodes = [layer(10, "dense", "torch.nn.Linear", ["h"], ["h"]), layer(11, "act", "transformers.activations.ACT2FN", ["h"], ["h"])]
    good = init("act", "transformers.activations.ACT2FN", [A("config.hidden_act")], kind="subscript", line=3)
    other = init("act", "transformers.activations.ACT2FN", [A("config.activation_function")], kind="subscript", line=3)
    assert len(run([r2], facts(cls("I", [lin, good], nodes)))) == 1
    assert run([r2], facts(cls("I", [lin, other], nodes))) == []


def test_option_commutative_false_keeps_operand_order():
    base = dropout_layernorm()
    strict = ir.Rule(base.pack, base.name, base.description, base.kernels, base.contract, base.init, base.forward,
                     options=(("commutative", False),))
    assert len(run([strict], facts(bert_self_output()))) == 1
    assert run([strict], facts(bert_self_output(first="input_tensor", second="hidden_states"))) == []


def test_helper_inlined_at_two_call_sites_is_one_location():
    def helper_nodes(site):
        ns = [layer(30, "dropout", "torch.nn.Dropout", ["h"], ["h"], method="_residual"),
              op(31, "+", ["h", "r"], "temp_1", method="_residual"),
              layer(31, "LayerNorm", "torch.nn.LayerNorm", ["temp_1"], ["o"], method="_residual")]
        return [n.__class__(**{**{f: getattr(n, f) for f in n.__slots__}, "inlined_from": (("_residual", (site, site)),)}) for n in ns]
    b = bert_self_output()
    c = cls("C", b.init, helper_nodes(10) + [stmt(12, reads=["o"], writes=["h"])] + helper_nodes(13))
    [m] = run([dropout_layernorm()], facts(c))
    assert m.function == "_residual" and m.paths == (0,)


def test_option_scope_forward_limits_an_initless_rule():
    base = softmax()
    fwd_only = ir.Rule(base.pack, base.name, base.description, base.kernels, base.contract, None, base.forward,
                       options=(("scope", "forward"),))
    helper = ("helper", (Path((), (call(20, "torch.nn.functional.softmax", ["s", C(-1)], ["p"], method="helper"),)),))
    c = cls("C", [], [call(10, "torch.nn.functional.softmax", ["s", C(-1)], ["p"])], other_paths=[helper])
    fn = ("f", (Path((), (call(30, "torch.nn.functional.softmax", ["s", C(-1)], ["p"], method="f"),)),))
    ms = run([fwd_only], facts(c, functions=[fn]))
    assert [m.nodes[0].stmt.lines[0] for m in ms] == [10]
    assert len(run([base], facts(c, functions=[fn]))) == 3


def test_sequential_expansion_can_be_turned_off():
    seq = init("block", "torch.nn.Sequential")
    conv = init("block.0", "torch.nn.Conv2d", [C(3), C(8), C(3)])
    bn = init("block.1", "torch.nn.BatchNorm2d", [C(8)])
    conv, bn = (b.__class__(**{**{f: getattr(b, f) for f in b.__slots__}, "container": "block"}) for b in (conv, bn))
    f = facts(cls("C", [seq, conv, bn], [layer(10, "block", "torch.nn.Sequential", ["x"], ["y"])]))
    assert len(match_file(compile_rules([conv_batchnorm()]), f)) == 1
    assert match_file(compile_rules([conv_batchnorm()]), f, sequential=False) == []
