"""REFERENCE KERNEL (tests only): the documented semantics of epoi's torchscript ops.

Written from the behaviour of `epoi/ops/torchscript_ops.py` (comaniac/epoi):
same constructor signatures, same parameter names, same arithmetic, none of
the fusion.  Not the real kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # epoi's bias_gelu: the tanh approximation with Megatron's constant.
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


class FusedBiasGELU(torch.nn.Module):
    """gelu_tanh(input + bias); the Linear before it has `bias=False`."""

    def __init__(self, size, device=None, dtype=None, prev_weight=None, fused=True):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.empty(size, device=device, dtype=dtype))
        self.fused = fused
        self.reset_parameters(prev_weight)

    def reset_parameters(self, prev_weight=None):
        low, high = 0.0, 1.0
        if prev_weight is not None:
            fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(prev_weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            low, high = -bound, bound
        torch.nn.init.uniform_(self.bias, low, high)

    def forward(self, input):
        if self.fused:
            return _gelu_tanh(input + self.bias)
        return F.gelu(input + self.bias, approximate="none")


class FusedDropoutAddLayerNorm(torch.nn.Module):
    """LayerNorm(dropout(input1) + input2); parameters live in `self.layer_norm`."""

    def __init__(self, size, dropout_prob, eps=1e-5, fused=True):
        super().__init__()
        self.layer_norm = torch.nn.LayerNorm(size, eps=eps)
        self.dropout_prob = dropout_prob
        self.fused = fused

    def forward(self, input1, input2):
        dropped = F.dropout(input1, self.dropout_prob, training=self.training)
        return F.layer_norm(dropped + input2, self.layer_norm.normalized_shape,
                            self.layer_norm.weight, self.layer_norm.bias, self.layer_norm.eps)
