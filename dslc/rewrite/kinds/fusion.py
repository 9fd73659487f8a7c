"""Fusion, the general kind: forward statements fused, matched layers replaced in `__init__`.

Every forward/init match that no more specific kind selects.  Its one-node
cases are call replacement (a forward target only) and layer replacement (an
init target, forward `_` or unchanged).  The plan:
1. Forward structure (`ForwardFusion`): the matched statements, and the
   `if` branches an earlier statement is hoisted across (`Hoisting`).
2. Init changes: each source layer is deleted, replaced in place, kept
   (still called by a hoisted copy, or referenced as `$v.attr`), or kept and
   re-assigned under the branch's guard (hoisted and replaced).  A
   parameter-free layer that other code still uses stays for those uses.
3. Checks of the attributes the rewrite changes: no other use in the class,
   its subclasses (in the file and in sibling modules), or an inherited
   `__init__`.  A rule that changes only the init (forward target equal to
   its source) checks the data flow at every call site that shares it.
4. The edits: `ForwardFusion.plan` and `InitReplacement.plan`.
"""

from __future__ import annotations

from dslc import codes
from dslc.match import ir
from dslc.rewrite import outside, safety
from dslc.rewrite.astutil import owner_name
from dslc.rewrite.flow import FlowChecks
from dslc.rewrite.inner import InnerForm, InnerUses, inner_attrs
from dslc.rewrite.kinds.base import Kind, Setup
from dslc.rewrite.kinds.forward import ForwardFusion
from dslc.rewrite.kinds.init import InitReplacement, ctor_extras
from dslc.rewrite.plan import Plan, Skip
from dslc.rewrite.render import Env
from dslc.rewrite.rules import (attrof_bases, conditional_rule, changed_values, changes_init, forward_unchanged, init_attrs,
                                values_produced_again)

# Layers with no parameters or buffers: a second instance is indistinguishable.
STATELESS = frozenset(
    [f"torch.nn.{n}" for n in (
        "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "GELU", "ReLU", "ReLU6", "SiLU",
        "Sigmoid", "Tanh", "Identity", "Softmax", "LogSoftmax")]
)


class Fusion(Kind):
    """The general kind (registered last: it selects every match)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.flow = FlowChecks(ctx.mod, ctx.facts, ctx.path)
        self.forward = ForwardFusion(ctx, self.flow)
        self.init = InitReplacement(ctx)
        self.inner = InnerUses(ctx)

    def select(self, match: ir.Match, setup: Setup | None):
        return True

    def plan(self, match: ir.Match, setup: Setup | None, found, plan: Plan) -> None:
        rule, cls, paths, condition = match.rule, setup.cls, setup.paths, setup.condition
        forward_edit = rule.forward is not None and rule.forward.target is not None
        init_edit = changes_init(rule)
        if rule.forward is not None and not match.nodes:
            raise Skip(codes.S_NOT_CALLED, "no forward call of the matched layer was found")
        if rule.forward is None and rule.init is not None and cls is not None:
            attrs = {b.attr for b in match.init_nodes.values()}
            if not any(u.attr in attrs and u.kind == "call" for u in cls.attr_uses):
                raise Skip(codes.S_NOT_CALLED, "the matched layer is never called, so replacing it is pointless")

        # Forward structure: statements, hoisting.  A forward target equal to
        # its source (biased_gelu: only the init changes) needs no forward edit.
        detect_only = rule.forward is None or rule.forward.target is None
        unchanged_forward = forward_edit and forward_unchanged(rule)
        if unchanged_forward:
            forward_edit = False
        if condition and forward_edit:
            raise Skip(codes.S_WHEN_FORWARD, f"{conditional_rule(rule)} must leave forward unchanged (its old layers "
                                             "live only in the `else` branch of `__init__`)")
        groups = self.forward.forward_groups(match) if forward_edit else []
        hoisted_attrs, hoist_guards = self.forward.hoist.crossed_guards(groups) if groups else (set(), [])
        source_vars, target_vars, kinds, changed = self._init_changes(match, init_edit, hoisted_attrs)
        # A value the forward target copies (a residual `self.drop(x)` nested
        # in the matched statement) keeps its own uses of layers: those uses
        # survive the rewrite although they sit in a matched statement.
        copied_uses = self.forward.copied_layer_uses(match, paths) if forward_edit else {}
        self._keep_shared(match, cls, kinds, changed, copied_uses, detect_only)
        forms = self._inner_forms(match, cls, kinds, changed, bool(condition or hoist_guards))
        self._check_changed(match, cls, changed, unchanged_forward, detect_only, plan, forms)
        env, new_names = self._env(match, source_vars, target_vars, paths)
        if init_edit:
            env.extra_args = ctor_extras(match, kinds)
        if unchanged_forward and match.nodes:
            self._check_sites(match)
        if groups:
            self.forward.plan(match, groups, env, plan, paths)
        if init_edit:
            self.init.plan(match, target_vars, kinds, env, plan, condition, hoist_guards)
        if new_names:
            plan.new_attrs.setdefault(match.class_name or "", set()).update(new_names)

    def _init_changes(self, match: ir.Match, init_edit: bool, hoisted_attrs: set[str]):
        """Init changes: which source layers are deleted, replaced in place,
        kept (still called by a hoisted copy / referenced as `$v.attr`), or
        kept and re-assigned under the branch's guard (hoisted and replaced).
        Returns the source and target variables, the kind of change per
        variable and the changed attributes (attr -> "replaces" / "removes")."""
        rule = match.rule
        source_vars, target_vars = {}, {}
        if init_edit:
            for pn in rule.init.source:
                for out in pn.outputs:
                    source_vars[out.name] = pn
            for pn in rule.init.target:
                for out in pn.outputs:
                    target_vars[out.name] = pn
        attr_refs: set[str] = set()
        for pn in (rule.init.target if init_edit else ()):
            attr_refs |= attrof_bases(pn)
        bindings = dict(match.init_nodes)
        changed: dict[str, str] = {}
        kinds: dict[str, str] = {}
        for var in source_vars:
            binding = bindings.get(var)
            if binding is None:
                raise Skip(codes.S_NO_BINDING, f"init variable `${var}` matched no binding")
            hoisted = binding.attr in hoisted_attrs
            if var in target_vars:
                kinds[var] = "reassigned" if hoisted else "replaced"
                changed[binding.attr] = "replaces"
            elif hoisted or var in attr_refs:
                kinds[var] = "kept"
            else:
                kinds[var] = "deleted"
                changed[binding.attr] = "removes"
        return source_vars, target_vars, kinds, changed

    def _keep_shared(self, match: ir.Match, cls, kinds, changed, copied_uses, detect_only: bool) -> None:
        """A parameter-free layer the rewrite would delete but that other code
        still uses (a shared `self.dropout`) stays as it is for those uses:
        the fused layer is built from its arguments, so nothing is tied."""
        bindings = match.init_nodes
        for var, kind in list(kinds.items()):
            binding = bindings[var]
            if kind != "deleted" or binding.type not in STATELESS:
                continue
            alone = {binding.attr: "removes"}
            if (binding.attr in copied_uses
                    or safety.check_attr_uses(match, cls, alone, interface_kept=detect_only)
                    or safety.check_subclass_uses(self.facts, cls, alone, interface_kept=detect_only)
                    or self.flow.outside_uses(cls, alone, interface_kept=detect_only)):
                kinds[var] = "kept"
                del changed[binding.attr]
        for attr, var in copied_uses.items():
            if attr in changed:
                raise Skip(codes.S_ATTR_USED, f"attribute `self.{attr}`, which the rewrite {changed[attr]}, is also used "
                           f"in the value of `${var}`, which the rewritten statement keeps")

    def _inner_forms(self, match: ir.Match, cls, kinds, changed, conditional: bool) -> dict[str, InnerForm]:
        """`option inner`: the replaced attributes whose other uses may read
        the original layer at `self.<attr>[0]`: replaced in place, with no
        condition, and bound nowhere else (so `self.<attr>` is always the new
        layer once built)."""
        forms: dict[str, InnerForm] = {}
        for attr, (var, accessor) in inner_attrs(match, changed).items():
            refused = None
            if kinds.get(var) != "replaced" or conditional:
                refused = "the layer is replaced only on some paths of `__init__`"
            elif cls is None or [b for b in cls.init if b.attr == attr] != [match.init_nodes[var]]:
                refused = f"`self.{attr}` is bound more than once in `__init__`"
            forms[attr] = InnerForm(accessor, refused=refused)
        return forms

    def _check_changed(self, match: ir.Match, cls, changed, unchanged_forward: bool, detect_only: bool,
                       plan: Plan, forms: dict[str, InnerForm]) -> None:
        """The changed attributes are used nowhere else and built in this class's `__init__`."""
        rule = match.rule
        bindings = match.init_nodes
        # A rule whose forward target equals its source (biased_gelu) changes
        # only the init: every call site it matched shares that one change, so
        # the calls at those sites are not "uses elsewhere".
        siblings: list = []
        if unchanged_forward:
            mine = init_attrs(match)
            siblings = [n for m in self.ctx.matches if m.rule is rule and init_attrs(m) == mine for n in m.nodes]
        # A layer built in an inherited `__init__` is shared by every class
        # that inherits it (the base itself, its other subclasses): editing
        # that `__init__` from one subclass's match would change them all.
        # The base's own analysis finds and checks its matches.
        mine = match.class_name or ""
        for binding in bindings.values():
            if binding.attr in changed and binding.stmt is not None:
                owner = owner_name(binding.stmt.owner, mine)
                if owner != mine:
                    raise Skip(codes.S_INHERITED, f"`self.{binding.attr}` is built in `{owner}.__init__`, inherited; "
                               f"editing it would change every class that shares it")
        reason = self.inner.check(match, cls, changed, plan, forms, interface_kept=detect_only, also_allowed=siblings)
        if reason:
            raise Skip(reason)
        reason = safety.check_subclass_uses(self.facts, cls, changed, interface_kept=detect_only)
        if reason:
            raise Skip(reason)
        reason = self.flow.package_subclass_uses(cls, changed, interface_kept=detect_only)
        if reason:
            raise Skip(reason)
        reason = self.flow.outside_uses(cls, changed, interface_kept=detect_only, kept=outside.kept_params(rule, bindings),
                                        notes=plan.warnings, line=min(match.lines) if match.lines else 0)
        if reason:
            raise Skip(reason)

    def _env(self, match: ir.Match, source_vars, target_vars, paths) -> tuple[Env, set[str]]:
        """The target's environment; new layers get fresh attribute names."""
        bindings = match.init_nodes
        attrs: dict[str, str] = {}
        for var, binding in bindings.items():
            attrs[var] = binding.attr
        new_names: set[str] = set()
        for var in target_vars:
            if var not in source_vars:
                name = self.ctx.fresh_attr(match.class_name, var, new_names)
                new_names.add(name)
                attrs[var] = name
        temps = self.ctx.temp_texts(match, paths)
        env = Env(match, attrs, temps)
        env.literals = self.ctx.literal_texts(match)
        return env, new_names

    def _check_sites(self, match: ir.Match) -> None:
        """No statement changes, but a value the target binds again may
        (biased_gelu moves the Linear's bias into the activation): such a
        value must not be read anywhere else, like a removed one.  The init
        change reaches every call site of the layer, so every site that
        shares it (the siblings) must pass too."""
        rule = match.rule
        sites = [match] + [m for m in self.ctx.matches if m is not match and m.rule is rule
                           and m.nodes and init_attrs(m) == init_attrs(match)]
        for site in sites:
            site_paths = safety.paths_through(site, self.facts)
            reason = safety.check_dataflow(
                site, site_paths,
                produced_again=values_produced_again(site),
                target_inputs=set(), deleted_stmts=set(),
                final_stmt=safety.stmt_key(site.nodes[-1]),
                metadata_ok=self.flow.metadata_check(site),
                effects=self.flow.stmt_effects,
                scan={site.bindings[v].text for v in changed_values(rule)
                      if v in site.bindings and site.bindings[v].kind == "name"},
            )
            if reason:
                if site is not match:
                    reason = codes.Reason(codes.code_of(reason), f"at line {site.nodes[0].stmt.lines[0]}, another call of the changed layer: {reason}")
                raise Skip(reason)
