"""What the kinds of rewrite share: the `Kind` protocol and the `Setup` of a match.

A kind is a class registered in `dslc.rewrite.kinds.KINDS`.  For each match,
`rewriter._Rewriter.plan` asks the kinds in order whether they `select` it
and lets the first one that does `plan` it:

- `select(match, setup)` returns what the kind found (anything but None:
  the `if` holding the guarded call, the index of the helper's call, ...)
  when the match is of its kind;
- `plan(match, setup, found, plan)` adds the edits to `plan` or raises
  `Skip` with the reason.

`setup` is None for a kind with `needs_setup = False` (a class item, which
is planned before the checks of forward/init matches); for the others it
holds the result of those shared checks (`Setup`).  Parts that several kinds
use (the init replacement, the `when` guard, the per-call dispatch, the
hoisting of forward statements) are `Planner`s too, but not registered.
"""

from __future__ import annotations

from dataclasses import dataclass

from dslc.match import ir
from dslc.rewrite.context import Context
from dslc.rewrite.plan import Plan


@dataclass(frozen=True)
class Setup:
    """The shared checks of a forward/init match, done once before selection."""

    condition: str | None  # the `when` test (and the needs test of a `fallback original` init)
    cls: object  # the analysis' facts of the match's class, or None
    paths: list  # the feasible paths through the matched nodes (all of them when none is)


class Planner:
    """Something that plans edits in one file's `Context`."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.mod = ctx.mod
        self.facts = ctx.facts


class Kind(Planner):
    """One kind of rewrite; see the module docstring."""

    needs_setup = True

    def select(self, match: ir.Match, setup: Setup | None):
        raise NotImplementedError

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        raise NotImplementedError
