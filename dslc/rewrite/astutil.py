"""Small questions about stdlib `ast` nodes and names that several kinds of rewrite ask."""

from __future__ import annotations

import ast

from dslc import codes


def is_self_attr(node) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def dotted_name(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id] + parts[::-1])


def dotted_tail(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return None


def self_attr_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return expr.attr
    return None


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id != "self"}


def is_prefix(short: list, long: list) -> bool:
    """Is the chain of compound statements `short` a proper prefix of `long` (by identity)?"""
    return len(short) < len(long) and all(a[0] is b[0] and a[1] == b[1] for a, b in zip(short, long))


def owner_name(owner: str | None, class_name: str) -> str:
    """The class that defines code, as the match names its class: `class_name`
    itself when `owner` (a qualname) is that class (`m.Outer.Inner` for
    `Outer.Inner`), else the owner's last component (an inherited base)."""
    if not owner or owner == class_name or owner.endswith("." + class_name):
        return class_name
    return owner.rsplit(".", 1)[-1]


def exit_between(stmts: list) -> int | None:
    """The line of a `return`/`raise`/`break`/`continue` among `stmts` (which
    the path analysis folds into an opaque `if` when no DL call is near)."""
    for st in stmts:
        if isinstance(st, (ast.Return, ast.Raise, ast.Break, ast.Continue)):
            return st.lineno
    return None


def fresh_name(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def container_reason(binding) -> str:
    line = binding.stmt.lines[0] if binding.stmt else 0
    return codes.reason(codes.S_CONTAINER, f"`self.{binding.attr}` lives inside the container `self.{binding.container}` (line {line}); "
                        f"the emitter does not rewrite layers inside containers")


def loop_carried_read(chain: list, names: set[str], matched: set[int]) -> tuple[str, int] | None:
    """(name, line) of a read of one of `names` inside a loop of `chain` (the
    compound statements around the matched code, outermost first, as
    `(statement, field)`), outside the matched statements (`matched`: ids):
    the paths walk a loop body once, so they do not see that read, which on
    the next iteration gets the value the matched code left in the name."""
    for compound, field in chain:
        if not isinstance(compound, (ast.For, ast.AsyncFor, ast.While)) or field != "body":
            continue
        stack = list(compound.body) + ([compound.test] if isinstance(compound, ast.While) else [])
        while stack:
            node = stack.pop()
            if id(node) in matched:
                continue
            if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load):
                return node.id, node.lineno
            stack.extend(ast.iter_child_nodes(node))
    return None
