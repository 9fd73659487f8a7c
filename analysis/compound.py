"""Compound statements on the paths: `if`, loops, `with`, `try` (step 2 of
`extract.py`'s docstring).

Each function takes the `PathBuilder` that walks the statement's blocks and
returns the paths after the statement.  A compound statement with no DL
node inside (`Classifier.has_dl`) is one opaque `stmt` node instead.

* `if` evaluates its test on every path, then forks: the body under the
  guard, the `orelse` under its negation.
* A loop gives the path that skips it (for `while`, guarded by
  `not test`) and the path that runs its body exactly once; `break` and
  `continue` end that iteration, and `orelse` runs on the paths that did
  not break.  `for x in self.<container>` makes `x(...)` a call of the
  container's elements (`Frame.loop_layers`), and so does
  `for a, b in zip(self.<c1>, self.<c2>)` for each name.
* `with`: the context expressions, then the body in line.
* `try`: the body then `else`, and for each handler the path that runs only
  that handler (as if the exception came before any body effect);
  `finally` is appended to the paths that fall through.

Flatten mode (the ADOPTER_p ablation) walks every block in order, with no
guards and no path ends.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from .budget import MAX_OPTIONAL_IFS
from .defuse import reads_of, self_attr, target_reads, writes_of
from .exprs import BINOPS, TENSOR_METHODS
from .model import StmtRef
from .nodetext import node_text
from .pathstate import Alt, Frame, split_alts

if TYPE_CHECKING:
    from .paths import PathBuilder


def if_statement(pb: PathBuilder, stmt: ast.If, ref: StmtRef, path: tuple, blocks: tuple, frame: Frame,
                 alts: list[Alt]) -> list[Alt]:
    if not pb.kinds.has_dl(stmt, frame):
        pairs = pb.ctx.options.optional_ifs
        wanted = _updated_names(stmt, frame, pairs) if pairs and pb.split_optional else None
        # counted per path: `if`s in exclusive branches (two helpers, one per
        # branch of a flag) do not multiply each other's paths
        if wanted and max((a.optional_ifs for a in alts if a.status == "fall"), default=0) >= MAX_OPTIONAL_IFS:
            # one more that may split (judged without the writers: a superset)
            pb.optional_over = True  # PathBuilder.function_paths walks again, splitting none
            return pb.opaque(stmt, ref, frame, alts)
        if not (wanted and _updates_dl_value(wanted, alts, pairs)):
            return pb.opaque(stmt, ref, frame, alts)
        pb.optional_ifs += 1
        for a in alts:
            a.optional_ifs += 1
    alts = pb.run_actions(pb.exprs.evaluate(stmt.test, frame, ref), frame, alts)
    test_reads = reads_of(stmt.test, pb.exprs.replaced)
    for a in alts:
        a.add_node(pb.stmt_node(ref, frame, test_reads, ()))
    sub_body = blocks + ((path, "body"),)
    sub_else = blocks + ((path, "orelse"),)
    if pb.ctx.options.flatten:
        alts = pb.block(stmt.body, path + ("body",), sub_body, frame, alts)
        return pb.block(stmt.orelse, path + ("orelse",), sub_else, frame, alts)
    text = node_text(stmt.test)
    lines = (stmt.lineno, stmt.test.end_lineno or stmt.lineno)
    yes, no = split_alts(alts, text, lines)
    yes = pb.block(stmt.body, path + ("body",), sub_body, frame, yes)
    no = pb.block(stmt.orelse, path + ("orelse",), sub_else, frame, no)
    return pb.join(yes, no)


# Tensor methods that are no DL node but may update a kept value in an `if`
# (`r = p.view(...)`, the returned weights of BART-style attention;
# dslc.match.optional.KEPT_UPDATES): such an `if` may be split too.
SPLIT_METHODS = frozenset({"view"})


def _updated_names(stmt: ast.If, frame: Frame, pairs: frozenset) -> dict[str, set[str]]:
    """The local names a branch of `stmt` updates the way a loaded rule's
    optional node may (see `_updates_dl_value`), each with its update keys."""
    wanted: dict[str, set[str]] = {}  # name read by an update -> its update keys
    for s in list(stmt.body) + list(stmt.orelse):
        key, value = None, None
        if isinstance(s, ast.AugAssign) and isinstance(s.target, ast.Name):
            key, value = BINOPS.get(type(s.op)), s.target
        elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            v = s.value
            if isinstance(v, ast.BinOp):
                key, value = BINOPS.get(type(v.op)), v
            elif (isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute)
                  and (v.func.attr in TENSOR_METHODS or v.func.attr in SPLIT_METHODS)
                  and isinstance(v.func.value, ast.Name)):
                key, value = v.func.attr, v
        if key is None or not any(u == key for u, _ in pairs):
            continue
        for n in ast.walk(value):
            if isinstance(n, ast.Name) and n.id in frame.locals:
                wanted.setdefault(n.id, set()).add(key)
    return wanted


def _updates_dl_value(wanted: dict[str, set[str]], alts: list[Alt], pairs: frozenset) -> bool:
    """Does a branch of an `if` without DL calls update a value that a DL node
    wrote last, the way a loaded rule's optional node may (`if mask is not
    None: scores = scores + mask`)?  `pairs` (`Options.optional_ifs`) holds
    (update, writer): the update an operator (`+`) or a tensor method
    (`masked_fill`), the writer the op (`/`) or callable (`torch.matmul`) of
    the DL node that wrote the updated value.  Such an `if` splits the paths,
    so that a rule can see the update on one path and its absence on the
    other; any other `if` without DL calls stays one statement."""
    # a few paths suffice (the same statements wrote the name on most of them);
    # not splitting is always sound: the `if` stays one statement
    # (the first and the last few: `join` puts the paths through an earlier
    # `if`'s body first, so the last ones are where no earlier `if` was taken)
    live = [a for a in alts if a.status == "fall"]
    live = live if len(live) <= 16 else live[:8] + live[-8:]
    for a in live:
        for name, writer in a.dl_written(set(wanted)).items():
            if any((u, writer) in pairs for u in wanted[name]):
                return True
    return False


def loop_statement(pb: PathBuilder, stmt: ast.For | ast.AsyncFor | ast.While, ref: StmtRef, path: tuple,
                   blocks: tuple, frame: Frame, alts: list[Alt]) -> list[Alt]:
    flatten = pb.ctx.options.flatten
    is_while = isinstance(stmt, ast.While)
    loop_frame = frame
    if not is_while:
        layers = _loop_layers(pb, stmt, frame)
        if layers:
            # `for layer in self.layers: layer(x)`: calls of a container's element
            loop_frame = _with_loop_layers(frame, layers)
    if not pb.kinds.has_dl(stmt, loop_frame):
        return pb.opaque(stmt, ref, frame, alts)
    head = stmt.test if is_while else stmt.iter
    alts = pb.run_actions(pb.exprs.evaluate(head, frame, ref), frame, alts)
    head_reads = reads_of(head, pb.exprs.replaced)
    head_writes = set() if is_while else writes_of(stmt.target)
    if not is_while:
        head_reads |= target_reads(stmt.target)
    sub_body = blocks + ((path, "body"),)
    sub_else = blocks + ((path, "orelse"),)
    text = node_text(stmt.test) if is_while else None
    lines = (stmt.lineno, stmt.lineno)
    if is_while and not flatten:
        run, skip = split_alts(alts, text, lines)
    else:
        run, skip = alts, [a.copy() for a in alts]
    for a in run:
        a.add_node(pb.stmt_node(ref, frame, head_reads, head_writes))
    run = pb.block(stmt.body, path + ("body",), sub_body, loop_frame, run)
    broke = []
    for a in run:
        if a.status == "continue":
            a.status = "fall"
        elif a.status == "break":
            a.status = "fall"
            broke.append(a)
    if flatten:
        run = pb.block(stmt.orelse, path + ("orelse",), sub_else, frame, run)
        return run
    after = [a for a in run if a not in broke] + skip
    after = pb.block(stmt.orelse, path + ("orelse",), sub_else, frame, after)
    return pb.join(after, broke)


def with_statement(pb: PathBuilder, stmt: ast.With | ast.AsyncWith, ref: StmtRef, path: tuple, blocks: tuple,
                   frame: Frame, alts: list[Alt]) -> list[Alt]:
    actions = []
    reads, writes = set(), set()
    for item in stmt.items:
        actions += pb.exprs.evaluate(item.context_expr, frame, ref)
        reads |= reads_of(item.context_expr, pb.exprs.replaced)
        if item.optional_vars is not None:
            writes |= writes_of(item.optional_vars)
    alts = pb.run_actions(actions, frame, alts)
    for a in alts:
        a.add_node(pb.stmt_node(ref, frame, reads, writes))
    return pb.block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, alts)


def try_statement(pb: PathBuilder, stmt: ast.Try, ref: StmtRef, path: tuple, blocks: tuple, frame: Frame,
                  alts: list[Alt]) -> list[Alt]:
    """`try` and `try` / `except*`."""
    if not pb.kinds.has_dl(stmt, frame):
        return pb.opaque(stmt, ref, frame, alts)
    if pb.ctx.options.flatten:
        alts = pb.block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, alts)
        for h, handler in enumerate(stmt.handlers):
            alts = pb.block(handler.body, path + ("handlers", h, "body"),
                            blocks + ((path, f"handlers[{h}]"),), frame, alts)
        alts = pb.block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, alts)
        return pb.block(stmt.finalbody, path + ("finalbody",), blocks + ((path, "finalbody"),), frame, alts)
    starts = [a.copy() for a in alts]
    body = pb.block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, alts)
    body_fall = [a for a in body if a.status == "fall"]
    body_done = [a for a in body if a.status != "fall"]
    body_fall = pb.block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, body_fall)
    result = body_done + body_fall
    for h, handler in enumerate(stmt.handlers):
        hal = [a.copy() for a in starts]
        reads = reads_of(handler.type) if handler.type is not None else set()
        for a in hal:
            a.add_node(pb.stmt_node(ref, frame, reads, {handler.name} if handler.name else ()))
        result += pb.block(handler.body, path + ("handlers", h, "body"),
                           blocks + ((path, f"handlers[{h}]"),), frame, hal)
    result = pb.cap(result)
    fall = [a for a in result if a.status == "fall"]
    rest = [a for a in result if a.status != "fall"]
    fall = pb.block(stmt.finalbody, path + ("finalbody",), blocks + ((path, "finalbody"),), frame, fall)
    return rest + fall


def _loop_layers(pb: PathBuilder, stmt: ast.For | ast.AsyncFor, frame: Frame) -> dict[str, str]:
    """The loop's names that hold a container's elements: `for layer in
    self.layers` or `for conv, bn in zip(self.convs, self.bns)`, also as
    `for i, (conv, bn) in enumerate(zip(...))` (the builtins; a name rebound
    in the body holds something else there).  An iterable of `zip` that is
    not a container of the class (`zip(self.blocks, past_key_values)`)
    leaves its name a plain local."""
    target, it = stmt.target, stmt.iter
    builtins_here = {n for n in ("zip", "enumerate") if n not in frame.locals and n not in (frame.scope or pb.ctx.scope).names}
    if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate" and "enumerate" in builtins_here
            and len(it.args) == 1 and not it.keywords and isinstance(target, ast.Tuple) and len(target.elts) == 2
            and isinstance(target.elts[1], ast.Tuple) and isinstance(it.args[0], ast.Call)):
        target, it = target.elts[1], it.args[0]  # `for i, (a, b) in enumerate(zip(...))`
    if isinstance(target, ast.Name) and target is stmt.target:
        names, attrs = [target.id], [self_attr(it)]
    elif (isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts)
          and isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "zip" and "zip" in builtins_here
          and all(k.arg == "strict" for k in it.keywords) and len(it.args) == len(target.elts)):
        names, attrs = [e.id for e in target.elts], [self_attr(a) for a in it.args]
    else:
        return {}
    if len(set(names)) != len(names):
        return {}
    # `zip(self.blocks, past_key_values)`: only the names of the class's own
    # containers hold its layers; the others stay plain locals of the loop
    pairs = [(n, a) for n, a in zip(names, attrs) if a is not None and a in pb.ctx.init_types]
    if len(pairs) != len(names) and (len(names) == 1 or not pairs):
        return {}
    names, attrs = [n for n, _ in pairs], [a for _, a in pairs]
    rebound = set()
    for st in stmt.body + stmt.orelse:
        rebound |= writes_of_block(st)
    return {n: a for n, a in zip(names, attrs) if n not in rebound}


def writes_of_block(stmt: ast.stmt) -> set[str]:
    """Every name a statement (and the statements inside it) binds."""
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}


def _with_loop_layers(frame: Frame, layers: dict[str, str]) -> Frame:
    loop_layers = dict(frame.loop_layers)
    loop_layers.update(layers)
    return Frame(frame.method, frame.owner, frame.fn, frame.locals, frame.inlined_from, frame.depth,
                 frame.local_funcs, frame.local_imports, loop_layers, frame.result, frame.stack, frame.scope)
