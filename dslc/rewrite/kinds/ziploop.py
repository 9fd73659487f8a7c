"""Paired containers: `for conv, bn in zip(self.convs, self.bns): x = bn(conv(x))` (issue 8 item 15).

The matched layers are the elements of several `nn.ModuleList`s that one
loop walks in step.  Forward stays as it is; in `__init__` element i of the
fused layer's container becomes the rule's init target built from the i-th
element of each container, and the elements of the other containers become
`nn.Identity()`, so each iteration computes `Identity(fused(x))`, the value
the chain computed.  Old checkpoints load through the pre-hook, one rename
per element and parameter (`convs.{i}.weight` -> `convs.{i}.0.weight`,
`bns.{i}.weight` -> `convs.{i}.1.weight`).

The pairing must be provable: both lists are comprehensions with the same
generators, literal lists of constructor calls of one length, or empty
`nn.ModuleList()`s each filled by one `append` in the body of one `for`
loop; the moved element reads nothing written between the two statements.
Everything else is refused with the reason (`plan` lists the conditions).
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite.astutil import exit_between, owner_name, self_attr_name
from dslc.rewrite.edits import Edit
from dslc.rewrite.flow import FlowChecks
from dslc.rewrite.imports import HOOK_HELPER, param_renames
from dslc.rewrite.kinds.base import Setup
from dslc.rewrite.kinds.container import ContainerFusion
from dslc.rewrite.kinds.init import ctor_extras
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite import safety
from dslc.rewrite.rules import changes_init, conditional_rule

_LIST = "torch.nn.ModuleList"


class ZipContainers(ContainerFusion):
    """A chain of layers, each the element of its own `nn.ModuleList`, walked by one `zip` loop."""

    def select(self, match: ir.Match, setup: Setup | None):
        if not changes_init(match.rule) or setup is None or setup.cls is None or not match.nodes:
            return None
        containers = [getattr(b, "container", None) for b in match.init_nodes.values()]
        if None in containers or len(set(containers)) < 2:
            return None
        if any(n.kind != "layer" or n.attr not in containers for n in match.nodes):
            return None
        kinds = {b.attr: b.type for b in setup.cls.init}
        return "zip" if all(kinds.get(c) == _LIST for c in containers) else None

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        """Fuse the i-th elements of the zipped containers, in `__init__` only.

        Refused: a `when` rule; a rule whose forward target is not its first
        layer, fused, applied to the chain's input, or whose init target
        takes anything but the matched layers; containers built in an
        inherited `__init__`, assigned more than once, in different blocks,
        or used anywhere but the `zip`; a loop variable used but in its
        matched call; an intermediate named and read again; matched calls
        not on the same paths or with an exit between them; elements whose
        pairing (same generators, or literal lists of one length) cannot be
        proved."""
        rule = match.rule
        var_of = {b.container: v for v, b in match.init_nodes.items()}
        order = [n.attr for n in match.nodes]
        kept = order[0]
        if setup.condition:
            raise Skip(codes.S_CONTAINER, f"{conditional_rule(rule)} cannot rewrite layers inside the containers `self.{kept}`")
        if len(set(order)) != len(order) or set(order) != set(var_of):
            raise Skip(codes.S_CONTAINER, f"the matched calls do not take one element of each of {_names(var_of)}")
        self._check_rule(rule, kept, var_of[kept])
        if any(isinstance(a, ir.Var) is False for a in rule.init.target[0].args) or rule.init.target[0].kwargs:
            raise Skip(codes.S_CONTAINER, f"the rule's init target takes more than the matched layers; inside {_names(var_of)} "
                       f"only a target built from the layers is rewritten")
        stmts = self._owners(match, setup.cls, var_of)
        loop = self._check_loop(match, setup, var_of)
        if all(not st.value.args for st in stmts.values()):
            elements, hook_after, appends = self._appended(var_of, stmts, kept)
        else:
            elements, hook_after, appends = self._pairs(var_of, stmts, kept), max(stmts.values(), key=lambda st: st.lineno), ()
        reason = _zip_uses(self.mod, match.class_name or "", set(var_of), stmts, _zip_of(loop)[0], appends)
        if reason:
            raise Skip(codes.S_CONTAINER_USE, reason)
        containers = {c: "changes the elements of" for c in var_of}
        reason = (safety.check_subclass_uses(self.facts, setup.cls, containers, interface_kept=False)
                  or FlowChecks(self.mod, self.facts, self.ctx.path).outside_uses(
                      setup.cls, containers, interface_kept=False, notes=plan.warnings,
                      line=min(match.lines) if match.lines else 0))
        if reason:
            raise Skip(reason)
        self._edits(match, plan, var_of, stmts, elements, kept, hook_after)

    def _owners(self, match: ir.Match, cls, var_of: dict) -> dict[str, ast.Assign]:
        """The one `self.<c> = nn.ModuleList(<list>)` of each container, in one block of this class's `__init__`."""
        mod = self.mod
        out = {}
        mine = match.class_name or ""
        for c in var_of:
            owns = [b for b in cls.init if b.attr == c]
            if len(owns) != 1 or owns[0].stmt is None or owns[0].guards:
                raise Skip(codes.S_CONTAINER, f"`self.{c}` is assigned more than once (or under a condition) in `__init__`")
            if owner_name(owns[0].stmt.owner, mine) != mine:
                raise Skip(codes.S_INHERITED, f"`self.{c}` is built in an inherited `__init__`; editing it would change every class that shares it")
            stmt = mod.stmt(owns[0].stmt)
            call = stmt.value if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            if not (self_attr_name(stmt.targets[0]) == c and isinstance(call, ast.Call) and len(call.args) <= 1
                    and not call.keywords):
                raise Skip(codes.S_CONTAINER, f"`self.{c}` (line {stmt.lineno}) is not built as `nn.ModuleList(<list>)` or `nn.ModuleList()`")
            for use in cls.attr_uses:
                lo, hi = owns[0].stmt.lines
                if use.attr == c and use.kind == "store" and not (use.method == owns[0].stmt.method and lo <= use.lines[0] <= hi):
                    raise Skip(codes.S_ATTR_ASSIGNED, f"attribute `self.{c}` is assigned again at line {use.lines[0]} (in `{use.method}`)")
            out[c] = stmt
        blocks = {id(mod.block_of(s)[2]) for s in out.values()}
        if len(blocks) != 1:
            raise Skip(codes.S_CONTAINER, f"{_names(var_of)} are built in different blocks; their lengths cannot be compared")
        return out

    def _check_loop(self, match: ir.Match, setup: Setup, var_of: dict) -> ast.For:
        """The `for a, b in zip(self.<c1>, self.<c2>)` that holds the matched calls: each loop
        name is used only as its matched call, an intermediate only by the next matched call,
        and the calls run on the same paths with nothing leaving between them."""
        mod = self.mod
        stmts = [mod.stmt(n.stmt) for n in match.nodes]
        loop = next((f for f in (c for c, _ in mod.chain(stmts[0])) if isinstance(f, ast.For) and _zipped(f) is not None
                     and set(_zipped(f).values()) >= set(var_of)), None)
        if loop is None or any(not any(f is loop for f, _ in mod.chain(s)) for s in stmts):
            raise Skip(codes.S_CONTAINER, f"the matched calls of {_names(var_of)} are not in one `zip` loop over them")
        fn = next((f for f in ast.walk(mod.tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and f.lineno <= loop.lineno <= (f.end_lineno or f.lineno) and any(s is loop for s in ast.walk(f))), None)
        calls = {n.expr_span for n in match.nodes}
        matched_funcs = {id(c.func) for c in ast.walk(loop) if isinstance(c, ast.Call)
                         and (c.lineno, c.col_offset, c.end_lineno, c.end_col_offset) in calls}
        names = {name for name, attr in _zipped(loop).items() if attr in var_of}
        for sub in ast.walk(fn):
            if isinstance(sub, ast.Name) and sub.id in names and isinstance(sub.ctx, ast.Load) and id(sub) not in matched_funcs:
                raise Skip(codes.S_CONTAINER_USE, f"the loop's `{sub.id}` is also used at line {sub.lineno}; the rewrite changes the layer it holds")
        call_at = {(c.lineno, c.col_offset, c.end_lineno, c.end_col_offset): c for c in ast.walk(loop) if isinstance(c, ast.Call)}
        for i, n in enumerate(match.nodes[:-1]):
            # read only as an argument of a later matched call (a loop-carried
            # read by an earlier one, `h = conv(h)`, would see the fused value)
            later = {id(a) for m in match.nodes[i + 1:] if m.expr_span in call_at for a in call_at[m.expr_span].args}
            for out in n.outputs:
                for sub in ast.walk(fn):
                    if isinstance(sub, ast.Name) and sub.id == out and isinstance(sub.ctx, ast.Load) and id(sub) not in later:
                        raise Skip(codes.S_VALUE_READ, f"the intermediate `{out}` is also read at line {sub.lineno}; the fused layer changes its value")
        keys = [safety.node_key(n) for n in match.nodes]
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if any(k in have for k in keys) and not all(k in have for k in keys):
                raise Skip(codes.S_CONTAINER, f"some path through the loop at line {loop.lineno} runs only some of the matched calls")
        first, last = min(stmts, key=lambda s: s.lineno), max(stmts, key=lambda s: s.lineno)
        exit_line = exit_between(self.ctx.statements_between(first, last))
        if exit_line:
            raise Skip(codes.S_CONTAINER, f"line {exit_line} may leave between the matched calls (the fused layer would already have run)")
        return loop

    def _pairs(self, var_of: dict, stmts: dict[str, ast.Assign], kept: str) -> list[dict[str, ast.expr]]:
        """The elements, as one {container: element expression} per position (the
        comprehension's element once, for a comprehension)."""
        mod = self.mod
        args = {c: s.value.args[0] for c, s in stmts.items()}
        comps = [a for a in args.values() if isinstance(a, (ast.ListComp, ast.GeneratorExp))]
        if len(comps) == len(args):
            gens = {tuple(ast.dump(g) for g in a.generators) for a in comps}
            if len(gens) != 1:
                raise Skip(codes.S_CONTAINER, f"the comprehensions that build {_names(var_of)} do not have the same `for` clauses; "
                           f"their lengths cannot be proved equal")
            pairs = [{c: a.elt for c, a in args.items()}]
        elif all(isinstance(a, (ast.List, ast.Tuple)) and not any(isinstance(e, ast.Starred) for e in a.elts) for a in args.values()):
            lengths = {len(a.elts) for a in args.values()}
            if len(lengths) != 1:
                raise Skip(codes.S_CONTAINER, f"{_names(var_of)} have different lengths ({', '.join(str(len(a.elts)) for a in args.values())})")
            pairs = [{c: a.elts[i] for c, a in args.items()} for i in range(lengths.pop())]
        else:
            raise Skip(codes.S_CONTAINER, f"the elements of {_names(var_of)} are not written as comprehensions with the same "
                       f"`for` clauses or as literal lists; their pairing cannot be proved")
        if any(not isinstance(e, ast.Call) for p in pairs for e in p.values()):
            raise Skip(codes.S_CONTAINER, f"the elements of {_names(var_of)} are not all constructor calls")
        _check_moved(mod.block_of(stmts[kept])[2], stmts, args, kept, var_of)
        return pairs

    def _appended(self, var_of: dict, stmts: dict[str, ast.Assign], kept: str):
        """`self.<c> = nn.ModuleList()` each, then one `self.<c>.append(Layer(...))`
        per container, all statements of one `for` body after them (so every
        iteration adds one element to each): the pairs, the loop, the appends."""
        mod = self.mod
        fn = next(f for f in ast.walk(mod.tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and any(s is stmts[kept] for s in f.body))
        appends = {}
        for c in var_of:
            found = [st for st in ast.walk(fn) if isinstance(st, ast.Expr) and isinstance(st.value, ast.Call)
                     and isinstance(st.value.func, ast.Attribute) and st.value.func.attr == "append"
                     and self_attr_name(st.value.func.value) == c]
            if len(found) != 1 or len(found[0].value.args) != 1 or found[0].value.keywords:
                raise Skip(codes.S_CONTAINER, f"`self.{c}` is not filled by one `self.{c}.append(<layer>)`; the lengths of "
                           f"{_names(var_of)} cannot be proved equal")
            appends[c] = found[0]
        loop, field = mod.block_of(appends[kept])[:2]
        body = getattr(loop, field)
        outer = mod.block_of(stmts[kept])[2]
        if not (isinstance(loop, ast.For) and field == "body" and all(a in body for a in appends.values())
                and loop in outer and all(outer.index(st) < outer.index(loop) for st in stmts.values())):
            raise Skip(codes.S_CONTAINER, f"the appends to {_names(var_of)} are not statements of one `for` body after the "
                       f"containers are built; their lengths cannot be proved equal")
        ordered = sorted(appends.values(), key=lambda st: st.lineno)
        exit_line = exit_between(self.ctx.statements_between(ordered[0], ordered[-1]))
        if exit_line:
            raise Skip(codes.S_CONTAINER, f"line {exit_line} may leave between the appends to {_names(var_of)}")
        args = {c: a.value.args[0] for c, a in appends.items()}
        if any(not isinstance(e, ast.Call) for e in args.values()):
            raise Skip(codes.S_CONTAINER, f"the elements of {_names(var_of)} are not all constructor calls")
        _check_moved(body, appends, args, kept, var_of)
        return [args], loop, tuple(a.value.func.value for a in appends.values())

    def _edits(self, match: ir.Match, plan: Plan, var_of: dict, stmts: dict, pairs: list, kept: str, last: ast.stmt) -> None:
        mod = self.mod
        rule = match.rule
        smap = mod.smap
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = Env(match, attrs, {})
        env.literals = self.ctx.literal_texts(match)
        env.extra_args = ctor_extras(match, {v: ("replaced" if c == kept else "deleted") for c, v in var_of.items()})
        for s in list(stmts.values()) + [last]:
            mod.stmt_range(s)  # alone on its lines
        for pair in pairs:
            env.ctor = {var_of[c]: smap.span_text((e.lineno, e.col_offset, e.end_lineno, e.end_col_offset)) for c, e in pair.items()}
            fused = self.ctx.render_node(rule.init.target[0], env, plan)
            for c, e in pair.items():
                start, end = smap.node_span(e)
                plan.edits.append(Edit(start, end, fused if c == kept else f"{_identity(self.ctx, stmts[c], plan)}()"))
                plan.claimed.add((start, end))
        env.ctor = {}
        for pair in pairs:
            for e in pair.values():
                plan.lines.update(range(e.lineno, e.end_lineno + 1))
        renames = param_renames(rule, lambda v: f"{kept}.{{i}}" if v in attrs else None,
                                lambda v: f"{match.init_nodes[v].container}.{{i}}" if v in attrs else None)
        if renames:
            plan.needs_hook = True
            text = self.ctx.lines_text([_hook_per_element(renames, kept, mod.unit)], mod.indent(last))
            at = smap.line_end(last.end_lineno)
            if not mod.ends_with_newline(last.end_lineno):
                text = mod.nl + text.rstrip("\r\n")
            plan.edits.append(Edit(at, at, text))
            plan.claimed.add((at, at))


def _zip_of(loop: ast.For) -> tuple[ast.Call, ast.Tuple] | tuple[None, None]:
    """The `zip(...)` call a loop walks and the loop's tuple for its items
    (`for a, b in zip(...)` or `for i, (a, b) in enumerate(zip(...))`)."""
    it, target = loop.iter, loop.target
    if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "enumerate" and len(it.args) == 1
            and isinstance(target, ast.Tuple) and len(target.elts) == 2):
        it, target = it.args[0], target.elts[1]
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "zip" and isinstance(target, ast.Tuple):
        return it, target
    return None, None


def _zipped(loop: ast.For) -> dict[str, str] | None:
    """`for a, b in zip(self.x, self.y)`: {a: x, b: y}."""
    it, target = _zip_of(loop)
    if it is None or len(target.elts) != len(it.args):
        return None
    out = {}
    for t, a in zip(target.elts, it.args):
        if isinstance(t, ast.Name) and self_attr_name(a) is not None:
            out[t.id] = self_attr_name(a)
    return out


def _names(var_of) -> str:
    return " and ".join(f"`self.{c}`" for c in sorted(var_of))


def _identity(ctx, stmt: ast.Assign, plan: Plan) -> str:
    func = stmt.value.func
    if isinstance(func, ast.Attribute) and func.attr == "ModuleList":
        return ctx.mod.smap.span_text((func.value.lineno, func.value.col_offset, func.value.end_lineno, func.value.end_col_offset)) + ".Identity"
    return ctx.imports.spell("torch.nn.Identity", plan)


def _hook_per_element(renames: list[tuple[str, str, bool]], kept: str, unit: str) -> str:
    """The pre-hook registration for every element: one (new, old, keep) template per line."""
    items = "".join(f"{unit * 2}({n!r}, {o!r}, {k}),\n" for n, o, k in renames)
    return (f"self._register_load_state_dict_pre_hook({HOOK_HELPER}(tuple(\n"
            f"{unit}(new.format(i=i), old.format(i=i), keep)\n"
            f"{unit}for i in range(len(self.{kept}))\n"
            f"{unit}for new, old, keep in (\n{items}{unit})\n)))")


def _check_moved(body: list, stmts: dict, args: dict, kept: str, var_of: dict) -> None:
    """The other containers' elements move to the kept container's statement:
    they may read nothing written between the statements (of `body`)."""
    index = sorted(body.index(s) for s in stmts.values())
    between = body[index[0] + 1:index[-1]]
    written = {n.id for st in between for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    written |= {n.attr for st in between for n in ast.walk(st) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    for c, a in args.items():
        if c == kept:
            continue
        read = {n.id for n in ast.walk(a) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(a) if isinstance(n, ast.Attribute)}
        if read & written:
            raise Skip(codes.S_CONTAINER, f"`{sorted(read & written)[0]}` changes between the statements that build {_names(var_of)}; "
                       f"the elements of `self.{c}` cannot move")


def _zip_uses(mod, class_name: str, attrs: set[str], stmts: dict, zip_call: ast.Call, appends: tuple = ()) -> str | None:
    """Every `self.<c>` of the class and its subclasses in the file is its one
    assignment, its one `append` or an argument of the matched `zip`."""
    cls = mod.classes.get(class_name)
    if cls is None:
        return f"cannot find the class `{class_name}`"
    family, names, grew = [cls], {class_name}, True
    while grew:
        grew = False
        for other in mod.classes.values():
            if other not in family and any(getattr(b, "id", getattr(b, "attr", None)) in names for b in other.bases):
                family.append(other)
                names.add(other.name)
                grew = True
    allowed = {id(a) for a in zip_call.args} | {id(s.targets[0]) for s in stmts.values()} | {id(a) for a in appends}
    for sub in (n for klass in family for n in ast.walk(klass)):
        if isinstance(sub, ast.Attribute) and sub.attr in attrs and isinstance(sub.value, ast.Name) \
                and sub.value.id == "self" and id(sub) not in allowed:
            return f"`self.{sub.attr}` is also used at line {sub.lineno}; the rewrite changes its elements"
    return None
