"""Synthesis of the rewritten code: a `Match` + its rule's targets -> edits.

`rewrite_source(source, facts, matches)` is a pure function.  For each match,
in order (paper §3.5):

1. Safety (`dslc.rewrite.safety`): conflicts from the matcher, guards, `where`
   constraints over non-static values, `when`, data flow, attribute uses.
   The checks every forward/init match shares run first (`_Rewriter.setup`).
2. The first kind of rewrite in `dslc.rewrite.kinds.KINDS` that selects the
   match plans its edits (each kind's module says what it does): a class
   item's dispatch, a layer guarded by `is not None`, a layer called in a
   helper, layers inside a container, or the general fusion (forward
   statements fused and hoisted across `if` branches, layers replaced in
   `__init__`, guarded by `when`, calls dispatched at run time).
3. The imports, dispatch helpers and checkpoint hook the kinds request are
   written once per file by the import scheduler (`dslc.rewrite.imports`).
4. Every match's edits are combined with the accepted ones; a match whose
   edits overlap accepted ones is skipped with the reason.  The combined
   output must parse and be unchanged outside the edits
   (`safety.verify_output`); if it does not parse, the run is repeated with
   a parse after each match so that only the culprit is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dslc import codes
from dslc.match import ir
from dslc.rewrite import initguard, rebound, safety
from dslc.rewrite.flow import FlowChecks
from dslc.rewrite.context import Context
from dslc.rewrite.edits import EditConflict, apply_edits, parse_error
from dslc.rewrite.kinds import KINDS
from dslc.rewrite.kinds.base import Setup
from dslc.rewrite.kinds.call import CallDispatch
from dslc.rewrite.kinds.when import WhenGuard
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.rules import forward_unchanged, init_attrs, per_construction

__all__ = ["Outcome", "RewriteResult", "Skip", "rewrite_source"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one match: `applied`, or `skipped` with the reason."""

    match: ir.Match
    status: Literal["applied", "skipped"]
    reason: str | None
    lines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RewriteResult:
    """The new source (None when nothing changed) and one outcome per match."""

    new_source: str | None
    outcomes: tuple[Outcome, ...]
    warnings: tuple[tuple[int, str, str], ...] = ()  # of the applied rewrites: (line, code, message)


class _Rewriter:
    """Plans the matches of one file: the shared checks, then the kind that selects each."""

    def __init__(self, source: str, facts, path: str):
        self.ctx = Context(source, facts, path)
        self.kinds = [kind(self.ctx) for kind in KINDS]
        self.calls = CallDispatch(self.ctx)
        self.when = WhenGuard(self.ctx)
        self.overlap_lifted = False
        self.ctx.init_guarded = []  # of the match being planned (`dslc.rewrite.initguard`)

    def plan(self, match: ir.Match) -> Plan:
        plan = Plan()
        self.ctx.init_guarded = []
        # an overlap with earlier rules' matches that were all refused is lifted (`_rewrite`)
        reason = None if match.yields_to and self.overlap_lifted else safety.check_conflict(match)
        if reason:
            raise Skip(reason)
        if match.function.startswith("_dslc_"):
            raise Skip(codes.S_GENERATED, f"inside `{match.function}`, a dispatch helper that dslc generated")
        setup = None
        for kind in self.kinds:
            if kind.needs_setup and setup is None:
                setup = self.setup(match, plan)
            found = kind.select(match, setup)
            if found is not None:
                kind.plan(match, setup, found, plan)
                return plan
        raise AssertionError("the general kind (`Fusion`) selects every match")

    def setup(self, match: ir.Match, plan: Plan) -> Setup:
        """The checks every forward/init match passes before a kind is selected."""
        rule = match.rule
        if rule.fallback == "original" and rule.needs:
            # Kernels of required packages are imported under a guard.
            for item in (rule.init, rule.forward):
                for pn in (item.target or ()) if item is not None else ():
                    qual = pn.callee.qualname if pn.callee is not None and pn.callee.var is None else None
                    if qual and any(qual == n.module or qual.startswith(n.module + ".") for n in rule.needs):
                        self.ctx.imports.guarded_import(qual, plan)
        reason = self.ctx.check_scripted(match)
        if reason:
            raise Skip(codes.S_SCRIPTED, reason)
        reason = safety.check_constraints(match)
        if reason:
            raise Skip(reason)
        condition = self.when.condition(match)
        if per_construction(rule):
            # Per construction: the kernel's layer where its needs are met, else the original.
            needs = self.calls.needs_condition(match, plan, rule.init.target, per_call=False)
            condition = f"{needs} and ({condition})" if condition else needs
        cls = safety.find_class(self.ctx.facts, match.class_name)
        # A matched layer built only under a guard, another binding where it fails: the rewrite under that guard too.
        self.ctx.init_guarded = initguard.guarded_bindings(match, cls)
        guard = initguard.condition(self.ctx.init_guarded)
        if guard:
            condition = initguard.conjunction([condition, guard]) if condition else guard
        reason = safety.check_when(match, condition)
        if reason:
            raise Skip(reason)
        reason = safety.check_when_alternatives(match, cls, condition)
        if reason:
            raise Skip(reason)
        reason = rebound.check_rebound(match, self.ctx.facts, cls, FlowChecks(self.ctx.mod, self.ctx.facts, self.ctx.path))
        if reason:
            raise Skip(reason)
        paths = safety.paths_through(match, self.ctx.facts) if match.nodes else []
        if match.nodes and not paths:
            raise Skip(codes.S_NO_PATH, f"the matched nodes are on no path of `{match.function}`; the data flow cannot be checked")
        reason, feasible = safety.check_guards(match, paths)
        if reason:
            raise Skip(reason)
        return Setup(condition, cls, feasible or paths)


def _location_key(match: ir.Match) -> tuple:
    if match.klass is not None:
        return (match.rule.qualified_name, "class", match.class_name)
    if match.rule.fallback and match.nodes and (match.rule.init is None or match.rule.init.target is None):
        # a per-call dispatch edits one expression: two calls in one statement are two locations
        return (match.rule.qualified_name, "call", tuple(n.expr_span for n in match.nodes))
    if forward_unchanged(match.rule) and match.init_nodes:
        # Only the init changes: one location however many call sites matched.
        return (match.rule.qualified_name, "init", init_attrs(match))
    return (match.rule.qualified_name, tuple(sorted({safety.stmt_key(n) for n in match.nodes})),
            tuple(sorted((b.attr for b in match.init_nodes.values()))))


def rewrite_source(source: str, facts, matches: list[ir.Match], *, path: str = "<string>") -> RewriteResult:
    """Rewrite every safe match of `source`; see the module docstring for the steps.

    Parsing the whole file after every match is the costly part, so the
    matches are first accepted optimistically (overlaps still checked); only
    when the combined output does not parse is the run repeated with a parse
    after each match, which pins the failure on the match that causes it.
    """
    try:
        try:
            result = _rewrite(source, facts, matches, path, check_each=False)
        except SyntaxError as exc:
            reason = codes.reason(codes.S_FILE_PARSE, f"the file does not parse (line {exc.lineno}: {exc.msg})")
            return RewriteResult(None, tuple(Outcome(m, "skipped", reason, tuple(m.lines)) for m in matches))
        if result is None:
            result = _rewrite(source, facts, matches, path, check_each=True)
        return result
    finally:
        safety.forget_paths()  # the file's path indexes (`safety.path_index`)


def _rewrite(source: str, facts, matches, path: str, *, check_each: bool) -> RewriteResult | None:
    rewriter = _Rewriter(source, facts, path)
    ctx = rewriter.ctx
    ctx.matches = list(matches)
    outcomes: dict[int, Outcome] = {}
    warned: list[tuple[int, str, str]] = []
    # `when` rules duplicate a run of init statements into both branches of an
    # `if`: they go last, so the other rewrites inside that run are composed
    # into both branches instead of blocking each other (a second apply would
    # otherwise find them).
    # A match that yields to overlapping matches of earlier rules comes after
    # them, and is tried when they were all refused.
    order = sorted(range(len(matches)), key=lambda i: (bool(matches[i].rule.option("when")), bool(matches[i].yields_to), i))
    keys = {ir.overlap_key(m.rule, m.nodes, m.init_nodes): i for i, m in enumerate(matches)}
    for index in order:
        match = matches[index]
        lifted = bool(match.yields_to) and all(
            keys.get(k) is None or (keys[k] in outcomes and outcomes[keys[k]].status == "skipped") for k in match.yields_to)
        key = _location_key(match)
        if key in ctx.done_locations:
            outcomes[index] = Outcome(match, "skipped", codes.reason(codes.S_SAME_LOCATION, f"same location as the match at line {ctx.done_locations[key]} (edited once)"), tuple(match.lines))
            continue
        try:
            try:
                rewriter.overlap_lifted = lifted
                plan = rewriter.plan(match)
            except (Skip, SyntaxError):
                raise
            except Exception as exc:  # a bug must cost one match, not the run
                raise Skip(codes.E_INTERNAL, f"internal error in the rewriter ({type(exc).__name__}: {exc})") from None
            absorbed = {id(e) for e in plan.absorbed}
            edits = [e for e in ctx.accepted if id(e) not in absorbed] + plan.edits
            for start, end in plan.claimed:
                for a, b, who in ctx.claimed:
                    inside = any(e.start >= start and e.end <= end for e in plan.absorbed) and start <= a and b <= end
                    if start < b and a < end and not inside:
                        raise Skip(codes.S_OVERLAP_REWRITE, f"overlaps the rewrite of {who}")
            try:
                candidate = apply_edits(source, edits)
            except EditConflict as exc:
                raise Skip(codes.S_OVERLAP_REWRITE, f"its edits overlap another rewrite ({exc})") from None
            if check_each:
                err = parse_error(candidate)
                if err is not None:
                    raise Skip(codes.S_NO_PARSE, f"the rewrite would not parse ({err})")
        except Skip as exc:
            if codes.code_of(exc.reason) in (codes.S_GENERATED, codes.S_NO_CAUSAL_LM_LOSS):
                continue  # dslc's own fallback code is no location: a second apply reports nothing new
            outcomes[index] = Outcome(match, "skipped", exc.reason, tuple(match.lines))
            continue
        # Accept.
        ctx.accepted = edits
        warned.extend(plan.warnings)
        first = min(plan.lines) if plan.lines else (match.lines[0] if match.lines else 0)
        for start, end in plan.claimed:
            ctx.claimed.append((start, end, f"{match.rule.qualified_name} at line {first}"))
        ctx.imports.accept(plan)
        for cls, names in plan.new_attrs.items():
            ctx.taken.setdefault(cls, set()).update(names)
        if match.nodes or key[1:2] == ("init",):
            ctx.done_locations[key] = first
        outcomes[index] = Outcome(match, "applied", None, tuple(sorted(set(match.lines) | plan.lines)))
    ordered = [outcomes[i] for i in range(len(matches)) if i in outcomes]
    if not ctx.accepted:
        return RewriteResult(None, tuple(ordered))
    edits = list(ctx.accepted)
    edits.extend(ctx.imports.header_edit())
    new = apply_edits(source, edits)
    reason = safety.verify_output(source, new, edits, ctx.mod.tree)
    if reason is not None:
        if not check_each:
            return None  # find the culprit: redo with a parse after each match
        ordered = [Outcome(o.match, "skipped", reason, o.lines) if o.status == "applied" else o for o in ordered]
        return RewriteResult(None, tuple(ordered))
    return RewriteResult(new if new != source else None, tuple(ordered), tuple(dict.fromkeys(warned)))
