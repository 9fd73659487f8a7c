"""Helper inlining: a helper's paths spliced in at its call site (step 3 of
`extract.py`'s docstring).

`Expressions` turns a call of `self.<method>(...)` or of a function defined
inside the function into an ("inline", ...) action when the callee holds
DL nodes, inlining is on, the depth is below `MAX_INLINE_DEPTH` and the
callee is not already being inlined (never recursively); methods of bases
in other files are not inlined.  `inline_call` runs that action: a `stmt`
node at the call site binds the callee's parameters from the arguments
(`copies` records the parameters bound to plain names), the callee's body
is walked in its own `Frame` (its nodes keep their own `StmtRef`, with
`inlined_from` set; names keep their spelling so the emitter can edit
them), and its `return` statements write the call site's targets (a path
that falls off the end writes None into them).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from .defuse import local_names, value_reads
from .model import Node
from .pathstate import Alt, Frame

if TYPE_CHECKING:
    from .paths import PathBuilder


def inline_call(pb: PathBuilder, action: tuple, frame: Frame, live: list[Alt]) -> list[Alt]:
    """The paths `live` after the inlined call `action` (not yet capped)."""
    _, fn, owner_qual, args, kwargs, outs, call, key, call_ref = action
    owner_info = pb.ctx.classes.known(owner_qual)
    owner_scope = owner_info.scope if owner_info is not None else frame.scope
    site = (call.lineno, call.end_lineno or call.lineno)
    inner = Frame(
        fn.name, owner_qual, fn, frozenset(local_names(fn)),
        inlined_from=frame.inlined_from + ((frame.method, site),),
        depth=frame.depth + 1,
        local_funcs=dict(frame.local_funcs) if fn.name in frame.local_funcs else {},
        result=outs,
        stack=frame.stack + (key,),
        scope=owner_scope,
    )
    # parameters bound from the call's arguments (a stmt at the call site)
    params = [p.arg for p in fn.args.posonlyargs + fn.args.args]
    if params and params[0] == "self" and owner_qual and not fn.name in frame.local_funcs:
        params = params[1:]
    bound = set(params[: len(args)]) | {k for k, _ in kwargs if k != "**"}
    copies = _param_copies(fn, params, args, kwargs)
    reads = set()
    for v in args:
        reads |= value_reads(v)
    for _, v in kwargs:
        reads |= value_reads(v)
    entry = Node("stmt", call_ref, reads=frozenset(reads), writes=frozenset(bound),
                 inlined_from=frame.inlined_from, copies=copies)
    for a in live:
        a.add_node(entry)
    exprs = pb.exprs
    saved = (exprs.replaced, exprs.top_consumed, exprs.last_value)
    result = pb.block(fn.body, ("body",), (), inner, live)
    exprs.replaced, exprs.top_consumed, exprs.last_value = saved
    for a in result:
        if a.status == "return":
            a.status = "fall"
        elif a.status == "fall":
            # fell off the end: returns None into the targets
            a.add_node(Node("stmt", entry.stmt, writes=frozenset(outs), inlined_from=frame.inlined_from))
    return result


def _param_copies(fn: ast.FunctionDef, params: list[str], args: tuple, kwargs: tuple) -> tuple:
    """(parameter, argument name) for each parameter of an inlined `fn` that
    a call binds to a plain name (positional up to a `*args`, then by keyword)."""
    out = []
    for name, value in zip(params, args):
        if value.kind == "expr" and value.text.startswith("*"):
            break
        if value.kind == "name":
            out.append((name, value.text))
    accepted = set(params) | {a.arg for a in fn.args.kwonlyargs}
    for key, value in kwargs:
        if key != "**" and key in accepted and value.kind == "name":
            out.append((key, value.text))
    return tuple(out)
