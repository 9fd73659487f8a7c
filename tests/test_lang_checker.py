"""Checker details not covered by the golden cases."""

from __future__ import annotations

import pytest

from dslc.lang.checker import check_file, version_error
from dslc.lang.parser import parse_source

SPECS = [
    ">=0.1", "<0.0.23", ">=0.1,<1", "==1.2.*", "!=1.2.*", "~=2.0", "~=1.4.5", "===foo", "==1.0+local.1",
    ">= 1.0 , < 2", "==1.0rc1", "==1.0.post1", "==1.0.dev3", "==2!1.0", ">=1.0a1",
    "", "1.0", ">=", "~=1", "==1.0+local.*", ">=1..0", ">>1", "=1.0", ">=abc",
]


@pytest.mark.parametrize("spec", SPECS)
def test_version_ranges_agree_with_packaging(spec):
    specifiers = pytest.importorskip("packaging.specifiers")
    try:
        specifiers.SpecifierSet(spec)
        valid = spec.strip() != ""  # packaging accepts "" (any version); a range must say something
    except specifiers.InvalidSpecifier:
        valid = False
    assert (version_error(spec) is None) == valid, spec


def test_stray_commas_are_stricter_than_packaging():
    # packaging ignores empty clauses; a stray comma in a pack is a typo.
    assert version_error(">=1.0,") and version_error(",>=1.0") and version_error(">=1,,<2")


def codes_of(text: str) -> list[str]:
    result = parse_source(text, "t.adr")
    assert result.file is not None, result.diagnostics
    return sorted(d.code for d in check_file(result.file))


HEAD = 'pack p "d"\n'


def test_clean_rule_has_no_diagnostics():
    assert codes_of(HEAD + 'rule r "d" { kernel torch.x exact forward { torch.f($x) -> $y; } => { torch.g($x) -> $y; } }') == []


def test_crlf_and_tabs():
    text = HEAD.replace("\n", "\r\n") + 'rule r "d" {\r\n\tkernel torch.x\r\n\texact\r\n\tforward { torch.f($x) -> $y; } => { torch.g($w) -> $y; }\r\n}\r\n'
    result = parse_source(text, "t.adr")
    (d,) = [d for d in check_file(result.file) if d.is_error]
    line = text.split("\r\n")[4]
    assert (d.code, d.span.line, d.span.col) == ("ADR201", 5, line.index("$w") + 1)


def test_cr_only_line_ends_are_lines():
    """Old Mac line ends: the first `#` comment used to run to the end of the
    file and the parser reported a missing pack header (ADR101)."""
    text = ('# a comment\npack p "d"\n\nrule r "d" {\n  kernel torch.x\n  exact\n'
            '  forward { torch.f($x) -> $y; } => { torch.g($w) -> $y; }\n}\n').replace("\n", "\r")
    result = parse_source(text, "t.adr")
    assert result.file is not None, result.diagnostics
    (d,) = [d for d in check_file(result.file) if d.is_error]
    line = text.split("\r")[6]
    assert (d.code, d.span.line, d.span.col) == ("ADR201", 7, line.index("$w") + 1)
    assert result.source.line_text(7) == line


def test_cr_only_line_ends_locate_decode_errors():
    from dslc.lang.parser import parse_bytes

    result = parse_bytes(b'pack p "d"\r\r# caf\xe9\r', "t.adr")
    (d,) = result.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("ADR004", 3, 6)


def test_detect_only_rules():
    base = HEAD + 'rule r "d" { kernel torch.x forward { torch.f($x) -> $y; } => _ %s }'
    assert codes_of(base % "") == ["ADR112"]
    assert codes_of(base % "option detect = True") == []


def test_zero_tolerance_and_kernel_package():
    assert codes_of(HEAD + 'rule r "d" { kernel foo.x tolerance atol=0 rtol=0 forward { torch.f($x) -> $y; } => { torch.g($x) -> $y; } }') == ["ADR111", "ADR303"]
    ok = 'pack p "d"\nrequires flash-attn module flash_attn\nrule r "d" { kernel flash_attn.f exact forward { torch.f($x) -> $y; } => { flash_attn.f($x) -> $y; } }'
    assert codes_of(ok) == []


def test_init_only_rule_and_forward_var_visibility():
    text = HEAD + '''rule r "d" { kernel torch.x exact
      init { torch.nn.Linear($i, $o) -> $lin; } => { torch.nn.Linear($i, $o, bias=False) -> $lin; } }'''
    assert codes_of(text) == []
    text = HEAD + '''rule r "d" { kernel torch.x exact
      init { torch.nn.Linear($i, $o) -> $lin; } => { torch.nn.Linear($i, $o) -> $lin; }
      forward { $lin($x) -> $y; } => { torch.g($x, $o) -> $y; } }'''
    assert codes_of(text) == []  # init-source $o is visible in forward


def test_option_allow_acknowledges_warnings_only():
    rule = HEAD + 'rule r "d" { kernel torch.x forward { torch.f($x) -> $y; } => _ %s }'
    assert codes_of(rule % "") == ["ADR112"]
    assert codes_of(rule % 'option allow = "ADR112"') == []
    assert codes_of(rule % 'option allow = "ADR201"') == ["ADR106", "ADR112"]  # errors cannot be allowed


def test_option_commutative_is_a_bool():
    rule = HEAD + 'rule r "d" { kernel torch.x exact forward { $a + $b -> $c; } => { torch.g($a, $b) -> $c; } %s }'
    assert codes_of(rule % "option commutative = False") == []
    assert codes_of(rule % "option commutative = True") == []
    assert codes_of(rule % 'option commutative = "no"') == ["ADR106"]


def test_scope_must_agree_with_the_items():
    fwd = HEAD + 'rule r "d" { kernel torch.x exact forward { torch.f($x) -> $y; } => { torch.g($x) -> $y; } %s }'
    assert codes_of(fwd % 'option scope = "any"') == []
    assert codes_of(fwd % 'option scope = "forward"') == ["ADR106"]
