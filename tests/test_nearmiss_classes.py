"""Near misses of class rules (`dslc.rewrite.classmiss`): a class that holds
the distinctive operations of a rule matched by computation (liger's RMS
norm, gated MLP) but is not rewritten says why, in text and JSON and in
`dslc explain FILE:LINE`.

Every model here is written for the test: RMS norms that miss the rule in
one way each, an exact one, gated MLPs, and a class with an activation but
nothing of a gated MLP.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dslc import codes
from dslc.analysis import analyze_source
from dslc.cli import main
from dslc.lang.loader import load_rules
from dslc.match import classmatch

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "liger.adr"

MODEL = '''\
import torch
from torch import nn
import torch.nn.functional as F


class ExactNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))


class NoWeightNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(v + self.eps)


class AddedWeightNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight + x * torch.rsqrt(v + self.eps)


class DimOneNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))


class NoEpsNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v))


class NoCastBackNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        h = x.to(torch.float32)
        v = h.pow(2).mean(-1, keepdim=True)
        return self.weight * (h * torch.rsqrt(v + self.eps))


class BranchNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(v + self.eps)
        if self.weight.dtype == torch.float16:
            x = x.half()
        return self.weight * x


class DropNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        h = self.drop(x * torch.rsqrt(v + self.eps))
        return self.weight * h


class Gated(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gate = nn.Linear(d, 4 * d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GatedExtra(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gate = nn.Linear(d, 4 * d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x) * 2.0)


class Conv(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv = nn.Conv2d(d, d, 3)

    def forward(self, x):
        return F.silu(self.conv(x))


class TensorWeightNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.ones(d)
        self.eps = eps

    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
'''


def line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.py"
    path.write_text(MODEL)
    return path, _run(path, "--near-misses")


def _run(path: Path, *extra: str) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--format", "json",
                     *extra, str(path)])
    assert code == 0
    return json.loads(buf.getvalue())


def _misses(rep: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for n in rep["near_misses"]:
        if n["kind"] == "unmatched":
            out.setdefault(n["class"], []).append(n)
    return out


def test_exact_classes_still_rewrite(report):
    _, rep = report
    applied = {(m["rule"], m["class"]) for m in rep["matches"] if m["status"] == "applied"}
    assert applied == {("liger:rms_norm", "ExactNorm"), ("liger:swiglu_mlp", "Gated")}
    miss = _misses(rep)
    assert "ExactNorm" not in miss and "Gated" not in miss
    # an activation alone is nothing of a gated MLP (no `*`, no Linear layers)
    assert "Conv" not in miss


def test_each_rms_variant_gets_its_own_reason(report):
    miss = _misses(report[1])
    # one rule each: the written-out LayerNorm (it needs a `-`) is no candidate,
    # nor the float32 rule where forward has no cast
    for cls in ("NoWeightNorm", "AddedWeightNorm", "DimOneNorm", "NoEpsNorm", "DropNorm", "BranchNorm"):
        assert [n["rule"] for n in miss[cls]] == ["liger:rms_norm"], cls
    [n] = miss["NoWeightNorm"]
    assert n["code"] == codes.NM_CLASS_NODE and "`$w`, an attribute of self built in __init__" in n["reason"]
    assert "operand #1 is `x`" in n["reason"]
    [n] = miss["AddedWeightNorm"]
    assert "`self.weight + x * torch.rsqrt(v + self.eps)`" in n["reason"] and "is a `+`" in n["reason"]
    assert "`$w * $n -> $out` (a `*`)" in n["reason"]
    [n] = miss["DimOneNorm"]
    assert n["line"] == line_of(MODEL, "mean(1, keepdim=True)")
    assert "its `dim` is `1`, the rule needs `-1`" in n["reason"]
    [n] = miss["NoEpsNorm"]
    assert "is a `.mean()` call, where the rule needs `$v + $eps -> $ve` (a `+`)" in n["reason"]
    [n] = miss["DropNorm"]
    assert "is a call of `self.drop`, where the rule needs `$x * $r -> $n`" in n["reason"]
    [n] = miss["BranchNorm"]
    assert n["code"] == codes.NM_CLASS_SHAPE and "not one expression" in n["reason"]
    assert f"line {line_of(MODEL, 'if self.weight.dtype')}" in n["reason"]


def test_a_weight_that_is_no_parameter_is_skipped_with_the_reason(report):
    """Forward fits; __init__ does not: the match's own skip reason (S215), no near miss of its own."""
    [m] = [m for m in report[1]["matches"] if m["class"] == "TensorWeightNorm"]
    assert m["status"] == "skipped" and m["code"] == codes.S_CLASS_INIT
    assert "`self.weight` is built by `torch.ones`, not `torch.nn.Parameter`" in m["reason"]
    assert "TensorWeightNorm" not in _misses(report[1])


def test_float32_round_trip_without_the_cast_back(report):
    miss = _misses(report[1])
    by_rule = {n["rule"]: n for n in miss["NoCastBackNorm"]}
    assert set(by_rule) == {"liger:rms_norm", "liger:rms_norm_fp32"}
    assert "where the rule needs `$n.to($dt) -> $nd` (a `.to()` call)" in by_rule["liger:rms_norm_fp32"]["reason"]
    assert "is `x.to(torch.float32)`, where the rule needs `$x`" in by_rule["liger:rms_norm"]["reason"]


def test_gated_mlp_with_an_extra_op(report):
    [n] = _misses(report[1])["GatedExtra"]
    assert n["rule"] == "liger:swiglu_mlp" and n["code"] == codes.NM_CLASS_NODE
    assert "torch.nn.functional.silu($g) -> $a" in n["reason"]


def test_near_misses_only_when_asked(report):
    path, rep = report
    plain = _run(path)
    assert "near_misses" not in plain
    assert [(m["rule"], m["class"]) for m in plain["matches"]] == [(m["rule"], m["class"]) for m in rep["matches"]]


def test_text_and_explain(report, capsys):
    path, _ = report
    assert main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--near-misses", str(path)]) == 0
    err = capsys.readouterr().err
    line = line_of(MODEL, "mean(1, keepdim=True)")
    assert f"model.py:{line}: near-miss[liger:rms_norm] in DimOneNorm: " in err and "[N502]" in err
    assert main(["explain", "--rules", str(PACK), f"{path}:{line}"]) == 0
    out = capsys.readouterr().out
    assert "near miss liger:rms_norm" in out and "its `dim` is `1`" in out


def test_extra_node_and_inputs(tmp_path):
    """A node the pattern has none for (N503), another number of inputs (N504)."""
    loaded = load_rules([str(PACK)])
    rule = next(r for r in loaded.packs[0].rules if r.name == "rms_norm")
    src = (
        "import torch\nfrom torch import nn\n\n\n"
        "class Dead(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
        "        self.weight = nn.Parameter(torch.ones(d))\n        self.eps = 1e-6\n\n"
        "    def forward(self, x):\n        unused = x.sum()\n        v = x.pow(2).mean(-1, keepdim=True)\n"
        "        return self.weight * (x * torch.rsqrt(v + self.eps))\n\n\n"
        "class TwoInputs(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
        "        self.weight = nn.Parameter(torch.ones(d))\n        self.eps = 1e-6\n\n"
        "    def forward(self, x, r):\n        v = x.pow(2).mean(-1, keepdim=True)\n"
        "        return self.weight * (x * torch.rsqrt(v + self.eps)) + r\n")
    facts = analyze_source(src, "m.py")
    dead, two = facts.classes
    code, line, reason = classmatch.explain_class(rule, dead)
    assert code == codes.NM_CLASS_EXTRA and line == 12 and "`x.sum()`" in reason
    code, _, reason = classmatch.explain_class(rule, two)
    assert code == codes.NM_CLASS_INPUTS and "2 input(s) (x, r)" in reason


def test_anchors_come_from_the_pattern():
    loaded = load_rules([str(PACK)])
    rules = {r.name: r for r in loaded.packs[0].rules if r.klass is not None}
    assert classmatch.class_anchors(rules["rms_norm"]) == {
        ("method", "pow"), ("method", "mean"), ("binop", "+"), ("method", "rsqrt"), ("binop", "*")}
    assert classmatch.class_anchors(rules["rms_norm_fp32"]) == classmatch.class_anchors(rules["rms_norm"]) | {
        ("method", "to")}
    assert classmatch.class_anchors(rules["swiglu_mlp"]) == {
        ("layer", "torch.nn.Linear"), ("call", "torch.nn.functional.silu"), ("binop", "*")}


def _explained():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("dslc_bench_explained_cls", REPO / "benchmarks" / "explained.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


def _tree(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "transformers" / "models" / "tiny").mkdir(parents=True)
    (src / "transformers" / "models" / "tiny" / "modeling_tiny.py").write_text(MODEL)
    (src / "timm" / "models").mkdir(parents=True)
    return src


def test_explained_benchmark_checks_class_rules(tmp_path):
    ex = _explained()
    res = ex.run([str(PACK)], ex.files_of(_tree(tmp_path)), 1, None)
    assert res["errors"] == 0 and res["internal_errors"] == 0 and res["unexplained"] == []
    # the two exact classes, the nine near misses (NoCastBackNorm: two rules), the skipped one
    assert res["by_source"]["class"] == 12, res


def test_explained_benchmark_reports_a_dropped_class_near_miss(tmp_path, monkeypatch):
    from dslc.apply import driver

    real = driver.near_misses

    def drop(*args, **kwargs):
        return [n for n in real(*args, **kwargs) if n.class_name != "DimOneNorm"]

    monkeypatch.setattr(driver, "near_misses", drop)
    ex = _explained()
    res = ex.run([str(PACK)], ex.files_of(_tree(tmp_path)), 1, None)
    assert [(p["rule"], p["unit"]) for p in res["unexplained"]] == [("liger:rms_norm", "class DimOneNorm")]


def test_a_layer_bound_under_a_condition_still_counts_for_candidates():
    """`if use_act: self.act = nn.SiLU()`: the layer is a SiLU wherever it is
    bound, so the class is a gated-MLP candidate (forward has **kwargs: N501)."""
    src = (
        "import torch\nfrom torch import nn\n\n\n"
        "class Block(nn.Module):\n    def __init__(self, d, use_act):\n        super().__init__()\n"
        "        if use_act:\n            self.act = nn.SiLU()\n        self.gate = nn.Linear(d, d)\n\n"
        "    def forward(self, x, **kwargs):\n        return self.act(self.gate(x)) * x\n")
    cls = analyze_source(src, "m.py").classes[0]
    assert {("call", "torch.nn.functional.silu"), ("layer", "torch.nn.Linear"), ("binop", "*")} <= \
        classmatch.class_ops(cls)
    loaded = load_rules([str(PACK)])
    rules = {r.qualified_name: r for r in loaded.packs[0].rules if r.klass is not None}
    anchors = {name: classmatch.class_anchors(r) for name, r in rules.items()}
    assert classmatch.candidates(anchors, classmatch.class_ops(cls)) == ["liger:swiglu_mlp"]
    assert classmatch.explain_class(rules["liger:swiglu_mlp"], cls)[0] == codes.NM_CLASS_SHAPE
