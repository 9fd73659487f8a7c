"""A layer the rewrite keeps, bound to something else by a subclass (S216).

A rule whose init item leaves the layer as it is (`init { nn.LayerNorm(...)
-> $ln; } => _`, or a target equal to its source: sdpa.adr's attention
Dropout) rewrites only the forward, whose new code reads the layer's
attributes (`len($ln.normalized_shape)`, `$drop.p`).  A subclass that
inherits that forward but binds the attribute to another kind of object
(`self.final_norm = nn.Identity()` after `super().__init__()`) would run the
rewritten code on it: an AttributeError, or other numbers.  The matcher
sees the class's own bindings only (its S216 check), and the subclass
checks of the rewriting kinds (S207) cover the attributes a rewrite
replaces, not those it keeps.  So: a subclass in this file whose own
binding of a kept layer's attribute is not of the matched type, or that
assigns it in another method, refuses the match (S216); a subclass in a
sibling module that assigns it at all refuses it too (it is read by
spelling, without types).
"""

from __future__ import annotations

from dslc import codes
from dslc.match import ir
from dslc.rewrite import safety


def keeps_layers(rule: ir.Rule) -> bool:
    """The rule's init item leaves its layers as they are."""
    item = rule.init
    return item is not None and (item.target is None or item.target == item.source)


def check_rebound(match: ir.Match, facts, cls, flow=None) -> str | None:
    """S216 where a subclass binds a kept, matched layer's attribute to another
    kind of object (see the module doc); `flow`: a `FlowChecks` for the
    subclasses in sibling modules."""
    if cls is None or not match.init_nodes or not keeps_layers(match.rule):
        return None
    bound = {b.attr: b for b in match.init_nodes.values() if b.attr}
    for sub in safety.subclasses(facts, cls):
        for b in bound.values():
            for other in sub.init:
                if other.attr != b.attr or other is b or other.stmt == b.stmt:
                    continue
                if other.kind == b.kind and other.type is not None and other.type == b.type:
                    continue
                line = other.stmt.lines[0] if other.stmt is not None else 0
                return codes.reason(codes.S_INIT_ALTERNATIVE, (
                    f"the subclass `{sub.name}` binds `self.{b.attr}` to {_text(other)} (line {line}), and the "
                    f"forward it inherits would run the rewritten code, written for the "
                    f"`{_short(b)}`, on it"))
        for use in sub.attr_uses:
            if use.attr in bound and use.kind == "store" and use.method != "__init__":
                return codes.reason(codes.S_INIT_ALTERNATIVE, (
                    f"the subclass `{sub.name}` assigns `self.{use.attr}` at line {use.lines[0]} (in "
                    f"`{use.method}`), and the forward it inherits would run the rewritten code, written for "
                    f"the `{_short(bound[use.attr])}`, on what it assigns"))
    if flow is not None:
        why = flow.package_subclass_uses(cls, {a: f"keeps as the `{_short(b)}`" for a, b in bound.items()},
                                         interface_kept=True)
        if why:
            return codes.reason(codes.S_INIT_ALTERNATIVE, str(why) + ", and may bind it to another kind of object")
    return None


def _short(b) -> str:
    return (b.type or b.unresolved or "layer").rpartition(".")[2]


def _text(b) -> str:
    if b.kind == "other":
        return f"`{b.args[0].text}`" if b.args else "another value"
    return f"`{_short(b)}(...)`"
