"""sdpa.adr on transformers 4.35.0's BART-style attention (BartAttention and
its "Copied from" versions; rulepacks/gen_sdpa.py's bmm rules with `option
shape`, the per-call guard of kinds/keep.py and kinds/keepelse.py).

The installed modeling file is rewritten by `dslc apply` with the sdpa pack
and loaded as a module of its package; a tiny model with a random config,
built from it with the original's state_dict (loaded strictly), must give
the original's logits, loss and every parameter gradient (fp32, 1e-5) in
train (dropout 0) and eval, with and without padding, with a head mask,
with output_attentions and in cached generation; the kernel must run where
the guard's conditions are all false.
"""

from __future__ import annotations


import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdpa_hf_rewrite import load_rewritten  # noqa: E402

pytestmark = pytest.mark.slow  # rewrites 4.35.0 modeling files (about 20 s each)


MODELS = {
    # name: (module, model class, config class, attention class, config kwargs)
    "bart": ("transformers.models.bart.modeling_bart", "BartForConditionalGeneration", "BartConfig", "BartAttention", {}),
    "marian": ("transformers.models.marian.modeling_marian", "MarianMTModel", "MarianConfig", "MarianAttention",
               {"decoder_start_token_id": 0}),
}


_LOADED: dict = {}


def _model_pair(name):
    module, _, _, _, _ = MODELS[name]
    if name not in _LOADED:
        original, mod, source, matches = load_rewritten(module)
        if "scaled_dot_product_attention" in mod.__dict__:  # imported by name: look it up per call (`calls`)
            mod.scaled_dot_product_attention = lambda *a, **k: torch.nn.functional.scaled_dot_product_attention(*a, **k)
        _LOADED[name] = (original, mod, source, matches)
    return _LOADED[name]


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        seen.append(kwargs.get("attn_mask") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return seen


def _config(name, **kw):
    _, _, cfg_cls, _, extra = MODELS[name]
    cfg = getattr(transformers, cfg_cls)(
        vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, **extra)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _pair(name, cfg):
    original, mod, _, _ = _model_pair(name)
    cls = MODELS[name][1]
    torch.manual_seed(0)
    a = getattr(original, cls)(cfg)
    b = getattr(mod, cls)(cfg)
    b.load_state_dict(a.state_dict(), strict=True)
    return a, b


def _inputs(padding: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 7), generator=g)
    labels = torch.randint(3, 97, (3, 5), generator=g)
    mask = torch.ones_like(ids)
    if padding:
        mask[0, 5:] = 0
        mask[2, 3:] = 0
        ids = ids.masked_fill(mask == 0, 1)
    return ids, mask, labels


def _close(x, y, what):
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def _compare(a, b, train: bool, **kw):
    a.train(train)
    b.train(train)
    outs = []
    for m in (a, b):
        m.zero_grad()
        out = m(**kw)
        out.loss.backward()
        outs.append(out)
    _close(outs[0].logits, outs[1].logits, "logits")
    _close(outs[0].loss, outs[1].loss, "loss")
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is None:
            assert pb.grad is None, n
            continue
        _close(pa.grad, pb.grad, f"grad of {n}")
    return outs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_attention_is_rewritten(name):
    _, _, source, matches = _model_pair(name)
    attn = MODELS[name][3]
    applied = [m for m in matches if m.status == "applied" and m.class_name == attn]
    assert [m.rule.split(":")[-1] for m in applied] == ["bmm_t12_noscale_add_softmax_fdrop"], matches
    assert "scaled_dot_product_attention(query_states, key_states, value_states" in source


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("padding", [False, True], ids=["full", "padded"])
def test_same_logits_loss_and_gradients(name, calls, train, padding):
    a, b = _pair(name, _config(name))
    ids, mask, labels = _inputs(padding)
    _compare(a, b, train, input_ids=ids, attention_mask=mask, labels=labels)
    # one kernel call per attention of one forward: encoder self, decoder self and cross
    n = a.config.encoder_layers + 2 * a.config.decoder_layers
    assert len(calls) == n and True in calls  # every layer ran the kernel, the masks passed to it
    _compare(a, b, train, input_ids=ids, labels=labels)  # no mask given to the encoder
    assert len(calls) == 2 * n and False in calls[n:]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_attentions_and_head_mask(name, calls):
    a, b = _pair(name, _config(name))
    ids, mask, labels = _inputs(True)
    outs = _compare(a, b, True, input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)
    for key in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        for x, y in zip(getattr(outs[0], key), getattr(outs[1], key)):
            _close(x, y, key)
    head = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    _compare(a, b, False, input_ids=ids, attention_mask=mask, labels=labels, head_mask=head,
             decoder_head_mask=head.flip(0), cross_attn_head_mask=head)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_generation(name, calls):
    a, b = _pair(name, _config(name))
    a.eval()
    b.eval()
    ids, mask, _ = _inputs(True)
    with torch.no_grad():
        for kw in ({"attention_mask": mask}, {}):
            ga = a.generate(input_ids=ids, max_new_tokens=6, do_sample=False, num_beams=1,
                            output_scores=True, return_dict_in_generate=True, **kw)
            gb = b.generate(input_ids=ids, max_new_tokens=6, do_sample=False, num_beams=1,
                            output_scores=True, return_dict_in_generate=True, **kw)
            assert torch.equal(ga.sequences, gb.sequences)
            for x, y in zip(ga.scores, gb.scores):
                _close(x, y, "scores of a decoding step")
    assert calls


# ---------------------------------------------------------------------------
# Whisper (WhisperAttention: copied from BartAttention; an encoder over
# audio features, no encoder mask)

MODELS["whisper"] = ("transformers.models.whisper.modeling_whisper", "WhisperForConditionalGeneration",
                     "WhisperConfig", "WhisperAttention", {})


def _whisper_pair():
    cfg = transformers.WhisperConfig(
        vocab_size=97, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=8,
        max_target_positions=32, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0,
        begin_suppress_tokens=None, suppress_tokens=None)
    original, mod, _, _ = _model_pair("whisper")
    torch.manual_seed(0)
    a = original.WhisperForConditionalGeneration(cfg)
    b = mod.WhisperForConditionalGeneration(cfg)
    b.load_state_dict(a.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 16, generator=g)
    labels = torch.randint(3, 97, (2, 5), generator=g)
    return a, b, feats, labels


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_whisper_same_logits_loss_gradients_and_attentions(calls, train):
    a, b, feats, labels = _whisper_pair()
    dmask = torch.ones_like(labels)
    dmask[1, 3:] = 0
    _compare(a, b, train, input_features=feats, labels=labels)
    assert len(calls) == 6
    _compare(a, b, train, input_features=feats, labels=labels, decoder_attention_mask=dmask)
    outs = _compare(a, b, train, input_features=feats, labels=labels, output_attentions=True)
    for key in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        for x, y in zip(getattr(outs[0], key), getattr(outs[1], key)):
            _close(x, y, key)
    head = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    _compare(a, b, train, input_features=feats, labels=labels, head_mask=head, decoder_head_mask=head.flip(0),
             cross_attn_head_mask=head)
    assert len(calls) == 6 * 2  # the guard's original branch ran where weights or a head mask were asked


def test_whisper_attention_is_rewritten():
    _, _, source, matches = _model_pair("whisper")
    applied = [m for m in matches if m.status == "applied" and m.class_name == "WhisperAttention"]
    assert [m.rule.split(":")[-1] for m in applied] == ["bmm_t12_noscale_add_softmax_fdrop"], matches
    assert ".broadcast_shapes(attention_mask.shape, (bsz, self.num_heads, tgt_len, src_len))).reshape(bsz * self.num_heads, tgt_len, src_len)" in source


def test_whisper_cached_decoding(calls):
    a, b, feats, labels = _whisper_pair()
    a.eval()
    b.eval()
    with torch.no_grad():
        steps = []
        for m in (a, b):
            first = m(input_features=feats, decoder_input_ids=labels[:, :3], use_cache=True)
            second = m(encoder_outputs=(first.encoder_last_hidden_state,), decoder_input_ids=labels[:, 3:4],
                       past_key_values=first.past_key_values, use_cache=True)
            steps.append((first.logits, second.logits))
    for (x1, x2), (y1, y2) in zip([steps[0]], [steps[1]]):
        _close(x1, y1, "logits of the prompt")
        _close(x2, y2, "logits of a cached step")
    assert calls
