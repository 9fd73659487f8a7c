"""Init bindings: what `__init__` assigns to `self.<attr>` (step 1 of
`extract.py`'s docstring).

`InitBindings.bindings` walks the `__init__` found along the class's MRO,
and the `self.<helper>()` methods and in-tree `super().__init__` it calls
(bounded depth), with the guards of the enclosing `if`s; every
`self.<attr> = rhs` (and `self.add_module("name", rhs)`) becomes an
`InitBinding`: a constructor call (kind call, its qualified type), a
`TABLE[key]` (kind subscript), one binding per branch of `a if c else b`,
a container (`nn.ModuleList([...])`, `nn.Sequential(...)`,
`nn.ModuleDict({...})`) plus one binding per element (`container` set;
`self.<list>.append(Layer(...))` adds one to an `nn.ModuleList`), a
local variable assigned a layer earlier, or anything else (kind other).
A constructor's `**dd` is expanded when `dd` provably holds a local dict
literal (`_star_kwargs`).
"""

from __future__ import annotations

import ast

from .budget import MAX_INLINE_DEPTH, container_limit
from .classes import ClassInfo
from .context import FileContext
from .defuse import local_names, self_attr, value_of
from .model import Guard, InitBinding, Problem, StmtRef
from .names import BUILTINS, dotted, import_bindings
from .nodetext import node_text
from .pathstate import Frame

CONTAINERS = ("torch.nn.ModuleList", "torch.nn.Sequential", "torch.nn.ModuleDict")


class InitBindings:
    """The init bindings of the classes of one module (see the module docstring)."""

    def __init__(self, ctx: FileContext):
        self.ctx = ctx

    def bindings(self, info: ClassInfo) -> list[InitBinding]:
        """The init bindings of `info`, in the order its `__init__` makes them."""
        found = None
        for cur in self.ctx.classes.mro(info):
            if "__init__" in cur.methods:
                found = (cur.methods["__init__"], cur)
                break
        if found is None:
            return []
        out: list[InitBinding] = []
        self._walk(found[0], found[1], (), out, set(), 0)
        return out

    def _walk(self, fn, owner: ClassInfo, guards: tuple, out: list, seen: set, depth: int) -> None:
        key = (owner.qualname, fn.name)
        if key in seen or depth > MAX_INLINE_DEPTH:
            return
        seen = seen | {key}
        frame = Frame(fn.name, owner.qualname, fn, frozenset(local_names(fn)), scope=owner.scope)
        local_layers: dict[str, list[InitBinding]] = {}
        self._block(fn.body, ("body",), (), frame, owner, guards, out, seen, depth, local_layers)

    def _block(self, stmts, prefix, blocks, frame, owner, guards, out, seen, depth, local_layers) -> None:
        for i, stmt in enumerate(stmts):
            path = prefix + (i,)
            if isinstance(stmt, ast.If):
                g = Guard(node_text(stmt.test), False, (stmt.lineno, stmt.lineno))
                gn = Guard(g.text, True, g.lines)
                self._block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, owner,
                                 guards + (g,), out, seen, depth, local_layers)
                self._block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, owner,
                                 guards + (gn,), out, seen, depth, local_layers)
            elif isinstance(stmt, (ast.For, ast.While, ast.With, ast.AsyncFor, ast.AsyncWith)):
                self._block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, owner,
                                 guards, out, seen, depth, local_layers)
                if getattr(stmt, "orelse", None):
                    self._block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, owner,
                                     guards, out, seen, depth, local_layers)
            elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
                self._block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, owner,
                                 guards, out, seen, depth, local_layers)
                for h, handler in enumerate(stmt.handlers):
                    branch = f"handlers[{h}]"
                    self._block(handler.body, path + ("handlers", h, "body"), blocks + ((path, branch),),
                                     frame, owner, guards, out, seen, depth, local_layers)
                for fld in ("orelse", "finalbody"):
                    self._block(getattr(stmt, fld), path + (fld,), blocks + ((path, fld),), frame, owner,
                                     guards, out, seen, depth, local_layers)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for name, binding in import_bindings(stmt, (frame.scope or self.ctx.scope).module, (frame.scope or self.ctx.scope).is_package):
                    frame.local_imports[name] = binding.target
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                ref = _ref(stmt, frame, path, blocks)
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    attr = self_attr(target)
                    if attr is not None:
                        out.extend(self._bindings_for(attr, stmt.value, frame, guards, ref, local_layers))
                    elif isinstance(target, ast.Name):
                        made = self._bindings_for(target.id, stmt.value, frame, guards, ref, local_layers)
                        local_layers[target.id] = [b for b in made if b.kind != "other"]
                    elif isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple) \
                            and len(target.elts) == len(stmt.value.elts):
                        for t, v in zip(target.elts, stmt.value.elts):
                            a = self_attr(t)
                            if a is not None:
                                out.extend(self._bindings_for(a, v, frame, guards, ref, local_layers))
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                ref = _ref(stmt, frame, path, blocks)
                call = stmt.value
                # self.add_module("name", Layer(...)) / self.register_module
                if self_attr(call.func) in ("add_module", "register_module") and len(call.args) == 2 \
                        and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                    out.extend(self._bindings_for(call.args[0].value, call.args[1], frame, guards, ref, local_layers))
                    continue
                # self.<list>.append(Layer(...)) on an `nn.ModuleList` bound before: one more element
                func = call.func
                listed = self_attr(func.value) if isinstance(func, ast.Attribute) and func.attr == "append" else None
                if listed is not None and len(call.args) == 1 and not call.keywords \
                        and any(b.attr == listed and b.type == "torch.nn.ModuleList" for b in out):
                    for b in self._bindings_for(f"{listed}.*", call.args[0], frame, guards, ref, local_layers):
                        out.append(InitBinding(b.attr, b.type, b.args, b.kwargs, b.kind, b.unresolved, b.guards, b.stmt, listed))
                    continue
                # self.<helper>(...) and super().__init__(...)
                callee = self._callee(call, owner)
                if callee is not None:
                    cfn, cowner = callee
                    self._walk(cfn, cowner, guards, out, seen, depth + 1)

    def _callee(self, call: ast.Call, owner: ClassInfo):
        func = call.func
        attr = self_attr(func)
        if attr is not None:
            found = self.ctx.find_method(attr)
            return found
        if (isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(func.value, ast.Call)
                and isinstance(func.value.func, ast.Name) and func.value.func.id == "super"):
            for base_qual in owner.base_quals:
                base = self.ctx.classes.class_info(base_qual) if base_qual else None
                if base is None:
                    continue
                for cur in self.ctx.classes.mro(base):
                    if "__init__" in cur.methods:
                        return cur.methods["__init__"], cur
        return None

    def _bindings_for(self, attr, rhs, frame, guards, ref, local_layers) -> list[InitBinding]:
        if isinstance(rhs, ast.IfExp):
            g = Guard(node_text(rhs.test), False, (rhs.test.lineno, rhs.test.end_lineno or rhs.test.lineno))
            return (self._bindings_for(attr, rhs.body, frame, guards + (g,), ref, local_layers)
                    + self._bindings_for(attr, rhs.orelse, frame, guards + (Guard(g.text, True, g.lines),), ref, local_layers))
        if isinstance(rhs, ast.Name) and rhs.id in local_layers and local_layers[rhs.id]:
            return [InitBinding(attr, b.type, b.args, b.kwargs, b.kind, b.unresolved, guards, ref, b.container)
                    for b in local_layers[rhs.id] if b.container is None]
        if isinstance(rhs, ast.Call):
            qual, spelling = self._callee_type(rhs.func, frame)
            args = tuple(value_of(a) for a in rhs.args)
            kwargs = _star_kwargs(rhs, frame)
            out = [InitBinding(attr, qual, args, kwargs, "call", None if qual else spelling, guards, ref)]
            if qual in CONTAINERS:
                out.extend(self._container_elements(attr, qual, rhs, frame, guards, ref, local_layers))
            return out
        if isinstance(rhs, ast.Subscript):
            parts = dotted(rhs.value)
            qual = self.ctx.resolve(parts, frame) if parts and parts[0] not in frame.locals else None
            return [InitBinding(attr, qual, (value_of(rhs.slice),), (), "subscript",
                                None if qual else node_text(rhs.value), guards, ref)]
        return [InitBinding(attr, None, (value_of(rhs),), (), "other", None, guards, ref)]

    def _container_elements(self, attr, qual, call, frame, guards, ref, local_layers) -> list[InitBinding]:
        elements: list[tuple[str, ast.expr]] = []
        if qual == "torch.nn.Sequential":
            for i, arg in enumerate(call.args):
                if isinstance(arg, ast.Starred):
                    break
                elements.append((str(i), arg))
        elif call.args:
            arg = call.args[0]
            if isinstance(arg, (ast.List, ast.Tuple)):
                elements = [(str(i), e) for i, e in enumerate(arg.elts) if not isinstance(e, ast.Starred)]
            elif isinstance(arg, (ast.ListComp, ast.GeneratorExp)):
                elements = [("*", arg.elt)]
            elif isinstance(arg, ast.Dict):
                elements = [(k.value, v) for k, v in zip(arg.keys, arg.values)
                            if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        limit = container_limit(self.ctx.options)
        if len(elements) > limit:
            kind = qual.rsplit('.', 1)[-1]
            self.ctx.problems.append(Problem("node-budget", f"node-budget: self.{attr}: a {kind} of {len(elements)} "
                                             f"elements (more than {limit}); its elements are not analysed",
                                             call.lineno))
            return []
        out = []
        for key, elt in elements:
            for b in self._bindings_for(f"{attr}.{key}", elt, frame, guards, ref, local_layers):
                out.append(InitBinding(b.attr, b.type, b.args, b.kwargs, b.kind, b.unresolved, b.guards, b.stmt, attr))
        return out

    def _callee_type(self, func: ast.expr, frame: Frame) -> tuple[str | None, str]:
        """(qualified name, spelling) of what a call calls; None when unknown."""
        spelling = node_text(func)
        parts = dotted(func)
        if parts is None:
            return self._table_entry(func, frame), spelling
        if parts[0] in frame.locals and parts[0] not in frame.local_imports:
            # a parameter or local: a factory only astroid's reaching definitions can see through
            return self.ctx.infer(func, parts, frame), spelling
        if parts[0] == "self":
            return self.ctx.infer(func, parts, frame), spelling
        if len(parts) == 1 and parts[0] in BUILTINS and parts[0] not in (frame.scope or self.ctx.scope).names:
            return f"builtins.{parts[0]}", spelling
        qual = self.ctx.resolve(parts, frame)
        if qual is None:
            qual = self.ctx.infer(func, parts, frame)
        return qual, spelling

    def _table_entry(self, func: ast.expr, frame: Frame) -> str | None:
        """`TABLE["key"]` where TABLE is a module-level dict literal of this
        module whose "key" entry is a dotted name: that name, resolved
        (MobileBERT's `NORM2FN["layer_norm"]`).  Only when the binding is unique."""
        if not (isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name)
                and isinstance(func.slice, ast.Constant)):
            return None
        scope = frame.scope or self.ctx.scope
        name = func.value.id
        table = scope.dicts.get(name)
        if table is None or len(scope.names.get(name, ())) != 1 or name in frame.locals:
            return None
        for key, value in zip(table.keys, table.values):
            if isinstance(key, ast.Constant) and key.value == func.slice.value:
                parts = dotted(value)
                return self.ctx.resolve(parts, frame) if parts else None
        return None


def _ref(stmt: ast.stmt, frame: Frame, path: tuple, blocks: tuple) -> StmtRef:
    return StmtRef(frame.method, frame.owner, path, (stmt.lineno, stmt.end_lineno or stmt.lineno), stmt.col_offset, blocks)


def _star_kwargs(call: ast.Call, frame: Frame) -> tuple:
    """A constructor call's keyword arguments, `**dd` expanded into the keys of
    a local dict literal (`dd = {"device": device, "dtype": dtype}` or
    `dict(device=device)`, timm's style) when that literal provably is what
    `dd` holds; otherwise `**dd` stays as the entry `("**", dd)` (unknown keys)."""
    out = []
    explicit = {k.arg for k in call.keywords if k.arg is not None}
    for k in call.keywords:
        items = None
        if k.arg is None and isinstance(k.value, ast.Name):
            items = _local_dict_items(frame.fn, k.value.id, call.lineno, frame)
        if items is None or explicit & {key for key, _ in items}:
            out.append((k.arg or "**", value_of(k.value)))
            continue
        out.extend((key, value_of(v)) for key, v in items)
    return tuple(out)


def _local_dict_items(fn: ast.FunctionDef, name: str, use_line: int, frame: Frame):
    """[(key, value expr)] of the dict literal `name` holds at `use_line`, or None.

    Only when: `name` is a local stored exactly once in `fn`, by a plain
    `name = {...}` / `name = dict(k=v, ...)` at the top level of the body
    before the use, with string keys; `name` is read nowhere else but as
    `**name` (so nothing can mutate it); and the names its values read are
    never stored in `fn` (parameters such as `device`, `dtype`), so the
    values mean the same where the call is."""
    if name not in frame.locals:
        return None
    assign = None
    for st in fn.body:
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name) \
                and st.targets[0].id == name:
            assign = st
            break
    if assign is None or assign.lineno >= use_line:
        return None
    stores, star_uses, reads = 0, 0, 0
    stored: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                stored.add(node.id)
                stores += node.id == name
            elif node.id == name:
                reads += 1
        elif isinstance(node, ast.keyword) and node.arg is None and isinstance(node.value, ast.Name) \
                and node.value.id == name:
            star_uses += 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)) and name in node.names:
            return None
    if stores != 1 or reads != star_uses:
        return None
    value = assign.value
    items = []
    if isinstance(value, ast.Dict):
        for key, v in zip(value.keys, value.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.isidentifier()):
                return None  # `**other` inside the literal, or a key that is no name
            items.append((key.value, v))
    elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict" \
            and "dict" not in frame.locals and not value.args \
            and "dict" not in (frame.scope.names if frame.scope is not None else {}):
        for kw in value.keywords:
            if kw.arg is None:
                return None
            items.append((kw.arg, kw.value))
    else:
        return None
    if len({k for k, _ in items}) != len(items):
        return None
    for _, v in items:
        for sub in ast.walk(v):
            if isinstance(sub, ast.Name) and sub.id in stored:
                return None
            if isinstance(sub, (ast.Call, ast.NamedExpr, ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom)):
                return None
    return items
