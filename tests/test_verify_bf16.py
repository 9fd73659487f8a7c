"""`dslc verify` runs a bfloat16 pass too when every rule behind a class
declares a bf16 tolerance (`tolerance fp32 ...; bf16 atol=.. rtol=..`): the
same eval forward and backward with both modules and the floating inputs in
bf16, outputs, input gradients and every parameter gradient held to the
declared bf16 tolerance, and a floating result in another dtype fails."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from dslc.match import ir  # noqa: E402
from dslc.verify import equivalence as verify  # noqa: E402
from dslc.verify.selection import tolerance_for  # noqa: E402

ORIGINAL = '''\
import torch
from torch import nn


class Norm(nn.Module):
    def __init__(self, dim=16, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
'''

# The kernel's way: float32 inside, rounded once to the input dtype.
FP32_INSIDE = ORIGINAL.replace('''        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))''', '''        h = x.float()
        v = h.pow(2).mean(-1, keepdim=True)
        return (self.weight.float() * (h * torch.rsqrt(v + self.eps))).to(x.dtype)''')

# The same, but the result is never cast back: equal in fp32, float32 out of bf16 inputs.
NO_CAST_BACK = FP32_INSIDE.replace(").to(x.dtype)", ")")


def _rule(per_dtype=(("fp32", 1e-5, 1e-5), ("bf16", 1e-2, 1.6e-2))) -> ir.Rule:
    return ir.Rule(pack="t", name="rms", description="rms", kernels=("torch.rsqrt",),
                   contract=ir.Contract(exact=False, atol=1e-5, rtol=1e-5, per_dtype=per_dtype))


def _verify(tmp_path: Path, rewritten: str, rule: ir.Rule) -> verify.VerifyReport:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(ORIGINAL)
    b.write_text(rewritten)
    pack = ir.Pack(name="t", description="d", requires=(), rules=(rule,))
    opts = verify.VerifyOptions(packs=(pack,), input_shapes=((2, 4, 16),), classes=("Norm",))
    return verify.verify_files(str(a), str(b), opts)


def test_tolerance_has_bf16_only_when_every_rule_declares_it():
    assert tolerance_for([_rule()]).bf16 == (1e-2, 1.6e-2)
    assert tolerance_for([_rule(), _rule((("fp32", 1e-5, 1e-5), ("bf16", 2e-2, 1e-2)))]).bf16 == (2e-2, 1.6e-2)
    assert tolerance_for([_rule(), _rule(())]).bf16 is None  # one rule declares no bf16 contract
    assert "bf16 atol=0.01 rtol=0.016" in tolerance_for([_rule()]).describe()


def test_a_kernel_computing_in_float32_passes_in_bf16(tmp_path):
    report = _verify(tmp_path, FP32_INSIDE, _rule())
    (res,) = report.results
    assert res.status == "pass", verify.render(report)
    assert res.modes == ("eval", "eval x0.01", "eval 2x+1", "eval bf16")
    # per run: the output, the input gradient, the weight gradient
    assert res.compared == 12
    assert res.bf16_max_abs is not None and 0 < res.bf16_max_abs <= 1e-2 + 1.6e-2 * 4
    text = verify.render(report)
    assert "eval bf16" in text and "(bf16: max abs error" in text
    assert report.to_dict()["results"][0]["bf16"]["max_abs"] == res.bf16_max_abs


def test_a_result_left_in_float32_fails_the_bf16_run(tmp_path):
    report = _verify(tmp_path, NO_CAST_BACK, _rule())
    (res,) = report.results
    assert res.status == "fail", verify.render(report)
    assert res.mismatch.where == "eval bf16 output"
    assert "dtype torch.float32 instead of torch.bfloat16" in res.reason


def test_no_bf16_run_without_a_declared_bf16_tolerance(tmp_path):
    report = _verify(tmp_path, NO_CAST_BACK, _rule(()))
    (res,) = report.results
    assert res.status == "pass" and res.modes == ("eval", "eval x0.01", "eval 2x+1") and res.bf16_max_abs is None


# Inputs that are not all standard normal: a kernel that is right only for
# |x| < 3 passes on randn inputs (seed 0: none reaches 3), not on 2x+1.
SATURATING = ORIGINAL.replace("        v = x.pow(2).mean(-1, keepdim=True)\n",
                              "        x = x.clamp(-3.0, 3.0)\n        v = x.pow(2).mean(-1, keepdim=True)\n")


def test_inputs_that_are_not_standard_normal_catch_a_range_assumption(tmp_path):
    report = _verify(tmp_path, SATURATING, _rule(()))
    (res,) = report.results
    assert res.status == "fail", verify.render(report)
    assert res.mismatch.where.startswith("eval 2x+1 ")
