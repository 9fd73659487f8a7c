"""`dslc structure` and golden structures (examples, 22 transformers 4.35.0 files).

Regenerate the goldens with `DSLC_UPDATE_GOLDEN=1 pytest tests/test_analysis_structure.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dslc.analysis import analyze_file
from dslc.analysis.render import file_text
from dslc.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden" / "structure"
# one parsed-module cache for all corpus files (modeling_utils.py is parsed once)
_MODULES: dict = {}
UPDATE = os.environ.get("DSLC_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with DSLC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden (DSLC_UPDATE_GOLDEN=1 to update)"


def run_cli(capsys, *argv):
    code = main(["structure", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("example", ["bert_self_output", "dpt_preact_residual"])
def test_examples_golden(capsys, monkeypatch, repo_root, example):
    monkeypatch.chdir(repo_root)
    code, out, err = run_cli(capsys, f"examples/{example}.py")
    assert code == 0 and err == ""
    check_golden(f"{example}.txt", out)
    code, out, _ = run_cli(capsys, f"examples/{example}.py", "--format", "json")
    assert code == 0
    check_golden(f"{example}.json", out)


def test_bert_self_output_as_in_the_paper(capsys, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    _, out, _ = run_cli(capsys, "examples/bert_self_output.py")
    paper = ["torch.nn.Linear(hidden_states) → hidden_states;",
             "torch.nn.Dropout(hidden_states) → hidden_states;",
             "hidden_states + input_tensor → temp_1;",
             "torch.nn.LayerNorm(temp_1) → hidden_states;"]
    body = [line.split(None, 1)[1].split("   #")[0] for line in out.splitlines() if line.startswith("      L")]
    assert body == paper


def test_dpt_as_in_the_paper(capsys, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    _, out, _ = run_cli(capsys, "examples/dpt_preact_residual.py", "--format", "json")
    data = json.loads(out)
    (cls,) = data["classes"]
    assert [p["guards"] for p in cls["paths"]] == [["self.use_batch_norm"], ["not (self.use_batch_norm)"]]
    first = [n.get("type") for n in cls["paths"][0]["nodes"] if n["kind"] == "layer"]
    assert first == ["torch.nn.ReLU", "torch.nn.Conv2d", "torch.nn.BatchNorm2d",
                     "torch.nn.ReLU", "torch.nn.Conv2d", "torch.nn.BatchNorm2d"]
    bn = next(b for b in cls["init"] if b["attr"] == "batch_norm1")
    assert bn["guards"] == ["self.use_batch_norm"] and bn["type"] == "torch.nn.BatchNorm2d"


def test_json_contract_fields(capsys, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    _, out, _ = run_cli(capsys, "examples/bert_self_output.py", "--format", "json", "--class", "BertSelfOutput")
    data = json.loads(out)
    assert data["file"] == "examples/bert_self_output.py"
    (cls,) = data["classes"]
    assert cls["name"] == "BertSelfOutput"
    assert cls["init"][0] == {"attr": "dense", "type": "torch.nn.Linear", "kind": "call",
                              "args": ["config.hidden_size", "config.hidden_size"], "kwargs": {},
                              "lines": [14, 14], "guards": []}
    node = cls["paths"][0]["nodes"][0]
    assert node == {"kind": "layer", "type": "torch.nn.Linear", "attr": "dense", "inputs": ["hidden_states"],
                    "outputs": ["hidden_states"], "lines": [19, 19]}
    op = cls["paths"][0]["nodes"][2]
    assert op == {"kind": "op", "op": "+", "inputs": ["hidden_states", "input_tensor"],
                  "outputs": ["temp_1"], "lines": [21, 21]}


def test_options(capsys, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    code, out, _ = run_cli(capsys, "examples/dpt_preact_residual.py", "--flatten")
    assert code == 0 and "forward: 1 path" in out and "path 1 (always)" in out
    code, out, _ = run_cli(capsys, "examples/dpt_preact_residual.py", "--stmts")
    assert "stmt reads {hidden_state} writes {residual}" in out
    code, out, _ = run_cli(capsys, "examples/bert_self_output.py", "--no-inline")
    assert code == 0


def test_errors_are_located_and_never_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("class A:\n    def f(self:\n        pass\n")
    code, out, err = run_cli(capsys, str(bad))
    assert code == 1 and out == ""
    assert err.startswith(f"{bad}:2:") and "error[E101]" in err and "Traceback" not in err
    enc = tmp_path / "enc.py"
    enc.write_bytes(b"# -*- coding: klingon -*-\nx = 1\n")
    code, _, err = run_cli(capsys, str(enc))
    assert code == 1 and f"{enc}:1:0: error[E102]" in err
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"x = '\xe9'\n")
    code, _, err = run_cli(capsys, str(latin))
    assert code == 1 and "error[" in err
    code, _, err = run_cli(capsys, str(tmp_path / "missing.py"))
    assert code == 2 and "no such file or directory" in err  # a usage error, as in apply
    ok = tmp_path / "ok.py"
    ok.write_text("x = 1\n")
    code, _, err = run_cli(capsys, str(ok), "--class", "Nope")
    assert code == 1 and "error[E120]" in err
    code, _, err = run_cli(capsys, str(ok), "--format", "yaml")
    assert code == 2
    code, _, err = run_cli(capsys, str(ok), "--root", str(tmp_path / "nowhere"))
    assert code == 2 and "not a directory" in err
    proc = subprocess.run([sys.executable, "-m", "dslc", "structure", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--flatten" in proc.stdout


# -- 22 real modeling files of transformers 4.35.0 ---------------------------

CORPUS = {
    "bert": ["BertSelfOutput", "BertIntermediate", "BertSelfAttention"],
    "gpt2": ["GPT2Attention", "GPT2MLP"],
    "t5": ["T5LayerFF", "T5DenseGatedActDense"],
    "dpt": ["DPTPreActResidualLayer"],
    "roberta": ["RobertaSelfOutput"],
    "vit": ["ViTSelfAttention"],
    "gptj": ["GPTJAttention"],
    "codegen": ["CodeGenMLP"],
    "resnet": ["ResNetConvLayer"],
    "convnext": ["ConvNextLayer"],
    "llama": ["LlamaMLP", "LlamaRMSNorm"],
    "bart": ["BartEncoderLayer"],
    "albert": ["AlbertAttention"],
    "electra": ["ElectraSelfOutput"],
    "distilbert": ["FFN"],
    "mobilebert": ["MobileBertSelfOutput"],
    "swin": ["SwinSelfOutput"],
    "beit": ["BeitSelfOutput"],
    "whisper": ["WhisperEncoderLayer"],
    "opt": ["OPTDecoderLayer"],
    "deberta": ["DebertaSelfOutput"],
    "levit": ["LevitConvEmbeddings"],
}


@pytest.mark.parametrize("model", sorted(CORPUS))
def test_transformers_golden(transformers_src, model):
    path = transformers_src / "models" / model / f"modeling_{model}.py"
    facts = analyze_file(str(path), _modules=_MODULES)
    assert not [p for p in facts.problems if p.code != "path-cap"], facts.problems
    names = {c.name for c in facts.classes}
    assert set(CORPUS[model]) <= names, sorted(names)
    blocks = [file_text(facts, only=name).split("\n\n", 1)[1] for name in CORPUS[model]]
    header = f"# transformers/models/{model}/modeling_{model}.py ({facts.module})\n\n"
    check_golden(f"transformers/{model}.txt", header + "\n".join(blocks))
