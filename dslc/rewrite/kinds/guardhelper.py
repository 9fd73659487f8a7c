"""A guarded layer (`guarded.NoneGuardedLayer`) whose match crosses one
helper method: the guarded call in a helper the matched code calls (`x =
self.conv(x); return self._norm(x)` with `if self.norm is not None: y =
self.norm(y)` in `_norm`), or the kept layer's call returned by a helper
(`x = self._conv(x)` with `return self.conv(z)`, the guarded call in the
caller).  The guarded kind edits only `__init__`, so the helper changes at
every call of it: it must be the class's own method, called once, from the
matched code.  `check_helper` returns the statements between the matched
calls (in both methods) that the exit check reads, or raises `Skip`.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.rewrite.astutil import loop_carried_read, self_attr_name
from dslc.rewrite.plan import Skip


class HelperSides:
    """The two methods of a guarded match across a helper."""

    def __init__(self, match, index: int):
        self.removed = match.nodes[index]
        self.others = [n for i, n in enumerate(match.nodes) if i != index]
        first = self.others[0]
        self.same = all(n.stmt.method == first.stmt.method and n.inlined_from == first.inlined_from for n in self.others)
        # `in_helper`: the guarded call is in the helper, the others in its caller
        self.in_helper = self.same and self.removed.inlined_from[:-1] == first.inlined_from and bool(self.removed.inlined_from)
        self.mirror = self.same and first.inlined_from[:-1] == self.removed.inlined_from and bool(first.inlined_from)
        inner = self.removed if self.in_helper else first
        self.inner = inner
        self.helper = inner.stmt.method
        self.caller = inner.inlined_from[-1][0] if inner.inlined_from else ""
        self.site = tuple(inner.inlined_from[-1][1]) if inner.inlined_from else (0, 0)

    @property
    def one_helper(self) -> bool:
        return self.in_helper or self.mirror


def check_helper(ctx, match, index: int, cls, form, where: str) -> list[ast.stmt]:
    """The helper is the class's own method called once, from the matched
    code; the kept layer's call in a helper is its `return` value.  Returns
    the statements between the matched calls (caller and helper)."""
    mod = ctx.mod
    sides = HelperSides(match, index)
    if not sides.one_helper:
        raise Skip(codes.S_GUARDED_LAYER, f"{where}: the matched calls are in different methods, neither a helper the other calls")
    if cls is None or any(n.stmt.owner != cls.qualname for n in match.nodes):
        raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
    uses = [u for u in cls.attr_uses if u.attr == sides.helper]
    lines = ", ".join(str(u.lines[0]) for u in uses)
    if len(uses) != 1 or uses[0].kind != "call" or uses[0].method != sides.caller \
            or not sides.site[0] <= uses[0].lines[0] <= sides.site[1]:
        raise Skip(codes.S_GUARDED_LAYER, (
            f"{where}: the helper `self.{sides.helper}` is used more than once (lines {lines}); the fused layer "
            f"would change it for every caller, and only the matched one passes it the value the rewrite fuses"))
    site_stmt = _site_statement(mod, sides)
    if site_stmt is None:
        raise Skip(codes.S_GUARDED_LAYER, f"{where}: cannot locate the call of `self.{sides.helper}`")
    helper_fn = _function_of(mod, mod.stmt(sides.inner.stmt))
    if helper_fn is None or helper_fn.name != sides.helper:
        raise Skip(codes.S_GUARDED_LAYER, f"{where}: cannot locate the helper `{sides.helper}`")
    call_stmt = form.if_stmt if form is not None else mod.stmt(sides.removed.stmt)
    if sides.in_helper:
        kept = mod.stmt(sides.others[-1].stmt)
        # in the helper: from its first statement to the guarded call's
        between = ctx.statements_between(kept, site_stmt) + [
            st for st in mod.statements if helper_fn.lineno < st.lineno and (st.end_lineno or st.lineno) < call_stmt.lineno]
        _check_caller_loop(mod, sides, kept, site_stmt, where)
        return between
    conv_stmt = mod.stmt(sides.inner.stmt)
    conv_span = sides.inner.expr_span
    value = conv_stmt.value if isinstance(conv_stmt, ast.Return) else None
    if value is None or (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset) != conv_span \
            or len(sides.others) != 1:
        raise Skip(codes.S_GUARDED_LAYER, (
            f"{where}: in the helper `{sides.helper}` the matched call is not the `return` value "
            f"(`return self.{sides.inner.attr}(...)`), so its value may be read there too"))
    return ctx.statements_between(site_stmt, call_stmt)


def _check_caller_loop(mod, sides: HelperSides, kept: ast.stmt, site_stmt: ast.stmt, where: str) -> None:
    """The kept call's output (the caller's name) is not read elsewhere in a
    loop around the caller's matched code (the next iteration would read
    the fused value), unless the helper's call writes it again."""
    stored = {n.id for n in ast.walk(site_stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names = {o for n in sides.others for o in n.outputs} - stored
    hit = loop_carried_read(mod.chain(site_stmt), names, {id(site_stmt)}) if names else None
    if hit:
        raise Skip(codes.S_VALUE_READ, f"{where}: `{hit[0]}` is read at line {hit[1]} inside the loop around the match; "
                   f"the next iteration would read the fused value")


def _site_statement(mod, sides: HelperSides):
    """The innermost statement that holds the call of the helper at `sides.site`."""
    call = next((c for c in ast.walk(mod.tree) if isinstance(c, ast.Call) and self_attr_name(c.func) == sides.helper
                 and (c.lineno, c.end_lineno) == sides.site), None)
    if call is None:
        return None
    holders = [st for st in mod.statements if st.lineno <= call.lineno and (st.end_lineno or st.lineno) >= call.end_lineno
               and not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               and any(c is call for c in ast.walk(st))]
    return max(holders, key=lambda st: st.lineno, default=None)


def _function_of(mod, stmt: ast.stmt):
    cur = stmt
    while not isinstance(cur, ast.Module):
        cur = mod.block_of(cur)[0]
        if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return cur
    return None


def check_aliases(ctx, match, index: int, where: str, paths, early=None) -> None:
    """On every path that runs the guarded call, the kept call's value (and
    each copy of it: the helper's parameter, the helper's `return`) is read
    by nothing but the guarded call and those copies: the fused layer
    changes every one of those names (the early `return` of the lines
    `early` reads it only where it leaves).  Names are told apart per method
    (`inlined_from`): the paths spell the caller's and the helper's alike."""
    from dslc.rewrite import safety

    sides = HelperSides(match, index)
    helper_frame = sides.inner.inlined_from
    caller_frame = helper_frame[:-1]
    kept, removed = sides.others[-1], sides.removed
    for path in paths:
        keys = [safety.node_key(n) for n in path.nodes]
        if safety.node_key(removed) not in keys or safety.node_key(kept) not in keys:
            continue
        start, stop = keys.index(safety.node_key(kept)), keys.index(safety.node_key(removed))
        alias = {(kept.inlined_from, o) for o in kept.outputs}
        # the call sites of every inlined call on the path: a copy there binds another method's parameters
        sites = {(fr[-1][0], tuple(fr[-1][1])) for fr in (m.inlined_from for m in path.nodes) if fr}
        for k in range(start + 1, len(path.nodes)):
            n = path.nodes[k]
            frame = n.inlined_from
            into = frame
            copies = n.copies
            at = (n.stmt.method, tuple(n.stmt.lines))
            if frame == caller_frame and at == (sides.caller, sides.site) and n.copies:
                into = helper_frame  # the binding of the helper's parameters
            elif frame == helper_frame and isinstance(ctx.mod.stmt(n.stmt), ast.Return):
                into = caller_frame  # the helper's `return`: the call site's value
            elif at in sites:
                copies = ()  # the binding of another inlined call: its copies are reads here
            if k != stop and not (early is not None and early[0] <= n.stmt.lines[0] and n.stmt.lines[1] <= early[1]):
                copied = {src for _, src in copies}
                read = sorted(r for r in n.reads if (frame, r) in alias and r not in copied)
                if read:
                    raise Skip(codes.S_VALUE_READ, (
                        f"{where}: `{read[0]}` (the value of `self.{kept.attr}` or a copy of it) is also read at line "
                        f"{n.stmt.lines[0]} (in `{n.stmt.method}`); the fused layer changes it"))
            added = {(into, dst) for dst, src in copies if (frame, src) in alias}
            alias = (alias - {(into, w) for w in n.writes}) | added
