"""A stricter `dslc check`: names that do not exist, type mismatches,
`params` naming a parameter the layer lacks (ADR5xx warnings); one error does
not hide the others; snippets in line order; no "never used" noise beside an
error about the same variable; the target-writing help points to the docs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dslc.match import names
from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent

BAD = '''pack typo "names and types"

rule sig "a typo in a function name" {
  kernel torch.nn.functionl.sigmoid
  exact
  forward { torch.nn.functionl.sigmoid($x) -> $y; } => { torch.sigmoid($x) -> $y; }
}

rule eps "a string eps" {
  kernel torch.nn.LayerNorm
  tolerance atol=1e-5 rtol=1e-4
  init { torch.nn.LayerNorm($h, eps="small") -> $n; } => { torch.nn.LayerNorm($h, eps=1e-6) -> $n; }
  forward { $n($x) -> $y; } => { $n($x) -> $y; }
  params { $n.weight <- $n.wieght; }
}

rule str "tensor vs string" {
  kernel torch.nn.functional.gelu
  exact
  forward { torch.nn.functional.gelu($x) -> $y; } => { torch.nn.functional.gelu($x, approximate="tanh") -> $y; }
  where $y == "tanh"
}
'''


def check(capsys, tmp_path, text, *args):
    f = tmp_path / "p.adr"
    f.write_text(text)
    code = main(["check", *args, str(f)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_static_name_lookup():
    assert names.exists("torch.nn.functional.sigmoid") is True
    assert names.exists("torch.nn.functionl.sigmoid") is False
    assert names.suggestion("torch.nn.functionl.sigmoid") == "torch.nn.functional.sigmoid"
    assert names.exists("torch.nn.Lineer") is False and names.exists("torch.nn.Linear") is True
    assert names.exists("not_a_package_here.x") is None  # not installed: cannot tell
    assert names.layer_parameters("torch.nn.LayerNorm") == {"weight", "bias"}
    assert {"running_mean", "weight"} <= names.layer_parameters("torch.nn.BatchNorm2d")
    assert names.layer_parameters("torch.nn.Dropout") is None  # registers nothing: unknown, no warning


def test_names_and_types(capsys, tmp_path):
    code, out, _ = check(capsys, tmp_path, BAD, "--format", "json")
    assert code == 0  # warnings only
    got = {(d["code"], d["line"]) for d in json.loads(out)}
    assert got == {("ADR501", 4), ("ADR503", 12), ("ADR504", 14), ("ADR502", 21)}, got
    code, out, _ = check(capsys, tmp_path, BAD)
    assert "help: did you mean `torch.nn.functional.sigmoid`?" in out
    assert "its parameters and buffers: bias, weight" in out


def test_shipped_packs_have_no_name_or_type_warnings(capsys):
    code = main(["check", "--format", "json", str(REPO / "rulepacks")])
    out, _ = capsys.readouterr()
    assert code == 0
    assert not [d for d in json.loads(out) if d["code"].startswith("ADR5")]


def test_kernel_of_a_missing_package_is_not_flagged(capsys, tmp_path):
    if importlib.util.find_spec("epoi") is not None:
        pytest.skip("epoi is installed here")
    text = BAD.replace("torch.nn.functionl.sigmoid", "epoi.ops.nothing_like_this")
    code, out, _ = check(capsys, tmp_path, text, "--format", "json")
    assert "ADR501" not in {d["code"] for d in json.loads(out)}


TWO = '''pack two "two errors"

rule a "first" {
  kernel torch.nn.Linear
  exact
  forward { torch.nn.functional.relu($x) -> $y; } => { torch.relu($z) -> $y; }
}

rule c "third" {
  kernel torch.nn.Linear
  exact
  forward { torch.nn.functional.gelu($x, approximate=$a) -> $y; } => { torch.relu($q) -> $y; }
}
'''


def test_errors_do_not_hide_each_other_and_no_unused_noise(capsys, tmp_path):
    code, out, _ = check(capsys, tmp_path, TWO)
    assert code == 1
    assert out.count("error[ADR201]") == 2  # both rules reported
    first = out.split("error[ADR201]")[1]
    assert "`$x` is bound in the source but used nowhere: a misspelling?" in first
    assert "`$x` is never used" not in out.split("p.adr:12:")[0]  # rule a: the error names the likely typo instead
    # two unused variables beside one unbound: ambiguous, both still warned
    assert "variable `$x` is never used" in out and "variable `$a` is never used" in out


def test_secondary_snippets_in_line_order(capsys, tmp_path):
    text = 'pack p "d"\nrule r "one" {\n  kernel torch.relu\n  exact\n  forward { torch.relu($x) -> $y; } => { torch.relu($x) -> $y; }\n}\n' \
           'rule r "two" {\n  kernel torch.relu\n  exact\n  forward { torch.relu($x) -> $y; } => { torch.relu($x) -> $y; }\n}\n'
    code, out, _ = check(capsys, tmp_path, text)
    assert code == 1
    block = out.split("error[ADR103]")[1]
    assert block.index("first defined here") < block.index("defined again here")


def test_a_method_call_in_a_target_points_to_the_docs(capsys, tmp_path):
    text = ('pack p "d"\nrule r "t" {\n  kernel torch.matmul\n  exact\n'
            '  forward { torch.matmul($q, $k) -> $s; } => { torch.matmul($q, torch.transpose($k, -2, -1)) -> $s; }\n}\n')
    code, out, _ = check(capsys, tmp_path, text)
    assert code == 1 and "error[ADR114]" in out and '"Writing targets"' in out
    doc = (REPO / "docs" / "adr-language.md").read_text()
    assert "## Writing targets" in doc and "$k.transpose(-2, -1)" in doc


SYNTAX_THEN_MORE = '''pack syn "syntax then semantics"

rule a "broken" {
  kernel torch.relu
  exact
  forward { torch.relu($x) -> $y; } => { torch.relu($x) -> ; }
}

rule b "unbound" {
  kernel torch.relu
  exact
  forward { torch.relu($x) -> $y; } => { torch.relu($w) -> $y; }
}

rule c "bad option" {
  kernel torch.relu
  exact
  option scop = "any"
  forward { torch.relu($x) -> $y; } => { torch.relu($x) -> $y; }
}
'''


def test_a_syntax_error_does_not_hide_the_other_rules_problems(capsys, tmp_path):
    code, out, _ = check(capsys, tmp_path, SYNTAX_THEN_MORE, "--format", "json")
    assert code == 1
    assert [(d["code"], d["line"]) for d in json.loads(out)] == [("ADR001", 6), ("ADR201", 12), ("ADR105", 18)]
    # the file is still refused as a whole
    from dslc.lang.loader import load_rules

    f = tmp_path / "p.adr"
    result = load_rules([str(f)])
    assert not result.packs and not result.ok
