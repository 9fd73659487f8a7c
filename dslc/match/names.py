"""Does a qualified name exist?  Answered without importing anything.

`exists(qualname)` is True, False or None (cannot tell):

1. A name of the signature table (dslc/data/signatures.json) exists.
2. The longest prefix that is a module is found with `PathFinder` in the
   installed packages (the way `dslc.apply.driver.module_available` does: reading
   directories only).  No top-level package found: None (a kernel package
   that is not installed here says nothing about a typo).
3. The next component must be defined in that module's source: a top-level
   `def`/`class`, an assignment, an import, or a name in `__all__`.  A module
   whose names are not all visible statically (a `from x import *`, a module
   `__getattr__`, a lazy module) gives None.  Deeper components (attributes
   of a class) are not checked.

`layer_parameters(qualname)` gives the parameter and buffer names a
`torch.nn.Module` class registers (`self.w = Parameter(...)`,
`register_parameter("w", ...)`, `register_buffer("b", ...)`, in the class
and its bases of the same module), or None when they cannot be seen.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import sys


def _spec(parts: list[str]):
    """The spec of module `parts` (None: not a module); never imports."""
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0])
        if spec is None and parts[0] in sys.modules:
            spec = getattr(sys.modules[parts[0]], "__spec__", None)
    except (ImportError, ValueError):
        return None
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return None
        try:
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
        except (ImportError, ValueError):
            return None
    return spec


@functools.lru_cache(maxsize=256)
def _absolute_module(modname: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The module `from <level dots><target> import ...` names, in module `modname`.

    The same rule as `dslc.analysis.names.resolve_relative`, repeated here so
    that `dslc check` does not import the analysis (and z3) to look up a name.
    """
    if level == 0:
        return target
    parts = modname.split(".") if is_package else modname.split(".")[:-1]
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)] + (target.split(".") if target else [])
    return ".".join(base) or None


def _module_source(origin: str) -> tuple[str, ast.Module] | None:
    """A module file's text (for marker searches) and its tree, read once."""
    try:
        with open(origin, "rb") as fh:
            raw = fh.read()
        return raw.decode("utf-8", errors="replace"), ast.parse(raw, filename=origin)
    except (OSError, SyntaxError, ValueError):
        return None


def _module_tree(origin: str) -> ast.Module | None:
    source = _module_source(origin)
    return None if source is None else source[1]


_DYNAMIC = ("globals()[", "globals().update", "_LazyModule", "sys.modules[__name__].__dict__")


@functools.lru_cache(maxsize=256)
def module_names(modname: str, depth: int = 0) -> frozenset[str] | None:
    """Top-level names module `modname`'s source defines; None when not all are visible.

    `from .x import *` is followed (into modules found the same way);
    names put in by code (`globals()[...] = ...`, a lazy module, a module
    `__getattr__`) make the answer None.
    """
    spec = _spec(modname.split("."))
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py") or depth > 8:
        return None
    source = _module_source(origin)
    if source is None:
        return None
    text, tree = source
    if any(marker in text for marker in _DYNAMIC):
        return None
    is_package = bool(spec.submodule_search_locations)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__":
            return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            source = _absolute_module(modname, is_package, node.level, node.module)
            more = module_names(source, depth + 1) if source else None
            if more is None:
                return None
            names |= more
    for node in tree.body:
        _collect(node, names)
    return frozenset(names)


def _collect(node: ast.stmt, names: set[str]) -> None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    elif isinstance(node, ast.Import):
        for a in node.names:
            names.add(a.asname or a.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom):
        for a in node.names:
            names.add(a.asname or a.name)
    elif isinstance(node, (ast.If, ast.Try, ast.With)) or type(node).__name__ == "TryStar":
        for field in ("body", "orelse", "finalbody"):
            for sub in getattr(node, field, ()) or ():
                _collect(sub, names)
        for h in getattr(node, "handlers", ()) or ():
            for sub in h.body:
                _collect(sub, names)


def _in_table(qualname: str) -> bool:
    try:
        from dslc.match import signatures

        return qualname in signatures.table()
    except Exception:  # the table is an aid, never a reason to fail
        return False


def exists(qualname: str) -> bool | None:
    if _in_table(qualname):
        return True
    parts = qualname.split(".")
    if _spec(parts[:1]) is None:
        return None
    k = 1
    while k < len(parts) and _spec(parts[: k + 1]) is not None:
        k += 1
    if k == len(parts):
        return True  # the whole name is a module
    names = module_names(".".join(parts[:k]))
    if names is None:  # a namespace package, an extension module, dynamic names
        return None
    return True if parts[k] in names else False


def suggestion(qualname: str) -> str | None:
    """A close existing spelling of the first missing component, if any."""
    import difflib

    parts = qualname.split(".")
    k = 1
    while k < len(parts) and _spec(parts[: k + 1]) is not None:
        k += 1
    spec = _spec(parts[:k])
    if spec is None or k == len(parts):
        return None
    candidates = set()
    if spec.submodule_search_locations:
        import pkgutil

        candidates |= {m.name for m in pkgutil.iter_modules(list(spec.submodule_search_locations))}
    candidates |= set(module_names(".".join(parts[:k])) or ())
    close = difflib.get_close_matches(parts[k], sorted(candidates), n=1)
    if not close:
        return None
    return ".".join(parts[:k] + [close[0]] + parts[k + 1:])


_PARAM_CALLS = {"Parameter", "UninitializedParameter", "UninitializedBuffer"}


def _find_class(modname: str, name: str, depth: int = 0):
    """(module tree, its module name) of the module that defines class `name`,
    following `from x import name` and `from x import *` re-exports."""
    if depth > 8:
        return None
    spec = _spec(modname.split("."))
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return None
    tree = _module_tree(origin)
    if tree is None:
        return None
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return tree, modname
    is_package = bool(spec.submodule_search_locations)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        hit = any(a.name in (name, "*") and (a.asname or a.name) in (name, "*") for a in node.names)
        if not hit:
            continue
        real = next((a.name for a in node.names if (a.asname or a.name) == name), name)
        source = _absolute_module(modname, is_package, node.level, node.module)
        found = _find_class(source, real, depth + 1) if source else None
        if found is not None:
            return found
    return None


def layer_parameters(qualname: str) -> frozenset[str] | None:
    """Parameter and buffer names of a module class, from its source (None: unknown)."""
    module, _, cls_name = qualname.rpartition(".")
    found_at = _find_class(module, cls_name) if module else None
    if found_at is None:
        return None
    tree, _ = found_at
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    found: set[str] = set()
    seen: set[str] = set()
    todo = [cls_name]
    while todo:
        name = todo.pop()
        if name in seen or name not in classes:
            continue
        seen.add(name)
        cls = classes[name]
        todo += [b.id if isinstance(b, ast.Name) else b.attr for b in cls.bases if isinstance(b, (ast.Name, ast.Attribute))]
        for node in ast.walk(cls):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                callee = node.value.func
                called = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
                if called in _PARAM_CALLS:
                    for t in node.targets:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            found.add(t.attr)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("register_parameter", "register_buffer"):
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    found.add(node.args[0].value)
    # Bases from other modules (their parameters are unseen): unknown.
    local_only = all(b in classes or b in ("Module",) for c in seen
                     for b in [x.id if isinstance(x, ast.Name) else getattr(x, "attr", "") for x in classes[c].bases])
    return frozenset(found) if found and local_only else None
