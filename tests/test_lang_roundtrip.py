"""Property tests: print -> parse is the identity on syntax trees; no input
(garbage, mutated packs, invalid UTF-8, huge or deeply nested text) makes the
front end raise."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from dslc.lang import checker, pretty, syntax as S
from dslc.lang.lower import lower_file
from dslc.lang.parser import parse_bytes, parse_source

REPO = Path(__file__).resolve().parent.parent
ADOPTER = (REPO / "rulepacks" / "adopter.adr").read_bytes()

KEYWORDS = {
    "pack", "requires", "module", "install", "rule", "kernel", "exact", "tolerance",
    "deterministic", "init", "forward", "where", "when", "params", "option", "note",
    "in", "not", "and", "or", "True", "False", "None", "_",
}

names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in KEYWORDS),
    # a keyword followed by more name characters is a plain name (`kernels`, `Truex`)
    st.tuples(st.sampled_from(sorted(KEYWORDS)), st.from_regex(r"[A-Za-z0-9_]{1,2}", fullmatch=True)).map("".join),
)
qualnames = st.lists(names, min_size=1, max_size=3).map(".".join)
var_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
attr_paths = st.lists(st.from_regex(r"[A-Za-z0-9_]{1,5}", fullmatch=True), min_size=1, max_size=3).map(".".join)

ints = st.integers(-10**12, 10**12)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
strings = st.text(max_size=12)
const_values = st.one_of(ints, floats, strings, st.sampled_from([True, False, None]))
consts = const_values.map(S.Const)

variables = var_names.map(S.Var)
attr_refs = st.builds(S.AttrRef, variables, attr_paths)
name_terms = qualnames.map(S.Name)


def _is_nonneg_number(c) -> bool:
    return isinstance(c, S.Const) and type(c.value) in (int, float) and not str(c.value).startswith("-")


def _extend(children):
    args = st.one_of(
        st.builds(S.Arg, st.none(), children),
        st.builds(S.Arg, names, children),
        st.just(S.Arg(None, None, rest=True)),
    )
    callee = st.one_of(name_terms, variables, st.builds(S.Subscript, name_terms, children))
    return st.one_of(
        st.builds(S.BinOp, st.sampled_from(["+", "-", "*", "/", "@"]), children, children),
        # `-1` is parsed as a constant: a minus over a plain number is no tree.
        st.builds(S.UnaryOp, st.just("-"), children.filter(lambda c: not _is_nonneg_number(c))),
        st.builds(S.Subscript, name_terms, children),
        st.builds(S.Call, callee, st.lists(args, max_size=3).map(tuple)),
    )


exprs = st.recursive(st.one_of(variables, attr_refs, consts, name_terms), _extend, max_leaves=8)
outputs = st.lists(variables, max_size=3).map(tuple)
nodes = st.one_of(st.builds(S.Node, exprs, outputs), st.builds(S.Wildcard, outputs))
node_lists = st.lists(nodes, max_size=3).map(tuple)
items = st.builds(S.Item, node_lists, st.one_of(st.none(), node_lists))


def _extend_cond(children):
    return st.one_of(
        st.builds(S.Compare, st.sampled_from(["==", "!=", "in", "not in"]), children, children),
        st.builds(S.BoolOp, st.sampled_from(["and", "or"]), children, children),
        st.builds(S.Not, children),
    )


signed = st.one_of(ints, floats, strings, st.sampled_from([True, False, None])).map(S.Const)
tuples = st.lists(signed, max_size=3).map(lambda xs: S.TupleLit(tuple(xs)))
conds = st.recursive(st.one_of(variables, attr_refs, signed, tuples), _extend_cond, max_leaves=6)

constraints = st.one_of(
    st.builds(S.Constraint, variables, st.sampled_from(["==", "!="]), signed.map(lambda c: (c,))),
    st.builds(S.Constraint, variables, st.sampled_from(["in", "not in"]), st.lists(signed, max_size=3).map(tuple)),
)
clauses = st.one_of(
    st.builds(S.Kernel, name_terms),
    st.builds(S.Exact, st.booleans()),
    st.builds(S.Tolerance, st.lists(st.builds(S.TolArg, names, signed), min_size=1, max_size=3).map(tuple),
              st.booleans()),
    st.builds(S.Section, st.sampled_from(["init", "forward"]), items),
    st.builds(S.Where, st.lists(constraints, min_size=1, max_size=3).map(tuple)),
    st.builds(S.When, conds),
    st.builds(S.Params, st.lists(st.builds(S.ParamMap, attr_refs, attr_refs), max_size=3).map(tuple)),
    st.builds(S.Option, names, signed),
    st.builds(S.Note, strings),
)
rules = st.builds(S.Rule, names, strings, st.lists(clauses, max_size=6).map(tuple))
pkg_names = st.lists(names, min_size=1, max_size=2).map("-".join)
requires = st.builds(
    S.Requires, pkg_names,
    st.one_of(st.none(), strings.map(S.Const)),
    st.one_of(st.none(), name_terms),
    st.one_of(st.none(), strings.map(S.Const)),
)
files = st.builds(
    S.File,
    st.lists(st.builds(S.PackHeader, names, strings), max_size=2).map(tuple),
    st.lists(requires, max_size=2).map(tuple),
    st.lists(rules, max_size=3).map(tuple),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files)
def test_print_parse_roundtrip(tree):
    text = pretty.file(tree)
    result = parse_source(text, "gen.adr")
    assert not [d for d in result.diagnostics], (text, result.diagnostics)
    assert result.file == tree, text
    # And the checker never raises on any parsable tree.
    checker.check_files([result.file])


@settings(max_examples=100, deadline=None)
@given(exprs)
def test_expression_roundtrip(e):
    text = f'pack p "d"\nrule r "d" {{ forward {{ {pretty.expr(e)} -> $o; }} => _ }}\n'
    result = parse_source(text)
    assert result.file is not None, (text, result.diagnostics)
    node = result.file.rules[0].clauses[0].item.source[0]
    assert node.expr == e, text


def _front_end(data: bytes) -> None:
    """Parse, check and (when clean) lower: must never raise."""
    result = parse_bytes(data, "fuzz.adr")
    for d in result.diagnostics:
        assert d.code.startswith("ADR") and d.span is not None
    if result.file is not None:
        diags = checker.check_files([result.file])
        if not any(d.is_error for d in diags):
            lower_file(result.file)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_garbage_text_never_raises(text):
    _front_end(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_pack_never_raises(data):
    blob = bytearray(ADOPTER)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "flip" and blob:
            blob[pos] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del blob[pos:pos + data.draw(st.integers(1, 40))]
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del blob[pos:]
    _front_end(bytes(blob))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_token_shuffles_never_raise(data):
    # Valid tokens in a wrong order reach deeper parser states than bytes do.
    tokens = ADOPTER.decode().split()
    picked = data.draw(st.lists(st.sampled_from(tokens), max_size=60))
    _front_end(" ".join(picked).encode())


def test_invalid_utf8_and_binary():
    for blob in (b"\xff\xfe\x00x", b'pack p "d"\n\xc3\x28', b"\x00" * 100, ADOPTER[:100] + b"\x80"):
        result = parse_bytes(blob, "bin.adr")
        assert result.file is None and result.diagnostics[0].code == "ADR004"


def test_ten_megabytes_is_refused_quickly():
    blob = b"# " + b"x" * (10 * 1024 * 1024) + b"\n"
    result = parse_bytes(blob, "big.adr")
    assert [d.code for d in result.diagnostics] == ["ADR005"]
    result = parse_source(blob.decode(), "big.adr")
    assert [d.code for d in result.diagnostics] == ["ADR005"]


def _wrap(body: str) -> str:
    return f'pack p "d"\nrule r "d" {{ kernel torch.x exact forward {{ torch.f($x) -> $y; }} => {{ {body} -> $y; }} }}\n'


def test_ten_thousand_parentheses():
    result = parse_source(_wrap("(" * 10_000 + "$x" + ")" * 10_000))
    assert result.file is not None and not result.diagnostics
    assert pretty.file(result.file)  # printable
    checker.check_files([result.file])


def test_ten_thousand_deep_expressions_are_diagnosed():
    for body in ("-(" * 10_000 + "$x" + ")" * 10_000,
                 "torch.f(" * 10_000 + "$x" + ")" * 10_000,
                 "a[" * 10_000 + "$x" + "]" * 10_000,
                 "$x" + " + ($x" * 10_000 + ")" * 10_000):
        result = parse_source(_wrap(body))
        assert any(d.code == "ADR006" for d in result.diagnostics), body[:20]
        assert result.file is None or checker.check_files([result.file]) is not None
    cond = 'pack p "d"\nrule r "d" { kernel torch.x when ' + "not " * 10_000 + "$x }"
    result = parse_source(cond)
    assert [d.code for d in result.diagnostics] == ["ADR006"]
    unbalanced = _wrap("(" * 10_000 + "$x")
    assert parse_source(unbalanced).diagnostics[0].code == "ADR001"


def test_shipped_packs_round_trip():
    for path in sorted((REPO / "rulepacks").glob("*.adr")):
        tree = parse_bytes(path.read_bytes(), str(path)).file
        text = pretty.file(tree)
        again = parse_source(text, "printed.adr").file
        assert again == tree and pretty.file(again) == text, path.name
