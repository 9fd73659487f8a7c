"""rulepacks/sdpa.adr declares a bf16 tolerance (rulepacks/gen_sdpa.py, its
reason and the numbers measured by benchmarks/sdpa_bf16.py), so `dslc verify`
runs its bf16 pass for a class rewritten by sdpa, and by sdpa + liger; a
wrong scale is caught in that pass too."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from dslc.cli import main

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
SDPA = REPO / "rulepacks" / "sdpa.adr"
LIGER = REPO / "rulepacks" / "liger.adr"
sys.path.insert(0, str(REPO / "rulepacks"))
sys.path.insert(0, str(REPO / "tests"))
import gen_sdpa  # noqa: E402
import sdpa_models  # noqa: E402


def test_every_sdpa_rule_declares_the_generators_bf16_tolerance():
    text = SDPA.read_text()
    lines = re.findall(r"^  tolerance (.*)$", text, flags=re.M)
    assert len(lines) == text.count("\nrule ") and set(lines) == {gen_sdpa.TOLERANCE}
    assert f"bf16 atol={gen_sdpa.BF16_ATOL:g} rtol={gen_sdpa.BF16_RTOL:g}" in gen_sdpa.TOLERANCE
    assert gen_sdpa.main(["--check"]) == 0  # the pack is the generator's output


def _rewrite(tmp_path: Path, text: str, *packs: Path) -> tuple[Path, Path]:
    before, after = tmp_path / "before.py", tmp_path / "after.py"
    before.write_text(text)
    after.write_text(text)
    rules = [a for p in packs for a in ("--rules", str(p))]
    assert main(["apply", *rules, "--no-cache", "--jobs", "1", "--write", "-q", str(after)]) == 0
    assert after.read_text() != text
    return before, after


def _verify(capsys, before: Path, after: Path, *packs: Path) -> tuple[int, dict]:
    capsys.readouterr()
    rules = [a for p in packs for a in ("--rules", str(p))]
    code = main(["verify", *rules, "--format", "json", str(before), str(after)])
    return code, {r["class"]: r for r in json.loads(capsys.readouterr().out)["results"]}


def _timm_model() -> str:
    return sdpa_models.HEAD + "\n\nclass TimmPreScaled(_Base):\n" + sdpa_models.CLASSES["TimmPreScaled"][0]


@pytest.fixture(scope="module")
def timm(tmp_path_factory) -> tuple[Path, str]:
    """TimmPreScaled before the rewrite, and its rewritten text."""
    before, after = _rewrite(tmp_path_factory.mktemp("timm"), _timm_model(), SDPA)
    return before, after.read_text()


def test_verify_runs_the_bf16_pass_for_an_sdpa_rewritten_class(tmp_path, capsys, timm):
    before, text = timm
    after = tmp_path / "after.py"
    after.write_text(text)
    code, results = _verify(capsys, before, after, SDPA)
    res = results["TimmPreScaled"]
    assert code == 0 and res["status"] == "pass", res
    assert "eval bf16" in res["modes"]
    assert res["tolerance"]["bf16"] == {"atol": gen_sdpa.BF16_ATOL, "rtol": gen_sdpa.BF16_RTOL}
    assert 0 < res["bf16"]["max_abs"] <= gen_sdpa.BF16_ATOL  # bf16 differs from eager, within the contract


def test_a_class_rewritten_by_sdpa_and_liger_gets_the_bf16_pass(tmp_path, capsys):
    before, after = _rewrite(tmp_path, (REPO / "examples" / "tiny_llm.py").read_text(), SDPA, LIGER)
    code, results = _verify(capsys, before, after, SDPA, LIGER)
    assert code == 0, results
    lm = results["TinyLM"]
    rules = lm["tolerance"]["rules"]
    assert any(r.startswith("sdpa:") for r in rules) and any(r.startswith("liger:") for r in rules), rules
    assert lm["status"] == "pass" and "eval bf16" in lm["modes"], lm
    # the loosest declared bf16 contract of the rules involved
    assert lm["tolerance"]["bf16"]["atol"] == gen_sdpa.BF16_ATOL
    attn = results["TinyCausalSelfAttention"]
    assert attn["status"] == "pass" and "eval bf16" in attn["modes"], attn


def test_a_wrong_scale_in_bf16_alone_is_caught_by_the_bf16_pass(tmp_path, capsys, timm):
    """A rewrite whose scale is right in fp32 and wrong in bf16 (a planted
    bug on the half-precision path): the fp32 runs pass, the bf16 pass fails."""
    before, text = timm
    assert text.count("scale=1.0)") == 1
    after = tmp_path / "after.py"
    after.write_text(text.replace("scale=1.0)", "scale=1.0 if q.dtype == torch.float32 else 2.0)"))
    code, results = _verify(capsys, before, after, SDPA)
    res = results["TimmPreScaled"]
    assert code == 1 and res["status"] == "fail", res
    assert res["mismatch"]["where"].startswith("eval bf16"), res["mismatch"]


@pytest.mark.parametrize("scale", ["2.0", "0.5", "1.0 / q.size(-1) ** 0.5"])
def test_the_bf16_pass_alone_catches_a_wrong_scale(tmp_path, timm, scale):
    """The scale wrong in every dtype: the bf16 pass by itself (the fp32
    contract set out of reach) fails at the declared bf16 tolerance; the
    TimmPreScaled chain has no scale of its own (q was pre-scaled), so
    1/sqrt(d) is wrong too."""
    import importlib.util

    import torch

    from dslc.verify.compare import Tally, _compare_bf16
    from dslc.verify.report import Tolerance

    before, text = timm
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(text)
    bad.write_text(text.replace("scale=1.0)", f"scale={scale})"))
    classes = {}
    for path in (before, good, bad):
        spec = importlib.util.spec_from_file_location(f"bf16_{path.stem}_{tmp_path.name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        classes[path] = mod.TimmPreScaled
    x = {"x": torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))}
    tallies = {}
    for path in (good, bad):
        torch.manual_seed(0)
        m0, m1 = classes[before](), classes[path]()
        m1.load_state_dict(m0.state_dict())
        tallies[path] = Tally(Tolerance(atol=1e9, rtol=0.0, bf16=(gen_sdpa.BF16_ATOL, gen_sdpa.BF16_RTOL)))
        _compare_bf16(m0, m1, x, 0, torch, tallies[path])
    assert tallies[good].worst is None and tallies[good].bf16_max_abs > 0
    worst = tallies[bad].worst
    assert worst is not None and worst.where.startswith("eval bf16"), worst


def test_the_measurement_behind_the_bf16_tolerance_runs_and_holds():
    """benchmarks/sdpa_bf16.py (the numbers in the pack's note), on its
    smallest setting: the declared atol covers what is needed, and the three
    planted scale bugs are caught in every case."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sdpa_bf16

    res = sdpa_bf16.measure([16], 1)
    assert res["cases"] == 18
    assert 0 < res["atol_needed"]["max"] <= gen_sdpa.BF16_ATOL
    assert res["planted_bugs_caught"] == {"scale x2": 18, "scale x0.5": 18, "no scale": 18}
