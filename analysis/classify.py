"""DL content: what a call is, and whether code holds DL nodes.

`Classifier.classify` says what a call becomes on a path: a layer of the


class (`self.<attr>(...)` bound in `__init__`, or stored by some method), a
method of the class (inlined or a `call` node), a function defined in the
function (`local`), an element of a container being iterated (`loop`), a
call of a qualified name, or no node (builtins, methods of local values or
of module-level objects).  `has_dl` / `fn_has_dl` say whether a statement or
a function holds such a node (directly or through a helper), cached per


class in the `FileContext`; they decide where paths split and which helpers
are inlined.
"""

from __future__ import annotations

import ast

from .context import FileContext
from .defuse import local_names, scan, self_attr
from .names import BUILTINS, dotted
from .pathstate import Frame


class Classifier:
    """Answers about calls for the class being analysed (see the module docstring)."""

    def __init__(self, ctx: FileContext):
        self.ctx = ctx

    def classify(self, call: ast.Call, frame: Frame):
        """What a call is: ("layer", attr, bindings) | ("method", name) |
        ("local", fn) | ("call", qual, spelling) | ("loop", attr) | None (no node)."""
        ctx = self.ctx
        func = call.func
        attr = self_attr(func)
        if attr is not None and ctx.cls is not None:
            if attr in ctx.init_types:
                return ("layer", attr)
            if ctx.find_method(attr) is not None:
                return ("method", attr)
            if attr not in self.stored_attrs():
                return None  # a method inherited from outside the tree (register_buffer)
            return ("layer", attr)
        if isinstance(func, ast.Name):
            name = func.id
            if name in frame.local_funcs:
                return ("local", name)
            if name in frame.loop_layers:
                return ("loop", frame.loop_layers[name])
            if name in frame.locals and name not in frame.local_imports:
                return None
            if name in BUILTINS and name not in (frame.scope or ctx.scope).names and name not in frame.local_imports:
                return None
            if name == "self":
                return None
        parts = dotted(func)
        if parts is None:
            return None
        head = parts[0]
        if head == "self" or (head in frame.locals and head not in frame.local_imports):
            return None  # a method of a local value (tensor methods)
        scope = frame.scope or ctx.scope
        if head in BUILTINS and head not in scope.names and head not in frame.local_imports:
            return None
        if head not in frame.local_imports:
            kinds = {b.kind for b in scope.names.get(head, ())}
            if kinds and kinds <= {"value"} and len(parts) > 1:
                return None  # a method of a module-level object (logger.warning)
        qual = ctx.resolve(parts, frame)
        return ("call", qual, func)  # the spelling is unparsed only when needed

    def stored_attrs(self) -> frozenset[str]:
        """Attributes stored by any method of the class or its in-tree bases."""
        key = ("stored", self.ctx.cls.qualname)
        if key not in self.ctx.dl_cache:
            self.ctx.dl_cache[key] = frozenset(
                attr for info in self.ctx.classes.mro(self.ctx.cls) for fn in info.methods.values()
                for attr, _, kind in scan(fn)[1] if kind == "store")
        return self.ctx.dl_cache[key]

    def attr_type(self, attr: str) -> tuple[str | None, str | None]:
        bindings = [b for b in self.ctx.init_types.get(attr, ()) if b.kind != "other"]
        types = {b.type for b in bindings}
        if len(types) == 1 and None not in types:
            return types.pop(), None
        return None, f"self.{attr}"

    def has_dl(self, stmt: ast.AST, frame: Frame) -> bool:
        """Does a compound statement hold a layer or call node (or a helper with one)?"""
        key = id(stmt)
        if key in self.ctx.dl_cache:
            return self.ctx.dl_cache[key]
        self.ctx.dl_cache[key] = False
        # any node counts: a helper is either inlined (its nodes) or a call node
        result = any(isinstance(node, ast.Call) and self.classify(node, frame) is not None
                     for node in walk_no_opaque(stmt))
        self.ctx.dl_cache[key] = result
        return result

    def fn_has_dl(self, fn, owner, frame: Frame) -> bool:
        key = ("fn", id(fn))
        if key in self.ctx.dl_cache:
            return self.ctx.dl_cache[key]
        self.ctx.dl_cache[key] = False
        inner = Frame(fn.name, owner.qualname if owner else frame.owner, fn, frozenset(local_names(fn)),
                      local_funcs=dict(frame.local_funcs) if owner is None else {},
                      scope=owner.scope if owner else frame.scope)
        result = False
        for node in walk_no_opaque(fn):
            if node is fn:
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner.local_funcs[node.name] = node
            if isinstance(node, ast.Call):
                kind = self.classify(node, inner)
                if kind is None:
                    continue
                if kind[0] in ("layer", "call", "loop"):
                    result = True
                    break
                if kind[0] == "method":
                    found = self.ctx.find_method(kind[1])
                    if found and self.fn_has_dl(found[0], found[1], inner):
                        result = True
                        break
                if kind[0] == "local" and self.fn_has_dl(inner.local_funcs[kind[1]], None, inner):
                    result = True
                    break
        self.ctx.dl_cache[key] = result
        return result


def walk_no_opaque(root: ast.AST):
    """ast.walk that does not enter lambdas/comprehensions/nested classes."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        for field in node._fields:  # ast.iter_child_nodes, inlined (a hot loop)
            value = getattr(node, field, None)
            for child in (value if type(value) is list else (value,)):
                if not isinstance(child, ast.AST) or isinstance(child, _OPAQUE):
                    continue
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child is not root:
                    continue
                stack.append(child)


_OPAQUE = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.ClassDef)
