"""Rule `linear_batchnorm` targets torch.ao.nn.intrinsic.qat.LinearBn1d, which
is *not* numerically equivalent to Linear followed by BatchNorm1d: it is a
quantization-aware-training module that fake-quantizes the BN-folded weight
(and it needs a qconfig and extra checkpoint entries).  `dslc verify` must
say so, whichever way the rewrite is wired.
"""

from __future__ import annotations

import json

import pytest

from dslc.cli import main
from test_verify_support import edit

ORIGINAL = '''\
import torch
from torch import nn


class LinearBN(nn.Module):
    def __init__(self, in_features=16, out_features=12, eps=1e-5, momentum=0.1):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features, eps=eps, momentum=momentum)

    def forward(self, x):
        h = self.linear(x)
        return self.bn(h)
'''

FACTORY = '''\
import torch


def make(cls):
    gen = torch.Generator().manual_seed(3)
    return cls(), (torch.randn(8, 16, generator=gen),)
'''

INIT = '''\
        self.linear = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features, eps=eps, momentum=momentum)
'''
FORWARD = '''\
        h = self.linear(x)
        return self.bn(h)
'''
# Renames bn.* into the fused module and supplies the fake-quantizer's
# buffers, which no original checkpoint has, from the fresh module.
HOOK = '''

def _dslc_linear_bn(module, state_dict, prefix, *args):
    for key in list(state_dict):
        if key.startswith(prefix + "bn."):
            state_dict[prefix + "linear." + key[len(prefix):]] = state_dict.pop(key)
    for key, value in module.linear.weight_fake_quant.state_dict().items():
        state_dict.setdefault(prefix + "linear.weight_fake_quant." + key, value)
'''


def rewrite(qconfig: bool, hook: bool) -> str:
    src = ORIGINAL
    if hook:
        src = edit(src, "from torch import nn\n", "from torch import nn\nimport torch.ao.nn.intrinsic.qat\n"
                   "import torch.ao.quantization\n" + HOOK)
    else:
        src = edit(src, "from torch import nn\n", "from torch import nn\nimport torch.ao.nn.intrinsic.qat\n"
                   "import torch.ao.quantization\n")
    extra = ", qconfig=torch.ao.quantization.get_default_qat_qconfig()" if qconfig else ""
    init = (f"        self.linear = torch.ao.nn.intrinsic.qat.LinearBn1d(in_features, out_features, "
            f"bias=True, eps=eps, momentum=momentum{extra})\n")
    if hook:
        init += "        self.register_load_state_dict_pre_hook(_dslc_linear_bn)\n"
    src = edit(src, INIT, init)
    return edit(src, FORWARD, "        return self.linear(x)\n")


@pytest.fixture
def run(tmp_path, capsys):
    (tmp_path / "model.py").write_text(ORIGINAL)
    (tmp_path / "factories.py").write_text(FACTORY)

    def go(source: str, *extra: str):
        (tmp_path / "rewritten.py").write_text(source)
        code = main(["verify", str(tmp_path / "model.py"), str(tmp_path / "rewritten.py"),
                     "--factory", f"{tmp_path / 'factories.py'}:make", *extra])
        return code, capsys.readouterr().out

    return go


def test_literal_rewrite_without_qconfig_does_not_construct(run):
    code, out = run(rewrite(qconfig=False, hook=False))
    assert code == 1
    assert "FAIL  LinearBN: the factory fails on the rewritten class: AssertionError" in out


def test_rewrite_without_checkpoint_mapping_is_incompatible(run):
    code, out = run(rewrite(qconfig=True, hook=False))
    assert code == 1
    assert "checkpoint incompatible" in out and "missing key(s) (linear.bn." in out


def test_fully_wired_rewrite_is_still_not_equivalent(run):
    code, out = run(rewrite(qconfig=True, hook=True), "--format", "json")
    assert code == 1
    (res,) = json.loads(out)["results"]
    assert res["status"] == "fail" and res["mismatch"]["where"] == "eval output"
    # fake int8 quantization of the folded weight: errors of order 1e-3..1e-1
    assert 1e-4 < res["mismatch"]["max_abs"] < 1.0
    print("LinearBn1d max abs error", res["mismatch"]["max_abs"], "max rel", res["mismatch"]["max_rel"])


def test_apply_linear_batchnorm_then_verify_fails(tmp_path, capsys):
    from pathlib import Path

    pack = Path(__file__).resolve().parent.parent / "rulepacks" / "adopter.adr"
    (tmp_path / "model.py").write_text(ORIGINAL)
    (tmp_path / "rewritten.py").write_text(ORIGINAL)
    (tmp_path / "factories.py").write_text(FACTORY)
    code = main(["apply", "--rules", str(pack), "--select", "adopter:linear_batchnorm", "--no-cache", "--unsafe",
                 "--jobs", "1", "-q", "--write", str(tmp_path / "rewritten.py")])
    capsys.readouterr()
    assert code == 0 and "LinearBn1d" in (tmp_path / "rewritten.py").read_text()
    code = main(["verify", str(tmp_path / "model.py"), str(tmp_path / "rewritten.py"), "--rules", str(pack),
                 "--factory", f"{tmp_path / 'factories.py'}:make"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL  LinearBN" in out and "adopter:linear_batchnorm" in out
