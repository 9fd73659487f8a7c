"""Quieter, truer output of `dslc apply` and `dslc structure`.

* a path-cap warning (W101) only for a function that holds a node some rule
  anchors on;
* a missing-kernel note (I120) only when a rewrite of the run imports it;
* `dslc structure DIR` is a usage error (2).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"

IFS = "".join(f"        if self.c{i}:\n            x = self.act(x) * {i + 2}\n" for i in range(9))  # 512 paths
CAPPED = f'''import torch
import torch.nn.functional as F
from torch import nn


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x):
{IFS}        return self.act(x)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x):
{IFS}        return F.softmax(x, dim=-1)
'''


def _apply(capsys, *args):
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_path_cap_warned_only_where_a_rule_could_match(tmp_path, capsys):
    f = tmp_path / "capped.py"
    f.write_text(CAPPED)
    code, out, err = _apply(capsys, "--format", "json", f)
    assert code == 0, err
    warnings = json.loads(out)["warnings"]
    assert [(w["code"], w["message"].split(":")[0]) for w in warnings] == [("W101", "capped.Attn.forward")]
    # The analysis itself reports both functions; the filter is dslc's.
    from dslc.analysis import analyze_file

    facts = analyze_file(str(f))
    assert sorted(p.message.split(":")[0] for p in facts.problems if p.code == "path-cap") == [
        "capped.Attn.forward", "capped.Plain.forward"]


SOFTMAX = '''import torch.nn.functional as F


def f(x):
    return F.softmax(x, dim=-1)
'''


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed here")
def test_missing_kernel_note_only_when_a_rewrite_imports_it(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    code, out, err = _apply(capsys, "--select", "adopter:softmax", f)
    assert code == 0 and "xformers" not in err and "I120" not in err
    code, out, err = _apply(capsys, "--format", "json", "--select", "adopter:softmax", f)
    [k] = json.loads(out)["missing_kernels"]  # the data stays in JSON, with applied = 0
    assert k["package"] == "xformers" and k["applied"] == 0
    assert "xformers" not in err
    f.write_text(SOFTMAX)
    code, out, err = _apply(capsys, "--select", "adopter:softmax", f)
    assert code == 0
    assert "note[I120]: pack `adopter` requires xformers" in err and "(1 rewrite in this run imports it)" in err


def test_structure_of_a_directory_is_a_usage_error(tmp_path, capsys):
    assert main(["structure", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "is a directory; give one Python file" in err and "Traceback" not in err
    assert main(["structure", str(tmp_path / "missing.py")]) == 2  # as in apply: a path that names nothing
    assert "dslc structure: error: no such file or directory" in capsys.readouterr().err
