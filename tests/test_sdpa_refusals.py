"""sdpa.adr where the attention probabilities are needed after the chain:
returned under `output_attentions` (a conditional expression or an `if`),
or returned always.  SDPA does not compute them: under a condition the
rewrite is guarded per call on it (`keep`, docs/adr-language.md "Values kept
for a run-time condition"); always, it is refused (S204) with the reason."""

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
    # form: (tail, the guard the rewrite writes, or None: refused)
    "ifexp": ("        return (out, probs) if output_attentions else (out,)\n", "output_attentions"),
    "if": ("        outputs = (out,)\n        if output_attentions:\n            outputs = outputs + (probs,)\n"
           "        return outputs\n", "output_attentions"),
    "else": ("        if not output_attentions:\n            return (out,)\n        else:\n            return out, probs\n",
             "output_attentions"),
    "always": ("        return out, probs\n", None),
}


@pytest.mark.parametrize("form", sorted(TAILS))
def test_returned_probabilities_are_guarded_or_refused(tmp_path, form):
    """Read only under a condition: the original statements run where it
    holds, SDPA elsewhere (`keep`); read always: refused (S204) with the reason."""
    tail, guard = TAILS[form]
    src = tmp_path / "attn.py"
    src.write_text(HEAD + tail)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(REPO / "rulepacks" / "sdpa.adr"), "--no-cache", "--jobs", "1",
                     "--near-misses", "--format", "json", "--write", str(src)])
    assert code == 0
    report = json.loads(buf.getvalue())
    (m,) = [m for m in report["matches"] if m["class"] == "Attention"]
    if guard is not None:
        assert m["status"] == "applied", m
        text = src.read_text()
        assert f"        if {guard}:\n            scores = torch.matmul(q, k.transpose(-2, -1))" in text
        assert "        else:\n            out = F.scaled_dot_product_attention(q, k, v, " in text
        assert "            probs = None\n" in text
        assert text.endswith(tail)
        return
    assert m["status"] == "skipped" and m["code"] == "S204", m
    assert "`probs`" in m["reason"] and "after the match" in m["reason"] and "where" not in m["reason"], m
    near = [n for n in report["near_misses"] if n.get("class") == "Attention" and n.get("code") == "S204"]
    assert near and all(n["reason"] == m["reason"] for n in near), near
    assert src.read_text() == HEAD + tail
