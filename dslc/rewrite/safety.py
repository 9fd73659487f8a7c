"""Safety checks decided before any edit, and the gate on every output.

Each check returns None when the match may be rewritten, or a
`codes.Reason`: a short human sentence naming the value / attribute / line
that blocks it (the `skipped` reason of the report) with its registered code
(S2xx).  The conventions are docs/adopter-rules.md, "What is never a
location" and "Conventions that settle the hard cases".

Checks (the rewriter calls them in this order):

1. `check_conflict`   the matcher already found a reason (overlap, a static
                      fact it needs but the source does not give).
2. `check_guards`     the guards of the paths through the location are
                      consistent (z3); refuted -> "contradictory guards",
                      undecided -> unsafe.
3. `check_constraints` `where` constraints over values that are not static.
4. `check_dataflow`   intermediates the rewrite removes are not read later or
                      between the matched nodes by other nodes, on any path;
                      the inputs the target reads still hold the same values
                      where the target reads them.
5. `check_attr_uses`  attributes the rewrite replaces or removes are used
                      nowhere else, and assigned only by their init binding;
   `check_subclass_uses` nor by a subclass the analysis sees in the file.
6. `check_when`       the init binding's guards do not imply `not when`;
   `check_when_alternatives` where `when` holds, a matched layer is never
                      bound to the value of unknown type of another branch.

`verify_output` is the final gate: the output parses and every character
outside the edits is unchanged.
"""

from __future__ import annotations

import ast
import re
from typing import Iterable, Iterator, Sequence

from dslc.analysis import guards
from dslc.analysis.model import Guard
from dslc import codes
from dslc.match import ir
from dslc.rewrite.edits import Edit, edited_blocks_parse, parse_error, statement_starts, untouched_regions_identical

TEMP_RE = re.compile(r"^temp_\d+$")


def node_key(node) -> tuple:
    """Identity of a node across paths: its statement and its own expression."""
    stmt = node.stmt
    return (stmt.method, stmt.owner, tuple(stmt.lines), stmt.col, node.expr_span, node.kind, node.attr, node.type, node.op)


def stmt_key(node) -> tuple:
    stmt = node.stmt
    return (stmt.method, stmt.owner, tuple(stmt.lines), stmt.col)


def first_line(node) -> int:
    return node.stmt.lines[0]


def reads_of(node) -> set[str]:
    names = set(node.reads)
    for value in list(node.inputs) + [v for _, v in node.kwargs]:
        if getattr(value, "kind", None) == "name":
            names.add(value.text)
    return names


def writes_of(node) -> set[str]:
    return set(node.writes) | set(node.outputs)


# ---------------------------------------------------------------------------
# Def-use inside one compound statement (a loop or `with` the analysis keeps
# as one opaque node): which names it may read before writing them, and which
# it writes on every way through it.

_COMPOUND = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try)


def _target_names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _expr_reads(expr: ast.AST | None) -> set[str]:
    """Names an expression reads from the enclosing scope (comprehension variables excluded)."""
    if expr is None:
        return set()
    if isinstance(expr, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        gens = expr.generators
        bound: set[str] = set()
        out = _expr_reads(gens[0].iter)
        inner: set[str] = set()
        for i, gen in enumerate(gens):
            bound |= _target_names(gen.target)
            if i:
                inner |= _expr_reads(gen.iter)
            for cond in gen.ifs:
                inner |= _expr_reads(cond)
        parts = [expr.key, expr.value] if isinstance(expr, ast.DictComp) else [expr.elt]
        for part in parts:
            inner |= _expr_reads(part)
        return out | (inner - bound)
    if isinstance(expr, ast.Lambda):
        params = {a.arg for a in ast.walk(expr.args) if isinstance(a, ast.arg)}
        return _expr_reads(expr.body) - params
    if isinstance(expr, ast.Name):
        return {expr.id} if isinstance(expr.ctx, (ast.Load, ast.Del)) else set()
    out: set[str] = set()
    for child in ast.iter_child_nodes(expr):
        out |= _expr_reads(child)
    return out


def _block_effects(stmts, defined: frozenset) -> tuple[set[str], frozenset] | None:
    exposed: set[str] = set()
    for stmt in stmts:
        got = stmt_effects(stmt, defined)
        if got is None:
            return None
        reads, defined = got
        exposed |= reads
    return exposed, defined


def stmt_effects(stmt: ast.stmt, defined: frozenset = frozenset()) -> tuple[set[str], frozenset] | None:
    """(names `stmt` may read before it writes them, names written on every way through it).

    `defined` are names already written on every way to `stmt`; the second
    result includes them.  A loop body may run zero times, a `try` may leave
    early: their writes are not definite.  None for a statement it does not
    model (the caller then keeps the analysis' summary and no definite write).
    """
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        reads = _expr_reads(stmt.value) - defined
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        written: set[str] = set()
        for t in targets:
            if isinstance(t, (ast.Name, ast.Tuple, ast.List, ast.Starred)):
                written |= _target_names(t)
            else:
                reads |= _expr_reads(t) - defined  # `a[i] = v`, `a.b = v` read `a`
        return reads, defined | written
    if isinstance(stmt, ast.AugAssign):
        reads = (_expr_reads(stmt.value) | _expr_reads(ast.Name(stmt.target.id, ast.Load()))
                 if isinstance(stmt.target, ast.Name) else _expr_reads(stmt.value) | _expr_reads(stmt.target))
        written = {stmt.target.id} if isinstance(stmt.target, ast.Name) else set()
        return reads - defined, defined | written
    if isinstance(stmt, (ast.Expr, ast.Return, ast.Assert, ast.Raise, ast.Delete)):
        reads = set()
        for child in ast.iter_child_nodes(stmt):
            reads |= _expr_reads(child)
        return reads - defined, defined
    if isinstance(stmt, (ast.Pass, ast.Break, ast.Continue, ast.Global, ast.Nonlocal, ast.Import, ast.ImportFrom)):
        written = {(a.asname or a.name).split(".")[0] for a in getattr(stmt, "names", ()) if isinstance(a, ast.alias)}
        return set(), defined | written
    if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While, ast.If)):
        return _branch_effects(stmt, defined)
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return _with_effects(stmt, defined)
    if isinstance(stmt, ast.Try):
        return _try_effects(stmt, defined)
    return None


def _branch_effects(stmt, defined: frozenset) -> tuple[set[str], frozenset] | None:
    """`for`/`while`/`if`: the head's reads, then the body (a loop's target
    bound there) and the `else` block.  Only an `if` writes definitely (what
    both its blocks write): a loop body may run zero times."""
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        reads = _expr_reads(stmt.iter) - defined
        inner = defined | _target_names(stmt.target)
    else:
        reads = _expr_reads(stmt.test) - defined
        inner = defined
    body = _block_effects(stmt.body, inner)
    orelse = _block_effects(stmt.orelse, defined)
    if body is None or orelse is None:
        return None
    return reads | body[0] | orelse[0], (body[1] & orelse[1] if isinstance(stmt, ast.If) else defined)


def _with_effects(stmt, defined: frozenset) -> tuple[set[str], frozenset] | None:
    reads: set[str] = set()
    written: set[str] = set()
    for item in stmt.items:
        reads |= _expr_reads(item.context_expr) - defined - written
        if item.optional_vars is not None:
            written |= _target_names(item.optional_vars)
    body = _block_effects(stmt.body, defined | written)
    if body is None:
        return None
    return reads | body[0], body[1]


def _try_effects(stmt: ast.Try, defined: frozenset) -> tuple[set[str], frozenset] | None:
    """A `try` may leave early: its writes are not definite."""
    body = _block_effects(stmt.body, defined)
    if body is None:
        return None
    reads = set(body[0])
    for handler in stmt.handlers:
        bound = {handler.name} if handler.name else set()
        got = _block_effects(handler.body, defined | bound)
        if got is None:
            return None
        reads |= got[0] | (_expr_reads(handler.type) - defined)
    for block in (stmt.orelse, stmt.finalbody):
        got = _block_effects(block, defined)
        if got is None:
            return None
        reads |= got[0]
    return reads, defined


# ---------------------------------------------------------------------------
# Paths through a location


def candidate_paths(match: ir.Match, facts) -> list:
    """All paths of the function holding the match (per `Match.paths_of`)."""
    paths_of = getattr(match, "paths_of", None)
    cls = find_class(facts, match.class_name)
    if paths_of and paths_of.startswith("function:"):
        return list(dict(facts.functions).get(paths_of.split(":", 1)[1], ()))
    if paths_of and paths_of.startswith("method:") and cls is not None:
        return list(dict(cls.other_paths).get(paths_of.split(":", 1)[1], ()))
    if cls is not None:
        if cls.paths:
            return list(cls.paths)
        return list(dict(cls.other_paths).get(match.function, ()))
    return list(dict(facts.functions).get(match.function, ()))


def match_keys(match: ir.Match) -> tuple[list[tuple], frozenset]:
    """The node keys of a match, and those that may be missing on a path.

    A guarded optional node (`Match.guarded`, paired) is on the paths where
    its `if` is taken only; the `stmt` node of that `if`'s test is on all of
    them and counts as matched (it reads the optional node's `when` name
    where the node is absent)."""
    keys = [node_key(n) for n in match.nodes]
    guarded = getattr(match, "guarded", None)
    if not guarded or not guarded[2]:
        return keys, frozenset()
    if guarded[1] is not None:
        keys.append(node_key(guarded[1]))
    return keys, frozenset({keys[guarded[0]]})


def paths_through(match: ir.Match, facts) -> list:
    """The paths that contain every matched node, in order.

    1. Take every path of the function that holds the match.
    2. Keep those that contain all matched nodes (by `node_key`).
    3. Fall back to `Match.paths` indices when none contains them all (the
       analysis may rename temporaries per path).
    """
    paths = candidate_paths(match, facts)
    keys, optional = match_keys(match)
    found = [p for p in paths if _positions(p, keys, optional) is not None]
    if not found:
        found = [paths[i] for i in match.paths if 0 <= i < len(paths)]
    return found


# id(path) -> (path, {node_key: last position}); the path is kept in the
# entry so that its id is not reused while the entry lives.  Paths are
# frozen (their nodes a tuple), so an index never goes stale.
_INDEX: dict[int, tuple] = {}
_INDEX_MAX = 4096


def path_index(path) -> dict[tuple, int]:
    """`node_key` -> position (the last, for a key seen twice) of `path`'s
    nodes; memoised per path object (the safety checks of every match of a
    function ask for the same paths)."""
    hit = _INDEX.get(id(path))
    if hit is not None and hit[0] is path:
        return hit[1]
    index = {node_key(n): i for i, n in enumerate(path.nodes)}
    if len(_INDEX) >= _INDEX_MAX:
        _INDEX.clear()
    _INDEX[id(path)] = (path, index)
    return index


_STMT_INDEX: dict[int, tuple] = {}


def stmt_positions(path) -> dict[tuple, list[int]]:
    """`stmt_key` -> the positions (ascending) of `path`'s nodes of that
    statement; memoised per path object, as `path_index`."""
    hit = _STMT_INDEX.get(id(path))
    if hit is not None and hit[0] is path:
        return hit[1]
    index: dict[tuple, list[int]] = {}
    for i, n in enumerate(path.nodes):
        index.setdefault(stmt_key(n), []).append(i)
    if len(_STMT_INDEX) >= _INDEX_MAX:
        _STMT_INDEX.clear()
    _STMT_INDEX[id(path)] = (path, index)
    return index


def forget_paths() -> None:
    """Drop the memoised path indexes (the rewriter does, after each file)."""
    _INDEX.clear()
    _STMT_INDEX.clear()


def _positions(path, keys: Sequence[tuple], optional: frozenset = frozenset()) -> list[int] | None:
    index = path_index(path)
    out = []
    for key in keys:
        if key not in index:
            if key in optional:
                continue
            return None
        out.append(index[key])
    return out


def find_class(facts, name: str | None):
    if name is None:
        return None
    for cls in facts.classes:
        if cls.name == name or cls.qualname == name or cls.qualname.endswith("." + name):
            return cls
    return None


# ---------------------------------------------------------------------------
# 1. conflicts found by the matcher


def check_conflict(match: ir.Match) -> str | None:
    conflict = getattr(match, "conflict", None) or None
    if conflict is not None and not isinstance(conflict, codes.Reason):
        conflict = codes.Reason(codes.S_UNCLASSIFIED, conflict)
    return conflict


# ---------------------------------------------------------------------------
# 2. guards


def check_guards(match: ir.Match, paths: Iterable) -> tuple[str | None, list]:
    """Keep the feasible paths through the location.

    1. For each path, ask z3 whether its guards can hold together (with the
       init bindings' guards: the layers must exist when forward runs).
    2. Refuted on every path -> skipped "contradictory guards"; undecided on
       every path that is not refuted -> skipped as unsafe.
    Returns (reason, feasible paths).
    """
    paths = list(paths)
    if not paths:
        return None, []
    init_guards = []
    for binding in match.init_nodes.values():
        init_guards.extend(getattr(binding, "guards", ()) or ())
    feasible, unknown, refuted = [], [], []
    for path in paths:
        gs = list(path.guards)
        answer = guards.consistent(gs).value
        if answer != "refuted" and init_guards and guards.consistent(gs + init_guards).value == "refuted":
            answer = "refuted"
        if answer == "proved":
            feasible.append(path)
        elif answer == "refuted":
            refuted.append(path)
        else:
            unknown.append(path)
    if feasible:
        return None, feasible
    if unknown:
        texts = ", ".join(f"`{g}`" for g in unknown[0].guards)
        return codes.reason(codes.S_GUARDS_UNKNOWN, f"guards {texts} could not be decided; skipped as unsafe"), []
    return codes.reason(codes.S_GUARDS_CONTRADICT, "contradictory guards: " + _describe_contradiction(refuted[0].guards, init_guards)), []


def _describe_contradiction(gs, init_guards) -> str:
    gs = list(gs)
    for a in gs:
        for b in gs:
            if a.text == b.text and a.negated != b.negated and not a.negated:
                return f"`{a}` (line {a.lines[0]}) and `{b}` (line {b.lines[0]}) on one path"
    parts = [f"`{g}` (line {g.lines[0]})" for g in gs]
    if init_guards:
        parts += [f"`{g}` (init, line {g.lines[0]})" for g in init_guards]
    return ", ".join(parts) + " cannot all hold"


# ---------------------------------------------------------------------------
# 3. constraints that need static facts


def check_constraints(match: ir.Match) -> str | None:
    """A `where` constraint over a value that is not a literal cannot be decided."""
    for constraint in match.rule.where:
        bound = match.bindings.get(constraint.var.name)
        if bound is None or bound.kind == "const" or constraint.spelled_as(bound.kind, bound.text):
            continue
        values = ", ".join(v.text if isinstance(v, ir.Code) else repr(v) for v in constraint.values)
        need = f"{constraint.op} {values}" if len(constraint.values) == 1 else f"{constraint.op} ({values})"
        return codes.reason(codes.S_CONSTRAINT_STATIC, f"`${constraint.var.name}` must be {need} but is `{bound.text}`, not known statically")
    return None


# ---------------------------------------------------------------------------
# 4. data flow


def check_dataflow(
    match: ir.Match,
    paths: Iterable,
    *,
    produced_again: set[str],
    target_inputs: set[str],
    deleted_stmts: set[tuple],
    final_stmt: tuple | None,
    metadata_ok=None,
    scan: set[str] | None = None,
    effects=None,
    read_note=None,
    read_ok=None,
    skip_path=None,
) -> str | None:
    """Removed intermediates are dead and target inputs are unchanged, on every path.

    On each path (positions of the matched nodes known):
    1. For every output `o` of a matched node that the final statement does
       not write itself (only those in `scan`, when given): scan the nodes
       after it.  A node that is not matched and reads `o` blocks the match
       ("read ... after the match" when it comes after the final statement,
       "between" otherwise, "in the statement that holds the matched call"
       for an unmatched part of the final statement), unless `o` is produced
       again with its value (`produced_again`) and the read comes after the
       final statement, or the read looks only at properties the rule keeps
       (`metadata_ok`).  A write of `o` (by any node) ends the scan: only
       reads the matched definition reaches count.
    2. For every name the target reads (`target_inputs`): find the first
       matched node that reads it; no unmatched node between there and the
       final statement may write it, and no deleted statement before it may
       write it (after the edit the name is read at the final statement).
    """
    keys, optional = match_keys(match)
    for path in paths:
        positions = _positions(path, keys, optional)
        if positions is None or (skip_path is not None and skip_path(path)):
            continue
        matched = set(positions)
        last = max(positions)
        final_positions = set(stmt_positions(path).get(final_stmt, ())) if final_stmt is not None else set()
        end_of_final = max([last] + [i for i in final_positions])
        for pos in sorted(positions):
            node = path.nodes[pos]
            if pos in final_positions:
                continue
            for out in node.outputs:
                if scan is not None and out not in scan:
                    continue
                ok = (lambda q, name, _p=path, _pos=pos: metadata_ok(_p, _pos, q, name)) if metadata_ok is not None else None
                reason = _scan_reads(path, pos, out, matched, end_of_final, final_positions, produced_again, ok,
                                     effects, read_note, read_ok)
                if reason:
                    return reason
        for name in sorted(target_inputs):
            first = next((p for p in sorted(positions) if name in reads_of(path.nodes[p])), None)
            if first is None:
                continue
            for q in range(first + 1, last + 1):
                other = path.nodes[q]
                if q in matched or q in final_positions:
                    continue
                if name in writes_of(other):
                    return codes.reason(codes.S_INPUT_CHANGED, f"`{name}` is reassigned at line {first_line(other)} before the fused call reads it")
            for q in sorted(positions):
                if q >= first:
                    break
                other = path.nodes[q]
                if stmt_key(other) in deleted_stmts and name in writes_of(other):
                    return codes.reason(codes.S_INPUT_CHANGED, f"`{name}` is written by line {first_line(other)}, which the rewrite removes")
    return None


def _scan_reads(path, pos, out, matched, end_of_final, final_positions, produced_again,
                metadata_ok=None, effects=None, read_note=None, read_ok=None) -> str | None:
    """The first unmatched read of `out` that the definition at `pos` reaches.

    Per path, a read counts only while the matched definition reaches it: a
    write of `out` by any node ends the scan (def-use along the path, not by
    name).  Unmatched nodes of the final statement read before it writes:
    `return self.bn(h) + h` reads `h` beside the matched call, so such reads
    count even when the final statement binds `out` again.  `metadata_ok(q,
    out)` (when given) says a read at `q` looks only at the shape, dtype or
    device of `out` and the rewrite keeps those (rule option `keeps`).
    `read_note(path, q, out)` (when given) may add to the reason of a read
    after the match how that read happens (under which condition);
    `read_ok(path, q, out)` (when given) accepts such a read (a kept value
    read under a condition the rewrite guards on, dslc.rewrite.kinds.keep).
    """
    origin = first_line(path.nodes[pos])

    def reads_at(q: int) -> set[str]:
        got = effects(path, q) if effects is not None else None
        return set(got[0]) if got is not None else reads_of(path.nodes[q])

    def writes_at(q: int) -> set[str]:
        got = effects(path, q) if effects is not None else None
        return set(got[1]) if got is not None else writes_of(path.nodes[q])

    for q in range(pos + 1, len(path.nodes)):
        other = path.nodes[q]
        after = q > end_of_final
        if q in final_positions:
            if q not in matched and out in reads_at(q) and not (metadata_ok and metadata_ok(q, out)):
                what = "temporary" if TEMP_RE.match(out) else "intermediate"
                return codes.reason(codes.S_VALUE_READ,
                                    f"{what} `{out}` (line {origin}) is also read at line {first_line(other)}, "
                                    f"in the statement that holds the matched call")
            if out in writes_at(q):
                return None
            continue
        if q not in matched and out in reads_at(q):
            if after and out in produced_again:
                return None
            if metadata_ok is not None and metadata_ok(q, out):
                if out in writes_at(q):
                    return None
                continue
            if after and read_ok is not None and read_ok(path, q, out):
                continue
            where = "after the match" if after else "between the matched statements"
            what = "temporary" if TEMP_RE.match(out) else "intermediate"
            note = (read_note(path, q, out) or "") if after and read_note is not None else ""
            return codes.reason(codes.S_VALUE_READ, f"{what} `{out}` (line {origin}) is read at line {first_line(other)} {where}{note}")
        if out in writes_at(q):
            return None
    return None


# ---------------------------------------------------------------------------
# 5. attribute uses


def check_attr_uses(
    match: ir.Match,
    cls,
    changed: dict[str, str],
    *,
    interface_kept: bool,
    also_allowed: Sequence = (),
) -> str | None:
    """Attributes the rewrite replaces or removes are used nowhere else: the
    reason of the first use `attr_use_problems` finds, None when there is none."""
    for _use, reason in attr_use_problems(match, cls, changed, interface_kept=interface_kept,
                                          also_allowed=also_allowed):
        return reason
    return None


def attr_use_problems(
    match: ir.Match,
    cls,
    changed: dict[str, str],
    *,
    interface_kept: bool,
    also_allowed: Sequence = (),
) -> Iterator[tuple[object, str]]:
    """Every use of an attribute the rewrite replaces or removes that stands
    in its way, with the reason (S206 for a store, S207 for any other use).

    `changed` maps attribute -> "replaces" / "removes".  Allowed uses: the
    init binding's own statement, the matched forward statements, and
    `also_allowed` nodes (other call sites that share the same init change).  With
    `interface_kept` (a drop-in module replacement, forward target `_`) calls
    elsewhere are fine; stores outside the binding never are.
    """
    if cls is None or not changed:
        return
    bindings = {b.attr: b for b in match.init_nodes.values()}
    forward_spans = [(n.stmt.method, n.stmt.lines) for n in list(match.nodes) + list(also_allowed)]
    for use in cls.attr_uses:
        if use.attr not in changed:
            continue
        binding = bindings.get(use.attr)
        if binding is not None and binding.stmt is not None:
            lo, hi = binding.stmt.lines
            if use.method == binding.stmt.method and lo <= use.lines[0] <= hi and use.kind == "store":
                continue
        if use.kind == "store" and binding is not None and _exclusive_store(cls, binding, use):
            continue
        if use.kind == "store":
            where = "outside `__init__`" if use.method != "__init__" else "again"
            yield use, codes.reason(codes.S_ATTR_ASSIGNED, f"attribute `self.{use.attr}` is assigned {where} at line {use.lines[0]} (in `{use.method}`)")
            continue
        if interface_kept:
            continue
        if any(method == use.method and lo <= use.lines[0] <= hi for method, (lo, hi) in forward_spans):
            continue
        if binding is not None and binding.stmt is not None and use.method == binding.stmt.method and binding.stmt.lines[0] <= use.lines[0] <= binding.stmt.lines[1]:
            continue
        yield use, codes.reason(
            codes.S_ATTR_USED,
            f"attribute `self.{use.attr}`, which the rewrite {changed[use.attr]}, "
            f"is also used at line {use.lines[0]} (in `{use.method}`)"
        )


def subclasses(facts, cls) -> list:
    """Every class of `facts` that inherits from `cls`, directly or through others."""
    if cls is None:
        return []
    names = {cls.qualname, cls.name}
    family: list = []
    grew = True
    while grew:
        grew = False
        for other in facts.classes:
            if other is cls or other in family:
                continue
            if any(b in names or b.rsplit(".", 1)[-1] in names for b in other.bases):
                family.append(other)
                names |= {other.qualname, other.name}
                grew = True
    return family


def check_subclass_uses(facts, cls, changed: dict[str, str], *, interface_kept: bool) -> str | None:
    """No subclass the analysis sees uses an attribute the rewrite replaces or removes.

    A subclass inherits the rewritten `__init__`; its own methods that call,
    read or assign `self.<attr>` (a flash-attention variant still calling
    `self.k_proj`) would see the fused layer or no layer at all.  With
    `interface_kept` (a drop-in module replacement) calls are fine.
    """
    for sub in subclasses(facts, cls):
        for use in sub.attr_uses:
            if use.attr not in changed:
                continue
            if interface_kept and use.kind != "store":
                continue
            return codes.reason(codes.S_ATTR_USED, f"attribute `self.{use.attr}`, which the rewrite {changed[use.attr]}, is also used by the subclass "
                    f"`{sub.name}` at line {use.lines[0]} (in `{use.method}`)")
    return None


def _exclusive_store(cls, binding, use) -> bool:
    """A second store of the attribute in the init that can never run with the binding
    (`if isinstance(k, str): self.act = ACT2FN[k] else: self.act = k`)."""
    if binding.stmt is None or use.method != binding.stmt.method:
        return False
    for other in cls.init:
        if other.attr != use.attr or other.stmt is None or other is binding:
            continue
        lo, hi = other.stmt.lines
        if not lo <= use.lines[0] <= hi:
            continue
        gs = list(binding.guards) + list(other.guards)
        if not gs:
            return False
        return guards.consistent(gs).value == "refuted"
    return False


# ---------------------------------------------------------------------------
# 6. `when`


def check_when(match: ir.Match, condition: str | None) -> str | None:
    """Not a location when the init bindings' guards imply `not when`.

    This keeps a second apply a no-op: the first kept the original init in
    the `else:` branch of `if <when>:`.
    """
    if not condition:
        return None
    for binding in match.init_nodes.values():
        gs = list(getattr(binding, "guards", ()) or ())
        if not gs:
            continue
        if guards.consistent(gs + [Guard(condition)]).value == "refuted":
            return codes.reason(codes.S_WHEN_NEVER, f"not a location: `self.{binding.attr}` (line {binding.stmt.lines[0] if binding.stmt else 0}) is built only when `not ({condition})`")
    return None


def check_when_alternatives(match: ir.Match, cls, condition: str | None) -> str | None:
    """Under `when`, the matcher lets a matched attribute also be bound to a
    value of unknown type on another branch (`else: self.act =
    config.hidden_act`): the `else:` of `if <when>:` keeps the original.  The
    `if <when>:` branch assumes the matched layer (and changes the other
    matched layers for it), so there the other binding must never run: z3
    must refute `when` together with its guards, unless the matched binding
    always overwrites it.  A comparison `e in ("a", "b")` / `e == "a"` in the
    condition implies `isinstance(e, str)` (the transformers spelling of the
    other branch's guard)."""
    if not condition or cls is None:
        return None
    from dslc.match.matcher import overwritten_by

    axioms = _str_axioms(condition)
    for b in match.init_nodes.values():
        for other in cls.init:
            if other.attr != b.attr or other is b or other.kind != "other" or overwritten_by(other, b):
                continue
            gs = [Guard(condition), *other.guards, *axioms]
            if guards.consistent(gs) is not guards.Answer.REFUTED:
                line = other.stmt.lines[0] if other.stmt is not None else 0
                text = other.args[0].text if other.args else "another value"
                return codes.reason(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr}` is also bound to `{text}` (line {line}), a value of unknown type, which may "
                    f"be what forward calls where `{condition}` holds and the rewrite assumes the matched layer"))
    return None


def _str_axioms(condition: str) -> list[Guard]:
    """`not (<e in strs>) or isinstance(e, str)` for each such comparison in `condition`."""
    try:
        tree = ast.parse(condition, mode="eval")
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
            continue
        right = node.comparators[0]
        members = right.elts if isinstance(node.ops[0], ast.In) and isinstance(right, (ast.Tuple, ast.List, ast.Set)) \
            else [right] if isinstance(node.ops[0], ast.Eq) else []
        if members and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in members):
            out.append(Guard(f"not ({ast.unparse(node)}) or isinstance({ast.unparse(node.left)}, str)"))
    return out


# ---------------------------------------------------------------------------
# the output gate


def verify_output(original: str, new: str, edits: Sequence[Edit], tree=None) -> str | None:
    """None when `new` parses and is `original` outside the edits.

    With `tree` (the original's parsed module), only the top-level blocks
    that hold an edit are parsed (`edits.edited_blocks_parse`); the whole
    file is parsed when that does not prove it, for the exact answer.
    """
    if tree is not None and untouched_regions_identical(original, new, edits) \
            and edited_blocks_parse(original, new, edits, statement_starts(original, tree)):
        return None
    err = parse_error(new)
    if err is not None:
        return codes.reason(codes.S_NO_PARSE, f"the rewritten file does not parse ({err})")
    if not untouched_regions_identical(original, new, edits):
        return codes.reason(codes.S_NO_PARSE, "the rewrite changed text outside the edited statements")
    return None
