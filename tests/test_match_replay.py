"""The matcher's memos (issue 11) change no result: runs replayed on paths
that share the prefix they read (`_Trace`), and fires shared by rules that
start with the same transitions (`_PathCtx.fired`).  Each pack is matched
with the memos and without them (no prefix shared, no transition shared):
the matches, every near-miss event in order, and the path sets over a
lowered match budget must be the same.  Speed: docs/performance.md."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from dslc.match import matcher
from dslc.rewrite import nearmiss
from rewrite_support import load_packs
from test_match_budget import PACKS, W, _dense


class _Log(nearmiss.Recorder):
    def __init__(self):
        super().__init__()
        self.log: list = []

    def event(self, cr, scope, anchor, matched, k, sub, fail, *, node=None, stage="forward"):
        self.log.append((cr.name, nearmiss._scope_key(scope), anchor and nearmiss._node_id(anchor),
                         tuple(nearmiss._node_id(n) for n in matched), k, sub,
                         None if fail is None else fail.reason,  # (a Fail is falsy)
                         node and nearmiss._node_id(node), stage))
        super().event(cr, scope, anchor, matched, k, sub, fail, node=node, stage=stage)


def _without_memos(monkeypatch):
    fresh = itertools.count(1)
    monkeypatch.setattr(matcher._Prefixes, "ids", lambda self, nodes: (0, [next(fresh) for _ in nodes]))
    table = matcher._rules
    monkeypatch.setattr(matcher, "_rules", lambda compiled: dataclasses.replace(table(compiled), shared=False))


def _run(compiled, facts, budget=None):
    rec = _Log()
    over: list = []
    if budget is not None:
        old, matcher.MAX_MATCH_FIRES = matcher.MAX_MATCH_FIRES, budget
    try:
        found = matcher.match_file(compiled, facts, recorder=rec, over=over)
    finally:
        if budget is not None:
            matcher.MAX_MATCH_FIRES = old
    near = nearmiss.near_misses(compiled, facts, found, file=facts.path, recorder=rec)
    return repr(found), rec.log, [(s.paths_of, s.fires) for s in over], repr(near)


@pytest.fixture(scope="module")
def cases():
    from dslc.analysis import analyze_source
    from dslc.match.compiler import compile_rules

    src = _dense(4) + W.if_helpers(4).split("\n\n\nclass Small", 1)[0].split("from torch import nn\n", 1)[1]
    facts = analyze_source(src, "dense.py")
    assert max(len(c.paths) for c in facts.classes) >= 16
    return facts, [compile_rules(load_packs(p)[0].rules) for p in PACKS]


@pytest.mark.parametrize("budget", [None, 300, 3_000])
def test_the_memos_change_no_match_event_or_budget_trip(cases, monkeypatch, budget):
    facts, packs = cases
    assert any(matcher._rules(c).shared for c in packs)  # the sdpa pack shares its first transitions
    with_memos = [_run(c, facts, budget) for c in packs]
    _without_memos(monkeypatch)
    without = [_run(c, facts, budget) for c in packs]
    assert with_memos == without
    assert any(m[1] for m in with_memos), "the file has near-miss events to compare"
    if budget == 300:
        assert any(m[2] for m in with_memos), "the lowered budget trips"
