"""`nodetext.unparse` writes what `ast.unparse` writes, and `node_text`
remembers it per node, never across nodes (issue 11: the analysis's
expression texts)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from dslc.analysis import nodetext
from dslc.analysis.nodetext import node_text, unparse

REPO = Path(__file__).resolve().parent.parent

TRICKY = [
    "a", "a.b.c", "1 .real", "True .x", "(1).real", "-1", "- -1", "-(-1)", "not a", "not not a", "~a", "+a",
    "-a ** 2", "(-a) ** 2", "a ** -b", "a ** b ** c", "(a ** b) ** c", "a - (b - c)", "a - b - c",
    "a / (b * c)", "a * b / c", "(a + b) * c", "a + b * c", "a | b & c ^ d", "(a | b) & c", "a << 1 >> 2",
    "a @ b", "a // b % c", "(a, b)", "()", "(a,)", "a, b", "[a, (b,)]", "[]", "x[()]", "x[a, b]", "x[a,]",
    "x[(a, b)]", "x[1:2]", "x[::2]", "x[:, None, ...]", "x[a:b, c]", "x[-1]", "f()", "f(a, *b, c=d, **e)",
    "f(**e)", "f(*a)", "(a or b)(c)", "(a if b else c).d", "(lambda: 1)()", "a if b else c",
    "(a if b else c) if d else e", "a if (b if c else d) else e", "a if b else (c if d else e)",
    "a and b or c", "a and (b or c)", "(a and b) and c", "a and (b and c)", "not (a and b)", "(not a) and b",
    "a < b < c", "(a < b) < c", "a < (b < c)", "a is not b", "a not in b", "(a == b) == c", "-(a < b)",
    "(a + b).c", "(a + b)[c]", "f(x)[0].y", "a * (b if c else d)", "*a", "f(*(a or b))", "f(*a or b)",
    "1e309", "-1e309", "1e309j", "float('nan')", "1.5", "1_000", "0x10", "1j", "'a\"b'", "b'x'", "u'x'",
    "'''x\ny'''", "'\\x00\\n'", "None", "...", "x[...]", "{a: b}", "{a}", "f'{a!r:>{w}}'", "[x for x in y]",
    "(x for x in y)", "f(x for x in y)", "lambda a, *b, **c: a", "(yield)", "await a", "(a := b)",
    "x[a:=1]", "f(a)(b)(c)", "a.b(c).d[e]", "-a.b", "-(a.b)", "(-a).b", "not a == b", "(not a) == b",
    "a + -b", "a - (-b)", "a ** (-b)", "(a, *b)", "[*a, *b]", "x[1:2, ::3]", "x[a][b]",
]


def _exprs(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, ast.expr)]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_expressions(text):
    for node in _exprs(ast.parse(text)):
        assert unparse(node) == ast.unparse(node)


def test_every_expression_of_dslcs_own_sources():
    count = 0
    for path in sorted([*REPO.joinpath("dslc").rglob("*.py"), *REPO.joinpath("analysis").rglob("*.py")]):
        for node in _exprs(ast.parse(path.read_text(encoding="utf-8"))):
            assert unparse(node) == ast.unparse(node), (path, ast.unparse(node))
            count += 1
    assert count > 50000


def _random_expr(rng: random.Random, depth: int) -> ast.expr:
    """A random tree (not necessarily one the parser makes: parentheses
    come only from the precedence rules)."""
    names = [ast.Name("a"), ast.Name("b")]
    leaves = names + [ast.Constant(1), ast.Constant(2.5), ast.Constant("s"), ast.Constant(None),
                      ast.Constant(True), ast.Constant(float("inf")), ast.Constant(...)]
    if depth == 0 or rng.random() < 0.2:
        leaf = rng.choice(leaves)
        return type(leaf)(**{f: getattr(leaf, f) for f in leaf._fields if hasattr(leaf, f)})

    def sub():
        return _random_expr(rng, depth - 1)

    kind = rng.randrange(14)
    if kind == 0:
        return ast.BinOp(sub(), rng.choice([ast.Add(), ast.Sub(), ast.Mult(), ast.Div(), ast.Pow(), ast.BitOr(),
                                            ast.BitXor(), ast.BitAnd(), ast.LShift(), ast.FloorDiv(),
                                            ast.MatMult(), ast.Mod()]), sub())
    if kind == 1:
        return ast.UnaryOp(rng.choice([ast.USub(), ast.UAdd(), ast.Not(), ast.Invert()]), sub())
    if kind == 2:
        ops = [rng.choice([ast.Eq(), ast.Lt(), ast.IsNot(), ast.NotIn(), ast.GtE()]) for _ in range(rng.randint(1, 2))]
        return ast.Compare(sub(), ops, [sub() for _ in ops])
    if kind == 3:
        return ast.BoolOp(rng.choice([ast.And(), ast.Or()]), [sub() for _ in range(rng.randint(2, 3))])
    if kind == 4:
        return ast.IfExp(sub(), sub(), sub())
    if kind == 5:
        return ast.Attribute(sub(), "x")
    if kind == 6:
        args = [sub() for _ in range(rng.randint(0, 2))] + ([ast.Starred(sub())] if rng.random() < 0.3 else [])
        kws = [ast.keyword(rng.choice(["k", None]), sub()) for _ in range(rng.randint(0, 2))]
        return ast.Call(sub(), args, kws)
    if kind == 7:
        index = rng.choice([sub(), ast.Tuple([sub() for _ in range(rng.randint(0, 2))]),
                            ast.Slice(rng.choice([None, sub()]), rng.choice([None, sub()]), rng.choice([None, sub()]))])
        return ast.Subscript(sub(), index)
    if kind == 8:
        return ast.Tuple([sub() for _ in range(rng.randint(0, 3))])
    if kind == 9:
        return ast.List([sub() for _ in range(rng.randint(0, 2))])
    if kind == 10:
        return ast.Starred(sub())
    if kind == 11:
        return ast.Lambda(ast.arguments([], [], None, [], [], None, []), sub())  # not spelled by the fast path
    if kind == 12:
        return ast.NamedExpr(ast.Name("n"), sub())
    return ast.Await(sub())


def test_random_trees():
    rng = random.Random(11)
    for _ in range(5000):
        node = _random_expr(rng, 4)
        assert unparse(node) == ast.unparse(node), ast.dump(node)


@pytest.mark.slow
def test_every_expression_of_the_benchmark_corpus(transformers_src):
    from dslc import corpus

    for path in corpus.benchmark_files(transformers_src):
        for node in _exprs(ast.parse(Path(path).read_text(encoding="utf-8"))):
            assert unparse(node) == ast.unparse(node), (path, ast.unparse(node))


def test_node_text_is_per_node():
    tree = ast.parse("f(a + b)\nf(a + b)\n")
    first, second = (stmt.value.args[0] for stmt in tree.body)
    assert node_text(first) == node_text(second) == "a + b"
    assert nodetext._TEXTS._known[id(first)][0] is first  # kept with its text: the id cannot be reused meanwhile
    other = ast.parse("c * d", mode="eval").body
    nodetext._TEXTS._known[id(other)] = (first, "stale")  # an id whose node is not this one
    assert node_text(other) == "c * d"
