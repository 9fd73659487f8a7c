"""A small language model written from scratch, with its own class names.

Test input for rulepacks/liger.adr: the norms and MLPs are recognised by
what their forward computes, the losses by their calls.  `NotQuiteRMS`
and `BiasedGate` are near misses that must stay untouched.

Not a copy of examples/tiny_llm.py (the model users see, with attention):
this one is a catalogue of spellings, two or more per liger rule, and
near misses that have no place in an example.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ScaleNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class PlainRMS(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        """RMS norm in the input dtype, other spellings."""
        ms = torch.mean(x ** 2, dim=-1, keepdim=True)
        return x * (1 / torch.sqrt(ms + self.eps)) * self.scale


class NotQuiteRMS(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        ms = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(ms + self.eps)) + 1.0


class ManualLayerNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return self.gamma * ((x - mu) * torch.rsqrt(var + self.eps)) + self.beta


class GatedFF(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ActGatedFF(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate = nn.Linear(dim, hidden)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.up(x) * self.act(self.gate(x))
        return self.down(h)


class TanhGatedFF(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.wi_0 = nn.Linear(dim, hidden, bias=False)
        self.wi_1 = nn.Linear(dim, hidden, bias=False)
        self.wo = nn.Linear(hidden, dim, bias=False)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x):
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class BiasedGate(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x):
        g = F.silu(self.w1(x))
        if x.shape[0] > 1000:
            g = g * 0.5
        return self.w2(g * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.norm1 = ScaleNorm(dim)
        self.norm2 = PlainRMS(dim)
        self.norm3 = NotQuiteRMS(dim)
        self.ln = ManualLayerNorm(dim)
        self.ff1 = GatedFF(dim, hidden)
        self.ff2 = ActGatedFF(dim, hidden)
        self.ff3 = TanhGatedFF(dim, hidden)
        self.ff4 = BiasedGate(dim, hidden)

    def forward(self, x):
        x = x + self.ff1(self.norm1(x))
        x = x + self.ff2(self.norm2(x))
        x = x + self.ff3(self.norm3(x))
        x = x + self.ff4(self.ln(x))
        return x


class TinyLM(nn.Module):
    def __init__(self, vocab=37, dim=16, hidden=24, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim, hidden) for _ in range(layers)])
        self.norm = ScaleNorm(dim)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.loss_fct = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, ids, labels):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(self.norm(x)))
        flat = logits.view(-1, logits.shape[-1])
        targets = labels.view(-1)
        loss = F.cross_entropy(flat, targets)
        aux = self.loss_fct(flat, targets)
        return logits, loss + 0.5 * aux
