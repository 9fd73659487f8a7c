"""Liger-Kernel's kernels on CUDA (`pytest -m cuda tests/gpu`): the same cases
as tests/test_sdpa_liger_interpreter.py (forward and backward against
PyTorch, scaled and shifted inputs), run with the real Triton kernels on the
GPU, every kernel included (the interpreter cannot run rms_norm, layer_norm,
swiglu and geglu)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if importlib.util.find_spec("liger_kernel") is None:
    pytest.skip("liger-kernel is not installed (pip install liger-kernel)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_sdpa_liger_interpreter import CHILD, KERNELS  # noqa: E402


@pytest.mark.parametrize("kernel", KERNELS)
def test_liger_kernel_on_cuda(kernel):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["LIGER_DEVICE"] = "cuda"
    proc = subprocess.run([sys.executable, "-c", CHILD, kernel], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    for what, err in json.loads(lines[-1][len("RESULT "):]).items():
        assert err <= 1e-4, f"{kernel} {what}: max abs error {err:.3g}"
