"""Tiny Hugging Face configurations and synthesised example inputs for `dslc verify`.

A modeling file of transformers builds its layers from a `XxxConfig`.  To run
an original and a rewritten class side by side we need a configuration small
enough to be fast on a CPU and inputs whose shapes agree with it.  Nothing here
knows about rules; `dslc.verify.equivalence` calls it when no factory is given.

Shrinking a configuration (`tiny_config`):
  1. Instantiate the config class with its defaults.
  2. Overwrite the generic size fields that exist on it (hidden_size 32,
     2 layers, 4 heads, intermediate 37, vocabulary 99, image 32, ...).
  3. Shrink list-valued stage sizes (`hidden_sizes`, `depths`, ...) keeping
     their length, and clip layer-index lists to the layer count.
  4. Apply the per-model fixes in `_MODEL_OVERRIDES` (fields that must agree
     with each other, e.g. DPT's neck and backbone indices).
  5. Optionally, a variant from `_MODEL_VARIANTS` that turns on code paths
     the defaults leave dead; `dslc.verify.equivalence` compares every variant.
Dropout probabilities are left as given: the comparison runs in eval mode.

Synthesising inputs (`input_candidates`) reads the forward signature and
proposes argument sets, most plausible first; the caller keeps the first set
the original module accepts.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any, Iterator

BATCH = 2
SEQ = 7
SPATIAL = 8

# Generic size fields: set when the config has them.
_GENERIC = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_layers": 2,
    "n_layer": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 37,
    "vocab_size": 99,
    "max_position_embeddings": 64,
    "n_positions": 64,
    "image_size": 32,
    "patch_size": 8,
    "embedding_size": 16,
    "fusion_hidden_size": 16,
    # encoder-decoder names (BART, T5, Whisper, ...)
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "num_labels": 2,  # question answering splits its logits in two
}

# Fields that must agree with each other, by `model_type`.
_MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "dpt": {
        "is_hybrid": False,
        "backbone_out_indices": [0, 1],
        "neck_hidden_sizes": [16, 32],
        "reassemble_factors": [4, 2],
        "head_hidden_size": 16,
    },
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "bert": {"type_vocab_size": 2},
    "gptj": {"rotary_dim": 4},  # at most the head size (32 / 4 heads)
    "codegen": {"rotary_dim": 4},
    "swin": {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 2, 1],
             "num_heads": [2, 2, 4], "window_size": 2},
    "segformer": {"hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 2, 4, 8],
                  "depths": [1, 1, 1, 1], "decoder_hidden_size": 16},
    "roberta": {"type_vocab_size": 1, "pad_token_id": 1},
}

# Further configurations to compare, by `model_type`: each switches on code
# paths the defaults leave dead (DPT's BatchNorm in the fusion residual, a
# tanh-GELU activation key, ResNet's basic blocks).
_MODEL_VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    "dpt": ({"use_batch_norm_in_fusion_residual": True},),
    "bert": ({"hidden_act": "gelu_new"},),
    "roberta": ({"hidden_act": "gelu_new"},),
    "resnet": ({"layer_type": "basic"},),
}

_STAGE_LISTS = ("hidden_sizes", "embed_dims", "dims")
_DEPTH_LISTS = ("depths",)
_INDEX_LISTS = ("backbone_out_indices", "out_indices")

# Parameter names that receive a float activation tensor.
_ACTIVATION_NAMES = (
    "hidden_states", "hidden_state", "input_tensor", "input", "inputs", "x",
    "features", "embeddings", "inputs_embeds",
)


def is_config_class(obj: object) -> bool:
    """Whether `obj` is a transformers `PretrainedConfig` subclass (by MRO name)."""
    if not isinstance(obj, type):
        return False
    names = [base.__name__ for base in obj.__mro__]
    return "PretrainedConfig" in names and obj.__name__ != "PretrainedConfig"


def is_plain_config(obj: object, module: Any) -> bool:
    """A `...Config` class defined in `module` that takes no constructor arguments."""
    if not isinstance(obj, type) or not obj.__name__.endswith("Config") or is_config_class(obj):
        return False
    if obj.__module__ != getattr(module, "__name__", None):
        return False
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def is_pretrained_model(obj: object) -> bool:
    if not isinstance(obj, type):
        return False
    names = [base.__name__ for base in obj.__mro__]
    return "PreTrainedModel" in names and not obj.__name__.endswith("PreTrainedModel")


def config_candidates(module: Any, cls: type) -> list[type]:
    """Config classes visible in `module`, the likeliest for `cls` first.

    1. `cls.config_class` when the class declares one (PreTrainedModel does).
    2. Every `PretrainedConfig` subclass in the module's globals, and every
       plain `...Config` class the module defines itself (the examples/
       convention: class attributes, no constructor arguments), ordered by
       the length of the name prefix it shares with `cls` (BertConfig for
       BertSelfOutput), then by name for determinism.
    """
    found: list[type] = []
    declared = getattr(cls, "config_class", None)
    if is_config_class(declared):
        found.append(declared)
    pool = sorted({v for v in vars(module).values() if is_config_class(v) or is_plain_config(v, module)},
                  key=lambda c: c.__name__)

    def shared(c: type) -> int:
        a, b = c.__name__.removesuffix("Config").lower(), cls.__name__.lower()
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    for cand in sorted(pool, key=lambda c: -shared(c)):
        if cand not in found:
            found.append(cand)
    return found


def variants(config_cls: type) -> tuple[str, ...]:
    """Labels of the configurations `tiny_config` offers for a class (the first is "")."""
    extra = _MODEL_VARIANTS.get(getattr(config_cls, "model_type", ""), ())
    return ("",) + tuple(",".join(f"{k}={v!r}" for k, v in ov.items()) for ov in extra)


def tiny_config(config_cls: type, variant: int = 0) -> Any:
    """A shrunk instance of `config_cls` (see the module docstring).

    `variant` > 0 also applies that entry of `_MODEL_VARIANTS` (step 5).
    A plain (non-transformers) config is used as it is: it is the file's own
    choice of small sizes.
    """
    cfg = config_cls()
    if not is_config_class(config_cls):
        return cfg
    for key, value in _GENERIC.items():
        # A per-stage list (Segformer's heads) is left to the overrides.
        if hasattr(cfg, key) and not isinstance(getattr(cfg, key), (list, tuple)):
            setattr(cfg, key, value)
    layers = getattr(cfg, "num_hidden_layers", 2) or 2
    for key in _STAGE_LISTS:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
            setattr(cfg, key, [8 * (i + 1) for i in range(len(value))])
    for key in _DEPTH_LISTS:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)) and value:
            setattr(cfg, key, [1] * len(value))
    for key in _INDEX_LISTS:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)) and value:
            setattr(cfg, key, [min(int(v), layers - 1) for v in value][:layers])
    for key, value in _MODEL_OVERRIDES.get(getattr(cfg, "model_type", ""), {}).items():
        setattr(cfg, key, value)
    if variant:
        for key, value in _MODEL_VARIANTS[cfg.model_type][variant - 1].items():
            setattr(cfg, key, value)
    return cfg


def construct_with_config(cls: type, config: Any) -> Any:
    """`cls(config)` when the constructor needs nothing else; raises TypeError otherwise."""
    sig = inspect.signature(cls.__init__)
    params = [p for p in list(sig.parameters.values())[1:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p.name for p in params if p.default is p.empty]
    if required and required != ["config"]:
        raise TypeError(f"__init__ needs {', '.join(required)}")
    return cls(config) if required else (cls(config=config) if "config" in sig.parameters else cls())


def _dims(cfg: Any) -> tuple[list[int], list[int]]:
    """Plausible last dimensions (3-D activations) and channel counts (4-D)."""
    def ints(*names: str) -> list[int]:
        out: list[int] = []
        for name in names:
            value = getattr(cfg, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            out.extend(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0)
        return out

    features = list(dict.fromkeys(ints("hidden_size", "intermediate_size", "embedding_size")))
    channels = list(dict.fromkeys(ints("hidden_size", "fusion_hidden_size", "num_channels",
                                       "embedding_size", "hidden_sizes", "neck_hidden_sizes")))
    return features, channels


def model_inputs(forward: Any, cfg: Any, torch: Any) -> dict[str, Any] | None:
    """Inputs for a whole-model class: input_ids (+ attention_mask) or pixel_values."""
    names = list(inspect.signature(forward).parameters)
    gen = torch.Generator().manual_seed(1234)
    if "input_ids" in names:
        vocab = int(getattr(cfg, "vocab_size", 99) or 99)
        ids = torch.randint(3, vocab, (BATCH, SEQ), generator=gen)
        args = {"input_ids": ids}
        if "attention_mask" in names:
            mask = torch.ones(BATCH, SEQ, dtype=torch.long)
            mask[1, -2:] = 0  # exercise the padding path
            args["attention_mask"] = mask
        return args
    if "pixel_values" in names:
        size = int(getattr(cfg, "image_size", 32) or 32)
        chans = int(getattr(cfg, "num_channels", 3) or 3)
        return {"pixel_values": torch.randn(BATCH, chans, size, size, generator=gen)}
    return None


def input_candidates(forward: Any, cfg: Any, torch: Any, limit: int = 16) -> Iterator[dict[str, Any]]:
    """Keyword-argument sets for `forward`, most plausible first.

    1. Required parameters only (plus input_ids/pixel_values, which whole
       models declare optional); a required parameter with an unknown name
       means no candidate at all.
    2. Activation tensors get 3-D shapes (batch, seq, d) for each feature size
       of the config, then 4-D shapes (batch, c, 8, 8) for each channel count;
       with several activation parameters, the combinations (at most `limit`).
    """
    sig = inspect.signature(forward)
    params = [p for p in list(sig.parameters.values())[1:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    whole = model_inputs(forward, cfg, torch)
    required = [p for p in params if p.default is p.empty]
    if whole is not None and all(p.name in whole for p in required):
        yield whole
        return
    if any(p.name not in _ACTIVATION_NAMES for p in required):
        return
    features, channels = _dims(cfg)
    shapes = [(BATCH, SEQ, d) for d in features] + [(BATCH, c, SPATIAL, SPATIAL) for c in channels]
    for combo in itertools.islice(itertools.product(shapes, repeat=len(required)), limit):
        gen = torch.Generator().manual_seed(4321)
        yield {p.name: torch.randn(*shape, generator=gen) for p, shape in zip(required, combo)}
