"""Line numbers are the tokenizer's: only `\\n`, `\\r\\n` and `\\r` end a line.

`str.splitlines` also breaks at a form feed (common in old GNU-style files),
a vertical tab, `\\x1c`-`\\x1e`, NEL and U+2028/U+2029 (in docstrings); a line
table built with it disagrees with the ast after such a character.  Each
test puts those characters in comments, strings and a docstring of a model
that the adopter pack rewrites, and checks the rewrite, the diff and the
SARIF fix against the same model without them.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tokenize

import pytest

from dslc.apply import sarif
from dslc.apply.report import file_diff
from dslc.fileio import source_lines
from dslc.rewrite.edits import SourceMap
from rewrite_support import run, self_output, stable

ODD = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _odd(text: str, ch: str) -> str:
    """`text` with `ch` in comments, a string and a docstring, all outside
    the statements the rewrite edits (a bare form feed is whitespace to the
    tokenizer; the others only go in comments and strings)."""
    text = f"# -*- a comment with {ch} inside -*-\n" + text + f"\nDOC = 'x{ch}y'  # {ch}\n"
    text = text.replace("    def __init__", f'    """A docstring{ch}with an odd break."""\n\n    def __init__', 1)
    blank = "    \f" if ch == "\f" else f"    # {ch}"
    return text.replace("    def forward", f"{blank}\n    def forward", 1)


@pytest.mark.parametrize("ch", ODD, ids=[f"U+{ord(c):04X}" for c in ODD])
def test_source_lines_are_the_tokenizers(ch):
    text = _odd(self_output(), ch) + f"x = 1  # last line {ch} without newline"
    lines = source_lines(text)
    assert "".join(source_lines(text, keepends=True)) == text
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.DEDENT, tokenize.ENDMARKER) and tok.start[0] == tok.end[0]:
            assert lines[tok.start[0] - 1][tok.start[1]:tok.end[1]] == tok.string, tok
    smap = SourceMap(text)
    assert smap.line_text(len(lines)) == lines[-1]


@pytest.mark.parametrize("ch", ODD, ids=[f"U+{ord(c):04X}" for c in ODD])
def test_rewrite_with_odd_line_breaks_outside_the_edits(ch):
    plain = run(self_output())
    assert plain.new_source is not None
    result = run(_odd(self_output(), ch))
    assert [m.status for m in result.matches] == ["applied"], [(m.code, m.reason) for m in result.matches]
    # The same rewrite, with every line outside the edits byte-identical.
    assert result.new_source == _odd(plain.new_source, ch)
    stable(result.new_source)


@pytest.mark.parametrize("ch", ["\f", "\u2028"], ids=["U+000C", "U+2028"])
def test_diff_and_sarif_count_lines_like_the_ast(ch, tmp_path):
    plain = run(self_output())
    result = run(_odd(self_output(), ch))
    diff = file_diff(result)
    assert "No newline at end of file" not in diff
    assert f"# -*- a comment with {ch} inside -*-\n" in diff  # a context line, whole
    if shutil.which("patch"):
        (tmp_path / "model.py").write_bytes(result.original.encode())
        subprocess.run(["patch", "-p1", "-s"], input=diff.encode(), check=True, cwd=tmp_path)
        assert (tmp_path / "model.py").read_bytes() == result.new_source.encode()
    # Each SARIF fix starts on the line the ast gives for the edited statement.
    shift = result.matches[0].lines[0] - plain.matches[0].lines[0]
    assert shift == 3  # the first comment, the docstring and the blank line after it

    def starts(r):
        return [lo for lo, _, _ in sarif._hunks(r.original, r.new_source)]

    odd_starts, plain_starts = starts(result), starts(plain)
    assert len(odd_starts) == len(plain_starts)
    assert odd_starts[-1] - plain_starts[-1] == shift + 1  # the form-feed line before `forward` too


@pytest.mark.parametrize("ch", ["\f", "\u2028"], ids=["U+000C", "U+2028"])
def test_reindented_statements_keep_odd_characters(ch):
    """A `when` rewrite moves the original init statements into an `else:`;
    re-indenting them must not treat the character as a line break."""
    from test_diffs_when import SOURCE

    source = SOURCE.format(between="").replace(
        "config.intermediate_size)\n", f"config.intermediate_size)  # odd{ch}comment\n", 1)
    result = run(source)
    assert [m.status for m in result.matches] == ["applied"], [(m.code, m.reason) for m in result.matches]
    moved = f"            self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)  # odd{ch}comment\n"
    assert moved in result.new_source
    stable(result.new_source)


def test_reindented_statements_keep_the_value_of_a_multi_line_string():
    """Lines inside a triple-quoted string are its value: re-indenting the
    run of init statements a `when` rewrite duplicates must leave them."""
    import ast

    from test_diffs_when import SOURCE

    source = SOURCE.format(between='        self.note = """first\n  second\n"""\n')
    result = run(source)
    assert [m.status for m in result.matches] == ["applied"], [(m.code, m.reason) for m in result.matches]
    notes = [n.value.value for n in ast.walk(ast.parse(result.new_source))
             if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "self.note"]
    assert notes == ["first\n  second\n", "first\n  second\n"]  # both branches, the value unchanged
    stable(result.new_source)


def test_string_interior_lines():
    from dslc.rewrite.edits import string_interior_lines

    assert string_interior_lines('x = """a\n  b\nc"""\ny = 1\n') == {1, 2}
    assert string_interior_lines("x = f(a,\n  b)\n") == frozenset()
    assert string_interior_lines('s = "a\\\n  b"\n') == {1}
    assert string_interior_lines('    x = """a\nb"""\n    y = 2\n') == {1}


def test_indent_unit_ignores_lines_inside_strings():
    """A docstring's two-space example is its value, not the file's indentation step."""
    import ast

    from dslc.rewrite.context import Module

    text = ('def f():\n    """Example:\n\n  x = 1\n\t  y\n    """\n    s = """\n a\n"""\n'
            '    return f"""{s}\n  z"""\n')
    tree = ast.parse(text)
    smap = SourceMap(text)
    assert smap.indent_unit() == " "  # without the tree every line counts (` a` inside `s`)
    assert smap.indent_unit(tree) == "    "
    assert smap.indent_unit(tree, [1, 7]) == "    "  # no statement line has the smallest indent: the strings are looked at
    assert Module(text, None).unit == "    "
    two = "def f():\n  '''doc\n x'''\n  return 1\n"
    assert SourceMap(two).indent_unit(ast.parse(two), [1, 2, 4]) == "  "


@pytest.mark.parametrize("text", [
    "x = f(a,\n      b)\n",
    "    y = '''\n  kept\n    also kept\n'''\n    z = 1\n",
    "    a = g(\r\n        1)\r\n",
    "    b = 1\x0c  # form feed\n    c = 2\n",
    "\tif t:\n\t\tu = 1\n",
    "    s = f\"\"\"{x}\n  v\"\"\"\n",
])
@pytest.mark.parametrize("old, new", [("    ", "        "), ("    ", ""), ("", "  "), ("\t", "    ")])
def test_reindent_is_what_the_three_re_indent_sites_computed(text, old, new):
    """`edits.reindent` replaced hoist's `at_indent`, `Module.stmt_text` and
    `relative_text`; the old bodies, kept here, give the same text."""
    from dslc.rewrite.edits import reindent, string_interior_lines

    inside = string_interior_lines(text)
    at_indent = "".join(new + line[len(old):] if line.startswith(old) and i not in inside else line
                        for i, line in enumerate(source_lines(text, keepends=True)))
    assert reindent(text, old, new) == at_indent
    stmt_text = "\n".join(new + raw[len(old):] if raw.startswith(old) and i not in inside else raw
                          for i, raw in enumerate(source_lines(text)))
    assert "\n".join(source_lines(reindent(text, old, new))) == stmt_text
    lines = source_lines(text)
    relative = "\n".join([lines[0]] + [line[len(old):] if line.startswith(old) and i not in inside else line
                                       for i, line in enumerate(lines[1:], 1)])
    assert "\n".join(source_lines(reindent(text, old, "", first=False))) == relative
