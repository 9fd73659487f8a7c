"""Near misses of class rules: a module class that looks like a rule's layer
but that the rule does not match, and why (`dslc apply --near-misses`).

A class rule (`class { ... }`, `dslc.match.classmatch`) has no anchor node:
it matches a whole forward.  Its places are the candidates:

1. Anchors, derived from the rule's pattern, not written per rule
   (`classmatch.class_anchors`): the canonical operations of its forward
   pattern -- `pow`, `mean`, `+`, `rsqrt`, `*` for an RMS norm (and `to`
   for its float32 round trip), a call of `silu`, a `*` and Linear layers
   for a gated MLP.
2. A class is a candidate of the rules whose every anchor its forward
   spells; where there is none, of the rules with four anchors or more of
   which it lacks one (`classmatch.candidates`; what it spells is
   `Compute.ops`, recorded for every forward, straight-line or not, with
   activation layers read as their functions).
3. A candidate that some class rule of the pack matched (applied, or
   skipped with the match's own reason: an init that does not fit, an
   overlap) is no near miss.  Every other candidate is one, with the reason
   of `classmatch.explain_class`: forward is not one expression (N501), the
   deepest pattern node that did not fit and why (N502), a node forward
   computes that the pattern has none for (N503), another number of inputs
   (N504).
"""

from __future__ import annotations

from dslc.match import classmatch


def class_near_misses(compiled, facts, matches, make) -> list:
    """The near misses of the class rules of `compiled` in one analysed file.

    `matches`: the run's matches (a class one matched is left out); `make`:
    builds one near miss from (rule name, class name, function, line,
    reason, code)."""
    rules = [compiled.rules[r] for r in getattr(compiled, "class_rules", ())]
    if not rules:
        return []
    matched = {m.class_name for m in matches if getattr(m, "klass", None) is not None}
    out = []
    anchors = {cr.name: classmatch.class_anchors(cr.rule) for cr in rules}
    by_name = {cr.name: cr for cr in rules}
    for cls in facts.classes:
        if cls.name in matched or cls.compute is None:
            continue
        for name in classmatch.candidates(anchors, classmatch.class_ops(cls)):
            why = classmatch.explain_class(by_name[name].rule, cls)
            if why is None:
                continue
            code, line, reason = why
            out.append(make(name, cls.name, "forward", line, reason, code))
    return out
