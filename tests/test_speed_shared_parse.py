"""The rewriter takes the tree the analysis parsed, and its name index walks
only when the text cannot answer (issue 11: one parse per file)."""

from __future__ import annotations

import ast

from dslc.analysis import api
from dslc.rewrite.astutil import NameSet, _module_names
from dslc.rewrite.context import Module

SRC = "import torch.nn as nn\nfrom torch.nn import functional as F\n\n\nclass A(nn.Module):\n" \
      "    def forward(self, x, scale=2):\n        y = F.softmax(x, dim=-1)\n        return y * scale\n"


def test_trees_are_kept_only_inside_keep_trees_and_handed_over_once():
    api.analyze_source(SRC, "m.py")
    assert api.take_tree(SRC) is None  # nothing kept outside a block
    with api.keep_trees():
        api.analyze_source(SRC, "m.py")
        assert api.parsed(SRC)
        tree = api.take_tree(SRC)
        assert ast.dump(tree, include_attributes=True) == ast.dump(ast.parse(SRC), include_attributes=True)
        assert api.take_tree(SRC) is None and not api.parsed(SRC)
        api.analyze_source(SRC, "m.py")
        module = Module(SRC, None)  # takes the kept tree
        assert not api.parsed(SRC)
        bom = "\ufeff" + SRC
        api.analyze_source(bom, "m.py")  # parsed without the BOM: not the text given
        assert api.take_tree(bom) is None
        api.drop_tree(SRC)
    assert api._TREES is None
    assert ast.dump(module.tree) == ast.dump(ast.parse(SRC))


def test_apply_leaves_no_tree_behind(tmp_path):
    from dslc.apply import driver
    from dslc.lang.loader import load_rules

    path = tmp_path / "m.py"
    path.write_text(SRC)
    packs = load_rules("rulepacks/adopter.adr").packs
    driver.apply_paths([str(path)], packs, driver.ApplyOptions())
    assert api._TREES is None


def test_name_set_answers_like_the_walk():
    src = SRC + "z = [k for k in range(3)]\nimport os.path\n"
    tree = ast.parse(src)
    names = _module_names(tree)
    found = NameSet(tree, src)
    for word in {"softmax", "dim", "x", "y", "scale", "k", "os", "path", "nn", "F", "A", "forward", "torch",
                 "Module", "absent", "*"}:
        assert (word in found) == (word in names), word
    fresh = NameSet(tree, src)
    assert "softmax" not in fresh and "absent" not in fresh and "path" not in fresh
    assert fresh._all is None  # answered from the text alone: attribute-only and absent words
    taken = found | {"extra"}
    assert "extra" in taken and "x" in taken and "absent" not in taken
    taken.add("more")
    assert "more" in taken and set(taken) == names | {"extra", "more"}


def test_name_set_walks_when_characters_normalise_to_ascii():
    src = "ｘ = 1\n"  # fullwidth x: the name is `x`, which is no word of the text
    tree = ast.parse(src)
    assert "x" in NameSet(tree, src)


def test_name_set_reads_the_text_when_non_ascii_is_only_punctuation():
    # `…` normalises to `...` and `’` to itself: no identifier is spelled with
    # them, so the words of the text still answer (no walk of the tree)
    src = "# it’s fine…\nx = 1  # “quoted”\n"
    tree = ast.parse(src)
    found = NameSet(tree, src)
    assert "y" not in found and found._all is None
    assert "x" in found
    src = "ﬁle = 1\n"  # the ligature: the name is `file`
    assert "file" in NameSet(ast.parse(src), src)


LINES_SRC = '''\
import torch.nn.functional as F
from m import (a as
    softmax_alias)


def deco(f):
    return f


@deco(
    softmax_in_decorator)
class Attn:  # softmax in a comment
    """softmax in a docstring"""

    def forward(self, x, softmax_arg=1):
        y = F.softmax(x, dim=-1)  # attribute only
        msg = f"{softmax_in_fstring!r} softmax"
        try:
            pass
        except ValueError as softmax_handler:
            pass
        return [softmax_comp for softmax_comp in y] + \\
            softmax_after_continuation + F.  softmax2

    async def softmax_def(self):
        lambda softmax_lambda: softmax_lambda
'''


def _statements(tree):
    from dslc.rewrite.astutil import index_statements

    return index_statements(tree)[0]


def test_name_set_by_lines_answers_like_the_walk():
    # with the statements given, a word of the text is looked up in the
    # statements on its lines only: the same answers as the whole walk
    for src in (LINES_SRC, LINES_SRC.replace("\n", "\r\n"), SRC):
        tree = ast.parse(src)
        names = _module_names(tree)
        words = {w for w in __import__("re").findall(r"[A-Za-z_][A-Za-z0-9_]*", src)} | {"absent"}
        found = NameSet(tree, src, statements=_statements(tree))
        for word in sorted(words):
            assert (word in found) == (word in names), word
        assert found._all is None  # never walked the whole tree
        for word in ("a.b", "*", "softmax_arg"):  # not identifiers: the whole walk answers
            assert (word in found) == (word in names), word


def test_name_set_by_lines_walks_the_whole_tree_on_a_lone_cr():
    src = "x = 1\ry = softmax\n"  # a lone CR ends a line for the parser, not for a count of LFs
    tree = ast.parse(src)
    found = NameSet(tree, src, statements=_statements(tree))
    assert "softmax" in found and found._all is not None


def test_name_set_by_lines_on_dslc_sources():
    # every word of a few real modules (decorators, f-strings, continuations)
    import glob
    import os
    import re

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in sorted(glob.glob(os.path.join(here, "dslc", "rewrite", "*.py")))[:8]:
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
        tree = ast.parse(src)
        names = _module_names(tree)
        found = NameSet(tree, src, statements=_statements(tree))
        for word in set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", src)):
            assert (word in found) == (word in names), (path, word)


def test_has_word_answers_like_the_word_boundary_search():
    """`has_word` (the rewriter's `\\bword\\b` search by a literal scan) gives
    `re.search`'s answer: random texts over word and non-word characters
    (ASCII, digits, `_`, non-ASCII letters and marks), words with and without
    non-word characters, and the corpus-like cases."""
    import random
    import re

    from dslc.rewrite.astutil import has_word

    rng = random.Random(11)
    alphabet = "ab_1 .\n(\té\u0301ß·-"
    words = ["a", "ab", "aba", "b_1", "_", "é", "ß", "a.b", ".", "-a", "a-", "\u0301", "ab ", "1"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        word = rng.choice(words)
        assert has_word(text, word) == (re.search(r"\b" + re.escape(word) + r"\b", text) is not None), (text, word)
    for text, word, want in [("description", "script", False), ("torch.jit.script\n", "script", True),
                             ("@script", "script", True), ("scripts", "script", False), ("script", "script", True),
                             ("class BertSelfOutputX", "BertSelfOutput", False), ("(BertSelfOutput)", "BertSelfOutput", True),
                             ("aaa", "aa", False), ("éscript", "script", False), ("1script", "script", False)]:
        assert has_word(text, word) is want, (text, word)


def test_word_pattern_matches_like_the_word_boundary_pattern():
    """`word_pattern` (the sibling-module gates' `\\bword\\b`, starting with
    the word) finds the same matches, at the same places, as the pattern with
    a leading `\\b`: random texts over word and non-word characters (ASCII,
    digits, `_`, non-ASCII letters and marks), words with and without
    non-word characters."""
    import random
    import re

    from dslc.rewrite.astutil import word_pattern

    rng = random.Random(12)
    alphabet = "ab_1 .\n(\té\u0301ß·-"
    words = ["a", "ab", "aba", "b_1", "_", "é", "ß", "a.b", ".", "-a", "a-", "\u0301", "ab ", "1", "Ab"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        word = rng.choice(words)
        want = [m.span() for m in re.finditer(r"\b" + re.escape(word) + r"\b", text)]
        assert [m.span() for m in word_pattern(word).finditer(text)] == want, (text, word)
    for text, word, want in [("class BertSelfOutputX", "BertSelfOutput", False), ("(BertSelfOutput)", "BertSelfOutput", True),
                             ("XBertSelfOutput", "BertSelfOutput", False), ("BertSelfOutput", "BertSelfOutput", True),
                             ("aaa", "aa", False), ("éscript", "script", False), ("a aa", "aa", True)]:
        assert (word_pattern(word).search(text) is not None) is want, (text, word)


def test_bare_word_answers_like_the_word_set():
    """`bare_word` (NameSet's question, from the name's occurrences) gives
    the answer of the set of `_WORD` words not after a `.`: random texts of
    letters, digits, `_`, dots, blanks, line ends and a non-ASCII letter,
    and every identifier of the corpus-like cases."""
    import random

    from dslc.rewrite.astutil import _WORD, bare_word

    rng = random.Random(5)
    alphabet = "ab_19. \t\f\n(é"
    names = ["a", "b", "ab", "a1", "_", "_a", "ba", "aa", "b_", "a9b"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        words = {w for dot, w in _WORD.findall(text) if not dot}
        for name in names:
            assert bare_word(text, name) == (name in words), (text, name)
    text = "import torch\nx = F.softmax(y) # softmax\n9softmax . relu\tself .gelu\n"
    words = {w for dot, w in _WORD.findall(text) if not dot}
    for name in ("softmax", "relu", "gelu", "F", "x", "torch", "self", "y", "import", "nothing"):
        assert bare_word(text, name) == (name in words), name


def _indent_unit_by_lines(text: str) -> str:
    """`SourceMap.indent_unit` as it was: line by line."""
    from dslc.fileio import source_lines

    best = None
    for raw in source_lines(text, keepends=True):
        line = raw.rstrip("\r\n")
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        indent = line[: len(line) - len(stripped)]
        if indent and (best is None or len(indent) < len(best)):
            best = indent
    return best if best else "    "


def test_indent_unit_answers_like_the_line_loop():
    import random
    from pathlib import Path

    from dslc.rewrite.edits import SourceMap

    rng = random.Random(3)
    alphabet = ["  ", " ", "\t", "\n", "\r\n", "\r", "#", "x", "\f", "\u2028", "\x0b"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        assert SourceMap(text).indent_unit() == _indent_unit_by_lines(text), repr(text)
    lf_only = [a for a in alphabet if "\r" not in a]  # the regular expression for texts without CR
    for _ in range(20000):
        text = "".join(rng.choice(lf_only) for _ in range(rng.randrange(0, 14)))
        assert SourceMap(text).indent_unit() == _indent_unit_by_lines(text), repr(text)
    for path in sorted((Path(__file__).resolve().parent.parent / "dslc").rglob("*.py"))[:40]:
        text = path.read_text()
        assert SourceMap(text).indent_unit() == _indent_unit_by_lines(text), path
