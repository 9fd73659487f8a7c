"""Causal LMs written the way transformers' `*ForCausalLM` classes are
(tests/test_langpacks_flce_causal_lm.py): the loss computed in forward under
`if labels is not None:` and the logits returned beside it.

Rewritten by liger:fused_linear_cross_entropy_causal_lm (unsafe):
* `SplitHeadLM`: the head in the `else` of a config test, `logits.float()`,
  the shift spread over statements, a `CrossEntropyLoss()` built in forward,
  `view(-1, self.vocab_size)`, a device move; returns an output dict;
* `AlignedLM`: labels already aligned (no shift), the head on `outputs[0]`
  (its output made contiguous),
  `labels.to(logits.device)` first, the loss in one call; returns a tuple;
* `CastLM`: `self.head(h).to(torch.float32)` and the shift inside the call;
* `KwargsLM`: transformers 5.x' `self.loss_function(logits, labels,
  vocab_size=..., **kwargs)` (the loss chosen at run time:
  `LOSS`, which the tests set).

Refused with the reason (S421):
* `SmoothedLM`: `CrossEntropyLoss(label_smoothing=0.1)`;
* `PeekLM`: reads `shift_labels` after the loss;
* `OtherSizeLM`: flattens with the size of another tensor.

No candidate (not reported): `Tagger`, a Linear with no labelled loss after it.
"""

import torch
from torch import nn
from torch.nn import CrossEntropyLoss


class Body(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, idx):
        h = self.embed(idx)
        return (torch.tanh(self.mix(h)) + h,)


class SplitHeadLM(nn.Module):
    def __init__(self, vocab=41, dim=16, split=1):
        super().__init__()
        self.vocab_size = vocab
        self.split = split
        self.body = Body(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None):
        hidden_states = self.body(idx)[0]
        if self.split > 1:
            parts = self.lm_head.weight.chunk(self.split, dim=0)
            logits = torch.cat([hidden_states @ p.t() for p in parts], dim=-1)
        else:
            logits = self.lm_head(hidden_states)
        logits = logits.float()

        loss = None
        if labels is not None:
            # next-token prediction
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            shift_logits = shift_logits.view(-1, self.vocab_size)
            shift_labels = shift_labels.view(-1)
            shift_labels = shift_labels.to(shift_logits.device)
            loss = loss_fct(shift_logits, shift_labels)

        return {"loss": loss, "logits": logits}


class AlignedLM(nn.Module):
    def __init__(self, vocab=41, dim=16):
        super().__init__()
        self.body = Body(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, idx, labels=None):
        outputs = self.body(idx)
        logits = self.out(outputs[0]).contiguous()
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss_fct = nn.CrossEntropyLoss()
            loss = loss_fct(logits.view(-1, logits.size(-1)), labels.view(-1))
        output = (logits,) + outputs[1:]
        return ((loss,) + output) if loss is not None else output


class CastLM(nn.Module):
    def __init__(self, vocab=41, dim=16):
        super().__init__()
        self.body = Body(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None):
        h = self.body(idx)[0]
        lm_logits = self.head(h).to(torch.float32)
        loss = None
        if labels is not None:
            shift_logits = lm_logits[:, :-1, :].contiguous()
            shift_labels = labels[:, 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        return loss, lm_logits


# what `KwargsLM.loss_function` returns (set by the tests)
LOSS = None


class KwargsLM(nn.Module):
    def __init__(self, vocab=41, dim=16):
        super().__init__()
        self.vocab = vocab
        self.body = Body(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    @property
    def loss_function(self):
        return LOSS

    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)[0]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.vocab, **kwargs)

        return {"loss": loss, "logits": logits}


class SmoothedLM(nn.Module):
    def __init__(self, vocab=41, dim=16):
        super().__init__()
        self.body = Body(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None):
        h = self.body(idx)[0]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss(label_smoothing=0.1)
            loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        return loss, logits


class PeekLM(nn.Module):
    def __init__(self, vocab=41, dim=16):
        super().__init__()
        self.body = Body(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None):
        h = self.body(idx)[0]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        return loss, logits, (shift_labels if labels is not None else None)


class OtherSizeLM(nn.Module):
    def __init__(self, vocab=41, dim=16):
        super().__init__()
        self.body = Body(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None, other=None):
        h = self.body(idx)[0]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss_fct = CrossEntropyLoss()
            loss = loss_fct(logits.view(-1, other.size(-1)), labels.view(-1))
        return loss, logits


class Tagger(nn.Module):
    def __init__(self, vocab=41, dim=16, tags=5):
        super().__init__()
        self.body = Body(vocab, dim)
        self.tag = nn.Linear(dim, tags)

    def forward(self, idx):
        return self.tag(self.body(idx)[0])
