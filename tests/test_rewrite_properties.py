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
    # Every untouched line that is not blank (a blank line next to a deleted
    # statement may go with it) is in the output, byte-identical and in order.
    # (A diff's alignment is not used: with repeated lines such as `# ` it may
    # pair a kept line with an edited one.)
    kept = [(n, line) for n, line in enumerate(old_lines, 1) if n not in touched and line.strip()]
    at = 0
    for n, line in kept:
        while at < len(new_lines) and new_lines[at] != line:
            at += 1
        assert at < len(new_lines), (n, line)
        at += 1
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
