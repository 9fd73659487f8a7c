"""The forward guards of a layer `__init__` may bind to `None`, and the
truthiness they rely on (used by `guarded.NoneGuardedLayer`).

`guard_form(parent, field, stmt, attr)` says how the statement calling
`self.<attr>` is guarded by the `if` that holds it:

- `if self.a is not None: <call>`   and   `if self.a is None: ... else: <call>`
- `if self.a: <call>`               and   `if not self.a: ... else: <call>`
- `if self.a is None: return e` / `if not self.a: return e` right before
  the call's statement (`early_return_form`): the call is reached only where
  the attribute holds a layer

The last two equal the first two only when every value `self.a` may hold
but `None` is truthy (`truthy_reason`): an `nn.Module` is, unless its class
defines `__len__` or `__bool__` (`nn.Sequential`, `nn.ModuleList`,
`nn.ModuleDict`, `nn.ParameterList`, `nn.ParameterDict`: an empty one is
falsy), and a `torch.nn` class that is no module (`nn.Parameter`: a
tensor's truth is its value) is not known to be.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

# `torch.nn` modules whose class defines `__len__` (an empty one is falsy),
# and `torch.nn` classes that are not modules (tensors: truth is their value).
# tests/test_guarded_forms.py checks both lists against the installed torch.
TORCH_NN_SIZED = frozenset({"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"})
TORCH_NN_NOT_MODULES = frozenset({"Parameter", "Buffer", "UninitializedParameter", "UninitializedBuffer",
                                  "LinearCrossEntropyOptions"})


@dataclass(frozen=True)
class GuardForm:
    """How `if_stmt` guards the call of `self.<attr>` (see the module docstring)."""

    if_stmt: ast.If
    in_orelse: bool  # the call is the `else` branch: `if self.a is None: ... else: <call>`
    bare: bool  # `if self.a:` / `if not self.a:` (needs every non-None value truthy)
    early: bool = False  # `if self.a is None: return e` right before the call's statement

    @property
    def text(self) -> str:
        return ast.unparse(self.if_stmt.test)

    def skips(self, guard) -> bool:
        """`guard` (a path's) is the branch that does not call the layer."""
        return guard.text == self.text and guard.negated != self.in_orelse

    def describe(self) -> str:
        if self.early:
            return f"the early `if {self.text}: return ...`"
        if self.in_orelse:
            return f"the `else:` of `if {self.text}:`"
        return f"`if {self.text}:`"


def guard_form(parent, field: str | None, attr: str) -> GuardForm | None:
    """The guard of a statement whose parent is `parent` (in its `field`), or None."""
    if not isinstance(parent, ast.If) or field not in ("body", "orelse"):
        return None
    test = parent.test
    in_orelse = field == "orelse"
    if _is_self_attr(test, attr) and not in_orelse:
        return GuardForm(parent, False, True)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_self_attr(test.operand, attr) and in_orelse:
        return GuardForm(parent, True, True)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and _is_self_attr(test.left, attr) \
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None:
        if isinstance(test.ops[0], ast.IsNot) and not in_orelse:
            return GuardForm(parent, False, False)
        if isinstance(test.ops[0], ast.Is) and in_orelse:
            return GuardForm(parent, True, False)
    return None


def early_return_form(block: list, index: int, attr: str) -> GuardForm | None:
    """`if self.a is None: return e` (or `if not self.a: return e`), with no
    `else:`, as the statement just before `block[index]`, or None."""
    if index < 1:
        return None
    prev = block[index - 1]
    if not isinstance(prev, ast.If) or prev.orelse or len(prev.body) != 1 or not isinstance(prev.body[0], ast.Return) \
            or prev.body[0].value is None:
        return None
    test = prev.test
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_self_attr(test.operand, attr):
        return GuardForm(prev, True, True, early=True)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Is) \
            and _is_self_attr(test.left, attr) and isinstance(test.comparators[0], ast.Constant) \
            and test.comparators[0].value is None:
        return GuardForm(prev, True, False, early=True)
    return None


def _is_self_attr(expr: ast.expr, attr: str) -> bool:
    return (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self"
            and expr.attr == attr)


def self_attr_nodes(tree: ast.AST, attr: str) -> list[ast.Attribute]:
    """Every `self.<attr>` in `tree`."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_self_attr(n, attr)]


def truthy_reason(qualname: str | None, classes) -> str | None:
    """None when an instance of `qualname` is always truthy; else why that is
    not known.  `classes`: the analysed classes of the file (`ClassFacts`),
    whose bases and methods are followed; a base outside them must be a
    `torch.nn` module (`torch.nn.Module` itself included)."""
    return _truthy(qualname, {c.qualname: c for c in classes}, set())


def _truthy(qualname: str | None, by_name: dict, seen: set) -> str | None:
    if not qualname:
        return "its type is unknown"
    if qualname in seen:
        return None
    seen.add(qualname)
    short = qualname.rpartition(".")[2]
    if qualname.startswith("torch.nn.") and "." not in qualname[len("torch.nn."):]:
        if short in TORCH_NN_SIZED:
            return f"`{short}` defines `__len__` (an empty one is falsy)"
        if short in TORCH_NN_NOT_MODULES:
            return f"`{short}` is not a module (its truth is its value)"
        return None
    cls = by_name.get(qualname)
    if cls is None:
        return (f"the class `{short}` is not analysed here (it or a base of it is defined in another file), "
                f"so whether it defines `__len__` or `__bool__` is unknown")
    for dunder in ("__bool__", "__len__"):
        if dunder in cls.methods:
            return f"`{short}` defines `{dunder}` (an instance may be falsy)"
    for base in cls.bases:
        reason = _truthy(base, by_name, seen)
        if reason is not None:
            return reason
    return None
