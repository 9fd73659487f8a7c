"""Qualified names without importing anything (paper §3.2, "alias-aware").

A name in model source is resolved by following the import and alias chain
in the analyzed code itself, over the stdlib `ast` of each module:

1. Build a module's *scope*: every top-level binding (`import`, `from ...
   import`, `class`, `def`, assignment), descending into top-level `if` /
   `try` / `with` blocks, since transformers guards imports that way.
2. To resolve `a.b.c` in a module, look up `a` in its scope.  An import gives
   the imported qualified name; a class or function gives `<module>.<name>`;
   an assignment of a dotted name (`Norm = nn.LayerNorm`) resolves that
   expression in the same module; any other assignment gives
   `<module>.<name>` (a module-level object such as `ACT2FN`), except a
   conditional expression or a `getattr(...)` call, which resolves to None
   here and is left to `infer.py` (astroid).  A name bound to different
   things on different branches is ambiguous: unresolved.
3. A qualified name that points into the analyzed tree (a package directory
   on disk, found from the file's package path) is chased: its module's
   scope is loaded and step 2 repeats there (re-exports, aliases), with a
   cycle guard.  Relative imports resolve through the importing module's
   package.
4. A name that leaves the tree (torch, ...) is kept by composition and
   canonicalised to the public spelling (`torch.nn.modules.linear.Linear` ->
   `torch.nn.Linear`), so nothing depends on whether torch is installed: no
   library is ever imported or inferred into.

Nothing here guesses: a name with no binding, or an ambiguous one, resolves
to None and the caller keeps the spelling as `unresolved`.
"""

from __future__ import annotations

import ast
import builtins
import os
import warnings
from dataclasses import dataclass, field

from .copies import copies

BUILTINS = frozenset(dir(builtins))

# Defining module -> public module, for libraries outside the analyzed tree.
# Order matters: the first matching prefix wins.
_CANONICAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("torch.nn.modules.", "torch.nn."),
    ("torch.nn.parameter.", "torch.nn."),
    ("torch.nn.functional.", "torch.nn.functional."),
    ("torch._tensor.", "torch."),
    ("torch.functional.", "torch."),
    ("torch._C._VariableFunctions.", "torch."),
    ("torch.ao.nn.intrinsic.qat.modules.", "torch.ao.nn.intrinsic.qat."),
    ("torch.nn.intrinsic.qat.modules.", "torch.nn.intrinsic.qat."),
)


def canonical(qual: str) -> str:
    """Public spelling of a qualified name from outside the analyzed tree.

    `torch.nn.modules.linear.Linear` and `torch.nn.modules.Linear` both give
    `torch.nn.Linear`; `torch.nn.parameter.Parameter` gives
    `torch.nn.Parameter`; names already public are returned unchanged.
    """
    for prefix, public in _CANONICAL_PREFIXES:
        if qual.startswith(prefix):
            rest = qual[len(prefix):].split(".")
            if prefix == "torch.nn.modules.":
                # torch.nn.modules[.<submodule>].<Class>; other names stay
                if not rest[-1][:1].isupper():
                    return qual
                return public + rest[-1]
            return public + ".".join(rest)
    return qual


def module_name_for(path: str, root: str | None = None) -> str:
    """Dotted module name of `path`.

    With `root` (the directory that holds the top-level package), the name is
    the path relative to it.  Without, walk up while the directory is a
    package (has `__init__.py`).  `pkg/__init__.py` names `pkg`.
    """
    path = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [] if stem == "__init__" else [stem]
    if root is not None:
        rel = os.path.relpath(os.path.dirname(path), os.path.abspath(root))
        if rel != "." and not rel.startswith(".."):
            parts = rel.split(os.sep) + parts
        return ".".join(parts) or stem
    directory = os.path.dirname(path)
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        parts.insert(0, os.path.basename(directory))
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return ".".join(parts) or stem


def tree_root_for(path: str, module: str) -> str:
    """The directory that holds the top package of `module` defined at `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    depth = module.count(".")
    if os.path.basename(path) == "__init__.py":
        depth += 1
    for _ in range(depth):
        directory = os.path.dirname(directory)
    return directory


def dotted(expr: ast.expr) -> list[str] | None:
    """`a.b.c` as ['a', 'b', 'c'], or None when `expr` is not a dotted name."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if isinstance(expr, ast.Name):
        parts.append(expr.id)
        return parts[::-1]
    return None


@dataclass(frozen=True, slots=True)
class Binding:
    """One top-level binding of a name: how it was bound and to what."""

    kind: str  # import | class | def | alias | value | infer (see _needs_inference)
    target: str = ""  # import: the qualified name; alias: the dotted source text
    line: int = 0


@dataclass(slots=True)
class Scope:
    """The top-level bindings of one module."""

    module: str
    path: str | None
    is_package: bool
    names: dict[str, list[Binding]] = field(default_factory=dict)
    # module-level `NAME = {...}` dict literals (for `TABLE["key"](...)` lookups)
    dicts: dict[str, ast.Dict] = field(default_factory=dict)
    # functions defined here that are copies of a library function (copies.py):
    # name -> the canonical qualified name a call of them resolves to
    copies: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, binding: Binding) -> None:
        self.names.setdefault(name, []).append(binding)


def resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The absolute module of `from <level dots><target> import ...`."""
    if level == 0:
        return target
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    if target:
        base = base + target.split(".")
    return ".".join(base) or None


def import_bindings(stmt: ast.Import | ast.ImportFrom, module: str, is_package: bool):
    """Yield (local name, Binding) for an import statement."""
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if alias.asname:
                yield alias.asname, Binding("import", alias.name, stmt.lineno)
            else:
                top = alias.name.split(".")[0]
                yield top, Binding("import", top, stmt.lineno)
        return
    base = resolve_relative(module, is_package, stmt.level, stmt.module)
    if base is None:
        return
    for alias in stmt.names:
        if alias.name == "*":
            continue
        yield alias.asname or alias.name, Binding("import", f"{base}.{alias.name}", stmt.lineno)


def _needs_inference(value: ast.expr | None) -> bool:
    """A module-level right-hand side that names a class or function only
    indirectly: `A if c else B`, `getattr(mod, "Name")`.  The table does not
    evaluate it (the name resolves to None, not `<module>.<name>`);
    `infer.py` may, when a callee needs it."""
    if isinstance(value, ast.IfExp):
        return True
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and value.func.id == "getattr")


def build_scope(tree: ast.Module, module: str, path: str | None, is_package: bool) -> Scope:
    """Collect the top-level bindings of a module (see the module docstring, step 1)."""
    scope = Scope(module, path, is_package)

    def visit(stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for name, binding in import_bindings(stmt, module, is_package):
                    scope.add(name, binding)
            elif isinstance(stmt, ast.ClassDef):
                scope.add(stmt.name, Binding("class", line=stmt.lineno))
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope.add(stmt.name, Binding("def", line=stmt.lineno))
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                value = stmt.value
                for target in targets:
                    if isinstance(target, ast.Name) and isinstance(value, ast.Dict):
                        scope.dicts[target.id] = value
                    if isinstance(target, ast.Name):
                        if value is not None and dotted(value) is not None:
                            scope.add(target.id, Binding("alias", ".".join(dotted(value)), stmt.lineno))
                        elif _needs_inference(value):
                            scope.add(target.id, Binding("infer", line=stmt.lineno))
                        else:
                            scope.add(target.id, Binding("value", line=stmt.lineno))
                    elif isinstance(target, (ast.Tuple, ast.List)):
                        for elt in target.elts:
                            if isinstance(elt, ast.Name):
                                scope.add(elt.id, Binding("value", line=stmt.lineno))
            elif isinstance(stmt, ast.If):
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif isinstance(stmt, ast.With):
                visit(stmt.body)

    visit(tree.body)
    scope.copies = copies(tree, module)
    return scope


# Libraries whose sources are never read: names from them are canonicalised
# (torch's sources are large and the answer must not depend on its presence).
_NEVER_INSTALLED = frozenset({"torch", "builtins", "typing", "os", "sys", "math"})


def site_dirs() -> list[str]:
    """The installed-package directories on `sys.path` (site-/dist-packages)."""
    import sys

    return [d for d in sys.path if d and ("site-packages" in d or "dist-packages" in d) and os.path.isdir(d)]


class Resolver:
    """Resolves names of one analysis run, loading in-tree modules on demand.

    `root` is the directory that holds the analyzed tree's top package (None:
    only the file itself is visible).  `consulted` records every in-tree file
    whose bindings a resolution used (for the cache key).
    """

    def __init__(self, root: str | None, cache: dict | None = None, installed: bool = False):
        self.root = root
        # (module) -> (Scope, tree) or None; shareable across files of one run
        self._modules: dict[str, object] = cache if cache is not None else {}
        self.consulted: set[str] = set()
        # also read the sources of installed packages (site-packages; never torch)
        self.installed = installed
        # (id(scope), *parts) -> (scope, answer) of `resolve_parts` asked from outside (no `_seen`):
        # the same spellings are asked again and again (each class, method and inlined helper)
        self._answers: dict[tuple, tuple] = {}

    # -- modules of the tree -------------------------------------------------

    def register(self, scope: Scope, tree: ast.Module) -> None:
        self._modules[scope.module] = (scope, tree)
        self._answers.clear()

    def module_file(self, module: str) -> tuple[str, bool] | None:
        if module.split(".")[0] in _NEVER_INSTALLED:
            # canonicalised, never read, even where the root holds them (a
            # file inside site-packages has site-packages as its root)
            return None
        roots = [self.root] if self.root is not None else []
        if self.installed:
            roots += site_dirs()
        for root in roots:
            base = os.path.join(root, *module.split("."))
            if os.path.isfile(base + ".py"):
                return base + ".py", False
            init = os.path.join(base, "__init__.py")
            if os.path.isfile(init):
                return init, True
        return None

    def load(self, module: str):
        """(Scope, ast.Module) of an in-tree module, or None."""
        if module in self._modules:
            entry = self._modules[module]
            if entry is not None and entry[0].path:
                self.consulted.add(entry[0].path)
            return entry
        found = self.module_file(module)
        entry = None
        if found is not None:
            path, is_package = found
            try:
                with open(path, "rb") as fh, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tree = ast.parse(fh.read(), filename=path)
                entry = (build_scope(tree, module, path, is_package), tree)
                self.consulted.add(path)
            except (OSError, SyntaxError, ValueError):
                entry = None
        self._modules[module] = entry
        return entry

    # -- resolution ------------------------------------------------------------

    def resolve_parts(self, scope: Scope, parts: list[str], _seen: frozenset = frozenset()) -> str | None:
        """Qualified, canonical name of the dotted name `parts` seen in `scope`.

        A question asked from outside is answered once per resolver: the
        answer depends only on the scopes of the modules it reads, which
        never change once loaded (`register` forgets the answers), and the
        files it consulted are in `consulted` from the first time."""
        if _seen:
            return self._resolve_parts(scope, parts, _seen)
        key = (id(scope), *parts)
        known = self._answers.get(key)
        if known is not None and known[0] is scope:
            return known[1]
        answer = self._resolve_parts(scope, parts, _seen)
        self._answers[key] = (scope, answer)
        return answer

    def _resolve_parts(self, scope: Scope, parts: list[str], _seen: frozenset) -> str | None:
        head = parts[0]
        bindings = scope.names.get(head)
        if not bindings:
            return None
        key = (scope.module, head)
        if key in _seen:
            return None
        seen = _seen | {key}
        results = set()
        for binding in bindings:
            if binding.kind == "import":
                results.add(self.follow(binding.target, seen))
            elif binding.kind == "alias":
                results.add(self.resolve_parts(scope, binding.target.split("."), seen))
            elif binding.kind == "infer":
                results.add(None)  # left to astroid (infer.py) at the call sites that need it
            elif binding.kind == "def" and len(parts) == 1 and head in scope.copies:
                results.add(scope.copies[head])  # a copy of a library function: its canonical name
            else:  # class, def, value: defined here
                results.add(f"{scope.module}.{head}")
        if len(results) != 1:
            return None  # bound differently on different branches: ambiguous
        (qual,) = results
        if qual is None or len(parts) == 1:
            return qual
        kinds = {b.kind for b in bindings}
        combined = qual + "." + ".".join(parts[1:])
        if kinds <= {"class", "def", "value"}:
            return combined  # an attribute of a local object: not chased
        return self.follow(combined, seen)

    def follow(self, qual: str, _seen: frozenset = frozenset()) -> str | None:
        """Chase a qualified name through in-tree modules (re-exports, aliases).

        Returns the defining qualified name, the canonical composition when the
        name leaves the tree, or None when an in-tree binding is ambiguous.
        """
        parts = qual.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            entry = self.load(module)
            if entry is None:
                continue
            scope = entry[0]
            rest = parts[cut:]
            if rest[0] not in scope.names:
                return qual  # not bound there (lazy module, submodule): composition
            return self.resolve_parts(scope, rest, _seen)
        return canonical(qual)
