"""`dslc verify --factory` functions for attention classes of transformers
4.35.0 that verify's tiny configs cannot build or feed (their constructors
take sizes, not a config, and their whole models need image backbones or
time-series features).  Each `FUNC(cls)` returns `(module, inputs)`;
verify calls it for the original and for the rewritten class with the same
seed.  Used by tests/test_sdpa_hf_attention.py."""

from __future__ import annotations

import torch

B, T, S = 2, 5, 7  # batch, queries, keys


def _padding_mask(tgt: int, src: int) -> torch.Tensor:
    """Additive (B, 1, tgt, src) mask: the second sequence has its last two
    keys padded (every query row keeps some key)."""
    mask = torch.zeros(B, 1, tgt, src)
    mask[1, :, :, src - 2:] = torch.finfo(torch.float32).min
    return mask


def _g(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def detr_self(cls):
    """DetrAttention and its copies: self-attention, object queries as position embeddings, padding mask."""
    m = cls(embed_dim=32, num_heads=4)
    return m, {"hidden_states": _g(B, T, 32), "attention_mask": _padding_mask(T, T),
               "object_queries": _g(B, T, 32)}


def detr_cross(cls):
    """DetrAttention as cross-attention: keys from key_value_states plus spatial position embeddings."""
    m = cls(embed_dim=32, num_heads=4)
    return m, {"hidden_states": _g(B, T, 32), "attention_mask": _padding_mask(T, S),
               "object_queries": _g(B, T, 32), "key_value_states": _g(B, S, 32),
               "spatial_position_embeddings": _g(B, S, 32)}


def conditional(cls):
    """ConditionalDetrAttention as Conditional DETR's cross-attention uses it:
    queries and keys of twice the width of the values (head dims 16 and 8)."""
    m = cls(embed_dim=64, out_dim=32, num_heads=4)
    return m, {"hidden_states": _g(B, T, 64), "attention_mask": _padding_mask(T, S),
               "key_states": _g(B, S, 64), "value_states": _g(B, S, 32)}


def conditional_self(cls):
    """ConditionalDetrAttention with equal widths (its self-attention)."""
    m = cls(embed_dim=32, out_dim=32, num_heads=4)
    return m, {"hidden_states": _g(B, T, 32), "attention_mask": _padding_mask(T, T),
               "key_states": _g(B, T, 32), "value_states": _g(B, T, 32)}


def xclip_cross(cls):
    """XCLIPCrossAttention (the prompt generator's): queries, keys and values given."""
    from transformers import XCLIPConfig

    cfg = XCLIPConfig(projection_dim=32, prompt_num_attention_heads=4, prompt_attention_dropout=0.0,
                      prompt_projection_dropout=0.0)
    m = cls(cfg)
    return m, {"queries": _g(B, T, 32), "keys": _g(B, S, 32), "values": _g(B, S, 32)}


def bart_self(cls):
    """A BART-style attention (embed_dim, num_heads): self-attention with a padding mask."""
    m = cls(embed_dim=32, num_heads=4)
    return m, {"hidden_states": _g(B, T, 32), "attention_mask": _padding_mask(T, T)}


def bart_causal(cls):
    """The same as a decoder's self-attention: a causal mask plus padding."""
    m = cls(embed_dim=32, num_heads=4, is_decoder=True)
    mask = _padding_mask(T, T)
    mask = mask + torch.triu(torch.full((T, T), torch.finfo(torch.float32).min), 1)
    mask = mask.clamp(min=torch.finfo(torch.float32).min)
    return m, {"hidden_states": _g(B, T, 32), "attention_mask": mask}


def bart_cross(cls):
    """The same as cross-attention: keys and values from key_value_states."""
    m = cls(embed_dim=32, num_heads=4, is_decoder=True)
    return m, {"hidden_states": _g(B, T, 32), "key_value_states": _g(B, S, 32),
               "attention_mask": _padding_mask(T, S)}


# class name -> the factories above that build it (benchmarks/verify_corpus.py
# --factories reads this to check the classes its tiny configs skip)
BY_CLASS = {
    "DetrAttention": ("detr_self", "detr_cross"),
    "TableTransformerAttention": ("detr_self", "detr_cross"),
    "ConditionalDetrAttention": ("conditional", "conditional_self"),
    "XCLIPCrossAttention": ("xclip_cross",),
    "TimeSeriesTransformerAttention": ("bart_self", "bart_causal", "bart_cross"),
    "GPTSanJapaneseAttention": ("bart_self", "bart_causal", "bart_cross"),
}
