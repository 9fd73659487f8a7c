"""Path enumeration's shortcuts give the answers of the work they skip (issue 11)."""

from __future__ import annotations

import random

from dslc.analysis import guards
from dslc.analysis.guards import Answer
from dslc.analysis.model import Guard, Node, StmtRef
from dslc.analysis.pathstate import Alt, split_alts

_REF = StmtRef("forward", "M", ("body", 0), (1, 1), 0, ())


def _walked_version(alt: Alt, symbol: str) -> int:
    """`Alt.version` as a plain walk of the whole path (no shortcut)."""
    parts = symbol.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    for pos, node in reversed(list(enumerate(alt.nodes, 1))):
        if prefixes & node.writes:
            return pos
    return 0


def test_versions_of_names_no_node_wrote_are_0_and_the_rest_as_walked():
    rng = random.Random(5)
    names = ["x", "mask", "self.a", "self", "config.n", "h"]
    for _ in range(60):
        alts = [Alt()]
        for _ in range(rng.randrange(1, 25)):
            a = rng.choice(alts)
            if rng.random() < 0.2:
                yes, no = split_alts([a.copy()], rng.choice(["x", "mask is None"]), (1, 1))
                alts += yes + no
            writes = frozenset(rng.sample(names, rng.randrange(0, 2)))
            a.add_node(Node("stmt", _REF, writes=writes))
        for a in alts:
            for symbol in names + ["self.a.b", "config", "never"]:
                assert a.version(symbol) == _walked_version(a, symbol), (symbol, a.nodes)
    # a name written only on another copy is still 0 on this one
    a = Alt()
    b = a.copy()
    b.add_node(Node("stmt", _REF, writes=frozenset({"x"})))
    assert "x" in a.written and a.version("x") == 0 and b.version("x") == 1


def test_guard_questions_at_other_versions_are_solved_once():
    """Two paths asking the same comparisons at other versions of their names
    are one `_solve` (the propositional shortcut does not take comparisons)."""
    guards.feasible_key.cache_clear()
    guards._solve_renumbered.cache_clear()
    first = (("n > 2", False, (("n", 3),)), ("n < 1", False, (("n", 5),)), ("m == 1", False, ()))
    second = (("n > 2", False, (("n", 8),)), ("n < 1", False, (("n", 11),)), ("m == 1", False, ()))
    assert guards.feasible_key(first) is guards.feasible_key(second) is Answer.PROVED
    info = guards._solve_renumbered.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    same = (("n > 2", False, (("n", 4),)), ("n < 1", False, (("n", 4),)))
    assert guards.feasible_key(same) is Answer.REFUTED


def test_renumbered_questions_get_the_answers_of_the_originals():
    """Random guard sets over two names at random versions: `feasible_key`
    (renumbered, cached) answers as `_solve` on the keys as they were."""
    rng = random.Random(7)
    texts = ["a > 1", "a < 0", "a == b", "b is None", "a + b > 4", "b < 2", "flag", "a is None", "b in (1, 2)"]
    for _ in range(150):
        keys = tuple({(rng.choice(texts), rng.random() < 0.5,
                       (("a", rng.choice([0, 2, 5, 9])), ("b", rng.choice([0, 1, 7]))))
                      for _ in range(rng.randrange(1, 5))})
        assert guards.feasible_key(keys) is guards._solve(keys), keys


def test_split_keeps_only_feasible_forks():
    a = Alt()
    assert a.add_guard(Guard("n > 2"))
    yes, no = split_alts([a], "n < 1", (2, 2))
    assert yes == [] and len(no) == 1
    no[0].add_node(Node("stmt", _REF, writes=frozenset({"n"})))
    yes, no = split_alts(no, "n < 1", (3, 3))  # `n` written since: another symbol
    assert len(yes) == 1 and len(no) == 1
