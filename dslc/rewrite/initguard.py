"""A matched layer that `__init__` builds only under a condition, another
layer (or value) on the other branch (issue 8: ConvBERT's
`if config.num_groups == 1: self.dense = nn.Linear(...)` /
`else: self.dense = GroupedLinearLayer(...)`).

The matcher lets such a match through when z3 refutes the matched
binding's guards together with the other binding's, both in one method, and
the rule changes only `__init__` (`matcher.excluded_by_guards`): forward
calls whichever layer was built, and stays as it is.  The rewrite is then
confined to the matched binding's guards G, as `when` confines it: the run
of init statements holding the edits becomes `if <when> and G: <edited run>
else: <original run>` (`WhenGuard.wrap`).  Where G fails, the original code
runs, the other binding included.

Where G holds, the edited run must build the matched layer, so G must have
the value at the top of the run that it has where the `if` of the binding
tests it:
- G is pure (names, attributes, constants, comparisons, boolean and
  arithmetic operators, `isinstance` / `len` calls; `pure`), so testing it
  twice gives one answer;
- the `if` that holds the matched binding, and the other binding, is the
  first statement of the run (`WhenGuard.wrap` checks it with the run it
  duplicates): nothing runs between the new test and the original one;
- only `if` statements lie between that `if` and either binding (no loop,
  whose variable the guard may read, no `try` / `with`).
Anything else is refused (S216).
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.match.matcher import excluded_by_guards, is_neutral, overwritten_by, removed_layer_vars
from dslc.rewrite.plan import Skip

_PURE_CALLS = frozenset({"isinstance", "len"})
_PURE_NODES = (ast.Expression, ast.Name, ast.Attribute, ast.Constant, ast.Compare, ast.BoolOp, ast.UnaryOp,
               ast.BinOp, ast.Tuple, ast.List, ast.Set, ast.Load, ast.boolop, ast.cmpop, ast.unaryop, ast.operator)


def guarded_bindings(match: ir.Match, cls) -> list[tuple[object, list]]:
    """The matched bindings the matcher let through only because their guards
    exclude another binding of the attribute (`excluded_by_guards`), each
    with those other bindings (the same test as `_alternative_binding`)."""
    if cls is None:
        return []
    rule = match.rule
    keeps = rule.option("when") is not None
    removed = removed_layer_vars(rule)
    out = []
    for var, b in match.init_nodes.items():
        others = [o for o in cls.init
                  if o.attr == b.attr and o is not b and not (o.kind == b.kind and o.type == b.type)
                  and not (var in removed and is_neutral(o)) and not overwritten_by(o, b)
                  and not (o.kind == "other" and keeps)]
        if others and all(excluded_by_guards(rule, b, o) for o in others):
            out.append((b, others))
    return out


def pure(text: str) -> bool:
    """Does evaluating `text` have no effect, so that two tests give one answer?"""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _PURE_CALLS) or node.keywords:
                return False
        elif isinstance(node, ast.Attribute):
            if not isinstance(node.ctx, ast.Load):
                return False
        elif not isinstance(node, _PURE_NODES):
            return False
    return True


def condition(found: list[tuple[object, list]]) -> str | None:
    """The conjunction of the guards of the bindings `guarded_bindings` found."""
    parts: list[str] = []
    for b, others in found:
        for g in b.guards:
            if not pure(g.text):
                line = others[0].stmt.lines[0] if others[0].stmt is not None else 0
                raise Skip(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr}` is also bound on another branch (line {line}), and the condition "
                    f"`{g.text}` under which the matched layer is built may have effects: the rewrite cannot be "
                    f"confined to it"))
            text = str(g)
            if text not in parts:
                parts.append(text)
    return conjunction(parts) if parts else None


def conjunction(parts: list[str]) -> str:
    """`a and b and ...`, each part in parentheses where `and` would split it."""
    out = []
    for text in parts:
        try:
            node = ast.parse(text, mode="eval").body
        except SyntaxError:
            node = None
        loose = node is None or isinstance(node, (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr)) \
            and not (isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And))
        out.append(f"({text})" if loose else text)
    return " and ".join(out)


def check_first(mod, found, depth: int, first: ast.stmt, chain0) -> None:
    """Each binding of `found` (the matched one and the others) sits in `first`,
    the first statement of the run that `WhenGuard.wrap` duplicates (`chain0`:
    the enclosing statements of an edited one, `depth` of them shared)."""
    prefix = [(id(n), f) for n, f in chain0[:depth + 1]]
    for b, others in found:
        for binding in [b, *others]:
            stmt = mod.stmt(binding.stmt)
            chain = [(None, None)] + mod.chain(stmt)
            top = chain[depth + 1][0] if len(chain) > depth + 1 else stmt
            if [(id(n), f) for n, f in chain[:depth + 1]] != prefix or top is not first or top is stmt:
                raise Skip(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr}` is built only where `{' and '.join(str(g) for g in b.guards)}` (line "
                    f"{b.stmt.lines[0]}), and the `if` that tests it is not the first statement of the init "
                    f"statements the rewrite duplicates: the test cannot move to their top"))
            if not all(isinstance(n, ast.If) for n, _ in chain[depth + 1:]):
                raise Skip(codes.S_INIT_ALTERNATIVE, (
                    f"`self.{b.attr}` (line {binding.stmt.lines[0]}) is bound inside a loop or another block than "
                    f"an `if`: its guards cannot be tested once at the top of the init statements the rewrite "
                    f"duplicates"))


def prune(new: str, first: ast.stmt, found, unit: str) -> str:
    """The edited run `new` (whole lines, from `first` on) without the branch
    of `first` that the condition excludes: where the matched binding's
    guards hold, `if t: <A> else: <B>` runs <A> (<B> when the binding is in
    the `else:`).  Unchanged (both branches kept, which is as correct) when
    the branch kept is not a plain block (`elif`), holds a string over
    several lines (dedenting would change it), or the result does not parse."""
    if not isinstance(first, ast.If):
        return new
    polarity = {g.negated for f, _ in found for g in f.guards if g.lines[0] == first.lineno}
    if len(polarity) != 1:
        return new
    negated = polarity.pop()
    lines = new.splitlines(True)
    indent = lines[0][:len(lines[0]) - len(lines[0].lstrip())] if lines else ""
    try:
        tree = ast.parse("".join(line[len(indent):] if line.startswith(indent) else line for line in lines))
    except SyntaxError:
        return new
    head = tree.body[0] if tree.body else None
    if not isinstance(head, ast.If):
        return new
    block = head.orelse if negated else head.body
    if not block or (negated and len(block) == 1 and isinstance(block[0], ast.If)
                     and _is_elif(lines, block[0])):
        return new
    for node in ast.walk(ast.Module(body=block, type_ignores=[])):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and getattr(node, "end_lineno", node.lineno) != node.lineno:
            return new
    start = head.test.end_lineno  # the lines after the header (comments above the block's first statement too)
    if block[0].lineno <= start:
        return new  # `if t: <statement>` on one line
    if negated:
        start = next((i for i in range(head.body[-1].end_lineno, block[0].lineno - 1)
                      if lines[i].lstrip().startswith("else")), None)
        if start is None:
            return new
        start += 1
    kept = lines[start:block[-1].end_lineno]
    inner = indent + unit
    if not all(line.startswith(inner) or not line.strip() for line in kept):
        return new
    out = "".join(indent + line[len(inner):] if line.strip() else line for line in kept)
    out += "".join(lines[head.end_lineno:])
    try:
        ast.parse("".join(line[len(indent):] if line.startswith(indent) else line for line in out.splitlines(True)))
    except SyntaxError:
        return new
    return out


def _is_elif(lines: list[str], node: ast.If) -> bool:
    return lines[node.lineno - 1].lstrip().startswith("elif")
