"""Safety classes: `unsafe` rules are applied only with `--unsafe`."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

from dslc.cli import main
from dslc.lang.loader import load_rules

REPO = Path(__file__).resolve().parent.parent
ADOPTER = REPO / "rulepacks" / "adopter.adr"

LINEAR_BN = textwrap.dedent("""
    import torch
    from torch import nn


    class LinearBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, 12)
            self.bn = nn.BatchNorm1d(12, eps=1e-5, momentum=0.1)

        def forward(self, x):
            h = self.linear(x)
            return self.bn(h)
""")


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_linear_batchnorm_is_declared_unsafe():
    (pack,) = load_rules([str(ADOPTER)]).packs
    safety = {r.name: r.safety for r in pack.rules}
    assert safety["linear_batchnorm"] == "unsafe"
    assert safety["conv_batchnorm"] == "safe"


def test_apply_without_unsafe_never_applies_linear_batchnorm(tmp_path):
    model = tmp_path / "m.py"
    model.write_text(LINEAR_BN)
    code, out, err = _run(["apply", "--rules", str(ADOPTER), "--no-cache", "--jobs", "1", "--write", str(model)])
    assert code == 0
    assert model.read_text() == LINEAR_BN
    assert "left out unsafe rule adopter:linear_batchnorm" in err
    code, out, err = _run(["apply", "--rules", str(ADOPTER), "--no-cache", "--jobs", "1",
                           "--format", "json", str(model)])
    report = json.loads(out)
    assert not [m for m in report["matches"] if m["rule"] == "adopter:linear_batchnorm"]
    left = {x["rule"]: x for x in report["left_out"]}
    assert sorted(left) == ["adopter:fused_qkv", "adopter:linear_batchnorm"]
    lbn = left["adopter:linear_batchnorm"]
    assert lbn["safety"] == "unsafe" and "NOT numerically equivalent" in lbn["reason"]
    # selected explicitly: still left out without --unsafe
    code, out, err = _run(["apply", "--rules", str(ADOPTER), "--select", "adopter:linear_batchnorm", "--no-cache",
                           "--jobs", "1", "--write", str(model)])
    assert model.read_text() == LINEAR_BN


def test_apply_with_unsafe_applies_it(tmp_path):
    model = tmp_path / "m.py"
    model.write_text(LINEAR_BN)
    code, out, err = _run(["apply", "--rules", str(ADOPTER), "--unsafe", "--no-cache", "--jobs", "1",
                           "--format", "json", str(model)])
    report = json.loads(out)
    assert [m["status"] for m in report["matches"] if m["rule"] == "adopter:linear_batchnorm"] == ["applied"]
    assert report["left_out"] == []


def test_safety_defaults_to_safe_and_prints_back():
    from dslc.lang import pretty
    from dslc.lang.parser import parse_source

    text = 'pack p "d"\nrule r "d" {\n  kernel torch.nn.functional.silu\n  unsafe\n  exact\n' \
           '  forward { torch.sigmoid($x) -> $s; $x * $s -> $y; } => { torch.nn.functional.silu($x) -> $y; }\n}\n'
    tree = parse_source(text, "p.adr").file
    again = parse_source(pretty.file(tree), "p.adr").file
    assert pretty.file(again) == pretty.file(tree)
    assert "  unsafe\n" in pretty.file(tree)


def test_config_unsafe_true_applies_it(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(f'[tool.dslc]\nrules = ["{ADOPTER}"]\nunsafe = true\n')
    model = tmp_path / "m.py"
    model.write_text(LINEAR_BN)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["apply", "--no-cache", "--jobs", "1", "--format", "json", str(model)])
    report = json.loads(out)
    assert [m["status"] for m in report["matches"] if m["rule"] == "adopter:linear_batchnorm"] == ["applied"]
    assert report["left_out"] == []


FUSED_QKV = textwrap.dedent("""
    import torch
    from torch import nn


    class Attn(nn.Module):
        def __init__(self, hidden=16, heads=4):
            super().__init__()
            self.num_heads = heads
            self.head_dim = hidden // heads
            self.q_proj = nn.Linear(hidden, hidden, bias=False)
            self.k_proj = nn.Linear(hidden, hidden, bias=False)
            self.v_proj = nn.Linear(hidden, hidden, bias=False)

        def _split_heads(self, t, num_heads, head_dim):
            return t.view(t.size()[:-1] + (num_heads, head_dim)).permute(0, 2, 1, 3)

        def forward(self, x):
            q = self.q_proj(x)
            k = self.k_proj(x)
            v = self.v_proj(x)
            q = self._split_heads(q, self.num_heads, self.head_dim)
            k = self._split_heads(k, self.num_heads, self.head_dim)
            v = self._split_heads(v, self.num_heads, self.head_dim)
            return torch.softmax(q @ k.transpose(-1, -2), -1) @ v
""")


def test_fused_qkv_is_unsafe_and_left_out(tmp_path):
    (pack,) = load_rules([str(ADOPTER)]).packs
    assert {r.name: r.safety for r in pack.rules}["fused_qkv"] == "unsafe"
    model = tmp_path / "m.py"
    model.write_text(FUSED_QKV)
    code, out, err = _run(["apply", "--rules", str(ADOPTER), "--no-cache", "--jobs", "1", "--write", str(model)])
    assert code == 0 and model.read_text() == FUSED_QKV
    assert "left out unsafe rule adopter:fused_qkv" in err


def test_fused_qkv_changes_the_layout_of_split_heads(tmp_path, monkeypatch):
    # Why fused_qkv is unsafe: FusedQKV returns (batch, seq, heads, head_dim), a
    # `_split_heads` that permutes gives (batch, heads, seq, head_dim).  With the
    # weights mapped exactly, the rewritten attention computes something else.
    import importlib.util
    import sys

    import torch

    model = tmp_path / "m.py"
    model.write_text(FUSED_QKV)
    code, out, err = _run(["apply", "--rules", str(ADOPTER), "--unsafe", "--no-cache", "--jobs", "1",
                           "--write", str(model)])
    assert code == 0 and "FusedQKV" in model.read_text()
    orig = tmp_path / "orig.py"
    orig.write_text(FUSED_QKV)
    monkeypatch.syspath_prepend(str(REPO / "tests" / "kernel_refs"))
    mods = []
    for name, path in (("qkv_orig", orig), ("qkv_new", model)):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods.append(mod)
    torch.manual_seed(0)
    a, b = mods[0].Attn(), mods[1].Attn()
    fused = b.q_proj.fused_linear
    hd, nh = a.head_dim, a.num_heads
    with torch.no_grad():
        fused.bias.zero_()
        for j, lin in enumerate((a.q_proj, a.k_proj, a.v_proj)):
            for h in range(nh):
                for d in range(hd):
                    fused.weight[h * hd * 3 + d * 3 + j] = lin.weight[h * hd + d]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = a(x)
        got = b(x)
    assert got.shape != want.shape or not torch.allclose(got, want, atol=1e-4)
    sys.modules.pop("slapo", None)
