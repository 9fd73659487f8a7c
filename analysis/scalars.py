"""Init attributes that hold a Python number (`ClassFacts.scalars`).

`scores * self.scale` keeps the rank of `scores` when `self.scale` is a
Python number; the matcher needs that to read `softmax(scores, dim=3)` as the
last dimension of a rank-4 tensor.  This module proves it from the source.

The assumption (the only one): **a constructor's configuration is numbers.**
In `__init__`, a field read from a parameter (`config.d_head`, `args.dim`,
`config.attn.scale`) and a parameter declared numeric (annotated `int`,
`float` or `bool`, or defaulting to an int or float literal) hold Python
numbers, not tensors.  That holds for configs loaded from JSON and for
hyper-parameters written at call sites; it is what excludes a tensor passed
to a constructor and kept as a scale.  A parameter annotated with anything
that names a tensor, an array or a parameter, or whose default is not a
literal, is not assumed anything.

An attribute `a` is a scalar of a class when

* every store of `self.a` anywhere in the file is a plain assignment
  (`self.a = <e>`, also annotated or chained) whose right-hand side is a
  *number expression* in its function (below), the class binds `a` in its
  own `__init__` (or a helper or base `__init__` in this file), and nothing
  else in the file can write it: no store to `<other>.a`, no class-body
  binding or method named `a`, no `setattr`/`register_buffer`/... naming it,
  and no `setattr` or `__dict__` write with a computed name in the file;
* a number expression is an int/float/bool literal; `+ - * / // % **` or
  unary `+ -` of number expressions; `and`/`or` and `x if c else y` of them;
  `math.pi`/`e`/`tau`/`inf`/`nan`; a call of a `math` function from
  `MATH_FUNCTIONS` or of `float`/`int`/`abs`/`round`/`min`/`max` (not
  shadowed) on number expressions; a configuration value (above); another
  scalar attribute `self.b`; or a local name of the function every one of
  whose assignments is a number expression (inductively: the first value is
  a number, so is every later one).

Anything else (a tensor, a call of torch or of any other function, a
subscript, a name bound by a loop or `with`) proves nothing.  A subclass or
an outside assignment in another file that rebinds the attribute to a tensor
is not seen: the analysis reads one file.
"""

from __future__ import annotations

import ast
import dataclasses

from .defuse import _CHILD_FIELDS, child_fields, child_nodes
from .nodetext import node_text

_MATH_CONSTANTS = frozenset({"pi", "e", "tau", "inf", "nan"})
# math functions that return a Python number for any argument they accept
# (not `prod`/`sumprod`, which multiply their arguments' own type)
MATH_FUNCTIONS = frozenset({
    "sqrt", "isqrt", "exp", "expm1", "log", "log2", "log10", "log1p", "pow", "floor", "ceil", "trunc",
    "fabs", "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "erf", "erfc",
    "hypot", "gcd", "lcm", "comb", "perm", "factorial", "radians", "degrees", "copysign", "fmod",
})
_NUMBER_BUILTINS = frozenset({"float", "int", "abs", "round", "min", "max"})
# calls that write an attribute named by a string argument
_NAMED_WRITES = frozenset({"setattr", "register_buffer", "register_parameter", "add_module", "register_module",
                           "__setattr__"})
_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_TENSOR_WORDS = ("Tensor", "torch", "ndarray", "array", "Parameter", "Module")
_NUMBER_TYPES = frozenset({"int", "float", "bool", "None", "Optional", "Union"})


def annotate(tree: ast.Module, scope, classes: list, skip: frozenset[str] = frozenset()) -> list:
    """`classes` (ClassFacts of `tree`) with `scalars` filled in, but for the
    classes named in `skip` (qualnames: those the class pre-filter left
    without paths, which no rule reads)."""
    wanted = {b.attr for c in classes if c.qualname not in skip for b in c.init if b.kind in ("other", "call")}
    if not wanted:
        return classes
    scan = _FileScan(tree, scope)
    local = {f"{scan.module}.{q}": q for q in scan.bases}
    out = []
    for c in classes:
        if c.qualname in skip:
            out.append(c)
            continue
        attrs = {b.attr for b in c.init if b.kind in ("other", "call")}
        family = scan.family(local.get(c.qualname))
        proven = frozenset(
            a for a in attrs
            if all(b.stmt is not None and b.stmt.owner in local for b in c.init if b.attr == a)
            and family is not None and scan.is_scalar(a, family))
        out.append(dataclasses.replace(c, scalars=proven) if proven else c)
    return out


class _FileScan:
    """Every place in one module that writes an attribute, and per function
    the assignments of its local names."""

    def __init__(self, tree: ast.Module, scope):
        self.scope = scope
        self.module = scope.module
        self.bases: dict[str, list[str]] = {}  # class qualname in the module -> its bases as written
        # attr -> (qualname of the class whose code stores it, or "" outside classes; function; value)
        self.stores: dict[str, list[tuple[str, ast.AST, ast.expr]]] = {}
        self.refused: set[str] = set()  # attrs written some other way
        self.dynamic = False  # a computed-name setattr / __dict__ write: nothing is proven
        self._locals: dict[int, tuple] = {}
        self._memo: dict[tuple, bool] = {}
        self._families: dict[str, frozenset[str]] | None = None
        self._visit(tree.body, None, "")

    # -- the scan ------------------------------------------------------------

    def _visit(self, stmts, fn, prefix: str) -> None:
        """Walk statements; `fn` is the innermost function (None: module or
        class body), `prefix` the qualified name of the enclosing classes."""
        for stmt in stmts:
            if isinstance(stmt, ast.ClassDef):
                qual = f"{prefix}.{stmt.name}" if prefix else stmt.name
                self.bases[qual] = [node_text(b) for b in stmt.bases]
                self._class_body(stmt)
                self._visit(stmt.body, None, qual)
                continue
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._visit(stmt.body, stmt, prefix)
                self._exprs([*stmt.decorator_list, *stmt.args.defaults, *stmt.args.kw_defaults], fn)
                continue
            own, nested = _statement_fields(type(stmt))
            self._stmt(stmt, fn, prefix, own)
            if not nested:
                continue
            for field in ("body", "orelse", "finalbody"):
                self._visit(getattr(stmt, field, None) or [], fn, prefix)
            for handler in getattr(stmt, "handlers", None) or []:
                self._visit(handler.body, fn, prefix)
            for case in getattr(stmt, "cases", None) or []:
                self._visit(case.body, fn, prefix)

    def _class_body(self, cls: ast.ClassDef) -> None:
        for stmt in cls.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.refused.add(stmt.name)  # a method or property named like the attribute
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Name):
                            self.refused.add(sub.id)  # a class attribute `self.a` may read

    def _stmt(self, stmt: ast.stmt, fn, cls: str, own_fields: tuple[str, ...]) -> None:
        """The attribute writes of one statement (its own expressions, in
        `own_fields`, not the statements nested in it)."""
        accepted: set[int] = set()
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" \
                        and fn is not None:
                    self.stores.setdefault(t.attr, []).append((cls, fn, stmt.value))
                    accepted.add(id(t))
        self._exprs([getattr(stmt, f, None) for f in own_fields], fn, accepted)

    def _exprs(self, parts, fn, accepted: frozenset | set = frozenset()) -> None:
        stack = list(parts)
        known = _CHILD_FIELDS  # node class -> `child_fields` (a hot walk: looked up by type)
        Attribute, Call, Load = ast.Attribute, ast.Call, ast.Load
        while stack:
            node = stack.pop()
            cls = type(node)
            fields = known.get(cls)
            if fields is None:
                if cls is list:
                    stack.extend(node)
                    continue
                if not isinstance(node, ast.AST):
                    continue
                fields = child_fields(cls)
            if cls is Attribute:
                if type(node.ctx) is not Load and id(node) not in accepted:
                    self.refused.add(node.attr)
                if node.attr == "__dict__":
                    self.dynamic = True
            elif cls is Call:
                self._named_write(node)
            # the children (lists and non-nodes among them are handled above; order does not matter here)
            for f in fields:  # not `ctx`: a marker without children
                stack.append(getattr(node, f, None))

    def _named_write(self, call: ast.Call) -> None:
        func = call.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name not in _NAMED_WRITES:
            return
        strings = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        strings += [k.value.value for k in call.keywords
                    if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)]
        if not strings and name in ("setattr", "__setattr__"):
            self.dynamic = True
        self.refused.update(strings)

    # -- the proof -----------------------------------------------------------

    def family(self, qual: str | None) -> frozenset[str] | None:
        """The classes of this file connected to `qual` by inheritance, either
        way (a store in any of them may run on an instance of `qual`)."""
        if qual is None:
            return None
        if self._families is None:
            self._families = _families(self.bases)
        return self._families[qual]

    def is_scalar(self, attr: str, family: frozenset[str], stack: frozenset = frozenset()) -> bool:
        """Does `self.<attr>` hold a number in the classes of `family`?"""
        key = (attr, family)
        if key in self._memo:
            return self._memo[key]
        stores = [(fn, value) for cls, fn, value in self.stores.get(attr, ()) if not cls or cls in family]
        if self.dynamic or attr in self.refused or attr in stack or not stores:
            return False
        ok = all(self._number(value, fn, family, stack | {attr}, frozenset()) for fn, value in stores)
        if not stack:
            self._memo[key] = ok
        return ok

    def _number(self, e: ast.expr, fn, family: frozenset, attrs: frozenset, names: frozenset) -> bool:
        """Is `e`, evaluated in function `fn` of a class of `family`, a Python
        number?  `attrs` and `names` are the attributes and locals being
        proved (cycle guards)."""
        def sub(x):
            return self._number(x, fn, family, attrs, names)

        if isinstance(e, ast.Constant):
            return type(e.value) in (int, float, bool)
        if isinstance(e, ast.BinOp):
            return isinstance(e.op, _ARITH) and sub(e.left) and sub(e.right)
        if isinstance(e, ast.UnaryOp):
            return isinstance(e.op, (ast.USub, ast.UAdd)) and sub(e.operand)
        if isinstance(e, ast.BoolOp):
            return all(sub(v) for v in e.values)
        if isinstance(e, ast.IfExp):
            return sub(e.body) and sub(e.orelse)
        if isinstance(e, ast.Call):
            return (self._number_function(e.func, fn) and not e.keywords
                    and all(not isinstance(a, ast.Starred) and sub(a) for a in e.args))
        if isinstance(e, ast.Attribute):
            return self._number_attribute(e, fn, family, attrs)
        if isinstance(e, ast.Name):
            return self._number_name(e.id, fn, family, attrs, names)
        return False

    def _number_attribute(self, e: ast.Attribute, fn, family: frozenset, attrs: frozenset) -> bool:
        if isinstance(e.value, ast.Name):
            if e.value.id == "self":
                return fn is not None and self.is_scalar(e.attr, family, attrs)
            if self._module_name(e.value.id, fn) == "math":
                return e.attr in _MATH_CONSTANTS
        root = e.value
        while isinstance(root, ast.Attribute):
            root = root.value
        # a configuration field: `config.d_head`, `config.attn.scale`
        return (isinstance(root, ast.Name) and root.id != "self" and _is_init(fn)
                and self._config_param(fn, root.id) is not None)

    def _number_name(self, name: str, fn, family: frozenset, attrs: frozenset, names: frozenset) -> bool:
        if fn is None:
            return False
        defs = self._local_defs(fn).get(name, [])
        if defs is None:
            return False  # bound by a loop, `with`, an import, unpacking, ...
        param = self._config_param(fn, name) if _is_init(fn) else None
        if _is_param(fn, name):
            if param is None or not _numeric_param(param):
                return False
        elif not defs:
            return False  # a global or a free name
        if name in names:
            return True  # inductive step: the earlier value is a number
        return all(self._number(v, fn, family, attrs, names | {name}) for v in defs)

    def _number_function(self, func: ast.expr, fn) -> bool:
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return self._module_name(func.value.id, fn) == "math" and func.attr in MATH_FUNCTIONS
        if isinstance(func, ast.Name):
            if self._shadowed(func.id, fn):
                target = self._module_name(func.id, fn)
                return target is not None and target.startswith("math.") and target[5:] in MATH_FUNCTIONS
            return func.id in _NUMBER_BUILTINS
        return False

    def _module_name(self, name: str, fn) -> str | None:
        """What a module-level import binds `name` to, where nothing local hides it."""
        if fn is not None and (_is_param(fn, name) or name in self._local_defs(fn)):
            return None
        bindings = self.scope.names.get(name)
        if not bindings or len(bindings) != 1 or bindings[0].kind != "import":
            return None
        return bindings[0].target

    def _shadowed(self, name: str, fn) -> bool:
        return bool(self.scope.names.get(name)) or (
            fn is not None and (_is_param(fn, name) or name in self._local_defs(fn)))

    def _config_param(self, fn, name: str):
        """The `ast.arg` of `__init__` parameter `name` when configuration
        values may be read from it (module docstring), else None."""
        if self._local_defs(fn).get(name, []) != [] or name in self._mutated(fn):
            return None  # rebound in the body, or a field of it written (`config.d_head = ...`)
        args = fn.args
        positional = [*args.posonlyargs, *args.args]
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
        for i, (arg, default) in enumerate(pairs):
            if arg.arg != name or (i == 0 and positional and arg is positional[0]):
                continue  # `self` is not configuration
            if default is not None and not isinstance(default, ast.Constant):
                return None
            if arg.annotation is not None and any(w in node_text(arg.annotation) for w in _TENSOR_WORDS):
                return None
            return _Param(arg, default)
        return None

    def _local_defs(self, fn) -> dict[str, list[ast.expr] | None]:
        """Per local name of `fn`, the values assigned to it, or None when
        some binding is not a plain assignment."""
        return self._scan_function(fn)[0]

    def _mutated(self, fn) -> set[str]:
        """The names of `fn` whose attributes or items it writes."""
        return self._scan_function(fn)[1]

    def _scan_function(self, fn):
        key = id(fn)
        if key not in self._locals:
            self._locals[key] = _local_defs(fn)
        return self._locals[key]


_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
_STATEMENT_FIELDS: dict[type, tuple[tuple[str, ...], bool]] = {}


def _statement_fields(cls: type) -> tuple[tuple[str, ...], bool]:
    """(the fields of statement class `cls` that may hold its own
    expressions, does it hold nested statements?), looked up per class: the
    scan visits every statement of the file."""
    known = _STATEMENT_FIELDS.get(cls)
    if known is None:
        known = _STATEMENT_FIELDS[cls] = (tuple(f for f in child_fields(cls) if f not in _BLOCK_FIELDS),
                                          any(f in _BLOCK_FIELDS for f in cls._fields))
    return known


def _families(bases: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    """Per class of the file, its connected component under "is a base of".
    A base is linked by its spelling or its last name, so a base from
    another file named like a class here links too (more stores are read,
    never fewer)."""
    parent = {q: q for q in bases}

    def find(q: str) -> str:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    by_name: dict[str, list[str]] = {}
    for q in bases:
        by_name.setdefault(q, []).append(q)
        by_name.setdefault(q.rpartition(".")[2], []).append(q)
    for q, written in bases.items():
        for base in written:
            for other in by_name.get(base, []) + by_name.get(base.rpartition(".")[2], []):
                parent[find(q)] = find(other)
    groups: dict[str, set[str]] = {}
    for q in bases:
        groups.setdefault(find(q), set()).add(q)
    return {q: frozenset(groups[find(q)]) for q in bases}


@dataclasses.dataclass(frozen=True)
class _Param:
    arg: ast.arg
    default: ast.expr | None


def _numeric_param(param: _Param) -> bool:
    """A parameter declared a number: annotated `int`/`float`/`bool` (or an
    optional of them), or with no annotation and an int/float default."""
    if param.arg.annotation is not None:
        words = {n.id for n in ast.walk(param.arg.annotation) if isinstance(n, ast.Name)}
        words |= {n.value for n in ast.walk(param.arg.annotation)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        return bool(words) and words <= _NUMBER_TYPES and bool(words & {"int", "float", "bool"})
    return param.default is not None and type(param.default.value) in (int, float)


def _is_init(fn) -> bool:
    return isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "__init__"


def _is_param(fn, name: str) -> bool:
    a = fn.args
    return any(arg.arg == name for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
               if arg is not None)


# the node classes `_local_defs` looks at (every other node: only its children)
_LOCAL_DEF_KINDS = frozenset({
    ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr, ast.Name, ast.Attribute,
    ast.Subscript, ast.Global, ast.Nonlocal, ast.Import, ast.ImportFrom, ast.ExceptHandler})


def _local_defs(fn) -> tuple[dict[str, list[ast.expr] | None], set[str]]:
    """(per local name the values assigned to it, or None when some binding
    is not a plain assignment; the names whose attributes or items are written)."""
    out: dict[str, list[ast.expr] | None] = {}
    mutated: set[str] = set()

    def bad(name: str) -> None:
        out[name] = None

    def add(name: str, value: ast.expr) -> None:
        if out.get(name, []) is not None:
            out.setdefault(name, []).append(value)

    stack: list = list(fn.body)
    while stack:
        node = stack.pop()
        if type(node) not in _LOCAL_DEF_KINDS:
            stack.extend(child_nodes(node))  # nothing below binds or writes by itself
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bad(node.name)
            continue  # its own scope
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            for t in node.targets:
                add(t.id, node.value)
            stack.append(node.value)
            continue
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.value is not None:
                add(node.target.id, node.value)
                stack.append(node.value)
            continue
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            add(node.target.id, ast.BinOp(node.target, node.op, node.value))
            stack.append(node.value)
            continue
        if isinstance(node, ast.NamedExpr):
            add(node.target.id, node.value)
            stack.append(node.value)
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bad(node.id)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            root = node.value
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            if isinstance(root, ast.Name):
                mutated.add(root.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                bad(name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bad((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bad(node.name)
        stack.extend(child_nodes(node))
    return out, mutated
