"""`where $v in (torch.float32, torch.float)`: dotted constants in constraints.

A dotted constant is matched by the canonical source text of the bound value;
the checker refuses what cannot be decided by spelling (ADR211): a bare name,
and `!=` / `not in` (another spelling of the same value would pass).
"""

from __future__ import annotations

from dslc.lang import lower, pretty
from dslc.lang.checker import check_file
from dslc.lang.parser import parse_source
from dslc.match import ir

HEAD = 'pack p "d"\n'
RULE = ('rule r "d" {{ kernel torch.x exact forward {{ torch.f($x, dtype=$_t) -> $y; }} => '
        '{{ torch.g($x) -> $y; }} {where} }}')


def parsed(where: str):
    result = parse_source(HEAD + RULE.format(where=where), "t.adr")
    assert result.file is not None, result.diagnostics
    return result.file


def codes_of(where: str) -> list[str]:
    return sorted(d.code for d in check_file(parsed(where)))


def test_listed_dotted_constants_check_clean():
    assert codes_of("where $_t in (torch.float32, torch.float)") == []
    assert codes_of("where $_t == torch.float32") == []
    assert codes_of('where $_t in (torch.float32, "float32", None)') == []


def test_undecidable_dotted_constraints_are_errors():
    assert codes_of("where $_t in (float32)") == ["ADR211"]
    assert codes_of("where $_t != torch.half") == ["ADR211"]
    assert codes_of("where $_t not in (torch.half, torch.bfloat16)") == ["ADR211", "ADR211"]


def test_lowered_to_code_values_and_printed_back():
    f = parsed("where $_t in (torch.float32, torch.float)")
    (rule,) = lower.lower_file(f).rules
    (c,) = rule.where
    assert c.values == (ir.Code("torch.float32"), ir.Code("torch.float"))
    assert c.spelled_as("expr", "torch.float") and not c.spelled_as("expr", "torch.bfloat16")
    assert not c.spelled_as("const", "torch.float")
    assert "where $_t in (torch.float32, torch.float)" in pretty.file(f)
