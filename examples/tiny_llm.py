"""A small causal language model written from scratch, with its own names.

Nothing here imports transformers: the layers are spelled the way model
authors write them by hand, so that rules which recognise a layer by what it
computes (rulepacks/liger.adr) and the eager-attention rule
(rulepacks/sdpa.adr) are tested on code they have never seen by name:

* `TinyRMSNorm`: weight * x / sqrt(mean(x^2) + eps), in float32 and back;
* `TinyGatedMLP`: down(silu(gate(x)) * up(x));
* `TinyCausalSelfAttention`: q/k/v/o projections, heads by view/transpose,
  q k^T / sqrt(head_dim), a causal mask from a registered `tril` buffer
  applied with `masked_fill`, softmax, attention dropout, then @ v;
* `TinyBlock` (pre-norm residual blocks), `TinyLM` (embedding, blocks, final
  norm, LM head and the cross-entropy loss in its forward).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class TinyRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        input_dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(input_dtype)


class TinyGatedMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim, hidden = config.hidden_size, config.intermediate_size
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TinyCausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim, max_len = config.hidden_size, config.max_position_embeddings
        self.n_heads = config.num_attention_heads
        self.head_dim = dim // self.n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(config.attention_dropout)
        self.register_buffer(
            "causal", torch.tril(torch.ones(max_len, max_len)).view(1, 1, max_len, max_len), persistent=False
        )

    def forward(self, hidden_states):
        x = hidden_states
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(self.causal[:, :, :n, :n] == 0, float("-inf"))
        probs = F.softmax(scores, dim=-1)
        probs = self.attn_drop(probs)
        out = torch.matmul(probs, v)
        out = out.transpose(1, 2).contiguous().view(b, n, self.n_heads * self.head_dim)
        return self.o(out)


class TinyBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn_norm = TinyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = TinyCausalSelfAttention(config)
        self.mlp_norm = TinyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = TinyGatedMLP(config)

    def forward(self, hidden_states):
        x = hidden_states
        x = x + self.attn(self.attn_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return x


class TinyLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([TinyBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = TinyRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, labels=None):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
        return logits, loss


class TinyConfig:
    """The sizes (examples/ convention: class attributes, so `dslc verify` builds it)."""

    vocab_size = 99
    hidden_size = 32
    intermediate_size = 64
    num_hidden_layers = 2
    num_attention_heads = 4
    max_position_embeddings = 64
    rms_norm_eps = 1e-6
    attention_dropout = 0.1


if __name__ == "__main__":
    torch.manual_seed(0)
    model = TinyLM(TinyConfig()).eval()
    ids = torch.randint(0, TinyConfig.vocab_size, (2, 16))
    logits, loss = model(ids, labels=ids)
    print(tuple(logits.shape), float(loss))
