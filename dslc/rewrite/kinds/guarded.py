"""A removed layer that `__init__` binds under a condition and to `None` or
`nn.Identity()` elsewhere (mobilenet/mobilevit, issue 8 item 12).

`__init__` binds the layer under a guard G and, where G fails, to `None`
(forward calls it under a guard on the attribute: `if self.<a> is not
None:`, `if self.<a>:`, or the `else:` of `if self.<a> is None:` / `if not
self.<a>:`, or after an early `if self.<a> is None: return E` when the
`return` right after the call gives E) or to `nn.Identity()` (forward may
call it unguarded).  Forward
stays as it is; the layer's binding becomes the rule's init target built
from the layers that already exist, then `self.<a> = None` (guarded call)
or `self.<a> = nn.Identity()` (unguarded call): under G the fused layer runs
and the guarded call is skipped, or the Identity passes the fused value
through; where G fails nothing changes.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass

from dslc import codes
from dslc.match import ir
from dslc.match.matcher import is_neutral, overwritten_by, removed_layer_vars
from dslc.rewrite import safety
from dslc.rewrite.astutil import exit_between, loop_carried_read, owner_name
from dslc.rewrite.imports import hook_registration, param_renames
from dslc.rewrite.flow import FlowChecks
from dslc.rewrite.inner import InnerForm, InnerUses, inner_attrs, target_class
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.kinds.guardhelper import check_aliases, check_helper
from dslc.rewrite.kinds.guardforms import GuardForm, early_return_form, guard_form, self_attr_nodes, truthy_reason
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite.rules import conditional_rule, renamed_key


@dataclass(frozen=True)
class Found:
    """What `NoneGuardedLayer.select` found."""

    var: str  # the removed layer's init variable
    index: int | None  # its node in the match (None: not a node this kind reads)
    form: GuardForm | None  # the guard on the attribute around its call; None: unguarded
    neutral: tuple  # the `None` / `nn.Identity()` bindings of the attribute the layer does not overwrite


class NoneGuardedLayer(Kind):
    """The removed layer's call under a guard on its attribute, or its
    attribute bound to `None` / `nn.Identity()` on another branch of `__init__`."""

    def select(self, match: ir.Match, setup: Setup | None):
        return self.find(match, setup.cls if setup is not None else None)

    def find(self, match: ir.Match, cls) -> Found | None:
        """The removed layer (a layer variable of the forward source absent
        from both targets), when its call is guarded by its attribute or
        `__init__` binds that attribute to `None` / `nn.Identity()` where the
        layer's binding does not overwrite it; None for any other match.
        A match with such a binding is always selected (the matcher leaves
        those bindings to this kind), so that a shape this kind does not
        rewrite is refused here rather than fused as if the layer were
        always there (`index` None)."""
        rule = match.rule
        removed = removed_layer_vars(rule)
        if not removed:
            return None
        nodes_ok = len(match.nodes) == len(rule.forward.source)
        for var in sorted(removed):
            layer = match.init_nodes.get(var)
            neutral = tuple(b for b in (cls.init if cls is not None and layer is not None else ())
                            if b.attr == layer.attr and b is not layer and is_neutral(b) and not overwritten_by(b, layer))
            index = next((i for i, pn in enumerate(rule.forward.source) if pn.layer_var == var), None)
            node = match.nodes[index] if nodes_ok and index is not None else None
            form = None
            if node is not None and node.kind == "layer" and node.attr:
                try:
                    stmt = self.mod.stmt(node.stmt)
                except Skip:
                    stmt = None
                parent, fname = self.mod.parent.get(id(stmt), (None, None))
                form = guard_form(parent, fname, node.attr)
                block = getattr(parent, fname, None) if parent is not None else None
                if form is None and isinstance(block, list):
                    form = early_return_form(block, next((i for i, st in enumerate(block) if st is stmt), 0), node.attr)
            elif neutral:
                return Found(var, None, None, neutral)
            if form is not None or neutral:
                return Found(var, index, form, neutral)
        return None

    def plan(self, match: ir.Match, setup: Setup | None, found: Found, plan: Plan) -> None:
        """Rewrite a match whose removed layer `$a` `__init__` binds under a
        guard G, and to `None` or `nn.Identity()` where G fails.

        Forward stays as it is.  At the layer's binding (under G) the statement
        becomes the rule's init target, built from the layers that already
        exist (`self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(...))`), then
        `self.a = None` (forward's call is guarded) or `self.a =
        nn.Identity()` (it is not).  Only for rules whose forward target is the
        source without the removed layer's call (`$conv($x) -> $h; $bn($h) ->
        $o` => `$conv($x) -> $o`), so that the unchanged forward computes the
        target; every other shape is refused here with its reason."""
        if found.index is None:
            b = found.neutral[0]
            raise Skip(codes.S_GUARDED_LAYER, (
                f"`self.{b.attr}` is also bound to `{'None' if b.kind == 'other' else 'nn.Identity()'}` (line "
                f"{b.stmt.lines[0] if b.stmt else 0}), and the matched call of the layer is not one this rewrite reads"))
        where, name = self._check_forward(match, found, setup.condition)
        node = match.nodes[found.index]
        between = None
        if any(n.stmt.method != node.stmt.method or n.inlined_from != node.inlined_from for n in match.nodes):
            between = check_helper(self.ctx, match, found.index, setup.cls, found.form, where)
        self._check_paths(match, found, where, name, setup.paths, between)
        layer, layer_stmt = self._check_init(match, setup.cls, found, where)
        self._init_edit(match, setup.cls, found, layer, layer_stmt, where, plan)

    def _check_forward(self, match: ir.Match, found: Found, condition):
        """The rule and the forward code have the shape this kind rewrites;
        returns the description of the place and the name the guarded call
        reads (None for an unguarded call)."""
        rule = match.rule
        index, form = found.index, found.form
        node = match.nodes[index]
        stmt = self.mod.stmt(node.stmt)
        if form is not None:
            where = f"the call of `self.{node.attr}` under {form.describe()} at line {form.if_stmt.lineno}"
        else:
            where = f"the call of `self.{node.attr}` at line {stmt.lineno}"
        if condition:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: {conditional_rule(rule)} is not rewritten there")
        if rule.init is None or rule.init.target is None:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the rule builds no fused layer in `__init__`")
        if index != len(match.nodes) - 1 or index == 0:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: it is not the last matched call after the others")
        source_pn = rule.forward.source[index]
        if len(source_pn.args) != 1 or source_pn.kwargs or len(source_pn.outputs) != 1 \
                or not isinstance(source_pn.args[0], ir.Var):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the removed layer's pattern is not `$a($in) -> $out`")
        rename = {source_pn.outputs[0].name: source_pn.args[0].name}
        rest = [renamed_key(pn, rename) for j, pn in enumerate(rule.forward.source) if j != index]
        if rest != [renamed_key(pn, rename) for pn in rule.forward.target]:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the rule's forward target is not its source without that call")
        self._check_single_uses(match, where)
        if form is None:
            none = next((b for b in found.neutral if b.kind == "other"), None)
            if none is not None:
                raise Skip(codes.S_GUARDED_LAYER, (
                    f"{where}: forward calls `self.{node.attr}` outside `if self.{node.attr} is not None:` (or `if "
                    f"self.{node.attr}:`), and `__init__` binds it to `None` at line "
                    f"{none.stmt.lines[0] if none.stmt else 0}"))
            return where, None
        if form.early:
            return where, _early_return_name(self.mod, node, stmt, form, where)
        return where, self._guarded_name(node, stmt, form, where)

    def _guarded_name(self, node, stmt: ast.stmt, form: GuardForm, where: str) -> str:
        """The guarded branch is exactly `v = self.<a>(v)` (or `t = self.<a>(s)`
        in the `else:` form whose other branch is `t = s`); the other branch
        is nothing, `pass`, or that copy.  Returns the name the call reads."""
        call_branch = form.if_stmt.orelse if form.in_orelse else form.if_stmt.body
        other_branch = form.if_stmt.body if form.in_orelse else form.if_stmt.orelse
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if len(call_branch) != 1 or (other_branch and not form.in_orelse):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the `if` holds more than the call")
        if not (value is not None and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
                and isinstance(value.args[0], ast.Name)
                and node.expr_span == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the call is not `v = self.<layer>(v)`")
        target, source = stmt.targets[0].id, value.args[0].id
        if form.in_orelse and len(other_branch) == 1 and isinstance(other_branch[0], ast.Assign) \
                and len(other_branch[0].targets) == 1 and isinstance(other_branch[0].targets[0], ast.Name) \
                and other_branch[0].targets[0].id == target and isinstance(other_branch[0].value, ast.Name) \
                and other_branch[0].value.id == source:
            return source  # `if self.a is None: t = s else: t = self.a(s)`
        if form.in_orelse and not (len(other_branch) == 1 and isinstance(other_branch[0], ast.Pass)):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the branch without the call is not `pass` or `{target} = {source}`")
        if target != source:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the call is not `v = self.<layer>(v)`")
        return source

    def _check_single_uses(self, match: ir.Match, where: str) -> None:
        """In each matched statement, `self.<a>` of a matched layer occurs only
        as the matched calls (`self.bn(self.conv(x)) + self.conv(y)` would
        call the fused layer a second time)."""
        per_stmt: dict[int, tuple[ast.stmt, dict[str, int]]] = {}
        for n in match.nodes:
            if n.kind != "layer" or not n.attr:
                continue
            st = self.mod.stmt(n.stmt)
            counts = per_stmt.setdefault(id(st), (st, {}))[1]
            counts[n.attr] = counts.get(n.attr, 0) + 1
        for st, counts in per_stmt.values():
            for attr, count in counts.items():
                if len(self_attr_nodes(st, attr)) != count:
                    raise Skip(codes.S_ATTR_USED, f"{where}: line {st.lineno} also uses `self.{attr}` beside the matched call")

    def _check_paths(self, match: ir.Match, found: Found, where: str, name: str | None, paths, between=None) -> None:
        """Every path runs all the matched calls, or (guarded: `self.a` is
        None) all but the guarded one; the value the removed call reads is
        read by nothing else.  `between`: the statements between the calls
        of a match across a helper (`guardhelper.check_helper`)."""
        index, form = found.index, found.form
        mod = self.mod
        node = match.nodes[index]
        keys = [safety.node_key(n) for j, n in enumerate(match.nodes) if j != index]
        mine = safety.node_key(node)
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if mine in have and not all(k in have for k in keys):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: some path runs it without the other matched calls")
            if any(k in have for k in keys) and mine not in have and not (
                    form is not None and any(form.skips(g) for g in path.guards)):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: some path runs the other matched calls but not the guarded one")
        call_stmt = form.if_stmt if form is not None else mod.stmt(node.stmt)
        helper = between is not None
        if between is None:
            between = self.ctx.statements_between(mod.stmt(match.nodes[0].stmt), call_stmt)
        exit_line = exit_between(between)
        if exit_line:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: line {exit_line} may leave before it (the fused layer would already have run)")
        if match.class_name and owner_name(match.nodes[-1].stmt.owner, match.class_name) != match.class_name:
            raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
        # the early `return E` reads the name only where it leaves (where the fused layer runs)
        early = (form.if_stmt.lineno, form.if_stmt.end_lineno) if form is not None and form.early else None
        if helper:
            # across a helper: the value and its copies per method; the name the call reads
            check_aliases(self.ctx, match, index, where, paths, early)
            if name is not None:
                self._check_loop_carried(match, found, where, name)
            return
        if name is not None:
            self._check_reads_before(match, index, where, name, paths, early)
        value = match.bindings.get(match.rule.forward.source[index].args[0].name)
        if value is not None and value.kind == "name":
            if early is not None:
                # the early `return E` reads the value only where it leaves, which is where the fused layer runs
                paths = [dataclasses.replace(p, nodes=tuple(n for n in p.nodes if not (
                    early[0] <= n.stmt.lines[0] and n.stmt.lines[1] <= early[1]))) for p in paths]
            reason = safety.check_dataflow(match, paths, produced_again=set(), target_inputs=set(), deleted_stmts=set(),
                                           final_stmt=safety.stmt_key(node), scan={value.text})
            if reason:
                raise Skip(codes.Reason(codes.code_of(reason), f"{where}: {reason}"))
            self._check_loop_carried(match, found, where, value.text)

    def _check_loop_carried(self, match: ir.Match, found: Found, where: str, name: str) -> None:
        """The value the removed call reads (`h` of `h = self.conv(x); x =
        self.norm(h)`) is not read elsewhere in a loop around the match, unless
        the removed call's statement writes that name again: the paths walk a
        loop body once, and the next iteration would read the fused value
        where the original left the layer's input."""
        node = match.nodes[found.index]
        stmt = self.mod.stmt(node.stmt)
        written = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        if name in written:
            return
        # the other matched statements stay as they are: a read of the name
        # there (`h = self.conv(h)`) is a read of the next iteration's
        matched = {id(stmt)}
        if found.form is not None:
            matched.add(id(found.form.if_stmt))  # `y = h` in the branch without the call reads the fused value there too
        hit = loop_carried_read(self.mod.chain(stmt), {name}, matched)
        if hit:
            raise Skip(codes.S_VALUE_READ, f"{where}: `{hit[0]}` is read at line {hit[1]} inside the loop around the "
                       f"match; the next iteration would read the fused value where the original left the input of "
                       f"`self.{node.attr}`")

    def _check_reads_before(self, match: ir.Match, index: int, where: str, name: str, paths, early=None) -> None:
        """The value before the guarded call is read by nothing but that call
        (and the early `return` whose lines are `early`)."""
        for path in paths:
            positions = [next((k for k, n in enumerate(path.nodes) if safety.node_key(n) == safety.node_key(m)), None)
                         for m in match.nodes]
            if None in positions:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: the matched calls are not on one path")
            producers = [k for k in range(positions[index]) if name in path.nodes[k].writes]
            start = producers[-1] if producers else -1
            for k in range(start + 1, positions[index]):
                if early is not None and path.nodes[k].stmt.lines == early:
                    continue
                if name in path.nodes[k].reads:
                    raise Skip(codes.S_VALUE_READ, f"{where}: `{name}` is read at line {path.nodes[k].stmt.lines[0]} before it")

    def _check_init(self, match: ir.Match, cls, found: Found, where: str):
        """__init__: the layer under G, None / Identity (and nothing else) where
        G fails; `self.<attr>` used nowhere else, and no subclass shares the change."""
        mod = self.mod
        node = match.nodes[found.index]
        attr = node.attr
        layer = match.init_nodes.get(found.var)
        if layer is None or layer.stmt is None:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is not bound in `__init__`")
        self._check_neutral_bindings(cls, layer, attr, where)
        if not layer.guards:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is not bound under a condition in `__init__`")
        if found.form is not None and found.form.bare:
            self._check_truthy(cls, layer, attr, found.form)
        layer_stmt = mod.stmt(layer.stmt)
        if not (isinstance(layer_stmt, ast.Assign) and len(layer_stmt.targets) == 1):
            raise Skip(codes.S_GUARDED_LAYER, f"line {layer_stmt.lineno} is not a plain `self.{attr} = ...`")
        around = found.form.if_stmt if found.form is not None else mod.stmt(node.stmt)
        if_lines = (around.lineno, around.end_lineno)
        if found.form is not None and found.form.early:
            if_lines = (around.lineno, mod.stmt(node.stmt).end_lineno)
        for use in (cls.attr_uses if cls is not None else ()):
            if use.attr != attr:
                continue
            if use.kind == "store" and use.method == layer.stmt.method and any(
                    b.stmt is not None and b.attr == attr and b.stmt.lines[0] <= use.lines[0] <= b.stmt.lines[1]
                    for b in cls.init):
                continue
            if use.kind != "store" and use.method == node.stmt.method and if_lines[0] <= use.lines[0] <= if_lines[1]:
                continue
            raise Skip(codes.S_ATTR_USED, f"{where}: `self.{attr}` is also used at line {use.lines[0]} (in `{use.method}`)")
        if cls is not None:
            for other in self.facts.classes:
                if cls.qualname in other.bases:
                    raise Skip(codes.S_GUARDED_LAYER, f"{where}: `{other.name}` subclasses `{cls.name}` and would share the change")
        return layer, layer_stmt

    def _other_uses(self, match: ir.Match, cls, changed: dict[str, str], plan: Plan) -> None:
        """The layers the target rebuilds are used nowhere else, or (`option
        inner`) those uses read the original layer inside the new one where
        this branch of `__init__` built it, and the attribute itself where it
        did not: `(self.conv[0] if isinstance(self.conv, ConvBn2d) else
        self.conv)`.  The attribute is bound once, to the original layer, so
        only the rewritten branch makes it an instance of the target's class."""
        forms: dict[str, InnerForm] = {}
        for attr, (var, accessor) in inner_attrs(match, changed).items():
            qualname = target_class(match, var)
            if qualname is None:
                forms[attr] = InnerForm(accessor, refused="the target's class is not known")
            else:
                forms[attr] = InnerForm(accessor, test=self.ctx.imports.spell(qualname, plan))
        reason = InnerUses(self.ctx).check(match, cls, changed, plan, forms)
        if reason:
            raise Skip(reason)

    def _check_truthy(self, cls, layer, attr: str, form: GuardForm) -> None:
        """A bare `if self.a:` means `is not None` only when every other value is truthy."""
        values = [layer] + [b for b in (cls.init if cls is not None else ()) if b.attr == attr and b.kind == "call"]
        for b in values:
            reason = truthy_reason(b.type, self.facts.classes)
            if reason is not None:
                line = b.stmt.lines[0] if b.stmt is not None else 0
                raise Skip(codes.S_GUARD_FALSY, (
                    f"{form.describe()} (line {form.if_stmt.lineno}) tests the truth of `self.{attr}`, which may be "
                    f"falsy though not `None`: {reason} (bound at line {line}); write `is not None`"))

    def _check_neutral_bindings(self, cls, layer, attr: str, where: str) -> None:
        """Every other binding of `self.<attr>` is `None` or `nn.Identity()`
        where the layer's is not (z3 over the guards of `__init__`), in a
        statement of its own."""
        from dslc.analysis import guards as guardlib

        mod = self.mod
        for b in (cls.init if cls is not None else ()):
            if b.attr != attr or b is layer:
                continue
            line = b.stmt.lines[0] if b.stmt else 0
            if not is_neutral(b):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is also bound to something else than `None` or `nn.Identity()` at line {line}")
            if b.stmt == layer.stmt:
                if _ifexp_branches(mod.stmt(layer.stmt), layer) is None:
                    raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr} = ... if ... else ...` (line {line}) is not one layer or the other")
                continue  # `self.a = L if c else N`: exclusive by construction
            if b.stmt is not None and b.stmt.method == layer.stmt.method and b.stmt.owner == layer.stmt.owner \
                    and b.stmt.lines[1] < layer.stmt.lines[0] \
                    and not any(isinstance(c, (ast.For, ast.AsyncFor, ast.While))
                                for c, _ in mod.chain(mod.stmt(layer.stmt)) + mod.chain(mod.stmt(b.stmt))):
                continue  # `self.a = None` first, then the layer under G: the layer's binding wins
            if guardlib.consistent(tuple(layer.guards) + tuple(b.guards)) is not guardlib.Answer.REFUTED:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr} = {'None' if b.kind == 'other' else 'nn.Identity()'}` (line {line}) may run "
                           f"after the layer's binding (the guards of the two are not exclusive)")

    def _init_edit(self, match: ir.Match, cls, found: Found, layer, layer_stmt: ast.stmt, where: str,
                   plan: Plan) -> None:
        """The layers the target replaces exist, unconditionally, before the
        binding; the binding becomes the target, then `self.<attr> = None`
        (or a new `nn.Identity()` where forward calls it unguarded)."""
        rule = match.rule
        var, attr = found.var, match.nodes[found.index].attr
        source_vars = {o.name for pn in rule.init.source for o in pn.outputs}
        changed = {}
        branches = _ifexp_branches(layer_stmt, layer)
        env_ctor = {var: self.ctx.relative_text(branches[1] if branches else layer_stmt.value, layer_stmt)}
        for pn in rule.init.target:
            for out in pn.outputs:
                if out.name not in source_vars:
                    raise Skip(codes.S_GUARDED_LAYER, f"{where}: the target builds a new layer `${out.name}`")
        for v in source_vars:
            if v == var:
                continue
            b = match.init_nodes.get(v)
            if b is None or b.stmt is None:
                raise Skip(codes.S_NO_BINDING, f"init variable `${v}` matched no binding")
            if [x for x in (cls.init if cls is not None else ()) if x.attr == b.attr] != [b]:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{b.attr}` is bound more than once")
            if b.stmt.method != layer.stmt.method or b.stmt.owner != layer.stmt.owner \
                    or b.stmt.lines[1] >= layer.stmt.lines[0] or not set(b.guards) <= set(layer.guards):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{b.attr}` is not built before `self.{attr}` wherever that is")
            changed[b.attr] = "replaces"
            env_ctor[v] = f"self.{b.attr}"
        self._other_uses(match, cls, changed, plan)
        # From outside the class (module functions, other classes, sibling
        # modules) neither layer can be redirected, and the guarded one is
        # now `None` where it was built.
        flow = FlowChecks(self.mod, self.facts, self.ctx.path)
        outer = dict(changed, **{attr: "sets to `None` where it was built"})
        reason = flow.package_subclass_uses(cls, outer, interface_kept=False) or flow.outside_uses(
            cls, outer, interface_kept=False, notes=plan.warnings, line=min(match.lines) if match.lines else 0)
        if reason:
            raise Skip(reason)
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = Env(match, attrs, {})
        env.ctor = env_ctor
        lines = []
        for pn in rule.init.target:
            out = pn.outputs[0].name
            lines.append(f"self.{attrs[out]} = {self.ctx.render_node(pn, env, plan)}")
        neutral = "None" if found.form is not None else f"{self.ctx.imports.spell('torch.nn.Identity', plan)}()"
        lines.append(f"self.{attr} = {neutral}")
        renames = param_renames(rule, attrs.get, lambda v: getattr(match.init_nodes.get(v), "attr", None))
        if renames:
            plan.needs_hook = True
            lines.append(hook_registration(renames, self.mod.unit))
        indent = self.mod.indent(layer_stmt)
        if branches:
            # `self.a = L if c else N` -> `if c: <lines> else: self.a = N` (or the mirror)
            layer_first, layer_expr, other_expr = branches
            test = f"if {self.ctx.relative_text(layer_stmt.value.test, layer_stmt)}:"
            other = [f"self.{attr} = {self.ctx.relative_text(other_expr, layer_stmt)}"]
            first, second = (lines, other) if layer_first else (other, lines)
            text = (self.ctx.lines_text([test], indent) + self.ctx.lines_text(first, indent + self.mod.unit)
                    + self.ctx.lines_text(["else:"], indent) + self.ctx.lines_text(second, indent + self.mod.unit))
        else:
            text = self.ctx.lines_text(lines, indent)
        start, end = self.mod.stmt_range(layer_stmt)
        self.ctx.claim(plan, start, end, self.ctx.fit(text, layer_stmt), layer_stmt)


def _ifexp_branches(stmt: ast.stmt, layer):
    """(layer first?, layer expression, other expression) of `self.a = L if c
    else N` (or `N if c else L`) where `layer` is the binding of L (its last
    guard is the test of this `a if c else b`) and neither branch is itself
    an `a if c else b`; None for any other statement."""
    value = getattr(stmt, "value", None)
    if not isinstance(value, ast.IfExp) or isinstance(value.body, ast.IfExp) or isinstance(value.orelse, ast.IfExp) \
            or not layer.guards or layer.guards[-1].text != ast.unparse(value.test):
        return None
    if layer.guards[-1].negated:
        return False, value.orelse, value.body
    return True, value.body, value.orelse


def _renamed(expr: ast.expr, old: str, new: str):
    """`expr` with each read of `old` read as `new`; None when `expr` reads
    `new` itself and `old != new` (it would read the value before the call)."""
    if old != new and any(isinstance(n, ast.Name) and n.id == new for n in ast.walk(expr)):
        return None
    copy = ast.parse(ast.unparse(expr), mode="eval").body
    for n in ast.walk(copy):
        if isinstance(n, ast.Name) and n.id == old:
            n.id = new
    return copy


def _early_return_name(mod, node, stmt: ast.stmt, form: GuardForm, where: str) -> str:
    """`if self.a is None: return E` then `t = self.<a>(s)` then `return R`,
    where R with `t` read as `s` is E (and reads no `s` beside, when `t`
    is another name): where the fused layer runs `self.a` is None and the
    early `return E` gives what `return R` gave after the removed call.
    Returns the name the call reads."""
    value = stmt.value if isinstance(stmt, ast.Assign) else None
    if not (value is not None and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
            and isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
            and isinstance(value.args[0], ast.Name)
            and node.expr_span == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)):
        raise Skip(codes.S_GUARDED_LAYER, f"{where}: the call is not `t = self.<layer>(s)`")
    target, source = stmt.targets[0].id, value.args[0].id
    parent, fname = mod.parent[id(stmt)]
    block = getattr(parent, fname)
    index = next(i for i, st in enumerate(block) if st is stmt)
    after = block[index + 1] if index + 1 < len(block) else None
    early = form.if_stmt.body[0].value
    if not (isinstance(after, ast.Return) and after.value is not None):
        raise Skip(codes.S_GUARDED_LAYER, f"{where}: the call's statement is not followed by a `return` "
                   f"(the fused layer would leave at the early `return`, skipping what follows)")
    renamed = _renamed(after.value, target, source)
    if renamed is None or ast.dump(renamed) != ast.dump(early):
        raise Skip(codes.S_GUARDED_LAYER, (
            f"{where}: `return {ast.unparse(after.value)}` (line {after.lineno}) is not the early "
            f"`return {ast.unparse(early)}`" + (f" with `{target}` read as `{source}`" if target != source else "")))
    if self_attr_nodes(early, node.attr):
        raise Skip(codes.S_GUARDED_LAYER, f"{where}: the early `return` reads `self.{node.attr}`")
    return source
