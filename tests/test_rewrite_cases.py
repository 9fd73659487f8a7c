"""Rewriter cases: black-style case files (input half, `# output` half) plus refusals.

The facts come from `rewrite_cases/kit.py` (a stand-in analysis for simple
code) and the matches are built by hand, so these tests exercise the rewriter
alone.  `DSLC_UPDATE_GOLDEN=1` rewrites the `# output` halves.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "rewrite_cases"
sys.path.insert(0, str(CASES))

from kit import analyze, make_match  # noqa: E402
from rules import (  # noqa: E402
    BERT_ATTENTION, CONV_BN, DROPOUT_LAYERNORM, DROPOUT_LAYERNORM_REUSE, SOFTMAX, rule, V,
)

from dslc.match import ir  # noqa: E402
from dslc.analysis.model import Value  # noqa: E402
from dslc.rewrite.rewriter import rewrite_source  # noqa: E402
from rewrite_support import self_output  # noqa: E402

OUTPUT_MARK = "# output\n"


def E(text):
    return ir.Bound(text, "expr")


DLN_BINDINGS = {
    "x": "hidden_states", "y": "hidden_states", "res": "input_tensor", "z": "temp_1", "out": "hidden_states",
    "p": E("config.hidden_dropout_prob"), "h": E("config.hidden_size"), "eps": E("config.layer_norm_eps"),
}
DLN_INIT = {"drop": "dropout", "norm": "LayerNorm"}


def dln(facts, rule=DROPOUT_LAYERNORM, cls="BertSelfOutput", bindings=None, **kw):
    return make_match(rule, facts, cls, ["dropout", "+", "LayerNorm"], {**DLN_BINDINGS, **(bindings or {})}, DLN_INIT, **kw)


def conv_bn(facts, k):
    cfg = E("config.fusion_hidden_size")
    return make_match(
        CONV_BN, facts, "DPTPreActResidualLayer", [f"convolution{k}", f"batch_norm{k}"],
        {"x": "hidden_state", "h": "hidden_state", "o": "hidden_state", "cin": cfg, "cout": cfg, "k": ir.Bound("3", "const", 3), "c": cfg},
        {"conv": f"convolution{k}", "bn": f"batch_norm{k}"},
    )


def softmax_match(facts, cls, extras=None):
    return make_match(SOFTMAX, facts, cls, ["call:torch.nn.functional.softmax"], {"x": "scores", "y": "probs"}, {}, extras=extras or {})


# case name -> how to match its input
CASE_MATCHES = {
    "bert_new_attr": lambda f: [dln(f)],
    "bert_reuse_attr": lambda f: [dln(f, rule=DROPOUT_LAYERNORM_REUSE)],
    "dpt_hoist": lambda f: [conv_bn(f, 1), conv_bn(f, 2)],
    "softmax_dtype": lambda f: [softmax_match(f, "Attn", {0: (("dtype", Value("torch.float32", "attr")),)})],
    "module_replacement": lambda f: [make_match(BERT_ATTENTION, f, "BertAttention", ["self"], {"x": "hidden_states", "o": "temp_1", "config": E("config"), "pe": E("position_embedding_type")}, {"attn": "self"})],
    "crlf_tabs": lambda f: [dln(f)],
}


def split_case(name):
    text = (CASES / f"{name}.py").read_bytes().decode("utf-8")
    mark = text.replace("\r\n", "\n").index(OUTPUT_MARK)
    # Case files keep their own newline style: find the marker in the raw text.
    raw_mark = text.index("# output")
    source = text[:raw_mark]
    expected = text[raw_mark:].split("\n", 1)[1] if mark >= 0 else ""
    return source, expected


@pytest.mark.parametrize("name", sorted(CASE_MATCHES))
def test_case(name):
    source, expected = split_case(name)
    facts = analyze(source)
    result = rewrite_source(source, facts, CASE_MATCHES[name](facts))
    assert [o.reason for o in result.outcomes if o.status != "applied"] == []
    assert result.new_source is not None
    ast.parse(result.new_source)
    if os.environ.get("DSLC_UPDATE_GOLDEN"):
        path = CASES / f"{name}.py"
        path.write_bytes((source + "# output" + ("\r\n" if "\r\n" in source else "\n") + result.new_source).encode("utf-8"))
        return
    assert result.new_source == expected


def test_bert_matches_paper_figure_1():
    source, _ = split_case("bert_new_attr")
    new = rewrite_source(source, analyze(source), [dln(analyze(source))]).new_source
    assert "self.dropout_add_layernorm = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)" in new
    assert "hidden_states = self.dropout_add_layernorm(hidden_states, input_tensor)" in new
    assert "self.dropout(" not in new and "nn.LayerNorm(" not in new
    assert new.count("from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm") == 1


def test_dpt_hoist_with_identical_branches_keeps_the_call_and_drops_the_if():
    """Hoisting would give `if c: h = conv(h) else: h = conv(h)`: the call stays, the `if` goes."""
    source, _ = split_case("dpt_hoist")
    new = rewrite_source(source, analyze(source), [conv_bn(analyze(source), 1)]).new_source
    tree = ast.parse(new)
    fwd = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward")
    assert "self.convolution1 = ConvBn2d(nn.Conv2d(" in new
    body = [ast.unparse(s) for s in fwd.body]
    assert "hidden_state = self.convolution1(hidden_state)" in body
    assert "batch_norm1" not in ast.unparse(fwd)
    assert not [s for s in fwd.body if isinstance(s, ast.If) and "convolution1" in ast.unparse(s)]


# ---------------------------------------------------------------------------
# Refusals, one per reason


def bert(tail="out", extra=""):
    return self_output("BertSelfOutput", tail=tail) + extra


def skipped(source, matches_of):
    facts = analyze(source)
    matches = matches_of(facts)
    result = rewrite_source(source, facts, matches if isinstance(matches, list) else [matches])
    assert result.new_source is None
    (outcome,) = result.outcomes
    assert outcome.status == "skipped"
    return outcome.reason


def dln_dropped(facts, **kw):
    return dln(facts, bindings={"y": "dropped", "out": "out", "x": "hidden_states"}, **kw)


def test_clean_variant_applies():
    source = bert()
    facts = analyze(source)
    result = rewrite_source(source, facts, [dln_dropped(facts)])
    assert result.outcomes[0].status == "applied"
    assert "out = self.dropout_add_layernorm(hidden_states, input_tensor)" in result.new_source
    assert "dropped" not in result.new_source


def test_refuses_intermediate_read_after_match():
    reason = skipped(bert(tail="out, dropped"), dln_dropped)
    assert reason == "intermediate `dropped` (line 14) is read at line 16 after the match"


def test_refuses_input_redefined_between():
    source = bert().replace("        out = self.LayerNorm", "        hidden_states = hidden_states * 2\n        out = self.LayerNorm")
    reason = skipped(source, dln_dropped)
    assert "`hidden_states` is reassigned at line 15" in reason


def test_refuses_contradictory_guards():
    source = '''import torch.nn as nn


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.use_bn = True
        self.conv = nn.Conv2d(3, 3, kernel_size=3)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        if self.use_bn:
            x = self.conv(x)
        if not self.use_bn:
            x = self.bn(x)
        return x
'''
    facts = analyze(source)
    cls = facts.classes[0]
    index = next(i for i, p in enumerate(cls.paths) if not any(g.negated for g in p.guards))

    def matches(f):
        three = ir.Bound("3", "const", 3)
        return [make_match(CONV_BN, f, "M", ["conv", "bn"], {"x": "x", "h": "x", "o": "x", "cin": three, "cout": three, "k": three, "c": three},
                           {"conv": "conv", "bn": "bn"}, path_index=index)]
    reason = skipped(source, matches)
    assert reason.startswith("contradictory guards: `self.use_bn` (line 12)")


def test_refuses_attribute_used_in_another_method():
    # (A shared parameter-free layer such as `self.dropout` is kept instead:
    # tests/test_safety_issue8.py.)
    source = bert(extra="\n    def extra(self, x):\n        return self.LayerNorm(x)\n")
    reason = skipped(source, dln_dropped)
    assert reason == "attribute `self.LayerNorm`, which the rewrite removes, is also used at line 19 (in `extra`)"


def test_refuses_attribute_assigned_outside_init():
    source = bert(extra="\n    def reset(self):\n        self.LayerNorm = None\n")
    reason = skipped(source, dln_dropped)
    assert reason == "attribute `self.LayerNorm` is assigned outside `__init__` at line 19 (in `reset`)"


def test_refuses_unknown_static_fact():
    where_rule = rule("needs_const", init=DROPOUT_LAYERNORM.init, forward=DROPOUT_LAYERNORM.forward,
                      where=[ir.Constraint(V("p"), "==", (0.1,))])
    reason = skipped(bert(), lambda f: [dln_dropped(f, rule=where_rule)])
    assert reason == "`$p` must be == 0.1 but is `config.hidden_dropout_prob`, not known statically"


def test_refuses_matcher_conflict():
    reason = skipped(bert(), lambda f: [dln_dropped(f, conflict="overlaps adopter:other at line 14")])
    assert reason == "overlaps adopter:other at line 14"


SOFTMAX_SRC = '''import torch
import torch.nn as nn
from torch.nn import functional as F


class Attn(nn.Module):
    def forward(self, scores):
        probs = F.softmax(scores, dim=-1{extra})
        return probs
'''


def test_softmax_extra_kwarg_skipped():
    source = SOFTMAX_SRC.format(extra=", _stacklevel=5")
    reason = skipped(source, lambda f: [softmax_match(f, "Attn", {0: (("_stacklevel", Value("5", "const", 5)),)})])
    assert reason == "argument `_stacklevel=5` of the call at line 8 has no counterpart in the target"


def test_softmax_plain_and_name_clash():
    source = SOFTMAX_SRC.format(extra="").replace("return probs", "softmax = probs\n        return softmax")
    facts = analyze(source)
    new = rewrite_source(source, facts, [softmax_match(facts, "Attn")]).new_source
    assert "import xformers.triton.softmax\n" in new
    assert "probs = xformers.triton.softmax.softmax(scores)" in new


def test_existing_import_reused():
    source = "from xformers.triton.softmax import softmax as tsm\n" + SOFTMAX_SRC.format(extra="")
    facts = analyze(source)
    new = rewrite_source(source, facts, [softmax_match(facts, "Attn")]).new_source
    assert "probs = tsm(scores)" in new
    assert new.count("import") == source.count("import")


def test_crossing_methods_skipped():
    source = bert()
    facts = analyze(source)
    m = dln_dropped(facts)
    first = m.nodes[0]
    moved = type(first)(**{**{f: getattr(first, f) for f in first.__dataclass_fields__}, "stmt": type(first.stmt)(
        "_helper", first.stmt.owner, first.stmt.index_path, first.stmt.lines, first.stmt.col, first.stmt.blocks)})
    import dataclasses
    m = dataclasses.replace(m, nodes=(moved,) + m.nodes[1:])
    result = rewrite_source(source, facts, [m])
    assert result.outcomes[0].status == "skipped"
    assert result.outcomes[0].reason.startswith("the match crosses methods `_helper` and `forward`")


def test_one_bad_match_does_not_block_others():
    source = bert(extra="\n    def extra(self, x):\n        return self.LayerNorm(x)\n")
    source += '''

class Attn(nn.Module):
    def forward(self, scores):
        probs = nn.functional.softmax(scores, dim=-1)
        return probs
'''
    facts = analyze(source)
    result = rewrite_source(source, facts, [dln_dropped(facts), softmax_match(facts, "Attn")])
    assert [o.status for o in result.outcomes] == ["skipped", "applied"]
    assert "probs = softmax(scores)" in result.new_source
    assert "self.dropout(hidden_states)" in result.new_source


def test_when_wraps_init_and_second_run_is_not_a_location():
    when_rule = rule("dln_when", init=DROPOUT_LAYERNORM_REUSE.init, forward=None, options=[("when", "$h > 8")])
    source = bert()
    facts = analyze(source)
    m = make_match(when_rule, facts, "BertSelfOutput", [], DLN_BINDINGS, DLN_INIT)
    result = rewrite_source(source, facts, [m])
    assert result.outcomes[0].status == "applied", result.outcomes[0].reason
    new = result.new_source
    assert "        if config.hidden_size > 8:\n            self.LayerNorm = FusedDropoutAddLayerNorm(" in new
    assert "        else:\n            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)\n            self.dropout = nn.Dropout(" in new
    facts2 = analyze(new)
    m2 = make_match(when_rule, facts2, "BertSelfOutput", [], DLN_BINDINGS, DLN_INIT)
    again = rewrite_source(new, facts2, [m2])
    assert again.new_source is None
    assert again.outcomes[0].reason.startswith("not a location")


def test_refuses_intermediate_read_between_nodes():
    source = bert().replace("        out = self.LayerNorm", "        print(dropped.shape)\n        out = self.LayerNorm")
    reason = skipped(source, dln_dropped)
    assert reason == "intermediate `dropped` (line 14) is read at line 15 between the matched statements"


def test_refuses_inherited_helper():
    source = bert()
    facts = analyze(source)
    m = dln_dropped(facts)
    import dataclasses
    nodes = tuple(dataclasses.replace(n, stmt=dataclasses.replace(n.stmt, owner="Base")) for n in m.nodes)
    result = rewrite_source(source, facts, [dataclasses.replace(m, nodes=nodes)])
    assert result.outcomes[0].reason == (
        "the matched code at line 14 is `Base.forward`, inherited; editing it would change every class that shares it")


def test_match_breaking_the_parse_is_skipped_others_apply():
    source = SOFTMAX_SRC.format(extra="") + '''

class Other(nn.Module):
    def forward(self, scores):
        probs = F.softmax(scores, dim=-1)
        return probs
'''
    facts = analyze(source)
    bad = make_match(SOFTMAX, facts, "Attn", ["call:torch.nn.functional.softmax"], {"x": ir.Bound("scores +", "expr"), "y": "probs"}, {})
    good = softmax_match(facts, "Other")
    result = rewrite_source(source, facts, [bad, good])
    assert [o.status for o in result.outcomes] == ["skipped", "applied"]
    assert result.outcomes[0].reason.startswith("the rewrite would not parse (line 8:")
    assert "        probs = softmax(scores)\n" in result.new_source
    assert "F.softmax(scores, dim=-1)" in result.new_source


def test_same_location_twice_is_edited_once():
    source = bert()
    facts = analyze(source)
    result = rewrite_source(source, facts, [dln_dropped(facts), dln_dropped(facts)])
    assert [o.status for o in result.outcomes] == ["applied", "skipped"]
    assert result.outcomes[1].reason.startswith("same location as the match at line ")
    assert result.new_source.count("self.dropout_add_layernorm(") == 1


def test_refuses_read_between_when_names_are_reused():
    source = bert().replace(
        "        dropped = self.dropout(hidden_states)\n        out = self.LayerNorm(dropped + input_tensor)",
        "        hidden_states = self.dropout(hidden_states)\n        print(hidden_states)\n        hidden_states = self.LayerNorm(hidden_states + input_tensor)",
    ).replace("return out", "return hidden_states")
    reason = skipped(source, lambda f: [dln(f, bindings={"out": "hidden_states"})])
    assert reason == "intermediate `hidden_states` (line 14) is read at line 15 between the matched statements"


def test_layers_inside_containers_are_skipped():
    import dataclasses
    source = bert()
    facts = analyze(source)
    m = dln_dropped(facts)
    inits = dict(m.init_nodes)
    inits["drop"] = dataclasses.replace(inits["drop"], attr="block.1", container="block")
    result = rewrite_source(source, facts, [dataclasses.replace(m, init_nodes=inits)])
    assert result.outcomes[0].reason == (
        "`self.block.1` lives inside the container `self.block` (line 10); the emitter does not rewrite layers inside containers")
