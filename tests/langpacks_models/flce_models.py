"""Language models written from scratch whose loss reads the LM head's
logits (tests/test_langpacks_flce.py, rule liger:fused_linear_cross_entropy).

* `NanoLM`: nanoGPT's spelling, `logits.view(-1, logits.size(-1))`, the
  loss the only use of the logits (training forward returns the loss alone);
* `ShiftLM`: the next-token shift inside the call,
  `logits[..., :-1, :].contiguous().view(...)` with `labels[..., 1:]`, a head
  with a bias, label smoothing, the loss computed only when labels are given;
* `FlatLM`: `logits.flatten(0, -2)`, `reduction="sum"`;
* `ReturnsLogits`: the logits are returned too (the fused op must not apply);
* `WeightedLM`: a class weight, which the fused op's rule does not pass on;
* `VocabLM`: the last size spelt `self.vocab`, not provably the logits' dim;
* `LossModuleLM`: an `nn.CrossEntropyLoss` attribute with its own arguments.
"""

import torch
from torch import nn
from torch.nn import functional as F


class NanoLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        x = torch.tanh(self.fc(self.wte(idx)))
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return loss


class ShiftLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx, labels=None):
        h = self.embed(idx) * 1.5
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[..., :-1, :].contiguous().view(-1, logits.size(-1)),
                                   labels[..., 1:].contiguous().view(-1), label_smoothing=0.1)
        return loss


class FlatLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        h = self.embed(idx)
        logits = self.out(h)
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="sum")


class ReturnsLogits(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        h = self.embed(idx)
        logits = self.lm_head(h)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


class WeightedLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("class_weight", torch.linspace(0.5, 1.5, vocab))

    def forward(self, idx, targets):
        h = self.embed(idx)
        logits = self.lm_head(h)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), weight=self.class_weight)


class VocabLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        h = self.embed(idx)
        logits = self.lm_head(h)
        return F.cross_entropy(logits.view(-1, self.vocab), targets.view(-1))


class LossModuleLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.05)

    def forward(self, idx, targets):
        h = self.embed(idx)
        logits = self.lm_head(h)
        return self.loss_fn(logits.view(-1, logits.size(-1)), targets.view(-1))
