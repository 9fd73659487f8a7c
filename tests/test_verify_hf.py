"""CPU equivalence of rewrites of transformers 4.35.0 modeling files (tiny configs).

BERT, RoBERTa, ResNet and DPT, rewritten by hand as the ADOPTER rules do.
Kernels: the *reference* kernels of tests/kernel_refs (pure PyTorch, not the
real epoi / xFormers) and torch.ao.nn.intrinsic.ConvBn2d (real PyTorch).
Needs an importable transformers (4.35.0): skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from dslc.verify import equivalence as verify
from test_verify_support import (RENAME_HOOK, add_import, edit, edit_in, has_transformers,  # noqa: F401
                                 kernel_refs, pack, rule)

pytestmark = pytest.mark.skipif(not has_transformers(), reason="transformers is not importable "
                                "(pip install transformers==4.35.0 to run the Hugging Face equivalence tests)")

DL = rule("dropout_layernorm", "epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm")
GELU = rule("biased_gelu", "epoi.ops.torchscript_ops.FusedBiasGELU")
SOFTMAX = rule("softmax", "xformers.triton.softmax.softmax")
CONVBN = rule("conv_batchnorm", "torch.ao.nn.intrinsic.ConvBn2d")
RULES = [pack(DL, GELU, SOFTMAX, CONVBN)]


def modeling(model: str) -> tuple[str, str]:
    """(path, source) of the installed transformers modeling file."""
    mod = importlib.import_module(f"transformers.models.{model}.modeling_{model}")
    path = str(Path(mod.__file__))
    return path, Path(path).read_text(encoding="utf-8")


EPOI_IMPORT = "import epoi.ops.torchscript_ops\n" + RENAME_HOOK
LN_HOOK = ('        self.register_load_state_dict_pre_hook(_dslc_rename({"LayerNorm.weight": '
           '"LayerNorm.layer_norm.weight", "LayerNorm.bias": "LayerNorm.layer_norm.bias"}))\n')


def dropout_layernorm(src: str, prefix: str, *, eps: str = ", eps=config.layer_norm_eps",
                      operands: str = "hidden_states, input_tensor") -> str:
    """Rule 5 on XxxSelfOutput and XxxOutput of a BERT-like file."""
    src = add_import(src, EPOI_IMPORT)
    for cls, width in (("SelfOutput", "config.hidden_size"), ("Output", "config.intermediate_size")):
        src = edit(src, f'''\
class {prefix}{cls}(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear({width}, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
''', f'''\
class {prefix}{cls}(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear({width}, config.hidden_size)
        self.LayerNorm = epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob{eps})
{LN_HOOK}
    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.LayerNorm({operands})
''')
    return src


def biased_gelu(src: str, cls: str, guard: bool) -> str:
    """Rule 6 on XxxIntermediate: Linear without bias + FusedBiasGELU.

    With `guard`, the fused path is taken only for tanh-GELU keys (the rule
    must stay correct when ACT2FN's key names another activation).
    """
    src = add_import(src, EPOI_IMPORT)
    cond = 'config.hidden_act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")' if guard else "True"
    return edit_in(src, cls, f'''\
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        if isinstance(config.hidden_act, str):
            self.intermediate_act_fn = ACT2FN[config.hidden_act]
        else:
            self.intermediate_act_fn = config.hidden_act
''', f'''\
        self.fused = isinstance(config.hidden_act, str) and {cond}
        if self.fused:
            self.dense = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.intermediate_act_fn = epoi.ops.torchscript_ops.FusedBiasGELU(config.intermediate_size, prev_weight=self.dense.weight)
            self.register_load_state_dict_pre_hook(_dslc_rename({{"dense.bias": "intermediate_act_fn.bias"}}))
        else:
            self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
            if isinstance(config.hidden_act, str):
                self.intermediate_act_fn = ACT2FN[config.hidden_act]
            else:
                self.intermediate_act_fn = config.hidden_act
''')


def softmax(src: str) -> str:
    """Rule 4: nn.functional.softmax(x, dim=-1) -> xformers.triton.softmax.softmax(x)."""
    src = add_import(src, "import xformers.triton.softmax\n")
    return edit(src, "attention_probs = nn.functional.softmax(attention_scores, dim=-1)",
                "attention_probs = xformers.triton.softmax.softmax(attention_scores)")


def check(path: str, before: str, after: str, **kw) -> verify.VerifyReport:
    report = verify.verify_sources(before, after, path=path, rules=RULES, **kw)
    print(verify.render(report))  # shown by pytest on failure
    return report


def statuses(report: verify.VerifyReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


# --- BERT ------------------------------------------------------------------


def test_bert_dropout_layernorm_passes(kernel_refs):
    path, src = modeling("bert")
    report = check(path, src, dropout_layernorm(src, "Bert"))
    assert statuses(report) == {"BertSelfOutput": "pass", "BertOutput": "pass"}
    assert all(r.reference_kernels == ("epoi",) for r in report.results)
    assert report.results[0].tolerance.rules == ("test:dropout_layernorm",)


def test_bert_dropout_layernorm_with_the_kernel_default_eps_fails(kernel_refs):
    path, src = modeling("bert")
    report = check(path, src, dropout_layernorm(src, "Bert", eps=""))
    assert not report.ok
    assert set(statuses(report).values()) == {"fail"}


def test_bert_biased_gelu_unguarded_is_not_equivalent_for_exact_gelu(kernel_refs):
    # BERT's hidden_act is "gelu" (erf); epoi's FusedBiasGELU is the tanh form.
    path, src = modeling("bert")
    report = check(path, src, biased_gelu(src, "BertIntermediate", guard=False))
    (res,) = report.results
    assert res.status == "fail" and res.mismatch.where == "eval output"
    assert 1e-5 < res.mismatch.max_abs < 1e-2


def test_bert_biased_gelu_guarded_on_the_key_passes(kernel_refs):
    path, src = modeling("bert")
    report = check(path, src, biased_gelu(src, "BertIntermediate", guard=True))
    assert statuses(report) == {"BertIntermediate": "pass"}


def test_bert_softmax_passes_and_a_model_class_is_used_when_needed(kernel_refs):
    path, src = modeling("bert")
    report = check(path, src, softmax(src))
    assert statuses(report) == {"BertSelfAttention": "pass"}
    assert report.results[0].reference_kernels == ("xformers",)


def test_bert_whole_model_passes_with_every_rewrite(kernel_refs):
    path, src = modeling("bert")
    after = softmax(biased_gelu(dropout_layernorm(src, "Bert"), "BertIntermediate", guard=True))
    report = check(path, src, after, classes=["BertModel", "BertForMaskedLM"])
    assert statuses(report) == {"BertModel": "pass", "BertForMaskedLM": "pass"}


# --- RoBERTa -----------------------------------------------------------------


def test_roberta_from_the_benchmark_corpus_path(kernel_refs, transformers_src):
    # The corpus copy is not the installed file: it is loaded as a sibling
    # module of the installed package (same relative imports).
    path = str(transformers_src / "models" / "roberta" / "modeling_roberta.py")
    src = Path(path).read_text(encoding="utf-8")
    report = check(path, src, dropout_layernorm(src, "Roberta"))
    assert statuses(report) == {"RobertaSelfOutput": "pass", "RobertaOutput": "pass"}


def test_roberta_swapped_fused_operands_pass_only_in_eval_mode(kernel_refs):
    # Dropout is the identity in eval mode: the swap is visible only in train
    # mode, which a non-deterministic rule does not compare. Documented limit.
    path, src = modeling("roberta")
    report = check(path, src, dropout_layernorm(src, "Roberta", operands="input_tensor, hidden_states"))
    assert report.ok and all("train" not in r.modes for r in report.results)


# --- ResNet (conv_batchnorm with a real PyTorch module) -------------------------

RESNET_CONV = '''\
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.normalization = nn.BatchNorm2d(out_channels)
'''
RESNET_FORWARD = '''\
        hidden_state = self.convolution(input)
        hidden_state = self.normalization(hidden_state)
'''
CONVBN_HOOK = '''\
        self.register_load_state_dict_pre_hook(_dslc_convbn_names)
'''
CONVBN_HELPER = '''

def _dslc_convbn_names(module, state_dict, prefix, *args):
    for key in list(state_dict):
        for old, new in (("convolution.", "convolution.0."), ("normalization.", "convolution.1.")):
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
'''


def conv_batchnorm(src: str, bn: str = "nn.BatchNorm2d(out_channels)", hook: bool = True) -> str:
    src = add_import(src, "import torch.ao.nn.intrinsic\n" + CONVBN_HELPER)
    src = edit_in(src, "ResNetConvLayer", RESNET_CONV, f'''\
        self.convolution = torch.ao.nn.intrinsic.ConvBn2d(nn.Conv2d(
            in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        ), {bn})
''' + (CONVBN_HOOK if hook else ""))
    return edit_in(src, "ResNetConvLayer", RESNET_FORWARD, "        hidden_state = self.convolution(input)\n")


def test_resnet_conv_batchnorm_passes_via_the_model():
    path, src = modeling("resnet")
    report = check(path, src, conv_batchnorm(src))
    (res,) = report.results
    assert res.name == "ResNetConvLayer" and res.status == "pass" and res.via == "ResNetModel"
    assert res.reference_kernels == ()  # a real PyTorch module


def test_resnet_conv_batchnorm_with_a_wrong_eps_fails():
    path, src = modeling("resnet")
    report = check(path, src, conv_batchnorm(src, bn="nn.BatchNorm2d(out_channels, eps=1e-3)"))
    (res,) = report.results
    assert res.status == "fail" and res.mismatch.max_abs > 1e-4


def test_resnet_conv_batchnorm_without_the_checkpoint_mapping_fails():
    path, src = modeling("resnet")
    report = check(path, src, conv_batchnorm(src, hook=False))
    (res,) = report.results
    assert res.status == "fail" and "checkpoint incompatible" in res.reason
    assert "normalization.running_mean" in res.reason


# --- DPT -----------------------------------------------------------------------


def test_dpt_softmax_and_guarded_biased_gelu_pass(kernel_refs):
    path, src = modeling("dpt")
    report = check(path, src, biased_gelu(softmax(src), "DPTViTIntermediate", guard=True))
    assert statuses(report) == {"DPTViTSelfAttention": "pass", "DPTViTIntermediate": "pass"}


def test_dpt_unguarded_biased_gelu_fails(kernel_refs):
    path, src = modeling("dpt")
    report = check(path, src, biased_gelu(src, "DPTViTIntermediate", guard=False))
    assert statuses(report) == {"DPTViTIntermediate": "fail"}


def test_dpt_neck_class_is_checked_inside_the_depth_model():
    path, src = modeling("dpt")
    after = edit_in(src, "DPTFeatureFusionLayer", "        hidden_state = self.projection(hidden_state)\n",
                 "        hidden_state = self.projection(hidden_state) * 1.001\n")
    report = check(path, src, after)
    (res,) = report.results
    assert res.name == "DPTFeatureFusionLayer" and res.status == "fail"


def test_a_copied_modeling_file_finds_its_package(tmp_path):
    _, src = modeling("resnet")
    (tmp_path / "modeling_resnet.py").write_text(src)
    (tmp_path / "copied_model.py").write_text(src)
    after = conv_batchnorm(src)
    report = check(str(tmp_path / "modeling_resnet.py"), src, after)
    assert statuses(report) == {"ResNetConvLayer": "pass"}
    report = check(str(tmp_path / "copied_model.py"), src, after)
    assert statuses(report) == {"ResNetConvLayer": "skipped"} and "--module" in report.results[0].reason
    report = check(str(tmp_path / "copied_model.py"), src, after, module="transformers.models.resnet.modeling_resnet")
    assert statuses(report) == {"ResNetConvLayer": "pass"}
