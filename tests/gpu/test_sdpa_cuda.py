"""rulepacks/sdpa.adr on CUDA (`pytest -m cuda tests/gpu`): the spellings of
tests/sdpa_models.py rewritten, then run eager vs SDPA on the GPU, forward and
backward, fp32 (TF32 off) and bf16 (through the fp32 eager result, as in
tests/test_sdpa_rules.py).  Liger's own kernels: tests/gpu/test_cuda_equivalence.py
verifies rulepacks/liger.adr when that pack and liger-kernel are present."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdpa_models  # noqa: E402
import test_sdpa_rules as base  # noqa: E402

rewritten = base.rewritten  # the module fixture


def _cuda_run(module, x, kwargs):
    x = x.cuda()
    kwargs = {k: v.cuda() for k, v in kwargs.items()}
    return base._run(module.cuda(), x, kwargs)


@pytest.mark.parametrize("cls_name", sorted(sdpa_models.REWRITTEN))
def test_sdpa_rewrite_on_cuda(rewritten, cls_name):
    torch.backends.cuda.matmul.allow_tf32 = False
    orig, new, _, _ = rewritten
    ref = base._build(orig, cls_name, torch.float32)
    state = ref.state_dict()
    x, kwargs = base._inputs(cls_name, torch.float32)
    r = _cuda_run(ref, x, kwargs)
    n32 = _cuda_run(base._build(new, cls_name, torch.float32, state), x, kwargs)
    torch.testing.assert_close(n32[0], r[0], atol=1e-4, rtol=1e-3)
    for name in r[2]:
        torch.testing.assert_close(n32[2][name], r[2][name], atol=1e-4, rtol=1e-3)
    xb = x.to(torch.bfloat16)
    kb = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in kwargs.items()}
    e = _cuda_run(base._build(orig, cls_name, torch.bfloat16, state), xb, kb)
    n = _cuda_run(base._build(new, cls_name, torch.bfloat16, state), xb, kb)
    for what, a, b, c in [("output", r[0], e[0], n[0])] + [(k, r[2][k], e[2][k], n[2][k]) for k in r[2]]:
        assert (c.float() - a).abs().max() <= 2 * (b.float() - a).abs().max() + base.BF16_ATOL, what
