"""Liger-Kernel's Triton kernels on the CPU through Triton's interpreter.

`TRITON_INTERPRET=1` runs a Triton kernel with numpy on the CPU.  Each kernel
runs in a child process (the variable must be set before triton is
imported), forward and backward, on scaled and shifted inputs, and is compared
with PyTorch's own computation (outputs and every input/parameter gradient).

Measured with liger-kernel 0.8.5 and triton 3.9.0 (torch 2.13 CPU): the
interpreter runs cross_entropy, fused_linear_cross_entropy and rope; it
cannot run rms_norm, layer_norm and swiglu (`eps.to(tl.float32)` /
`gate_multiplier.to(...)`: the interpreter passes scalar arguments as Python
floats, which have no `.to`) nor geglu (its `tanh` comes from libdevice,
which the interpreter does not implement: it yields None).  Those cases skip
with the interpreter's error, so they start checking numbers by themselves
once a release runs them.  Without liger-kernel or triton (CI) every case
skips with that reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None or importlib.util.find_spec("triton") is None,
    reason="liger-kernel and triton are not installed (pip install liger-kernel triton); CI does not install them",
)]  # slow: a child process per kernel, about 2 minutes in all

CHILD = r'''
import json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.manual_seed(0)
torch.set_default_device(os.environ.get("LIGER_DEVICE", "cpu"))  # tests/gpu/test_liger_cuda.py: cuda
torch.backends.cuda.matmul.allow_tf32 = False
name = sys.argv[1]
def inp(*shape):
    return (torch.randn(*shape) * 2.5 + 0.5).requires_grad_()
def errs(pairs):
    return {k: float((a - b).abs().max()) for k, (a, b) in pairs.items()}
def rh(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)
if name == "rms_norm":
    from liger_kernel.transformers.rms_norm import LigerRMSNorm
    m = LigerRMSNorm(32, eps=1e-6); m.weight.data.uniform_(0.5, 1.5)
    x = inp(2, 8, 32); x2 = x.detach().clone().requires_grad_()
    y = m(x); y.sum().backward()
    w = m.weight.detach().clone().requires_grad_()
    r = w * (x2 * torch.rsqrt(x2.pow(2).mean(-1, keepdim=True) + 1e-6)); r.sum().backward()
    out = errs({"out": (y, r), "dx": (x.grad, x2.grad), "dw": (m.weight.grad, w.grad)})
elif name == "layer_norm":
    from liger_kernel.transformers.layer_norm import LigerLayerNorm
    m = LigerLayerNorm(32)
    x = inp(2, 8, 32); x2 = x.detach().clone().requires_grad_()
    y = m(x); y.sum().backward()
    r = torch.nn.functional.layer_norm(x2, (32,), m.weight.detach(), m.bias.detach(), 1e-6); r.sum().backward()
    out = errs({"out": (y, r), "dx": (x.grad, x2.grad)})
elif name in ("swiglu", "geglu"):
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from liger_kernel.ops.geglu import LigerGELUMulFunction
    a, b = inp(2, 8, 64), inp(2, 8, 64)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    if name == "swiglu":
        y = LigerSiLUMulFunction.apply(a, b); r = torch.nn.functional.silu(a2) * b2
    else:
        y = LigerGELUMulFunction.apply(a, b); r = torch.nn.functional.gelu(a2, approximate="tanh") * b2
    y.sum().backward(); r.sum().backward()
    out = errs({"out": (y, r), "da": (a.grad, a2.grad), "db": (b.grad, b2.grad)})
elif name == "cross_entropy":
    from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    x = inp(16, 50); t = torch.randint(0, 50, (16,))
    x2 = x.detach().clone().requires_grad_()
    r = torch.nn.functional.cross_entropy(x2, t); r.backward()
    y = LigerCrossEntropyLoss()(x, t); y.backward()
    out = errs({"out": (y, r), "dx": (x.grad, x2.grad)})
elif name == "fused_linear_cross_entropy":
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    h = inp(16, 32); w = (torch.randn(50, 32) * 0.3).requires_grad_(); t = torch.randint(0, 50, (16,))
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = LigerFusedLinearCrossEntropyLoss()(w, h, t); y.backward()
    r = torch.nn.functional.cross_entropy(h2 @ w2.T, t); r.backward()
    out = errs({"out": (y, r), "dh": (h.grad, h2.grad), "dw": (w.grad, w2.grad)})
elif name == "rope":
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    q, k = inp(1, 4, 8, 16), inp(1, 4, 8, 16)
    q2, k2 = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    f = torch.arange(8)[None, :, None].float() * inv
    emb = torch.cat([f, f], -1); cos, sin = emb.cos(), emb.sin()
    qo, ko = liger_rotary_pos_emb(q, k, cos, sin)
    (qo * 1.5 + ko * 0.5).sum().backward()
    qr = q2 * cos[:, None] + rh(q2) * sin[:, None]; kr = k2 * cos[:, None] + rh(k2) * sin[:, None]
    (qr * 1.5 + kr * 0.5).sum().backward()
    out = errs({"q": (qo, qr), "k": (ko, kr), "dq": (q.grad, q2.grad), "dk": (k.grad, k2.grad)})
print("RESULT " + json.dumps(out))
'''

KERNELS = ["rms_norm", "layer_norm", "swiglu", "geglu", "cross_entropy", "fused_linear_cross_entropy", "rope"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_liger_kernel_under_triton_interpreter(kernel):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, kernel], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        errors = [ln for ln in proc.stderr.splitlines() if "InterpreterError" in ln or ln.startswith(("AttributeError", "TypeError"))]
        pytest.skip(f"the Triton interpreter cannot run liger's {kernel}: {errors[-1] if errors else proc.stderr[-300:]}")
    errs = json.loads(lines[-1][len("RESULT "):])
    for what, err in errs.items():
        assert err <= 1e-4, f"{kernel} {what}: max abs error {err:.3g}"
