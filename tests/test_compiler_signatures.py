"""Argument normalisation by parameter name, and the shipped signature table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dslc.match import signatures
from dslc.analysis.model import Value
from dslc.match.signatures import normalize


def c(v):
    return Value(repr(v), "const", v)


def test_positional_equals_keyword():
    pos = normalize("torch.nn.Conv2d", [c(3), c(8), c(3)], [])
    kw = normalize("torch.nn.Conv2d", [], [("in_channels", c(3)), ("out_channels", c(8)), ("kernel_size", c(3))])
    mixed = normalize("torch.nn.Conv2d", [c(3)], [("kernel_size", c(3)), ("out_channels", c(8))])
    assert pos == kw == mixed
    assert pos["in_channels"].const == 3 and pos["kernel_size"].const == 3


def test_defaults_filled_in():
    ln = normalize("torch.nn.LayerNorm", [Value("h")], [])
    assert ln["eps"].const == 1e-05 and ln["elementwise_affine"].const is True
    assert normalize("torch.nn.LayerNorm", [Value("h"), c(1e-12)], [])["eps"].const == 1e-12
    assert normalize("torch.nn.Linear", [c(4), c(5)], [])["bias"].const is True
    bn = normalize("torch.nn.BatchNorm2d", [c(8)], [])
    assert bn["affine"].const is True and bn["track_running_stats"].const is True
    assert normalize("torch.nn.Dropout", [], [])["p"].const == 0.5
    sm = normalize("torch.nn.functional.softmax", [Value("x"), c(-1)], [])
    assert sm["dim"].const == -1 and sm["dtype"].const is None


def test_no_default_is_absent():
    assert "dim" not in normalize("torch.softmax", [Value("x")], [])
    assert normalize("torch.nn.functional.softmax", [Value("x")], [])["dim"].const is None
    assert "normalized_shape" not in normalize("torch.nn.LayerNorm", [], [])


def test_cannot_normalise():
    assert normalize("torch.nn.LayerNorm", [Value("*shape", "expr")], []) is None
    assert normalize("torch.nn.LayerNorm", [Value("h")], [("**kw", Value("kw"))]) is None
    assert normalize("torch.nn.LayerNorm", [Value("h")], [("nonsense", c(1))]) is None
    assert normalize("torch.nn.Dropout", [c(0.1), c(False), c(3)], []) is None  # too many
    assert normalize("torch.nn.Dropout", [c(0.1)], [("p", c(0.2))]) is None  # given twice
    assert normalize("not.in.Table", [], []) is None


def test_transformers_classes_in_table():
    bsa = normalize("transformers.models.bert.modeling_bert.BertSelfAttention", [Value("config")], [])
    assert bsa["position_embedding_type"].const is None
    t5 = normalize("transformers.models.t5.modeling_t5.T5Attention", [Value("config")], [])
    assert t5["has_relative_attention_bias"].const is False
    g = normalize("transformers.models.gpt2.modeling_gpt2.GPT2Attention", [Value("config")], [])
    assert g["is_cross_attention"].const is False and g["layer_idx"].const is None


def test_table_does_not_import_torch():
    code = "import sys, dslc.match.signatures as s; s.table(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_table_agrees_with_installed_torch():
    pytest.importorskip("torch")
    shipped = json.loads(signatures.TABLE.read_text())
    checked = 0
    for qualname in signatures.TORCH_NAMES:
        entry = signatures.torch_entry(qualname)
        if entry is None:
            continue
        assert qualname in shipped, f"{qualname} missing from the table: run python -m dslc.match.signatures"
        assert shipped[qualname]["params"] == entry["params"], f"{qualname} is stale: run python -m dslc.match.signatures"
        checked += 1
    assert checked >= 40


def test_transformers_entries_agree_with_corpus(transformers_src):
    shipped = json.loads(signatures.TABLE.read_text())
    for qualname, rel in signatures.TRANSFORMERS_NAMES.items():
        assert shipped[qualname] == signatures.transformers_entry(qualname, transformers_src / rel)


from hypothesis import given, strategies as st


@given(st.integers(min_value=0, max_value=5), st.permutations(range(5)))
def test_any_positional_keyword_split_normalises_alike(k, order):
    names = ["in_channels", "out_channels", "kernel_size", "stride", "padding"]
    values = [c(3), c(8), c(3), c(2), c(1)]
    args = values[:k]
    kwargs = [(names[i], values[i]) for i in order if i >= k]
    got = normalize("torch.nn.Conv2d", args, kwargs)
    assert {n: got[n] for n in names} == dict(zip(names, values))
    assert got["dilation"].const == 1 and got["bias"].const is True
