"""Done-when of issue 10 (with the sdpa pack): `dslc apply --rules
rulepacks/sdpa.adr --rules rulepacks/liger.adr examples/tiny_llm.py`
rewrites the RMS norm, the gated MLP and the attention, and the rewritten
file, without liger-kernel, loads the original state_dict strictly and gives
the same logits, loss and gradients (1e-4)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path


from dslc.cli import main
from rewrite_support import run_without_liger

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tiny_llm.py"
SDPA = REPO / "rulepacks" / "sdpa.adr"
LIGER = REPO / "rulepacks" / "liger.adr"


def test_sdpa_and_liger_rewrite_tiny_llm_and_it_runs_without_liger(tmp_path):
    target = tmp_path / "tiny_llm.py"
    shutil.copy(EXAMPLE, target)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(SDPA), "--rules", str(LIGER), "--no-cache", "--jobs", "1",
                     "--write", "--format", "json", str(target)])
    assert code == 0
    report = json.loads(out.getvalue())
    applied = {(m["rule"].split(":")[0], m["class"]) for m in report["matches"] if m["status"] == "applied"}
    packs = {p for p, _ in applied}
    assert packs == {"sdpa", "liger"}, applied
    liger_rules = {m["rule"] for m in report["matches"] if m["status"] == "applied" and m["rule"].startswith("liger:")}
    assert {"liger:rms_norm_fp32", "liger:swiglu_mlp"} <= liger_rules
    proc = run_without_liger(tmp_path, f"""
        a, b = load("orig", {str(EXAMPLE)!r}), load("new", {str(target)!r})
        torch.manual_seed(0)
        ma = a.TinyLM(a.TinyConfig()).eval()
        mb = b.TinyLM(b.TinyConfig()).eval()
        mb.load_state_dict(ma.state_dict(), strict=True)
        ids = torch.randint(0, a.TinyConfig.vocab_size, (2, 16))
        la, lossa = ma(ids, labels=ids)
        lb, lossb = mb(ids, labels=ids)
        lossa.backward(); lossb.backward()
        gb = dict(mb.named_parameters())
        worst = max(float((p.grad - gb[n].grad).abs().max()) for n, p in ma.named_parameters() if p.grad is not None)
        print(float((la - lb).abs().max()), abs(float(lossa - lossb)), worst)
    """, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logits, loss, grads = map(float, proc.stdout.split())
    assert logits <= 1e-4 and loss <= 1e-4 and grads <= 1e-4
