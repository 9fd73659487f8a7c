"""REFERENCE KERNEL (tests only): xformers.triton.softmax.softmax semantics.

The Triton kernel of xFormers <= 0.0.22 computes a softmax over the last
dimension (optionally masked / causal).  Not the real kernel.
"""

from __future__ import annotations

import torch


def softmax(x, mask=None, causal=False):
    if mask is not None:
        x = x + mask
    if causal:
        n = x.shape[-1]
        keep = torch.ones(x.shape[-2], n, dtype=torch.bool, device=x.device).tril()
        x = x.masked_fill(~keep, float("-inf"))
    return torch.softmax(x, dim=-1)
