"""benchmarks/coverage.py: the liger comparison (issue 10, item 7) on a small
tree laid out like the unpacked wheels (transformers/models/<arch>/modeling_*.py,
liger_kernel/transformers/monkey_patch.py), so it runs without the download."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MONKEY_PATCH = '''\
def apply_liger_kernel_to_llama(rope: bool = True, cross_entropy: bool = False,
                                fused_linear_cross_entropy: bool = True, rms_norm: bool = True,
                                swiglu: bool = True, model=None) -> None:
    pass


def apply_liger_kernel_to_tiny_text(rms_norm: bool = True, *, layer_norm: bool = False, geglu: bool = True):
    pass


def helper(x=True):
    pass
'''


def _coverage():
    spec = importlib.util.spec_from_file_location("dslc_bench_coverage", REPO / "benchmarks" / "coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_liger_defaults_are_read_from_the_signatures(tmp_path):
    cov = _coverage()
    (tmp_path / "liger_kernel" / "transformers").mkdir(parents=True)
    (tmp_path / "liger_kernel" / "transformers" / "monkey_patch.py").write_text(MONKEY_PATCH)
    got = cov.liger_defaults(tmp_path)
    assert got == {
        "llama": {"rope": True, "cross_entropy": False, "fused_linear_cross_entropy": True,
                  "rms_norm": True, "swiglu": True},
        "tiny_text": {"rms_norm": True, "layer_norm": False, "geglu": True},
    }
    assert cov.model_dir_for("tiny_text", {"tiny"}) == "tiny"
    assert cov.model_dir_for("tiny_text", {"other"}) is None


def test_every_liger_rule_has_a_kind():
    cov = _coverage()
    from dslc.lang.loader import load_rules

    loaded = load_rules([str(REPO / "rulepacks" / "liger.adr")])
    kinds = {r.name: cov.kernel_kind(r.kernels) for r in loaded.packs[0].rules}
    assert None not in kinds.values(), kinds
    assert kinds["rms_norm_fp32"] == kinds["llama_rms_norm"] == "rms_norm"
    assert kinds["llama_mlp"] == kinds["swiglu_mlp"] == "swiglu"
    assert kinds["gemma_mlp"] == kinds["geglu_mlp"] == "geglu"
    assert kinds["rotary_pos_emb"] == "rope" and kinds["cross_entropy_loss"] == "cross_entropy"
    assert kinds["layer_norm_call"] == "layer_norm"
    assert cov.kernel_kind(["liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss"]) == "fused_linear_cross_entropy"


def test_run_on_a_small_tree_compares_with_liger(tmp_path, capsys):
    cov = _coverage()
    (tmp_path / "liger_kernel" / "transformers").mkdir(parents=True)
    (tmp_path / "liger_kernel" / "transformers" / "monkey_patch.py").write_text(MONKEY_PATCH)
    llama = tmp_path / "transformers" / "models" / "llama"
    llama.mkdir(parents=True)
    # examples/tiny_llm.py: an RMS norm, a gated MLP, causal attention and the loss, its own names
    shutil.copy(REPO / "examples" / "tiny_llm.py", llama / "modeling_llama.py")
    (tmp_path / "timm" / "models").mkdir(parents=True)
    (tmp_path / "timm" / "models" / "plain.py").write_text("import torch\n\n\ndef f(x):\n    return torch.relu(x)\n")
    out_json = tmp_path / "cov.json"
    assert cov.main(["--src", str(tmp_path), "--jobs", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "2 files in" in out and "errors: 0" in out
    data = json.loads(out_json.read_text())
    rows = data["liger_comparison"]["rows"]
    assert [r["architecture"] for r in rows] == ["llama"]  # tiny_text has no folder here
    row = rows[0]
    assert row["liger"] == ["fused_linear_cross_entropy", "rms_norm", "rope", "swiglu"]
    assert {"rms_norm", "swiglu", "cross_entropy"} <= set(row["dslc"])
    assert "rms_norm" not in row["missing"] and "fused_linear_cross_entropy" in row["missing"]
    assert "Liger architectures with a liger-pack rewrite: 1 of 1" in out
    assert "outside Liger's list, with a liger-pack rewrite: 0 ()" in out


def test_unsafe_applies_the_causal_lm_rule(tmp_path, capsys):
    """`--unsafe`: the fused linear cross-entropy on a causal LM (an unsafe rule) counts for the
    architecture; without it, it is missed."""
    cov = _coverage()
    (tmp_path / "liger_kernel" / "transformers").mkdir(parents=True)
    (tmp_path / "liger_kernel" / "transformers" / "monkey_patch.py").write_text(MONKEY_PATCH)
    llama = tmp_path / "transformers" / "models" / "llama"
    llama.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "langpacks_models" / "flce_causal_lm.py", llama / "modeling_llama.py")
    missing = {}
    for extra in ([], ["--unsafe"]):
        out_json = tmp_path / "cov.json"
        assert cov.main(["--src", str(tmp_path), "--jobs", "1", "--json", str(out_json),
                         "--rules", str(REPO / "rulepacks" / "liger.adr"), *extra]) == 0
        assert ("the unsafe ones applied" in capsys.readouterr().out) == bool(extra)
        data = json.loads(out_json.read_text())
        assert data["unsafe"] == bool(extra)
        [row] = data["liger_comparison"]["rows"]
        missing[bool(extra)] = row["missing"]
    assert "fused_linear_cross_entropy" in missing[False] and "fused_linear_cross_entropy" not in missing[True]
