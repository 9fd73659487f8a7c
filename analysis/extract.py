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

One module per concern:

* `extract.py` (this one): `Extractor`, the facts of one module: for each
  Module subclass its init bindings, forward paths, the paths of its other
  methods that hold DL nodes, its `self.<attr>` uses and its forward's data
  flow (`compute.py`); the paths of other classes' methods and of top-level
  functions that hold DL nodes.
* `context.py`: what the extractors of one module share; names as its code
  sees them (local imports, methods along the MRO, the astroid fallback).
* `classes.py`: classes, their bases and MRO, which ones are Modules.
* `defuse.py`: reads and writes (def-use), values as written, locals.
* `initbind.py`: step 1, init bindings.
* `classify.py`: what a call is, and whether code holds DL nodes.
* `paths.py`: steps 2 and 4, the paths through a function, statement by
  statement; `compound.py` (`if`, loops, `with`, `try`), `exprs.py`
  (expressions into DL nodes), `inline.py` (step 3, helper inlining).
* `pathstate.py`: path prefixes and their guards (step 4), merging (step 5).
* `budget.py`: the options and the per-function work budgets.
"""

from __future__ import annotations

import ast

from .budget import MAX_NESTED_CLASS_DEPTH, Options
from .classes import ClassInfo, top_level
from .classgate import ClassGate
from .classify import Classifier
from .compute import forward_compute
from .context import FileContext
from .defuse import local_names, scan
from .initbind import InitBindings
from .model import AttrUse, ClassFacts, InitBinding, Path, Problem
from .names import Resolver, Scope
from .pathstate import Frame
from .paths import PathBuilder


class Extractor:
    """Extracts facts from one module (see the module docstring)."""

    def __init__(self, tree: ast.Module, scope: Scope, resolver: Resolver, options: Options,
                 source: str | None = None):
        self.ctx = FileContext(tree, scope, resolver, options, source)
        self.problems: list[Problem] = self.ctx.problems
        self.kinds = Classifier(self.ctx)
        self.init = InitBindings(self.ctx)
        self.paths = PathBuilder(self.ctx, self.kinds)
        self.gate = ClassGate(self.ctx, options.needs) if options.needs is not None else None
        self.gated: list[str] = []  # qualnames of the classes the gate left without paths

    def run(self) -> tuple[list[ClassFacts], list[tuple[str, tuple[Path, ...]]]]:
        classes, functions = [], []
        for stmt in top_level(self.ctx.tree.body):
            if isinstance(stmt, ast.ClassDef):
                self._class_entry(stmt, "", classes, functions)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.ctx.enter(None)
                if self.kinds.fn_has_dl(stmt, None, Frame(stmt.name, self.ctx.module, stmt, local_names(stmt), scope=self.ctx.scope)):
                    functions.append((stmt.name, self.paths.function_paths(stmt, self.ctx.module, None)))
        return classes, functions

    def _class_entry(self, stmt: ast.ClassDef, prefix: str, classes: list, functions: list, depth: int = 0,
                     enclosing: ast.ClassDef | None = None) -> None:
        """The facts of one class, then of the classes nested in its body
        (`Outer.Inner`, to a bounded depth)."""
        info = self.ctx.classes.make_info(stmt, self.ctx.scope, prefix=prefix, enclosing=enclosing)
        self.ctx.classes.remember(info)
        if any(self.ctx.classes.is_module(q) for q in info.base_quals):
            try:
                classes.append(self.class_facts(info))
            except RecursionError:
                self.ctx.problems.append(Problem("analysis-recursion", f"class {info.name} too deeply nested", stmt.lineno))
        else:
            hidden = self.ctx.classes.hidden_base(info)
            if hidden is not None and "forward" in info.methods:
                self.ctx.problems.append(Problem(
                    "base-not-visible",
                    f"class {info.name}: base `{hidden}` is outside the analyzed tree, so whether "
                    f"it is a torch.nn.Module is unknown; analyze the tree that defines it "
                    f"(--root) to include this class", stmt.lineno))
            for name, fn in info.methods.items():
                self.ctx.enter(None)
                if self.kinds.fn_has_dl(fn, None, Frame(name, info.qualname, fn, local_names(fn), scope=self.ctx.scope)):
                    functions.append((f"{info.name}.{name}", self.paths.function_paths(fn, info.qualname, None)))
        if depth < MAX_NESTED_CLASS_DEPTH:
            for inner in stmt.body:
                if isinstance(inner, ast.ClassDef):
                    self._class_entry(inner, info.name + ".", classes, functions, depth + 1, stmt)

    def class_facts(self, info: ClassInfo) -> ClassFacts:
        self.ctx.enter(info)
        init = self.init.bindings(info)
        if self.ctx.options.flatten:
            # one flat list of statements: no guards, and the textually last
            # assignment of an attribute is the one that stands
            last = {}
            for b in init:
                last[b.attr] = InitBinding(b.attr, b.type, b.args, b.kwargs, b.kind, b.unresolved, (),
                                           b.stmt, b.container)
            init = [b for b in last.values()]
        self.ctx.init_types = {}
        for binding in init:
            self.ctx.init_types.setdefault(binding.attr, []).append(binding)
        paths: tuple[Path, ...] = ()
        other = []
        if self.gate is not None and not self.gate.passes(info, init):
            # no rule can match this class (`classgate.py`): its facts without paths
            self.gated.append(info.qualname)
        else:
            paths, other = self._paths(info)
        uses = self.attr_uses(info)
        node = info.node
        compute = self._compute(info)
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

    def _paths(self, info: ClassInfo) -> tuple[tuple[Path, ...], list]:
        """The paths of forward (its own or inherited) and of the other
        methods that hold a layer or call node."""
        paths: tuple[Path, ...] = ()
        other = []
        found = self.ctx.find_method("forward")
        if found is not None:
            fn, owner = found
            paths = self.paths.function_paths(fn, owner.qualname, owner)
        for name, fn in info.methods.items():
            if name in ("forward", "__init__"):
                continue
            # a method with no layer/call node has nothing an init-less rule can match
            if not self.kinds.fn_has_dl(fn, info, Frame(name, info.qualname, fn, local_names(fn), scope=info.scope)):
                continue
            other.append((name, self.paths.function_paths(fn, info.qualname, info)))
        return paths, other

    def _compute(self, info: ClassInfo):
        """The whole data flow of a forward defined by this class (class rules), or None."""
        if "forward" not in info.methods or not self.ctx.options.compute:
            return None
        return forward_compute(info.methods["forward"], lambda parts: self.ctx.resolve(parts, scope=info.scope))

    def attr_uses(self, info: ClassInfo) -> tuple[AttrUse, ...]:
        out = []
        for name, fn in info.methods.items():
            for attr, lines, kind in scan(fn)[1]:
                out.append(AttrUse(attr, name, lines, kind))
        out.sort(key=lambda u: (u.lines, u.attr, u.method, u.kind))
        return tuple(out)
