"""Properties of the rewriter over decorated sources (hypothesis, modest sizes).

A matched BERT-style class gets random comment lines, blank lines and trailing
comments; through the real analysis + matcher + rewriter:
1. the output parses;
2. every line outside the statements the rewrite reports is byte-identical
   and in order (the decorations survive);
3. applying again changes nothing (idempotence).
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dslc.analysis import analyze_source
from dslc.match.compiler import compile_pack
from dslc.lang.loader import load_rules
from dslc.match.matcher import match_file
from dslc.rewrite.rewriter import rewrite_source

REPO = Path(__file__).resolve().parent.parent

BASE = '''import torch
from torch import nn
import torch.nn.functional as F


class SelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        probs = F.softmax(hidden_states, dim=-1)
        return probs
'''

_COMPILED = None


def compiled():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = compile_pack(load_rules([str(REPO / "rulepacks" / "adopter.adr")]).packs[0])
    return _COMPILED


def rewrite(source: str):
    facts = analyze_source(source, "model.py")
    return rewrite_source(source, facts, match_file(compiled(), facts), path="model.py")


words = st.text(alphabet="abcdefghij XYZ0123456789-_", min_size=0, max_size=20)


@st.composite
def decorated(draw):
    lines = BASE.splitlines()
    out = []
    for i, line in enumerate(lines):
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["blank", "comment", "indented"]))
            text = draw(words)
            out.append("" if kind == "blank" else ("# " if kind == "comment" else "        # ") + text)
        if line.strip() and draw(st.booleans()) and draw(st.booleans()):
            line = line + "  # " + draw(words)
        out.append(line)
    return "\n".join(out) + "\n"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decorated())
def test_decorations_survive_and_rewrite_is_idempotent(source):
    result = rewrite(source)
    assert sorted(o.status for o in result.outcomes) == ["applied", "applied"], result.outcomes
    new = result.new_source
    ast.parse(new)
    touched: set[int] = set()
    for o in result.outcomes:
        touched.update(o.lines)
    old_lines = source.splitlines(keepends=True)
    new_lines = new.splitlines(keepends=True)
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            changed = set(range(i1 + 1, i2 + 1))
            # A blank line next to a deleted statement may go with it.
            stray = {n for n in changed - touched if old_lines[n - 1].strip()}
            assert not stray, (tag, i1, i2, old_lines[i1:i2])
    again = rewrite(new)
    assert again.new_source is None
    assert [o for o in again.outcomes if o.status == "applied"] == []


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["\n", "\r\n"]), st.sampled_from(["    ", "\t", "  "]))
def test_newline_and_indent_style_kept(newline, unit):
    source = BASE.replace("    ", unit).replace("\n", newline)
    new = rewrite(source).new_source
    assert new is not None
    assert new.count("\r\n") == (new.count("\n") if newline == "\r\n" else 0)
    body = [line for line in new.splitlines() if line.startswith((" ", "\t"))]
    assert all(line.startswith(unit) for line in body)
    ast.parse(new)
