"""sdpa.adr on transformers 4.35.0's T5 (the T5 block of rulepacks/gen_sdpa.py).

The installed modeling_t5.py is rewritten by `dslc apply` with the sdpa pack
and loaded as a module of `transformers.models.t5`; a tiny
T5ForConditionalGeneration built from it, with the original's state_dict
(loaded strictly), must give the original's logits, loss and every
parameter gradient (fp32, 1e-5) in train (dropout 0) and eval, with and
without padding, with a head mask, with output_attentions and in cached
decoding.  The kernel must actually run where neither a head mask nor the
weights are asked for (the per-call guard's fast branch).
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdpa_hf_rewrite import SUFFIX, load_rewritten  # noqa: E402

pytestmark = pytest.mark.slow  # rewrites a 4.35.0 modeling file (about 20 s)

MODULE = "transformers.models.t5.modeling_t5"


@pytest.fixture(scope="module")
def t5():
    original, mod, source, matches = load_rewritten(MODULE)
    name = MODULE + SUFFIX
    calls = []
    real = mod.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    mod.scaled_dot_product_attention = counting
    yield original, mod, source, matches, calls
    sys.modules.pop(name, None)


def _config(**kw):
    cfg = transformers.T5Config(vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _pair(original, mod, cfg):
    torch.manual_seed(0)
    a = original.T5ForConditionalGeneration(cfg)
    b = mod.T5ForConditionalGeneration(cfg)
    b.load_state_dict(a.state_dict(), strict=True)
    return a, b


def _inputs(padding: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 7), generator=g)
    labels = torch.randint(1, 97, (3, 5), generator=g)
    mask = torch.ones_like(ids)
    if padding:
        mask[0, 5:] = 0
        mask[2, 3:] = 0
        ids = ids.masked_fill(mask == 0, 0)
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
        _close(pa.grad, pb.grad, f"grad of {n}")
    return outs


def test_t5_attention_is_rewritten(t5):
    _, _, source, matches, _ = t5
    applied = [m for m in matches if m.status == "applied"]
    assert [m.rule.split(":")[-1] for m in applied] == ["matmul_t32_noscale_add_f32typeas_fdrop"]
    assert "scaled_dot_product_attention(query_states, key_states.transpose(3, 2).mT, value_states" in source
    assert "if layer_head_mask is not None or output_attentions:" in source
    assert "scores = torch.matmul(query_states[..., :0, :], key_states.transpose(3, 2)[..., :0])" in source


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("padding", [False, True])
def test_t5_same_logits_loss_and_gradients(t5, train, padding):
    original, mod, _, _, calls = t5
    a, b = _pair(original, mod, _config())
    ids, mask, labels = _inputs(padding)
    before = len(calls)
    _compare(a, b, train, input_ids=ids, attention_mask=mask, labels=labels)
    # encoder self, decoder self and cross attention, per layer: the kernel ran
    assert len(calls) - before == 6


def test_t5_output_attentions_and_head_mask(t5):
    original, mod, _, _, calls = t5
    a, b = _pair(original, mod, _config())
    ids, mask, labels = _inputs(True)
    outs = _compare(a, b, True, input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)
    for key in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        for x, y in zip(getattr(outs[0], key), getattr(outs[1], key)):
            _close(x, y, key)
    before = len(calls)
    head = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    _compare(a, b, False, input_ids=ids, attention_mask=mask, labels=labels, head_mask=head,
             decoder_head_mask=head.flip(0), cross_attn_head_mask=head)
    assert len(calls) == before  # the original statements ran (head mask given)


def test_t5_cached_decoding(t5):
    original, mod, _, _, calls = t5
    a, b = _pair(original, mod, _config())
    a.eval()
    b.eval()
    ids, mask, _ = _inputs(True)
    before = len(calls)
    with torch.no_grad():
        ga = a.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                        output_scores=True, return_dict_in_generate=True)
        gb = b.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                        output_scores=True, return_dict_in_generate=True)
    assert torch.equal(ga.sequences, gb.sequences)
    for x, y in zip(ga.scores, gb.scores):
        _close(x, y, "scores of a decoding step")
    assert len(calls) > before


def test_t5_train_with_dropout_runs_the_kernel(t5):
    """Dropout on: SDPA drops with its own random stream (the rule is not
    `deterministic`), so only the shapes and a finite loss are compared."""
    original, mod, _, _, calls = t5
    a, b = _pair(original, mod, _config(dropout_rate=0.1))
    ids, mask, labels = _inputs(True)
    b.train()
    before = len(calls)
    out = b(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.isfinite(out.loss) and out.logits.shape == a(input_ids=ids, labels=labels).logits.shape
    assert len(calls) - before == 6
