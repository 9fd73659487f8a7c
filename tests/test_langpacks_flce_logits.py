"""liger:fused_linear_cross_entropy_causal_lm on causal LMs whose logits are
scaled (`* s`, `/ s`) or softcapped (`tanh(logits / c) * c`) between the
head and the loss (dslc/rewrite/kinds/causallm.py, `_LogitOps`).

Models: tests/langpacks_models/flce_logits.py.  The factors are folded into
the hidden states and the bias and the softcap is passed to the kernel (as
Liger's own Gemma-2 and MuseGlimmer forwards do); a factor after the
softcap, a computed factor or a test of another value is refused (S421).  Hidden
states cast to the head's dtype in its call (Mamba's) go to the kernel cast.
With a reference fused op (rewrite_support.REF_FLCE) behind the guarded
name, the loss and every gradient are the original's in training with
labels; where a factor or the softcap is not a number the kernel takes
(a tensor, a bool, a negative cap, a cap of None the original would divide
by), the original statements run; without liger-kernel the rewritten
models compute exactly what the originals do.
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
from rewrite_support import CAUSAL_LOSS, KERNEL_PRELUDE, REF_FLCE, run_without_liger

REPO = Path(__file__).resolve().parent.parent
LIGER = REPO / "rulepacks" / "liger.adr"
MODELS = REPO / "tests" / "langpacks_models" / "flce_logits.py"
RULE = "liger:fused_linear_cross_entropy_causal_lm"
REWRITTEN = ("CappedLM", "ScaledLM", "DividedCappedLM", "HeadDtypeLM")


def _apply(target: Path) -> tuple[int, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(LIGER), "--select", RULE, "--unsafe", "--no-cache", "--jobs", "1",
                     "--write", "--format", "json", str(target)])
    return code, json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> tuple[Path, dict]:
    target = tmp_path_factory.mktemp("logits") / "rewritten.py"
    shutil.copy(MODELS, target)
    code, report = _apply(target)
    assert code == 0
    return target, report


def test_scaled_and_softcapped_logits_are_rewritten_and_the_others_refused(applied):
    target, report = applied
    ours = [m for m in report["matches"] if m["rule"] == RULE]
    assert {m["class"] for m in ours if m["status"] == "applied"} == set(REWRITTEN)
    skipped = {m["class"]: (m.get("code"), m["reason"]) for m in ours if m["status"] == "skipped"}
    assert set(skipped) == {"LateScaleLM", "CalledScaleLM", "OtherCapLM"}, skipped
    assert {code for code, _ in skipped.values()} == {"S421"}
    assert "scaled after the softcap" in skipped["LateScaleLM"][1]
    assert "`logits * self.scale()`" in skipped["CalledScaleLM"][1]
    assert "`if self.a is not None:` is not a softcap" in skipped["OtherCapLM"][1]
    text = target.read_text()
    # the factors and the softcap as the guard and the fused helper get them; the cap optional
    # only under `if cap is not None:`
    assert "_logits_ok((), self.final_logit_softcapping, True):" in text
    assert "_logits_ok(((self.logit_scale, False),), None, True):" in text
    assert "_logits_ok(((self.scaling, True),), self.soft_cap, False):" in text  # the alias `cap` replaced
    assert "_scaled(self.lm_head, hidden_states, labels, True, ((self.logit_scale, False),), None)" in text
    assert text.count("logits = None\n") == 4
    assert "_lf_ok(self, self.lm_head, hidden_states.to(self.lm_head.weight.dtype), labels, " in text
    again = target.parent / "again.py"
    again.write_text(text)
    code, second = _apply(again)
    assert code == 0 and again.read_text() == text
    assert not [m for m in second["matches"] if m["status"] == "applied"]


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
    labels[0, :4] = -100
    worst = 0.0
    for train, lab in ((True, labels), (False, labels), (True, None), (False, None)):
        a.train(train); b.train(train)
        a.zero_grad(); b.zero_grad()
        ra, rb = a(ids, lab), b(ids, lab)
        va = list(ra.values()) if isinstance(ra, dict) else list(ra)
        vb = list(rb.values()) if isinstance(rb, dict) else list(rb)
        assert all((x is None) == (y is None) for x, y in zip(va, vb)), (name, train, lab)
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
    assert result == {name: 0.0 for name in REWRITTEN}  # the original statements run: bit-identical


KERNEL_PATH = KERNEL_PRELUDE + CAUSAL_LOSS + REF_FLCE + textwrap.dedent("""
    import json

    utils = types.ModuleType("transformers.loss.loss_utils")
    utils.ForCausalLMLoss = ForCausalLMLoss
    sys.modules["transformers.loss.loss_utils"] = utils
    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    orig.LOSS = new.LOSS = ForCausalLMLoss

    cases = {
        "capped": ("CappedLM", {"cap": 2.0}, {}),
        "capped, no cap": ("CappedLM", {"cap": None}, {}),
        "capped, num_items": ("CappedLM", {"cap": 2.0}, {"num_items_in_batch": torch.tensor(11)}),
        "scaled": ("ScaledLM", {}, {}),
        "scaled, int": ("ScaledLM", {"scale": 3}, {}),
        "divided, capped": ("DividedCappedLM", {}, {}),
        "head dtype": ("HeadDtypeLM", {}, {}),
        # not numbers the kernel takes as the original does: the original statements
        "scaled, tensor": ("ScaledLM", {"scale": torch.tensor(0.37)}, {}),
        "scaled, bool": ("ScaledLM", {"scale": True}, {}),
        "capped, negative": ("CappedLM", {"cap": -2.0}, {}),
        "divided, zero": ("DividedCappedLM", {"scaling": 0}, {}),
    }
    def diff(x, y):  # 0.0 where bit-identical, NaN at the same places included (a zero divisor)
        x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
        return 0.0 if torch.allclose(x, y, rtol=0, atol=0, equal_nan=True) else float((x - y).abs().max())

    out = {}
    for case, (name, kw, extra) in cases.items():
        torch.manual_seed(0)
        a, b = getattr(orig, name)(**kw), getattr(new, name)(**kw)
        b.load_state_dict(a.state_dict(), strict=True)
        b.body.register_forward_hook(lambda m, i, o: o.as_subclass(FakeCuda))
        ids = torch.randint(0, 41, (3, 9))
        labels = ids.clone()
        labels[1, 2:6] = -100
        r = {}
        for mode in ("train", "eval"):
            a.train(mode == "train"); b.train(mode == "train")
            a.zero_grad(); b.zero_grad()
            n = len(calls)
            ra, rb = a(ids, labels, **extra), b(ids, labels, **extra)
            (la, lga), (lb, lgb) = [(x["loss"], x["logits"]) if isinstance(x, dict) else x for x in (ra, rb)]
            la.backward(); lb.backward()
            gb = dict(b.named_parameters())
            r[mode] = {"calls": calls[n:], "logits_none": lgb is None, "ref": abs(float(la)), "loss": diff(la, lb),
                       "grad": max(diff(p.grad, gb[k].grad) for k, p in a.named_parameters())}
        out[case] = r
    # a softcap of None where the original divides by it: the original statements (and their error)
    errors = []
    for mod in (orig, new):
        m = mod.DividedCappedLM(cap=None)
        m.body.register_forward_hook(lambda m, i, o: o.as_subclass(FakeCuda))
        n = len(calls)
        try:
            m(torch.randint(0, 41, (2, 5)), torch.randint(0, 41, (2, 5)))
        except TypeError as e:
            errors.append((str(e), len(calls) - n))
    out["divided, cap None"] = errors
    print(json.dumps(out))
""")


def test_kernel_path_scales_and_softcaps_as_the_original(applied, tmp_path):
    """The reference fused op gets the folded hidden states (and bias) and the
    softcap: in training with labels the loss and every gradient are the
    original's within the rule's fp32 tolerance and the logits None; in eval,
    and where a factor or the cap is not a number the kernel takes, the
    original statements run."""
    target, _ = applied
    script = tmp_path / "kernel_path.py"
    script.write_text(KERNEL_PATH)
    proc = subprocess.run([sys.executable, str(script), str(MODELS), str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # rows: 3 x 8 shifted by the 4.x loss (ScaledLM), all 3 x 9 padded by ForCausalLMLoss
    kernel = {"capped": ([27, 16], False, 2.0, "mean"), "capped, no cap": ([27, 16], False, None, "mean"),
              "capped, num_items": ([27, 16], False, 2.0, "sum"), "scaled": ([24, 16], True, None, "mean"),
              "scaled, int": ([24, 16], True, None, "mean"), "divided, capped": ([27, 16], True, 1.5, "mean"),
              "head dtype": ([27, 16], False, None, "mean")}
    assert result.pop("divided, cap None") == [["unsupported operand type(s) for /: 'FakeCuda' and 'NoneType'", 0]] * 2
    assert set(result) == set(kernel) | {"scaled, tensor", "scaled, bool", "capped, negative", "divided, zero"}
    for case, r in result.items():
        train, ev = r["train"], r["eval"]
        if case in kernel:
            rows, bias, softcap, reduction = kernel[case]
            assert train["calls"] == [{"rows": rows, "bias": bias, "softcap": softcap, "reduction": reduction}], (case, r)
            assert train["logits_none"], (case, r)
            assert train["loss"] <= 1e-5 + 1e-5 * train["ref"] and train["grad"] <= 1e-5, (case, r)
        else:
            assert train["calls"] == [] and not train["logits_none"], (case, r)
            assert train["loss"] == 0.0 and train["grad"] == 0.0, (case, r)
        assert ev["calls"] == [] and not ev["logits_none"] and ev["loss"] == 0.0 and ev["grad"] == 0.0, (case, r)
