"""sdpa.adr on transformers 4.35.0's Bark (the causal `masked_fill` block of
rulepacks/gen_sdpa.py under `if self.is_causal:`, flattened by the per-call
guard: kinds/keepflat.py; the guard at the helper's call: kinds/keepcall.py).

The installed modeling_bark.py is rewritten by `dslc apply` with the sdpa
pack and loaded as a module of `transformers.models.bark`; a tiny causal
BarkCausalModel built from it, with the original's state_dict (loaded
strictly), must give the original's logits, a next-token loss and every
parameter gradient (fp32, 1e-5) in train (dropout 0) and eval, with and
without (right) padding, with a head mask, with output_attentions, and the
same cached greedy decoding; the kernel runs in the causal layers only
where neither a head mask nor the weights are asked for.  A non-causal
BarkSelfAttention (the fine model's) runs the original.
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdpa_hf_rewrite import SUFFIX, load_rewritten, rewrite  # noqa: E402

pytestmark = pytest.mark.slow  # rewrites a 4.35.0 modeling file (about 20 s)

MODULE = "transformers.models.bark.modeling_bark"


@pytest.fixture(scope="module")
def bark():
    original, mod, source, matches = load_rewritten(MODULE)
    name = MODULE + SUFFIX
    calls = []
    # the rewrite calls `F.scaled_dot_product_attention` (the file's own `F`):
    # counted through torch.nn.functional while the tests run (the original is eager)
    functional = torch.nn.functional
    real = functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    functional.scaled_dot_product_attention = counting
    try:
        yield original, mod, source, matches, calls
    finally:
        functional.scaled_dot_product_attention = real
        sys.modules.pop(name, None)


def _config(**kw):
    cfg = transformers.BarkSemanticConfig(block_size=32, input_vocab_size=97, output_vocab_size=97, num_layers=2,
                                          num_heads=4, hidden_size=32, dropout=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _pair(original, mod, cfg):
    torch.manual_seed(0)
    a = original.BarkCausalModel(cfg)
    b = mod.BarkCausalModel(cfg)
    b.load_state_dict(a.state_dict(), strict=True)
    return a, b


def _inputs(padding: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    if padding:  # right padding
        mask[0, 6:] = 0
        mask[2, 4:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def _close(x, y, what):
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def _compare(a, b, train: bool, mask, **kw):
    a.train(train)
    b.train(train)
    outs = []
    for m in (a, b):
        m.zero_grad()
        out = m(**kw)
        labels = kw["input_ids"][:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 97), labels.reshape(-1))
        loss.backward()
        outs.append((out, loss))
    _close(outs[0][0].logits, outs[1][0].logits, "logits")
    _close(outs[0][1], outs[1][1], "loss")
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        _close(pa.grad, pb.grad, f"grad of {n}")
    return [o for o, _ in outs]


def test_bark_attention_is_rewritten(bark):
    _, _, source, matches, _ = bark
    applied = [m for m in matches if m.status == "applied"]
    assert [m.rule.split(":")[-1] for m in applied] == ["matmul_tm1m2_mul_causalfill_add_softmaxto_drop"]
    assert "if not self.is_causal or head_mask is not None or output_attentions:" in source
    assert "attn_output, attn_weights = self._attn_fast(query, key, value, attention_mask, head_mask)" in source


def test_bark_second_apply_changes_nothing(bark, tmp_path):
    _, _, source, _, _ = bark
    path = tmp_path / "modeling_bark.py"
    path.write_text(source)
    again, matches = rewrite(path)
    assert again == source
    assert not [m for m in matches if m.status == "applied"]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("padding", [False, True])
def test_bark_same_logits_loss_and_gradients(bark, train, padding):
    original, mod, _, _, calls = bark
    a, b = _pair(original, mod, _config())
    ids, mask = _inputs(padding)
    before = len(calls)
    _compare(a, b, train, mask, input_ids=ids, attention_mask=mask)
    assert len(calls) - before == 2  # one per layer: the kernel ran


def test_bark_output_attentions_and_head_mask(bark):
    original, mod, _, _, calls = bark
    a, b = _pair(original, mod, _config())
    ids, mask = _inputs(True)
    before = len(calls)
    outs = _compare(a, b, True, mask, input_ids=ids, attention_mask=mask, output_attentions=True)
    for x, y in zip(outs[0].attentions, outs[1].attentions):
        _close(x, y, "attentions")
    head = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    _compare(a, b, False, mask, input_ids=ids, attention_mask=mask, head_mask=head)
    assert len(calls) == before  # the original helper ran (weights asked for, head mask given)


def test_bark_cached_greedy_decoding(bark):
    original, mod, _, _, calls = bark
    a, b = _pair(original, mod, _config())
    ids, _ = _inputs(False)
    before = len(calls)
    seqs = []
    with torch.no_grad():
        for m in (a.eval(), b.eval()):
            out = m(input_ids=ids, use_cache=True)
            past, seq, steps = out.past_key_values, ids, [out.logits[:, -1]]
            for _ in range(5):
                nxt = steps[-1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
                out = m(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                steps.append(out.logits[:, -1])
            seqs.append((seq, steps))
    assert torch.equal(seqs[0][0], seqs[1][0])
    for x, y in zip(seqs[0][1], seqs[1][1]):
        _close(x, y, "logits of a decoding step")
    assert len(calls) > before


def test_bark_non_causal_attention_runs_the_original(bark):
    original, mod, _, _, calls = bark
    cfg = _config()
    torch.manual_seed(0)
    a = original.BarkSelfAttention(cfg, is_causal=False)
    b = mod.BarkSelfAttention(cfg, is_causal=False)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    before = len(calls)
    _close(a(x)[0], b(x)[0], "non-causal attention")
    assert len(calls) == before
