"""Causal LMs whose logits are scaled or softcapped between the head and the
loss, as transformers' Gemma-2/3, Cohere, Granite, Falcon-H1 and
RecurrentGemma are (tests/test_langpacks_flce_logits.py).

Rewritten by liger:fused_linear_cross_entropy_causal_lm (unsafe):
* `CappedLM`: Gemma-2's final softcap under `if cap is not None:` (the
  logits cast to float32 there, as Beam does), transformers 5.x'
  `self.loss_function(...)`;
* `ScaledLM`: Cohere's `logits * self.logit_scale`, a head with a bias, the
  4.x loss (`logits.float()`, the shift, `CrossEntropyLoss()`);
* `DividedCappedLM`: the head divided in its own statement (Falcon-H1's
  `self.lm_head(h) * m`, Granite's division), then RecurrentGemma's
  `cap = ...; logits = nn.functional.tanh(logits / cap) * cap`;
* `HeadDtypeLM`: Mamba's head kept in its own dtype (float64 here), the
  hidden states cast to it in the call.

Refused with the reason (S421):
* `LateScaleLM`: a factor after the softcap (the kernel caps last);
* `CalledScaleLM`: a factor computed by a call;
* `OtherCapLM`: `if a is not None:` around a softcap by another value.
"""

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

# what `loss_function` returns (set by the tests: transformers' ForCausalLMLoss)
LOSS = None


class Body(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, idx):
        h = self.embed(idx)
        return torch.tanh(self.mix(h)) * 3 + h


class _LM(nn.Module):
    def __init__(self, vocab=41, dim=16, bias=False):
        super().__init__()
        self.vocab_size = vocab
        self.body = Body(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=bias)

    @property
    def loss_function(self):
        return LOSS


class CappedLM(_LM):
    def __init__(self, cap=2.0):
        super().__init__()
        self.final_logit_softcapping = cap

    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states)
        if self.final_logit_softcapping is not None:
            logits = logits.float() / self.final_logit_softcapping
            logits = torch.tanh(logits)
            logits = logits * self.final_logit_softcapping

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return {"loss": loss, "logits": logits}


class ScaledLM(_LM):
    def __init__(self, scale=0.37):
        super().__init__(bias=True)
        self.logit_scale = scale

    def forward(self, idx, labels=None):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states)
        logits = logits * self.logit_scale
        logits = logits.float()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            loss = loss_fct(shift_logits.view(-1, self.vocab_size), shift_labels.view(-1))
        return loss, logits


class DividedCappedLM(_LM):
    def __init__(self, scaling=3.0, cap=1.5):
        super().__init__(bias=True)
        self.scaling = scaling
        self.soft_cap = cap

    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states) / self.scaling

        # soft-cap the logits
        cap = self.soft_cap
        logits = nn.functional.tanh(logits / cap) * cap

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return {"loss": loss, "logits": logits}


class HeadDtypeLM(_LM):
    def __init__(self):
        super().__init__()
        self.lm_head.double()

    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states.to(self.lm_head.weight.dtype)).float()

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return {"loss": loss, "logits": logits}


class LateScaleLM(_LM):
    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states)
        logits = torch.tanh(logits / 2.0) * 2.0
        logits = logits * 0.5
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return {"loss": loss, "logits": logits}


class CalledScaleLM(_LM):
    def scale(self):
        return 0.5

    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states)
        logits = logits * self.scale()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return {"loss": loss, "logits": logits}


class OtherCapLM(_LM):
    def __init__(self):
        super().__init__()
        self.a, self.b = 2.0, 3.0

    def forward(self, idx, labels=None, **kwargs):
        hidden_states = self.body(idx)
        logits = self.lm_head(hidden_states)
        if self.a is not None:
            logits = logits / self.b
            logits = torch.tanh(logits)
            logits = logits * self.b
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return {"loss": loss, "logits": logits}
