"""Planted wrong rewrites must fail `dslc verify`; their correct twins must pass.

The models are examples/-style plain modules built by a factory; the
rewrites are written by hand the way the rewriter emits them, using the
*reference* kernels of tests/kernel_refs (not the real epoi).
"""

from __future__ import annotations

import json

import pytest

from dslc.verify import equivalence as verify
from dslc.cli import main
from test_verify_support import RENAME_HOOK, edit, kernel_refs, pack, rule  # noqa: F401 - fixture

ORIGINAL = '''\
import torch
from torch import nn


class SelfOutput(nn.Module):
    def __init__(self, hidden=16, p=0.1, eps=1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class Intermediate(nn.Module):
    def __init__(self, hidden=16, inter=24):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, hidden_states):
        return self.act(self.dense(hidden_states))


class Merge(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.proj = nn.Linear(2 * hidden, hidden)

    def forward(self, hidden_states, residual):
        return self.proj(torch.cat((hidden_states, residual), dim=-1))
'''

FACTORY = '''\
import torch


def make(cls):
    """Build `cls()` and inputs; small activations so that LayerNorm's eps matters."""
    module = cls()
    gen = torch.Generator().manual_seed(7)
    x = 0.01 * torch.randn(2, 5, 16, generator=gen)
    res = 0.01 * torch.randn(2, 5, 16, generator=gen)
    if cls.__name__ == "Intermediate":
        return module, (x,)
    return module, (x, res)
'''

FUSED_IMPORT = ("from torch import nn\n",
                "from torch import nn\nfrom epoi.ops.torchscript_ops import FusedBiasGELU, "
                "FusedDropoutAddLayerNorm\n" + RENAME_HOOK)

LN_INIT = '''\
        self.dropout = nn.Dropout(p)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
'''
LN_FORWARD = '''\
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
'''
LN_HOOK = ('        self.register_load_state_dict_pre_hook(_dslc_rename({"LayerNorm.weight": '
           '"LayerNorm.layer_norm.weight", "LayerNorm.bias": "LayerNorm.layer_norm.bias"}))\n')


def fused_layernorm(init_args: str = "hidden, p, eps=eps", call: str = "hidden_states, input_tensor",
                    hook: bool = True) -> str:
    src = edit(ORIGINAL, *FUSED_IMPORT)
    src = edit(src, LN_INIT, f"        self.LayerNorm = FusedDropoutAddLayerNorm({init_args})\n"
               + (LN_HOOK if hook else ""))
    return edit(src, LN_FORWARD, f"        hidden_states = self.LayerNorm({call})\n")


def biased_gelu(keep_bias: bool = True, hook: bool = True) -> str:
    src = edit(ORIGINAL, *FUSED_IMPORT)
    init = ('        self.dense = nn.Linear(hidden, inter, bias=False)\n'
            '        self.act = nn.GELU(approximate="tanh")\n')
    if keep_bias:
        init += '        self.fused = FusedBiasGELU(inter, prev_weight=self.dense.weight)\n'
    if hook and keep_bias:
        init += '        self.register_load_state_dict_pre_hook(_dslc_rename({"dense.bias": "fused.bias"}))\n'
    elif hook:  # the bias is dropped and its checkpoint entry silently discarded
        init += ('        self.register_load_state_dict_pre_hook('
                 'lambda m, sd, prefix, *a: sd.pop(prefix + "dense.bias", None))\n')
    src = edit(src, '''\
        self.dense = nn.Linear(hidden, inter)
        self.act = nn.GELU(approximate="tanh")
''', init)
    call = "self.fused(self.dense(hidden_states))" if keep_bias else "self.act(self.dense(hidden_states))"
    return edit(src, "        return self.act(self.dense(hidden_states))\n", f"        return {call}\n")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "model.py").write_text(ORIGINAL)
    (tmp_path / "factories.py").write_text(FACTORY)

    def write(source: str, name: str = "rewritten.py") -> list[str]:
        (tmp_path / name).write_text(source)
        return [str(tmp_path / "model.py"), str(tmp_path / name),
                "--factory", f"{tmp_path / 'factories.py'}:make"]

    return write


def run_cli(capsys, argv):
    code = main(["verify", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_identical_rewrite_of_a_class_passes(files, capsys):
    code, out, _ = run_cli(capsys, files(ORIGINAL) + ["--class", "SelfOutput", "--class", "Merge"])
    assert code == 0, out
    assert out.count("pass  ") == 2


def test_correct_fused_layernorm_passes_under_the_reference_kernel(files, capsys, kernel_refs):
    code, out, _ = run_cli(capsys, files(fused_layernorm()))
    assert code == 0, out
    assert "pass  SelfOutput" in out and "reference kernel: epoi" in out


def test_wrong_eps_fails(files, capsys, kernel_refs):
    # BERT-style eps=1e-12 rewritten with the kernel's default eps=1e-5.
    code, out, _ = run_cli(capsys, files(fused_layernorm(init_args="hidden, p")))
    assert code == 1, out
    assert "FAIL  SelfOutput: eval output: max abs error" in out


def test_residual_swapped_in_a_non_commutative_position_fails(files, capsys):
    swapped = edit(ORIGINAL, "torch.cat((hidden_states, residual), dim=-1)",
                   "torch.cat((residual, hidden_states), dim=-1)")
    code, out, _ = run_cli(capsys, files(swapped))
    assert code == 1, out
    assert "FAIL  Merge" in out


def test_fused_operands_swapped_fail_in_train_mode_when_the_rule_is_deterministic(tmp_path, kernel_refs):
    # fused(input_tensor, hidden_states) drops out the residual instead of the
    # branch: equal in eval mode (dropout is the identity), different in train.
    (tmp_path / "factories.py").write_text(FACTORY)
    factory = f"{tmp_path / 'factories.py'}:make"
    path = str(tmp_path / "model.py")
    swapped = fused_layernorm(call="input_tensor, hidden_states")
    det = rule("dropout_layernorm", "epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm", deterministic=True)
    loose = rule("dropout_layernorm", "epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm")
    bad = verify.verify_sources(ORIGINAL, swapped, path=path, rules=[pack(det)], factory=factory)
    assert not bad.ok and bad.results[0].mismatch.where.startswith("train output")
    assert bad.results[0].modes == ("eval", "eval x0.01", "eval 2x+1", "train")
    good = verify.verify_sources(ORIGINAL, fused_layernorm(), path=path, rules=[pack(det)], factory=factory)
    assert good.ok, verify.render(good)
    eval_only = verify.verify_sources(ORIGINAL, swapped, path=path, rules=[pack(loose)], factory=factory)
    assert eval_only.ok and eval_only.results[0].modes == ("eval", "eval x0.01", "eval 2x+1")


def test_correct_biased_gelu_passes(files, capsys, kernel_refs):
    code, out, _ = run_cli(capsys, files(biased_gelu()))
    assert code == 0, out
    assert "pass  Intermediate" in out


def test_dropped_bias_breaks_the_checkpoint(files, capsys, kernel_refs):
    code, out, _ = run_cli(capsys, files(biased_gelu(keep_bias=False, hook=False)))
    assert code == 1, out
    assert "checkpoint incompatible" in out and "dense.bias" in out


def test_dropped_bias_with_a_discarding_hook_fails_numerically(files, capsys, kernel_refs):
    code, out, _ = run_cli(capsys, files(biased_gelu(keep_bias=False, hook=True)))
    assert code == 1, out
    assert "FAIL  Intermediate: eval output: max abs error" in out


def test_missing_rename_hook_breaks_the_checkpoint(files, capsys, kernel_refs):
    # The real FusedDropoutAddLayerNorm keeps its parameters in `layer_norm`.
    code, out, _ = run_cli(capsys, files(fused_layernorm(hook=False)))
    assert code == 1, out
    assert "checkpoint incompatible" in out and "LayerNorm.layer_norm.weight" in out


def test_json_report_names_the_failing_output(files, capsys, kernel_refs):
    code, out, _ = run_cli(capsys, files(fused_layernorm(init_args="hidden, p")) + ["--format", "json"])
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    (res,) = data["results"]
    assert res["status"] == "fail" and res["mismatch"]["where"] == "eval output"
    assert res["mismatch"]["max_abs"] > 1e-4
    assert res["reference_kernels"] == ["epoi"]


def test_parameter_gradients_are_compared_through_the_load_mapping(files, kernel_refs, tmp_path):
    argv = files(fused_layernorm())
    report = verify.verify_files(argv[0], argv[1], verify.VerifyOptions(factory=argv[3]))
    (res,) = report.results
    # per run: output, 2 input grads, dense.weight/bias, LayerNorm.layer_norm.weight/bias
    assert res.status == "pass" and res.modes == ("eval", "eval x0.01", "eval 2x+1") and res.compared == 21


def test_swapped_weight_and_bias_mapping_is_caught_despite_unit_init(files, capsys, kernel_refs):
    # LayerNorm starts with weight 1 / bias 0: verify perturbs constant tensors,
    # so a checkpoint hook that swaps them cannot hide.
    swapped_hook = LN_HOOK.replace('"LayerNorm.layer_norm.weight", "LayerNorm.bias": "LayerNorm.layer_norm.bias"',
                                   '"LayerNorm.layer_norm.bias", "LayerNorm.bias": "LayerNorm.layer_norm.weight"')
    src = fused_layernorm().replace(LN_HOOK, swapped_hook)
    assert src != fused_layernorm()
    code, out, _ = run_cli(capsys, files(src))
    assert code == 1 and "FAIL  SelfOutput: eval output" in out


def test_forward_equal_but_gradient_different_fails(files, capsys):
    # A detached residual computes the same values and a different gradient.
    src = edit(ORIGINAL, "torch.cat((hidden_states, residual), dim=-1)",
               "torch.cat((hidden_states, residual.detach()), dim=-1)")
    code, out, _ = run_cli(capsys, files(src))
    assert code == 1 and "FAIL  Merge: eval grad input residual: max abs error" in out
