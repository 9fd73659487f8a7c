"""REFERENCE KERNEL (tests only): slapo's FusedQKV, from its documented behaviour.

`slapo/op/linear.py` (awslabs/slapo): one Linear of width 3*hidden whose output
is viewed as (..., heads, head_size, 3) and split on the last axis.  Not the
real kernel.
"""

from __future__ import annotations

import torch
from torch import nn


class FusedQKV(nn.Module):
    def __init__(self, hidden_size, num_heads, world_size) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.fused_linear = nn.Linear(hidden_size, self.num_heads * self.head_size * 3)
        self.world_size = world_size

    def forward(self, hidden_states):
        qkv = self.fused_linear(hidden_states)
        shape = qkv.size()[:-1] + (self.num_heads // self.world_size, self.head_size, 3)
        q, k, v = torch.split(qkv.view(shape), 1, dim=-1)
        return [t.squeeze(-1).contiguous() for t in (q, k, v)]
