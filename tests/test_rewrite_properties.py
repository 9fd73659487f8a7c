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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewrite_support import run as rewrite, self_output

# The paper's BertSelfOutput followed by a softmax: two rewrites.
BASE = self_output(imports="import torch\nfrom torch import nn\nimport torch.nn.functional as F\n").replace(
    "        return hidden_states\n", "        probs = F.softmax(hidden_states, dim=-1)\n        return probs\n")


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
    assert sorted(m.status for m in result.matches) == ["applied", "applied"], result.matches
    new = result.new_source
    ast.parse(new)
    touched: set[int] = set()
    for m in result.matches:
        touched.update(m.lines)
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
    assert [m for m in again.matches if m.status == "applied"] == []


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
