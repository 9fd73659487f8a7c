"""Guards as z3 terms: answers, and agreement with Python's evaluation."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from dslc.analysis import guards
from dslc.analysis.guards import Answer, consistent, equivalent, feasible_key
from dslc.analysis.model import Guard


def test_answers():
    assert consistent([Guard("self.use_bn"), Guard("self.use_bn", True)]) is Answer.REFUTED
    assert consistent([Guard("a and not a")]) is Answer.REFUTED
    assert consistent([Guard("config.x == 3"), Guard("config.x == 4")]) is Answer.REFUTED
    assert consistent([Guard("config.x == 3"), Guard("config.x != 4")]) is Answer.PROVED
    assert consistent([Guard("config.act == 'gelu'"), Guard("config.act in ('relu', 'tanh')")]) is Answer.REFUTED
    assert consistent([Guard("x is None"), Guard("x is not None")]) is Answer.REFUTED
    assert consistent([Guard("n > 2"), Guard("n < 1")]) is Answer.REFUTED
    assert consistent([Guard("isinstance(a, str)"), Guard("not isinstance(a, str)")]) is Answer.REFUTED
    assert consistent([Guard("f(x) > 1"), Guard("g(x)")]) is Answer.PROVED  # unmodelled: fresh symbols
    assert consistent([]) is Answer.PROVED


def test_equivalence():
    assert equivalent("not (a and b)", "not a or not b") is Answer.PROVED
    assert equivalent("a", "b") is Answer.REFUTED
    assert equivalent([Guard("a"), Guard("b")], "b and a") is Answer.PROVED
    assert equivalent("config.x == 3", "3 == config.x") is Answer.PROVED
    assert equivalent("x > 1", "x >= 2") is Answer.PROVED  # Int
    assert equivalent("x > 1.5", "x >= 2") is Answer.REFUTED  # Real once a float appears


def test_versions_separate_symbols():
    # the same text read after a write is another symbol
    keys = (("x is None", False, ()), ("x is None", True, (("x", 3),)))
    assert feasible_key(keys) is Answer.PROVED
    keys = (("x is None", False, ()), ("x is None", True, ()))
    assert feasible_key(keys) is Answer.REFUTED


def test_timeout_is_unknown(monkeypatch):
    monkeypatch.setattr(guards, "TIMEOUT_MS", 1)
    guards._SOLVER.clear()
    # a hard nonlinear query; with a 1 ms budget z3 gives up (or solves it fast)
    hard = [Guard("a * a * a + b * b * b == c * c * c"), Guard("a > 100"), Guard("b > 100"), Guard("c > 100")]
    assert consistent(hard) in (Answer.UNKNOWN, Answer.PROVED, Answer.REFUTED)
    guards._SOLVER.clear()


ATOMS = st.sampled_from(["self.a", "self.b", "config.x == 1", "config.x == 2", "config.x > 0",
                         "y is None", "y is not None", "config.name == 'gelu'"])


def formulas():
    return st.recursive(
        ATOMS,
        lambda inner: st.one_of(
            inner.map(lambda f: f"not ({f})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) and ({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) or ({t[1]})"),
        ),
        max_leaves=6,
    )


@given(formulas(), st.booleans(), st.booleans(), st.integers(-1, 3), st.booleans(),
       st.sampled_from(["gelu", "relu"]))
def test_z3_reading_agrees_with_python(formula, a, b, x, y_none, name):
    env = {"self": SimpleNamespace(a=a, b=b), "config": SimpleNamespace(x=x, name=name),
           "y": None if y_none else object()}
    truth = bool(eval(formula, {}, env))
    pins = [Guard("self.a", not a), Guard("self.b", not b), Guard(f"config.x == {x}"),
            Guard("y is None", not y_none), Guard(f"config.name == {name!r}")]
    answer = consistent([Guard(formula)] + pins)
    assert answer is (Answer.PROVED if truth else Answer.REFUTED)
    # the propositional fast path and z3 agree where the former applies
    keys = tuple((g.text, g.negated, ()) for g in [Guard(formula)] + pins)
    assert feasible_key(keys) is answer


def test_odd_terms_never_raise():
    odd = [Guard("x == 1j"), Guard("x == b'a'"), Guard("x == 10**400"), Guard("x < 1e400"),
           Guard("f'{a}' == 'b'"), Guard("a[0] == -3.5"), Guard("((((a))))"), Guard("not ("), Guard("lambda: 1")]
    for g in odd:
        assert consistent([g]) in (Answer.PROVED, Answer.UNKNOWN, Answer.REFUTED)
    assert consistent(odd) in (Answer.PROVED, Answer.UNKNOWN, Answer.REFUTED)
    assert feasible_key(tuple((g.text, g.negated, ()) for g in odd)) in tuple(Answer)
