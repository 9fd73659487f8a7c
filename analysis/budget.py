"""Limits of the extraction, and the work budget of one function (issue 11).

`Options` are what `api.py` passes to the extractor (inlining, flatten
mode, the path cap, budgets).  A `Budget` counts what one function's path
enumeration spends (statement visits over the live paths, path length, z3
questions); exceeding one raises `OverBudget`, which the path builder
turns into a Problem with the budget's code (see `MAX_WORK` below).
`ACTIVE` holds the budget of the function being enumerated, which
`pathstate.Alt.add_guard` charges for its feasibility questions.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import guards as guardlib

MAX_PATHS = 256
# Per-function work budgets (issue 11: no input may take more than a few
# seconds).  Generous: no function of the transformers corpus comes near
# them.  Exceeding one is a Problem with its code; the function's paths are
# dropped (`path-budget`, `node-budget`: nothing of it can be matched, never
# a wrong match), or its remaining guards are assumed feasible
# (`solver-budget`: safety re-checks the guards of every match).  The
# file's other functions and classes are still analysed.
MAX_WORK = 250_000  # statement visits x live paths (+ path nodes walked / 64), inlined callees included
MAX_PATH_NODES = 3_000  # nodes on one path (the matcher's work grows with it)
# guards sent to z3 (summed over its questions; cached answers are free).  The
# corpus's largest function asks 21 664 (modeling_reformer.py; 28 636 for
# the whole file).  A 10 000-line forward with an `if mode == i` every 10
# lines (benchmarks/worst_cases.py) took 3.8-4.1 s of analysis with the
# 100 000 this was, 2.2-2.9 s with 50 000 (mostly z3; load 14).
MAX_GUARD_QUERIES = 50_000
MAX_CONTAINER_ELEMENTS = 1_000  # elements of one nn.Sequential/ModuleList literal
MAX_INLINE_DEPTH = 3
# `if`s without calls split for optional nodes (`Options.optional_ifs`), per
# function: each one doubles the paths after it; a function with more than
# this many splits none (each stays one statement: no rule matches across
# it; sound, no blow-up, and a second apply finds the same count)
MAX_OPTIONAL_IFS = 4
MAX_NESTED_CLASS_DEPTH = 4  # classes nested in class bodies (Outer.Inner...)


@dataclass(slots=True)
class Options:
    inline: bool = True
    flatten: bool = False
    # Split an `if` without calls whose branch updates a value a DL node wrote
    # (`if m is not None: s = s + m`), for the loaded rules' optional nodes:
    # (update, writer) pairs, e.g. ("+", "/"), ("masked_fill", "torch.einsum")
    # (`compound._updates_dl_value`).
    optional_ifs: frozenset = frozenset()
    # Build each class's forward graph (`ClassFacts.compute`): only class rules
    # read it, so a run without them skips the work.
    compute: bool = True
    # The class pre-filter (`classgate.py`): per rule, the names it needs;
    # None: every class's paths are enumerated.
    needs: tuple | None = None
    max_paths: int = MAX_PATHS
    # budgets (None: the module's MAX_* value at the time of use)
    max_work: int | None = None
    max_path_nodes: int | None = None
    max_guard_queries: int | None = None
    max_container_elements: int | None = None


class OverBudget(Exception):
    """A function's path enumeration ran out of a budget (`Budget`)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Budget:
    """What one function's path enumeration may spend (see MAX_WORK ...).

    `block` charges one unit per live path per statement and checks the
    longest path; `Alt.add_guard` counts the feasibility questions (past the
    limit a new guard is assumed feasible and `solver_out` is set).
    """

    __slots__ = ("work", "walk", "start_terms", "solver_out", "max_work", "max_nodes", "max_queries")

    def __init__(self, max_work: int = MAX_WORK, max_nodes: int = MAX_PATH_NODES,
                 max_queries: int = MAX_GUARD_QUERIES):
        self.work = 0
        self.walk = 0  # path nodes walked to version guard symbols (`Alt.version`)
        self.start_terms = guardlib.SOLVER_TERMS[0]
        self.solver_out = False
        self.max_work, self.max_nodes, self.max_queries = max_work, max_nodes, max_queries

    @property
    def queries(self) -> int:
        """Guards sent to z3 since this budget started (cached answers are free)."""
        return guardlib.SOLVER_TERMS[0] - self.start_terms

    def charge(self, alts: list) -> None:
        self.work += len(alts) + self.walk // 64
        self.walk %= 64
        if self.work > self.max_work:
            raise OverBudget("path-budget", f"more than {self.max_work} statement visits over its paths")
        for a in alts:
            if a.tail is not None and a.tail[2] > self.max_nodes:
                raise OverBudget("node-budget", f"a path of more than {self.max_nodes} nodes")

    def ask(self, path_length: int, symbols: int) -> bool:
        """Before a feasibility question: charge the symbol versioning's walk
        of the path; False when z3 had its share (the guard is then assumed
        feasible)."""
        self.walk += path_length * symbols
        if self.queries > self.max_queries:
            self.solver_out = True
            return False
        return True


# the budget of the function being enumerated (None: unlimited)
ACTIVE: list = [None]


def new_budget(options: Options) -> Budget:
    """The budget of one function under `options` (a None limit: this
    module's MAX_* value now, so that tests can lower it)."""
    o = options
    return Budget(o.max_work or MAX_WORK, o.max_path_nodes or MAX_PATH_NODES,
                  o.max_guard_queries or MAX_GUARD_QUERIES)


def container_limit(options: Options) -> int:
    """The most elements of one container literal whose elements are analysed."""
    return options.max_container_elements or MAX_CONTAINER_ELEMENTS
