"""Golden outputs of the whole pipeline on the paper's examples, and refusals.

examples/bert_self_output.py -> tests/golden/apply/bert_self_output.py (paper
Fig. 1), examples/dpt_preact_residual.py -> tests/golden/apply/... (Fig. 5(b):
the Conv2d hoisted into both branches).  `DSLC_UPDATE_GOLDEN=1` regenerates.
Each golden output is also checked for idempotence: analysing and matching it
again finds nothing to apply.
"""

from __future__ import annotations

import ast
import os
import types
from pathlib import Path

import pytest

from dslc.analysis import analyze_source
from dslc.match.compiler import compile_pack
from dslc.lang.loader import load_rules
from dslc.match.matcher import match_file
from dslc.rewrite.rewriter import rewrite_source

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
EXPECTED = Path(__file__).resolve().parent / "golden" / "apply"


@pytest.fixture(scope="module")
def compiled():
    result = load_rules([str(REPO / "rulepacks" / "adopter.adr")])
    assert result.packs, result.diagnostics
    return compile_pack(result.packs[0])


def run(compiled, source: str, path: str = "model.py"):
    facts = analyze_source(source, path)
    return rewrite_source(source, facts, match_file(compiled, facts), path=path)


@pytest.mark.parametrize("name", ["bert_self_output", "dpt_preact_residual"])
def test_golden(compiled, name):
    source = (EXAMPLES / f"{name}.py").read_text()
    result = run(compiled, source, f"examples/{name}.py")
    assert result.outcomes and all(o.status == "applied" for o in result.outcomes), result.outcomes
    assert result.new_source is not None
    golden = EXPECTED / f"{name}.py"
    if os.environ.get("DSLC_UPDATE_GOLDEN"):
        golden.write_text(result.new_source)
    assert result.new_source == golden.read_text()
    again = run(compiled, result.new_source, f"examples/{name}.py")
    assert again.new_source is None
    assert [o for o in again.outcomes if o.status == "applied"] == []


def test_bert_is_figure_1(compiled):
    new = (EXPECTED / "bert_self_output.py").read_text()
    assert "from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm\n" in new
    assert "        self.LayerNorm = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)\n" in new
    assert "self.dropout" not in new
    forward = new[new.index("    def forward"):new.index("class Config")]
    assert forward.splitlines()[1:4] == [
        "        hidden_states = self.dense(hidden_states)",
        "        hidden_states = self.LayerNorm(hidden_states, input_tensor)",
        "        return hidden_states",
    ]


def test_dpt_is_figure_5b_and_equivalent(compiled):
    torch = pytest.importorskip("torch")
    source = (EXAMPLES / "dpt_preact_residual.py").read_text()
    new = (EXPECTED / "dpt_preact_residual.py").read_text()
    tree = ast.parse(new)
    forward = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward")
    # Fig. 5b writes `if c: h = conv(h) else: h = conv(h)`; both branches are the
    # same code, so the call stays as it was and only the BatchNorm `if` goes.
    assert not [s for s in forward.body if isinstance(s, ast.If)]
    body = [ast.unparse(s) for s in forward.body]
    assert "hidden_state = self.convolution1(hidden_state)" in body
    assert "hidden_state = self.convolution2(hidden_state)" in body

    def load(text, name):
        module = types.ModuleType(name)
        exec(compile(text, name, "exec"), module.__dict__)
        return module

    old_mod, new_mod = load(source, "dpt_old"), load(new, "dpt_new")
    for use_bn in (True, False):
        config = old_mod.Config()
        config.use_batch_norm_in_fusion_residual = use_bn
        torch.manual_seed(0)
        before = old_mod.DPTPreActResidualLayer(config).eval()
        for module in before.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_()
                module.running_var.uniform_(0.5, 2.0)
        after = new_mod.DPTPreActResidualLayer(config).eval()
        after.load_state_dict(before.state_dict(), strict=True)  # the pre-hook maps old names
        x = torch.randn(2, config.fusion_hidden_size, 8, 8)
        assert torch.equal(before(x), after(x))


BERT_LIKE = '''import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        dropped = self.dropout(hidden_states)
        out = self.LayerNorm(dropped + input_tensor)
        return {tail}
'''


def test_pipeline_applies_clean_variant(compiled):
    result = run(compiled, BERT_LIKE.format(tail="out"))
    assert [o.status for o in result.outcomes] == ["applied"]
    assert "out = self.LayerNorm(hidden_states, input_tensor)" in result.new_source


def test_pipeline_refuses_intermediate_returned(compiled):
    result = run(compiled, BERT_LIKE.format(tail="out, dropped"))
    assert result.new_source is None
    assert [(o.status, o.reason) for o in result.outcomes] == [
        ("skipped", "intermediate `dropped` (line 12) is read at line 14 after the match")]


def test_pipeline_unconnected_layers_not_matched(compiled):
    source = BERT_LIKE.format(tail="out").replace("self.LayerNorm(dropped + input_tensor)", "self.LayerNorm(hidden_states + input_tensor)")
    result = run(compiled, source)
    assert result.new_source is None
    assert all(o.status == "skipped" for o in result.outcomes)


def test_pipeline_user_layernorm_is_not_torch(compiled):
    source = BERT_LIKE.format(tail="out").replace("import torch\n", "import torch\n\n\nclass LayerNorm(torch.nn.Module):\n    pass\n")
    source = source.replace("nn.LayerNorm(", "LayerNorm(")
    result = run(compiled, source)
    assert result.new_source is None
    assert result.outcomes == ()


SOFTMAX = '''import torch
from torch import nn
import torch.nn.functional as F


def attend(q, k):
    scores = q @ k.transpose(-1, -2)
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
'''


def test_pipeline_softmax_dtype_kept(compiled):
    result = run(compiled, SOFTMAX)
    assert [o.status for o in result.outcomes] == ["applied"], result.outcomes
    assert "    return softmax(scores.to(torch.float32)).to(q.dtype)\n" in result.new_source
    assert "from xformers.triton.softmax import softmax\n" in result.new_source


WHEN_AND_FUSION = '''import torch
from torch import nn
from transformers.activations import ACT2FN


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.linear1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout1 = nn.Dropout(config.hidden_dropout_prob)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states, residual):
        hidden_states = residual + self.dropout1(hidden_states)
        hidden_states = self.norm1(hidden_states)
        hidden_states = self.linear1(hidden_states)
        hidden_states = self.activation(hidden_states)
        return hidden_states
'''


def test_when_region_composes_other_rewrites(compiled):
    """biased_gelu's `when` duplicates the init run that dropout_layernorm also edits:
    both apply (the fusion in both branches), and a second run finds nothing."""
    result = run(compiled, WHEN_AND_FUSION)
    assert sorted((o.match.rule.name, o.status) for o in result.outcomes) == [
        ("biased_gelu", "applied"), ("dropout_layernorm", "applied")], result.outcomes
    new = result.new_source
    assert new.count("self.norm1 = FusedDropoutAddLayerNorm(") == 2
    assert "        if config.hidden_act in (" in new
    assert "            self.activation = FusedBiasGELU(config.intermediate_size, prev_weight=self.linear1.weight)\n" in new
    assert "            self.activation = ACT2FN[config.hidden_act]\n" in new
    again = run(compiled, new)
    assert again.new_source is None
    assert [o.status for o in again.outcomes if o.status == "applied"] == []


GELU_TWO_SITES = '''import torch
from torch import nn
from transformers.activations import ACT2FN


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states, other):
        hidden_states = self.act(self.fc1(hidden_states))
        other = {second}
        return hidden_states, other
'''


def test_biased_gelu_two_call_sites_are_one_location(compiled):
    result = run(compiled, GELU_TWO_SITES.format(second="self.act(self.fc1(other))"))
    assert [(o.status, (o.reason or "")[:31]) for o in result.outcomes] == [
        ("applied", ""), ("skipped", "same location as the match at l")]
    assert "self.act = FusedBiasGELU(config.intermediate_size, prev_weight=self.fc1.weight)" in result.new_source


def test_biased_gelu_linear_used_alone_elsewhere_is_skipped(compiled):
    result = run(compiled, GELU_TWO_SITES.format(second="self.fc1(other)"))
    assert result.new_source is None
    assert [o.reason for o in result.outcomes] == [
        "attribute `self.fc1`, which the rewrite replaces, is also used at line 14 (in `forward`)"]


def test_fused_layer_moves_below_the_layer_it_reads(compiled):
    source = GELU_TWO_SITES.format(second="other").replace(
        "        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)\n        self.act = ACT2FN[config.hidden_act]\n",
        "        self.act = ACT2FN[config.hidden_act]\n        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)\n")
    new = run(compiled, source).new_source
    body = new[new.index("        if config.hidden_act in"):new.index("    def forward")]
    fused = body.index("self.act = FusedBiasGELU(")
    assert body.index("self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)") < fused
    assert run(compiled, new).new_source is None


REVERSE = '''import torch
import torch.nn as nn


class M(nn.Module):
    def __init__(self, use_conv):
        super().__init__()
        self.use_conv = use_conv
        self.conv = nn.Conv2d(3, 3, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        if self.use_conv:
            x = self.conv(x)
        x = self.bn(x)
        return x
'''


def test_later_statement_moves_into_the_branch_and_stays_equivalent(compiled):
    """Fig. 4 mirrored: the BatchNorm after the `if` goes into both branches."""
    torch = pytest.importorskip("torch")
    result = run(compiled, REVERSE)
    assert [o.status for o in result.outcomes] == ["applied"], result.outcomes
    new = result.new_source
    assert ("        if self.use_conv:\n            x = self.conv(x)\n"
            "        else:\n            x = self.bn(x)\n        return x\n") in new
    assert run(compiled, new).new_source is None

    def load(text, name):
        module = types.ModuleType(name)
        exec(compile(text, name, "exec"), module.__dict__)
        return module

    old_mod, new_mod = load(REVERSE, "rev_old"), load(new, "rev_new")
    for use_conv in (True, False):
        torch.manual_seed(0)
        before = old_mod.M(use_conv).eval()
        before.bn.running_mean.uniform_()
        after = new_mod.M(use_conv).eval()
        after.load_state_dict(before.state_dict(), strict=True)
        x = torch.randn(2, 3, 5, 5)
        assert torch.equal(before(x), after(x))


def test_byte_columns_with_non_ascii_text(compiled):
    """`ast` columns count UTF-8 bytes: the edit must still land on the call."""
    source = 'import torch.nn.functional as F\n\n\ndef f(x):\n    y = ("héllo→", F.softmax(x, dim=-1))  # ünïcode\n    return y'
    new = run(compiled, source).new_source
    assert new.endswith('    y = ("héllo→", softmax(x))  # ünïcode\n    return y')
