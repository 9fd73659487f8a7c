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
    assert [x["rule"] for x in report["left_out"]] == ["adopter:linear_batchnorm"]
    assert report["left_out"][0]["safety"] == "unsafe" and "NOT numerically equivalent" in report["left_out"][0]["reason"]
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
