"""Guards as z3 terms: feasibility and equivalence of path conditions.

Translation (`to_z3`) of a guard's Python expression, recursively:

1. `not e`, `a and b`, `a or b` become Not / And / Or; `a if c else b` in a
   boolean context becomes If.
2. A comparison chain `x < y <= z` becomes the conjunction of its links.
   `e is None` / `e is not None` is a Bool atom `<e> is None` (negated for
   `is not`).  `==`, `!=`, `<`, ... between an operand and a number are
   arithmetic (Int for ints and bools, Real when a float is involved);
   against a string they compare z3 strings; `in (c1, c2, ...)` with literal
   members is the disjunction of equalities.
3. A dotted name (`self.use_bn`, `config.x`) is a symbol named after its text
   (and its *version*, see below) with the sort the context needs: Bool when
   used as a condition, Int/Real/String when compared.
4. Anything else (`isinstance(x, str)`, `len(x) > 0`'s `len(x)`) is a fresh
   symbol keyed by its source text, so one text is one symbol: the answer may
   become UNKNOWN-ish ("satisfiable") but is never wrong.

Versions: a guard over a local variable that the path reassigns between two
`if`s must not be identified with the earlier one (`if x is None: x = f()`,
`if x is None:` again).  Callers pass `versions` (name -> how often the path
wrote it so far); a symbol `x` then becomes `x@2`.  `self.<attr>` and
`config.<attr>` are versioned the same way (by the written name `self.attr`).

Answers are PROVED / REFUTED / UNKNOWN; the solver runs with a timeout and a
timeout is UNKNOWN, which callers treat as "may differ" / "may be feasible".
"""

from __future__ import annotations

import ast
import enum
from functools import lru_cache
from typing import Iterable, Mapping

import z3

from .model import Guard
from .nodetext import node_text, unparse

TIMEOUT_MS = 200


class Answer(enum.Enum):
    PROVED = "proved"
    REFUTED = "refuted"
    UNKNOWN = "unknown"


def _dotted(expr: ast.expr) -> str | None:
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if isinstance(expr, ast.Name):
        parts.append(expr.id)
        return ".".join(reversed(parts))
    return None


def _names_in(expr: ast.expr) -> set[str]:
    """Maximal dotted names read by `expr` (`config.x`, `self.use_bn`, `h`):
    two guards share a symbol only when they read the same such name."""
    out = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Name, ast.Attribute)):
            text = _dotted(node)
            if text is not None:
                out.add(text)
                continue
        stack.extend(ast.iter_child_nodes(node))
    return out


class _Translator:
    def __init__(self, versions: Mapping[str, int] | None):
        self.versions = versions or {}
        self.atoms: set[str] = set()  # names of the z3 constants made (independence of guards)

    def const(self, sort: str, name: str):
        """The z3 constant `name` of `sort` (bool, int, real, str), recorded in `atoms`."""
        self.atoms.add(name)
        return {"bool": z3.Bool, "int": z3.Int, "real": z3.Real, "str": z3.String}[sort](name)

    def key(self, expr: ast.expr) -> str:
        text = node_text(expr)
        stamps = []
        for name in sorted(_names_in(expr)):
            version = self.versions.get(name, 0)
            if version:
                stamps.append(f"{name}@{version}")
        return text + ("|" + ",".join(stamps) if stamps else "")

    # -- sorts -------------------------------------------------------------

    def boolean(self, expr: ast.expr) -> z3.BoolRef:
        if isinstance(expr, ast.Constant):
            return z3.BoolVal(bool(expr.value))
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
            return z3.Not(self.boolean(expr.operand))
        if isinstance(expr, ast.BoolOp):
            items = [self.boolean(v) for v in expr.values]
            return z3.And(*items) if isinstance(expr.op, ast.And) else z3.Or(*items)
        if isinstance(expr, ast.IfExp):
            return z3.If(self.boolean(expr.test), self.boolean(expr.body), self.boolean(expr.orelse))
        if isinstance(expr, ast.Compare):
            links = []
            left = expr.left
            for op, right in zip(expr.ops, expr.comparators):
                links.append(self.compare(left, op, right))
                left = right
            return z3.And(*links) if len(links) > 1 else links[0]
        return self.const("bool", "b:" + self.key(expr))

    def compare(self, left: ast.expr, op: ast.cmpop, right: ast.expr) -> z3.BoolRef:
        if isinstance(op, (ast.Is, ast.IsNot)):
            if isinstance(right, ast.Constant) and right.value is None:
                atom = self.const("bool", "none:" + self.key(left))
            elif isinstance(left, ast.Constant) and left.value is None:
                atom = self.const("bool", "none:" + self.key(right))
            else:
                atom = self.const("bool", "is:" + self.key(left) + " is " + self.key(right))
            return atom if isinstance(op, ast.Is) else z3.Not(atom)
        if isinstance(op, (ast.In, ast.NotIn)):
            if isinstance(right, (ast.Tuple, ast.List, ast.Set)) and right.elts and all(
                isinstance(e, ast.Constant) for e in right.elts
            ):
                eqs = [self.compare(left, ast.Eq(), e) for e in right.elts]
                disj = z3.Or(*eqs)
                return disj if isinstance(op, ast.In) else z3.Not(disj)
            atom = self.const("bool", "in:" + self.key(left) + " in " + self.key(right))
            return atom if isinstance(op, ast.In) else z3.Not(atom)
        sort = self._sort(left, right)
        if sort is None:
            text = unparse(ast.Compare(left=left, ops=[op], comparators=[right]))
            return self.const("bool", "cmp:" + text + "|" + self.key(left) + "|" + self.key(right))
        a, b = self.term(left, sort), self.term(right, sort)
        if isinstance(op, ast.Eq):
            return a == b
        if isinstance(op, ast.NotEq):
            return a != b
        if sort == "str":
            return self.const("bool", "cmp:" + self.key(left) + type(op).__name__ + self.key(right))
        return {ast.Lt: a < b, ast.LtE: a <= b, ast.Gt: a > b, ast.GtE: a >= b}[type(op)]

    @staticmethod
    def _literal(expr: ast.expr):
        if isinstance(expr, ast.Constant):
            return expr.value
        if (isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub)
                and isinstance(expr.operand, ast.Constant)
                and isinstance(expr.operand.value, (int, float)) and not isinstance(expr.operand.value, bool)):
            return -expr.operand.value
        return _NO

    def _sort(self, left: ast.expr, right: ast.expr) -> str | None:
        sorts = set()
        for side in (left, right):
            value = self._literal(side)
            if value is _NO:
                continue
            if isinstance(value, str):
                sorts.add("str")
            elif isinstance(value, float):
                sorts.add("real")
            elif isinstance(value, (int, bool)):
                sorts.add("int")
            else:
                return None
        if not sorts or len(sorts) > 1 and "str" in sorts:
            return None
        return "real" if "real" in sorts else sorts.pop()

    def term(self, expr: ast.expr, sort: str):
        value = self._literal(expr)
        if value is not _NO:
            if sort == "str":
                return z3.StringVal(value)
            if sort == "real":
                return z3.RealVal(value)
            return z3.IntVal(int(value))
        return self.const(sort, f"{sort}:" + self.key(expr))


_NO = object()


@lru_cache(maxsize=8192)
def _parse(text: str) -> ast.expr | None:
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None


def to_z3(guard: Guard | str, versions: Mapping[str, int] | None = None) -> z3.BoolRef:
    """The z3 term of one guard (its polarity applied)."""
    text = guard.text if isinstance(guard, Guard) else guard
    negated = guard.negated if isinstance(guard, Guard) else False
    return _to_z3(text, negated, tuple(sorted((versions or {}).items())))


def _to_z3(text: str, negated: bool, versions: tuple) -> z3.BoolRef:
    return _term(text, negated, versions)[0]


@lru_cache(maxsize=16384)
def _term(text: str, negated: bool, versions: tuple) -> tuple[z3.BoolRef, frozenset[str]]:
    """The z3 term of a guard, and the names of the z3 constants in it."""
    expr = _parse(text)
    if expr is None:
        term, atoms = z3.Bool("raw:" + text), frozenset({"raw:" + text})
    else:
        translator = _Translator(dict(versions))
        term, atoms = translator.boolean(expr), frozenset(translator.atoms)
    return (z3.Not(term) if negated else term), atoms


def symbols(guard: Guard | str) -> frozenset[str]:
    """The names a guard reads (for the cheap independence pre-check)."""
    return _symbols(guard.text if isinstance(guard, Guard) else guard)


@lru_cache(maxsize=8192)
def _symbols(text: str) -> frozenset[str]:
    expr = _parse(text)
    return frozenset() if expr is None else frozenset(_names_in(expr))


_SOLVER: list = []
# guards sent to z3 by `consistent` in this process (the extractor's budget reads it)
SOLVER_TERMS = [0]


def _check(*formulas: z3.BoolRef) -> z3.CheckSatResult:
    """Satisfiability of the conjunction of `formulas` on one reused solver
    (push/pop is ~2x cheaper than a fresh solver per query), with the
    timeout.  Each is asserted on its own: the same answer as asserting
    their `z3.And`, without the sort checks `And` makes over its operands
    (a fifth of a query of 28 comparisons)."""
    if not _SOLVER:
        solver = z3.Solver()
        solver.set("timeout", TIMEOUT_MS)
        _SOLVER.append(solver)
    solver = _SOLVER[0]
    solver.push()
    try:
        solver.add(*formulas)
        return solver.check()
    finally:
        solver.pop()


def _conj(guards: Iterable, versions_list=None) -> z3.BoolRef:
    guards = list(guards)
    if versions_list is None:
        versions_list = [None] * len(guards)
    terms = [to_z3(g, v) for g, v in zip(guards, versions_list)]
    return z3.And(*terms) if terms else z3.BoolVal(True)


def _safe(fn):
    """A query that z3 cannot build or run (an odd term, a solver error) is
    UNKNOWN: never an exception out of the analysis, never a wrong answer."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (z3.Z3Exception, TypeError, ValueError, AttributeError, RecursionError, OverflowError):
            return Answer.UNKNOWN

    return wrapper


@_safe
def consistent(guards: Iterable[Guard | str], versions: list | None = None) -> Answer:
    """PROVED when the conjunction of `guards` is satisfiable, REFUTED when not.

    `versions` optionally gives, per guard, the path's write counts at that
    guard (see the module docstring).  Decided by `feasible_key` (cached,
    propositional sets without z3, independent groups one by one).
    """
    guards = list(guards)
    if versions is None:
        versions = [None] * len(guards)
    keys = []
    for g, v in zip(guards, versions):
        text, negated = (g.text, g.negated) if isinstance(g, Guard) else (g, False)
        keys.append((text, negated, tuple(sorted((v or {}).items()))))
    return feasible_key(tuple(keys))


def _solve(keys: tuple) -> Answer:
    """The conjunction of guard keys, decided by z3 one independent group at
    a time: guards that share no z3 constant (transitively) constrain
    different variables, so the conjunction is satisfiable iff every group
    is.  Each group's answer is cached (the paths through one function
    repeat most of their guards)."""
    terms = {k: _term(*k) for k in keys}
    parent: dict = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for k, (_, atoms) in terms.items():
        parent.setdefault(("k", k), ("k", k))
        for atom in atoms:
            parent.setdefault(("a", atom), ("a", atom))
            ra, rb = find(("k", k)), find(("a", atom))
            if ra != rb:
                parent[ra] = rb
    groups: dict = {}
    for k in terms:
        groups.setdefault(find(("k", k)), []).append(k)
    answer = Answer.PROVED
    for members in groups.values():
        got = _solve_group(_renumbered(members))
        if got is Answer.REFUTED:
            return got
        if got is Answer.UNKNOWN:
            answer = got
    return answer


_solve_safely = _safe(_solve)


def _renumbered(keys) -> tuple:
    """Guard keys with each name's versions renumbered 1, 2, ... in their
    order (0, never written, stays 0), sorted.  The z3 constants of a guard
    are named by its text and the versions of its names (`_Translator.key`),
    so this renames constants one-to-one: the same satisfiability.  The
    paths of one function ask about the same conditions at other versions
    (`if mask is None` after another statement): one solver call answers
    them all (on the benchmark corpus about 3 in 10 of the group queries
    stay distinct)."""
    seen: dict[str, set[int]] = {}
    for _, _, versions in keys:
        for name, v in versions:
            if v:
                seen.setdefault(name, set()).add(v)
    order = {name: {v: i for i, v in enumerate(sorted(vs), 1)} for name, vs in seen.items()}
    return tuple(sorted((text, negated, tuple((name, order[name][v] if v else 0) for name, v in versions))
                        for text, negated, versions in keys))


@lru_cache(maxsize=16384)
def _solve_group(keys: tuple) -> Answer:
    result = _check(*[_term(*k)[0] for k in keys])
    if result == z3.sat:
        return Answer.PROVED
    if result == z3.unsat:
        return Answer.REFUTED
    return Answer.UNKNOWN


def _as_term(x) -> z3.BoolRef:
    if isinstance(x, (Guard, str)):
        return to_z3(x)
    return _conj(x)


@_safe
def equivalent(a, b) -> Answer:
    """Are two conditions equivalent?  Each is a Guard, a text, or a sequence
    of guards (their conjunction).  UNKNOWN on timeout: never "equal"."""
    result = _check(z3.Xor(_as_term(a), _as_term(b)))
    if result == z3.unsat:
        return Answer.PROVED
    if result == z3.sat:
        return Answer.REFUTED
    return Answer.UNKNOWN


@_safe
def merge_equivalent(a: Iterable[Guard], b: Iterable[Guard], common: Iterable[Guard]) -> Answer:
    """Is `(and a) or (and b)` equivalent to `and common`? (path merging)"""
    either = z3.Or(_conj(a), _conj(b))
    result = _check(z3.Xor(either, _conj(common)))
    if result == z3.unsat:
        return Answer.PROVED
    if result == z3.sat:
        return Answer.REFUTED
    return Answer.UNKNOWN


@lru_cache(maxsize=65536)
def feasible_key(keys: tuple) -> Answer:
    """Cached feasibility of guards given as (text, negated, versions-tuple).

    Purely propositional guard sets (names, `is None`, not/and/or, opaque
    calls) over at most 12 atoms are decided by enumerating assignments,
    which is much cheaper than a solver call; the rest goes to z3
    (`_solve`), and counts in `SOLVER_TERMS`.
    """
    props = []
    for text, negated, versions in keys:
        prop = _prop_of(text, versions)
        if prop is None:
            props = None
            break
        props.append(("not", prop) if negated else prop)
    if props is not None:
        # Guards that share no atom are independent: the conjunction is
        # satisfiable iff each atom-connected group is.  Deciding the groups
        # one by one keeps the enumeration small when a path has many
        # unrelated guards (`flags[0]`, `flags[1]`, ...): exactly the same
        # answer as enumerating them all at once.
        groups = _components(props)
        if all(len(atoms) <= 12 for atoms, _ in groups):
            for atoms, members in groups:
                if not _enumerate(atoms, members):
                    return Answer.REFUTED
            return Answer.PROVED
    SOLVER_TERMS[0] += len(keys)
    return _solve_renumbered(_renumbered(keys))


@lru_cache(maxsize=16384)
def _solve_renumbered(keys: tuple) -> Answer:
    """`_solve` of guard keys renumbered by `_renumbered`: the same answer
    as for the keys as they were (a one-to-one renaming of the z3 constants
    keeps the independent groups and, renumbered again, each group's
    question).  The paths of a function ask the same guards at other
    versions: their z3 terms and their grouping are built once."""
    return _solve_safely(keys)


@lru_cache(maxsize=16384)
def _prop_of(text: str, versions: tuple):
    """`_prop` of a guard's text under its versions (cached: paths repeat guards)."""
    expr = _parse(text)
    return None if expr is None else _prop(expr, dict(versions))


def _components(props: list) -> list[tuple[list, list]]:
    """Group propositions that (transitively) share an atom: [(atoms, props)].

    One pass: each atom points at its group; a proposition that reaches
    several groups merges them into the first.  The groups are those of a
    union-find over props and atoms; their order and the order inside a
    merged group may differ from it, which `feasible_key` does not read
    (every group must be satisfiable)."""
    where: dict = {}  # atom -> its group [atoms (dict: an ordered set), members]
    groups: list = []
    for prop in props:
        atoms = _atoms_of(prop)
        found: list = []
        for atom in atoms:
            g = where.get(atom)
            if g is not None and all(g is not f for f in found):
                found.append(g)
        if not found:
            g = [dict.fromkeys(atoms, True), [prop]]
            groups.append(g)
        else:
            g = found[0]
            for other in found[1:]:
                g[0].update(other[0])
                g[1].extend(other[1])
                for atom in other[0]:
                    where[atom] = g
                other[0] = None
            g[0].update(dict.fromkeys(atoms, True))
            g[1].append(prop)
        for atom in atoms:
            where[atom] = g
    return [(list(g[0]), g[1]) for g in groups if g[0] is not None]


@lru_cache(maxsize=65536)
def _atoms_of(prop) -> tuple:
    """The atoms of `prop`, in `_atoms`' order (cached: the guards of a path
    come back in the question of every guard added after them)."""
    atoms: dict = {}
    _atoms(prop, atoms)
    return tuple(atoms)


def _enumerate(names: list, props: list) -> bool:
    """Is some assignment of `names` making every prop true? (at most 2^12 tries)"""
    return _enumerate_cached(tuple(names), tuple(props))


@lru_cache(maxsize=65536)
def _enumerate_cached(names: tuple, props: tuple) -> bool:
    # a path's unrelated groups (`flags[3]`, `not flags[4]`, ...) are asked
    # again with every guard added after them: one enumeration each
    for bits in range(1 << len(names)):
        env = {name: bool(bits >> i & 1) for i, name in enumerate(names)}
        if all(_eval(p, env) for p in props):
            return True
    return False


def _prop(expr: ast.expr, versions: dict):
    """A propositional reading of `expr`, or None when it compares values."""
    tr = _Translator(versions)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        inner = _prop(expr.operand, versions)
        return None if inner is None else ("not", inner)
    if isinstance(expr, ast.BoolOp):
        items = [_prop(v, versions) for v in expr.values]
        if any(i is None for i in items):
            return None
        return ("and" if isinstance(expr.op, ast.And) else "or", tuple(items))
    if isinstance(expr, ast.Constant):
        return ("const", bool(expr.value))
    if isinstance(expr, ast.Compare):
        if len(expr.ops) == 1 and isinstance(expr.ops[0], (ast.Is, ast.IsNot)):
            left, right = expr.left, expr.comparators[0]
            if isinstance(right, ast.Constant) and right.value is None:
                atom = ("atom", "none:" + tr.key(left))
            elif isinstance(left, ast.Constant) and left.value is None:
                atom = ("atom", "none:" + tr.key(right))
            else:
                return None
            return atom if isinstance(expr.ops[0], ast.Is) else ("not", atom)
        return None
    if isinstance(expr, ast.IfExp):
        return None
    return ("atom", "b:" + tr.key(expr))


def _atoms(prop, out: dict) -> None:
    if prop[0] == "atom":
        out[prop[1]] = True
    elif prop[0] == "not":
        _atoms(prop[1], out)
    elif prop[0] in ("and", "or"):
        for item in prop[1]:
            _atoms(item, out)


def _eval(prop, env) -> bool:
    tag = prop[0]
    if tag == "atom":
        return env[prop[1]]
    if tag == "not":
        return not _eval(prop[1], env)
    if tag == "and":
        return all(_eval(p, env) for p in prop[1])
    if tag == "or":
        return any(_eval(p, env) for p in prop[1])
    return prop[1]
