"""What the extractors of one module share, and names as its code sees them.

A `FileContext` holds the analysed module (tree, scope, source), the
`Resolver`, the `Options`, the Problems found so far, the `ClassIndex`, and
the class being analysed (`cls`, with its init bindings by attribute,
`init_types`, and the DL-content answers that depend on it, `dl_cache`).
`enter` switches the class.  Names: `resolve` gives a dotted spelling its
qualified name (a function's local imports first), `find_method` looks a
method up along the class's MRO, and `infer` is the astroid fallback
(infer.py) for a callee the table leaves unresolved, tried only when a
cheap syntactic check says some reaching definition could name a class.
"""

from __future__ import annotations

import ast

from .budget import Options
from .classes import ClassIndex, ClassInfo
from .model import InitBinding, Problem
from .names import Resolver, Scope, dotted
from .pathstate import Frame


class FileContext:
    """One module under analysis (see the module docstring)."""

    def __init__(self, tree: ast.Module, scope: Scope, resolver: Resolver, options: Options,
                 source: str | None = None):
        self.tree = tree
        self.source = source  # for the astroid fallback (infer.py); None: table only
        self._inferrer = None
        self.scope = scope
        self.module = scope.module
        self.resolver = resolver
        self.options = options
        self.problems: list[Problem] = []
        self.classes = ClassIndex(tree, scope, resolver)
        self.dl_cache: dict = {}
        self.cls: ClassInfo | None = None
        self.init_types: dict[str, list[InitBinding]] = {}

    def resolve(self, parts: list[str], frame: Frame | None = None, scope: Scope | None = None) -> str | None:
        """The qualified name of a dotted spelling in `frame` (its local
        imports first, then its module's scope) or in `scope`; None if unknown."""
        if frame is not None and parts[0] in frame.local_imports:
            base = frame.local_imports[parts[0]]
            return self.resolver.follow(".".join([base] + parts[1:]))
        if scope is None and frame is not None:
            scope = frame.scope
        return self.resolver.resolve_parts(scope or self.scope, parts)

    def enter(self, info: ClassInfo | None) -> None:
        """Switch the class context; DL-content answers depend on it."""
        if info is not self.cls:
            self.dl_cache = {}
            self.cls = info
            if info is None:
                self.init_types = {}

    def find_method(self, name: str) -> tuple[ast.FunctionDef, ClassInfo] | None:
        """The method `name` of the class being analysed, along its MRO, with its class."""
        for info in self.classes.mro(self.cls):
            if name in info.methods:
                return info.methods[name], info
        return None

    def infer(self, func: ast.expr, parts: list[str], frame: Frame) -> str | None:
        """The astroid fallback (infer.py) for a callee the table left
        unresolved.  Cheap syntactic checks first: astroid parses the module
        only when some reaching definition could evaluate to a name."""
        if self.source is None or (frame.scope is not None and frame.scope is not self.scope):
            return None  # code inherited from another module: its own file would be needed
        head = parts[0]
        classes = None
        if head == "self":
            if len(parts) != 2 or self.cls is None or not _class_binds_name(self.classes.mro(self.cls), parts[1]):
                return None
            classes = [(c.qualname, c.node, c.scope is self.scope, c.base_quals) for c in self.classes.mro(self.cls)]
        elif head in frame.locals:
            if head in frame.local_imports or not _local_may_name(frame.fn, head):
                return None
            quals = self.table_quals(frame, head)
            if len(quals) > 1 or "" in quals:
                return None  # different classes, or something that is no name, assigned to it
        else:
            bindings = self.scope.names.get(head, ())
            if len(bindings) != 1 or bindings[0].kind != "infer":
                return None  # bound once, by an expression the table does not evaluate
        if self._inferrer is None:
            from .infer import Inferrer
            self._inferrer = Inferrer(self.source, self.scope, self.resolver, self.tree)
        return self._inferrer.infer_qualname(func, classes)

    def table_quals(self, frame: Frame, name: str) -> set[str]:
        """Qualified names the table gives to the dotted right-hand sides
        (both branches of a conditional) assigned to local `name` in
        `frame.fn`, "" for a right-hand side that is no dotted name.  Two or
        more, or "": astroid could only resolve the use when one assignment
        kills the other, which is not worth a parse (left unresolved)."""
        out: set[str] = set()
        for node in ast.walk(frame.fn):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                leaves, todo = [], [node.value]
                while todo:
                    v = todo.pop()
                    if isinstance(v, ast.IfExp):
                        todo += [v.body, v.orelse]
                    else:
                        leaves.append(v)
                for leaf in leaves:
                    parts = dotted(leaf)
                    if parts is None:
                        out.add("")  # a call, a constant: that definition evaluates to nothing
                    elif parts[0] not in frame.locals and parts[0] != "self":
                        qual = self.resolve(parts, frame)
                        if qual:
                            out.add(qual)
        return out


def _local_may_name(fn: ast.FunctionDef, name: str) -> bool:
    """Could a local `name` of `fn` hold a class or function known by name?
    Only when some assignment to it has a dotted-name or conditional right-hand
    side; and a parameter must be rebound unconditionally (at the top level of
    the body), or the caller's argument reaches every use."""
    args = fn.args
    params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    if name in params and not any(
            isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in st.targets)
            for st in fn.body):
        return False
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Name, ast.Attribute, ast.IfExp)) \
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
    return False


def _class_binds_name(classes, name: str) -> bool:
    """Does some class of the hierarchy bind `name` with a plain class-level assignment?"""
    for info in classes:
        for st in info.node.body:
            if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in st.targets):
                return True
            if isinstance(st, ast.AnnAssign) and st.value is not None and isinstance(st.target, ast.Name) \
                    and st.target.id == name:
                return True
    return False
