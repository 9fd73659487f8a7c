"""Rule liger:fused_linear_cross_entropy with Liger's real kernel on CUDA
(`pytest -m cuda tests/gpu`): the models of tests/langpacks_models/flce_models.py,
rewritten, on the GPU, take the kernel path (counted) and give the original's
loss and parameter gradients: fp32 within the rule's 1e-5 (TF32 off; 1e-4 on
the gradients, which the kernel accumulates by chunks), and under bf16
autocast within the bf16 tolerance.

Triton's interpreter (TRITON_INTERPRET=1) runs the fused op on CPU tensors
(tests/test_sdpa_liger_interpreter.py), but the rewritten helper takes the
kernel only for CUDA tensors, so the end-to-end check needs a GPU."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if importlib.util.find_spec("liger_kernel") is None:
    pytest.skip("liger-kernel is not installed (pip install liger-kernel)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "langpacks_models" / "flce_models.py"

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    assert new.liger_fused_linear_cross_entropy is not None
    calls = []
    kernel = new.liger_fused_linear_cross_entropy
    new.liger_fused_linear_cross_entropy = lambda *a, **k: calls.append(1) or kernel(*a, **k)
    out = {}
    for autocast in (False, True):
        for name in ("NanoLM", "ShiftLM", "FlatLM", "LossModuleLM"):
            torch.manual_seed(0)
            a, b = getattr(orig, name)(vocab=1000, dim=64).cuda(), getattr(new, name)(vocab=1000, dim=64).cuda()
            b.load_state_dict(a.state_dict(), strict=True)
            ids, tgt = torch.randint(0, 1000, (4, 33), device="cuda"), torch.randint(0, 1000, (4, 33), device="cuda")
            n = len(calls)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                la, lb = a(ids, tgt), b(ids, tgt)
            la.float().backward(); lb.float().backward()
            gb = dict(b.named_parameters())
            grad = max(float((p.grad - gb[k].grad).abs().max()) for k, p in a.named_parameters() if p.grad is not None)
            out[f"{name}/{'bf16' if autocast else 'fp32'}"] = {
                "kernel": len(calls) - n, "loss": abs(float(la.float() - lb.float())), "ref": abs(float(la)), "grad": grad,
                "dtype": [str(la.dtype), str(lb.dtype)]}
    print("RESULT " + json.dumps(out))
""")


def test_rewritten_models_take_the_fused_kernel_with_the_same_numbers(tmp_path):
    from dslc.cli import main

    target = tmp_path / "rewritten.py"
    shutil.copy(MODELS, target)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["apply", "--rules", str(REPO / "rulepacks" / "liger.adr"), "--no-cache", "--jobs", "1",
                     "--write", "-q", str(target)]) == 0
    proc = subprocess.run([sys.executable, "-c", CHILD, str(MODELS), str(target)],
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    for case, r in json.loads(lines[-1][len("RESULT "):]).items():
        fp32 = case.endswith("fp32")
        assert r["kernel"] == 1, (case, r)
        assert r["dtype"][0] == r["dtype"][1], (case, r)
        atol, rtol = (1e-5, 1e-5) if fp32 else (1e-2, 1.6e-2)  # the rule's tolerance per dtype
        assert r["loss"] <= atol + rtol * r["ref"], (case, r)
        assert r["grad"] <= (1e-4 if fp32 else 1.6e-2), (case, r)
