"""Match compiled rules against the model structures of one file.

`match_file(compiled, facts)` returns every `ir.Match` (docs/design.md,
"Match semantics").  The matcher finds candidates: the data flow *within* a
match is enforced here, the data flow after it and the guards are checked by
`dslc.rewrite.safety`.

Algorithm, per file:

1. Path sets.  Rules with an init item run over `ClassFacts.paths` (forward,
   helpers inlined) and the `other_paths` of methods forward passes as a
   value (`apply_chunking_to_forward(self.ff_chunk, ...)`); rules without one
   also over all `ClassFacts.other_paths` and `FileFacts.functions`.
2. Anchors.  For each path node, compute its index keys ((kind, qualified
   type); a layer node also carries the init types of its attribute) and look
   up the rules anchored there (`CompiledPack.index`).  Only those are tried.
3. Automaton run (depth first).  With the anchor transition fixed on that
   node, fire transitions left to right over later nodes (earlier ones for
   leading wildcards).  A node that does not fire is skipped, unless it
   writes a name bound to a variable: that kills the partial match.  Names
   are bound with the path position of their defining write, so a variable
   only ever denotes one value (`x = drop(x); y = x + x` binds two values).
4. Scope (init).  Each init test whose variable forward bound to an
   attribute must match that attribute's init binding of the test's type
   (arguments normalised by parameter name, defaults filled in); the other
   init tests take any distinct binding of the class (order-insensitive
   backtracking).  `where` constraints are checked last: a constraint that
   needs a static value the source does not give (`bias=config.x`) keeps the
   match but marks it `conflict`.
   Calls of an `nn.Sequential` attribute are expanded into the chain of its
   elements first (`_expand_sequential`), so `Sequential(Conv2d, BatchNorm2d)`
   matches conv_batchnorm; such nodes have `attr == "<seq>.<i>"`.
5. Locations.  Matches of one rule with the same forward statements and init
   bindings are one `Match`; `paths` lists every path index holding it.
6. Overlaps.  Sorted by (rule order, first line), a match that shares a
   forward node with an earlier kept match, or an init binding with a kept
   match of another rule, gets `conflict = "overlaps ..."` (returned, so
   apply can report it skipped).

Conditional init policy: an attribute with several `InitBinding`s (an
`if`/`else` in `__init__`) matches when every binding of the test's type
unifies with the same variable bindings.  Bindings of kind `other` (the
`else: self.act = config.hidden_act` branch of transformers) are allowed
under a rule with `when`: `init_nodes` holds the matching binding with its
guards, and the rewriter keeps the other branch as it is; without `when`
forward would call that value of unknown type where the rewrite assumes the
matched layer (S216).  `None` and `nn.Identity()` bindings of a layer the
rewrite removes are left to the guarded kind.  A binding of another type (`nn.Linear(...)`
if `num_groups == 1` else `GroupedLinearLayer(...)`; `nn.BatchNorm2d(c) if
norm else nn.Identity()`) that the matched binding does not always
overwrite makes the match a conflict (S216, `_alternative_binding`): forward
calls whichever layer was bound, and the rewrite assumes the matched type
everywhere (the grouped layer would keep its bias and get the fused one;
`ConvBn2d(conv, nn.Identity())` does not construct), unless z3 shows the
two bindings' guards exclusive and the rule only changes `__init__`
(`excluded_by_guards`): the rewriter then adds the matched binding's guards
to the `if` it writes around the init edits.  So does any other
branch of an `a if c else b` binding, since the rewriter copies the whole
expression.

Debugging: `DSLC_MATCH_DEBUG=<file suffix>:<line>` logs (logger
`dslc.match.matcher`, level DEBUG; the `dslc` command shows them on stderr)
why the nodes at that line did not match (failed attempts are falsy `Fail`
values carrying a reason).  For users, `match_file(..., recorder=)` hands every
failed attempt to a recorder (`dslc.rewrite.nearmiss`: the near-miss report of
`dslc apply --near-misses` and `dslc explain FILE:LINE`); without one, the
hooks cost an `is None` test.
"""

from __future__ import annotations

import ast
import logging
import os
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterator, NamedTuple

from dslc import codes
from dslc.match import ir, rows, signatures
from dslc.analysis.model import ClassFacts, FileFacts, InitBinding, Node, Path, Value
from dslc.analysis.nodememo import NodeMemo
from dslc.analysis.scalars import MATH_FUNCTIONS
from dslc.match.automaton import InitTest, Transition
from dslc.match.compiler import CompiledPack, CompiledRule
from dslc.match.optional import pair_guarded

# How many complete matches one anchor attempt may produce (several later
# nodes can complete the same prefix; all are reported, overlaps resolved).
MAX_PER_ANCHOR = 8
# The matching work budget of one path set (issue 11): transitions fired over
# all its paths and anchors.  A function at the path cap under a pack of
# hundreds of spellings (sdpa.adr) fires millions (minutes).  T5's attention
# at the 256-path cap needs 237 000 with sdpa's 594 rules: the budget keeps
# four times that, so real attention code is matched whole.  Past it the path
# set's matches are all dropped (`MatchBudget`: nothing of it is rewritten,
# never a match found on some of its paths only) and `match_file(over=)`
# is told; the file's other classes and functions are matched as usual.
MAX_MATCH_FIRES = 1_000_000


class Fail:
    """A failed match attempt: falsy, with a lazily formatted reason."""

    __slots__ = ("fmt", "args")

    def __init__(self, fmt: str, *args: object):
        self.fmt = fmt
        self.args = args

    def __bool__(self) -> bool:
        return False

    @property
    def reason(self) -> str:
        return self.fmt.format(*self.args) if self.args else self.fmt

    def __repr__(self) -> str:
        return f"Fail({self.reason!r})"


@dataclass(frozen=True, slots=True)
class _B:
    """A binding: `defn` is the path position of a name's defining write
    (-1: defined before the path, e.g. a parameter; None: in __init__)."""

    text: str
    kind: str  # name | const | expr | layer | absent | unknown (a literal check on a non-static value)
    value: object = None
    defn: int | None = None
    # (name, defn) of the value this name copies (an inlined helper's
    # parameter is its argument): two names with one root are one value.
    root: tuple | None = None
    # bound to the signature's default of a parameter the call does not give
    defaulted: bool = field(default=False, compare=False)


_ABSENT = _B("", "absent")


def _const_eq(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_const_eq(x, y) for x, y in zip(a, b))
    try:
        return type(a) is type(b) and a == b or (
            isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
        )
    except Exception:  # exotic values never compare equal
        return False


def _same(a: _B, b: _B) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "const":
        return _const_eq(a.value, b.value)
    if a.kind == "name" and a.root is not None and b.root is not None:
        return a.root == b.root
    if a.text != b.text:
        return False
    return a.defn is None or b.defn is None or a.defn == b.defn


def _bind_value(value: Value, defn: int | None, root: tuple | None = None) -> _B:
    if value.is_const:
        return _B(value.text, "const", value.const)
    if value.kind == "name":
        return _B(value.text, "name", None, defn, root)
    return _B(value.text, "expr")


def _unify(term: ir.Term, b: _B, env: dict[str, _B]) -> dict[str, _B] | Fail:
    """Bind or check one term against one value; returns the new env."""
    if isinstance(term, ir.Var):
        if term.name == "_":
            return env
        old = env.get(term.name)
        if old is None:
            new = dict(env)
            new[term.name] = b
            return new
        if _same(old, b):
            return env
        return Fail("{} is bound to {!r}, the node has {!r}", term, _show(old), _show(b))
    if isinstance(term, ir.Const):
        if b.kind == "const" and _const_eq(term.value, b.value):
            return env
        if b.kind == "expr" or b.kind == "name":
            # Not a static value: like `where ==` on an unknown value, the
            # match is kept but marked (apply reports it skipped).
            new = dict(env)
            new[f"?{len(env)}"] = _B(f"needs the literal {term.value!r}, the source gives {b.text}, not a static value", "unknown")
            return new
        return Fail("needs the literal {!r}, the node has {!r}", term.value, _show(b))
    if isinstance(term, ir.Code):
        if b.kind in ("name", "expr") and b.text == term.text:
            return env
        return Fail("needs {}, the node has {!r}", term.text, _show(b))
    if isinstance(term, ir.AttrOf):
        # `$cfg.hidden_act` in a source pattern: the value must be an
        # attribute access ending in `.hidden_act`; `$cfg` binds its base.
        suffix = "." + term.attr
        base = b.text[: -len(suffix)] if b.kind == "expr" and b.text.endswith(suffix) else ""
        if not base:
            return Fail("needs `<value>{}`, the node has {!r}", suffix, _show(b))
        kind = "name" if base.isidentifier() else "expr"
        return _unify(term.base, _B(base, kind), env)
    return Fail("cannot match pattern term {!r}", term)


def _show(b: _B) -> str:
    if b.kind == "absent":
        return "<absent>"
    if b.kind == "name" and b.defn is not None:
        return f"{b.text}@{b.defn}"
    return b.text


# ---------------------------------------------------------------------------
# Per-file, per-class and per-path context.


_LOG = logging.getLogger(__name__)


class _Debug:
    def __init__(self, file: str):
        spec = os.environ.get("DSLC_MATCH_DEBUG", "")
        self.line = None
        if ":" in spec:
            where, _, line = spec.rpartition(":")
            if line.isdigit() and (file.endswith(where) or where in ("", "*")):
                self.line = int(line)

    def at(self, node: Node) -> bool:
        return self.line is not None and node.stmt.lines[0] <= self.line <= node.stmt.lines[1]

    def say(self, file: str, rule: str, msg: str) -> None:
        _LOG.debug("%s:%s: %s: %s", file, self.line, rule, msg)


@dataclass
class _Scope:
    """One class (or module level) and the path set being matched."""

    cls: ClassFacts | None
    init_by_attr: dict[str, list[InitBinding]]
    paths_of: str | None
    class_scoped: bool  # ClassFacts.paths: rules with init items apply
    sequential: bool = True  # expand nn.Sequential calls into their elements
    # id(node) -> (node, its index keys, the names it writes): paths share their nodes
    node_memo: dict = field(default_factory=dict, repr=False, compare=False)
    # (signature, id(node)) -> `_slots` (the node is held by `node_memo`)
    slots_memo: dict = field(default_factory=dict, repr=False, compare=False)
    has_sequential: bool | None = None  # an init binding is an nn.Sequential (worked out on first use)
    fires: int = 0  # transitions fired on its paths (MAX_MATCH_FIRES)
    max_fires: int = 0
    budget_line: int = 0  # where a path set that ran out of budget begins (its first node's line)


class MatchBudget(Exception):
    """A path set used up its matching budget (`MAX_MATCH_FIRES`)."""


def over_budget_message(scope: _Scope, packs: str = "") -> str:
    """The warning of a path set whose matching ran out of budget (`packs`:
    the names of the packs whose rules were being matched)."""
    where = scope.cls.qualname if scope.cls is not None else ""
    what = scope.paths_of.split(":", 1)[1] if scope.paths_of else "forward"
    where = f"{where}.{what}" if where else what
    rules = f"no rule of {packs}" if packs else "no rule"
    return (f"match-budget: {where}: more than {scope.max_fires} pattern steps tried over its paths; "
            f"{rules} is matched in it (its near misses say it was not fully analysed)")


class _PathCtx:
    __slots__ = ("path", "nodes", "writes", "writers", "keys", "scalars", "ranks", "cutoffs", "proofs", "positions",
                 "at_key", "fired", "windows")

    def __init__(self, path: Path, scope: _Scope, prev: _PathCtx | None = None, common: int = 0):
        """`prev`: the context of a path whose first `common` nodes are this one's."""
        self.path = path
        self.nodes = path.nodes
        # rank proofs: (name, defining position) -> rank; `cutoffs` counts the
        # proofs cut short by the depth limit (those results are not cached)
        self.ranks: dict[tuple[str, int], int | None] = {}
        self.cutoffs = 0
        # rank proofs asked by the runs: a cached proof may hold where a new one
        # is cut short, so a run that asked one is not replayed (`_Trace`)
        self.proofs = 0
        self.positions: dict | None = None  # node id -> position, built on first use
        # `self.<attr>`s that hold a Python number (rank 0; analysis/scalars.py)
        self.scalars = scope.cls.scalars if scope.cls is not None else frozenset()
        # Index keys per node: a transition is only fired on nodes carrying
        # its key (the same pre-filter as the anchor index, for later nodes).
        # Both are per node, and the paths of one scope share most nodes: memoised in the scope.
        memo = scope.node_memo
        get = memo.get
        # (an entry holds its node, so no other object has its id while the scope lives)
        rest = path.nodes[common:] if prev is not None else path.nodes
        rows = [get(id(n)) for n in rest]
        if None in rows:
            for i, n in enumerate(rest):
                if rows[i] is None:
                    # a parameter bound to the same name (`self._f(h)`, `def _f(self, h)`) keeps its value
                    rows[i] = memo[id(n)] = (n, frozenset(_node_keys(n, scope)),
                                             (frozenset(n.writes) | frozenset(n.outputs))
                                             - {d for d, s in n.copies if d == s})
        self.keys = [got[1] for got in rows]
        self.writes = [got[2] for got in rows]
        if prev is not None and common:
            self.keys[:0] = prev.keys[:common]
            self.writes[:0] = prev.writes[:common]
        self.writers: dict[str, list[int]] | None = None  # name -> positions writing it, built on first use
        self.at_key: dict | None = None  # index key -> positions of the nodes carrying it, built on first use
        # (transition id, position, id(env)) -> (env, what `_fire` returned): rules
        # that share their first transitions fire them once (`_Rules.tids`)
        self.fired: dict = {}
        # (k == anchor, k > anchor, prev, anchor position, id(env), index key) ->
        # (env, its bound names, `_window`): the same for the rules sharing those
        self.windows: dict = {}

    def _writers(self) -> dict[str, list[int]]:
        if self.writers is None:
            writers: dict[str, list[int]] = {}
            for i, names in enumerate(self.writes):
                for n in names:
                    writers.setdefault(n, []).append(i)
            self.writers = writers
        return self.writers

    def keyed(self, key, lo: int, hi: int) -> list[int] | range:
        """The positions in [lo, hi) of the nodes carrying index key `key`
        (None: every position): the only ones a transition can fire on."""
        if key is None:
            return range(lo, hi)
        if self.at_key is None:
            at: dict = {}
            for i, keys in enumerate(self.keys):
                for k in keys:
                    at.setdefault(k, []).append(i)
            self.at_key = at
        ps = self.at_key.get(key)
        if not ps:
            return []
        return ps[bisect_left(ps, lo):bisect_left(ps, hi)]

    def first_write(self, names: set[str], lo: int, hi: int) -> int | None:
        """The first position in [lo, hi) whose node writes one of `names`."""
        writers = self._writers()
        first = None
        for name in names:
            ws = writers.get(name)
            if ws:
                i = bisect_left(ws, lo)
                if i < len(ws) and ws[i] < hi and (first is None or ws[i] < first):
                    first = ws[i]
        return first

    def defn(self, name: str, pos: int) -> int:
        """The position of the last write of `name` before `pos` (-1: none)."""
        ws = self._writers().get(name)
        if not ws:
            return -1
        i = bisect_left(ws, pos)
        return ws[i - 1] if i else -1

    def root(self, name: str, pos: int) -> tuple[str, int]:
        """(name, defining position) of the value `name` holds at `pos`,
        following plain copies (an inlined helper's parameters and result)."""
        d = self.defn(name, pos)
        for _ in range(64):
            if d < 0:
                break
            src = next((s for t, s in self.nodes[d].copies if t == name), None)
            if src is None:
                break
            name, d = src, self.defn(src, d)
        return name, d


def _node_keys(node: Node, scope: _Scope) -> list[tuple[str, str]]:
    if node.kind == "layer":
        keys = {("layer", node.type or "")}
        for b in scope.init_by_attr.get(node.attr or "", ()):
            if b.type:
                keys.add(("layer", b.type))
        return sorted(keys)
    if node.kind == "call":
        keys = [("call", node.type or "")]
        spelled = node.type or node.unresolved or ""
        if "." in spelled:
            keys.append(("method", spelled.rsplit(".", 1)[1]))
        return keys
    if node.kind == "op":
        return [("op", f"{node.op}/{len(node.inputs)}")]
    return []


def _is_self_method(node: Node, name: str, scope: _Scope) -> bool:
    if node.unresolved and node.unresolved == f"self.{name}":
        return True
    if node.type and scope.cls is not None and node.type.endswith(f".{name}"):
        owner = node.type[: -len(name) - 1]
        return owner.rsplit(".", 1)[-1] in (scope.cls.name, node.stmt.owner) or owner == scope.cls.qualname
    return False


# ---------------------------------------------------------------------------
# Firing one transition on one node.


def _test(t: Transition, node: Node, env: dict[str, _B], scope: _Scope) -> bool | Fail:
    test = t.test
    if test.kind == "any":
        return node.kind != "stmt" or Fail("a wildcard matches DL nodes, not statements")
    if test.kind == "op":
        if node.kind != "op" or node.op != test.type or len(node.inputs) != test.arity:
            return Fail("not the operator {}", test.type)
        return True
    if test.kind == "call":
        if node.kind != "call" or node.type != test.type:
            return Fail("not a call of {} (node: {} {})", test.type, node.kind, node.type or node.unresolved)
        return True
    if test.kind == "method":
        if node.kind != "call" or not _is_self_method(node, test.type, scope):
            return Fail("not a call of self.{}", test.type)
        return True
    # layer
    if node.kind != "layer" or not node.attr:
        return Fail("not a layer call")
    bindings = scope.init_by_attr.get(node.attr)
    if not bindings:
        return Fail("self.{} is not initialised in __init__", node.attr)
    bound = env.get(test.layer_var)
    if bound is not None:
        return bound.text == node.attr or Fail("${} is bound to self.{}, the node calls self.{}", test.layer_var, bound.text, node.attr)
    if node.type == test.type or any(b.type == test.type for b in bindings):
        return True
    return Fail("self.{} is a {}, the rule needs {}", node.attr, node.type or bindings[0].unresolved, test.type)


def _slots(t: Transition, node: Node) -> tuple[dict[str, Value], tuple[str, ...]] | Fail:
    """The node's values by slot name, and the slots given explicitly."""
    if t.signature is not None:
        norm = signatures.normalize(t.signature, node.inputs, node.kwargs)
        if norm is None:
            return Fail("the call's arguments do not fit the signature of {}", t.signature)
        given = signatures.explicit_params(t.signature, node.inputs, node.kwargs) or ()
        return {f"p:{k}": v for k, v in norm.items()}, tuple(f"p:{k}" for k in given)
    inputs, kwargs = node.inputs, node.kwargs
    if node.kind == "layer" and kwargs:
        # `self.bn(input=x)`: the layer's input passed by keyword
        inputs, kwargs = signatures.layer_call_args(node.type, inputs, kwargs)
    slots = {f"in{i}": v for i, v in enumerate(inputs)}
    for k, v in kwargs:
        slots[f"kw:{k}"] = v
    return slots, tuple(slots)


def _fire(t: Transition, node: Node, pos: int, env: dict[str, _B], scope: _Scope, ctx: _PathCtx):
    """Fire transition `t` on `node` (at path position `pos`).

    Returns `(env, extras)` or a `Fail`."""
    ok = _test(t, node, env, scope)
    if not ok:
        return ok
    key = (t.signature, id(node))
    got = scope.slots_memo.get(key)
    if got is None:
        got = scope.slots_memo[key] = _slots(t, node)
    if isinstance(got, Fail):
        return got
    slots, given = got
    outs = [a for a in t.actions if a.slot.startswith("out")]
    if outs and t.pattern is not None and len(t.pattern.outputs) != len(node.outputs):
        return Fail("the pattern has {} output(s), the node {}", len(t.pattern.outputs), len(node.outputs))
    orders = [None]
    if t.test.commutative:
        orders = [None, {"in0": "in1", "in1": "in0"}]
    last: Fail | None = None
    for swap in orders:
        res = _run_actions(t.actions, node, pos, env, slots, swap, ctx)
        if isinstance(res, Fail):
            last = res
            continue
        used = {a.slot for a in t.actions}
        extra = []
        for slot in given:
            if slot in used:
                continue
            if slot.startswith("in") and not t.rest and t.test.kind != "any":
                return Fail("the call passes more positional arguments than the pattern")
            extra.append((_slot_label(slot), slots[slot]))
        return res, tuple(extra)
    return last


def _slot_label(slot: str) -> str:
    """`p:dtype` / `kw:dtype` -> `dtype`; `in2` -> `#2`."""
    if slot.startswith(("p:", "kw:")):
        return slot.split(":", 1)[1]
    return "#" + slot[2:]


def _run_actions(actions, node: Node, pos: int, env, slots, swap, ctx: _PathCtx):
    for a in actions:
        if a.slot == "attr":
            env = _unify(a.term, _B(node.attr or "", "layer"), env)
        elif a.slot.startswith("out"):
            i = int(a.slot[3:])
            if i >= len(node.outputs):
                return Fail("the node has no output {}", i)
            env = _unify(a.term, _B(node.outputs[i], "name", None, pos, (node.outputs[i], pos)), env)
        else:
            slot = swap.get(a.slot, a.slot) if swap else a.slot
            value = slots.get(slot)
            if value is None:
                env = _unify(a.term, _ABSENT, env) if isinstance(a.term, ir.Var) else Fail("argument {} is missing", slot)
            else:
                defn = ctx.defn(value.text, pos) if value.kind == "name" else None
                root = ctx.root(value.text, pos) if value.kind == "name" else None
                before = env
                env = _unify(a.term, _bind_value(value, defn, root), env)
                if isinstance(env, Fail) and _last_dim(a, value, slots, pos, ctx):
                    # `dim=3` on a tensor of rank 4 is `dim=-1`; the rank is a
                    # fact of this path: `_check_ranks` re-proves it on the others
                    env = dict(before)
                    env[f"!rank{pos}"] = _B(value.text, "rank", (node, slots["p:input"], value.const - a.term.value))
                elif isinstance(env, Fail) and a.rows and value.kind == "expr":
                    env = _rows_binding(a.term, value, pos, before, ctx, env)
        if isinstance(env, Fail):
            return Fail("{}: {}", a.describe(), env.reason)
    return env


# ---------------------------------------------------------------------------
# Ranks: `softmax(x, dim=3)` where x is provably of rank 4 is over the last dim.

_RANK_KEEPING_CALLS = frozenset({
    "torch.nn.functional.softmax", "torch.softmax", "torch.nn.functional.dropout", "torch.nn.functional.gelu",
    "torch.nn.functional.relu", "torch.tanh", "torch.sigmoid", "torch.index_select",
})
_RANK_KEEPING_LAYERS = frozenset({
    "torch.nn.Dropout", "torch.nn.GELU", "torch.nn.ReLU", "torch.nn.Softmax", "torch.nn.Tanh", "torch.nn.Sigmoid",
})
# (not `masked_fill`: out of place, it broadcasts the tensor to the mask's shape)
_KEEP_METHODS = frozenset({"transpose", "contiguous", "float", "half", "bfloat16", "double", "to", "type_as",
                           "clone", "detach"})
_COUNT_METHODS = frozenset({"view", "reshape", "permute"})
# Calls whose result is a Python number whatever they are given (or they raise).
_NUMBER_CALLS = frozenset({f"math.{f}" for f in MATH_FUNCTIONS} | {"builtins.float", "builtins.int"})
# Elementwise binary operators: the result broadcasts its operands.
_BROADCAST_OPS = ("+", "-", "*", "/", "//", "%", "**")
_BROADCAST_AST = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


def _rows_binding(term: ir.Var, value: Value, pos: int, env: dict, ctx: "_PathCtx", failed: Fail) -> dict | Fail:
    """`option rows`: the argument is a row reshaping of the value bound to
    `term` (`logits[:, :-1].reshape(-1, logits.size(-1))`); the chain is kept
    as the binding `~rows` (dslc/match/rows.py)."""
    old = env.get(term.name)
    if old is None or old.kind != "name":
        return failed
    got = rows.row_chain(value.text, old.text)
    if isinstance(got, str):
        return Fail("{} is bound to {!r}; the argument `{}` is not a row reshaping of it: {}", term, _show(old), value.text, got)
    if ctx.root(old.text, pos) != old.root or "~rows" in env:
        return Fail("{} is bound to {!r}, the argument `{}` reads another value", term, _show(old), value.text)
    new = dict(env)
    new["~rows"] = _B(value.text, "expr", got)
    return new


def _last_dim(a, value: Value, slots: dict, pos: int, ctx: "_PathCtx") -> bool:
    """A literal negative `dim=-k` in the pattern and a non-negative `dim=d`
    in the call agree when the call's `input` has provable rank r = d + k."""
    if a.slot != "p:dim" or not isinstance(a.term, ir.Const) or not value.is_const:
        return False
    want, got = a.term.value, value.const
    if not (type(want) is int and type(got) is int and want < 0 <= got):
        return False
    source = slots.get("p:input")
    if source is None:
        return False
    ctx.proofs += 1
    return _rank_of_value(source, pos, ctx, 0) == got - want


def _rank_of_value(value: Value, pos: int, ctx: "_PathCtx", depth: int) -> int | None:
    if value.is_const:
        return 0 if type(value.const) in (int, float) else None
    return _rank_of_text(value.text, pos, ctx, depth)


@lru_cache(maxsize=4096)
def _parse_expr(text: str):
    """`text` parsed as an expression (None when it is not one); the trees
    are only read, so one parse serves every rank proof."""
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError:
        return None


def _rank_of_text(text: str, pos: int, ctx: "_PathCtx", depth: int) -> int | None:
    expr = _parse_expr(text)
    return None if expr is None else _rank_expr(expr, pos, ctx, depth)


def _rank_expr(e, pos: int, ctx: "_PathCtx", depth: int) -> int | None:
    """The rank of expression `e` read at path position `pos`, when provable."""
    if depth > 32:
        ctx.cutoffs += 1
        return None
    if isinstance(e, ast.Constant):
        return 0 if type(e.value) in (int, float) else None
    if isinstance(e, ast.Name):
        return _rank_of_name(e.id, pos, ctx, depth + 1)
    if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
        return 0 if e.attr in ctx.scalars else None
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        return _rank_expr(e.operand, pos, ctx, depth + 1)
    if isinstance(e, ast.BinOp) and isinstance(e.op, (*_BROADCAST_AST, ast.MatMult)):
        ra = _rank_expr(e.left, pos, ctx, depth + 1)
        rb = _rank_expr(e.right, pos, ctx, depth + 1)
        return _binary_rank("@" if isinstance(e.op, ast.MatMult) else "+", ra, rb)
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and not e.keywords:
        method = e.func.attr
        if method in _COUNT_METHODS:
            args = e.args
            if any(isinstance(x, ast.Starred) for x in args):
                return None
            if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
                if any(isinstance(x, ast.Starred) for x in args[0].elts):
                    return None
                return len(args[0].elts)
            if len(args) == 1 and not (isinstance(args[0], ast.Constant) and type(args[0].value) is int):
                return None  # `view(shape)`, `view(dtype)`: not a count
            return len(args) or None
        if method in _KEEP_METHODS:
            return _rank_expr(e.func.value, pos, ctx, depth + 1)
    return None


def _binary_rank(op: str, ra: int | None, rb: int | None) -> int | None:
    if ra is None or rb is None:
        return None
    if op == "@":
        return max(ra, rb) if ra >= 2 and rb >= 2 else None
    return max(ra, rb)  # broadcasting (a Python number is rank 0)


def _rank_of_name(name: str, pos: int, ctx: "_PathCtx", depth: int) -> int | None:
    """The rank of `name` read at `pos`: memoised per (name, definition),
    since the value a name holds depends only on the node that wrote it (a
    result cut short by the depth limit depends on the depth: not kept)."""
    d = ctx.defn(name, pos)
    if d < 0:
        return None
    key = (name, d)
    if key in ctx.ranks:
        return ctx.ranks[key]
    cutoffs = ctx.cutoffs
    rank = _rank_of_definition(name, d, ctx, depth)
    if ctx.cutoffs == cutoffs:
        ctx.ranks[key] = rank
    return rank


def _rank_of_definition(name: str, d: int, ctx: "_PathCtx", depth: int) -> int | None:
    node = ctx.nodes[d]
    src = next((s for t, s in node.copies if t == name), None)
    if src is not None:
        return _rank_of_name(src, d, ctx, depth + 1)
    if node.kind == "stmt":
        text = next((t for n, t in node.defs if n == name), None)
        return _rank_of_text(text, d, ctx, depth + 1) if text is not None and len(node.writes) == 1 else None
    if node.outputs != (name,):
        return None
    return _node_rank(node, d, ctx, depth + 1)


def _node_rank(node: Node, pos: int, ctx: "_PathCtx", depth: int) -> int | None:
    if node.kind == "op":
        ranks = [_rank_of_value(v, pos, ctx, depth) for v in node.inputs]
        if len(ranks) == 1:
            return ranks[0] if node.op in ("-", "+") else None
        if node.op in _BROADCAST_OPS or node.op == "@":
            return _binary_rank(node.op if node.op == "@" else "+", ranks[0], ranks[1])
        return None
    if node.kind == "call":
        if node.type in _NUMBER_CALLS:
            return 0
        if node.type == "torch.einsum" and node.inputs and node.inputs[0].is_const and not node.kwargs:
            spec = node.inputs[0].const
            if isinstance(spec, str) and spec.count("->") == 1:
                out = spec.split("->")[1].replace(" ", "")
                if out.isalpha() and len(set(out)) == len(out):
                    return len(out)
            return None
        if node.type == "torch.matmul" and len(node.inputs) == 2 and not node.kwargs:
            return _binary_rank("@", _rank_of_value(node.inputs[0], pos, ctx, depth),
                                _rank_of_value(node.inputs[1], pos, ctx, depth))
        if node.type in _RANK_KEEPING_CALLS and node.inputs:
            return _rank_of_value(node.inputs[0], pos, ctx, depth)
        # tensor-method nodes (`k.transpose(-1, -2)`): the receiver is the first input
        method = node.type.rpartition(".")[2] if node.type and node.type.startswith("torch.Tensor.") else None
        if method in ("matmul", "bmm") and len(node.inputs) == 2 and not node.kwargs:
            return _binary_rank("@", _rank_of_value(node.inputs[0], pos, ctx, depth),
                                _rank_of_value(node.inputs[1], pos, ctx, depth))
        if (method in _KEEP_METHODS or method == "softmax") and node.inputs:  # `.to(dtype)` too
            return _rank_of_value(node.inputs[0], pos, ctx, depth)
        return None
    if node.kind == "layer" and node.type in _RANK_KEEPING_LAYERS and len(node.inputs) == 1 and not node.kwargs:
        return _rank_of_value(node.inputs[0], pos, ctx, depth)
    return None


# ---------------------------------------------------------------------------
# Running one automaton from one anchor node.


@dataclass
class _Partial:
    positions: tuple[int, ...]
    env: dict[str, _B]
    extras: dict[int, tuple] = field(default_factory=dict)


_NO_KEY = Fail("the node does not carry the transition's (kind, type)")
# The bindings every run starts from (never changed: `_unify` copies), one
# object so that the first fires of all rules share `_PathCtx.fired`.
_NO_BINDINGS: dict[str, _B] = {}

@dataclass(frozen=True, slots=True)
class _Rules:
    """What the matcher reads of each rule of a pack at every anchor, worked out once."""

    tids: tuple  # per rule, an id per forward transition, the same for equal transitions
    keys: tuple  # per rule, each forward transition's index key (`Test.anchor`)
    class_scoped: tuple[bool, ...]
    # two rules start with the same transition: worth the per-path memos of
    # fires and windows (adopter.adr's 9 rules share none)
    shared: bool


# id(CompiledPack) -> (the pack, its `_Rules`)
_RULES: dict[int, tuple] = {}


def _rules(compiled: CompiledPack) -> _Rules:
    """The pack's `_Rules` (equal transitions: the sdpa pack's 1125 rules
    start with 7 distinct ones, and fire them once per node: `_PathCtx.fired`)."""
    got = _RULES.get(id(compiled))
    if got is None or got[0] is not compiled:
        ids: dict[Transition, int] = {}
        trans = [cr.forward.transitions if cr.forward is not None else () for cr in compiled.rules]
        tids = tuple(tuple(ids.setdefault(t, len(ids)) for t in ts) for ts in trans)
        firsts = [ts[0] for ts in tids if ts]
        table = _Rules(tids, tuple(tuple(t.test.anchor for t in ts) for ts in trans),
                       tuple(cr.class_scoped for cr in compiled.rules), len(set(firsts)) < len(firsts))
        if len(_RULES) > 16:
            _RULES.clear()
        got = _RULES[id(compiled)] = (compiled, table)
    return got[1]


class _Trace:
    """What one anchor run did, to replay it on another path of the set.

    A run reads its path backwards from the positions it fires on (names'
    definitions, ranks, the nodes before the anchor) and forwards up to the
    last position it tried or the first write that killed its partial
    match; past that it reads nothing, unless a transition found no node
    and no kill up to the path's end.  So another path with the same
    nodes at positions 0..`hi` (the same prefix: `_Prefixes`) gives the
    same partial matches, events, bindings and positions.  `items` holds,
    in order, the recorder's events (`("e", args, kw)`) and the partial
    matches yielded (`("y", partial)`); `fires` the transitions fired."""

    __slots__ = ("hi", "items", "fires")

    def __init__(self, anchor_pos: int):
        self.hi = anchor_pos
        self.items: list = []
        self.fires = 0

    def seen(self, pos: int) -> None:
        if pos > self.hi:
            self.hi = pos

    def recording(self, rec):
        return _Recording(rec, self.items)


class _Recording:
    """A recorder that also keeps its events in a `_Trace`."""

    __slots__ = ("rec", "items")

    def __init__(self, rec, items: list):
        self.rec = rec
        self.items = items

    def event(self, *args, **kw) -> None:
        self.items.append(("e", args, kw))
        self.rec.event(*args, **kw)


class _Prefixes:
    """The prefixes of a path set's paths as a trie of node identities:
    `ids(nodes)[i]` names the prefix `nodes[0..i]`, equal for two paths
    exactly when those prefixes hold the same nodes (the paths of a
    function share the nodes before their first branch, and more)."""

    __slots__ = ("trie", "last", "last_ids")

    def __init__(self):
        self.trie: dict[tuple[int, int], int] = {}
        self.last: tuple[int, ...] = ()  # the node ids of the last path given
        self.last_ids: list[int] = []

    def ids(self, nodes) -> tuple[int, list[int]]:
        """(how many first nodes the last path given shares, `nodes`' prefix
        ids).  The nodes must outlive the trie (`_Scope.node_memo` holds them)."""
        node_ids = tuple(map(id, nodes))
        common = _common_prefix(self.last, node_ids)
        out = self.last_ids[:common]
        t = out[-1] if out else 0
        trie = self.trie
        for n in node_ids[common:]:
            key = (t, n)
            t = trie.get(key)
            if t is None:
                t = trie[key] = len(trie) + 1
            out.append(t)
        self.last, self.last_ids = node_ids, out
        return common, out


def _common_prefix(a: tuple, b: tuple) -> int:
    """The length of the longest common prefix of `a` and `b` (bisected:
    consecutive paths share most of their nodes, and a slice compares fast)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi - 1:  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _bound_names(env: dict[str, _B]) -> set[str]:
    return {b.text for b in env.values() if b.kind == "name"}


def _window(ctx: _PathCtx, k: int, a: int, prev: int, anchor_pos: int, bound: set[str], key):
    """(the positions transition k may fire on after `prev`, the first
    position of the range that writes a name in `bound` or None); None when
    a skipped node before the anchor writes one.  The nodes between prev and
    the position fired on are skipped: none may write a bound name.  Nodes
    without the transition's `key` are left out (they cannot fire, and a
    `_NO_KEY` failure is never reported)."""
    if k == a:
        if anchor_pos <= prev:
            return range(0), None
        if bound and ctx.first_write(bound, prev + 1, anchor_pos) is not None:
            return None
        lo, hi = anchor_pos, anchor_pos + 1
        candidates: range | list[int] = range(lo, hi)
    else:
        lo, hi = prev + 1, len(ctx.nodes) if k > a else anchor_pos
        candidates = ctx.keyed(key, lo, hi)
    return candidates, (ctx.first_write(bound, lo, hi) if bound else None)


def _run(cr: CompiledRule, ctx: _PathCtx, anchor_pos: int, scope: _Scope, dbg: _Debug, file: str,
         rec=None, trace: _Trace | None = None, table: _Rules | None = None, ri: int = 0) -> Iterator[_Partial]:
    """The partial matches of `cr` anchored at `anchor_pos`, depth first.
    `trace`, when given, learns how far into the path the run looked and
    gets the recorder's events (`_Trace`).  `table`: the pack's `_Rules`
    (`cr` is its rule `ri`), for the path's memos (`_PathCtx.fired` and
    `windows`)."""
    auto = cr.forward
    trans = auto.transitions
    a = auto.anchor_index
    nodes = ctx.nodes
    tids = table.tids[ri] if table is not None and table.shared else None
    keys = table.keys[ri] if table is not None else tuple(t.test.anchor for t in trans)
    found = 0
    if trace is not None and rec is not None:
        rec = trace.recording(rec)

    def extend(k: int, prev: int, p: _Partial) -> Iterator[_Partial]:
        nonlocal found
        if found >= MAX_PER_ANCHOR:
            return
        if k == len(trans):
            found += 1
            yield p
            return
        bound, window = _window_of(ctx, k, a, prev, anchor_pos, p.env, keys[k], tids is not None)
        if window is None:
            return  # a skipped node before the anchor rebinds a name
        candidates, kill = window
        if trace is not None:
            if kill is not None:
                trace.seen(kill)
            elif k > a:
                trace.seen(len(nodes))  # every later node was looked at, to the path's end
        for q in candidates:
            if kill is not None and q > kill:
                break
            if trace is not None:
                trace.seen(q)
            scope.fires += 1
            if scope.fires > scope.max_fires:
                raise MatchBudget()
            res = _fire_once(trans[k], None if tids is None else tids[k], nodes[q], q, p.env, scope, ctx)
            if isinstance(res, Fail):
                if res is not _NO_KEY:
                    _report_fail(cr, scope, ctx, anchor_pos, k, q, res, p, rec, dbg, file)
            else:
                env, extra = res
                extras = dict(p.extras)
                if extra:
                    extras[k] = extra
                yield from extend(k + 1, q, _Partial(p.positions + (q,), env, extras))
        if kill is not None:
            _report_kill(cr, scope, ctx, anchor_pos, k, kill, bound, p, rec, dbg, file)
        elif k > a:
            _report_end(cr, scope, ctx, anchor_pos, k, p, rec, dbg, file)

    try:
        yield from extend(0, -1, _Partial((), _NO_BINDINGS))
    finally:
        # `extend` refers to itself through its closure cell: a reference
        # cycle that would keep this path's context alive until the next
        # full collection.  Cut it so that it is freed now.
        extend = None  # noqa: F841


def _window_of(ctx: _PathCtx, k: int, a: int, prev: int, anchor_pos: int, env, key, memo: bool):
    """(names bound so far, `_window`) for pattern node `k`; with `memo`,
    remembered per path (`_PathCtx.windows`) for rules that share a prefix."""
    if not memo:
        bound = _bound_names(env) if k > 0 else set()
        return bound, _window(ctx, k, a, prev, anchor_pos, bound, key)
    wkey = (k == a, k > a, prev, anchor_pos, id(env), key)
    got = ctx.windows.get(wkey)
    if got is not None and got[0] is env:
        return got[1], got[2]
    bound = _bound_names(env) if k > 0 else set()
    window = _window(ctx, k, a, prev, anchor_pos, bound, key)
    ctx.windows[wkey] = (env, bound, window)  # (holds the env: its id stays its own)
    return bound, window


def _fire_once(tr, tid, node: Node, q: int, env, scope: _Scope, ctx: _PathCtx):
    """`_fire`; with a transition id `tid`, remembered per path
    (`_PathCtx.fired`): a fire is a function of the transition, the node,
    its position and the bindings so far, save for a rank proof
    (`_PathCtx.proofs`), which is never remembered."""
    if tid is None:
        return _fire(tr, node, q, env, scope, ctx)
    key = (tid, q, id(env))
    hit = ctx.fired.get(key)
    if hit is not None and hit[0] is env:
        return hit[1]
    proofs = ctx.proofs
    res = _fire(tr, node, q, env, scope, ctx)
    if ctx.proofs == proofs:
        ctx.fired[key] = (env, res)  # (holds the env: its id stays its own)
    return res


def _at(nodes, p: _Partial) -> tuple[Node, ...]:
    return tuple(nodes[i] for i in p.positions)


def _watching(dbg: _Debug, nodes, p: _Partial, q: int | None) -> bool:
    if dbg.line is None:
        return False
    return (q is not None and dbg.at(nodes[q])) or any(dbg.at(nodes[i]) for i in p.positions)


def _report_fail(cr, scope, ctx, anchor_pos, k, pos, why: Fail, p: _Partial, rec, dbg: _Debug, file) -> None:
    """A node of the right kind failed pattern node `k` (near misses, debug)."""
    nodes = ctx.nodes
    if rec is not None:
        rec.event(cr, scope, nodes[anchor_pos], _at(nodes, p), k, 1, why, node=nodes[pos], stage="forward")
    if dbg.line is not None and dbg.at(nodes[pos]):
        dbg.say(file, cr.name, f"pattern node {k} ({cr.forward.transitions[k].test.describe()}) at path node {pos}: "
                f"{why.reason}")


def _report_kill(cr, scope, ctx, anchor_pos, k, q, bound, p: _Partial, rec, dbg: _Debug, file) -> None:
    """Path node `q` writes a name bound before: the partial match ends."""
    nodes = ctx.nodes
    if _watching(dbg, nodes, p, q):
        dbg.say(file, cr.name, f"path node {q} (line {nodes[q].stmt.lines[0]}) writes "
                f"{sorted(ctx.writes[q] & bound)}, bound before: kills the partial match at pattern node {k}")
    if rec is not None:
        rec.event(cr, scope, nodes[anchor_pos], _at(nodes, p), k, 0.5,
                  Fail("line {} writes {} again", nodes[q].stmt.lines[0],
                       ", ".join(f"`{n}`" for n in sorted(ctx.writes[q] & bound))),
                  node=nodes[q], stage="kill")


def _report_end(cr, scope, ctx, anchor_pos, k, p: _Partial, rec, dbg: _Debug, file) -> None:
    """No later node of the path matched pattern node `k`."""
    nodes = ctx.nodes
    if _watching(dbg, nodes, p, None):
        dbg.say(file, cr.name, f"pattern node {k} ({cr.forward.transitions[k].test.describe()}): "
                "no later node of the path matched")
    if rec is not None:
        rec.event(cr, scope, nodes[anchor_pos], _at(nodes, p), k, 0, None, stage="forward")


# ---------------------------------------------------------------------------
# Scope: init bindings and constraints.


def _init_slots(test: InitTest, b: InitBinding) -> tuple[dict[str, Value], tuple[str, ...]] | Fail:
    if test.kind == "subscript":
        if b.kind != "subscript" or not b.args:
            return Fail("self.{} is not a subscript of {}", b.attr, test.type)
        return {"sub": b.args[0]}, ("sub",)
    if b.kind != "call":
        return Fail("self.{} is not built by a call", b.attr)
    if test.signature is not None:
        # `**dd` of a local dict literal is expanded by the analysis; any other
        # `**kw` / `*a` leaves the binding unknowable (a near miss with the reason)
        norm = signatures.normalize(test.signature, b.args, b.kwargs)
        if norm is None:
            hidden = _unknown_args(test, b)  # a Fail is falsy: no `or` here
            return hidden if hidden is not None else Fail(
                "the arguments of self.{} do not fit the signature of {}", b.attr, test.signature)
        given = signatures.explicit_params(test.signature, b.args, b.kwargs) or ()
        return {f"p:{k}": v for k, v in norm.items()}, tuple(f"p:{k}" for k in given)
    slots = {f"in{i}": v for i, v in enumerate(b.args)}
    for k, v in b.kwargs:
        slots[f"kw:{k}"] = v
    return slots, tuple(slots)


def _unknown_args(test: InitTest, b: InitBinding) -> Fail | None:
    """Why arguments unpacked with `**d` / `*a` make the binding unknowable."""
    hidden = [v.text for k, v in b.kwargs if k == "**"] + [v.text[1:] for v in b.args if v.text.startswith("*")]
    if not hidden:
        return None
    needed = [a.slot.split(":", 1)[1] for a in test.actions if a.slot.startswith(("p:", "kw:"))]
    what = f": {', '.join(needed)} cannot be proved" if needed else ""
    stars = ", ".join(f"**{h}" if any(k == "**" and v.text == h for k, v in b.kwargs) else f"*{h}" for h in hidden)
    return Fail("self.{} = {}(..., {}): the arguments behind `{}` are unknown{}",
                b.attr, (b.type or "").rsplit(".", 1)[-1], stars, stars, what)


def _match_binding(test: InitTest, b: InitBinding, env: dict[str, _B]) -> dict[str, _B] | Fail:
    if b.type != test.type:
        return Fail("self.{} is {}, the rule needs {}", b.attr, b.type or b.unresolved, test.type)
    got = _init_slots(test, b)
    if isinstance(got, Fail):
        return got
    slots, given = got
    looped = test.var is not None and b.container is not None and env.get(test.var) == _B(b.container, "layer")
    if test.var is not None and not looped:  # (a loop over the container calls its elements)
        env = _unify(ir.Var(test.var), _B(b.attr, "layer"), env)
        if isinstance(env, Fail):
            return env
    used = {a.slot for a in test.actions}
    if test.signature is None and not test.rest and any(s.startswith("in") and s not in used for s in given):
        return Fail("self.{} is built with more positional arguments than the pattern", b.attr)
    for a in test.actions:
        value = slots.get(a.slot)
        if value is None:
            env = _unify(a.term, _ABSENT, env) if isinstance(a.term, ir.Var) else Fail("argument {} is missing", a.slot)
        else:
            bound = _bind_value(value, None)
            if a.slot.startswith("p:") and a.slot not in given:
                bound = replace(bound, defaulted=True)
            env = _unify(a.term, bound, env)
        if isinstance(env, Fail):
            return Fail("init of self.{}: {}: {}", b.attr, a.describe(), env.reason)
    return env


def _match_init(cr: CompiledRule, scope: _Scope, env: dict[str, _B]) -> Iterator[tuple[dict[str, _B], dict[str, InitBinding]]] | Fail:
    """Every (env, init_nodes) the init set-matcher allows (order-insensitive)."""
    tests = cr.init.tests
    fixed: dict[int, list[InitBinding]] = {}
    for i, test in enumerate(tests):
        if test.var is not None and test.var in env and env[test.var].kind == "layer":
            attr = env[test.var].text
            every = scope.init_by_attr.get(attr, ())
            same = [b for b in every if b.type == test.type]
            if not same and every and all(b.type in _LOOPED for b in every):
                # `for layer in self.layers: layer(x)`: the node calls every
                # element of the container, so each must be of the type (and agree)
                same = [b for bs in scope.init_by_attr.values() for b in bs if b.container == attr]
                if not same or any(b.type != test.type for b in same):
                    return Fail("the elements of self.{} are not all of type {}", attr, test.type)
            if not same:
                return Fail("self.{} has no init binding of type {}", attr, test.type)
            fixed[i] = same
    # Fixed tests first (they are determined), then the free ones.
    order = sorted(range(len(tests)), key=lambda i: i not in fixed)
    all_bindings = [b for bs in scope.init_by_attr.values() for b in bs]

    def go(j: int, env: dict[str, _B], used: dict[str, InitBinding], reasons: list[Fail]):
        if j == len(order):
            yield env, used
            return
        i = order[j]
        test = tests[i]
        if i in fixed:
            # Every binding of the test's type must agree (conditional init).
            cur = env
            for b in fixed[i]:
                cur = _match_binding(test, b, cur)
                if isinstance(cur, Fail):
                    reasons.append(cur)
                    return
            key = test.var or f"#{i}"
            yield from go(j + 1, cur, {**used, key: fixed[i][0]}, reasons)
            return
        taken = {b.attr for b in used.values()}
        for b in all_bindings:
            if b.attr in taken or b.type != test.type:
                continue
            res = _match_binding(test, b, env)
            if isinstance(res, Fail):
                reasons.append(res)
                continue
            yield from go(j + 1, res, {**used, test.var or f"#{i}": b}, reasons)

    reasons: list[Fail] = []
    results = list(go(0, env, {}, reasons))
    if not results:
        return reasons[0] if reasons else Fail("no init binding of type {}", ", ".join(t.type for t in tests))
    return iter(results)


def _alternative_binding(rule: ir.Rule, scope: _Scope, init_nodes: dict[str, InitBinding]) -> codes.Reason | None:
    """Why a matched binding may not be what forward calls (S216), or None.

    Every other binding of a matched attribute must be of the same kind and
    type (`_match_init` unified those), always overwritten by the matched
    one, of kind `other` under a rule with `when` (the module doc's
    conditional init policy: a config callable the `else` branch keeps; the
    rewriter checks that `when` excludes it) or one that rewrites nothing, or
    `None` / `nn.Identity()` for a layer the rewrite removes (the guarded
    kind rewrites those under the init guard, or refuses them).  Any other
    value of kind `other` (`self.bn = norm_layer`, an argument of unknown
    type) is refused: forward would call it where the rewrite assumes the
    matched layer.  When the rule's init target takes the layer itself
    (`ConvBn2d($conv, $bn)`), the rewriter copies its statement's whole
    right-hand side, so a binding from the same statement (`a if c else b`)
    must be of the same type too."""
    copied = _copied_vars(rule)
    removed = removed_layer_vars(rule)
    # a rule that rewrites nothing (detect-only) or keeps the original under `when`
    keeps = rule.option("when") is not None or all(item is None or item.target is None
                                                   for item in (rule.init, rule.forward))
    for var, b in init_nodes.items():
        for other in scope.init_by_attr.get(b.attr, ()):
            if other is b or (other.kind == b.kind and other.type == b.type):
                continue
            if var in removed and is_neutral(other):
                continue  # the guarded kind (dslc.rewrite.kinds.guarded) rewrites under the init guard, or refuses
            line = other.stmt.lines[0] if other.stmt is not None else 0
            if var in copied and b.stmt is not None and other.stmt == b.stmt:
                return codes.reason(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr} = ... if ... else ...` (line {line}) builds a `{_short_type(b)}` on one branch "
                    f"only: the other is {_binding_text(other)}"))
            if overwritten_by(other, b) or (other.kind == "other" and keeps):
                continue
            if excluded_by_guards(rule, b, other):
                continue  # the rewriter confines the rewrite to `b`'s guards (`dslc.rewrite.initguard`)
            where = f" where `{' and '.join(str(g) for g in other.guards)}`" if other.guards else ""
            if is_neutral(other):
                return codes.reason(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr}` is also bound to {_binding_text(other)} (line {line}){where}, and the rewrite "
                    f"changes it as if the `{_short_type(b)}` were always there (only a layer the rule removes is "
                    f"rewritten under its init guard)"))
            if other.kind == "other":
                return codes.reason(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr}` is also bound to {_binding_text(other)} (line {line}){where}, a value of "
                    f"unknown type: forward would call it in place of the `{_short_type(b)}`, and the rewrite "
                    f"assumes the `{_short_type(b)}` everywhere"))
            return codes.reason(codes.S_INIT_ALTERNATIVE, (
                f"`self.{b.attr}` is also bound to {_binding_text(other)} (line {line}){where}, "
                f"which forward would call in place of the `{_short_type(b)}`"))
    return None


def excluded_by_guards(rule: ir.Rule, b: InitBinding, other: InitBinding) -> bool:
    """`other` never runs where `b` does: z3 refutes `b`'s guards together
    with `other`'s (`if config.num_groups == 1: self.dense = nn.Linear(...)`
    `else: self.dense = GroupedLinearLayer(...)`), both in the same method.
    Only for a rule that changes `__init__` and leaves forward as it is
    (biased_gelu): its rewrite can then be confined to `b`'s guards, as
    `when` confines it (`dslc.rewrite.initguard`), and where they fail the
    original code runs.  A rule that edits forward would run the new forward
    on the other binding's layer."""
    fwd, init = rule.forward, rule.init
    if fwd is None or fwd.target is None or tuple(fwd.target) != tuple(fwd.source):
        return False
    if init is None or init.target is None or init.target == init.source:
        return False
    o, s = other.stmt, b.stmt
    if not b.guards or o is None or s is None or (o.owner, o.method) != (s.owner, s.method):
        return False
    from dslc.analysis import guards

    return guards.consistent(list(b.guards) + list(other.guards)) is guards.Answer.REFUTED


def removed_layer_vars(rule: ir.Rule) -> set[str]:
    """The init variables whose layer the rewrite removes: called by the
    forward source, absent from both targets (conv_batchnorm's `$bn`)."""
    if rule.init is None or rule.init.target is None or rule.forward is None or rule.forward.target is None:
        return set()
    kept = {o.name for pn in rule.init.target for o in pn.outputs}
    kept |= {pn.layer_var for pn in rule.forward.target if pn.layer_var}
    return {pn.layer_var for pn in rule.forward.source if pn.layer_var and pn.layer_var not in kept}


def is_neutral(b: InitBinding) -> bool:
    """`None`, or an `nn.Identity(...)`: a binding under which forward either
    skips the layer (an `is not None` guard) or passes its input through."""
    if b.kind == "other":
        return len(b.args) == 1 and b.args[0].is_const and b.args[0].const is None
    return b.kind == "call" and b.type == "torch.nn.Identity" and b.container is None


def _copied_vars(rule: ir.Rule) -> set[str]:
    """The init variables the rule's init target passes as arguments (the
    rewriter writes their constructor expressions there)."""
    item = rule.init
    if item is None or item.target is None:
        return set()
    return {t.name for pn in item.target for t in (*pn.args, *(v for _, v in pn.kwargs)) if isinstance(t, ir.Var)}


def overwritten_by(other: InitBinding, b: InitBinding) -> bool:
    """`other` always runs before `b` and `b` always runs after it: same
    method, earlier line, in the blocks of `b` (so in the same loop, if any),
    under at least `b`'s guards."""
    o, s = other.stmt, b.stmt
    if o is None or s is None or (o.owner, o.method) != (s.owner, s.method) or o.lines[1] >= s.lines[0]:
        return False
    return o.blocks[:len(s.blocks)] == s.blocks and set(b.guards) <= set(other.guards)


def _short_type(b: InitBinding) -> str:
    return (b.type or b.unresolved or "layer").rpartition(".")[2]


def _binding_text(b: InitBinding) -> str:
    if b.kind == "other":
        return f"`{b.args[0].text}`" if b.args else "another value"
    return f"`{_short_type(b)}(...)`"


# Containers a `for layer in self.<attr>:` loop calls the elements of.
_LOOPED = ("torch.nn.ModuleList", "torch.nn.Sequential")


def _check_where(rule: ir.Rule, env: dict[str, _B]) -> str | None | Fail:
    """None: all hold; a string: a constraint needs an unknown static fact."""
    for b in env.values():
        if b.kind == "unknown":
            return b.text
    for c in rule.where:
        b = env.get(c.var.name)
        if b is None or b.kind == "absent":
            return f"where {c.var} {c.op} ...: {c.var} has no value at this location"
        if c.spelled_as(b.kind, b.text):
            continue  # `where $_f32 in (torch.float32, ...)`: a listed spelling
        if b.kind != "const":
            return f"where {c.var} {c.op} {_vals(c)}: {c.var} is {b.text}, not a static value"
        hit = any(_const_eq(b.value, v) for v in c.values)
        if c.op in ("==", "in") and not hit or c.op in ("!=", "not in") and hit:
            return Fail("where {} {} {}: {} is {!r}", c.var, c.op, _vals(c), c.var, b.value)
    return None


def _vals(c: ir.Constraint) -> str:
    vals = tuple(v.text if isinstance(v, ir.Code) else repr(v) for v in c.values)
    return vals[0] if c.op in ("==", "!=") else "(" + ", ".join(vals) + ")"


# ---------------------------------------------------------------------------
# The file driver.


@dataclass
class _Found:
    rule: CompiledRule
    scope: _Scope
    path_index: int
    nodes: tuple[Node, ...]
    env: dict[str, _B]
    init_nodes: dict[str, InitBinding]
    extras: dict[int, tuple]
    conflict: str | None
    paths: list[int] = field(default_factory=list)
    guarded: tuple | None = None  # `dslc.match.optional.pair_guarded`


def _node_id(node: Node) -> tuple:
    if node.kind == "layer" and node.attr and "." in node.attr:
        # An element of an nn.Sequential: the location is the element (its
        # init), whichever call of the container reached it.
        return ("sequential", node.stmt.owner, node.attr, node.type)
    s = node.stmt
    return (s.owner, s.method, s.index_path, s.lines, node.expr_span, node.kind, node.op, node.attr, node.type)


def _rewritten_inits(f) -> set:
    """Init bindings a match edits: none when the rule's init target is its
    source (the init item only names the layer the forward calls, e.g. the
    attention Dropout of rulepacks/sdpa.adr), so two such matches that share
    an inherited `__init__` do not overlap."""
    item = f.rule.rule.init
    if item is not None and item.target == item.source:
        return set()
    return {_init_id(b) for b in f.init_nodes.values()}


def _init_id(b: InitBinding) -> tuple:
    s = b.stmt
    return (b.attr, s.owner if s else None, s.lines if s else None, s.index_path if s else None)


def _overlaps(f: _Found, kept: list[_Found], first_line) -> tuple[codes.Reason | None, tuple]:
    """The overlap of `f` with the matches kept before it (earlier rules
    first), and the `overlap_key`s of those it yields to."""
    ids = {_node_id(n) for n in f.nodes}
    inits = _rewritten_inits(f)
    blockers = [k for k in kept if ids & {_node_id(n) for n in k.nodes}
                or (k.rule.rank != f.rule.rank and inits & _rewritten_inits(k))]
    if not blockers:
        return None, ()
    k = blockers[0]
    return (codes.reason(codes.S_OVERLAP_RULE, f"overlaps {k.rule.name} at line {first_line(k)[0]}"),
            tuple(ir.overlap_key(b.rule.rule, b.nodes, b.init_nodes) for b in blockers))


def _to_bound(b: _B) -> ir.Bound | None:
    if b.kind in ("absent", "unknown", "rank"):
        return None
    if b.kind == "const":
        return ir.Bound(b.text, "const", b.value, defaulted=b.defaulted)
    return ir.Bound(b.text, b.kind, defaulted=b.defaulted)  # name | expr | layer


def _group_init(cls: ClassFacts | None) -> dict[str, list[InitBinding]]:
    out: dict[str, list[InitBinding]] = {}
    if cls is not None:
        for b in cls.init:
            out.setdefault(b.attr, []).append(b)
    return out


def _forward_references(cls: ClassFacts) -> set[str]:
    """Methods forward passes as values (`apply_chunking_to_forward(self.ff_chunk, ...)`)."""
    out: set[str] = set()
    seen: set[int] = set()  # (the paths share their nodes)
    for path in cls.paths:
        for node in path.nodes:
            if id(node) in seen:
                continue
            seen.add(id(node))
            for name in node.reads:
                if name.startswith("self."):
                    out.add(name[5:])
    return out


class _ClassMemos(NamedTuple):
    """What the scopes of one class work out, kept for every pack of a run
    (each matches the same classes, and this depends on the class alone)."""

    init: dict[str, list[InitBinding]]  # `_group_init`
    nodes: dict  # `_Scope.node_memo`
    slots: dict  # `_Scope.slots_memo`
    names: dict  # id(path set) -> (the path set, its `_scope_names`)


_CLASSES = NodeMemo(limit=512)  # class facts -> its `_ClassMemos`


def _class_memos(cls: ClassFacts) -> _ClassMemos:
    got = _CLASSES.get(cls)
    if got is None:
        got = _ClassMemos(_group_init(cls), {}, {}, {})
        _CLASSES.put(cls, got)
    return got


def _scopes(facts: FileFacts) -> Iterator[tuple[_Scope, tuple[Path, ...]]]:
    for cls in facts.classes:
        init, nodes, slots, _ = _class_memos(cls)
        yield _Scope(cls, init, None, True, node_memo=nodes, slots_memo=slots), cls.paths
        referenced = _forward_references(cls) if cls.other_paths else set()
        for method, paths in cls.other_paths:
            # A helper forward hands to a function (transformers' chunking)
            # runs as part of forward: rules with init items apply there too.
            yield _Scope(cls, init, f"method:{method}", method in referenced, node_memo=nodes, slots_memo=slots), paths
    for name, paths in facts.functions:
        yield _Scope(None, {}, f"function:{name}", False), paths


SEQUENTIAL = "torch.nn.Sequential"


def _sequential_children(attr: str, scope: _Scope) -> list[InitBinding] | None:
    """The element bindings `attr.0`, `attr.1`, ... of an `nn.Sequential`."""
    bindings = scope.init_by_attr.get(attr, ())
    if len(bindings) != 1 or bindings[0].type != SEQUENTIAL:
        return None
    children = []
    i = 0
    while True:
        child = scope.init_by_attr.get(f"{attr}.{i}")
        if not child:
            break
        if len(child) != 1 or child[0].container != attr:
            return None
        children.append(child[0])
        i += 1
    return children or None


def _expand_sequential(path: Path, scope: _Scope) -> Path:
    """Replace each call of an `nn.Sequential` attribute by its elements.

    `self.seq(x) -> y` with elements `seq.0 .. seq.n` becomes the chain
    `self.seq.0(x) -> seq.0:out; ...; self.seq.n(...) -> y`: layer nodes whose
    `attr` is `<seq>.<i>` and whose stmt/expr_span are those of the call of
    the container (the intermediate names contain `:` and so can never clash
    with a Python name).
    """
    if scope.has_sequential is None:
        scope.has_sequential = any(b.type == SEQUENTIAL for bs in scope.init_by_attr.values() for b in bs)
    if not scope.sequential or scope.cls is None or not scope.has_sequential:
        return path
    nodes: list[Node] = []
    changed = False
    for node in path.nodes:
        children = None
        if node.kind == "layer" and node.attr and len(node.inputs) == 1 and not node.kwargs:
            children = _sequential_children(node.attr, scope)
        if not children:
            nodes.append(node)
            continue
        changed = True
        prev = node.inputs
        for i, child in enumerate(children):
            last = i == len(children) - 1
            outs = node.outputs if last else (f"{node.attr}.{i}:out",)
            nodes.append(Node(
                "layer", node.stmt, type=child.type, unresolved=child.unresolved, attr=child.attr,
                inputs=prev, outputs=outs,
                reads=(node.reads if i == 0 else frozenset({prev[0].text})) | {f"self.{child.attr}"},
                writes=node.writes if last else frozenset(outs),
                inlined_from=node.inlined_from, expr_span=node.expr_span,
            ))
            prev = (Value(outs[0], "name"),)
    return Path(path.guards, tuple(nodes)) if changed else path


def _check_ranks(scope: _Scope, paths, found: list[_Found]) -> None:
    """A match that read `dim=3` as the last dim proved the rank on its own
    path; the rewrite edits the call on every path through it, so the rank
    must be proved on each of them, else the match is reported skipped."""
    ctxs: dict[int, _PathCtx] = {}
    for f in found:
        marks = [b.value for b in f.env.values() if b.kind == "rank"]
        if not marks or f.conflict:
            continue
        for node, value, rank in marks:
            key = _node_id(node)
            for pi, path in enumerate(paths):
                if pi not in ctxs:
                    ctxs[pi] = _PathCtx(_expand_sequential(path, scope), scope)
                ctx = ctxs[pi]
                if ctx.positions is None:
                    ctx.positions = {}
                    for i, n in enumerate(ctx.nodes):
                        ctx.positions.setdefault(_node_id(n), i)
                q = ctx.positions.get(key)
                if q is not None and _rank_of_value(value, q, ctx, 0) != rank:
                    f.conflict = (f"`{value.text}` at line {node.stmt.lines[0]} has rank {rank} (so its last dim "
                                  f"is the one given) only on some paths through the call")
                    break
            if f.conflict:
                break


def _match_paths(compiled: CompiledPack, scope: _Scope, paths, file: str, dbg: _Debug, stats: dict | None, out: list[_Found],
                 rec=None, over: list | None = None) -> None:
    start = len(out)
    scope.fires, scope.max_fires = 0, MAX_MATCH_FIRES
    try:
        _match_paths_run(compiled, scope, paths, file, dbg, stats, out, rec)
    except MatchBudget:
        # sound: the path set is left unmatched, as if no rule fitted it
        del out[start:]
        scope.budget_line = min((p.nodes[0].stmt.lines[0] for p in paths if p.nodes), default=0)
        if over is not None:
            over.append(scope)
        if rec is not None and hasattr(rec, "over_budget"):
            rec.over_budget(scope)
        return
    _check_ranks(scope, paths, out[start:])


def _match_paths_run(compiled: CompiledPack, scope: _Scope, paths, file: str, dbg: _Debug, stats: dict | None,
                     out: list[_Found], rec=None) -> None:
    """Every rule at every anchor of every path, in that order.  A run that
    only looked at a prefix another path of the set shares (`_Trace`) is
    replayed there: the same events, partial matches and fired transitions
    (counted against the budget as if run), not run again."""
    table = _rules(compiled)
    # a rule whose names the scope does not all hold cannot match there (`_scope_names`);
    # near misses and the debug log want every attempt, so they run them all
    fits = None
    if rec is None and dbg.line is None:
        have = _scope_names(scope, paths)
        fits = [cr.names <= have and (scope.class_scoped or not table.class_scoped[r])
                for r, cr in enumerate(compiled.rules)]
        if not any(fits):
            return  # no rule of the pack can match here: its paths are not walked
    # a node's index keys -> the rules anchored there that apply to the scope, in order
    by_keys: dict[frozenset, list[int]] = {}
    prefixes = _Prefixes()
    # (rule, anchor position) -> {hi: {prefix id of nodes[0..hi]: trace}}
    done: dict[tuple[int, int], dict] = {}
    memo = dbg.line is None and len(paths) > 1  # (the debug log is per path)
    ctx = None
    for pi, path in enumerate(paths):
        path = _expand_sequential(path, scope)
        if memo:
            common, ids = prefixes.ids(path.nodes)
            ctx = _PathCtx(path, scope, ctx, common)
        else:
            ctx, ids = _PathCtx(path, scope), ()
        for pos, node in enumerate(ctx.nodes):
            if node.kind == "stmt":
                continue
            cands = by_keys.get(ctx.keys[pos])
            if cands is None:
                cands = by_keys[ctx.keys[pos]] = [r for r in sorted(_anchored(compiled, ctx.keys[pos]))
                                                  if (fits[r] if fits is not None else
                                                      scope.class_scoped or not table.class_scoped[r])]
            if dbg.line is not None and dbg.at(node):
                names = ", ".join(compiled.rules[r].name for r in cands) or "no rule"
                dbg.say(file, "-", f"path {pi} node {pos} ({node.kind} {node.type or node.op or ''}) keys {sorted(ctx.keys[pos])}: anchors {names}")
            for r in cands:
                cr = compiled.rules[r]
                if stats is not None:
                    stats["attempts"] = stats.get("attempts", 0) + 1
                if not memo:
                    for p in _run(cr, ctx, pos, scope, dbg, file, rec, None, table, r):
                        _complete(cr, scope, pi, ctx, p, file, dbg, out, rec)
                    continue
                runs = done.get((r, pos))
                trace = None
                if runs is not None:
                    trace = next((t for hi, at in runs.items() if hi < len(ids) and (t := at.get(ids[hi]))), None)
                if trace is not None and scope.fires + trace.fires <= scope.max_fires:
                    scope.fires += trace.fires
                    for item in trace.items:
                        if item[0] == "y":
                            _complete(cr, scope, pi, ctx, item[1], file, dbg, out, rec)
                        else:
                            rec.event(*item[1], **item[2])
                    continue
                trace = _Trace(pos)
                fires, proofs = scope.fires, ctx.proofs
                for p in _run(cr, ctx, pos, scope, dbg, file, rec, trace, table, r):
                    trace.items.append(("y", p))
                    _complete(cr, scope, pi, ctx, p, file, dbg, out, rec)
                trace.fires = scope.fires - fires
                if trace.hi < len(ids) and ctx.proofs == proofs:
                    done.setdefault((r, pos), {}).setdefault(trace.hi, {})[ids[trace.hi]] = trace


def _scope_names(scope: _Scope, paths) -> frozenset[str]:
    """The last name components a transition of a rule can fire on in this
    scope (`CompiledRule.names` are the rule's): the types and unresolved
    spellings of its path nodes and of every init binding (a layer test
    passes on a binding's type; a sequence's elements are bindings).
    Remembered per path set of a class (`_class_memos`): every pack asks."""
    if scope.cls is None:
        return _names_of(scope, paths)
    known = _class_memos(scope.cls).names
    got = known.get(id(paths))
    if got is None or got[0] is not paths:
        got = known[id(paths)] = (paths, _names_of(scope, paths))
    return got[1]


def _names_of(scope: _Scope, paths) -> frozenset[str]:
    out: set[str] = set()
    for bindings in scope.init_by_attr.values():
        for b in bindings:
            if b.type:
                out.add(b.type.rsplit(".", 1)[-1])
            if b.unresolved:
                out.add(b.unresolved.rsplit(".", 1)[-1])
    seen: set[int] = set()
    for path in paths:
        for node in path.nodes:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.type:
                out.add(node.type.rsplit(".", 1)[-1])
            if node.unresolved:
                out.add(node.unresolved.rsplit(".", 1)[-1])
    return frozenset(out)


def _anchored(compiled: CompiledPack, keys: frozenset) -> list[int]:
    """The rules anchored at a node with index keys `keys` (and the unanchored ones)."""
    cands: list[int] = []
    for key in keys:
        for r in compiled.candidates(key):
            if r not in cands:
                cands.append(r)
    cands.extend(r for r in compiled.unanchored if r not in cands)
    return cands


def _complete(cr: CompiledRule, scope: _Scope, pi: int, ctx: _PathCtx, p: _Partial, file: str, dbg: _Debug, out: list[_Found],
              rec=None) -> None:
    nodes = tuple(ctx.nodes[q] for q in p.positions)
    watch = dbg.line is not None and any(dbg.at(n) for n in nodes)
    results: list[tuple[dict, dict]] = [(p.env, {})]
    if cr.init is not None:
        got = _match_init(cr, scope, p.env)
        if isinstance(got, Fail):
            if watch:
                dbg.say(file, cr.name, f"forward matched, init did not: {got.reason}")
            if rec is not None:
                rec.event(cr, scope, nodes[cr.forward.anchor_index], nodes, len(nodes), 2, got, stage="init")
            return
        results = list(got)
    unsure = None
    for env, init_nodes in results:
        verdict = _check_where(cr.rule, env)
        if isinstance(verdict, Fail):
            if watch:
                dbg.say(file, cr.name, verdict.reason)
            if rec is not None:
                rec.event(cr, scope, nodes[cr.forward.anchor_index], nodes, len(nodes), 3, verdict, stage="where")
            continue
        if verdict is None:
            verdict = _alternative_binding(cr.rule, scope, init_nodes)
        if verdict is not None:
            unsure = unsure or (env, init_nodes, verdict)  # a solution without unknowns wins
            continue
        out.append(_Found(cr, scope, pi, nodes, env, init_nodes, p.extras, verdict, [pi]))
        return  # one init solution per forward match
    if unsure is not None:
        env, init_nodes, verdict = unsure
        out.append(_Found(cr, scope, pi, nodes, env, init_nodes, p.extras, verdict, [pi]))


def _match_init_only(cr: CompiledRule, facts: FileFacts, out: list[_Found], rec=None) -> None:
    """Module-replacement rules: an instantiation whose layer forward calls."""
    for cls in facts.classes:
        scope = _Scope(cls, _group_init(cls), None, True)
        got = _match_init(cr, scope, {})
        if isinstance(got, Fail):
            if rec is not None:
                rec.event(cr, scope, None, (), 0, 2, got, stage="init")
            continue
        for env, init_nodes in got:
            attrs = {b.attr for b in init_nodes.values()}
            paths = [i for i, path in enumerate(cls.paths) if any(n.kind == "layer" and n.attr in attrs for n in path.nodes)]
            if not paths:
                if rec is not None:
                    rec.event(cr, scope, None, (), 0, 1, Fail("forward never calls self.{}", ", self.".join(sorted(attrs))),
                              stage="forward")
                continue
            verdict = _check_where(cr.rule, env)
            if isinstance(verdict, Fail):
                if rec is not None:
                    rec.event(cr, scope, None, (), 0, 3, verdict, stage="where")
                continue
            if verdict is None:
                verdict = _alternative_binding(cr.rule, scope, init_nodes)
            out.append(_Found(cr, scope, paths[0], (), env, init_nodes, {}, verdict, paths))


def match_file(compiled: CompiledPack, facts: FileFacts, *, file: str | None = None, stats: dict | None = None,
               sequential: bool = True, recorder=None, over: list | None = None) -> list[ir.Match]:
    """All matches of the compiled rules in one analysed file (see module doc).

    `stats`, when given, counts `attempts` (rule runs started at an anchor
    node) — the measure of the combined matcher's selectivity.
    `sequential=False` leaves `nn.Sequential` calls unexpanded (for a
    consumer that cannot rewrite inside containers).
    `recorder`, when given, is told of every failed attempt (falsy `Fail`
    values with their reasons; `dslc.rewrite.nearmiss` keeps the deepest per place):
    the near-miss report.  Without it nothing is recorded.
    `over`, when given, gets each `_Scope` whose matching ran out of budget
    (`MAX_MATCH_FIRES`; `over_budget_message` words its warning).
    """
    file = file or facts.path
    dbg = _Debug(file)
    found: list[_Found] = []
    scope_paths: dict[int, tuple] = {}
    for scope, paths in _scopes(facts):
        scope_paths[id(scope)] = paths
        scope.sequential = sequential
        _match_paths(compiled, scope, paths, file, dbg, stats, found, recorder, over)
    for r in compiled.init_only:
        _match_init_only(compiled.rules[r], facts, found, recorder)
    if recorder is not None and hasattr(recorder, "matched"):
        for f in found:  # before step 5 merges a subclass's match into its base's
            recorder.matched(f.rule, f.scope, f.nodes)

    # Step 5: one Match per location (rule, statements, init bindings);
    # 5b: optional nodes in `if m is not None:` (dslc.match.optional).
    found = pair_guarded(_merge_locations(found), _node_id, lambda f: scope_paths.get(id(f.scope), ()))

    # Step 6: overlaps, deterministic order.
    def first_line(f: _Found) -> tuple:
        lines = [n.stmt.lines[0] for n in f.nodes] + [b.stmt.lines[0] for b in f.init_nodes.values() if b.stmt]
        return (min(lines) if lines else 0, tuple(sorted(lines)))

    ordered = sorted(found, key=lambda f: (f.rule.rank, first_line(f)))
    kept: list[_Found] = []
    matches = []
    for f in ordered:
        conflict = f.conflict
        yields_to: tuple = ()
        if conflict is not None and not isinstance(conflict, codes.Reason):
            conflict = codes.reason(codes.S_NOT_STATIC, conflict)
        if conflict is None:
            conflict, yields_to = _overlaps(f, kept, first_line)
            if conflict is None:
                kept.append(f)
        bindings = {}
        for var, b in f.env.items():
            bound = _to_bound(b)
            if bound is not None:
                bindings[var] = bound
        function = f.nodes[0].stmt.method if f.nodes else "__init__"
        if f.scope.paths_of and f.scope.paths_of.startswith("function:") and not f.nodes:
            function = f.scope.paths_of.split(":", 1)[1]
        matches.append(ir.Match(
            rule=f.rule.rule,
            file=file,
            class_name=f.scope.cls.name if f.scope.cls is not None else None,
            function=function,
            nodes=f.nodes,
            init_nodes=dict(f.init_nodes),
            bindings=bindings,
            paths=tuple(sorted(f.paths)),
            conflict=conflict,
            yields_to=yields_to,
            extras=dict(f.extras),
            paths_of=f.scope.paths_of,
            guarded=f.guarded,
        ))
    if compiled.class_rules:
        matches.extend(_class_matches(compiled, facts, file))
    return matches


def _merge_locations(found: list[_Found]) -> list[_Found]:
    """One `_Found` per location (rule, statements, init bindings), with the paths of all."""
    merged: dict[tuple, _Found] = {}
    for f in found:
        key = (f.rule.index, tuple(_node_id(n) for n in f.nodes), tuple(sorted(_init_id(b) for b in f.init_nodes.values())))
        if key in merged:
            m = merged[key]
            if m.scope.paths_of == f.scope.paths_of and m.scope.cls is f.scope.cls:
                for pi in f.paths:
                    if pi not in m.paths:
                        m.paths.append(pi)
        else:
            merged[key] = f
    return list(merged.values())


def _class_matches(compiled: CompiledPack, facts: FileFacts, file: str) -> list[ir.Match]:
    """Class items (`dslc.match.classmatch`): one match per class; where several
    rules match one class, the earlier rule wins."""
    from dslc.match.classmatch import match_class

    out: list[ir.Match] = []
    for cls in facts.classes:
        winner = None
        for r in compiled.class_rules:
            m = match_class(compiled.rules[r].rule, cls, file)
            if m is None:
                continue
            if winner is not None and m.conflict is None:
                m = replace(m, conflict=codes.reason(codes.S_OVERLAP_RULE,
                                                     f"overlaps {winner.rule.qualified_name} on class `{cls.name}`"))
            elif m.conflict is None:
                winner = m
            out.append(m)
    return out
