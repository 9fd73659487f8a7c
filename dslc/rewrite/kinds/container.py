"""Container fusion: matched layers that are elements of one container literal.

`nn.Sequential`: when the matched layers are consecutive elements of one
`self.<seq> = nn.Sequential(e0, e1, ...)` literal and the match is the one
call of `self.<seq>`, forward is left alone and only that constructor call
changes: element i becomes the init target (built from the element
expressions), the later matched elements `nn.Identity()`, so no index moves
(`plan_sequential`; the refusals are listed there and in `_sequential_uses`).
`nn.ModuleList`: a drop-in replacement (forward `_`) of every element
(`plan_module_list`).  Other containers are skipped.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite.astutil import container_reason, dotted_tail, owner_name, self_attr_name
from dslc.rewrite.context import Module
from dslc.rewrite.edits import Edit
from dslc.rewrite.imports import hook_registration, param_renames
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.kinds.init import ctor_extras
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite.rules import attrof_bases, changes_init, conditional_rule, layer_var_of


class ContainerFusion(Kind):
    """Layers inside an `nn.Sequential` or `nn.ModuleList` the class builds."""

    def select(self, match: ir.Match, setup: Setup | None):
        if changes_init(match.rule) and any(getattr(b, "container", None) for b in match.init_nodes.values()):
            return "list" if self.module_list_replacement(match, setup.cls) else "sequential"
        return None

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        if found == "list":
            self.plan_module_list(match, setup.cls, setup.condition, plan)
        else:
            self.plan_sequential(match, setup.cls, setup.condition, plan)

    def module_list_replacement(self, match: ir.Match, cls) -> bool:
        """A module-replacement rule (forward `_`) whose layer is an element of
        an `nn.ModuleList` (called by `for layer in self.<list>:`)."""
        rule = match.rule
        if rule.forward is None or rule.forward.target is not None or cls is None:
            return False
        containers = {getattr(b, "container", None) for b in match.init_nodes.values()}
        if len(containers) != 1 or None in containers:
            return False
        (attr,) = containers
        return [b.type for b in cls.init if b.attr == attr] == ["torch.nn.ModuleList"]

    def plan_module_list(self, match: ir.Match, cls, condition: str | None, plan: Plan) -> None:
        """Replace every element of `self.<list> = nn.ModuleList([...])` (a list
        literal, or a comprehension's element) by the rule's init target.

        The rule keeps the layer's interface (forward `_`), and every element
        is of the matched type and agrees with the same bindings (the
        matcher's rule for a loop over the container), so each element can
        be swapped where it is built; forward is unchanged.  Refused: `when`,
        a checkpoint mapping (the keys would need the element prefixes), a
        rule with more than one init layer, elements that are not constructor
        calls written in the list, and a container assigned more than once."""
        mod = self.mod
        rule = match.rule
        (var,) = match.init_nodes if len(match.init_nodes) == 1 else (None,)
        first = next(iter(match.init_nodes.values()))
        seq = first.container
        if var is None or len(rule.init.target) != 1 or tuple(o.name for o in rule.init.target[0].outputs) != (var,):
            raise Skip(codes.S_CONTAINER, f"inside the container `self.{seq}` only a one-layer replacement is rewritten")
        if condition:
            raise Skip(codes.S_CONTAINER, f"{conditional_rule(match.rule)} cannot rewrite layers inside the container `self.{seq}`")
        owns = [b for b in cls.init if b.attr == seq]
        elements = [b for b in cls.init if b.container == seq]
        if len(owns) != 1 or owns[0].stmt is None or first.stmt is None:
            raise Skip(codes.S_CONTAINER, f"`self.{seq}` is assigned more than once in `__init__`; the emitter rewrites only a single `nn.ModuleList(...)`")
        if any(b.type != first.type for b in elements):
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` are not all of type {first.type}")
        mine = match.class_name or ""
        if owner_name(first.stmt.owner, mine) != mine:
            raise Skip(codes.S_INHERITED, f"`self.{seq}` is built in an inherited `__init__`; editing it would change every class that shares it")
        renames = [pm for pm in rule.params if f"{pm.target.base.name}.{pm.target.attr}" != f"{pm.source.base.name}.{pm.source.attr}"]
        if renames:
            raise Skip(codes.S_CONTAINER, f"the rule renames parameters, which inside the container `self.{seq}` would need per-element keys")
        stmt = mod.stmt(owns[0].stmt)
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        call = stmt.value if isinstance(stmt, ast.Assign) else None
        if not (isinstance(target, ast.Attribute) and self_attr_name(target) == seq and isinstance(call, ast.Call)
                and len(call.args) == 1 and not call.keywords):
            raise Skip(container_reason(first))
        arg = call.args[0]
        if isinstance(arg, (ast.ListComp, ast.GeneratorExp)) and len(arg.generators) == 1:
            exprs = [arg.elt]
        elif isinstance(arg, (ast.List, ast.Tuple)) and not any(isinstance(e, ast.Starred) for e in arg.elts):
            exprs = list(arg.elts)
        else:
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) are not written in the `nn.ModuleList(...)`")
        if len(exprs) != len(elements) or any(not isinstance(e, ast.Call) for e in exprs):
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) are not all constructor calls of the matched layer")
        lo, hi = owns[0].stmt.lines
        for use in cls.attr_uses:
            if use.attr == seq and use.kind == "store" and not (use.method == owns[0].stmt.method and lo <= use.lines[0] <= hi):
                raise Skip(codes.S_ATTR_ASSIGNED, f"attribute `self.{seq}` is assigned again at line {use.lines[0]} (in `{use.method}`)")
        env = Env(match, {var: first.attr}, {})
        fused = self.ctx.render_node(rule.init.target[0], env, plan)
        mod.stmt_range(stmt)  # alone on its lines
        for expr in exprs:
            start, end = mod.smap.node_span(expr)
            plan.edits.append(Edit(start, end, fused))
            plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))

    def plan_sequential(self, match: ir.Match, cls, condition: str | None, plan: Plan) -> None:
        """Matched layers that are consecutive elements of one `nn.Sequential` literal.

        Forward stays as it is (the call of the container).  In the
        `self.<seq> = nn.Sequential(e0, e1, ...)` statement, element i becomes
        the rule's init target built from the element expressions and
        elements i+1.. become `nn.Identity()`, so later indices do not move;
        checkpoints load through the pre-hook (`<seq>.<i>.<p>` renamed by the
        `params` mapping under `<seq>.<i>.`).  Refused (see `_sequential_uses`)
        when the container is indexed, iterated, measured, mutated, passed
        around, assigned twice or called at more than one place, when its
        elements are not a plain positional list of constructor calls, and
        when the matched elements are not adjacent.
        """
        seq, stmt, call = self._sequential(match, cls, condition)
        indices, var_of_attr = self._elements(match, seq, stmt, call)
        fused_var = var_of_attr[f"{seq}.{indices[0]}"]
        self._check_rule(match.rule, seq, fused_var)
        reason = _sequential_uses(self.mod, match.class_name or "", seq, stmt, match.nodes[0])
        if reason:
            raise Skip(codes.S_CONTAINER_USE, reason)
        self._sequential_edits(match, plan, seq, stmt, call, indices, var_of_attr, fused_var)

    def _sequential(self, match: ir.Match, cls, condition: str | None):
        """The one `self.<seq> = nn.Sequential(<positional elements>)` that holds the matched layers."""
        mod = self.mod
        bindings = match.init_nodes
        first = next(b for b in bindings.values() if getattr(b, "container", None))
        containers = {getattr(b, "container", None) for b in bindings.values()}
        if len(containers) != 1:
            raise Skip(container_reason(first))  # a chain that leaves the container
        seq = first.container
        if condition:
            raise Skip(codes.S_CONTAINER, f"{conditional_rule(match.rule)} cannot rewrite layers inside the container `self.{seq}`")
        if cls is None:
            raise Skip(container_reason(first))
        owns = [b for b in cls.init if b.attr == seq]
        if len(owns) != 1 or owns[0].type != "torch.nn.Sequential":
            if len(owns) > 1:
                raise Skip(codes.S_CONTAINER, f"`self.{seq}` is assigned more than once in `__init__`; the emitter rewrites only a single `nn.Sequential(...)`")
            raise Skip(container_reason(first))
        seq_binding = owns[0]
        if first.stmt is None or seq_binding.stmt is None:
            raise Skip(container_reason(first))
        mine = match.class_name or ""
        owner = owner_name(first.stmt.owner, mine)
        if owner != mine:
            raise Skip(codes.S_INHERITED, f"`self.{seq}` is built in `{owner}.__init__`, inherited; editing it would change every class that shares it")
        stmt = mod.stmt(first.stmt)
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
                and target.attr == seq and isinstance(stmt.value, ast.Call)):
            raise Skip(container_reason(first))
        call = stmt.value
        if any(isinstance(a, ast.Starred) for a in call.args) or call.keywords:
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) are built from `*args`; only literal positional elements are rewritten")
        if any(isinstance(a, ast.Call) and dotted_tail(a.func) in ("OrderedDict", "dict") for a in call.args):
            raise Skip(codes.S_CONTAINER, f"the elements of `self.{seq}` (line {stmt.lineno}) come from an OrderedDict; only literal positional elements are rewritten")
        return seq, stmt, call

    def _elements(self, match: ir.Match, seq: str, stmt: ast.stmt, call: ast.Call) -> tuple[list[int], dict[str, str]]:
        """The matched elements, in forward order: consecutive indices of one call of the container."""
        first = next(b for b in match.init_nodes.values() if getattr(b, "container", None))
        rule = match.rule
        bindings = match.init_nodes
        if rule.forward is None or rule.forward.target is None or not match.nodes:
            raise Skip(container_reason(first))
        var_of_attr = {b.attr: v for v, b in bindings.items()}
        indices = []
        for node in match.nodes:
            attr = node.attr or ""
            head, _, index = attr.rpartition(".")
            if node.kind != "layer" or head != seq or not index.isdigit() or attr not in var_of_attr:
                raise Skip(codes.S_CONTAINER, f"the match at line {node.stmt.lines[0]} mixes elements of `self.{seq}` with other code; "
                           f"only a chain of its elements can be rewritten inside it")
            indices.append(int(index))
        if len({n.expr_span for n in match.nodes}) != 1 or match.nodes[0].expr_span is None:
            raise Skip(codes.S_CONTAINER, f"the matched elements of `self.{seq}` come from more than one call of it")
        if sorted(indices) != list(range(indices[0], indices[0] + len(indices))) or indices != sorted(indices):
            names = " and ".join(f"`self.{seq}.{i}`" for i in indices)
            raise Skip(codes.S_CONTAINER, f"the matched elements {names} are not adjacent in `self.{seq}`")
        if set(var_of_attr) != {n.attr for n in match.nodes}:
            raise Skip(codes.S_CONTAINER, f"the rule's init names a layer outside the matched chain of `self.{seq}`")
        if max(indices) >= len(call.args) or any(not isinstance(call.args[i], ast.Call) for i in indices):
            raise Skip(codes.S_CONTAINER, f"the matched elements of `self.{seq}` (line {stmt.lineno}) are not constructor calls written in the `nn.Sequential(...)`")
        return indices, var_of_attr

    def _check_rule(self, rule: ir.Rule, seq: str, fused_var: str) -> None:
        """The rule must be "the first layer, fused, applied to the chain's input"."""
        source, fwd_target = rule.forward.source, rule.forward.target
        tpn = fwd_target[0] if len(fwd_target) == 1 else None
        ok = (
            tpn is not None and tpn.kind == "layer" and layer_var_of(tpn) == fused_var
            and len(tpn.args) == 1 and not tpn.kwargs and source and source[0].args
            and tpn.args[0] == source[0].args[0] and tuple(tpn.outputs) == tuple(source[-1].outputs)
            and all(pn.kind == "layer" and layer_var_of(pn) is not None for pn in source)
        )
        init_target = rule.init.target
        ok = ok and len(init_target) == 1 and tuple(o.name for o in init_target[0].outputs) == (fused_var,) \
            and not attrof_bases(init_target[0])
        if not ok:
            raise Skip(codes.S_CONTAINER, f"inside the container `self.{seq}` only the init can change (the rule's forward target is not "
                       f"its fused layer applied to the chain's input)")

    def _sequential_edits(self, match: ir.Match, plan: Plan, seq: str, stmt: ast.stmt, call: ast.Call,
                          indices: list[int], var_of_attr: dict[str, str], fused_var: str) -> None:
        """Edits inside the `nn.Sequential(...)` call; checkpoint names under `<seq>.<i>.`."""
        mod = self.mod
        rule = match.rule
        bindings = match.init_nodes
        init_target = rule.init.target
        smap = mod.smap
        ctor = {var_of_attr[f"{seq}.{i}"]: smap.span_text((call.args[i].lineno, call.args[i].col_offset,
                                                            call.args[i].end_lineno, call.args[i].end_col_offset))
                for i in indices}
        attrs = {v: b.attr for v, b in bindings.items()}
        env = Env(match, attrs, {})
        env.literals = self.ctx.literal_texts(match)
        env.extra_args = ctor_extras(match, {v: ("replaced" if v == fused_var else "deleted") for v in bindings})
        env.ctor = ctor
        fused = self.ctx.render_node(init_target[0], env, plan)
        env.ctor = {}
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "Sequential":
            identity = smap.span_text((func.value.lineno, func.value.col_offset, func.value.end_lineno, func.value.end_col_offset)) + ".Identity"
        else:
            identity = self.ctx.imports.spell("torch.nn.Identity", plan)
        mod.stmt_range(stmt)  # alone on its lines (the hook goes after it)
        for k, i in enumerate(indices):
            arg = call.args[i]
            start, end = smap.node_span(arg)
            plan.edits.append(Edit(start, end, fused if k == 0 else f"{identity}()"))
            plan.claimed.add((start, end))
        plan.lines.update(range(stmt.lineno, stmt.end_lineno + 1))

        # Checkpoint names under `<seq>.<i>.`.
        renames = param_renames(rule, attrs.get, attrs.get)
        if renames:
            plan.needs_hook = True
            text = self.ctx.lines_text([hook_registration(renames, mod.unit)], mod.indent(stmt))
            at = smap.line_end(stmt.end_lineno)
            if not mod.ends_with_newline(stmt.end_lineno):
                text = mod.nl + text.rstrip("\r\n")
            plan.edits.append(Edit(at, at, text))
            plan.claimed.add((at, at))




def _sequential_uses(mod: Module, class_name: str, seq: str, init_stmt: ast.stmt, node) -> str | None:
    """Every `self.<seq>` of the class is its one assignment or the one matched call.

    An index (`self.seq[0]`), an iteration, `len(...)`, a method (`.append`,
    `.add_module`), passing it around or a second call would see the element
    indices or types the rewrite changes.
    """
    cls = mod.classes.get(class_name)
    if cls is None:
        return f"cannot find the class `{class_name}` that holds `self.{seq}`"
    # The class and its subclasses in this file (they inherit the container).
    family = [cls]
    names = {class_name}
    grew = True
    while grew:
        grew = False
        for other in mod.classes.values():
            if other not in family and any(dotted_tail(b) in names for b in other.bases):
                family.append(other)
                names.add(other.name)
                grew = True
    parents: dict[int, ast.AST] = {}
    for klass in family:
        for sub in ast.walk(klass):
            for child in ast.iter_child_nodes(sub):
                parents[id(child)] = sub
    lo, col, hi, end_col = node.expr_span
    calls = []
    for sub in (n for klass in family for n in ast.walk(klass)):
        if not (isinstance(sub, ast.Attribute) and sub.attr == seq and isinstance(sub.value, ast.Name) and sub.value.id == "self"):
            continue
        parent = parents.get(id(sub))
        if isinstance(sub.ctx, ast.Store):
            if parent is init_stmt:
                continue
            return f"`self.{seq}` is assigned again at line {sub.lineno}"
        if isinstance(parent, ast.Call) and parent.func is sub:
            calls.append(parent)
            continue
        if isinstance(parent, ast.Subscript) and parent.value is sub:
            return f"`self.{seq}` is also indexed at line {sub.lineno}; the rewrite changes its elements"
        if isinstance(parent, (ast.For, ast.AsyncFor, ast.comprehension)) and parent.iter is sub:
            return f"`self.{seq}` is also iterated at line {sub.lineno}; the rewrite changes its elements"
        if isinstance(parent, ast.Attribute):
            return f"`self.{seq}.{parent.attr}` is used at line {sub.lineno}; the rewrite changes its elements"
        return f"`self.{seq}` is also used at line {sub.lineno} (`{ast.unparse(parent) if parent is not None else seq}`); the rewrite changes its elements"
    # Several calls are fine: each runs the whole container, so fusing two
    # adjacent elements changes no call's result (the init is one location).
    if not calls:
        return f"`self.{seq}` is never called directly; the rewrite cannot see how its elements are used"
    if not any((c.lineno, c.col_offset, c.end_lineno, c.end_col_offset) == (lo, col, hi, end_col) for c in calls):
        return f"no call of `self.{seq}` (lines {', '.join(str(c.lineno) for c in calls)}) is the matched location"
    return None
