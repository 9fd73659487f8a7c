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
from pathlib import Path

import pytest

from dslc.analysis import analyze_source
from dslc.match.compiler import compile_pack
from dslc.lang.loader import load_rules
from dslc.match.matcher import match_file
from dslc.rewrite.rewriter import rewrite_source
from rewrite_support import assert_rewrite, load_module, remap_hook, self_output

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

    old_mod, new_mod = load_module(source, "dpt_old"), load_module(new, "dpt_new")
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


def test_pipeline_applies_clean_variant():
    assert_rewrite(self_output("Block", tail="out"), """\
        import torch
        from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm
        from torch import nn
        """ + remap_hook() + """

        class Block(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.dense = nn.Linear(config.hidden_size, config.hidden_size)
                self.LayerNorm = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)
                self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                    ('LayerNorm.layer_norm.weight', 'LayerNorm.weight', False),
                    ('LayerNorm.layer_norm.bias', 'LayerNorm.bias', False),
                )))

            def forward(self, hidden_states, input_tensor):
                hidden_states = self.dense(hidden_states)
                out = self.LayerNorm(hidden_states, input_tensor)
                return out
        """, applied=["dropout_layernorm"])


def test_pipeline_refuses_intermediate_returned():
    assert_rewrite(self_output("Block", tail="out, dropped"), None, skipped=[
        ("dropout_layernorm", "S204", "intermediate `dropped` (line 14) is read at line 16 after the match")])


def test_pipeline_unconnected_layers_not_matched():
    source = self_output("Block", tail="out").replace("self.LayerNorm(dropped + input_tensor)",
                                                      "self.LayerNorm(hidden_states + input_tensor)")
    assert_rewrite(source, None)


def test_pipeline_user_layernorm_is_not_torch():
    source = self_output("Block", tail="out").replace("import torch\n", "import torch\n\n\nclass LayerNorm(torch.nn.Module):\n    pass\n")
    assert_rewrite(source.replace("nn.LayerNorm(", "LayerNorm("), None)


def test_pipeline_softmax_dtype_kept():
    assert_rewrite("""
        import torch
        from torch import nn
        import torch.nn.functional as F


        def attend(q, k):
            scores = q @ k.transpose(-1, -2)
            return F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        """, """
        import torch
        from torch import nn
        import torch.nn.functional as F
        from xformers.triton.softmax import softmax


        def attend(q, k):
            scores = q @ k.transpose(-1, -2)
            return softmax(scores.to(torch.float32)).to(q.dtype)
        """, applied=["softmax"])


def test_when_region_composes_other_rewrites():
    """biased_gelu's `when` duplicates the init run that dropout_layernorm also edits:
    both apply (the fusion in both branches), and a second run finds nothing."""
    assert_rewrite("""
        import torch
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
        """, """
        import torch
        from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm
        from epoi.ops.torchscript_ops import FusedBiasGELU
        from torch import nn
        from transformers.activations import ACT2FN
        """ + remap_hook() + """

        class Layer(nn.Module):
            def __init__(self, config):
                super().__init__()
                if config.hidden_act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate"):
                    self.linear1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
                    self.norm1 = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)
                    self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                        ('norm1.layer_norm.weight', 'norm1.weight', False),
                        ('norm1.layer_norm.bias', 'norm1.bias', False),
                    )))
                    self.activation = FusedBiasGELU(config.intermediate_size, prev_weight=self.linear1.weight)
                    self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                        ('activation.bias', 'linear1.bias', False),
                    )))
                else:
                    self.linear1 = nn.Linear(config.hidden_size, config.intermediate_size)
                    self.norm1 = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)
                    self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                        ('norm1.layer_norm.weight', 'norm1.weight', False),
                        ('norm1.layer_norm.bias', 'norm1.bias', False),
                    )))
                    self.activation = ACT2FN[config.hidden_act]

            def forward(self, hidden_states, residual):
                hidden_states = self.norm1(hidden_states, residual)
                hidden_states = self.linear1(hidden_states)
                hidden_states = self.activation(hidden_states)
                return hidden_states
        """, applied=["biased_gelu", "dropout_layernorm"])


GELU_TWO_SITES = """\
import torch
from torch import nn
from transformers.activations import ACT2FN


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
{init}
    def forward(self, hidden_states, other):
        hidden_states = self.act(self.fc1(hidden_states))
        other = {second}
        return hidden_states, other
"""
FC1_ACT = """\
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
"""
GELU_WHEN = """\
        if config.hidden_act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate"):
            self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.act = FusedBiasGELU(config.intermediate_size, prev_weight=self.fc1.weight)
            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                ('act.bias', 'fc1.bias', False),
            )))
        else:
            {first}
            {second}
"""
GELU_IMPORTS = ("import torch\nfrom torch import nn\n",
                "import torch\nfrom epoi.ops.torchscript_ops import FusedBiasGELU\nfrom torch import nn\n")
GELU_HOOK = ("from transformers.activations import ACT2FN\n",
             "from transformers.activations import ACT2FN\n" + remap_hook(0))


def gelu_rewritten(first: str, second: str, call: str) -> str:
    return GELU_TWO_SITES.replace(*GELU_IMPORTS).replace(*GELU_HOOK).format(
        init=GELU_WHEN.format(first=first, second=second), second=call)


def test_biased_gelu_two_call_sites_are_one_location():
    second = "self.act(self.fc1(other))"
    assert_rewrite(GELU_TWO_SITES.format(init=FC1_ACT, second=second), gelu_rewritten(
        "self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)", "self.act = ACT2FN[config.hidden_act]",
        second), applied=["biased_gelu"], skipped=[("biased_gelu", "S401", "same location as the match at line 9")])


def test_biased_gelu_linear_used_alone_elsewhere_is_skipped():
    assert_rewrite(GELU_TWO_SITES.format(init=FC1_ACT, second="self.fc1(other)"), None, skipped=[
        ("biased_gelu", "S207", "attribute `self.fc1`, which the rewrite replaces, is also used at line 14 (in `forward`)")])


def test_fused_layer_moves_below_the_layer_it_reads():
    act_first = "".join(reversed(FC1_ACT.splitlines(True)))
    assert_rewrite(GELU_TWO_SITES.format(init=act_first, second="other"), gelu_rewritten(
        "self.act = ACT2FN[config.hidden_act]", "self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)",
        "other"), applied=["biased_gelu"])


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

    old_mod, new_mod = load_module(REVERSE, "rev_old"), load_module(new, "rev_new")
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
