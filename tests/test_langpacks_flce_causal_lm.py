"""liger:fused_linear_cross_entropy_causal_lm (unsafe): a causal LM's head and
its labelled next-token loss fused in training, the logits then None
(dslc/rewrite/kinds/causallm.py).

Models: tests/langpacks_models/flce_causal_lm.py.  Without `--unsafe` the
rule is left out and nothing changes.  With it, the three spellings are
rewritten and the others refused with the reason; without liger-kernel the
rewritten models compute exactly what the originals do (train, eval, no
labels); with a reference fused op behind the guarded name (hidden states
that say they are on CUDA), the kernel path is taken in training with
labels only, the logits are None and the loss and gradients are the
original's, `ignore_index=-100` labels included.  The slow test rewrites
transformers 4.35.0's LlamaForCausalLM.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dslc.cli import main
from rewrite_support import CAUSAL_LOSS, KERNEL_PRELUDE, run_without_liger

REPO = Path(__file__).resolve().parent.parent
LIGER = REPO / "rulepacks" / "liger.adr"
MODELS = REPO / "tests" / "langpacks_models" / "flce_causal_lm.py"
RULE = "liger:fused_linear_cross_entropy_causal_lm"
REWRITTEN = ("SplitHeadLM", "AlignedLM", "CastLM", "KwargsLM")


def _apply(target: Path, *extra: str) -> tuple[int, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "--write", "--near-misses",
                     "--format", "json", *extra, str(target)])
    return code, json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> tuple[Path, dict]:
    target = tmp_path_factory.mktemp("causal") / "rewritten.py"
    shutil.copy(MODELS, target)
    code, report = _apply(target, "--unsafe")
    assert code == 0
    return target, report


def test_without_unsafe_the_rule_is_left_out_and_nothing_changes(tmp_path):
    target = tmp_path / "m.py"
    shutil.copy(MODELS, target)
    code, report = _apply(target)
    assert code == 0 and target.read_text() == MODELS.read_text()
    assert not [m for m in report["matches"] if m["rule"] == RULE]
    assert any(r["rule"] == RULE and r["safety"] == "unsafe" for r in report["left_out"]), report["left_out"]


def test_the_causal_lm_spellings_are_rewritten_and_the_others_refused(applied):
    target, report = applied
    ours = [m for m in report["matches"] if m["rule"] == RULE]
    assert {m["class"] for m in ours if m["status"] == "applied"} == set(REWRITTEN)
    skipped = {m["class"]: m["reason"] for m in ours if m["status"] == "skipped"}
    assert set(skipped) == {"SmoothedLM", "PeekLM", "OtherSizeLM"}, skipped
    assert {m.get("code") for m in ours if m["status"] == "skipped"} == {"S421"}, ours
    assert "label_smoothing=0.1" in skipped["SmoothedLM"]
    assert "shift_labels" in skipped["PeekLM"] and "read after the loss" in skipped["PeekLM"]
    assert "`other`" in skipped["OtherSizeLM"]
    # the Linear layers with no labelled loss after them are no location at all
    assert not [m for m in ours if m["class"] in ("Tagger", "Body")]
    text = target.read_text()
    assert "if not (self.split > 1) and self.training and labels is not None and " in text
    assert text.count("logits = None\n") == 4  # one per rewritten class (CastLM's is lm_logits)
    assert "_lf_ok(self, self.lm_head, hidden_states, labels, self.vocab, kwargs):" in text
    again = target.parent / "again.py"
    again.write_text(text)
    code, second = _apply(again, "--unsafe")
    assert code == 0 and again.read_text() == text
    assert not [m for m in second["matches"] if m["rule"] == RULE and m["status"] == "applied"]


FALLBACK = CAUSAL_LOSS.replace("{", "{{").replace("}", "}}") + """
import json
orig, new = load("orig", {orig!r}), load("new", {new!r})
orig.LOSS = new.LOSS = ForCausalLMLoss
out = {{}}
for name in {names!r}:
    torch.manual_seed(0)
    a, b = getattr(orig, name)(), getattr(new, name)()
    b.load_state_dict(a.state_dict(), strict=True)
    ids = torch.randint(0, 41, (3, 9))
    labels = ids.clone()
    labels[0, :4] = -100  # ignored positions
    worst = 0.0
    for train, lab in ((True, labels), (False, labels), (True, None), (False, None)):
        a.train(train); b.train(train)
        a.zero_grad(); b.zero_grad()
        ra, rb = a(ids, lab), b(ids, lab)
        va = list(ra.values()) if isinstance(ra, dict) else list(ra) if isinstance(ra, tuple) else [ra]
        vb = list(rb.values()) if isinstance(rb, dict) else list(rb) if isinstance(rb, tuple) else [rb]
        assert len(va) == len(vb) and all((x is None) == (y is None) for x, y in zip(va, vb)), (name, train, lab)
        worst = max([worst] + [float((x - y).abs().max()) for x, y in zip(va, vb) if x is not None])
        if lab is not None:
            va[0].backward(); vb[0].backward()
            gb = dict(b.named_parameters())
            worst = max([worst] + [float((p.grad - gb[k].grad).abs().max()) for k, p in a.named_parameters()])
    out[name] = worst
print(json.dumps(out))
"""


def test_without_liger_the_rewritten_models_compute_what_the_originals_do(applied, tmp_path):
    target, _ = applied
    proc = run_without_liger(tmp_path, FALLBACK.format(orig=str(MODELS), new=str(target), names=REWRITTEN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(REWRITTEN)
    for name, worst in result.items():
        assert worst == 0.0, (name, worst)  # the original statements run: bit-identical


KERNEL_PATH = KERNEL_PRELUDE + textwrap.dedent("""
    import json
    import torch.nn.functional as F

    calls = []

    def flce(x, weight, target, bias=None, ce_weight=None, ignore_index=-100, lse_square_scale=0.0,
             label_smoothing=0.0, reduction="mean"):
        # Liger's documented semantics in PyTorch: rows of x through the linear layer, then
        # cross-entropy; a float32 loss like the kernel's
        assert x.dim() == 2 and target.dim() == 1 and x.shape[0] == target.shape[0] and x.is_contiguous()
        calls.append(tuple(x.shape))
        logits = F.linear(x.as_subclass(torch.Tensor), weight, bias)
        return F.cross_entropy(logits.float(), target.as_subclass(torch.Tensor), ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)

    fake_liger(liger_fused_linear_cross_entropy=flce)

    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    out = {}
    for name, kw in (("SplitHeadLM", {}), ("SplitHeadLM2", {"split": 2}), ("AlignedLM", {}), ("CastLM", {})):
        torch.manual_seed(0)
        cls = name.rstrip("2")
        a, b = getattr(orig, cls)(**kw), getattr(new, cls)(**kw)
        b.load_state_dict(a.state_dict(), strict=True)
        b.body.register_forward_hook(lambda m, i, o: tuple(t.as_subclass(FakeCuda) for t in o))
        ids = torch.randint(0, 41, (3, 9))
        labels = ids.clone()
        labels[1, 2:6] = -100
        r = {}
        for mode in ("train", "eval"):
            a.train(mode == "train"); b.train(mode == "train")
            a.zero_grad(); b.zero_grad()
            n = len(calls)
            ra, rb = a(ids, labels), b(ids, labels)
            la, lga = (ra["loss"], ra["logits"]) if isinstance(ra, dict) else (ra[0], ra[1])
            lb, lgb = (rb["loss"], rb["logits"]) if isinstance(rb, dict) else (rb[0], rb[1])
            la.backward(); lb.backward()
            gb = dict(b.named_parameters())
            r[mode] = {"kernel": len(calls) - n, "shape": calls[-1] if len(calls) > n else None,
                       "logits_none": lgb is None, "loss": abs(float(la - lb.as_subclass(torch.Tensor))),
                       "ref": abs(float(la)), "dtype": str(lb.dtype),
                       "grad": max(float((p.grad - gb[k].grad).abs().max()) for k, p in a.named_parameters())}
        out[name] = r
    print(json.dumps(out))
""")


def test_kernel_path_in_training_with_labels_only(applied, tmp_path):
    target, _ = applied
    script = tmp_path / "kernel_path.py"
    script.write_text(KERNEL_PATH)
    proc = subprocess.run([sys.executable, str(script), str(MODELS), str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the shifted rows (3 x 8) or all of them (AlignedLM: labels already aligned)
    shapes = {"SplitHeadLM": [24, 16], "AlignedLM": [27, 16], "CastLM": [24, 16]}
    for name, r in result.items():
        train, ev = r["train"], r["eval"]
        if name == "SplitHeadLM2":  # the head split in parts: the original statements
            assert train["kernel"] == 0 and not train["logits_none"] and train["loss"] == 0.0, r
        else:
            assert train["kernel"] == 1 and train["shape"] == shapes[name] and train["logits_none"], (name, r)
            assert train["dtype"] == "torch.float32"
            assert train["loss"] <= 1e-5 + 1e-5 * train["ref"] and train["grad"] <= 1e-5, (name, r)
        # eval with labels: the logits are computed and returned, the original loss
        assert ev["kernel"] == 0 and not ev["logits_none"] and ev["loss"] == 0.0 and ev["grad"] == 0.0, (name, r)


KWARGS_PATH = KERNEL_PRELUDE + CAUSAL_LOSS + textwrap.dedent("""
    import json

    calls = []

    def flce(x, weight, target, bias=None, ce_weight=None, ignore_index=-100, lse_square_scale=0.0,
             label_smoothing=0.0, reduction="mean"):
        assert x.dim() == 2 and target.dim() == 1 and x.shape[0] == target.shape[0] and x.is_contiguous()
        calls.append((tuple(x.shape), ignore_index, reduction))
        logits = F.linear(x.as_subclass(torch.Tensor), weight, bias)
        return F.cross_entropy(logits.float(), target.as_subclass(torch.Tensor), ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)

    fake_liger(liger_fused_linear_cross_entropy=flce)
    utils = types.ModuleType("transformers.loss.loss_utils")
    utils.ForCausalLMLoss = ForCausalLMLoss
    sys.modules["transformers.loss.loss_utils"] = utils

    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    torch.manual_seed(0)
    a, b = orig.KwargsLM(), new.KwargsLM()
    b.load_state_dict(a.state_dict(), strict=True)
    b.body.register_forward_hook(lambda m, i, o: tuple(t.as_subclass(FakeCuda) for t in o))
    ids = torch.randint(0, 41, (3, 9))
    labels = ids.clone()
    labels[2, :5] = -100
    other = ids.clone()
    other[0, 3:] = -1
    cases = {
        "mean": ({}, ForCausalLMLoss),
        "num_items": ({"num_items_in_batch": torch.tensor(13)}, ForCausalLMLoss),
        "shift_labels": ({"shift_labels": torch.roll(other, -1, 1).contiguous(), "ignore_index": -1}, ForCausalLMLoss),
        "other keys": ({"output_attentions": False}, ForCausalLMLoss),
        "another loss": ({}, lambda *a, **k: ForCausalLMLoss(*a, **k) * 2.0),
    }
    out = {}
    for name, (kw, loss_fn) in cases.items():
        orig.LOSS = new.LOSS = loss_fn
        a.zero_grad(); b.zero_grad()
        n = len(calls)
        ra, rb = a(ids, labels, **kw), b(ids, labels, **kw)
        ra["loss"].backward(); rb["loss"].backward()
        gb = dict(b.named_parameters())
        out[name] = {"calls": calls[n:], "logits_none": rb["logits"] is None, "ref": abs(float(ra["loss"])),
                     "loss": abs(float(ra["loss"] - rb["loss"].as_subclass(torch.Tensor))),
                     "grad": max(float((p.grad - gb[k].grad).abs().max()) for k, p in a.named_parameters())}
    print(json.dumps(out))
""")


def test_kernel_path_of_the_loss_function_form(applied, tmp_path):
    """transformers 5.x' `self.loss_function(..., **kwargs)`: the kernel runs
    where the model's loss is ForCausalLMLoss, with its padding shift (all
    rows), ignore_index and num_items_in_batch reduction, or the caller's
    shift_labels; another loss function runs the original."""
    target, _ = applied
    script = tmp_path / "kwargs_path.py"
    script.write_text(KWARGS_PATH)
    proc = subprocess.run([sys.executable, str(script), str(MODELS), str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {"mean": [[[27, 16], -100, "mean"]], "num_items": [[[27, 16], -100, "sum"]],
                "shift_labels": [[[27, 16], -1, "mean"]], "other keys": [[[27, 16], -100, "mean"]], "another loss": []}
    for name, r in result.items():
        assert r["calls"] == expected[name] and r["logits_none"] == bool(expected[name]), (name, r)
        assert r["loss"] <= 1e-5 + 1e-5 * r["ref"] and r["grad"] <= 1e-5, (name, r)


LLAMA = """
import json
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama as orig
spec = importlib.util.spec_from_file_location("transformers.models.llama._dslc_rewritten", {new!r})
new = importlib.util.module_from_spec(spec)
spec.loader.exec_module(new)
config = LlamaConfig(vocab_size=67, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
torch.manual_seed(0)
a = orig.LlamaForCausalLM(config)
b = new.LlamaForCausalLM(config)
b.load_state_dict(a.state_dict(), strict=True)
ids = torch.randint(0, 67, (2, 11))
labels = ids.clone()
labels[0, :3] = -100
out = {{}}
for train, lab in ((True, labels), (False, labels), (False, None), (True, None)):
    a.train(train); b.train(train)
    a.zero_grad(); b.zero_grad()
    ra, rb = a(input_ids=ids, labels=lab), b(input_ids=ids, labels=lab)
    key = ("train" if train else "eval") + (" labels" if lab is not None else "")
    r = {{"logits": float((ra.logits - rb.logits).abs().max()), "loss_none": rb.loss is None}}
    if lab is not None:
        ra.loss.backward(); rb.loss.backward()
        gb = dict(b.named_parameters())
        r["loss"] = abs(float(ra.loss - rb.loss))
        r["grad"] = max(float((p.grad - gb[k].grad).abs().max()) for k, p in a.named_parameters())
    out[key] = r
print(json.dumps(out))
"""


@pytest.mark.slow
def test_transformers_llama_for_causal_lm_rewritten_with_unsafe(tmp_path):
    """transformers 4.35.0's LlamaForCausalLM (the installed package's file),
    rewritten with --unsafe: the guard is written around the head and the
    loss, and without liger-kernel the loss, the gradients and the logits
    (train and eval, labels or none) are the original's."""
    transformers = pytest.importorskip("transformers")
    if transformers.__version__ != "4.35.0":
        pytest.skip(f"written for transformers 4.35.0's LlamaForCausalLM (installed: {transformers.__version__})")
    source = Path(transformers.__file__).parent / "models" / "llama" / "modeling_llama.py"
    patches = tmp_path / "patches"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(LIGER), "--select", RULE, "--unsafe", "--no-cache", "--jobs", "1",
                     "--patch-dir", str(patches), "--format", "json", str(source)])
    assert code == 0
    report = json.loads(buf.getvalue())
    assert [(m["class"], m["status"]) for m in report["matches"] if m["status"] == "applied"] == \
        [("LlamaForCausalLM", "applied")]
    target = tmp_path / "modeling_llama.py"
    shutil.copy(source, target)
    [patch] = list(patches.glob("*.patch"))
    subprocess.run(["patch", "-s", str(target), str(patch)], check=True)
    text = target.read_text()
    assert "if not (self.config.pretraining_tp > 1) and self.training and labels is not None and " in text
    proc = run_without_liger(tmp_path, LLAMA.format(new=str(target)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"train labels", "eval labels", "eval", "train"}
    for key, r in result.items():
        assert r["logits"] <= 1e-5 and r["loss_none"] == ("labels" not in key), (key, r)
        if "labels" in key:
            assert r["loss"] <= 1e-5 and r["grad"] <= 1e-5, (key, r)
