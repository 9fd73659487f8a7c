"""Model-structure extraction: init bindings and forward paths (paper §3.2).

The unit of work is one parsed module (stdlib `ast`) plus a `Resolver` for
qualified names (see `names.py`).  For each `torch.nn.Module` subclass:

1. **Init bindings.**  Walk `__init__` (and the `self.<helper>()` methods it
   calls, and the `__init__` of in-tree bases reached by `super().__init__`)
   with the guards of the enclosing `if`s; every `self.<attr> = rhs` becomes
   an `InitBinding`: `Ctor(args)` (kind call, qualified type), `TABLE[key]`
   (kind subscript), `a if c else b` (one binding per branch, guarded),
   `nn.ModuleList([...])` / `nn.Sequential(...)` (the container plus one
   binding per element, `container` set), a local variable assigned a layer
   earlier, or anything else (kind other).
2. **Paths.**  Walk `forward` statement by statement, keeping the set of
   path prefixes ("alternatives").  Each statement appends events to every
   alternative that is still running: DL nodes (layer / call / op, nested
   expressions first, each into a fresh `temp_<n>`), `stmt` nodes for the
   rest (reads/writes), and guards.  Compound statements split or not:

   * `if` splits into a guarded body and a negated-guard `orelse` when its
     branches hold a layer or call node; otherwise the whole `if` is one
     `stmt` node.  `assert c` adds the guard `c`.
   * A loop with DL nodes gives the path that skips it (for `while`, guarded
     by `not test`) and the path that runs its body exactly once (as if it
     ran one iteration; `break`/`continue` end that iteration).  A match
     that spans the loop boundary is visible in `StmtRef.blocks`, whose
     compound is the loop; consumers must not fuse across it.
   * `try`: the path through the body (then `else`), and for each handler
     the path that runs only that handler (the exception raised before any
     body effect); `finally` is appended to the paths that fall through.
   * `with`: the body, in line.  `return` / `raise` end a path.
   * `a if c else b` whose branches hold a layer or call splits like an `if`.
3. **Inlining.**  `self.<method>(...)` and calls of functions defined inside
   the function are inlined (bounded depth, never recursively) when the
   callee holds layer or call nodes: a `stmt` node binds the parameters from
   the arguments at the call site, the callee's paths are spliced in (its
   nodes keep their own `StmtRef`, with `inlined_from` set), and its
   `return` statements write the call site's targets.  Names inside the
   callee keep their spelling so the emitter can edit it.  Otherwise, or
   with inlining off, the call is a `call` node of type
   `<owner qualname>.<method>`.
4. **Feasibility.**  Adding a guard to a path checks it against the path's
   guards: the same condition (same text, same versions of what it reads)
   taken both ways drops the path; when the new guard shares a symbol with
   an earlier one, z3 decides (`guards.py`; unknown keeps the path).  At
   most `MAX_PATHS` paths are kept per function (a Problem reports a cap).
5. **Merging.**  Paths with equal node sequences whose guard disjunction z3
   proves equal to their common guards become one path.

Flatten mode (the paper's ADOPTER_p ablation): every compound contributes
all its branches in order, with no guards, giving one path per function;
in `__init__` the textually last assignment of each attribute stands.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache

from . import guards as guardlib
from .compute import forward_compute
from .model import (
    AttrUse,
    ClassFacts,
    Guard,
    InitBinding,
    Node,
    Path,
    Problem,
    StmtRef,
    Value,
)
from .names import BUILTINS, Resolver, Scope, dotted

MAX_PATHS = 256
# Per-function work budgets (issue 11: no input may take more than a few
# seconds).  Generous: no function of the transformers corpus comes near
# them.  Exceeding one is a Problem with its code; the function's paths are
# dropped (`path-budget`, `node-budget`: nothing of it can be matched, never
# a wrong match), or its remaining guards are assumed feasible
# (`solver-budget`: safety re-checks the guards of every match).  The
# file's other functions and classes are still analysed.
MAX_WORK = 250_000  # statement visits x live paths (+ path nodes walked / 64), inlined callees included
MAX_PATH_NODES = 3_000  # nodes on one path (the matcher's work grows with it)
MAX_GUARD_QUERIES = 100_000  # guards sent to z3 (summed over its questions; cached answers are free)
MAX_CONTAINER_ELEMENTS = 1_000  # elements of one nn.Sequential/ModuleList literal
MAX_INLINE_DEPTH = 3
MAX_NESTED_CLASS_DEPTH = 4  # classes nested in class bodies (Outer.Inner...)
MODULE_BASE = "torch.nn.Module"
CONTAINERS = ("torch.nn.ModuleList", "torch.nn.Sequential", "torch.nn.ModuleDict")

_BINOPS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@",
    ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
}
_UNARY = {ast.USub: "-", ast.UAdd: "+", ast.Invert: "~"}
# Sub-expressions whose parts do not run exactly once, in order.
# Tensor methods recorded as `call` nodes (type `torch.Tensor.<name>`, the
# receiver as first input) when called on a local name: the steps of an eager
# attention chain (rulepacks/sdpa.adr).  Other tensor methods stay inside
# `stmt` nodes (reads/writes only).
TENSOR_METHODS = frozenset({"transpose", "masked_fill", "softmax", "matmul", "bmm", "to"})

_OPAQUE = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
           ast.IfExp, ast.BoolOp)


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------

def literal(expr: ast.expr):
    """The Python value of a literal expression (negative numbers, tuples), or raise."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.USub, ast.UAdd)):
        inner = literal(expr.operand)
        if isinstance(inner, (int, float, complex)) and not isinstance(inner, bool):
            return -inner if isinstance(expr.op, ast.USub) else inner
    if isinstance(expr, ast.Tuple):
        return tuple(literal(e) for e in expr.elts)
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "float"
            and len(expr.args) == 1 and not expr.keywords and isinstance(expr.args[0], ast.Constant)
            and isinstance(expr.args[0].value, str)
            and expr.args[0].value.strip().lower() in ("inf", "-inf", "+inf", "infinity", "-infinity")):
        # `float("-inf")`: the usual spelling of an infinite fill value
        return float(expr.args[0].value)
    raise ValueError("not a literal")


def is_literal(expr: ast.expr) -> bool:
    try:
        literal(expr)
        return True
    except ValueError:
        return False


def value_of(expr: ast.expr) -> Value:
    """A `Value` for an expression as written (no DL nodes inside)."""
    if isinstance(expr, ast.Name):
        return Value(expr.id, "name")
    if isinstance(expr, ast.Attribute):
        parts = dotted(expr)
        if parts is not None:
            return Value(".".join(parts), "attr")
    text = ast.unparse(expr)
    try:
        return Value(text, "const", literal(expr))
    except ValueError:
        pass
    return Value(text, "expr")


def _self_attr(expr: ast.expr) -> str | None:
    """`self.x` -> 'x'."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return expr.attr
    return None


def reads_of(expr: ast.AST | None, replaced: dict | None = None) -> set[str]:
    """Local names and `self.<attr>` read by `expr`; sub-expressions in
    `replaced` (id -> temp name) count as a read of their temporary."""
    out: set[str] = set()
    if expr is None:
        return out
    replaced = replaced or {}
    stack = [expr]
    while stack:
        node = stack.pop()
        temp = replaced.get(id(node))
        if temp is not None:
            out.add(temp)
            continue
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                out.add(node.id)
            continue
        attr = _self_attr(node) if isinstance(node, ast.Attribute) else None
        if attr is not None and isinstance(node.ctx, ast.Load):
            out.add("self." + attr)
            out.add("self")
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def writes_of(target: ast.AST) -> set[str]:
    """Names a store to `target` writes (the base name of `x[i] = `, `x.a = `)."""
    out: set[str] = set()
    if isinstance(target, ast.Name):
        out.add(target.id)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            out |= writes_of(elt)
    elif isinstance(target, ast.Starred):
        out |= writes_of(target.value)
    elif isinstance(target, ast.Attribute):
        attr = _self_attr(target)
        if attr is not None:
            out.add("self." + attr)
        else:
            base = target.value
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):
                out.add(base.id)
    elif isinstance(target, ast.Subscript):
        base = target.value
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            if _self_attr(base) is not None:
                out.add("self." + _self_attr(base))
                break
            base = base.value
        if isinstance(base, ast.Name):
            out.add(base.id)
    return out


def _target_reads(target: ast.AST) -> set[str]:
    """Names read while storing to `target` (`x[i] = ..` reads i and x)."""
    if isinstance(target, ast.Name):
        return set()
    if isinstance(target, (ast.Tuple, ast.List)):
        out: set[str] = set()
        for elt in target.elts:
            out |= _target_reads(elt)
        return out
    if isinstance(target, ast.Starred):
        return _target_reads(target.value)
    if isinstance(target, (ast.Attribute, ast.Subscript)):
        out = reads_of(target.value)
        if isinstance(target, ast.Subscript):
            out |= reads_of(target.slice)
        return out
    return set()


_SCANS: dict = {}


def local_names(fn: ast.FunctionDef) -> frozenset[str]:
    """Parameters and every name the function body stores (its locals)."""
    return scan(fn)[0]


def scan(fn: ast.FunctionDef) -> tuple[frozenset[str], tuple]:
    """One walk of a function: (its local names, its `self.<attr>` uses as
    (attr, lines, kind) with kind call/read/store).  Cached per node."""
    cached = _SCANS.get(id(fn))
    if cached is not None and cached[0] is fn:
        return cached[1]
    if len(_SCANS) > 50000:
        _SCANS.clear()
    args = fn.args
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    if args.vararg:
        names.add(args.vararg.arg)
    if args.kwarg:
        names.add(args.kwarg.arg)
    uses = []
    callees = set()
    # (node, collect-locals?) : nested defs/lambdas/classes do not add locals
    stack = [(child, True) for child in fn.body]
    stack += [(d, False) for d in fn.args.defaults + fn.args.kw_defaults if d is not None]
    stack += [(d, False) for d in fn.decorator_list]
    Name, Attribute, Call, Store, Del = ast.Name, ast.Attribute, ast.Call, ast.Store, ast.Del
    while stack:
        node, own = stack.pop()
        cls = type(node)
        if cls is Name:
            if own and type(node.ctx) is not ast.Load:
                names.add(node.id)
            continue
        if cls is Attribute:
            value = node.value
            if type(value) is Name and value.id == "self":
                if id(node) in callees:
                    kind = "call"
                elif type(node.ctx) in (Store, Del):
                    kind = "store"
                else:
                    kind = "read"
                uses.append((node.attr, (node.lineno, node.end_lineno or node.lineno), kind))
                continue
            stack.append((value, own))
            continue
        if cls is Call:
            callees.add(id(node.func))
        elif cls in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
            if own:
                names.add(node.name)
            own = False
        elif cls is ast.Lambda:
            own = False
        elif cls in (ast.Import, ast.ImportFrom):
            continue  # local imports are resolved, not opaque locals
        elif cls is ast.ExceptHandler and node.name and own:
            names.add(node.name)
        elif cls is ast.Constant:
            continue
        for field_name in node._fields:
            value = getattr(node, field_name, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, ast.AST):
                        stack.append((item, own))
            elif isinstance(value, ast.AST):
                stack.append((value, own))
    result = (frozenset(names), tuple(uses))
    _SCANS[id(fn)] = (fn, result)
    return result


def _split(alts: list, text: str, lines: tuple[int, int]) -> tuple[list, list]:
    """Fork each alternative on a condition: (those where it holds, those
    where it does not), each keeping only the feasible forks."""
    yes, no = [], []
    for a in alts:
        b = a.copy()
        if a.add_guard(Guard(text, False, lines)):
            yes.append(a)
        if b.add_guard(Guard(text, True, lines)):
            no.append(b)
    return yes, no


# --------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------

@dataclass(slots=True)
class ClassInfo:
    """A class definition seen by the analysis (in this file or the tree)."""

    name: str
    qualname: str
    node: ast.ClassDef
    scope: Scope
    bases: tuple[str, ...]  # resolved qualnames or spellings
    base_quals: tuple[str | None, ...]
    methods: dict[str, ast.FunctionDef]


@dataclass(slots=True)
class Options:
    inline: bool = True
    flatten: bool = False
    max_paths: int = MAX_PATHS
    # budgets (None: the module's MAX_* value at the time of use)
    max_work: int | None = None
    max_path_nodes: int | None = None
    max_guard_queries: int | None = None
    max_container_elements: int | None = None


class OverBudget(Exception):
    """A function's path enumeration ran out of a budget (`Budget`)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Budget:
    """What one function's path enumeration may spend (see MAX_WORK ...).

    `block` charges one unit per live path per statement and checks the
    longest path; `Alt.add_guard` counts the feasibility questions (past the
    limit a new guard is assumed feasible and `solver_out` is set).
    """

    __slots__ = ("work", "walk", "start_terms", "solver_out", "max_work", "max_nodes", "max_queries")

    def __init__(self, max_work: int = MAX_WORK, max_nodes: int = MAX_PATH_NODES,
                 max_queries: int = MAX_GUARD_QUERIES):
        self.work = 0
        self.walk = 0  # path nodes walked to version guard symbols (`Alt.version`)
        self.start_terms = guardlib.SOLVER_TERMS[0]
        self.solver_out = False
        self.max_work, self.max_nodes, self.max_queries = max_work, max_nodes, max_queries

    @property
    def queries(self) -> int:
        """Guards sent to z3 since this budget started (cached answers are free)."""
        return guardlib.SOLVER_TERMS[0] - self.start_terms

    def charge(self, alts: list) -> None:
        self.work += len(alts) + self.walk // 64
        self.walk %= 64
        if self.work > self.max_work:
            raise OverBudget("path-budget", f"more than {self.max_work} statement visits over its paths")
        for a in alts:
            if a.tail is not None and a.tail[2] > self.max_nodes:
                raise OverBudget("node-budget", f"a path of more than {self.max_nodes} nodes")

    def ask(self, path_length: int, symbols: int) -> bool:
        """Before a feasibility question: charge the symbol versioning's walk
        of the path; False when z3 had its share (the guard is then assumed
        feasible)."""
        self.walk += path_length * symbols
        if self.queries > self.max_queries:
            self.solver_out = True
            return False
        return True


# the budget of the function being enumerated (None: unlimited)
_ACTIVE: list = [None]


# --------------------------------------------------------------------------
# path state
# --------------------------------------------------------------------------

class Alt:
    """A path prefix under construction.

    Nodes are a persistent linked list (`tail` = (node, previous tail,
    length)) so that splitting a path is O(1); `nodes` materialises it.
    """

    __slots__ = ("guards", "keys", "tail", "status", "symbols")

    def __init__(self):
        self.guards: tuple[Guard, ...] = ()
        self.keys: tuple = ()  # per guard: (text, negated, versions)
        self.tail = None
        self.status = "fall"
        self.symbols: frozenset[str] = frozenset()

    def copy(self) -> "Alt":
        new = Alt()
        new.guards, new.keys, new.tail = self.guards, self.keys, self.tail
        new.status, new.symbols = self.status, self.symbols
        return new

    def add_node(self, node: Node) -> None:
        self.tail = (node, self.tail, (self.tail[2] if self.tail else 0) + 1)

    @property
    def nodes(self) -> tuple[Node, ...]:
        out = []
        cur = self.tail
        while cur is not None:
            out.append(cur[0])
            cur = cur[1]
        return tuple(reversed(out))

    def version(self, symbol: str) -> int:
        """Position of the last node that wrote `symbol` or a prefix of it
        (0: never written on this path): the symbol's version."""
        parts = symbol.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        cur = self.tail
        while cur is not None:
            if cur[0].writes and not prefixes.isdisjoint(cur[0].writes):
                return cur[2]
            cur = cur[1]
        return 0

    def add_guard(self, guard: Guard) -> bool:
        """Add a guard; False when the path became infeasible."""
        syms = guardlib.symbols(guard)
        budget = _ACTIVE[0]
        if budget is not None and not budget.ask(self.tail[2] if self.tail else 0, len(syms)):
            self.guards = self.guards + (guard,)
            self.keys = self.keys + ((guard.text, guard.negated, ()),)
            self.symbols = self.symbols | syms
            return True  # z3 had its share: assumed feasible (safety re-checks a match's guards)
        versions = tuple(sorted((s, v) for s in syms if (v := self.version(s))))
        key = (guard.text, guard.negated, versions)
        for old in self.keys:
            if old[0] == key[0] and old[2] == key[2]:
                # the same condition, unchanged since: same way is redundant
                return old[1] == key[1]
        if not syms:  # a constant condition (`while True`): decide it alone
            self.guards = self.guards + (guard,)
            self.keys = self.keys + (key,)
            return guardlib.feasible_key((key,)) is not guardlib.Answer.REFUTED
        shared = bool(syms & self.symbols)
        related = tuple(k for k in self.keys if shared and guardlib.symbols(k[0]) & syms)
        self.guards = self.guards + (guard,)
        self.keys = self.keys + (key,)
        self.symbols = self.symbols | syms
        if shared:
            # only the guards that share a symbol can contradict the new one
            return guardlib.feasible_key(related + (key,)) is not guardlib.Answer.REFUTED
        return True


@dataclass(slots=True)
class Frame:
    """Where extraction is: the function that textually holds the statements."""

    method: str
    owner: str
    fn: ast.FunctionDef
    locals: frozenset[str]
    inlined_from: tuple = ()
    depth: int = 0
    local_funcs: dict = field(default_factory=dict)
    local_imports: dict = field(default_factory=dict)
    loop_layers: dict = field(default_factory=dict)
    # inlined callee: the names its `return` writes
    result: tuple[str, ...] | None = None
    stack: tuple = ()
    scope: Scope | None = None  # the module scope of the code (inherited code: its own module)


class Extractor:
    """Extracts facts from one module (see the module docstring)."""

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
        self._class_cache: dict[str, ClassInfo | None] = {}
        self._is_module_cache: dict[str, bool] = {}
        self._dl_cache: dict = {}
        self.cls: ClassInfo | None = None
        self.init_types: dict[str, list[InitBinding]] = {}
        self.temp = 0
        self.capped = False
        self._installed: Resolver | None = None

    # -- names ---------------------------------------------------------------

    def resolve(self, parts: list[str], frame: Frame | None = None, scope: Scope | None = None) -> str | None:
        if frame is not None and parts[0] in frame.local_imports:
            base = frame.local_imports[parts[0]]
            return self.resolver.follow(".".join([base] + parts[1:]))
        if scope is None and frame is not None:
            scope = frame.scope
        return self.resolver.resolve_parts(scope or self.scope, parts)

    # -- classes -------------------------------------------------------------

    def class_info(self, qual: str) -> ClassInfo | None:
        """The class `qual` when it is defined in this module or the tree."""
        if qual in self._class_cache:
            return self._class_cache[qual]
        self._class_cache[qual] = None
        module, _, name = qual.rpartition(".")
        info = None
        if module == self.module:
            tree, scope = self.tree, self.scope
        else:
            entry = self.resolver.load(module) if module else None
            tree, scope = (entry[1], entry[0]) if entry else (None, None)
        if tree is not None:
            for stmt in _top_level(tree.body):
                if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                    info = self._make_info(stmt, scope)
        else:
            info = self._nested_class_info(qual)
            if info is None and module and not qual.startswith("torch."):
                info = self._installed_class(qual)
        self._class_cache[qual] = info
        return info

    def _installed_class(self, qual: str, _depth: int = 0) -> ClassInfo | None:
        """A base class from an installed package's sources (never torch):
        only to decide whether a class is a Module (names stay as composed)."""
        if _depth > 5:
            return None
        if self._installed is None:
            self._installed = Resolver(None, installed=True)
        module, _, name = qual.rpartition(".")
        entry = self._installed.load(module)
        if entry is None:
            return None
        scope, tree = entry
        for stmt in _top_level(tree.body):
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                return self._make_info(stmt, scope, self._installed)
        target = self._installed.resolve_parts(scope, [name])  # a re-export
        if target and target != qual:
            return self._installed_class(target, _depth + 1)
        return None

    def _nested_class_info(self, qual: str) -> ClassInfo | None:
        """`module.Outer.Inner`: a class nested in a class body (in this
        module or an in-tree one); None when no such class exists."""
        if qual.startswith("torch."):
            return None
        parts = qual.split(".")
        for cut in range(len(parts) - 2, 0, -1):
            module = ".".join(parts[:cut])
            if module == self.module:
                tree, scope = self.tree, self.scope
            else:
                entry = self.resolver.load(module)
                if entry is None:
                    continue
                scope, tree = entry
            body, node, parent = list(_top_level(tree.body)), None, None
            for name in parts[cut:]:
                parent = node
                node = next((st for st in body if isinstance(st, ast.ClassDef) and st.name == name), None)
                if node is None:
                    return None
                body = node.body
            return self._make_info(node, scope, prefix=".".join(parts[cut:-1]) + ".", enclosing=parent)
        return None

    def _make_info(self, node: ast.ClassDef, scope: Scope, resolver: Resolver | None = None,
                   prefix: str = "", enclosing: ast.ClassDef | None = None) -> ClassInfo:
        """`prefix` is `Outer.` for a class nested in the body of `Outer`:
        its name (and qualname) is then `Outer.Inner`."""
        resolver = resolver or self.resolver
        bases, quals = [], []
        for base in node.bases:
            parts = dotted(base)
            qual = resolver.resolve_parts(scope, parts) if parts else None
            if parts and enclosing is not None and any(
                    isinstance(st, ast.ClassDef) and st.name == parts[0] and st.lineno < node.lineno
                    for st in enclosing.body):
                # a sibling class of the enclosing class body (visible to the bases only)
                qual = f"{scope.module}.{prefix}{'.'.join(parts)}"
            quals.append(qual)
            bases.append(qual or ast.unparse(base))
        methods = {s.name: s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
        name = prefix + node.name
        return ClassInfo(name, f"{scope.module}.{name}", node, scope, tuple(bases), tuple(quals), methods)

    def is_module(self, qual: str | None, _depth: int = 0) -> bool:
        """Is `qual` torch.nn.Module or a subclass of it (through the tree)?"""
        if qual is None or _depth > 20:
            return False
        if qual in self._is_module_cache:
            return self._is_module_cache[qual]
        self._is_module_cache[qual] = False
        result = False
        if qual == MODULE_BASE or (qual.startswith("torch.nn.") and qual.rsplit(".", 1)[1][:1].isupper()
                                   and qual not in ("torch.nn.Parameter",)):
            result = True
        else:
            info = self.class_info(qual)
            if info is not None:
                result = any(self.is_module(b, _depth + 1) for b in info.base_quals)
        self._is_module_cache[qual] = result
        return result

    def _hidden_base(self, info: ClassInfo, _depth: int = 0) -> str | None:
        """The first base (transitively) that is neither torch's nor visible."""
        if _depth > 20:
            return None
        for qual, spelling in zip(info.base_quals, info.bases):
            if qual is None:
                return spelling
            if qual.startswith("torch.") or qual in ("object", "builtins.object") or qual.startswith("builtins."):
                continue
            base = self.class_info(qual)
            if base is None:
                return qual
            deeper = self._hidden_base(base, _depth + 1)
            if deeper is not None:
                return deeper
        return None

    def mro(self, info: ClassInfo) -> list[ClassInfo]:
        """The class and its in-tree bases, depth-first (a simple MRO)."""
        out, seen, stack = [], set(), [info]
        while stack:
            cur = stack.pop(0)
            if cur.qualname in seen:
                continue
            seen.add(cur.qualname)
            out.append(cur)
            for qual in cur.base_quals:
                base = self.class_info(qual) if qual else None
                if base is not None:
                    stack.append(base)
        return out

    def find_method(self, name: str) -> tuple[ast.FunctionDef, ClassInfo] | None:
        for info in self.mro(self.cls):
            if name in info.methods:
                return info.methods[name], info
        return None

    # -- facts of a file -----------------------------------------------------

    def run(self) -> tuple[list[ClassFacts], list[tuple[str, tuple[Path, ...]]]]:
        classes, functions = [], []
        for stmt in _top_level(self.tree.body):
            if isinstance(stmt, ast.ClassDef):
                self._class_entry(stmt, "", classes, functions)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._enter(None)
                if self._fn_has_dl(stmt, None, Frame(stmt.name, self.module, stmt, local_names(stmt), scope=self.scope)):
                    functions.append((stmt.name, self.function_paths(stmt, self.module, None)))
        return classes, functions

    def _class_entry(self, stmt: ast.ClassDef, prefix: str, classes: list, functions: list, depth: int = 0,
                     enclosing: ast.ClassDef | None = None) -> None:
        """The facts of one class, then of the classes nested in its body
        (`Outer.Inner`, to a bounded depth)."""
        info = self._make_info(stmt, self.scope, prefix=prefix, enclosing=enclosing)
        self._class_cache.setdefault(info.qualname, info)
        if any(self.is_module(q) for q in info.base_quals):
            try:
                classes.append(self.class_facts(info))
            except RecursionError:
                self.problems.append(Problem("analysis-recursion", f"class {info.name} too deeply nested", stmt.lineno))
        else:
            hidden = self._hidden_base(info)
            if hidden is not None and "forward" in info.methods:
                self.problems.append(Problem(
                    "base-not-visible",
                    f"class {info.name}: base `{hidden}` is outside the analyzed tree, so whether "
                    f"it is a torch.nn.Module is unknown; analyze the tree that defines it "
                    f"(--root) to include this class", stmt.lineno))
            for name, fn in info.methods.items():
                self._enter(None)
                if self._fn_has_dl(fn, None, Frame(name, info.qualname, fn, local_names(fn), scope=self.scope)):
                    functions.append((f"{info.name}.{name}", self.function_paths(fn, info.qualname, None)))
        if depth < MAX_NESTED_CLASS_DEPTH:
            for inner in stmt.body:
                if isinstance(inner, ast.ClassDef):
                    self._class_entry(inner, info.name + ".", classes, functions, depth + 1, stmt)

    def _enter(self, info: ClassInfo | None) -> None:
        """Switch the class context; DL-content answers depend on it."""
        if info is not self.cls:
            self._dl_cache = {}
            self.cls = info
            if info is None:
                self.init_types = {}

    def class_facts(self, info: ClassInfo) -> ClassFacts:
        self._enter(info)
        init = self.init_bindings(info)
        if self.options.flatten:
            # one flat list of statements: no guards, and the textually last
            # assignment of an attribute is the one that stands
            last = {}
            for b in init:
                last[b.attr] = InitBinding(b.attr, b.type, b.args, b.kwargs, b.kind, b.unresolved, (),
                                           b.stmt, b.container)
            init = [b for b in last.values()]
        self.init_types = {}
        for binding in init:
            self.init_types.setdefault(binding.attr, []).append(binding)
        paths: tuple[Path, ...] = ()
        other = []
        found = self.find_method("forward")
        if found is not None:
            fn, owner = found
            paths = self.function_paths(fn, owner.qualname, owner)
        for name, fn in info.methods.items():
            if name in ("forward", "__init__"):
                continue
            # a method with no layer/call node has nothing an init-less rule can match
            if not self._fn_has_dl(fn, info, Frame(name, info.qualname, fn, local_names(fn), scope=info.scope)):
                continue
            other.append((name, self.function_paths(fn, info.qualname, info)))
        uses = self.attr_uses(info)
        node = info.node
        compute = None
        if "forward" in info.methods:
            # the whole data flow of a forward defined by this class (class rules)
            compute = forward_compute(info.methods["forward"],
                                      lambda parts: self.resolve(parts, scope=info.scope))
        return ClassFacts(
            name=info.name,
            qualname=info.qualname,
            lines=(node.lineno, node.end_lineno or node.lineno),
            bases=info.bases,
            init=tuple(init),
            paths=paths,
            methods=tuple(info.methods),
            attr_uses=uses,
            other_paths=tuple(other),
            compute=compute,
        )

    def attr_uses(self, info: ClassInfo) -> tuple[AttrUse, ...]:
        out = []
        for name, fn in info.methods.items():
            for attr, lines, kind in scan(fn)[1]:
                out.append(AttrUse(attr, name, lines, kind))
        out.sort(key=lambda u: (u.lines, u.attr, u.method, u.kind))
        return tuple(out)

    # -- init ----------------------------------------------------------------

    def init_bindings(self, info: ClassInfo) -> list[InitBinding]:
        found = None
        for cur in self.mro(info):
            if "__init__" in cur.methods:
                found = (cur.methods["__init__"], cur)
                break
        if found is None:
            return []
        out: list[InitBinding] = []
        self._init_walk(found[0], found[1], (), out, set(), 0)
        return out

    def _init_walk(self, fn, owner: ClassInfo, guards: tuple, out: list, seen: set, depth: int) -> None:
        key = (owner.qualname, fn.name)
        if key in seen or depth > MAX_INLINE_DEPTH:
            return
        seen = seen | {key}
        frame = Frame(fn.name, owner.qualname, fn, frozenset(local_names(fn)), scope=owner.scope)
        local_layers: dict[str, list[InitBinding]] = {}
        self._init_block(fn.body, ("body",), (), frame, owner, guards, out, seen, depth, local_layers)

    def _init_block(self, stmts, prefix, blocks, frame, owner, guards, out, seen, depth, local_layers) -> None:
        for i, stmt in enumerate(stmts):
            path = prefix + (i,)
            ref = StmtRef(frame.method, frame.owner, path, (stmt.lineno, stmt.end_lineno or stmt.lineno), stmt.col_offset, blocks)
            if isinstance(stmt, ast.If):
                g = Guard(ast.unparse(stmt.test), False, (stmt.lineno, stmt.lineno))
                gn = Guard(g.text, True, g.lines)
                self._init_block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, owner,
                                 guards + (g,), out, seen, depth, local_layers)
                self._init_block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, owner,
                                 guards + (gn,), out, seen, depth, local_layers)
            elif isinstance(stmt, (ast.For, ast.While, ast.With, ast.AsyncFor, ast.AsyncWith)):
                self._init_block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, owner,
                                 guards, out, seen, depth, local_layers)
                if getattr(stmt, "orelse", None):
                    self._init_block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, owner,
                                     guards, out, seen, depth, local_layers)
            elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
                self._init_block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, owner,
                                 guards, out, seen, depth, local_layers)
                for h, handler in enumerate(stmt.handlers):
                    branch = f"handlers[{h}]"
                    self._init_block(handler.body, path + ("handlers", h, "body"), blocks + ((path, branch),),
                                     frame, owner, guards, out, seen, depth, local_layers)
                for fld in ("orelse", "finalbody"):
                    self._init_block(getattr(stmt, fld), path + (fld,), blocks + ((path, fld),), frame, owner,
                                     guards, out, seen, depth, local_layers)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                from .names import import_bindings
                for name, binding in import_bindings(stmt, (frame.scope or self.scope).module, (frame.scope or self.scope).is_package):
                    frame.local_imports[name] = binding.target
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    attr = _self_attr(target)
                    if attr is not None:
                        out.extend(self._bindings_for(attr, stmt.value, frame, guards, ref, local_layers))
                    elif isinstance(target, ast.Name):
                        made = self._bindings_for(target.id, stmt.value, frame, guards, ref, local_layers)
                        local_layers[target.id] = [b for b in made if b.kind != "other"]
                    elif isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple) \
                            and len(target.elts) == len(stmt.value.elts):
                        for t, v in zip(target.elts, stmt.value.elts):
                            a = _self_attr(t)
                            if a is not None:
                                out.extend(self._bindings_for(a, v, frame, guards, ref, local_layers))
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                call = stmt.value
                # self.add_module("name", Layer(...)) / self.register_module
                if _self_attr(call.func) in ("add_module", "register_module") and len(call.args) == 2 \
                        and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                    out.extend(self._bindings_for(call.args[0].value, call.args[1], frame, guards, ref, local_layers))
                    continue
                # self.<helper>(...) and super().__init__(...)
                callee = self._init_callee(call, owner)
                if callee is not None:
                    cfn, cowner = callee
                    self._init_walk(cfn, cowner, guards, out, seen, depth + 1)

    def _init_callee(self, call: ast.Call, owner: ClassInfo):
        func = call.func
        attr = _self_attr(func)
        if attr is not None:
            found = self.find_method(attr)
            return found
        if (isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(func.value, ast.Call)
                and isinstance(func.value.func, ast.Name) and func.value.func.id == "super"):
            for base_qual in owner.base_quals:
                base = self.class_info(base_qual) if base_qual else None
                if base is None:
                    continue
                for cur in self.mro(base):
                    if "__init__" in cur.methods:
                        return cur.methods["__init__"], cur
        return None

    def _bindings_for(self, attr, rhs, frame, guards, ref, local_layers) -> list[InitBinding]:
        if isinstance(rhs, ast.IfExp):
            g = Guard(ast.unparse(rhs.test), False, (rhs.test.lineno, rhs.test.end_lineno or rhs.test.lineno))
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
            qual = self.resolve(parts, frame) if parts and parts[0] not in frame.locals else None
            return [InitBinding(attr, qual, (value_of(rhs.slice),), (), "subscript",
                                None if qual else ast.unparse(rhs.value), guards, ref)]
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
        limit = self.options.max_container_elements or MAX_CONTAINER_ELEMENTS
        if len(elements) > limit:
            self.problems.append(Problem("node-budget", f"node-budget: self.{attr}: a {qual.rsplit('.', 1)[-1]} of "
                                         f"{len(elements)} elements (more than {limit}); its elements are not "
                                         f"analysed", call.lineno))
            return []
        out = []
        for key, elt in elements:
            for b in self._bindings_for(f"{attr}.{key}", elt, frame, guards, ref, local_layers):
                out.append(InitBinding(b.attr, b.type, b.args, b.kwargs, b.kind, b.unresolved, b.guards, b.stmt, attr))
        return out

    def _callee_type(self, func: ast.expr, frame: Frame) -> tuple[str | None, str]:
        """(qualified name, spelling) of what a call calls; None when unknown."""
        spelling = ast.unparse(func)
        parts = dotted(func)
        if parts is None:
            return self._table_entry(func, frame), spelling
        if parts[0] in frame.locals and parts[0] not in frame.local_imports:
            # a parameter or local: a factory only astroid's reaching definitions can see through
            return self._infer(func, parts, frame), spelling
        if parts[0] == "self":
            return self._infer(func, parts, frame), spelling
        if len(parts) == 1 and parts[0] in BUILTINS and parts[0] not in (frame.scope or self.scope).names:
            return f"builtins.{parts[0]}", spelling
        qual = self.resolve(parts, frame)
        if qual is None:
            qual = self._infer(func, parts, frame)
        return qual, spelling

    def _table_quals(self, frame: Frame, name: str) -> set[str]:
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

    def _infer(self, func: ast.expr, parts: list[str], frame: Frame) -> str | None:
        """The astroid fallback (infer.py) for a callee the table left
        unresolved.  Cheap syntactic checks first: astroid parses the module
        only when some reaching definition could evaluate to a name."""
        if self.source is None or (frame.scope is not None and frame.scope is not self.scope):
            return None  # code inherited from another module: its own file would be needed
        head = parts[0]
        classes = None
        if head == "self":
            if len(parts) != 2 or self.cls is None or not _class_binds_name(self.mro(self.cls), parts[1]):
                return None
            classes = [(c.qualname, c.node, c.scope is self.scope, c.base_quals) for c in self.mro(self.cls)]
        elif head in frame.locals:
            if head in frame.local_imports or not _local_may_name(frame.fn, head):
                return None
            quals = self._table_quals(frame, head)
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

    def _table_entry(self, func: ast.expr, frame: Frame) -> str | None:
        """`TABLE["key"]` where TABLE is a module-level dict literal of this
        module whose "key" entry is a dotted name: that name, resolved
        (MobileBERT's `NORM2FN["layer_norm"]`).  Only when the binding is unique."""
        if not (isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name)
                and isinstance(func.slice, ast.Constant)):
            return None
        scope = frame.scope or self.scope
        name = func.value.id
        table = scope.dicts.get(name)
        if table is None or len(scope.names.get(name, ())) != 1 or name in frame.locals:
            return None
        for key, value in zip(table.keys, table.values):
            if isinstance(key, ast.Constant) and key.value == func.slice.value:
                parts = dotted(value)
                return self.resolve(parts, frame) if parts else None
        return None

    # -- paths ---------------------------------------------------------------

    def function_paths(self, fn: ast.FunctionDef, owner: str, info: ClassInfo | None) -> tuple[Path, ...]:
        self._enter(info)
        self.temp = 0
        self.capped = False
        frame = Frame(fn.name, owner, fn, frozenset(local_names(fn)), stack=((owner, fn.name),),
                      scope=info.scope if info is not None else self.scope)
        outer, budget = _ACTIVE[0], self._new_budget()
        _ACTIVE[0] = budget
        try:
            alts = self._cap(self.block(fn.body, ("body",), (), frame, [Alt()]))
        except OverBudget as exc:
            self.problems.append(Problem(exc.code, f"{exc.code}: {owner}.{fn.name}: {exc.message}; its paths are not "
                                         f"analysed (no rule is matched in it)", fn.lineno))
            return ()
        finally:
            _ACTIVE[0] = outer
        if budget.solver_out:
            self.problems.append(Problem("solver-budget", f"solver-budget: {owner}.{fn.name}: z3 questions over more than "
                                         f"{budget.max_queries} guards in all; later guards are assumed feasible (the guards of "
                                         f"every match are still checked)", fn.lineno))
        if self.capped:
            self.problems.append(Problem("path-cap", f"{owner}.{fn.name}: more than {self.options.max_paths} paths; "
                                         f"kept the first {self.options.max_paths}", fn.lineno))
        return merge_paths([Path(a.guards, a.nodes) for a in alts])

    def _join(self, *lists: list[Alt]) -> list[Alt]:
        """Concatenate the alternatives of a split; past the cap, interleave
        them so that every branch keeps representatives (the truncation in
        `_cap` then drops paths evenly instead of whole branches)."""
        total = sum(len(x) for x in lists)
        if total <= self.options.max_paths:
            return [a for x in lists for a in x]
        out = []
        for i in range(max(len(x) for x in lists)):
            for x in lists:
                if i < len(x):
                    out.append(x[i])
        return out

    def _cap(self, alts: list[Alt]) -> list[Alt]:
        if len(alts) > self.options.max_paths:
            self.capped = True
            return alts[: self.options.max_paths]
        return alts

    def ref(self, frame: Frame, stmt: ast.stmt, path: tuple, blocks: tuple) -> StmtRef:
        return StmtRef(frame.method, frame.owner, path, (stmt.lineno, stmt.end_lineno or stmt.lineno),
                       stmt.col_offset, blocks)

    def stmt_node(self, ref: StmtRef, frame: Frame, reads, writes) -> Node:
        return Node("stmt", ref, reads=frozenset(reads), writes=frozenset(writes), inlined_from=frame.inlined_from)

    def _new_budget(self) -> Budget:
        o = self.options
        return Budget(o.max_work or MAX_WORK, o.max_path_nodes or MAX_PATH_NODES,
                      o.max_guard_queries or MAX_GUARD_QUERIES)

    def block(self, stmts, prefix, blocks, frame: Frame, alts: list[Alt]) -> list[Alt]:
        budget = _ACTIVE[0]
        for i, stmt in enumerate(stmts):
            if not any(a.status == "fall" for a in alts):
                break
            path = prefix + (i,)
            live = [a for a in alts if a.status == "fall"]
            done = [a for a in alts if a.status != "fall"]
            if budget is not None:
                budget.charge(live)
            alts = done + self._cap(self.statement(stmt, path, blocks, frame, live))
        return alts

    def statement(self, stmt, path, blocks, frame: Frame, alts: list[Alt]) -> list[Alt]:
        ref = self.ref(frame, stmt, path, blocks)
        flatten = self.options.flatten
        if isinstance(stmt, ast.If):
            if not self.has_dl(stmt, frame):
                return self.opaque(stmt, ref, frame, alts)
            alts = self.run_actions(self.evaluate(stmt.test, frame, ref), frame, alts)
            test_reads = reads_of(stmt.test, self._replaced)
            for a in alts:
                a.add_node(self.stmt_node(ref, frame, test_reads, ()))
            sub_body = blocks + ((path, "body"),)
            sub_else = blocks + ((path, "orelse"),)
            if flatten:
                alts = self.block(stmt.body, path + ("body",), sub_body, frame, alts)
                return self.block(stmt.orelse, path + ("orelse",), sub_else, frame, alts)
            text = ast.unparse(stmt.test)
            lines = (stmt.lineno, stmt.test.end_lineno or stmt.lineno)
            yes, no = _split(alts, text, lines)
            yes = self.block(stmt.body, path + ("body",), sub_body, frame, yes)
            no = self.block(stmt.orelse, path + ("orelse",), sub_else, frame, no)
            return self._join(yes, no)
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            is_while = isinstance(stmt, ast.While)
            loop_frame = frame
            if not is_while and isinstance(stmt.target, ast.Name):
                attr = _self_attr(stmt.iter)
                if attr is not None and attr in self.init_types:
                    # `for layer in self.layers: layer(x)`: calls of a container's element
                    loop_frame = _with_loop_layer(frame, stmt.target.id, attr)
            if not self.has_dl(stmt, loop_frame):
                return self.opaque(stmt, ref, frame, alts)
            head = stmt.test if is_while else stmt.iter
            alts = self.run_actions(self.evaluate(head, frame, ref), frame, alts)
            head_reads = reads_of(head, self._replaced)
            head_writes = set() if is_while else writes_of(stmt.target)
            if not is_while:
                head_reads |= _target_reads(stmt.target)
            sub_body = blocks + ((path, "body"),)
            sub_else = blocks + ((path, "orelse"),)
            text = ast.unparse(stmt.test) if is_while else None
            lines = (stmt.lineno, stmt.lineno)
            if is_while and not flatten:
                run, skip = _split(alts, text, lines)
            else:
                run, skip = alts, [a.copy() for a in alts]
            for a in run:
                a.add_node(self.stmt_node(ref, frame, head_reads, head_writes))
            run = self.block(stmt.body, path + ("body",), sub_body, loop_frame, run)
            broke = []
            for a in run:
                if a.status == "continue":
                    a.status = "fall"
                elif a.status == "break":
                    a.status = "fall"
                    broke.append(a)
            if flatten:
                run = self.block(stmt.orelse, path + ("orelse",), sub_else, frame, run)
                return run
            after = [a for a in run if a not in broke] + skip
            after = self.block(stmt.orelse, path + ("orelse",), sub_else, frame, after)
            return self._join(after, broke)
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            actions = []
            reads, writes = set(), set()
            for item in stmt.items:
                actions += self.evaluate(item.context_expr, frame, ref)
                reads |= reads_of(item.context_expr, self._replaced)
                if item.optional_vars is not None:
                    writes |= writes_of(item.optional_vars)
            alts = self.run_actions(actions, frame, alts)
            for a in alts:
                a.add_node(self.stmt_node(ref, frame, reads, writes))
            return self.block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, alts)
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            if not self.has_dl(stmt, frame):
                return self.opaque(stmt, ref, frame, alts)
            if flatten:
                alts = self.block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, alts)
                for h, handler in enumerate(stmt.handlers):
                    alts = self.block(handler.body, path + ("handlers", h, "body"),
                                      blocks + ((path, f"handlers[{h}]"),), frame, alts)
                alts = self.block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, alts)
                return self.block(stmt.finalbody, path + ("finalbody",), blocks + ((path, "finalbody"),), frame, alts)
            starts = [a.copy() for a in alts]
            body = self.block(stmt.body, path + ("body",), blocks + ((path, "body"),), frame, alts)
            body_fall = [a for a in body if a.status == "fall"]
            body_done = [a for a in body if a.status != "fall"]
            body_fall = self.block(stmt.orelse, path + ("orelse",), blocks + ((path, "orelse"),), frame, body_fall)
            result = body_done + body_fall
            for h, handler in enumerate(stmt.handlers):
                hal = [a.copy() for a in starts]
                reads = reads_of(handler.type) if handler.type is not None else set()
                for a in hal:
                    a.add_node(self.stmt_node(ref, frame, reads, {handler.name} if handler.name else ()))
                result += self.block(handler.body, path + ("handlers", h, "body"),
                                     blocks + ((path, f"handlers[{h}]"),), frame, hal)
            result = self._cap(result)
            fall = [a for a in result if a.status == "fall"]
            rest = [a for a in result if a.status != "fall"]
            fall = self.block(stmt.finalbody, path + ("finalbody",), blocks + ((path, "finalbody"),), frame, fall)
            return rest + fall
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            frame.local_funcs[stmt.name] = stmt
            return self.opaque(stmt, ref, frame, alts, reads=set(), writes={stmt.name})
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            from .names import import_bindings
            names = set()
            for name, binding in import_bindings(stmt, (frame.scope or self.scope).module, (frame.scope or self.scope).is_package):
                frame.local_imports[name] = binding.target
                names.add(name)
            return self.opaque(stmt, ref, frame, alts, reads=set(), writes=names)
        if isinstance(stmt, ast.Assert):
            alts = self.run_actions(self.evaluate(stmt.test, frame, ref), frame, alts)
            reads = reads_of(stmt.test, self._replaced) | reads_of(stmt.msg)
            out = []
            for a in alts:
                a.add_node(self.stmt_node(ref, frame, reads, ()))
                if flatten or a.add_guard(Guard(ast.unparse(stmt.test), False, (stmt.lineno, stmt.end_lineno or stmt.lineno))):
                    out.append(a)
            return out
        if isinstance(stmt, ast.Return):
            actions = self.evaluate(stmt.value, frame, ref) if stmt.value is not None else []
            alts = self.run_actions(actions, frame, alts)
            reads = reads_of(stmt.value, self._replaced)
            writes = frame.result or ()
            node = self.stmt_node(ref, frame, reads, writes)
            value = self._last_value if stmt.value is not None else None
            if len(writes) == 1 and value is not None and value.kind == "name":
                # `return h` of an inlined helper: the call site's result is h
                node = Node("stmt", ref, reads=node.reads, writes=node.writes, inlined_from=frame.inlined_from,
                            copies=((writes[0], value.text),))
            for a in alts:
                a.add_node(node)
                if not flatten:
                    a.status = "return"
            return alts
        if isinstance(stmt, ast.Raise):
            alts = self.opaque(stmt, ref, frame, alts)
            if not flatten:
                for a in alts:
                    a.status = "raise"
            return alts
        if isinstance(stmt, (ast.Break, ast.Continue)):
            if not flatten:
                for a in alts:
                    a.status = "break" if isinstance(stmt, ast.Break) else "continue"
            return alts
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            return alts  # `pass`, docstrings, `...`: nothing read or written
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr)):
            return self.simple(stmt, ref, frame, alts)
        # global, nonlocal, del, match, class definitions: opaque
        return self.opaque(stmt, ref, frame, alts)

    def opaque(self, stmt, ref, frame, alts, reads=None, writes=None) -> list[Alt]:
        """The whole statement as one `stmt` node (no DL nodes inside)."""
        if reads is None or writes is None:
            r, w = set(), set()
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name):
                    (r if isinstance(node.ctx, ast.Load) else w).add(node.id)
                elif isinstance(node, ast.Attribute) and _self_attr(node) is not None:
                    (r if isinstance(node.ctx, ast.Load) else w).add("self." + node.attr)
                elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                    w |= writes_of(node)
            reads = r if reads is None else reads
            writes = w if writes is None else writes
        node = self.stmt_node(ref, frame, reads, writes)
        for a in alts:
            a.add_node(node)
        return alts

    def simple(self, stmt, ref, frame, alts) -> list[Alt]:
        """Assignments and expression statements."""
        if isinstance(stmt, ast.Expr):
            targets, value = [], stmt.value
        elif isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            targets, value = [stmt.target], stmt.value
        else:  # AugAssign: `x += y` is the op `x + y -> x`
            targets, value = [stmt.target], None
        if value is None and not isinstance(stmt, ast.AugAssign):
            return self.opaque(stmt, ref, frame, alts)
        # outputs of the top DL expression, when the targets are plain names
        outputs = None
        if len(targets) == 1 and _plain_target(targets[0]):
            outputs = tuple(sorted(writes_of(targets[0]), key=_name_order(targets[0])))
        if isinstance(stmt, ast.Expr):
            outputs = ()
        if isinstance(stmt, ast.AugAssign):
            op = _BINOPS.get(type(stmt.op))
            actions = self.evaluate(stmt.value, frame, ref)
            target_value = value_of(stmt.target)
            in_value = self._last_value
            out_names = outputs if outputs else (self.new_temp(),)
            if op is not None:
                node = Node("op", ref, op=op, inputs=(target_value, in_value), outputs=out_names,
                            reads=frozenset(reads_of(stmt.target) | reads_of(stmt.value, self._replaced)),
                            writes=frozenset(out_names), inlined_from=frame.inlined_from,
                            expr_span=_span(stmt))
                actions.append(("node", node))
            alts = self.run_actions(actions, frame, alts)
            if not outputs:
                node = self.stmt_node(ref, frame, {out_names[0]} | _target_reads(stmt.target), writes_of(stmt.target))
                for a in alts:
                    a.add_node(node)
            return alts
        actions = self.evaluate(value, frame, ref, outputs=outputs)
        alts = self.run_actions(actions, frame, alts)
        if self._top_consumed and (isinstance(stmt, ast.Expr) or outputs):
            return alts  # the DL node is the whole statement
        reads = reads_of(value, self._replaced)
        writes: set[str] = set()
        for t in targets:
            writes |= writes_of(t)
            reads |= _target_reads(t)
        node = self.stmt_node(ref, frame, reads, writes)
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and _shape_call(value):
            node = Node("stmt", ref, reads=node.reads, writes=node.writes, inlined_from=frame.inlined_from,
                        defs=((targets[0].id, _unparse_with_temps(value, self._replaced)),))
        for a in alts:
            a.add_node(node)
        return alts

    def new_temp(self) -> str:
        self.temp += 1
        return f"temp_{self.temp}"

    # -- expressions -----------------------------------------------------------

    def evaluate(self, expr, frame: Frame, ref: StmtRef, outputs=None) -> list:
        """Actions for the DL nodes of `expr`, in evaluation order.

        An action is ("node", Node), ("inline", fn, owner, args, kwargs,
        result names, call, key, ref) for a helper to splice in, or ("fork",
        condition, lines, actions if true, actions if false) for `a if c else b`.
        Sets `self._replaced` (id of sub-expression -> temp) for reads, and
        `self._top_consumed` when `expr` itself became a DL node writing
        `outputs`.  `self._last_value` is the Value of `expr`.
        """
        self._replaced = {}
        self._top_consumed = False
        actions: list = []
        self._last_value = self._expr(expr, frame, ref, actions, outputs, top=True)
        return actions

    def _expr(self, e, frame, ref, actions, outputs=None, top=False, need=True) -> Value | None:
        if isinstance(e, ast.Call):
            return self._call(e, frame, ref, actions, outputs, top, need)
        if isinstance(e, ast.BinOp) and type(e.op) in _BINOPS:
            if is_literal(e.left) and is_literal(e.right):
                return value_of(e) if need else None
            left = self._expr(e.left, frame, ref, actions)
            right = self._expr(e.right, frame, ref, actions)
            return self._emit(e, Node("op", ref, op=_BINOPS[type(e.op)], inputs=(left, right)),
                              frame, actions, outputs, top)
        if isinstance(e, ast.UnaryOp) and type(e.op) in _UNARY and not is_literal(e):
            operand = self._expr(e.operand, frame, ref, actions)
            return self._emit(e, Node("op", ref, op=_UNARY[type(e.op)], inputs=(operand,)),
                              frame, actions, outputs, top)
        if isinstance(e, ast.IfExp) and self._expr_has_dl(e.body, frame) | self._expr_has_dl(e.orelse, frame):
            return self._ifexp(e, frame, ref, actions, outputs, top)
        if isinstance(e, _OPAQUE) or isinstance(e, (ast.Name, ast.Constant)):
            return value_of(e) if need else None
        # descend for nested DL nodes (attributes, subscripts, tuples, ...)
        if not (isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name)):
            for child in ast.iter_child_nodes(e):
                if isinstance(child, ast.expr):
                    self._expr(child, frame, ref, actions, need=False)
        return value_of(e) if need else None

    def _expr_has_dl(self, e: ast.expr, frame: Frame) -> bool:
        for node in _walk_no_opaque(e):
            if isinstance(node, ast.Call) and self.classify(node, frame) is not None:
                return True
        return False

    def _ifexp(self, e: ast.IfExp, frame, ref, actions, outputs, top) -> Value:
        """`a if c else b` with DL calls in a branch: a split like an `if`
        (a "fork" action); both branches write one result name."""
        self._expr(e.test, frame, ref, actions, need=False)
        if top and outputs:
            outs = outputs
            self._top_consumed = True
        else:
            outs = (self.new_temp(),)
            if top and outputs == ():
                self._top_consumed = True
        branches = []
        for branch in (e.body, e.orelse):
            sub: list = []
            saved = self._top_consumed
            self._top_consumed = False
            self._expr(branch, frame, ref, sub, outputs=outs, top=True)
            if not self._top_consumed:
                # a plain value: the result name is assigned from it
                sub.append(("node", Node("stmt", ref, reads=frozenset(reads_of(branch, self._replaced)),
                                         writes=frozenset(outs), inlined_from=frame.inlined_from)))
            self._top_consumed = saved
            branches.append(sub)
        lines = (e.test.lineno, e.test.end_lineno or e.test.lineno)
        actions.append(("fork", ast.unparse(e.test), lines, branches[0], branches[1]))
        if len(outs) == 1:
            self._replaced[id(e)] = outs[0]
            return Value(outs[0], "name")
        return Value(", ".join(outs), "expr")

    def _emit(self, e, node: Node, frame, actions, outputs, top) -> Value:
        """Finish a DL node: outputs, reads/writes, span; record it."""
        if top and outputs:
            outs = outputs
            self._top_consumed = True
        else:
            outs = (self.new_temp(),)
            if top and outputs == ():
                self._top_consumed = True  # an expression statement
        # reads from the argument expressions, nested DL nodes read as their temporaries
        if isinstance(e, ast.Call):
            parts = list(e.args) + [k.value for k in e.keywords]
            if node.kind == "call" and (node.type or "").startswith("torch.Tensor.") and isinstance(e.func, ast.Attribute):
                parts.append(e.func.value)  # the receiver of a tensor method
        elif isinstance(e, ast.BinOp):
            parts = [e.left, e.right]
        else:
            parts = [e.operand]
        reads = set()
        for part in parts:
            reads |= reads_of(part, self._replaced)
        if node.attr is not None:
            reads |= {"self", "self." + node.attr.split(".")[0]}
        node = Node(node.kind, node.stmt, node.type, node.unresolved, node.op, node.attr, node.inputs,
                    node.kwargs, outs, frozenset(reads), frozenset(outs), frame.inlined_from, _span(e))
        actions.append(("node", node))
        self._replaced[id(e)] = outs[0] if len(outs) == 1 else None
        if len(outs) != 1:
            self._replaced.pop(id(e))
            return Value(", ".join(outs), "expr")
        return Value(outs[0], "name")

    def _args(self, call: ast.Call, frame, ref, actions):
        args = []
        for a in call.args:
            if isinstance(a, ast.Starred):
                self._expr(a.value, frame, ref, actions)
                args.append(Value(ast.unparse(a), "expr"))
            else:
                args.append(self._expr(a, frame, ref, actions))
        kwargs = []
        for k in call.keywords:
            v = self._expr(k.value, frame, ref, actions)
            kwargs.append((k.arg or "**", v))
        return tuple(args), tuple(kwargs)

    def classify(self, call: ast.Call, frame: Frame):
        """What a call is: ("layer", attr, bindings) | ("method", name) |
        ("local", fn) | ("call", qual, spelling) | ("loop", attr) | None (no node)."""
        func = call.func
        attr = _self_attr(func)
        if attr is not None and self.cls is not None:
            if attr in self.init_types:
                return ("layer", attr)
            if self.find_method(attr) is not None:
                return ("method", attr)
            if attr not in self._stored_attrs():
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
            if name in BUILTINS and name not in (frame.scope or self.scope).names and name not in frame.local_imports:
                return None
            if name == "self":
                return None
        parts = dotted(func)
        if parts is None:
            return None
        head = parts[0]
        if head == "self" or (head in frame.locals and head not in frame.local_imports):
            return None  # a method of a local value (tensor methods)
        scope = frame.scope or self.scope
        if head in BUILTINS and head not in scope.names and head not in frame.local_imports:
            return None
        if head not in frame.local_imports:
            kinds = {b.kind for b in scope.names.get(head, ())}
            if kinds and kinds <= {"value"} and len(parts) > 1:
                return None  # a method of a module-level object (logger.warning)
        qual = self.resolve(parts, frame)
        return ("call", qual, func)  # the spelling is unparsed only when needed

    def _call(self, e: ast.Call, frame, ref, actions, outputs, top, need=True) -> Value | None:
        kind = self.classify(e, frame)
        if kind is None and self._is_tensor_method(e, frame):
            return self._tensor_method(e, frame, ref, actions, outputs, top)
        if kind is None:
            # not a node: evaluate the receiver and the arguments in order
            if isinstance(e.func, ast.Attribute):
                self._expr(e.func.value, frame, ref, actions, need=False)
            elif not isinstance(e.func, ast.Name):
                self._expr(e.func, frame, ref, actions, need=False)
            self._args(e, frame, ref, actions)
            return value_of(e) if need else None
        if kind[0] in ("method", "local"):
            found = self.find_method(kind[1]) if kind[0] == "method" else (frame.local_funcs[kind[1]], None)
            fn, owner = found
            owner_qual = owner.qualname if owner is not None else frame.owner
            key = (owner_qual, fn.name, id(fn))
            # methods of bases in other files are not inlined: generic library
            # helpers (get_extended_attention_mask) that the emitter cannot edit here
            local_owner = owner is None or owner.scope is self.scope
            can_inline = (self.options.inline and frame.depth < MAX_INLINE_DEPTH and local_owner
                          and key not in frame.stack and self._fn_has_dl(fn, owner, frame))
            args, kwargs = self._args(e, frame, ref, actions)
            if can_inline:
                if top and outputs:
                    outs = outputs
                    self._top_consumed = True
                else:
                    outs = (self.new_temp(),)
                    if top and outputs == ():
                        self._top_consumed = True
                actions.append(("inline", fn, owner_qual, args, kwargs, outs, e, key, ref))
                if len(outs) == 1:
                    self._replaced[id(e)] = outs[0]
                    return Value(outs[0], "name")
                return Value(", ".join(outs), "expr")
            qual = f"{owner_qual}.{fn.name}" if kind[0] == "method" else f"{frame.owner}.{frame.method}.{fn.name}"
            node = Node("call", ref, type=qual, inputs=args, kwargs=kwargs)
            return self._emit(e, node, frame, actions, outputs, top)
        if kind[0] == "layer":
            attr = kind[1]
            args, kwargs = self._args(e, frame, ref, actions)
            typ, unresolved = self._attr_type(attr)
            node = Node("layer", ref, type=typ, unresolved=unresolved, attr=attr, inputs=args, kwargs=kwargs)
            return self._emit(e, node, frame, actions, outputs, top)
        if kind[0] == "loop":
            attr = kind[1]
            args, kwargs = self._args(e, frame, ref, actions)
            types = {b.type for bs in self.init_types.values() for b in bs if b.container == attr}
            typ = types.pop() if len(types) == 1 else None
            node = Node("layer", ref, type=typ, unresolved=None if typ else f"self.{attr}[*]", attr=attr,
                        inputs=args, kwargs=kwargs)
            return self._emit(e, node, frame, actions, outputs, top)
        _, qual, func = kind
        if qual is None and (parts := dotted(func)) is not None:
            qual = self._infer(func, parts, frame)
        spelling = None if qual else ast.unparse(func)
        args, kwargs = self._args(e, frame, ref, actions)
        node = Node("call", ref, type=qual, unresolved=None if qual else spelling, inputs=args, kwargs=kwargs)
        return self._emit(e, node, frame, actions, outputs, top)

    def _is_tensor_method(self, e: ast.Call, frame: Frame) -> bool:
        """`x.transpose(-2, -1)`, `scores.masked_fill(m, v)`, `p.softmax(dim=-1)`:
        a method of `TENSOR_METHODS` called on a local name (a parameter or a
        local variable, never `self`, a module or a global)."""
        func = e.func
        if not (isinstance(func, ast.Attribute) and func.attr in TENSOR_METHODS
                and not any(isinstance(a, ast.Starred) for a in e.args)
                and all(k.arg is not None for k in e.keywords)):
            return False
        recv = func.value
        if isinstance(recv, ast.Name):
            # `.to` only on a DL call's result (`F.softmax(..., dtype=torch.float32).to(q.dtype)`):
            # `x = x.to(torch.float32)` on a name stays a plain statement
            return (func.attr != "to" and recv.id != "self" and recv.id in frame.locals and recv.id not in frame.local_imports
                    and recv.id not in frame.local_funcs and recv.id not in frame.loop_layers)
        # the result of a DL call (`F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)`)
        return isinstance(recv, ast.Call) and (self.classify(recv, frame) is not None
                                                or self._is_tensor_method(recv, frame))

    def _tensor_method(self, e: ast.Call, frame, ref, actions, outputs, top) -> Value:
        """A tensor method call as a `call` node of type `torch.Tensor.<m>` whose
        first input is the receiver (the function form's `self`), so that
        `torch.Tensor.transpose($k, -2, -1) -> $kt` matches `k.transpose(-2, -1)`."""
        receiver = self._expr(e.func.value, frame, ref, actions)
        args, kwargs = self._args(e, frame, ref, actions)
        node = Node("call", ref, type="torch.Tensor." + e.func.attr, inputs=(receiver,) + args, kwargs=kwargs)
        return self._emit(e, node, frame, actions, outputs, top)

    def _stored_attrs(self) -> frozenset[str]:
        """Attributes stored by any method of the class or its in-tree bases."""
        key = ("stored", self.cls.qualname)
        if key not in self._dl_cache:
            self._dl_cache[key] = frozenset(
                attr for info in self.mro(self.cls) for fn in info.methods.values()
                for attr, _, kind in scan(fn)[1] if kind == "store")
        return self._dl_cache[key]

    def _attr_type(self, attr: str) -> tuple[str | None, str | None]:
        bindings = [b for b in self.init_types.get(attr, ()) if b.kind != "other"]
        types = {b.type for b in bindings}
        if len(types) == 1 and None not in types:
            return types.pop(), None
        return None, f"self.{attr}"

    # -- DL content ------------------------------------------------------------

    def has_dl(self, stmt: ast.AST, frame: Frame) -> bool:
        """Does a compound statement hold a layer or call node (or a helper with one)?"""
        key = id(stmt)
        if key in self._dl_cache:
            return self._dl_cache[key]
        self._dl_cache[key] = False
        # any node counts: a helper is either inlined (its nodes) or a call node
        result = any(isinstance(node, ast.Call) and self.classify(node, frame) is not None
                     for node in _walk_no_opaque(stmt))
        self._dl_cache[key] = result
        return result

    def _fn_has_dl(self, fn, owner, frame: Frame) -> bool:
        key = ("fn", id(fn))
        if key in self._dl_cache:
            return self._dl_cache[key]
        self._dl_cache[key] = False
        inner = Frame(fn.name, owner.qualname if owner else frame.owner, fn, frozenset(local_names(fn)),
                      local_funcs=dict(frame.local_funcs) if owner is None else {},
                      scope=owner.scope if owner else frame.scope)
        result = False
        for node in _walk_no_opaque(fn):
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
                    found = self.find_method(kind[1])
                    if found and self._fn_has_dl(found[0], found[1], inner):
                        result = True
                        break
                if kind[0] == "local" and self._fn_has_dl(inner.local_funcs[kind[1]], None, inner):
                    result = True
                    break
        self._dl_cache[key] = result
        return result

    # -- actions ---------------------------------------------------------------

    def run_actions(self, actions: list, frame: Frame, alts: list[Alt]) -> list[Alt]:
        for action in actions:
            if action[0] == "node":
                for a in alts:
                    if a.status == "fall":
                        a.add_node(action[1])
                continue
            if action[0] == "fork":
                _, text, lines, body, orelse = action
                live = [a for a in alts if a.status == "fall"]
                done = [a for a in alts if a.status != "fall"]
                if self.options.flatten:
                    alts = done + self.run_actions(orelse, frame, self.run_actions(body, frame, live))
                    continue
                yes, no = _split(live, text, lines)
                alts = done + self._cap(self._join(self.run_actions(body, frame, yes),
                                                   self.run_actions(orelse, frame, no)))
                continue
            _, fn, owner_qual, args, kwargs, outs, call, key, call_ref = action
            live = [a for a in alts if a.status == "fall"]
            done = [a for a in alts if a.status != "fall"]
            owner_info = self._class_cache.get(owner_qual)
            owner_scope = owner_info.scope if owner_info is not None else frame.scope
            site = (call.lineno, call.end_lineno or call.lineno)
            inner = Frame(
                fn.name, owner_qual, fn, frozenset(local_names(fn)),
                inlined_from=frame.inlined_from + ((frame.method, site),),
                depth=frame.depth + 1,
                local_funcs=dict(frame.local_funcs) if fn.name in frame.local_funcs else {},
                result=outs,
                stack=frame.stack + (key,),
                scope=owner_scope,
            )
            # parameters bound from the call's arguments (a stmt at the call site)
            params = [p.arg for p in fn.args.posonlyargs + fn.args.args]
            if params and params[0] == "self" and owner_qual and not fn.name in frame.local_funcs:
                params = params[1:]
            bound = set(params[: len(args)]) | {k for k, _ in kwargs if k != "**"}
            copies = _param_copies(fn, params, args, kwargs)
            reads = set()
            for v in args:
                reads |= _value_reads(v)
            for _, v in kwargs:
                reads |= _value_reads(v)
            entry = Node("stmt", call_ref, reads=frozenset(reads), writes=frozenset(bound),
                         inlined_from=frame.inlined_from, copies=copies)
            for a in live:
                a.add_node(entry)
            saved = (self._replaced, self._top_consumed, self._last_value)
            result = self.block(fn.body, ("body",), (), inner, live)
            self._replaced, self._top_consumed, self._last_value = saved
            for a in result:
                if a.status == "return":
                    a.status = "fall"
                elif a.status == "fall":
                    # fell off the end: returns None into the targets
                    a.add_node(Node("stmt", entry.stmt, writes=frozenset(outs), inlined_from=frame.inlined_from))
            alts = done + self._cap(result)
        return alts

    _replaced: dict = {}
    _top_consumed = False
    _last_value: Value | None = None


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


# Tensor methods whose result's rank follows from the call (see Node.defs).
SHAPE_METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "contiguous", "float", "half", "bfloat16", "double",
    "to", "type_as", "clone", "detach",
})


def _shape_call(value: ast.expr) -> bool:
    """Is `value` a chain of tensor methods that Node.defs records?"""
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in SHAPE_METHODS


def _unparse_with_temps(expr: ast.expr, replaced: dict) -> str:
    """`ast.unparse(expr)` with the sub-expressions that became DL nodes
    written as their temporaries."""
    if not replaced:
        return ast.unparse(expr)

    def copy(node):
        temp = replaced.get(id(node))
        if temp is not None:
            return ast.Name(temp, ast.Load())
        if not isinstance(node, ast.AST):
            return node
        fields = {}
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                fields[name] = [copy(v) for v in value]
            else:
                fields[name] = copy(value)
        return type(node)(**fields)

    return ast.unparse(copy(expr))


def _param_copies(fn: ast.FunctionDef, params: list[str], args: tuple, kwargs: tuple) -> tuple:
    """(parameter, argument name) for each parameter of an inlined `fn` that
    a call binds to a plain name (positional up to a `*args`, then by keyword)."""
    out = []
    for name, value in zip(params, args):
        if value.kind == "expr" and value.text.startswith("*"):
            break
        if value.kind == "name":
            out.append((name, value.text))
    accepted = set(params) | {a.arg for a in fn.args.kwonlyargs}
    for key, value in kwargs:
        if key != "**" and key in accepted and value.kind == "name":
            out.append((key, value.text))
    return tuple(out)


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


def _with_loop_layer(frame: Frame, name: str, attr: str) -> Frame:
    loop_layers = dict(frame.loop_layers)
    loop_layers[name] = attr
    return Frame(frame.method, frame.owner, frame.fn, frame.locals, frame.inlined_from, frame.depth,
                 frame.local_funcs, frame.local_imports, loop_layers, frame.result, frame.stack, frame.scope)


def _value_reads(v: Value) -> set[str]:
    if v.kind == "name":
        return {v.text}
    if v.kind in ("attr", "expr"):
        return set(_text_reads(v.text))
    return set()


@lru_cache(maxsize=16384)
def _text_reads(text: str) -> frozenset[str]:
    try:
        return frozenset(reads_of(ast.parse(text, mode="eval").body))
    except SyntaxError:
        return frozenset()


def _span(e: ast.AST) -> tuple[int, int, int, int]:
    return (e.lineno, e.col_offset, e.end_lineno or e.lineno, e.end_col_offset or 0)


def _plain_target(t: ast.AST) -> bool:
    if isinstance(t, ast.Name):
        return True
    if isinstance(t, (ast.Tuple, ast.List)):
        return all(isinstance(x, ast.Name) for x in t.elts)
    return False


def _name_order(t: ast.AST):
    order = {}
    if isinstance(t, ast.Name):
        order[t.id] = 0
    else:
        for i, x in enumerate(t.elts):
            order.setdefault(x.id, i)
    return lambda n: order.get(n, 0)


def _walk_no_opaque(root: ast.AST):
    """ast.walk that does not enter lambdas/comprehensions/nested classes."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                                  ast.GeneratorExp, ast.ClassDef)):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child is not root:
                continue
            stack.append(child)


def _top_level(stmts):
    """Top-level statements, descending into module-level if/try blocks."""
    for stmt in stmts:
        if isinstance(stmt, ast.If):
            yield from _top_level(stmt.body)
            yield from _top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body)
            for h in stmt.handlers:
                yield from _top_level(h.body)
            yield from _top_level(stmt.orelse)
            yield from _top_level(stmt.finalbody)
        else:
            yield stmt


def merge_paths(paths: list[Path]) -> tuple[Path, ...]:
    """Merge paths with equal nodes when z3 proves the merged guard equal
    (step 5 of the module docstring); keep the first occurrence's order."""
    out: list[Path] = []
    by_nodes: dict = {}
    for path in paths:
        # nodes are built once per statement and shared by the paths through it:
        # identity is the cheap key (equal-but-distinct nodes are simply not merged)
        key = tuple(map(id, path.nodes))
        merged = False
        for i in by_nodes.get(key, ()):
            prev = out[i]
            if prev.nodes != path.nodes:
                continue
            common = tuple(g for g in prev.guards if g in path.guards)
            if guardlib.merge_equivalent(prev.guards, path.guards, common) is guardlib.Answer.PROVED:
                out[i] = Path(common, prev.nodes)
                merged = True
                break
        if not merged:
            by_nodes.setdefault(key, []).append(len(out))
            out.append(path)
    return tuple(out)
