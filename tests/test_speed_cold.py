"""The cold run's shortcuts give the answers of the work they skip (issue 11)."""

from __future__ import annotations

import ast
import random

from dslc.analysis import defuse, guards
from dslc.analysis.guards import Answer


def _keys(v_mask: int, v_mask2: int, v_n: int) -> tuple:
    # `mask is None` at one version, `mask is not None` at another, `n > 2` / `n < 1`
    return (("mask is None", False, (("mask", v_mask),)),
            ("mask is None", True, (("mask", v_mask2),)),
            ("n > 2", False, (("n", v_n),)),
            ("n < 1", False, (("n", v_n),)))


def test_guard_groups_at_other_versions_ask_the_solver_once():
    """Two paths asking the same conditions at other versions of their
    names are one z3 question; versions stay apart (a rewritten `mask` is
    another symbol) and 0 (never written) stays itself."""
    guards._solve_group.cache_clear()
    guards.feasible_key.cache_clear()
    first = guards._solve(_keys(3, 7, 5))
    second = guards._solve(_keys(12, 40, 9))
    assert first is second is Answer.REFUTED  # `n > 2 and n < 1`
    # three groups (`mask` at one version, at the other, `n`), each asked once
    info = guards._solve_group.cache_info()
    assert (info.misses, info.hits) == (3, 3)
    # the two `mask` guards at different versions: both hold on some path
    assert guards._solve((("mask is None", False, (("mask", 3),)), ("mask is None", True, (("mask", 7),)))) \
        is Answer.PROVED
    # at one version they contradict, whatever the number
    assert guards._solve((("mask is None", False, (("mask", 4),)), ("mask is None", True, (("mask", 4),)))) \
        is Answer.REFUTED
    # version 0 and a written version are different symbols
    assert guards._renumbered([("x > 1", False, (("x", 0),)), ("x < 0", False, (("x", 5),))]) == \
        (("x < 0", False, (("x", 1),)), ("x > 1", False, (("x", 0),)))


def test_renumbered_guards_get_the_answers_of_the_originals():
    """Random guard sets over two names at random versions: z3's answer on
    the renumbered keys is its answer on the keys as they were."""
    rng = random.Random(3)
    texts = ["a > 1", "a < 0", "a == b", "b is None", "a + b > 4", "b < 2", "flag", "a is None"]
    for _ in range(150):
        keys = tuple(sorted({(rng.choice(texts), rng.random() < 0.5,
                              (("a", rng.choice([0, 2, 5, 9])), ("b", rng.choice([0, 1, 7]))))
                             for _ in range(rng.randrange(1, 5))}))
        plain = guards._check(guards.z3.And(*[guards._term(*k)[0] for k in keys]))
        renamed = guards._check(guards.z3.And(*[guards._term(*k)[0] for k in guards._renumbered(keys)]))
        assert plain == renamed, keys


def test_value_of_is_remembered_per_node_and_answers_as_before():
    tree = ast.parse("y = f(x + 1, (2, -3), 'a', float('-inf'), a.b[0])\n")
    call = tree.body[0].value
    for arg in call.args:
        first = defuse.value_of(arg)
        assert defuse.value_of(arg) is first
        text = ast.unparse(arg)
        assert first.text == text
    assert [defuse.value_of(a).kind for a in call.args] == ["expr", "const", "const", "const", "expr"]
    other = ast.parse("x + 2", mode="eval").body  # another node: its own answer
    assert defuse.value_of(other).text == "x + 2"
