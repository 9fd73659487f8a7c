"""Match `class` items: a module class recognised by what its forward computes.

A class item (`ir.ClassPattern`) is a data-flow pattern over the expression
graph of a straight-line `forward` (`analysis.compute.Compute`).  A class
matches when the graph *is* the pattern: the pattern's last node is the
returned value, every computing node the return depends on is matched by a
pattern node (nothing is left over: no dead code either), and the pattern's
inputs are the forward's parameters in order.  So the rewrite may replace
the whole computation.

Algorithm (`match_class(rule, cls)`):
1. Canonical forms, on both sides (`_canon`): spellings of one operation
   become one key: `x ** 2`, `torch.pow(x, 2)`, `x.square()` are the method
   `pow(x, 2)`; `torch.rsqrt(v)` and `1 / torch.sqrt(v)` are `rsqrt(v)`;
   `torch.<f>(x, ...)` is the method `<f>` for a small table of tensor
   methods; `x.float()` is `x.to(torch.float32)`; method and function
   arguments are keyed by parameter name with defaults filled in (a table
   for methods, the signature table for functions).  A call of an
   activation layer (`self.act(x)` with `nn.SiLU()`, `ACT2FN["silu"]`) is
   the call of its function (`torch.nn.functional.silu`); an `ACT2FN[key]`
   layer with a key known only at run time matches with a run-time check
   (`isinstance(self.act, torch.nn.SiLU)`) that the generated dispatch adds.
2. Unification from the output backwards, with backtracking over the
   operand order of `+` and `*`: a pattern variable produced by a node must
   be the compute node that the node matches; an input variable the forward
   parameter; an init variable a `self.<attr>` (read or called) whose init
   binding matches the init pattern; any other variable binds a leaf (a
   `self.<attr>` read, a constant or a module-level name).
3. Coverage: every non-input node the return depends on is matched or bound
   to a variable, and every node of the graph is one the return depends on.
4. Init: each init pattern node matches the one unguarded binding of its
   attribute (type, arguments by parameter name); an attribute stored by a
   method other than `__init__` refuses the match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dslc import codes
from dslc.match import ir, signatures
from dslc.analysis.compute import Compute, reachable
from dslc.analysis.model import ClassFacts, InitBinding, Value

# Tensor methods with their parameters (after the receiver) and defaults.
METHOD_PARAMS: dict[str, tuple[tuple[str, object], ...]] = {
    "mean": (("dim", None), ("keepdim", False), ("dtype", None)),
    "sum": (("dim", None), ("keepdim", False), ("dtype", None)),
    "pow": (("exponent", ...),),
    "rsqrt": (),
    "sqrt": (),
    "to": (("dtype", ...),),
    "var": (("dim", None), ("unbiased", True), ("keepdim", False)),
    "exp": (),
    "tanh": (),
    "sigmoid": (),
    "reciprocal": (),
}
# torch.<f>(x, ...) is the method x.<f>(...)
TORCH_METHODS = {"mean", "sum", "pow", "rsqrt", "sqrt", "square", "var", "exp", "tanh", "sigmoid", "reciprocal"}

# Activation layers that are calls of a function: init type (and constant
# arguments) -> (function, fixed keyword arguments).
ACTIVATION_LAYERS = {
    "torch.nn.SiLU": ("torch.nn.functional.silu", ()),
    "torch.nn.ReLU": ("torch.nn.functional.relu", ()),
    "torch.nn.GELU": ("torch.nn.functional.gelu", (("approximate", "none"),)),
}
# ACT2FN keys (transformers.activations) whose activation is the function.
ACT2FN_KEYS = {
    "silu": ("torch.nn.functional.silu", ()),
    "swish": ("torch.nn.functional.silu", ()),
    "relu": ("torch.nn.functional.relu", ()),
    "gelu_pytorch_tanh": ("torch.nn.functional.gelu", (("approximate", "tanh"),)),
}
# A key known only at run time: the module type the dispatch checks for.
ACT2FN_RUNTIME = {
    ("torch.nn.functional.silu", ()): "torch.nn.SiLU",
}
ACT2FN = "transformers.activations.ACT2FN"


@dataclass(frozen=True)
class ClassMatch:
    """What a class match hands to the rewriter (`ir.Match.klass`)."""

    compute: Compute
    # `isinstance(<expr>, <qualname>)` checks the dispatch must make.
    type_checks: tuple[tuple[str, str], ...] = ()
    lines: tuple[int, int] = (0, 0)


class _Fail(Exception):
    pass


@dataclass
class _State:
    env: dict[str, object] = field(default_factory=dict)  # var -> ("node", i) | ("attr", name)
    covered: set[int] = field(default_factory=set)
    checks: list[tuple[str, str]] = field(default_factory=list)
    matched: int = 0  # pattern nodes matched so far (the depth of a failed attempt)

    def copy(self) -> "_State":
        return _State(dict(self.env), set(self.covered), list(self.checks), self.matched)


def _canon_compute(c: Compute, i: int, cls: ClassFacts):
    """(kind, name, args, kwargs dict, extra covered nodes, type check) of node i.

    kind: method | call | layer | attr | binop | unary | leaf.  Args are
    compute indices; kwargs map names to indices or ("const", value).
    """
    n = c.nodes[i]
    nodes = c.nodes
    if n.op == "binop" and n.name == "**" and nodes[n.args[1]].op == "const":
        return "method", "pow", (n.args[0],), {"exponent": ("const", nodes[n.args[1]].value)}, (), None
    if n.op == "binop" and n.name == "/" and nodes[n.args[0]].op == "const" and nodes[n.args[0]].value == 1:
        d = nodes[n.args[1]]
        if (d.op == "method" and d.name == "sqrt" and not d.kwargs and len(d.args) == 1) or (
                d.op == "call" and d.name == "torch.sqrt" and not d.kwargs and len(d.args) == 1):
            return "method", "rsqrt", (d.args[0],), {}, (n.args[1],), None
    if n.op in ("method", "call"):
        name, args = n.name, n.args
        if n.op == "call":
            if name.startswith("torch.") and name[6:] in TORCH_METHODS and args:
                name = name[6:]
            else:
                norm = signatures.normalize(name, [("idx", a) for a in args], [(k, ("idx", a)) for k, a in n.kwargs])
                if norm is None:
                    return "call", name, args, {k: ("idx", a) for k, a in n.kwargs}, (), None
                kw = {k: (("const", v.const) if isinstance(v, Value) else v) for k, v in norm.items()}
                first = next(iter(kw), None)
                recv = kw.pop(first)[1] if first is not None and kw[first][0] == "idx" else None
                return "call", name, (() if recv is None else (recv,)), kw, (), None
        if name == "square":
            return "method", "pow", args[:1], {"exponent": ("const", 2)}, (), None
        if name == "float" and len(args) == 1 and not n.kwargs:
            return "method", "to", args, {"dtype": ("global", "torch.float32")}, (), None
        params = METHOD_PARAMS.get(name)
        if params is None or not args:
            return "method", name, args, {k: ("idx", a) for k, a in n.kwargs}, (), None
        kw: dict = {}
        rest = args[1:]
        if len(rest) > len(params):
            raise _Fail(f"too many arguments to .{name}()")
        for (pname, _), a in zip(params, rest):
            kw[pname] = ("idx", a)
        for k, a in n.kwargs:
            if k in kw or k not in dict(params):
                raise _Fail(f"unexpected argument {k} to .{name}()")
            kw[k] = ("idx", a)
        for pname, default in params:
            if pname not in kw and default is not ...:
                kw[pname] = ("const", default)
        return "method", name, args[:1], kw, (), None
    if n.op == "layer":
        binding = _one_binding(cls, n.name)
        if binding is not None:
            fn = _activation(binding)
            if fn is not None:
                func, fixed, check = fn
                if n.kwargs or len(n.args) != 1:
                    raise _Fail("activation called with extra arguments")
                kw = {k: ("const", v) for k, v in fixed}
                norm = signatures.normalize(func, [("idx", n.args[0])], [(k, ("const", v)) for k, v in fixed])
                if norm is not None:
                    kw = {k: (("const", v.const) if isinstance(v, Value) else v) for k, v in norm.items()}
                    kw.pop(next(iter(kw)), None)  # the input
                return "call", func, n.args, kw, (), ((f"self.{n.name}", check) if check else None)
        return "layer", n.name, n.args, {k: ("idx", a) for k, a in n.kwargs}, (), None
    if n.op == "attr":
        return "attr", n.name, n.args, {}, (), None
    if n.op in ("binop", "unary"):
        return n.op, n.name, n.args, {}, (), None
    return "leaf", n.op, (), {}, (), None


def _activation(b: InitBinding):
    """(function, fixed kwargs, run-time type check or None) for an activation layer."""
    if b.kind == "call" and b.type in ACTIVATION_LAYERS:
        func, fixed = ACTIVATION_LAYERS[b.type]
        fixed = dict(fixed)
        if b.args:
            return None
        for k, v in b.kwargs:
            if k == "approximate" and v.is_const and "approximate" in fixed:
                fixed["approximate"] = v.const
            elif not (k == "inplace" and v.is_const and v.const is False):
                return None
        return func, tuple(fixed.items()), None
    if b.kind == "subscript" and b.type == ACT2FN and len(b.args) == 1:
        key = b.args[0]
        if key.is_const:
            found = ACT2FN_KEYS.get(key.const)
            return (found[0], found[1], None) if found else None
        # known at run time only: one candidate, checked by the dispatch
        for (func, fixed), typ in ACT2FN_RUNTIME.items():
            return func, fixed, typ
    return None


def _one_binding(cls: ClassFacts, attr: str) -> InitBinding | None:
    found = [b for b in cls.init if b.attr == attr]
    if len(found) != 1 or found[0].guards or found[0].container:
        return None
    return found[0]


def _canon_pattern(pn: ir.PatNode):
    """(kind, name, arg terms, kwargs dict of terms) of a pattern node."""
    if pn.kind == "op":
        if pn.op == "**":
            return "method", "pow", pn.args[:1], {"exponent": pn.args[1]}
        return "binop", pn.op, pn.args, {}
    if pn.kind == "unary":
        return "unary", pn.op, pn.args, {}
    if pn.kind == "attr":
        return "attr", pn.callee.qualname, (pn.callee.var,), {}
    if pn.kind == "method" or (pn.kind == "layer" and pn.callee.qualname and pn.layer_var is None
                               and pn.callee.var is None
                               and pn.callee.qualname.startswith("torch.")
                               and pn.callee.qualname[6:] in TORCH_METHODS):
        if pn.kind == "method":
            name, args = pn.callee.qualname, (pn.callee.var,) + tuple(pn.args)
        else:
            name, args = pn.callee.qualname[6:], tuple(pn.args)
        if name == "square":
            return "method", "pow", args[:1], {"exponent": ir.Const(2)}
        if name == "float" and len(args) == 1:
            return "method", "to", args, {"dtype": ir.Code("torch.float32")}
        params = METHOD_PARAMS.get(name)
        if params is None:
            return "method", name, args, dict(pn.kwargs)
        kw = {}
        for (pname, _), t in zip(params, args[1:]):
            kw[pname] = t
        kw.update(dict(pn.kwargs))
        for pname, default in params:
            if pname not in kw and default is not ...:
                kw[pname] = ir.Const(default)
        return "method", name, args[:1], kw
    if pn.kind == "layer":
        if pn.layer_var is not None or pn.callee.var is not None:
            return "layer", pn.layer_var or pn.callee.var.name, tuple(pn.args), dict(pn.kwargs)
        norm = signatures.normalize(pn.callee.qualname, pn.args, pn.kwargs)
        if norm is None:
            return "call", pn.callee.qualname, tuple(pn.args), dict(pn.kwargs)
        kw = {k: (ir.Const(v.const) if isinstance(v, Value) else v) for k, v in norm.items()}
        first = next(iter(kw), None)
        recv = kw.pop(first) if first is not None and isinstance(kw[first], ir.Var) else None
        return "call", pn.callee.qualname, (() if recv is None else (recv,)), kw
    raise _Fail(f"unsupported pattern node {pn.kind}")


class _Matcher:
    def __init__(self, rule: ir.Rule, cls: ClassFacts):
        self.rule = rule
        self.k = rule.klass
        self.cls = cls
        self.c: Compute = cls.compute
        self.producer: dict[str, ir.PatNode] = {}
        for pn in self.k.forward:
            for o in pn.outputs:
                self.producer[o.name] = pn
        self.inputs = {v.name for v in self.k.inputs}
        self.init_vars = {o.name: pn for pn in self.k.init for o in pn.outputs}
        # the deepest failed attempt (near misses): (score, code, line, reason)
        self.best: tuple | None = None

    def miss(self, score: tuple, code: str, i: int, reason) -> None:
        """Offer a failed attempt (`explain_class`): the deepest one is kept;
        `reason` makes its text (called for the one shown only)."""
        if self.best is None or score > self.best[0]:
            line = self.c.nodes[i].lines[0] if 0 <= i < len(self.c.nodes) else self.c.lines[0]
            self.best = (score, code, line, reason)

    def run(self) -> _State | None:
        c = self.c
        if len(c.inputs) != len(self.k.inputs):
            self.miss((-1,), codes.NM_CLASS_INPUTS, -1,
                      lambda: f"forward takes {len(c.inputs)} input(s) ({', '.join(c.inputs) or 'none'}), "
                      f"the rule's forward takes {len(self.k.inputs)} ({', '.join(str(v) for v in self.k.inputs)})")
            return None
        state = _State()
        for v, name in zip(self.k.inputs, c.inputs):
            state.env[v.name] = ("node", c.inputs.index(name))
        last = self.k.forward[-1]
        for s in self.node(last, c.output, state):
            if self.covered(s):
                return s
        return None

    def covered(self, s: _State) -> bool:
        reach = reachable(self.c)
        for i, n in enumerate(self.c.nodes):
            if n.op == "input":
                continue
            if i not in reach:  # dead code: not one expression
                self.miss((len(self.k.forward) + 1,), codes.NM_CLASS_EXTRA, i,
                          lambda: f"every pattern node matched, but forward also computes `{_short_text(n)}` "
                          f"(line {n.lines[0]}), which the returned value does not use")
                return False
            if i not in s.covered and n.op not in ("self", "const", "global"):
                self.miss((len(self.k.forward) + 1,), codes.NM_CLASS_EXTRA, i,
                          lambda: f"every pattern node matched, but forward also computes `{_short_text(n)}` "
                          f"(line {n.lines[0]}), which no pattern node stands for: the kernel would drop it")
                return False
        return True

    def node(self, pn: ir.PatNode, i: int, s: _State):
        """Match pattern node `pn` against compute node i (generator of states)."""
        node = self.c.nodes[i]

        def where() -> str:  # the texts of a failure's reason (made when shown)
            return f"`{_short_text(node)}` (line {node.lines[0]})"

        def want() -> str:
            return f"`{pattern_text(pn)}`"

        try:
            kind, name, args, kw, extra, check = _canon_compute(self.c, i, self.cls)
            pkind, pname, pargs, pkw = _canon_pattern(pn)
        except _Fail as exc:
            self.miss((s.matched, len(s.covered), 0), codes.NM_CLASS_NODE, i,
                      lambda e=exc: f"{where()} does not fit {want()}: {e}")
            return
        if kind == "layer" and pkind == "layer":
            s2 = self.bind_attr(pname, name, s)
            if s2 is None:
                self.miss((s.matched, len(s.covered), 0), codes.NM_CLASS_NODE, i,
                          lambda: f"{where()} does not fit {want()}: `self.{name}` is not the layer "
                                  f"`${pname}` stands for")
                return
            s = s2
        elif (kind, name) != (pkind, pname):
            self.miss((s.matched, len(s.covered), 0), codes.NM_CLASS_NODE, i,
                      lambda: f"{where()} is {_kind_text(kind, name)}, where the rule needs {want()} "
                              f"({_kind_text(pkind, pname)})")
            return
        if len(args) != len(pargs) or set(kw) != set(pkw):
            diff = sorted(set(kw) ^ set(pkw))
            self.miss((s.matched, len(s.covered), 1), codes.NM_CLASS_NODE, i,
                      lambda: f"{where()} does not fit {want()}: " + (
                          f"the arguments {', '.join(diff)} differ" if diff
                          else f"{len(args)} operand(s), the rule has {len(pargs)}"))
            return
        s = s.copy()
        s.matched += 1
        s.covered.add(i)
        s.covered.update(extra)
        if check:
            s.checks.append(check)
        orders = [list(range(len(args)))]
        if kind == "binop" and name in ("+", "*") and len(args) == 2:
            orders.append([1, 0])
        names = [None] * len(args) + sorted(kw)
        for order in orders:
            pairs = [(pargs[j], ("idx", args[order[j]])) for j in range(len(args))]
            pairs += [(pkw[k], kw[k]) for k in sorted(kw)]
            yield from self.terms(pairs, s, (pn, i, names))

    def terms(self, pairs, s: _State, ctx, pos: int = 0):
        if not pairs:
            yield s
            return
        (t, a), rest = pairs[0], pairs[1:]
        for s2 in self.term(t, a, s, ctx, pos):
            yield from self.terms(rest, s2, ctx, pos + 1)

    def bad_term(self, s: _State, ctx, pos: int, t, a, why: str) -> None:
        """A term of pattern node `ctx[0]` did not fit argument `a` of node `ctx[1]`."""
        pn, i, names = ctx
        node = self.c.nodes[i]
        slot = f"`{names[pos]}`" if pos < len(names) and names[pos] else f"operand #{pos + 1}"
        got = _arg_text(self.c, a)
        self.miss((s.matched, len(s.covered), 2 + pos), codes.NM_CLASS_NODE, i,
                  lambda: f"`{_short_text(node)}` (line {node.lines[0]}) does not fit `{pattern_text(pn)}`: "
                  f"its {slot} is `{got}`, {why}")

    def term(self, t, a, s: _State, ctx, pos: int):
        nodes = self.c.nodes
        if isinstance(t, ir.Const):
            if a[0] == "const" and _const_eq(a[1], t.value):
                yield s
            elif a[0] == "idx" and nodes[a[1]].op == "const" and _const_eq(nodes[a[1]].value, t.value):
                yield s
            else:
                self.bad_term(s, ctx, pos, t, a, f"the rule needs `{t.value!r}`")
            return
        if isinstance(t, ir.Code):
            if a[0] == "global" and a[1] == t.text:
                yield s
            elif a[0] == "idx" and nodes[a[1]].op == "global" and nodes[a[1]].name == t.text:
                yield s
            else:
                self.bad_term(s, ctx, pos, t, a, f"the rule needs `{t.text}`")
            return
        if not isinstance(t, ir.Var) or a[0] != "idx":
            self.bad_term(s, ctx, pos, t, a, "the rule needs a value there")
            return
        yield from self.var_term(t.name, a[1], s, ctx, pos)

    def var_term(self, v: str, i: int, s: _State, ctx, pos: int):
        nodes = self.c.nodes
        if v in s.env:
            if s.env[v] == ("node", i) or (s.env[v][0] == "attr" and nodes[i].op == "self"
                                           and nodes[i].name == s.env[v][1]):
                yield s
            else:
                held = s.env[v]
                text = f"self.{held[1]}" if held[0] == "attr" else _short_text(nodes[held[1]])
                self.bad_term(s, ctx, pos, None, ("idx", i), f"where the rule needs `${v}`, which is `{text}` here")
            return
        if v in self.producer:
            s2 = s.copy()
            s2.env[v] = ("node", i)
            yield from self.node(self.producer[v], i, s2)
            return
        if v in self.init_vars:
            s2 = self.bind_attr(v, nodes[i].name, s) if nodes[i].op == "self" else None
            if s2 is None:
                ipn = self.init_vars[v]
                self.bad_term(s, ctx, pos, None, ("idx", i),
                              f"where the rule needs `${v}`, an attribute of self built in __init__ by "
                              f"`{ipn.callee.qualname if ipn.callee else '?'}(...)`")
                return
            s2.covered.add(i)
            yield s2
            return
        if nodes[i].op in ("self", "const", "global"):
            s2 = s.copy()
            s2.env[v] = ("node", i)
            s2.covered.add(i)
            yield s2
        else:
            self.bad_term(s, ctx, pos, None, ("idx", i),
                          f"where the rule needs `${v}`: an attribute of self, a constant or a module-level name "
                          f"(not a value forward computes)")

    def bind_attr(self, var: str, attr: str, s: _State) -> _State | None:
        if var in s.env:
            return s if s.env[var] == ("attr", attr) else None
        if any(val == ("attr", attr) for val in s.env.values()):
            return None  # two variables, one attribute
        s2 = s.copy()
        s2.env[var] = ("attr", attr)
        return s2


def _const_eq(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return type(a) in (int, float) and type(b) in (int, float) and a == b or (type(a) is type(b) and a == b)


def _match_init(rule: ir.Rule, cls: ClassFacts, env: dict) -> dict[str, InitBinding] | str:
    """Init pattern nodes against the bindings of their attributes."""
    out: dict[str, InitBinding] = {}
    seen: dict[str, str | None] = {}  # init-pattern variable -> the source text it stands for
    for pn in rule.klass.init:
        var = next((o.name for o in pn.outputs if o.name != "_"), None)
        if var is None or var not in env or env[var][0] != "attr":
            return f"init variable `${var}` is not used by forward"
        attr = env[var][1]
        b = _one_binding(cls, attr)
        if b is None:
            return f"`self.{attr}` is not assigned exactly once, unconditionally, in __init__"
        qual = pn.callee.qualname
        if pn.callee.subscript is not None:
            if b.kind != "subscript" or b.type != qual:
                return f"`self.{attr}` is not a `{qual}[...]` lookup"
        elif b.kind != "call" or b.type != qual:
            return f"`self.{attr}` is built by `{b.type or b.unresolved}`, not `{qual}`"
        else:
            rest = bool(pn.args) and isinstance(pn.args[-1], ir.Const) and pn.args[-1].value is Ellipsis
            pargs = pn.args[:-1] if rest else pn.args
            norm_b = signatures.normalize(qual, b.args, b.kwargs)
            # the pattern's own arguments only (no defaults: `Linear(...)` constrains nothing)
            named = signatures.explicit_params(qual, pargs, pn.kwargs)
            norm_p = None if named is None else dict(zip(named, list(pargs) + [t for _, t in pn.kwargs]))
            if norm_b is None or norm_p is None:
                if not rest and (len(b.args) != len(pargs) or len(b.kwargs) != len(pn.kwargs)):
                    return f"`self.{attr}`: arguments differ from the pattern"
                if not rest or pargs or pn.kwargs:
                    if norm_b is None and (pargs or pn.kwargs):
                        return f"`self.{attr}`: the arguments of `{qual}` cannot be compared (no signature)"
            else:
                for k, t in norm_p.items():
                    if isinstance(t, ir.Var) and t.name != "_" and not t.name.startswith("_"):
                        got = norm_b.get(k)
                        text = got.text if got is not None else None
                        if seen.setdefault(t.name, text) != text:
                            return f"`${t.name}` is `{seen[t.name]}` and `{text}` in the init bindings"
                        continue
                    if isinstance(t, ir.Const) or not isinstance(t, (ir.Var, ir.Code)):
                        want = t.value if isinstance(t, ir.Const) else getattr(t, "const", None)
                        got = norm_b.get(k)
                        if got is None or not got.is_const or not _const_eq(got.const, want):
                            return f"`self.{attr}`: `{k}` is not {want!r}"
        stores = [u for u in cls.attr_uses if u.attr == attr and u.kind == "store" and u.method != "__init__"]
        if stores:
            return f"`self.{attr}` is also assigned in `{stores[0].method}` (line {stores[0].lines[0]})"
        out[var] = b
    return out


def match_class(rule: ir.Rule, cls: ClassFacts, file: str) -> ir.Match | None:
    """The class match of `rule` in `cls`, or None (see the module docstring)."""
    c = cls.compute
    if c is None or c.problem is not None or rule.klass is None:
        return None
    state = _Matcher(rule, cls).run()
    if state is None:
        return None
    init = _match_init(rule, cls, state.env)
    bindings: dict[str, ir.Bound] = {}
    for var, val in state.env.items():
        if val[0] == "attr":
            bindings[var] = ir.Bound(val[1], "layer")
            continue
        node = c.nodes[val[1]]
        if node.op == "const":
            bindings[var] = ir.Bound(node.text, "const", node.value)
        elif node.op == "input":
            bindings[var] = ir.Bound(node.name, "name")
        else:
            bindings[var] = ir.Bound(node.text, "expr")
    conflict = codes.reason(codes.S_CLASS_INIT, init) if isinstance(init, str) else None
    for s in rule.klass.scalars:
        b = bindings.get(s.name)
        if b is not None and b.kind == "layer":
            conflict = conflict or codes.reason(codes.S_CLASS_INIT, f"`${s.name}` must be a number but is the layer `self.{b.text}`")
    return ir.Match(
        rule=rule, file=file, class_name=cls.name, function="forward", nodes=(),
        init_nodes=init if isinstance(init, dict) else {}, bindings=bindings, paths=(),
        conflict=conflict, klass=ClassMatch(c, tuple(dict.fromkeys(state.checks)), c.lines),
    )


# ---------------------------------------------------------------------------
# Near misses of class rules (`dslc.rewrite.classmiss`): which classes are
# candidates of a rule, and why one that is does not match.

def _short_text(n) -> str:
    text = " ".join(n.text.split()) or n.name or n.op
    return text if len(text) <= 60 else text[:57] + "..."


def _arg_text(c: Compute, a) -> str:
    if a[0] == "idx" and 0 <= a[1] < len(c.nodes):
        return _short_text(c.nodes[a[1]])
    return repr(a[1]) if a[0] == "const" else str(a[1])


def _kind_text(kind: str, name: str) -> str:
    if kind in ("binop", "unary"):
        return f"a `{name}`"
    if kind == "method":
        return f"a `.{name}()` call"
    if kind == "call":
        return f"a call of `{name}`"
    if kind == "layer":
        return f"a call of `self.{name}`" if not name.startswith("$") else "a layer call"
    if kind == "attr":
        return f"a read of `.{name}`"
    return {"input": "an input of forward", "self": "an attribute of self", "const": "a constant",
            "global": "a module-level name"}.get(name, f"a {name}")


def _term_text(t) -> str:
    if isinstance(t, ir.Var):
        return f"${t.name}"
    if isinstance(t, ir.Const):
        return "..." if t.value is Ellipsis else repr(t.value)
    if isinstance(t, ir.Code):
        return t.text
    return "?"


def pattern_text(pn: ir.PatNode) -> str:
    """A forward pattern node as written in the rule: `$v + $eps -> $ve`."""
    if pn.kind in ("op", "unary"):
        ops = [_term_text(a) for a in pn.args]
        body = f" {pn.op} ".join(ops) if len(ops) == 2 else f"{pn.op}{ops[0] if ops else ''}"
    else:
        c = pn.callee
        head = "?"
        if pn.layer_var is not None:
            head = f"${pn.layer_var}"
        elif c is not None and c.var is not None and pn.kind == "method":
            head = f"${c.var.name}.{c.qualname}"
        elif c is not None and c.var is not None:
            head = f"${c.var.name}"
        elif c is not None and c.qualname:
            head = c.qualname
        if pn.kind == "attr":
            body = f"${c.var.name}.{c.qualname}" if c is not None and c.var is not None else head
        else:
            args = [_term_text(a) for a in pn.args] + [f"{k}={_term_text(v)}" for k, v in pn.kwargs]
            body = f"{head}({', '.join(args)})"
    if pn.outputs:
        body += " -> " + ", ".join(f"${o.name}" for o in pn.outputs)
    return body


def _init_type(rule: ir.Rule, var: str) -> str | None:
    for pn in rule.klass.init:
        if any(o.name == var for o in pn.outputs) and pn.callee is not None:
            return pn.callee.qualname
    return None


def class_anchors(rule: ir.Rule) -> frozenset[tuple[str, str]]:
    """The operations of a class rule's forward pattern, in the canonical
    keys of `_canon_pattern` (`("method", "pow")`, `("binop", "*")`,
    `("call", "torch.nn.functional.silu")`); a layer variable's call is
    `("layer", <its init type>)`.  Reads (`$x.dtype`) say nothing: left out."""
    out = set()
    for pn in rule.klass.forward:
        try:
            kind, name, _, _ = _canon_pattern(pn)
        except _Fail:
            continue
        if kind == "attr":
            continue
        if kind == "layer":
            typ = _init_type(rule, name)
            if typ is None:
                continue
            name = typ
        out.add((kind, name))
    return frozenset(out)


def class_ops(cls: ClassFacts) -> frozenset[tuple[str, str]]:
    """The operations the class's forward spells (`Compute.ops`), in the keys
    of `class_anchors`: `x ** 2` and `.square()` are `pow`, `torch.<f>` is
    the method `<f>`, `.float()` is `to`, an activation layer its function,
    any other layer its init type."""
    c = cls.compute
    out = set()
    for op, name in (c.ops if c is not None else ()):
        if op == "binop" and name == "**":
            out.add(("method", "pow"))
        elif op == "call" and name.startswith("torch.") and name[6:] in TORCH_METHODS:
            out.add(("method", "pow" if name[6:] == "square" else name[6:]))
        elif op == "method" and name in ("square", "float"):
            out.add(("method", "pow" if name == "square" else "to"))
        elif op == "layer":
            key = _layer_key(cls, name)
            if key is not None:
                out.add(key)
        else:
            out.add((op, name))
    return frozenset(out)


def _layer_key(cls: ClassFacts, attr: str) -> tuple[str, str] | None:
    """What a call of `self.<attr>` is, for `class_ops`: the function of an
    activation layer, else the layer's type; a layer bound on several
    branches of __init__ (`if config.x: self.act = ACT2FN[...]`) counts
    when every binding says the same."""
    keys = set()
    for b in cls.init:
        if b.attr != attr or b.container:
            continue
        fn = _activation(b)
        keys.add(("call", fn[0]) if fn is not None else ("layer", b.type) if b.type else None)
    return keys.pop() if len(keys) == 1 else None


def candidates(anchors: dict, ops: frozenset) -> list:
    """The rules a forward holding `ops` looks like (`anchors`: rule ->
    `class_anchors`): those whose every anchor it holds; where there is
    none, those with four anchors or more of which it lacks one (one
    operation spelled another way, or missing: no `+ eps`).  So an RMS norm
    is no candidate of the written-out LayerNorm (it lacks the `-`) while
    the RMS norm rule fits it fully."""
    full = [r for r, a in anchors.items() if a and a <= ops]
    if full:
        return full
    return [r for r, a in anchors.items() if len(a) >= 4 and len(a - ops) == 1]


def explain_class(rule: ir.Rule, cls: ClassFacts) -> tuple[str, int, str] | None:
    """Why `rule` does not match `cls` by its forward: (near-miss code, line,
    reason) of the deepest failed attempt, or None where the forward matches
    (an init that does not fit is the match's own skip reason)."""
    c = cls.compute
    if c is None or rule.klass is None:
        return None
    if c.problem is not None:
        return codes.NM_CLASS_SHAPE, c.lines[0], f"forward is not one expression the rule can replace: {c.problem}"
    m = _Matcher(rule, cls)
    if m.run() is not None:
        return None
    if m.best is None:
        return codes.NM_CLASS_NODE, c.lines[0], "no node of forward fits the rule's pattern"
    _, code, line, reason = m.best
    return code, line, reason()
