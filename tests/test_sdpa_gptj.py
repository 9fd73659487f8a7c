"""sdpa.adr on transformers 4.35.0's GPT-J (the causal `where` block with the
scale after the `where`, rulepacks/gen_sdpa.py; the guard at the helper's
call: kinds/keepcall.py).

The installed modeling_gptj.py is rewritten by `dslc apply` with the sdpa
pack and loaded as a module of `transformers.models.gptj`; a tiny
GPTJForCausalLM built from it, with the original's state_dict (loaded
strictly), must give the original's logits, loss and every parameter
gradient (fp32, 1e-5) in train (dropout 0) and eval, with and without
(right) padding, with a head mask, with output_attentions, and the same
greedy cached generation.  The kernel must run where neither a head mask
nor the weights are asked for.
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdpa_hf_rewrite import SUFFIX, load_rewritten  # noqa: E402

pytestmark = pytest.mark.slow  # rewrites a 4.35.0 modeling file (about 20 s)

MODULE = "transformers.models.gptj.modeling_gptj"


@pytest.fixture(scope="module")
def gptj():
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
    cfg = transformers.GPTJConfig(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                  n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _pair(original, mod, cfg):
    torch.manual_seed(0)
    a = original.GPTJForCausalLM(cfg)
    b = mod.GPTJForCausalLM(cfg)
    b.load_state_dict(a.state_dict(), strict=True)
    return a, b


def _inputs(padding: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    if padding:  # right padding (a left-padded row sees no key at first: see test_sdpa_keepcall.py)
        mask[0, 6:] = 0
        mask[2, 4:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
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


def test_gptj_attention_is_rewritten(gptj):
    _, _, source, matches, _ = gptj
    applied = [m for m in matches if m.status == "applied"]
    assert [m.rule.split(":")[-1] for m in applied] == ["matmul_tm1m2_causal_div_add_softmaxto_drop"]
    assert "if head_mask is not None or output_attentions:" in source
    assert "attn_output, attn_weights = self._attn_fast(query, key, value, attention_mask, head_mask)" in source
    # the mask value divided as the original divides the `where`'s result; SDPA scales the scores
    assert "torch.where(causal_mask, 0.0, mask_value) / self.scale_attn" in source
    assert "scale=1.0 / self.scale_attn)" in source


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("padding", [False, True])
def test_gptj_same_logits_loss_and_gradients(gptj, train, padding):
    original, mod, _, _, calls = gptj
    a, b = _pair(original, mod, _config())
    ids, mask, labels = _inputs(padding)
    before = len(calls)
    _compare(a, b, train, input_ids=ids, attention_mask=mask, labels=labels)
    assert len(calls) - before == 2  # one per layer: the kernel ran


def test_gptj_output_attentions_and_head_mask(gptj):
    original, mod, _, _, calls = gptj
    a, b = _pair(original, mod, _config())
    ids, mask, labels = _inputs(True)
    before = len(calls)
    outs = _compare(a, b, True, input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)
    for x, y in zip(outs[0].attentions, outs[1].attentions):
        _close(x, y, "attentions")
    head = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    _compare(a, b, False, input_ids=ids, attention_mask=mask, labels=labels, head_mask=head)
    assert len(calls) == before  # the original helper ran (weights asked for, head mask given)


def test_gptj_cached_generation(gptj):
    original, mod, _, _, calls = gptj
    a, b = _pair(original, mod, _config())
    a.eval()
    b.eval()
    ids, mask, _ = _inputs(False)
    before = len(calls)
    with torch.no_grad():
        ga = a.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                        output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        gb = b.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                        output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    assert torch.equal(ga.sequences, gb.sequences)
    for x, y in zip(ga.scores, gb.scores):
        _close(x, y, "scores of a decoding step")
    assert len(calls) > before


def test_gptj_train_with_dropout_runs_the_kernel(gptj):
    """Dropout on: SDPA drops with its own random stream, so only the shapes
    and a finite loss are compared."""
    original, mod, _, _, calls = gptj
    a, b = _pair(original, mod, _config(attn_pdrop=0.1))
    ids, mask, labels = _inputs(True)
    b.train()
    before = len(calls)
    out = b(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.isfinite(out.loss) and out.logits.shape == a(input_ids=ids, labels=labels).logits.shape
    assert len(calls) - before == 2
