"""`dslc verify` as a command: exit codes, usage errors, skips, broken rewrites."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dslc.verify import equivalence as verify
from dslc.cli import main
from test_verify_planted import FACTORY, ORIGINAL, fused_layernorm
from test_verify_support import EPOI_HINT, epoi_requirement, kernel_refs, no_kernels, pack, rule  # noqa: F401


@pytest.fixture
def pair(tmp_path):
    (tmp_path / "model.py").write_text(ORIGINAL)
    (tmp_path / "factories.py").write_text(FACTORY)

    def write(source: str) -> tuple[str, str, str]:
        (tmp_path / "rewritten.py").write_text(source)
        return str(tmp_path / "model.py"), str(tmp_path / "rewritten.py"), f"{tmp_path / 'factories.py'}:make"

    return write


def cli(capsys, *argv):
    code = main(["verify", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_teaches(capsys):
    assert main(["verify", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--factory", "--class", "--device", "--rules", "strict=True", "tiny config", "examples:"):
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["missing.py", "also_missing.py"], "cannot read"),
    (["{orig}", "{new}", "--factory", "nocolon"], "expected FILE.py:FUNC"),
    (["{orig}", "{new}", "--factory", "{fac_file}:nope"], "defines no function nope"),
    (["{orig}", "{new}", "--class", "NoSuchClass"], "no such class"),
    (["{orig}", "{new}", "--device", "tpu"], "invalid choice"),
])
def test_usage_errors_exit_2_without_traceback(pair, capsys, argv, message):
    orig, new, factory = pair(ORIGINAL)
    values = {"orig": orig, "new": new, "fac_file": factory.rpartition(":")[0]}
    code, out, err = cli(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    assert message in err and "Traceback" not in err + out


def test_original_that_does_not_parse_is_a_usage_error(pair, capsys, tmp_path):
    orig, new, factory = pair(ORIGINAL)
    (tmp_path / "model.py").write_text("class Broken(:\n")
    code, _, err = cli(capsys, orig, new, "--factory", factory)
    assert code == 2 and "does not parse" in err


def test_rewritten_file_with_a_syntax_error_fails_in_one_line(pair, capsys):
    orig, new, factory = pair(ORIGINAL.replace("return hidden_states\n", "return hidden_states +\n", 1))
    code, out, err = cli(capsys, orig, new, "--factory", factory)
    assert code == 1
    assert "FAIL  the rewritten file does not parse: SyntaxError" in out
    assert "Traceback" not in out + err


def test_rewritten_file_that_raises_on_import_fails_in_one_line(pair, capsys):
    broken = ORIGINAL.replace("from torch import nn\n", "from torch import nn\nraise RuntimeError('boom')\n")
    orig, new, factory = pair(broken)
    code, out, err = cli(capsys, orig, new, "--factory", factory)
    assert code == 1
    assert "does not import: RuntimeError: boom" in out and "Traceback" not in out + err


def test_missing_kernel_is_skipped_with_the_pack_install_hint(pair, no_kernels):
    orig, _, factory = pair(ORIGINAL)
    dl = rule("dropout_layernorm", "epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm")
    report = verify.verify_sources(ORIGINAL, fused_layernorm(), path=orig, factory=factory,
                                   rules=[pack(dl, requires=(epoi_requirement(),))])
    # Nothing was compared: no pass (issue 13), unless skips are allowed.
    assert not report.ok and report.nothing_compared
    (res,) = report.results
    assert res.status == "skipped"
    assert "kernel not installed" in res.reason and EPOI_HINT in res.reason
    assert verify.verify_sources(ORIGINAL, fused_layernorm(), path=orig, factory=factory, allow_skip=True,
                                 rules=[pack(dl, requires=(epoi_requirement(),))]).ok


def test_missing_kernel_without_rules_is_still_a_skip(pair, capsys, no_kernels):
    orig, new, factory = pair(fused_layernorm())
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 1 and "nothing was compared" in out
    assert "skip  SelfOutput: kernel not installed: no module named 'epoi'" in out
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--allow-skip")
    assert code == 0


def test_misspelt_torch_import_is_a_failure_not_a_skip(pair, capsys):
    orig, new, factory = pair(ORIGINAL.replace("from torch import nn\n", "from torch import nn\nimport torch.nn.functionall\n"))
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--class", "Merge")
    assert code == 1 and "No module named 'torch.nn.functionall'" in out


def test_cuda_without_a_gpu_skips_every_class(pair, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    orig, new, factory = pair(ORIGINAL)
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--class", "Merge", "--device", "cuda")
    assert code == 1
    assert "skip  Merge: no GPU" in out
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--class", "Merge", "--device", "cuda",
                       "--allow-skip")
    assert code == 0


def test_auto_device_picks_cpu_here(pair, capsys):
    import torch

    orig, new, factory = pair(ORIGINAL)
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--class", "Merge", "--format", "json")
    assert code == 0
    assert json.loads(out)["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_nothing_changed_means_nothing_to_compare(pair, capsys):
    orig, new, factory = pair(ORIGINAL)
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 0 and "no rewritten classes to compare" in out


def test_plain_file_without_factory_synthesises_inputs(pair, capsys):
    # Built without arguments; inputs shaped by the first Linear (issue 12).
    orig, new, _ = pair(ORIGINAL.replace("eps=1e-12", "eps=1e-6"))
    code, out, _ = cli(capsys, orig, new)
    assert code == 0, out
    assert "pass  SelfOutput" in out and "inputs synthesised: shape 2x4x16 from the first Linear's in_features=16" in out
    orig, new, _ = pair(ORIGINAL.replace("eps=1e-12", "eps=0.5"))
    code, out, _ = cli(capsys, orig, new)
    assert code == 1 and "FAIL  SelfOutput" in out


def test_changed_classes_follow_changed_helpers():
    before = "def helper(x):\n    return x\n\nclass A:\n    def f(self):\n        return helper(1)\n\nclass B:\n    pass\n"
    after = before.replace("return x\n", "return -x\n")
    assert verify.changed_classes(before, after) == ["A"]
    assert verify.changed_classes(before, before.replace("pass", "x = 1")) == ["B"]
    # formatting and comments do not count as a change
    assert verify.changed_classes(before, before.replace("class B:\n", "class B:  # note\n")) == []


def test_a_huge_module_level_literal_is_parsed_once_and_never_dumped(tmp_path, monkeypatch):
    """A file with a huge single line (a data table) costs verify one parse
    per side: the steps share the tree, and a value no class reads is not
    compared (`ast.dump` of 300k elements, `ast.get_source_segment` per
    class took minutes)."""
    import ast

    table = "TABLE = [" + "1, " * 20_000 + "]\n"
    before, after = CONFIG_MODEL + table, CONFIG_MODEL.replace("eps=config.layer_norm_eps", "eps=1e-5") + table
    parses, dumps = [], []
    real_parse, real_dump = ast.parse, ast.dump
    monkeypatch.setattr(ast, "parse", lambda src, *a, **k: (parses.append(src), real_parse(src, *a, **k))[1])
    monkeypatch.setattr(ast, "dump", lambda node, *a, **k: (dumps.append(len(real_dump(node))), real_dump(node, *a, **k))[1])
    monkeypatch.setattr(ast, "get_source_segment", lambda *a, **k: pytest.fail("get_source_segment"))
    report = verify.verify_sources(before, after, path=str(tmp_path / "a.py"), isolate=False, device="cpu")
    assert [r.status for r in report.results] == ["fail"]  # eps changed: compared, and caught
    assert parses.count(before) == 1 and parses.count(after) == 1
    assert max(dumps) < len(table)


def test_tolerance_combines_contracts():
    a = rule("a", "k.A", atol=1e-5, rtol=1e-4, deterministic=True)
    b = rule("b", "k.B", atol=1e-3, rtol=0.0, deterministic=False)
    e = rule("e", "k.E", exact=True, deterministic=True)
    tol = verify.tolerance_for([a, b])
    assert (tol.exact, tol.atol, tol.rtol, tol.deterministic) == (False, 1e-3, 1e-4, False)
    assert verify.tolerance_for([e]).exact and verify.tolerance_for([e]).deterministic
    assert verify.tolerance_for([]) == verify.Tolerance()


def test_rules_used_resolves_import_aliases():
    src = "import epoi.ops.torchscript_ops as ts\nx = ts.FusedBiasGELU(3)\n"
    g = rule("biased_gelu", "epoi.ops.torchscript_ops.FusedBiasGELU")
    d = rule("dropout_layernorm", "epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm")
    assert verify.rules_used(src, [g, d]) == [g]
    assert verify.rules_used("from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm as F\n", [g, d]) == [d]


def test_exact_contract_rejects_any_difference(pair):
    orig, _, factory = pair(ORIGINAL)
    # x + res -> res + x is bit-identical; a reassociated sum is not exact.
    changed = ORIGINAL.replace("self.LayerNorm(hidden_states + input_tensor)",
                               "self.LayerNorm((hidden_states * 3.0 + input_tensor * 3.0) / 3.0)")
    exact = rule("r", "torch.nn.LayerNorm", exact=True)
    report = verify.verify_sources(ORIGINAL, changed, path=orig, factory=factory, rules=[exact])
    (res,) = report.results
    assert res.status == "fail" and res.tolerance.exact
    loose = verify.verify_sources(ORIGINAL, changed, path=orig, factory=factory)
    assert loose.ok


def test_module_entry_point_runs(pair):
    orig, new, factory = pair(ORIGINAL)
    proc = subprocess.run([sys.executable, "-m", "dslc", "verify", orig, new, "--factory", factory,
                           "--class", "Merge"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pass  Merge" in proc.stdout


CONFIG_MODEL = '''\
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, input_tensor):
        return self.norm(self.dense(hidden_states) + input_tensor)


class Config:
    hidden_size = 24
    layer_norm_eps = 1e-12
'''


def test_plain_file_with_its_own_config_class_needs_no_factory(tmp_path, capsys):
    (tmp_path / "a.py").write_text(CONFIG_MODEL)
    (tmp_path / "b.py").write_text(CONFIG_MODEL.replace("self.dense(hidden_states) + input_tensor",
                                                        "input_tensor + self.dense(hidden_states)"))
    (tmp_path / "c.py").write_text(CONFIG_MODEL.replace("eps=config.layer_norm_eps", "eps=1e-5"))
    code, out, _ = cli(capsys, str(tmp_path / "a.py"), str(tmp_path / "b.py"))
    assert code == 0 and "pass  Block" in out
    code, out, _ = cli(capsys, str(tmp_path / "a.py"), str(tmp_path / "c.py"))
    assert code == 1 and "FAIL  Block: eval x0.01 output" in out


NESTED_MODEL = '''\
import torch
from torch import nn


class Norm(nn.Module):  # built with a size, not a config: compared inside a container
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = Norm(config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        return hidden_states + self.dense(self.norm(hidden_states))


class LM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([Block(config) for _ in range(2)])

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return h


class Config:
    hidden_size = 16
    vocab_size = 11
'''


def test_contained_class_is_compared_through_the_smallest_container_that_runs(tmp_path, capsys):
    """`Norm(dim)` cannot be built from the config: it is compared inside
    `Block` (the smallest class of the file that contains it and runs), and a
    wrong rewrite of it fails there."""
    (tmp_path / "a.py").write_text(NESTED_MODEL)
    (tmp_path / "b.py").write_text(NESTED_MODEL.replace("x * torch.rsqrt(", "x / torch.sqrt("))
    (tmp_path / "c.py").write_text(NESTED_MODEL.replace("+ self.eps)", "+ 1e-2)"))
    code, out, err = cli(capsys, str(tmp_path / "a.py"), str(tmp_path / "b.py"), "--class", "Norm")
    assert code == 0 and "pass  Norm via Block:" in out, out + err
    code, out, _ = cli(capsys, str(tmp_path / "a.py"), str(tmp_path / "c.py"), "--class", "Norm")
    assert code == 1 and "FAIL  Norm via Block:" in out


def test_contained_class_without_a_running_container_says_why(tmp_path, capsys):
    source = NESTED_MODEL.replace("def forward(self, hidden_states):", "def forward(self, states_of_mind):")
    source = source.replace("return hidden_states + self.dense(self.norm(hidden_states))",
                            "return states_of_mind + self.dense(self.norm(states_of_mind))")
    source = source.replace("self.embed = nn.Embedding(config.vocab_size", "self.embed = nn.Embedding(config.vocab")
    (tmp_path / "a.py").write_text(source)
    (tmp_path / "b.py").write_text(source)
    code, out, _ = cli(capsys, str(tmp_path / "a.py"), str(tmp_path / "b.py"), "--class", "Norm")
    assert code == 1
    (line,) = [ln for ln in out.splitlines() if "skip  Norm" in ln]
    assert "no class of the file that contains it runs" in line
    assert "Block contains it, but no synthesised inputs fit its forward" in line
    assert "LM does not construct from Config: AttributeError" in line


def test_modeling_file_without_transformers_is_skipped_with_the_reason(transformers_src, monkeypatch):
    import sys

    # Where transformers is installed, hide it (and whatever of it is loaded) for this test.
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)
    path = transformers_src / "models" / "bert" / "modeling_bert.py"
    src = path.read_text(encoding="utf-8")
    changed = src.replace("eps=config.layer_norm_eps", "eps=1e-5", 1)
    report = verify.verify_sources(src, changed, path=str(path), allow_skip=True)
    assert report.ok and report.results
    assert all(r.status == "skipped" for r in report.results)
    assert "package transformers.models.bert not importable" in report.results[0].reason
    assert "transformers==4.35.0" in report.results[0].reason
