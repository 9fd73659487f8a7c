"""A small stand-in pipeline for the apply driver's tests.

The driver's own behaviour (file discovery, encodings, atomic writes, error
entries, exit codes, the report) must not depend on how well the analysis,
matcher and rewriter do on real models, so these tests swap the stages for
fakes with one obvious rule: `F.softmax(x, dim=-1)` becomes
`fast_softmax(x)`.  A line ending in `# keep` is reported skipped.
The end-to-end tests with the real stages are in test_apply_e2e.py.
"""

from __future__ import annotations

import ast
import re
import sys
import types
from dataclasses import dataclass, field

import pytest

from dslc.match import ir
from dslc.analysis.model import FileFacts, Node, Path, Problem, StmtRef

REQ = ir.Requirement(package="nosuchkernelpkg", version=">=1.0", install="pip install nosuchkernelpkg")
RULE_SOFTMAX = ir.Rule(pack="fake", name="softmax", description="softmax", kernels=("nosuchkernelpkg.softmax",),
                       contract=ir.Contract())
RULE_RELU = ir.Rule(pack="fake", name="relu", description="relu", kernels=("torch.relu",), contract=ir.Contract())
PACK = ir.Pack(name="fake", description="a fake pack", requires=(REQ,), rules=(RULE_SOFTMAX, RULE_RELU),
               path="fake.adr")

_CALL = re.compile(r"F\.softmax\((\w+), dim=-1\)")


@dataclass
class FakeCompiled:
    pack: ir.Pack
    done: object = None  # the loader's compiled rules (the fake compiles nothing)

    def anchor_names(self):
        return frozenset({"softmax", "relu"})


def fake_analyze_source(source, path, **kwargs):
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return FileFacts(path=path, module=None, classes=(), problems=(Problem("A100", exc.msg, exc.lineno or 0),))
    want = kwargs.get("want")
    if want is not None and not any(w in source for w in want):
        return FileFacts(path=path, module=None, classes=())
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("softmax", "relu"):
            nodes.append(Node(kind="call", stmt=StmtRef("f", "", lines=(node.lineno, node.end_lineno)),
                              type=f"torch.nn.functional.{node.func.attr}",
                              expr_span=(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)))
    nodes.sort(key=lambda n: n.stmt.lines)
    return FileFacts(path=path, module=None, classes=(), functions=(("f", (Path((), tuple(nodes)),)),))


CALLS: list = []


def fake_analyze_paths(paths, *, jobs=1, cache_dir=None, want=None, root=None, **kwargs):
    CALLS.append({"paths": list(paths), "jobs": jobs, "cache_dir": cache_dir, "want": want, **kwargs})
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            out.append(fake_analyze_source(fh.read(), p, want=want, **kwargs))
    return out


def fake_match_file(compiled, facts, over=None, recorder=None):
    rules = {r.name: r for r in compiled.pack.rules}
    out = []
    for _, paths in facts.functions:
        for path in paths:
            for node in path.nodes:
                name = node.type.rsplit(".", 1)[1]
                if name in rules:
                    out.append(ir.Match(rule=rules[name], file=facts.path, class_name="Model", function="forward",
                                        nodes=(node,), init_nodes={}, bindings={}))
    return out


@dataclass(frozen=True)
class Outcome:
    match: object
    status: str
    reason: object
    lines: tuple


@dataclass(frozen=True)
class RewriteResult:
    new_source: object
    outcomes: tuple


def fake_rewrite_source(source, facts, matches, *, path="<string>"):
    lines = source.splitlines(keepends=True)
    outcomes = []
    for m in matches:
        n = m.nodes[0].stmt.lines[0]
        line = lines[n - 1]
        if m.rule.name != "softmax" or not _CALL.search(line):
            outcomes.append(Outcome(m, "skipped", "not rewritable by the fake", (n,)))
        elif line.rstrip().endswith("# keep"):
            outcomes.append(Outcome(m, "skipped", "the value is used after the match", (n,)))
        else:
            lines[n - 1] = _CALL.sub(r"fast_softmax(\1)", line)
            outcomes.append(Outcome(m, "applied", None, (n,)))
    new = "".join(lines)
    return RewriteResult(None if new == source else new, tuple(outcomes))


@dataclass(frozen=True)
class LoadResult:
    packs: list
    diagnostics: list
    compiled: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)


def fake_load_rules(paths, select=()):
    if any(p.endswith("bad.adr") for p in paths):
        from dslc.lang.diagnostics import Diagnostic

        return LoadResult([], [Diagnostic("ADR001", "error", "broken pack", ir.Span("bad.adr", 1, 1, 1, 8))])
    if select:
        rules = tuple(r for r in PACK.rules if r.qualified_name in select)
        return LoadResult([ir.Pack(PACK.name, PACK.description, PACK.requires, rules, PACK.path)], [])
    return LoadResult([PACK], [])


@pytest.fixture
def fake_pipeline(monkeypatch):
    """Replace the stages (and the rule loader) by the fakes above."""
    from dslc.apply import driver as apply

    CALLS.clear()
    monkeypatch.setattr(apply, "compile_pack", FakeCompiled)
    monkeypatch.setattr(apply, "analyze_paths", fake_analyze_paths)
    monkeypatch.setattr(apply, "analyze_source", fake_analyze_source)
    monkeypatch.setattr(apply, "match_file", fake_match_file)
    monkeypatch.setattr(apply, "rewrite_source", fake_rewrite_source)
    loader = types.ModuleType("dslc.lang.loader")
    loader.load_rules = fake_load_rules
    monkeypatch.setitem(sys.modules, "dslc.lang.loader", loader)
    import dslc

    monkeypatch.setattr(dslc, "loader", loader, raising=False)
    return CALLS
