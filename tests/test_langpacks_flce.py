"""rulepacks/liger.adr `fused_linear_cross_entropy`: the LM head and the
cross-entropy on its logits become one call of a generated helper that runs
Liger's fused op where it can (the package imports, the hidden states are on
CUDA, ...) and the original two calls otherwise.

Models: tests/langpacks_models/flce_models.py.  Without liger-kernel (hidden
in a child process) and without a GPU the rewritten models load the original
state_dict strictly and give the same loss and parameter gradients.
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
from dslc.match.rows import RowChain, row_chain
from rewrite_support import KERNEL_PRELUDE, SPY_REAL_FLCE, run_without_liger

REPO = Path(__file__).resolve().parent.parent
LIGER = REPO / "rulepacks" / "liger.adr"
MODELS = REPO / "tests" / "langpacks_models" / "flce_models.py"
RULE = "liger:fused_linear_cross_entropy"


def _apply(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    target = tmp_path / "rewritten.py"
    shutil.copy(MODELS, target)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "--write", *extra,
                     "--format", "json", str(target)])
    assert code == 0
    return target, json.loads(buf.getvalue())


def _outcomes(report: dict, rule: str) -> dict[str, tuple[str, str | None]]:
    return {m["class"]: (m["status"], f'{m.get("code")}: {m.get("reason")}') for m in report["matches"] if m["rule"] == rule}


@pytest.mark.parametrize("text, func, min_dim", [
    ("logits.view(-1, logits.size(-1))", "lambda _t: _t.view(-1, _t.size(-1))", 0),
    ("logits.reshape(-1, logits.shape[-1])", "lambda _t: _t.reshape(-1, _t.shape[-1])", 0),
    ("logits[..., :-1, :].contiguous().view(-1, logits.size(-1))",
     "lambda _t: _t[..., :-1, :].contiguous().view(-1, _t.size(-1))", 0),
    ("logits[:, :-1].reshape(-1, logits.size(-1))", "lambda _t: _t[:, :-1].reshape(-1, _t.size(-1))", 3),
    ("logits.flatten(0, -2)", "lambda _t: _t.flatten(0, -2)", 0),
    ("logits.view((b * n, logits.size(-1)))", "lambda _t: _t.view((b * n, _t.size(-1)))", 0),
    ("_t.view(-1, logits.size(-1))[_t]", None, 0),
])
def test_row_chains_that_keep_the_last_dim(text, func, min_dim):
    got = row_chain(text, "logits" if "_t.view" not in text else "_t")
    if func is None:  # the root `_t` indexed by itself: a tensor index
        assert isinstance(got, str)
        return
    assert got == RowChain(func, min_dim)


@pytest.mark.parametrize("text, why", [
    ("logits.view(-1, self.vocab)", "not provably the logits' last dim"),
    ("logits.view(-1)", "does not keep the last dim"),
    ("logits.flatten()", "merges the last dim"),
    ("logits.transpose(1, 2).reshape(-1, logits.size(-1))", "may move or change the last dim"),
    ("logits[..., :-1]", "changes the last dim"),
    ("logits[mask].view(-1, logits.size(-1))", "not a slice or a literal int"),
    ("logits[:, None].view(-1, logits.size(-1))", "not a slice or a literal int"),
    ("logits.view(logits.size(0) * 2, logits.size(-1))", "reads `logits`"),
    ("logits.view(-1, 4, logits.size(-1))[:, :, :-1]", "reaches the last dim"),
    ("logits", "itself"),
    ("other.view(-1, other.size(-1))", "not a chain"),
])
def test_row_chains_that_may_touch_the_last_dim_are_refused(text, why):
    got = row_chain(text, "logits")
    assert isinstance(got, str) and why in got, got


def test_the_head_and_the_loss_become_one_helper_call(tmp_path):
    target, report = _apply(tmp_path)
    got = _outcomes(report, RULE)
    assert {c: s for c, (s, _) in got.items()} == {
        "NanoLM": "applied", "ShiftLM": "applied", "FlatLM": "applied",
        "ReturnsLogits": "skipped", "WeightedLM": "skipped"}
    assert _outcomes(report, RULE + "_loss")["LossModuleLM"][0] == "applied"
    text = target.read_text()
    assert "logits = self.lm_head(x)" not in text
    assert ("loss = _dslc_liger_fused_linear_cross_entropy(self.lm_head, x, targets.view(-1), -1, "
            "lambda _t: _t.view(-1, _t.size(-1)))") in text
    assert "from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy" in text
    assert "return F.cross_entropy(rows(logits), y, ignore_index=ii)" in text
    # a second run changes nothing (the calls inside the helpers are not rewritten again)
    again = tmp_path / "again.py"
    again.write_text(text)
    assert main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(again)]) == 0
    assert again.read_text() == text


def test_logits_read_after_the_loss_refuse_it_and_the_plain_loss_rule_applies(tmp_path):
    _, report = _apply(tmp_path, "--near-misses")
    status, reason = _outcomes(report, RULE)["ReturnsLogits"]
    assert status == "skipped" and reason.startswith("S204") and "`logits`" in reason, reason
    # the cross-entropy call alone still gets the (unfused) kernel dispatch
    assert _outcomes(report, "liger:cross_entropy")["ReturnsLogits"][0] == "applied"
    near = [n for n in report.get("near_misses", []) if n.get("rule") == RULE]
    assert any(n.get("code") == "S204" and n.get("class") == "ReturnsLogits" for n in near), near


def test_unsupported_arguments_and_unproven_shapes_are_refused_with_the_reason(tmp_path):
    _, report = _apply(tmp_path, "--near-misses")
    status, reason = _outcomes(report, RULE)["WeightedLM"]
    assert status == "skipped" and reason.startswith("S309") and "weight=self.class_weight" in reason, reason
    near = [n for n in report.get("near_misses", []) if n.get("rule") == RULE and n.get("class") == "VocabLM"]
    assert near and "not provably the logits' last dim" in json.dumps(near), near


EQUIV = """
    orig, new = load("orig", {orig!r}), load("new", {new!r})
    assert new.liger_fused_linear_cross_entropy is None
    out = {{}}
    for name, call in (("NanoLM", "(ids, tgt)"), ("ShiftLM", "(ids, tgt)"), ("ShiftLM", "(ids,)"),
                       ("FlatLM", "(ids, tgt)"), ("LossModuleLM", "(ids, tgt)")):
        torch.manual_seed(0)
        a, b = getattr(orig, name)(), getattr(new, name)()
        b.load_state_dict(a.state_dict(), strict=True)
        assert list(a.state_dict()) == list(b.state_dict())
        ids = torch.randint(0, 37, (3, 7))
        tgt = torch.randint(0, 37, (3, 7))
        tgt[0, 2] = -1 if name == "NanoLM" else tgt[0, 2]  # nanoGPT's ignore_index=-1
        args = eval(call)
        la, lb = a(*args), b(*args)
        if la is None:
            assert lb is None
            continue
        la.backward()
        lb.backward()
        gb = dict(b.named_parameters())
        grads = [float((p.grad - gb[n].grad).abs().max()) for n, p in a.named_parameters() if p.grad is not None]
        out[name] = [float((la - lb).abs()), max(grads), len(grads)]
    print(json.dumps(out))
"""


def test_rewritten_models_without_liger_give_the_same_loss_and_gradients(tmp_path):
    target, _ = _apply(tmp_path)
    proc = run_without_liger(tmp_path, "import json\n" + textwrap.dedent(EQUIV).format(orig=str(MODELS), new=str(target)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"NanoLM", "ShiftLM", "FlatLM", "LossModuleLM"}
    for name, (loss_diff, grad_diff, n_grads) in result.items():
        assert n_grads >= 2 and loss_diff <= 1e-5 and grad_diff <= 1e-5, (name, loss_diff, grad_diff)


KERNEL_PATH = KERNEL_PRELUDE + textwrap.dedent("""
    import json
    import torch
    import torch.nn.functional as F

    calls = []

    def flce(x, weight, target, bias=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        # Liger's documented semantics, in PyTorch: the rows of x through the
        # linear layer, then cross-entropy; a float32 loss like the kernel's
        assert x.dim() == 2 and target.dim() == 1 and x.shape[0] == target.shape[0]
        calls.append(tuple(x.shape))
        logits = F.linear(x.as_subclass(torch.Tensor), weight, bias)
        return F.cross_entropy(logits, target.as_subclass(torch.Tensor), ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing).float()

    fake_liger(liger_fused_linear_cross_entropy=flce)

    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    out = {}
    for name in ("NanoLM", "ShiftLM", "FlatLM", "LossModuleLM"):
        torch.manual_seed(0)
        a, b = getattr(orig, name)(), getattr(new, name)()
        b.load_state_dict(a.state_dict(), strict=True)
        ids = torch.randint(0, 37, (3, 7))
        la = a(ids, ids)
        n = len(calls)
        orig_embed = [m for m in b.modules() if isinstance(m, torch.nn.Embedding)][0]
        orig_embed.register_forward_hook(lambda m, i, o: o.as_subclass(FakeCuda))
        lb = b(ids, ids)
        la.backward(); lb.backward()
        gb = dict(b.named_parameters())
        grad = max(float((p.grad - gb[n_].grad).abs().max()) for n_, p in a.named_parameters() if p.grad is not None)
        out[name] = {"kernel": len(calls) - n, "shape": calls[-1] if len(calls) > n else None,
                     "loss": abs(float(la - lb)), "grad": grad}
    print(json.dumps(out))
""")


def test_kernel_path_gets_the_reshaped_hidden_rows(tmp_path):
    """With a reference fused op behind the guarded name and hidden states
    that say they are on CUDA, the helper takes the kernel path with the
    hidden states reshaped (and shifted) as the logits were, and computes
    what the original does."""
    target, _ = _apply(tmp_path)
    script = tmp_path / "kernel_path.py"
    script.write_text(KERNEL_PATH)
    proc = subprocess.run([sys.executable, str(script), str(MODELS), str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["NanoLM"]["shape"] == [21, 16] and result["ShiftLM"]["shape"] == [18, 16]
    assert result["FlatLM"]["shape"] == [21, 16] and result["LossModuleLM"]["shape"] == [21, 16]
    for name, r in result.items():
        assert r["kernel"] == 1 and r["loss"] <= 1e-5 and r["grad"] <= 1e-5, (name, r)


RULE_TEXT = '''
pack p "rows"
requires liger-kernel module liger_kernel install "pip install liger-kernel"
rule r "fused" {
  kernel liger_kernel.transformers.functional.liger_fused_linear_cross_entropy
  tolerance atol=1e-5 rtol=1e-5
  requires liger-kernel device cuda on $h
  fallback original
  init { torch.nn.Linear(...) -> $head; } => _
  forward {
    $head($h) -> $logits;
    torch.nn.functional.cross_entropy($logits, $y) -> $loss;
  } => {
    liger_kernel.transformers.functional.liger_fused_linear_cross_entropy($h, $head.weight, $y) -> $loss;
  }
  option rows = ROWS
}
'''


@pytest.mark.parametrize("rows, code", [
    ('"$logits: $h"', None),
    ('"$logits"', "ADR106"),
    ('"$logits: $nope"', "ADR206"),
    ("3", "ADR106"),
])
def test_option_rows_is_checked(tmp_path, capsys, rows, code):
    f = tmp_path / "r.adr"
    f.write_text(RULE_TEXT.replace("ROWS", rows))
    rc = main(["check", "--format", "json", str(f)])
    got = [d["code"] for d in json.loads(capsys.readouterr().out) if d["severity"] == "error"]
    assert (rc, got) == ((0, []) if code is None else (1, [code])), got


def test_option_rows_needs_the_fallback(tmp_path, capsys):
    f = tmp_path / "r.adr"
    f.write_text(RULE_TEXT.replace("ROWS", '"$logits: $h"').replace("  fallback original\n", ""))
    assert main(["check", "--format", "json", str(f)]) == 1
    diags = json.loads(capsys.readouterr().out)
    assert any(d["code"] == "ADR106" and "`option rows` without `fallback original`" in d["message"] for d in diags), diags


INTERPRETED = KERNEL_PRELUDE + textwrap.dedent("""
    import json, os, warnings
    warnings.filterwarnings("ignore")
""") + SPY_REAL_FLCE + textwrap.dedent("""

    out = {}
    for name in ("NanoLM", "ShiftLM", "FlatLM", "LossModuleLM"):
        torch.manual_seed(0)
        a, b = getattr(orig, name)(), getattr(new, name)()
        b.load_state_dict(a.state_dict(), strict=True)
        ids, tgt = torch.randint(0, 37, (3, 7)), torch.randint(0, 37, (3, 7))
        embed = [m for m in b.modules() if isinstance(m, torch.nn.Embedding)][0]
        embed.register_forward_hook(lambda m, i, o: o.as_subclass(FakeCuda))
        n = len(calls)
        la, lb = a(ids, tgt), b(ids, tgt)
        la.backward(); plain(lb).backward()
        gb = dict(b.named_parameters())
        grad = max(float((p.grad - gb[k].grad).abs().max()) for k, p in a.named_parameters() if p.grad is not None)
        out[name] = {"kernel": len(calls) - n, "loss": abs(float(la - plain(lb))), "ref": abs(float(la)), "grad": grad}
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_liger_kernel_in_the_helper_under_the_triton_interpreter(tmp_path):
    """Liger's real fused op, called by the rewritten helpers (the kernel
    branch forced by hidden states that say they are on CUDA), run by
    Triton's interpreter on the CPU: the same loss and parameter gradients
    as the original models, within the rule's fp32 tolerance."""
    import importlib.util
    import os

    if importlib.util.find_spec("liger_kernel") is None or importlib.util.find_spec("triton") is None:
        pytest.skip("liger-kernel and triton are not installed (pip install liger-kernel triton); CI does not install them")
    target, _ = _apply(tmp_path)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", INTERPRETED, str(MODELS), str(target)],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    for name, r in json.loads(lines[-1][len("RESULT "):]).items():
        assert r["kernel"] == 1, (name, r)
        assert r["loss"] <= 1e-5 + 1e-5 * r["ref"] and r["grad"] <= 1e-5, (name, r)


GUARDED_LOSS = '''\
import torch.nn.functional as F
from torch import nn


class LM(nn.Module):
    def __init__(self, vocab=37, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, labels=None):
        h = self.embed(idx)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1)){tail}
        return loss
'''


@pytest.mark.parametrize("tail, has_else", [("", False), ("\n        else:\n            loss = logits.sum()", True)])
def test_the_loss_under_if_labels_gets_no_dead_else(tail, has_else):
    """`logits = self.head(h)` hoisted into `if labels is not None:` was also
    copied into a new `else:` although nothing read `logits` after the `if`
    (a wasted LM head in inference); where the other branch reads it, the copy stays."""
    import rewrite_support

    result = rewrite_support.run(GUARDED_LOSS.format(tail=tail), rules=(str(LIGER),), select=(RULE,))
    assert [m.status for m in result.matches] == ["applied"], result.matches
    new = result.new_source
    assert ("        else:\n            logits = self.head(h)\n" in new) == has_else, new
    assert new.count("else:") == (1 if has_else else 0)
    assert new.count("logits = self.head(h)") == (1 if has_else else 0)
    rewrite_support.stable(new, rules=(str(LIGER),), select=(RULE,))
