"""Language models with the spellings of the LM head + loss that
tests/langpacks_models/flce_models.py does not have (tests/test_langpacks_flce_forms.py).

Rewritten (liger:fused_linear_cross_entropy*_float):
* `FloatLM`: `logits = logits.float()` between the head and F.cross_entropy
  (transformers' Llama computes `logits = logits.float()`);
* `FloatLossModuleLM`: the same with an nn.CrossEntropyLoss attribute, the
  loss under `if labels is not None:`, the next-token shift in the call.

Refused, with the reason (near misses):
* `LocalLossLM`: a loss module built inside forward (`loss_fct =
  CrossEntropyLoss()`, transformers' most common spelling);
* `SpreadLM`: the reshaping spread over several statements
  (`shift_logits = logits[..., :-1, :].contiguous()` then `.view(...)`);
* `HFStyleLM`: transformers 4.35's Llama forward, all three together, and the
  logits returned beside the loss.
"""

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from torch.nn import functional as F


class FloatLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        h = self.embed(idx) * 0.5 + 0.25
        logits = self.lm_head(h)
        logits = logits.float()
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=0)
        return loss


class FloatLossModuleLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, idx, labels=None):
        h = torch.tanh(self.embed(idx)) * 2.0
        logits = self.head(h)
        logits = logits.float()
        loss = None
        if labels is not None:
            loss = self.loss_fn(logits[..., :-1, :].contiguous().view(-1, logits.size(-1)), labels[..., 1:].reshape(-1))
        return loss


class LocalLossLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        h = self.embed(idx)
        logits = self.lm_head(h)
        loss_fct = CrossEntropyLoss()
        loss = loss_fct(logits.view(-1, logits.size(-1)), targets.view(-1))
        return loss


class SpreadLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels):
        h = self.embed(idx)
        logits = self.lm_head(h)
        shift_logits = logits[..., :-1, :].contiguous()
        shift_logits = shift_logits.view(-1, shift_logits.size(-1))
        return F.cross_entropy(shift_logits, labels[..., 1:].reshape(-1))


class HFStyleLM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.vocab_size = vocab
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None):
        hidden_states = self.embed(idx)
        logits = self.lm_head(hidden_states)
        logits = logits.float()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            shift_logits = shift_logits.view(-1, self.vocab_size)
            shift_labels = shift_labels.view(-1)
            loss = loss_fct(shift_logits, shift_labels)
        return loss, logits
