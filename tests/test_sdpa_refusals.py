"""sdpa.adr where the attention probabilities are needed after the chain:
returned under `output_attentions` (a conditional expression or an `if`),
or returned always.  SDPA does not compute them, so the rewrite is refused
(S204), and the reason names the condition under which they are read (a
per-call guard on it is not supported yet: docs/adr-language.md, "What a
forward rewrite cannot guard yet")."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent

HEAD = '''\
import math

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, q, k, v, output_attentions=False):
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        probs = F.softmax(scores, dim=-1)
        probs = self.drop(probs)
        out = torch.matmul(probs, v)
'''

TAILS = {
    "ifexp": ("        return (out, probs) if output_attentions else (out,)\n", "`output_attentions` holds"),
    "if": ("        outputs = (out,)\n        if output_attentions:\n            outputs = outputs + (probs,)\n"
           "        return outputs\n", "`output_attentions` holds"),
    "else": ("        if not output_attentions:\n            return (out,)\n        else:\n            return out, probs\n",
             "`not output_attentions` is false"),
    "always": ("        return out, probs\n", None),
}


@pytest.mark.parametrize("form", sorted(TAILS))
def test_returned_probabilities_refuse_the_rewrite_with_the_condition(tmp_path, form):
    tail, condition = TAILS[form]
    src = tmp_path / "attn.py"
    src.write_text(HEAD + tail)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(REPO / "rulepacks" / "sdpa.adr"), "--no-cache", "--jobs", "1",
                     "--near-misses", "--format", "json", str(src)])
    assert code == 0
    report = json.loads(buf.getvalue())
    assert not [m for m in report["matches"] if m["status"] == "applied"]
    (m,) = [m for m in report["matches"] if m["class"] == "Attention"]
    assert m["code"] == "S204" and "`probs`" in m["reason"] and "after the match" in m["reason"], m
    if condition is None:
        assert "where" not in m["reason"], m
    else:
        assert f"where {condition}" in m["reason"] and "per-call guard" in m["reason"], m
    near = [n for n in report["near_misses"] if n.get("class") == "Attention" and n.get("code") == "S204"]
    assert near and all(n["reason"] == m["reason"] for n in near), near
    assert src.read_text() == HEAD + tail
