"""The per-file work that grew with the packs on the generated worst cases
(issue 11, benchmarks/worst_cases.py): asked again per guard, per rule or
per pack, it is now done once.  Each test counts the repeated work on a
small model of its own and checks the answers against the plain algorithm.
"""

from __future__ import annotations

import ast
import random

from dslc.analysis import guards
from dslc.rewrite import nearmiss, unreached
from dslc.rewrite.astutil import dotted_parts


def _chain_keys(n: int) -> list[tuple]:
    # one path through n independent `if flags[i]:` (every guard shares the
    # symbol `flags`, so each new guard is asked with all the earlier ones)
    return [(f"flags[{i}]", i % 2 == 1, ()) for i in range(n)]


def test_a_growing_chain_of_unrelated_guards_enumerates_each_group_once(monkeypatch):
    calls = {"eval": 0, "atoms": 0}
    real_eval, real_atoms = guards._eval, guards._atoms

    def counting_eval(prop, env):
        calls["eval"] += 1
        return real_eval(prop, env)

    def counting_atoms(prop, out):
        calls["atoms"] += 1
        return real_atoms(prop, out)

    monkeypatch.setattr(guards, "_eval", counting_eval)
    monkeypatch.setattr(guards, "_atoms", counting_atoms)
    guards.feasible_key.cache_clear()
    for cache in ("_enumerate_cached", "_atoms_of"):
        if hasattr(guards, cache):
            getattr(guards, cache).cache_clear()
    keys = _chain_keys(40)
    for k in range(1, len(keys) + 1):  # what `Alt.add_guard` asks along the path
        assert guards.feasible_key(tuple(keys[:k])) is guards.Answer.PROVED
    # 40 one-atom groups: a few evaluations each, not one per group per question (820 groups asked)
    assert calls["eval"] <= 3 * len(keys), calls
    assert calls["atoms"] <= 2 * len(keys), calls
    assert guards.feasible_key(tuple(keys) + (("flags[3]", False, ()),)) is guards.Answer.REFUTED


def _union_find_groups(props):
    """The grouping by a plain union-find (the reference)."""
    parent = list(range(len(props)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    owner: dict = {}
    for i, p in enumerate(props):
        atoms: dict = {}
        guards._atoms(p, atoms)
        for a in atoms:
            if a in owner:
                parent[find(i)] = find(owner[a])
            else:
                owner[a] = i
    groups: dict = {}
    for i, p in enumerate(props):
        atoms: dict = {}
        guards._atoms(p, atoms)
        g = groups.setdefault(find(i), (set(), []))
        g[0].update(atoms)
        g[1].append(repr(p))
    return sorted((tuple(sorted(a)), tuple(sorted(m))) for a, m in groups.values())


def test_guard_groups_are_those_of_a_union_find():
    rng = random.Random(11)
    atoms = [("atom", f"b:x{i}") for i in range(7)]

    def prop(depth=0):
        r = rng.random()
        if depth > 2 or r < 0.5:
            return rng.choice(atoms)
        if r < 0.65:
            return ("not", prop(depth + 1))
        if r < 0.7:
            return ("const", rng.random() < 0.5)
        return (rng.choice(["and", "or"]), tuple(prop(depth + 1) for _ in range(rng.randint(1, 3))))

    for _ in range(2000):
        props = [prop() for _ in range(rng.randint(0, 10))]
        got = sorted((tuple(sorted(a)), tuple(sorted(map(repr, m)))) for a, m in guards._components(props))
        assert got == _union_find_groups(props), props


MODEL = '''import torch
import torch.nn.functional as F
from torch import nn as tnn


class A(tnn.Module):
    def forward(self, q, k, make):
        s = torch.matmul(q, k.transpose(-1, -2))
        p = F.softmax(s, dim=-1).transpose(1, 2)
        w = make(q)(k)
        return torch.matmul(p, k) + F.softmax(w, -1)


def helper(x):
    return torch.nn.functional.softmax(x.transpose(0, 1), dim=0)
'''

IMPORTS = {"torch": "torch", "F": "torch.nn.functional", "tnn": "torch.nn"}


def _walk_calls(tree, qualname, imports):
    """The plain answer: one walk of the tree per callee."""
    method = qualname.startswith("torch.Tensor.") and qualname.rsplit(".", 1)[-1]
    out = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        if method and isinstance(n.func, ast.Attribute) and n.func.attr == method:
            out.append((n.lineno, n.col_offset, True, ast.unparse(n)))
            continue
        parts = dotted_parts(n.func)
        if parts and parts[0] in imports and ".".join([imports[parts[0]], *parts[1:]]) == qualname:
            out.append((n.lineno, n.col_offset, False, ast.unparse(n)))
    return sorted(out, key=lambda c: c[:2])


def test_source_calls_walk_the_file_once_for_many_callees(monkeypatch):
    tree = ast.parse(MODEL)
    walks = []
    real_walk = ast.walk

    def counting_walk(node):
        if node is tree:
            walks.append(node)
        return real_walk(node)

    names = ["torch.matmul", "torch.Tensor.transpose", "torch.nn.functional.softmax", "torch.Tensor.matmul",
             "torch.nn.Module", "torch.einsum"] + [f"torch.fake{i}" for i in range(30)]
    calls = unreached.SourceCalls(tree)
    monkeypatch.setattr(unreached.ast, "walk", counting_walk)
    got = {q: [(c.line, c.call.col_offset, c.method, ast.unparse(c.call)) for c in calls.calls(q, IMPORTS)]
           for q in names}
    monkeypatch.undo()
    # one walk for the calls, one for the parent map (the functions around each call)
    assert len(walks) <= 2, len(walks)
    for q in names:
        assert got[q] == _walk_calls(tree, q, IMPORTS), q
    assert len(got["torch.matmul"]) == 2 and len(got["torch.Tensor.transpose"]) == 3
    assert [c.function for c in calls.calls("torch.nn.functional.softmax", IMPORTS)] == ["forward", "forward",
                                                                                           "helper"]
    # other imports (another file with the same text), other answers
    assert calls.calls("torch.matmul", {"torch": "notorch"}) == []


def test_the_packs_of_one_file_share_its_parsed_source(monkeypatch):
    parses = []
    real_parse = ast.parse

    def counting_parse(text, *a, **k):
        if text == MODEL:
            parses.append(1)
        return real_parse(text, *a, **k)

    monkeypatch.setattr(nearmiss.ast, "parse", counting_parse)
    text = "".join(MODEL)  # a text object of its own
    first = nearmiss.SourceNames.of(text)
    for _ in range(3):  # one per pack of the run
        names = nearmiss.SourceNames.of(text)
        assert names is first
        assert "softmax" in names.around(9)
        names.calls.calls("torch.matmul", IMPORTS)
    assert len(parses) == 1
    other = nearmiss.SourceNames.of("x = 1\n")
    assert other is not first and other.around(1) == frozenset()


def test_one_walk_indexes_parents_calls_definitions_and_their_names():
    tree = ast.parse(MODEL)
    index = unreached.TreeIndex(tree)
    walked = list(ast.walk(tree))
    assert index.calls == [n for n in walked if isinstance(n, ast.Call)]
    assert index.defs == [n for n in walked if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    assert index.parent == {id(c): n for n in walked for c in ast.iter_child_nodes(n)}
    for d in index.defs:  # nested definitions included, `self.x` left out
        assert index.names[id(d)] == {
            n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(d)
            if isinstance(n, ast.Name) or isinstance(n, ast.Attribute)
            and not (isinstance(n.value, ast.Name) and n.value.id == "self")}
    assert unreached.TreeIndex(None).calls == []


def test_the_near_miss_report_reads_the_tree_the_analysis_kept(monkeypatch):
    from dslc.analysis import api

    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(nearmiss.ast, "parse", lambda text, *a, **k: parses.append(1) or real_parse(text, *a, **k))
    text = "".join(MODEL)
    with api.keep_trees():
        api.analyze_source(text, "m.py")
        parses.clear()  # the analysis' own parse (`ast` is one module)
        names = nearmiss.SourceNames.of(text)
        assert "softmax" in names.around(9) and names._tree is api.kept_tree(text)
        assert api.parsed(text)  # still there for the rewriter
    assert parses == []
