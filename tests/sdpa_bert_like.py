"""A BERT-like self-attention written from scratch (Hugging Face's eager spelling:
the additive mask inside `if attention_mask is not None:`), for
tests/test_sdpa_rules.py: rewritten to one SDPA call and checked by `dslc verify`
on both paths (MaskedBlock passes a mask; the attention alone gets None)."""

import math

import torch
from torch import nn


class MiniBertSelfAttention(nn.Module):
    def __init__(self, hidden_size=32, num_heads=4, dropout=0.1):
        super().__init__()
        self.num_attention_heads = num_heads
        self.attention_head_size = hidden_size // num_heads
        self.all_head_size = hidden_size
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def transpose_for_scores(self, x):
        new_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None):
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        return context_layer.view(context_layer.size()[:-2] + (self.all_head_size,))


class MaskedBlock(nn.Module):
    """The attention called with an additive padding mask (the `if` taken)."""

    def __init__(self, hidden_size=32):
        super().__init__()
        self.attn = MiniBertSelfAttention(hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        mask = torch.zeros(x.shape[0], 1, 1, x.shape[1], dtype=x.dtype)
        mask[..., -2:] = torch.finfo(x.dtype).min
        return self.out(self.attn(x, mask))
