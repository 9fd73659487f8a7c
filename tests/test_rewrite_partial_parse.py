"""The output gate parses only the top-level blocks that hold an edit.

`safety.verify_output(original, new, edits, tree)` must give exactly the
answer (and message) of the whole-file check: `edits.edited_blocks_parse`
may say "not proven" where the whole file parses (the whole file is then
parsed), never "parses" where it does not.  Checked on hand-picked traps
(a removed line end, a dangling decorator or `else`, an open string or
bracket, a trailing backslash, statements after `;`, CRLF and CR line ends,
form feeds) and on random edits of a source built from such pieces.
"""

from __future__ import annotations

import ast

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dslc.rewrite import safety
from dslc.rewrite.edits import Edit, apply_edits, edited_blocks_parse, statement_starts

pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")  # random edits make odd literals

SOURCE = '''\
# header comment
"""Docstring."""
from __future__ import annotations
import os; import sys
x = (1,
     2); y = 3
z = 1 + \\
    2


@decorator(
    arg)
class A:
    def f(self):
        if self:
            return 1
        else:
            return 2
# between
if x:
    pass
elif y:
    pass
else:
    pass
try:
    pass
except Exception:
    pass
s = """a
b"""
\\
w = 4

def g(): return 5
\f
class B: pass
'''


def whole(original: str, new: str, edits) -> str | None:
    return safety.verify_output(original, new, edits)


def check(original: str, edits) -> tuple[bool, str | None]:
    """(proven by the blocks, the gate's answer), after checking the gate
    with the tree gives the whole-file check's answer."""
    tree = ast.parse(original)
    new = apply_edits(original, edits)
    proven = edited_blocks_parse(original, new, edits, statement_starts(original, tree))
    answer = safety.verify_output(original, new, edits, tree)
    assert answer == whole(original, new, edits)
    if proven:
        ast.parse(new)  # never "parses" when it does not
    return proven, answer


def at(text: str, needle: str, after: bool = False) -> int:
    i = text.index(needle)
    return i + len(needle) if after else i


def test_statement_starts_are_clean_line_starts():
    starts = statement_starts(SOURCE, ast.parse(SOURCE))
    lines = [SOURCE[s:].split("\n", 1)[0] for s in starts]
    assert lines[0] == "# header comment"
    assert "import os; import sys" in lines
    assert "     2); y = 3" not in lines  # `y` starts after a `;` inside another statement's lines
    assert "@decorator(" in lines and "class A:" not in lines  # a decorated class starts at its `@`
    assert "w = 4" not in lines  # the line before ends with a continuation
    assert "def g(): return 5" in lines and "class B: pass" in lines
    for s in starts[1:]:
        assert SOURCE[s - 1] == "\n"


def test_edit_inside_a_class_parses_that_class_only():
    i = at(SOURCE, "return 1")
    proven, answer = check(SOURCE, [Edit(i, i + len("return 1"), "return (1)")])
    assert proven and answer is None


def test_insertion_between_statements_and_at_the_end():
    i = at(SOURCE, "# between")
    assert check(SOURCE, [Edit(i, i, "import re\n")]) == (True, None)
    assert check(SOURCE, [Edit(len(SOURCE), len(SOURCE), "v = 6\n")]) == (True, None)
    assert check(SOURCE, [Edit(0, 0, "import re\n")]) == (True, None)


def test_traps_are_never_proven():
    end_of_w = at(SOURCE, "w = 4", after=True)
    cases = {
        "removed line ends": [Edit(end_of_w, end_of_w + 2, "")],
        "dangling decorator": [Edit(at(SOURCE, "# between"), at(SOURCE, "# between"), "@dec\n")],
        "dangling else": [Edit(at(SOURCE, "try:"), at(SOURCE, "try:"), "else:\n    pass\n")],
        "open string": [Edit(at(SOURCE, "# between"), at(SOURCE, "# between"), "'''\n")],
        "open bracket": [Edit(at(SOURCE, "w = 4"), at(SOURCE, "w = 4"), "q = (\n")],
        "trailing backslash": [Edit(at(SOURCE, "def g"), at(SOURCE, "def g"), "v = 1 \\\n")],
        "indented statement": [Edit(end_of_w + 1, end_of_w + 1, "    v = 1\n")],
    }
    for name, edits in cases.items():
        proven, answer = check(SOURCE, edits)
        assert not proven, name
        assert answer is not None and "does not parse" in answer, name


def test_removed_line_end_joins_two_valid_blocks():
    source = "a = 1\nb = 2\n"
    proven, answer = check(source, [Edit(5, 6, "")])  # `a = 1b = 2`: each block alone would parse
    assert not proven and answer is not None


def test_crlf_cr_and_form_feed():
    for nl in ("\r\n", "\r"):
        source = SOURCE.replace("\n", nl)
        i = at(source, "return 1")
        assert check(source, [Edit(i, i + len("return 1"), "return (1)")]) == (True, None)
        j = at(source, "w = 4")
        proven, answer = check(source, [Edit(j, j, "q = (" + nl)])
        assert not proven and answer is not None


def test_edits_across_blocks_parse_as_one_run():
    a, b = at(SOURCE, "if x:"), at(SOURCE, "s = ")
    assert check(SOURCE, [Edit(a, b, "if x:\n    pass\n")]) == (True, None)


PIECES = [
    "import os\n", "x = 1; y = 2\n", "z = (1,\n     2); w = 3\n", "q = 1 + \\\n    2\n",
    "@dec\nclass A:\n    def f(self):\n        return 1\n", "if a:\n    pass\nelse:\n    pass\n",
    "try:\n    pass\nexcept E:\n    pass\n", "s = '''a\nb'''\n", "# comment\n", "\n", "\\\nv = 1\n",
    "def g(): return 1\n", "\f\nclass B: pass\n",
]
FRAGMENTS = ["", "\n", "x = 1\n", "(", ")", "'''", "@dec\n", "else:\n    pass\n", "    y = 2\n", "\\\n",
             "pass", "# c\n", ";", "class C:\n", "    pass\n", "\r\n", "\r", "from __future__ import annotations\n"]


@st.composite
def edited(draw):
    source = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8)))
    if draw(st.booleans()):
        source = source.replace("\n", "\r\n")
    cuts = sorted(draw(st.lists(st.integers(0, len(source)), min_size=2, max_size=6)))
    edits = []
    for k in range(0, len(cuts) - 1, 2):
        text = "".join(draw(st.lists(st.sampled_from(FRAGMENTS), max_size=3)))
        edits.append(Edit(cuts[k], cuts[k + 1] if draw(st.booleans()) else cuts[k], text))
    return source, edits


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited())
def test_random_edits_agree_with_the_whole_file(case):
    source, edits = case
    check(source, edits)
