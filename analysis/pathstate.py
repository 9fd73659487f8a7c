"""Path state: the path prefixes being built and where the walk is.

`Alt` is one path prefix under construction (its nodes as a persistent
linked list, so that a fork is O(1); its guards, checked for feasibility
as they are added: step 4 of `extract.py`'s docstring).  `Frame` is the
function whose statements are being walked (the inlined callee's, inside an
inlined call).  `split_alts` forks paths on a condition; `merge_paths` is
the final merge (step 5).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from . import guards as guardlib
from .budget import ACTIVE
from .model import Guard, Node, Path
from .names import Scope


def split_alts(alts: list, text: str, lines: tuple[int, int]) -> tuple[list, list]:
    """Fork each alternative on a condition: (those where it holds, those
    where it does not), each keeping only the feasible forks."""
    yes, no = [], []
    pos, neg = Guard(text, False, lines), Guard(text, True, lines)
    for a in alts:
        b = a.copy()
        # both forks have a's nodes and guards: the versions and the related
        # guards are worked out once, for whichever fork asks first
        shared = [None, None]
        if a.add_guard(pos, shared):
            yes.append(a)
        if b.add_guard(neg, shared):
            no.append(b)
    return yes, no


class Alt:
    """A path prefix under construction.

    Nodes are a persistent linked list (`tail` = (node, previous tail,
    length)) so that splitting a path is O(1); `nodes` materialises it.
    `written` is shared by all the copies of one start: every name a node
    added to any of them writes (a name outside it has version 0 on each,
    without a walk).
    """

    __slots__ = ("guards", "keys", "tail", "status", "symbols", "optional_ifs", "written")

    def __init__(self):
        self.guards: tuple[Guard, ...] = ()
        self.keys: tuple = ()  # per guard: (text, negated, versions)
        self.tail = None
        self.status = "fall"
        self.symbols: frozenset[str] = frozenset()
        self.optional_ifs = 0  # call-free `if`s split on this path (`compound.if_statement`)
        self.written: set[str] = set()

    def copy(self) -> "Alt":
        new = Alt()
        new.guards, new.keys, new.tail = self.guards, self.keys, self.tail
        new.status, new.symbols, new.optional_ifs = self.status, self.symbols, self.optional_ifs
        new.written = self.written
        return new

    def add_node(self, node: Node) -> None:
        self.tail = (node, self.tail, (self.tail[2] if self.tail else 0) + 1)
        if node.writes:
            self.written.update(node.writes)

    @property
    def nodes(self) -> tuple[Node, ...]:
        out = []
        cur = self.tail
        while cur is not None:
            out.append(cur[0])
            cur = cur[1]
        return tuple(reversed(out))

    def dl_written(self, names: set[str]) -> dict[str, str]:
        """Those of `names` whose last writer on this path is a DL node (not a
        `stmt`), each with that node's op (`/`) or type (`torch.matmul`)."""
        found: dict[str, str] = {}
        left = set(names)
        cur = self.tail
        budget = ACTIVE[0]
        while cur is not None and left:
            if budget is not None:
                budget.walk += 1  # charged like `version`'s walk (`Budget.charge`)
            node = cur[0]
            hit = left & (set(node.writes) | set(node.outputs))
            if hit:
                if node.kind != "stmt":
                    for name in hit:
                        found[name] = (node.op if node.kind == "op" else node.type) or ""
                left -= hit
            cur = cur[1]
        return found

    def version(self, symbol: str) -> int:
        """Position of the last node that wrote `symbol` or a prefix of it
        (0: never written on this path): the symbol's version."""
        parts = symbol.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if prefixes.isdisjoint(self.written):
            return 0
        cur = self.tail
        while cur is not None:
            if cur[0].writes and not prefixes.isdisjoint(cur[0].writes):
                return cur[2]
            cur = cur[1]
        return 0

    def add_guard(self, guard: Guard, shared: list | None = None) -> bool:
        """Add a guard; False when the path became infeasible.  `shared`
        ([versions, related] or Nones, `split_alts`): the same guard text
        was or will be added to a copy of this path with the same nodes and
        guards, which computes these once."""
        syms = guardlib.symbols(guard)
        budget = ACTIVE[0]
        if budget is not None and not budget.ask(self.tail[2] if self.tail else 0, len(syms)):
            self.guards = self.guards + (guard,)
            self.keys = self.keys + ((guard.text, guard.negated, ()),)
            self.symbols = self.symbols | syms
            return True  # z3 had its share: assumed feasible (safety re-checks a match's guards)
        if shared is not None and shared[0] is not None:
            versions = shared[0]
        else:
            versions = tuple(sorted((s, v) for s in syms if (v := self.version(s))))
            if shared is not None:
                shared[0] = versions
        key = (guard.text, guard.negated, versions)
        for old in self.keys:
            if old[0] == key[0] and old[2] == key[2]:
                # the same condition, unchanged since: same way is redundant
                return old[1] == key[1]
        if not syms:  # a constant condition (`while True`): decide it alone
            self.guards = self.guards + (guard,)
            self.keys = self.keys + (key,)
            return guardlib.feasible_key((key,)) is not guardlib.Answer.REFUTED
        common = bool(syms & self.symbols)
        if shared is not None and shared[1] is not None:
            related = shared[1]
        else:
            related = tuple(k for k in self.keys if common and guardlib.symbols(k[0]) & syms)
            if shared is not None:
                shared[1] = related
        self.guards = self.guards + (guard,)
        self.keys = self.keys + (key,)
        self.symbols = self.symbols | syms
        if common:
            # only the guards that share a symbol can contradict the new one
            return guardlib.feasible_key(related + (key,)) is not guardlib.Answer.REFUTED
        return True


@dataclass(slots=True)
class Frame:
    """Where extraction is: the function that textually holds the statements."""

    method: str
    owner: str
    fn: ast.FunctionDef
    locals: frozenset[str]
    inlined_from: tuple = ()
    depth: int = 0
    local_funcs: dict = field(default_factory=dict)
    local_imports: dict = field(default_factory=dict)
    loop_layers: dict = field(default_factory=dict)
    # inlined callee: the names its `return` writes
    result: tuple[str, ...] | None = None
    stack: tuple = ()
    scope: Scope | None = None  # the module scope of the code (inherited code: its own module)


def merge_paths(paths: list[Path]) -> tuple[Path, ...]:
    """Merge paths with equal nodes when z3 proves the merged guard equal
    (step 5 of the module docstring); keep the first occurrence's order."""
    out: list[Path] = []
    by_nodes: dict = {}
    for path in paths:
        # nodes are built once per statement and shared by the paths through it:
        # identity is the cheap key (equal-but-distinct nodes are simply not merged)
        key = tuple(map(id, path.nodes))
        merged = False
        for i in by_nodes.get(key, ()):
            prev = out[i]
            if prev.nodes != path.nodes:
                continue
            common = tuple(g for g in prev.guards if g in path.guards)
            if guardlib.merge_equivalent(prev.guards, path.guards, common) is guardlib.Answer.PROVED:
                out[i] = Path(common, prev.nodes)
                merged = True
                break
        if not merged:
            by_nodes.setdefault(key, []).append(len(out))
            out.append(path)
    return tuple(out)
