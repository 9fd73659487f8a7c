"""The parser's own LALR loop (`parser._fast_parse`) gives what lark's parse
gives: the same syntax tree and diagnostics for every rule file of the
repository and for broken or odd inputs (a syntax error falls back to lark)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark.exceptions import UnexpectedInput

from dslc.lang import parser

REPO = Path(__file__).resolve().parent.parent
FILES = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("rulepacks/*.adr"), *REPO.glob("tests/**/*.adr")])


def _same(text: str, monkeypatch, path: str = "x.adr") -> None:
    """Parse `text` with the fast loop, then with lark's parse in its place."""
    fast, gave_up, errors = parser._fast_parse, [], []

    def counting_fast(t):
        try:
            return fast(t)
        except parser._NotFast:
            gave_up.append(t)
            raise

    def lark_only(t):
        try:
            return parser._lark().parse(t)
        except UnexpectedInput:
            errors.append(t)
            raise

    monkeypatch.setattr(parser, "_fast_parse", counting_fast)
    ours = parser.parse_source(text, path)
    monkeypatch.setattr(parser, "_fast_parse", lark_only)
    theirs = parser.parse_source(text, path)
    monkeypatch.undo()
    assert ours.file == theirs.file
    assert ours.diagnostics == theirs.diagnostics
    # the loop gives up (and lark parses again) exactly where lark finds a syntax error
    assert gave_up == errors


def test_the_fast_loop_is_used():
    assert parser._tables() is not None


@pytest.mark.parametrize("path", FILES)
def test_every_rule_file_parses_the_same(path, monkeypatch):
    data = (REPO / path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pytest.skip("not UTF-8: the decoder's diagnostic, no parse")
    _same(text, monkeypatch, path)


@pytest.mark.parametrize("text", [
    "",
    "# only a comment\n",
    'pack p "d"\n',
    'pack p "d"\nrule r "x" { kernel a.b; forward { torch.matmul($a, $b) -> $c } => { k.f($a, $b) -> $c } }\n',
    'pack p "d"\nrule r "x" { kernel a.b\n forward { $x + -1 -> $y; F.relu($y, inplace=True, ...) -> $z } => _ }',
    'pack p "d"\nrule r "x" { note "a\\tb"; note \'c\'; option k = -1.5e3; where $a == torch.float32 }',
    'pack p "d"\nrule r "x" { note "bad \\q escape" }',
    'pack p "d"\nrule r "x" { option n = 1' + "0" * 400 + " }",
    'pack p "d"\nrule r "x" { forward { ' + "(" * 150 + "$a" + ")" * 150 + " -> $b } => _ }",
    'pack p "d"\nrule r "x" { kernels a.b }',
    'pack p "d"\nrule r "x" { kernel a.b forward { $a -> $b } => _ }\nrule s "y" { kernel ; }',
    'pack p "d"\nrule r "x" { forward { $a ? $b } => _ }',
    'pack p "d"\nrule r "x" { note "unterminated }\n',
    'pack p "d"\nrequires liger-kernel >=0.1\n',
    'pack p "d"\nrule r "x" {',
    "pack p \"d\"\r\nrule r \"x\" {\r kernel a.b }\r\n",
])
def test_odd_and_broken_inputs_parse_the_same(text, monkeypatch):
    _same(text, monkeypatch)

