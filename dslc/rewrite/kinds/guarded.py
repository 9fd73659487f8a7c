"""A layer guarded by `if self.<attr> is not None:` (mobilenet/mobilevit, issue 8 item 12).

`__init__` binds the layer under a condition and `None` otherwise; forward
calls it under `if self.<attr> is not None:`.  Forward stays as it is; the
layer's binding becomes the rule's init target built from the layers that
already exist, then `self.<attr> = None`.
"""

from __future__ import annotations

import ast

from dslc.analysis.model import Guard
from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety
from dslc.rewrite.astutil import exit_between, owner_name
from dslc.rewrite.imports import hook_registration, param_renames
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite.rules import renamed_key


class NoneGuardedLayer(Kind):
    """The removed layer's call is the only statement of `if self.<attr> is not None:`."""

    def select(self, match: ir.Match, setup: Setup | None):
        return self.none_guarded_layer(match)

    def none_guarded_layer(self, match: ir.Match):
        """(var, node index, `if` statement) when the matched call of a layer
        the rewrite removes is the only statement of `if self.<attr> is not
        None:` (mobilenet/mobilevit: `__init__` binds the layer under a
        condition and `None` otherwise); None for any other shape."""
        rule = match.rule
        if rule.forward is None or rule.forward.target is None or rule.init is None or rule.init.target is None:
            return None
        if len(match.nodes) != len(rule.forward.source):
            return None
        target_vars = {o.name for pn in rule.init.target for o in pn.outputs}
        for i, (pn, node) in enumerate(zip(rule.forward.source, match.nodes)):
            var = pn.layer_var
            if var is None or var in target_vars or node.kind != "layer" or not node.attr:
                continue
            try:
                stmt = self.mod.stmt(node.stmt)
            except Skip:
                return None
            parent, fname = self.mod.parent.get(id(stmt), (None, None))
            if isinstance(parent, ast.If) and fname == "body" and _is_not_none_test(parent.test, node.attr):
                return var, i, parent
        return None

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        """Rewrite a match whose removed layer `$a` is called under
        `if self.a is not None:` while `__init__` binds `self.a` to the layer
        under a guard G and to `None` where G fails.

        Forward stays as it is.  At the layer's binding (under G) the statement
        becomes the rule's init target, built from the layers that already
        exist (`self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(...))`), then
        `self.a = None`: under G the fused layer runs and the guarded call is
        skipped; where G fails nothing changes.  Only for rules whose forward
        target is the source without the removed layer's call (`$conv($x) ->
        $h; $bn($h) -> $o` => `$conv($x) -> $o`), so that the unchanged
        forward computes the target; every other shape is refused here with
        its reason."""
        var, index, if_stmt = found
        where, node, name = self._check_forward(match, found, setup.condition)
        self._check_paths(match, found, where, name, setup.paths)
        layer, layer_stmt = self._check_init(match, setup.cls, var, where, node, if_stmt)
        self._init_edit(match, setup.cls, var, node.attr, layer, layer_stmt, where, plan)

    def _check_forward(self, match: ir.Match, guarded, condition):
        """The rule and the forward code have the shape this kind rewrites."""
        var, index, if_stmt = guarded
        rule = match.rule
        where = f"the call of `self.{match.nodes[index].attr}` under `if ... is not None:` at line {if_stmt.lineno}"
        if condition:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: a rule with `when` is not rewritten there")
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
        node = match.nodes[index]
        stmt = if_stmt.body[0]
        if len(if_stmt.body) != 1 or if_stmt.orelse:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the `if` holds more than the call")
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if not (value is not None and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords
                and isinstance(value.args[0], ast.Name) and value.args[0].id == stmt.targets[0].id
                and node.expr_span == (value.lineno, value.col_offset, value.end_lineno, value.end_col_offset)):
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: the call is not `v = self.<layer>(v)`")
        name = stmt.targets[0].id
        for other in match.nodes:
            if other.stmt.method != node.stmt.method or other.inlined_from != node.inlined_from:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: the matched calls are in different methods")
        return where, node, name

    def _check_paths(self, match: ir.Match, guarded, where: str, name: str, paths) -> None:
        """Every path runs all the matched calls, or (`self.a` is None) all but
        the guarded one; the value before the guarded call is read by nothing
        but that call."""
        var, index, if_stmt = guarded
        mod = self.mod
        node = match.nodes[index]
        keys = [safety.node_key(n) for j, n in enumerate(match.nodes) if j != index]
        mine = safety.node_key(node)
        around = Guard(ast.unparse(if_stmt.test), True)
        for path in safety.candidate_paths(match, self.facts):
            have = {safety.node_key(n) for n in path.nodes}
            if mine in have and not all(k in have for k in keys):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: some path runs it without the other matched calls")
            if any(k in have for k in keys) and mine not in have and not any(
                    g.text == around.text and g.negated for g in path.guards):
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: some path runs the other matched calls but not the guarded one")
        first = mod.stmt(match.nodes[0].stmt) if index else None
        if first is not None:
            exit_line = exit_between(self.ctx.statements_between(first, if_stmt))
            if exit_line:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: line {exit_line} may leave before it (the fused layer would already have run)")
            if match.class_name and owner_name(match.nodes[-1].stmt.owner, match.class_name) != match.class_name:
                raise Skip(codes.S_INHERITED, f"{where}: the matched code is inherited")
        # The value before the guarded call is read by nothing but that call.
        for path in paths:
            positions = [next((k for k, n in enumerate(path.nodes) if safety.node_key(n) == safety.node_key(m)), None)
                         for m in match.nodes]
            if None in positions:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: the matched calls are not on one path")
            producers = [k for k in range(positions[index]) if name in path.nodes[k].writes]
            start = producers[-1] if producers else -1
            for k in range(start + 1, positions[index]):
                if name in path.nodes[k].reads:
                    raise Skip(codes.S_VALUE_READ, f"{where}: `{name}` is read at line {path.nodes[k].stmt.lines[0]} before it")

    def _check_init(self, match: ir.Match, cls, var: str, where: str, node, if_stmt: ast.If):
        """__init__: the layer under G, None (and nothing else) where G fails;
        `self.<attr>` used nowhere else, and no subclass shares the change."""
        mod = self.mod
        attr = node.attr
        layer = match.init_nodes.get(var)
        if layer is None or layer.stmt is None or not layer.guards:
            raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is not bound under a condition in `__init__`")
        self._check_none_bindings(cls, layer, attr, where)
        layer_stmt = mod.stmt(layer.stmt)
        if not (isinstance(layer_stmt, ast.Assign) and len(layer_stmt.targets) == 1):
            raise Skip(codes.S_GUARDED_LAYER, f"line {layer_stmt.lineno} is not a plain `self.{attr} = ...`")
        if_lines = (if_stmt.lineno, if_stmt.end_lineno)
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

    def _check_none_bindings(self, cls, layer, attr: str, where: str) -> None:
        """Every other binding of `self.<attr>` is `None`, where the layer's is not."""
        from dslc.analysis import guards as guardlib

        mod = self.mod
        for b in (cls.init if cls is not None else ()):
            if b.attr != attr or b is layer:
                continue
            none = b.kind == "other" and len(b.args) == 1 and b.args[0].is_const and b.args[0].const is None
            if not none:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr}` is also bound to something else than `None` at line {b.stmt.lines[0] if b.stmt else 0}")
            if b.stmt is not None and b.stmt.method == layer.stmt.method and b.stmt.owner == layer.stmt.owner \
                    and b.stmt.lines[1] < layer.stmt.lines[0] \
                    and not any(isinstance(c, (ast.For, ast.AsyncFor, ast.While))
                                for c, _ in mod.chain(mod.stmt(layer.stmt)) + mod.chain(mod.stmt(b.stmt))):
                continue  # `self.a = None` first, then the layer under G: the layer's binding wins
            if guardlib.consistent(tuple(layer.guards) + tuple(b.guards)) is not guardlib.Answer.REFUTED:
                raise Skip(codes.S_GUARDED_LAYER, f"{where}: `self.{attr} = None` (line {b.stmt.lines[0] if b.stmt else 0}) may run with the layer's binding")

    def _init_edit(self, match: ir.Match, cls, var: str, attr: str, layer, layer_stmt: ast.stmt, where: str,
                   plan: Plan) -> None:
        """The layers the target replaces exist, unconditionally, before the
        binding; the binding becomes the target, then `self.<attr> = None`."""
        rule = match.rule
        mod = self.mod
        source_vars = {o.name for pn in rule.init.source for o in pn.outputs}
        changed = {}
        env_ctor = {var: self.ctx.relative_text(layer_stmt.value, layer_stmt)}
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
        reason = safety.check_attr_uses(match, cls, changed, interface_kept=False)
        if reason:
            raise Skip(reason)
        attrs = {v: b.attr for v, b in match.init_nodes.items()}
        env = Env(match, attrs, {})
        env.ctor = env_ctor
        lines = []
        for pn in rule.init.target:
            out = pn.outputs[0].name
            lines.append(f"self.{attrs[out]} = {self.ctx.render_node(pn, env, plan)}")
        lines.append(f"self.{attr} = None")
        renames = param_renames(rule, attrs.get, lambda v: getattr(match.init_nodes.get(v), "attr", None))
        if renames:
            plan.needs_hook = True
            lines.append(hook_registration(renames, mod.unit))
        start, end = mod.stmt_range(layer_stmt)
        self.ctx.claim(plan, start, end, self.ctx.fit(self.ctx.lines_text(lines, mod.indent(layer_stmt)), layer_stmt), layer_stmt)


def _is_not_none_test(test: ast.expr, attr: str) -> bool:
    """`self.<attr> is not None`."""
    return (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None
            and isinstance(test.left, ast.Attribute) and isinstance(test.left.value, ast.Name)
            and test.left.value.id == "self" and test.left.attr == attr)
