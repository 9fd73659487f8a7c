"""Semantic checks over the syntax tree; collects every diagnostic.

`check_file(file)` runs, in order:
1. the pack header (exactly one) and the `requires` lines (PEP 440 ranges,
   no package twice);
2. rule names unique in the pack;
3. per rule, structure: sections given at most once, a kernel named and
   covered by `requires` (or torch), a contract unless detect-only, valid
   tolerance values, known options with valid values, an init or forward item;
4. per item, node shapes (what init / forward, source / target nodes may
   be; arguments allowed in sources vs targets; `...` placement; repeated
   keywords; wildcards not in targets);
5. variables: one definition per output; `$v(...)` in forward calls an init
   layer; every target variable bound by its source (init-source variables
   are visible in forward); `where` / `when` / `params` name bound variables;
   every init layer has a forward use when the rule has a forward item;
   `qual.Type(...)` in forward not ambiguous; source variables used.
`check_files(files)` adds the cross-file check (a pack name declared twice).
`check_semantics(files)` (run by `dslc check`, not by every load: it reads
installed packages' sources) adds the ADR5xx warnings: qualified names that
do not exist, tensors compared with strings, keyword constants of the wrong
type for the signature's default, `params` naming a parameter the layer lacks.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter

from dslc.lang import syntax as S
from dslc import codes
from dslc.lang.diagnostics import Diagnostic, Label, diag
from dslc.match.ir import parse_inner

# option name -> (check, description of the valid values)
OPTIONS: dict[str, tuple] = {
    "scope": (lambda v: v in ("any", "forward"), '"any" or "forward"'),
    "detect": (lambda v: isinstance(v, bool), "True or False"),
    # False: `+` and `*` of the forward pattern match their operands in the
    # written order only (the compiler's default is commutative).
    "commutative": (lambda v: isinstance(v, bool), "True or False"),
    # A run-time condition of the kernel dispatch (rules with `fallback`):
    # a Python expression over `$vars` and `$v.attr` (`"$x.dim() == 2"`).
    "check": (lambda v: isinstance(v, str) and _check_parses(v), 'a Python expression over $variables, e.g. "$x.dim() == 2"'),
    # `"$a: $b"`: `$a` may be matched through a row reshaping of its value
    # (view/reshape/flatten/contiguous/leading-dim slicing, the last dim kept),
    # and the target applies the same reshaping to `$b` (dslc/match/rows.py).
    "rows": (lambda v: isinstance(v, str) and bool(ROWS_FORMAT.fullmatch(v)), 'two variables, e.g. "$logits: $h"'),
    # Acknowledge warnings for this rule: a comma-separated list of codes.
    "allow": (lambda v: isinstance(v, str) and bool(v.strip()) and all(
        (c.strip().upper() in codes.REGISTRY and codes.REGISTRY[c.strip().upper()].severity == "warning")
        for c in v.split(",")), 'a string of warning codes, e.g. "ADR209"'),
    # What the rewrite keeps of every value it changes or removes: reads that
    # look only at those properties (`x.shape`, `x.dtype`, `x.device`) may
    # stay (docs/adr-language.md, "Reads of shape, dtype and device").
    "keeps": (lambda v: isinstance(v, str) and bool(v.strip()) and all(
        c.strip() in ("shape", "dtype", "device") for c in v.split(",")),
        'a comma-separated subset of "shape", "dtype", "device", e.g. "shape,dtype,device"'),
    # Where the layer an init target binds again keeps the original one
    # (`"$conv[0]"`: ConvBn2d($conv, $bn)[0] is $conv): other uses of the
    # attribute are redirected there (docs/adr-language.md, "Other uses of a
    # replaced layer"; checked further by _InnerChecks, ADR121).
    # `"$s0"`: reads of the dtype and device of this intermediate (a q k^T
    # product) may stay; the rewrite keeps its statement computed on empty
    # slices (docs/adr-language.md, "Reads of dtype and device: `option probe`").
    "probe": (lambda v: isinstance(v, str) and bool(re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", v.strip())),
              'one variable, e.g. "$s0"'),
    # `"$s0 = <expr>"`: the size a removed intermediate has, as an expression
    # over bound variables; raise-only size checks of it may stay, rewritten
    # (docs/adr-language.md, "Size checks of a removed value: `option shape`").
    "shape": (lambda v: _parse_shape(v) is not None, 'a variable and an expression, e.g. '
              '"$s0 = $q.shape[:-1] + $k.shape[-2:-1]"'),
    # True: the head call starts a causal LM's labelled loss, which the rewrite
    # reads from the source (dslc/rewrite/kinds/causallm.py; rules declared unsafe).
    "causal_lm": (lambda v: isinstance(v, bool), "True or False"),
    "inner": (lambda v: parse_inner(v) is not None,
              'a comma-separated list of variables with accessors, e.g. "$conv[0]"'),
}

# PEP 440 public versions (with local labels), as in the specification's
# appendix; `.*` allowed after == and != only.
_VERSION = re.compile(
    r"""v?(?:\d+!)?\d+(?:\.\d+)*
        (?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?\d*)?
        (?:-\d+|[-_.]?(?:post|rev|r)[-_.]?\d*)?
        (?:[-_.]?dev[-_.]?\d*)?
        (?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?""",
    re.VERBOSE | re.IGNORECASE,
)
_CLAUSE = re.compile(r"\s*(~=|===|==|!=|<=|>=|<|>)\s*(\S+?)\s*$")


CHECK_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
ROWS_FORMAT = re.compile(r"\s*\$[A-Za-z_][A-Za-z0-9_]*\s*:\s*\$[A-Za-z_][A-Za-z0-9_]*\s*")


def _parse_shape(text):
    from dslc.rewrite.kinds.keepchecks import parse_shape

    return parse_shape(text)


def _check_parses(text: str) -> bool:
    import ast as _ast

    try:
        _ast.parse(CHECK_VAR.sub(lambda m: "_v_" + m.group(1), text), mode="eval")
    except SyntaxError:
        return False
    return bool(text.strip())


def version_error(spec: str) -> str | None:
    """Why `spec` is not a PEP 440 specifier set (None when it is).

    1. Split on commas; every clause must be non-empty.
    2. Each clause is an operator and a version.
    3. `===` takes any string; `==`/`!=` a version optionally ending in
       `.*`; `~=` a version with at least two components; others a version.
    """
    if not spec.strip():
        return "empty version range"
    for clause in spec.split(","):
        if not clause.strip():
            return "empty clause (stray comma)"
        m = _CLAUSE.match(clause)
        if not m:
            return f"`{clause.strip()}` has no comparison operator (~=, ==, !=, <=, >=, <, >, ===)"
        op, version = m.groups()
        if op == "===":
            continue
        if op in ("==", "!=") and version.endswith(".*"):
            version = version[:-2]
            if "+" in version:
                return f"`{clause.strip()}`: a wildcard version cannot have a local label"
        if not _VERSION.fullmatch(version):
            return f"`{version}` is not a PEP 440 version"
        if op == "~=" and "." not in version.split("+")[0]:
            return f"`{clause.strip()}`: ~= needs a version with at least two components"
    return None


def check_files(files: list[S.File]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for f in files:
        out.extend(check_file(f))
    first: dict[str, S.PackHeader] = {}
    for f in files:
        h = f.header
        if h is None:
            continue
        if h.name in first:
            prev = first[h.name]
            out.append(diag(codes.DUP_PACK, f"pack `{h.name}` is also declared in {prev.span.path}",
                            h.name_span, label="declared again here",
                            extra=(Label(prev.name_span, "first declared here"),),
                            help="give each pack a unique name"))
        else:
            first[h.name] = h
    return out


def check_file(f: S.File) -> list[Diagnostic]:
    try:
        return _check_file(f)
    finally:
        _NODE_VARS.clear()


def _check_file(f: S.File) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if not f.headers:
        from dslc.match.ir import Span
        out.append(diag(codes.NO_PACK, "missing pack header", Span(f.path, 1, 1, 1, 2),
                        label="expected `pack <name> \"<description>\"`",
                        help='start the file with e.g. `pack mypack "What these rules do"`'))
    for h in f.headers[1:]:
        out.append(diag(codes.NO_PACK, f"second pack header `{h.name}`", h.span,
                        label="a file holds one pack",
                        extra=(Label(f.headers[0].span, "first header"),),
                        help="split the file, one pack per file"))
    seen_pkg: dict[str, S.Requires] = {}
    for q in f.requires:
        key = q.package.lower().replace("_", "-")
        if key in seen_pkg:
            out.append(diag(codes.DUP_REQUIRES, f"package `{q.package}` is required twice", q.package_span,
                            label="again here", extra=(Label(seen_pkg[key].package_span, "first here"),),
                            help="merge the version ranges into one specifier set"))
        else:
            seen_pkg[key] = q
        if q.version is not None:
            why = version_error(str(q.version.value))
            if why:
                out.append(diag(codes.BAD_VERSION, f"malformed version range {pretty_const(q.version.value)}: {why}",
                                q.version.span, label="not a PEP 440 specifier set",
                                help='write e.g. ">=0.1,<1" or "==0.0.22"'))
    providers = {"torch"}
    for q in f.requires:
        providers.add(q.package.lower().replace("-", "_"))
        if q.module is not None:
            providers.add(q.module.qualname.split(".")[0].lower())
    rules_seen: dict[str, S.Rule] = {}
    for r in f.rules:
        if r.name in rules_seen:
            out.append(diag(codes.DUP_RULE, f"duplicate rule name `{r.name}`", r.name_span,
                            label="defined again here", extra=(Label(rules_seen[r.name].name_span, "first defined here"),),
                            help="rename one of the rules; names are unique in a pack"))
        else:
            rules_seen[r.name] = r
        checker = _RuleChecker(r, providers)
        checker.packages = {q.package.lower().replace("_", "-") for q in f.requires}
        out.extend(checker.run())
    return out


def pretty_const(v) -> str:
    from dslc.lang.pretty import const
    return const(v)


def _walk_expr(e):
    """Yield `e` and its sub-expressions (iteratively: depth is capped anyway)."""
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None:
            continue
        yield x
        if isinstance(x, S.BinOp):
            stack += [x.right, x.left]
        elif isinstance(x, S.UnaryOp):
            stack.append(x.operand)
        elif isinstance(x, S.Subscript):
            stack.append(x.key)
        elif isinstance(x, S.Call):
            stack += [a.value for a in reversed(x.args)]
            stack.append(x.callee)
        elif isinstance(x, S.AttrRef):
            stack.append(x.var)
        elif isinstance(x, S.Compare):
            stack += [x.right, x.left]
        elif isinstance(x, S.BoolOp):
            stack += [x.right, x.left]
        elif isinstance(x, S.Not):
            stack.append(x.operand)


def vars_in(e) -> list[S.Var]:
    return [x for x in _walk_expr(e) if isinstance(x, S.Var)]


# id(node) -> (node, its variables), while `check_file` runs: the rule checks
# ask for the same nodes' variables again and again (sdpa.adr: 38 000 asks,
# 8 000 nodes).  The node is kept beside its id, so an id is never reused.
_NODE_VARS: dict[int, tuple] = {}


def node_vars(n) -> list[S.Var]:
    """Every variable of a node: its expression's, then its outputs (read only)."""
    hit = _NODE_VARS.get(id(n))
    if hit is not None and hit[0] is n:
        return hit[1]
    found = ([] if isinstance(n, S.Wildcard) else vars_in(n.expr)) + list(n.outputs)
    _NODE_VARS[id(n)] = (n, found)
    return found


def _callee_type(n) -> str | None:
    if isinstance(n, S.Node):
        if isinstance(n.expr, S.Call) and isinstance(n.expr.callee, S.Name):
            return n.expr.callee.qualname
        if isinstance(n.expr, S.Subscript):
            return n.expr.container.qualname
    return None


DTYPES = ("fp32", "fp16", "bf16", "fp64")
DEVICES = ("cuda", "cpu")


class _ClassAsSection:
    """A class item seen as an item by the structure checks (target or `_`)."""

    def __init__(self, target) -> None:
        self.item = S.Item((), target)


# The tensor methods the analysis records as `torch.Tensor.<m>` call nodes
# (analysis/exprs.py TENSOR_METHODS; a copy, so that `dslc check` does not
# import the analysis; tests/test_sdpa_checker.py keeps them equal).
TENSOR_METHODS = frozenset({"transpose", "masked_fill", "softmax", "matmul", "bmm", "to", "float", "type_as", "type"})


def _allowed(rule: S.Rule, diags: list[Diagnostic]) -> list[Diagnostic]:
    """Drop the warnings the rule acknowledges with `option allow = "..."`."""
    allowed: set[str] = set()
    for o in rule.of(S.Option):
        if o.name == "allow" and isinstance(o.value.value, str):
            allowed.update(c.strip().upper() for c in o.value.value.split(","))
    return [d for d in diags if d.is_error or d.code not in allowed]


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    if close:
        return f"did you mean `${close[0]}`?"
    return "bound variables: " + (", ".join(f"${n}" for n in sorted(names)) or "none")


class _RuleChecker:
    """The checks of one rule (steps 3-5 of the module docstring).

    Each concern is a collaborator (structure, node shapes, class items,
    variables, run-time needs); all of them append to this object's one
    list of diagnostics, in the order the steps run, since later checks
    look at what earlier ones reported.
    """

    def __init__(self, rule: S.Rule, providers: set[str]) -> None:
        self.r = rule
        self.providers = providers
        self.packages: set[str] = set()
        self.out: list[Diagnostic] = []
        # What the last class item checked to its end binds (visible to the
        # variable and run-time checks).
        self.class_vars: set[str] = set()

    def emit(self, *args, **kw) -> None:
        self.out.append(diag(*args, **kw))

    def run(self) -> list[Diagnostic]:
        _StructureChecks(self).run()
        init = self.r.section("init")
        fwd = self.r.section("forward")
        shapes = _ShapeChecks(self)
        for sec in (init, fwd):
            if sec is not None:
                shapes.shapes(sec)
        for c in self.r.of(S.ClassItem):
            _ClassItemChecks(self, shapes).run(c, mixed=init is not None or fwd is not None)
        _OptionalChecks(self).run(init, fwd)
        _VariableChecks(self, init, fwd).run()
        _NeedsChecks(self).run(init, fwd)
        _KeepChecks(self).run(fwd)
        _InnerChecks(self).run(init)
        return _allowed(self.r, self.out)

    def unbound(self, v: S.Var, kind: str) -> None:
        where = "the init source" if kind == "init" else "the forward or init source"
        self.emit(codes.UNBOUND_TARGET, f"unbound variable `${v.name}` in {kind} target", v.span,
                  label=f"not bound in {where}",
                  help=f"bind `${v.name}` in {where}, or use a constant")


class _Checks:
    """A collaborator of `_RuleChecker`: one concern's checks of its rule."""

    def __init__(self, ck: _RuleChecker) -> None:
        self.ck = ck
        self.r = ck.r

    def emit(self, *args, **kw) -> None:
        self.ck.emit(*args, **kw)


class _StructureChecks(_Checks):
    """3. Sections at most once, kernel, contract, tolerances, options."""

    def run(self) -> None:
        r = self.r
        self.sections_once()
        kernels = r.of(S.Kernel)
        if not kernels:
            self.emit(codes.NO_KERNEL, f"rule `{r.name}` names no kernel", r.name_span,
                      help="add `kernel <qualified.name>` for the kernel the rule brings in")
        for k in kernels:
            top = k.qualname.qualname.split(".")[0].lower()
            if top not in self.ck.providers:
                self.emit(codes.KERNEL_NOT_REQUIRED,
                          f"kernel `{k.qualname.qualname}` is in no required package", k.span,
                          label=f"`{top}` is not in `requires`",
                          help=f'add `requires {top} install "<how to install it>"`')
        sections = [c for c in r.clauses if isinstance(c, S.Section)]
        sections += [_ClassAsSection(c.target) for c in r.of(S.ClassItem)]
        if not sections:
            self.emit(codes.NO_ITEMS, f"rule `{r.name}` has no init or forward item", r.name_span,
                      help="add `init { ... } => { ... }` and/or `forward { ... } => { ... }`")
        detect_only = bool(sections) and all(s.item.target is None for s in sections)
        options = {o.name: o.value.value for o in r.of(S.Option)}
        has_contract = bool(r.of(S.Exact) or r.of(S.Tolerance) or r.of(S.DtypeTolerance))
        if sections and not detect_only and not has_contract:
            self.emit(codes.NO_CONTRACT, f"rule `{r.name}` states no numerical contract", r.name_span,
                      help="add `exact` or `tolerance atol=<a> rtol=<r>`")
        if detect_only and options.get("detect") is not True:
            self.emit(codes.NOOP_RULE, f"every target of rule `{r.name}` is `_`: it only detects",
                      r.name_span, help="add `option detect = True` if that is intended")
        for t in r.of(S.Tolerance):
            self.tolerance(t)
        for t in r.of(S.DtypeTolerance):
            self.dtype_tolerance(t)
        for o in r.of(S.Option):
            self.option(o)

    def sections_once(self) -> None:
        r = self.r
        counts: Counter = Counter()
        for c in r.clauses:
            key = {S.Exact: "contract", S.Tolerance: "contract", S.When: "when",
                   S.Params: "params", S.DtypeTolerance: "contract", S.Safety: "safe/unsafe",
                   S.Fallback: "fallback", S.Keep: "keep", S.ClassItem: "class"}.get(type(c))
            if isinstance(c, S.Section):
                key = c.kind
            if key is None:
                continue
            counts[key] += 1
            if counts[key] > 1:
                what = "a numerical contract (`exact` or `tolerance`)" if key == "contract" else f"`{key}`"
                self.emit(codes.DUP_SECTION, f"{what} given twice in rule `{r.name}`", c.span,
                          label="second one", help="keep one; merge them if both say something")

    def dtype_tolerance(self, t: S.DtypeTolerance) -> None:
        seen_dtypes: dict[str, S.DtypeTol] = {}
        for d in t.dtypes:
            if d.dtype not in DTYPES:
                self.emit(codes.BAD_TOLERANCE, f"unknown dtype `{d.dtype}` in a tolerance", d.span,
                          label="expected " + ", ".join(DTYPES),
                          help="write e.g. `tolerance fp32 atol=1e-5 rtol=1e-5; bf16 atol=1e-2 rtol=1.6e-2`")
            elif d.dtype in seen_dtypes:
                self.emit(codes.BAD_TOLERANCE, f"dtype `{d.dtype}` given twice", d.span, label="again here")
            seen_dtypes[d.dtype] = d
            self.tolerance(S.Tolerance(d.args, span=d.span))

    def tolerance(self, t: S.Tolerance) -> None:
        seen = set()
        values = []
        for a in t.args:
            if a.name not in ("atol", "rtol"):
                self.emit(codes.BAD_TOLERANCE, f"unknown tolerance `{a.name}`", a.span,
                          label="expected atol or rtol", help="write `tolerance atol=<a> rtol=<r>`")
                continue
            if a.name in seen:
                self.emit(codes.BAD_TOLERANCE, f"`{a.name}` given twice", a.span, label="again here")
            seen.add(a.name)
            v = a.value.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.emit(codes.BAD_TOLERANCE, f"`{a.name}` must be a number", a.value.span,
                          label="not a number")
            elif v < 0:
                self.emit(codes.BAD_TOLERANCE, f"`{a.name}` is negative", a.value.span,
                          label="must be >= 0", help="tolerances are absolute values")
            else:
                values.append(v)
        if values and not any(v > 0 for v in values) and len(values) == len(t.args):
            self.emit(codes.BAD_TOLERANCE, "tolerance with all values zero", t.span,
                      label="this is `exact`", help="write `exact` instead")

    def option(self, o: S.Option) -> None:
        entry = OPTIONS.get(o.name)
        if entry is None:
            close = difflib.get_close_matches(o.name, OPTIONS, n=1)
            hint = f"did you mean `{close[0]}`?" if close else "known options: " + ", ".join(sorted(OPTIONS))
            self.emit(codes.UNKNOWN_OPTION, f"unknown option `{o.name}`", o.name_span,
                      label="not an option", help=hint)
            return
        check, allowed = entry
        if not check(o.value.value):
            self.emit(codes.BAD_OPTION, f"invalid value {pretty_const(o.value.value)} for option `{o.name}`",
                      o.value.span, label=f"expected {allowed}")
        elif o.name == "scope":
            # The compiler derives the scope from the init item; the option
            # states it, and must agree.
            want = "forward" if self.r.section("init") is not None else "any"
            if o.value.value != want:
                why = "has an init item" if want == "forward" else "has no init item"
                self.emit(codes.BAD_OPTION, f"scope {pretty_const(o.value.value)} contradicts the rule, which {why}",
                          o.value.span, label=f"this rule's scope is \"{want}\"")


class _ShapeChecks(_Checks):
    """4. Node shapes: what init / forward, source / target nodes may be."""

    def shapes(self, sec: S.Section) -> None:
        item = sec.item
        if not item.source:
            self.emit(codes.EMPTY_PATTERN, f"empty {sec.kind} source pattern", item.span or sec.span,
                      label="matches nothing", help="write at least one node")
        for n in item.source:
            self.node_shape(n, sec.kind, source=True)
        for n in item.target or ():
            self.node_shape(n, sec.kind, source=False)

    def node_shape(self, n, kind: str, source: bool) -> None:
        side = "source" if source else "target"
        if isinstance(n, S.Node) and (isinstance(n.expr, S.AttrRef) or (
                isinstance(n.expr, S.Call) and isinstance(n.expr.callee, S.AttrRef))):
            self.emit(codes.METHOD_OUTSIDE_CLASS, f"a method or attribute node in {'an' if kind == 'init' else 'a'} {kind} item", n.span,
                      label="only class items match tensor methods",
                      help="write a `class { ... forward($x) { ... } } => { ... }` item")
            return
        if isinstance(n, S.Wildcard):
            if not source:
                self.emit(codes.WILDCARD_TARGET, f"wildcard `*` in a {kind} target", n.span,
                          label="a target must be explicit",
                          help="write the node the rewrite should produce, or drop it")
            elif kind == "init":
                self.emit(codes.BAD_NODE, "wildcard `*` in an init pattern", n.span,
                          label="init nodes are constructor calls or lookups",
                          help="init nodes say which layer type is bound; drop the `*`")
            return
        e = n.expr
        if kind == "init":
            ok = isinstance(e, S.Subscript) or (isinstance(e, S.Call) and isinstance(e.callee, S.Name))
            if not ok:
                self.emit(codes.BAD_NODE, f"an init {side} node must be `qual.Type(args) -> $v` or `qual.C[$k] -> $v`",
                          n.span, label="not a constructor call or lookup")
                return
            if not n.outputs:
                self.emit(codes.NO_OUTPUT, "init node binds no variable", n.span,
                          label="add `-> $name`", help="the forward pattern refers to the layer through it")
        else:
            if not isinstance(e, (S.Call, S.BinOp, S.UnaryOp)):
                shapes = "a call, a tensor op or `*`" if source else "a call or a tensor op"
                self.emit(codes.BAD_NODE, f"a forward {side} node must be {shapes}",
                          n.span, label="not a DL node")
                return
        if isinstance(e, S.Subscript):
            self.term(e.key, source, where="subscript key", allow_expr=False)
        elif isinstance(e, S.Call):
            if isinstance(e.callee, S.Subscript):
                self.term(e.callee.key, source, where="subscript key", allow_expr=False)
            self.call_args(e, source)
        elif isinstance(e, S.BinOp):
            for operand in (e.left, e.right):
                self.term(operand, source, where="operand", allow_expr=not source)
        elif isinstance(e, S.UnaryOp):
            self.term(e.operand, source, where="operand", allow_expr=not source)

    def call_args(self, call: S.Call, source: bool) -> None:
        keywords: dict[str, S.Arg] = {}
        for i, a in enumerate(call.args):
            if a.rest:
                if not source:
                    self.emit(codes.BAD_REST, "`...` in a target", a.span, label="a target must list its arguments",
                              help="write the arguments the new call takes")
                elif i != len(call.args) - 1:
                    self.emit(codes.BAD_REST, "`...` must be the last argument", a.span, label="not last")
                continue
            if a.name is not None:
                if a.name in keywords:
                    self.emit(codes.DUP_KEYWORD, f"keyword argument `{a.name}` repeated", a.span,
                              label="again here", extra=(Label(keywords[a.name].span, "first here"),))
                keywords[a.name] = a
            self.term(a.value, source, where="argument", allow_expr=not source)

    def term(self, e, source: bool, where: str, allow_expr: bool) -> None:
        if isinstance(e, (S.Var, S.Const)):
            return
        if isinstance(e, S.AttrRef):
            # A subscript key may name an attribute of a bound value
            # (`ACT2FN[$cfg.hidden_act]`): the matcher checks the attribute
            # name and binds the base.
            if source and where != "subscript key":
                self.emit(codes.UNSUPPORTED_TERM, f"attribute reference `${e.var.name}.{e.path}` in a source pattern",
                          e.span, label="only targets may read attributes",
                          help="bind the value to a variable instead")
            return
        if isinstance(e, (S.BinOp, S.UnaryOp)) and allow_expr:
            for sub in ((e.left, e.right) if isinstance(e, S.BinOp) else (e.operand,)):
                self.term(sub, source, where, allow_expr)
            return
        what = {S.Name: "a qualified name", S.Call: "a nested call", S.Subscript: "a subscript",
                S.BinOp: "a nested expression", S.UnaryOp: "a nested expression"}.get(type(e), "this term")
        self.emit(codes.UNSUPPORTED_TERM, f"{what} as {where} in a {'source' if source else 'target'} pattern",
                  getattr(e, "span", None), label="cannot be matched" if source else "cannot be written",
                  help=("write it as a separate node and pass its output variable" if source else
                        "a target calls one function with the bound values; a transformed input (a "
                        "method such as `.transpose(...)`, a nested call) goes into a helper function "
                        "the target calls (docs/adr-language.md, \"Writing targets\")")
                  if isinstance(e, (S.Call, S.BinOp, S.UnaryOp))
                  else "bind the value to a variable (and constrain it with `where`)")


class _VariableChecks(_Checks):
    """5. Variables of the init and forward items and of the clauses naming them."""

    def __init__(self, ck: _RuleChecker, init: S.Section | None, fwd: S.Section | None) -> None:
        super().__init__(ck)
        self.init, self.fwd = init, fwd
        self.init_src = init.item.source if init else ()
        self.fwd_src = fwd.item.source if fwd else ()
        self.init_layers: dict[str, object] = {}  # init-source output var -> node
        for n in self.init_src:
            for v in n.outputs:
                self.init_layers.setdefault(v.name, n)
        self.init_targets = {v.name for n in (init.item.target or ()) for v in n.outputs} if init else set()
        self.init_src_vars = {v.name for n in self.init_src for v in node_vars(n)}
        self.fwd_src_vars = {v.name for n in self.fwd_src for v in node_vars(n)}
        self.all_src = self.init_src_vars | self.fwd_src_vars | set(ck.class_vars)

    def run(self) -> None:
        self.one_definition()
        unlinked = self.layer_calls()
        self.targets()
        self.constraints()
        self.unused(unlinked)

    def one_definition(self) -> None:
        """One definition per output, per pattern."""
        for sec in (self.init, self.fwd):
            if sec is None:
                continue
            for nodes in (sec.item.source, sec.item.target or ()):
                defined: dict[str, S.Var] = {}
                for n in nodes:
                    for v in n.outputs:
                        if v.name == "_":
                            continue
                        if v.name in defined:
                            self.emit(codes.REBOUND_VAR, f"variable `${v.name}` is bound twice", v.span,
                                      label="second definition",
                                      extra=(Label(defined[v.name].span, "first definition"),),
                                      help="use a new variable for this output")
                        else:
                            defined[v.name] = v

    def layer_calls(self) -> set[str]:
        """`$v(...)` and `qual.Type(...)` in forward sources; the init layers
        no forward node calls (returned)."""
        init, fwd = self.init, self.fwd
        by_type: dict[str, list[str]] = {}
        for name, node in self.init_layers.items():
            t = _callee_type(node)
            if t is not None and isinstance(node.expr, S.Call):
                by_type.setdefault(t, []).append(name)
        used_layers: set[str] = set()
        unlinked: set[str] = set()
        for n in self.fwd_src:
            if not (isinstance(n, S.Node) and isinstance(n.expr, S.Call)):
                continue
            callee = n.expr.callee
            if isinstance(callee, S.Var):
                if callee.name not in self.init_layers:
                    msg = "the rule has no init item" if init is None else "no init node binds it"
                    self.emit(codes.UNKNOWN_LAYER, f"forward calls layer `${callee.name}`, but {msg}", callee.span,
                              label="not an init layer",
                              help="bind it in the init source (`qual.Type(...) -> $" + callee.name + "`) "
                                   "or call the type by its qualified name")
                used_layers.add(callee.name)
            elif isinstance(callee, S.Name):
                self.qualified_call(callee, by_type.get(callee.qualname, []))
                used_layers.update(by_type.get(callee.qualname, []))
        if fwd is not None and init is not None:
            for name, node in self.init_layers.items():
                if name not in used_layers and name != "_":
                    unlinked.add(name)
                    self.emit(codes.NO_FORWARD_USE, f"init layer `${name}` is not called by the forward pattern",
                              node.outputs[0].span if node.outputs else node.span,
                              label="no forward node calls it",
                              help=f"add `${name}(...) -> $out` to the forward source, or remove the init node")
        return unlinked

    def qualified_call(self, callee: S.Name, owners: list[str]) -> None:
        method = callee.qualname[len("torch.Tensor."):] if callee.qualname.startswith("torch.Tensor.") else None
        if method is not None and method not in TENSOR_METHODS:
            self.emit(codes.UNRECORDED_METHOD, f"`x.{method}(...)` is not recorded as a node by the analysis",
                      callee.span, label="never matches",
                      help="use one of " + ", ".join(sorted(TENSOR_METHODS)) + " or a function form")
        if len(owners) > 1:
            self.emit(codes.AMBIGUOUS_LAYER, f"`{callee.qualname}` is the type of several init layers ("
                      + ", ".join(f"${o}" for o in owners) + ")", callee.span,
                      label="which one?", help=f"call it as `${owners[0]}(...)`")

    def targets(self) -> None:
        init, fwd = self.init, self.fwd
        if init is not None and init.item.target is not None:
            for n in init.item.target:
                for v in node_vars(n):
                    if v.name in self.init_src_vars or v.name == "_":
                        continue
                    if v.name in self.fwd_src_vars:
                        self.emit(codes.INIT_USES_FORWARD,
                                  f"init target uses `${v.name}`, bound only by the forward pattern", v.span,
                                  label="bound in forward",
                                  help="its source text is copied into __init__; prefer an init-source variable")
                    else:
                        self.ck.unbound(v, "init")
        if fwd is not None and fwd.item.target is not None:
            visible = self.fwd_src_vars | self.init_src_vars | self.init_targets
            for n in fwd.item.target:
                for v in node_vars(n):
                    if v.name not in visible and v.name != "_":
                        self.ck.unbound(v, "forward")

    def constraints(self) -> None:
        """`where` / `when` / `params` name bound variables."""
        r, all_src = self.r, self.all_src
        for w in r.of(S.Where):
            for c in w.constraints:
                if c.var.name not in all_src:
                    self.emit(codes.CONSTRAINT_UNKNOWN, f"`where` constrains `${c.var.name}`, which no source binds",
                              c.var.span, label="unknown variable", help=_suggest(c.var.name, all_src))
                self.dotted_values(c)
        for w in r.of(S.When):
            for v in vars_in(w.cond):
                if v.name not in all_src:
                    self.emit(codes.CONSTRAINT_UNKNOWN, f"`when` names `${v.name}`, which no source binds",
                              v.span, label="unknown variable", help=_suggest(v.name, all_src))
        layer_vars = self.init_src_vars | self.init_targets
        for p in r.of(S.Params):
            for m in p.maps:
                for ref, role in ((m.target, "target"), (m.source, "source")):
                    if ref.var.name not in layer_vars:
                        self.emit(codes.PARAMS_UNKNOWN,
                                  f"params {role} `${ref.var.name}` is not an init variable", ref.var.span,
                                  label="unknown variable", help=_suggest(ref.var.name, layer_vars))

    def dotted_values(self, c) -> None:
        """ADR211: a dotted constant needs a dot, and `==` / `in` (by spelling)."""
        for v in c.values:
            if not isinstance(v, S.Name):
                continue
            if "." not in v.qualname:
                self.emit(codes.BAD_DOTTED, f"`{v.qualname}` in a `where` constraint is a bare name",
                          v.span, label="not a constant",
                          help=f"write the qualified name as sources spell it (e.g. `torch.{v.qualname}`), "
                               "or a literal (a string: `\"...\"`)")
            elif c.op in ("!=", "not in"):
                self.emit(codes.BAD_DOTTED, f"`${c.var.name} {c.op}` a dotted constant cannot be decided",
                          v.span, label="matched by spelling",
                          help="another spelling of the same value would pass: list the accepted "
                               "spellings with `in (...)`")

    def uses(self) -> Counter:
        r = self.r
        uses: Counter = Counter()
        for sec in (self.init, self.fwd):
            if sec is None:
                continue
            for n in list(sec.item.source) + list(sec.item.target or ()):
                uses.update(v.name for v in node_vars(n))
        for w in r.of(S.Where):
            uses.update(c.var.name for c in w.constraints)
        for w in r.of(S.When):
            uses.update(v.name for v in vars_in(w.cond))
        for p in r.of(S.Params):
            for m in p.maps:
                uses.update((m.target.var.name, m.source.var.name))
        return uses

    def unused(self, unlinked: set[str]) -> None:
        """Source variables used nowhere.

        No "never used" beside an error that already concerns the variable
        (`$nrom(...)` calling no layer), nor for the one unused variable of an
        item whose target names an unbound one: that is most likely the same
        variable misspelt, and the error's help says so.
        """
        uses = self.uses()
        out = self.ck.out
        blamed = {d.span for d in out if d.is_error}
        for sec in (self.init, self.fwd):
            if sec is None or sec.item.target is None:
                continue  # detect-only items bind freely
            unused, reported = [], set()
            for n in sec.item.source:
                for v in node_vars(n):
                    if uses[v.name] <= 1 and not v.name.startswith("_") and v.name not in reported \
                            and v.name not in unlinked:
                        reported.add(v.name)
                        if v.span not in blamed:
                            unused.append(v)
            unbound = [i for i, d in enumerate(out)
                       if d.code == codes.UNBOUND_TARGET and d.message.endswith(f" in {sec.kind} target")]
            if len(unused) == 1 and unbound:
                for i in unbound:
                    out[i] = dataclasses.replace(
                        out[i], help=f"{out[i].help}; `${unused[0].name}` is bound in the source "
                                     f"but used nowhere: a misspelling?")
                continue
            for v in unused:
                self.emit(codes.UNUSED_VAR, f"variable `${v.name}` is never used", v.span,
                          label="bound here only",
                          help=f"use it, or write `$_{v.name}` to ignore it on purpose")


class _ClassItemChecks(_Checks):
    """A class item: its init layers, its forward expression and its target."""

    def __init__(self, ck: _RuleChecker, shapes: _ShapeChecks) -> None:
        super().__init__(ck)
        self.shapes = shapes

    def run(self, c: S.ClassItem, mixed: bool) -> None:
        if mixed:
            self.emit(codes.CLASS_MIXED, f"rule `{self.r.name}` has a class item and init/forward items",
                      c.span, label="class item here", help="put the class item in a rule of its own")
        init_vars: dict[str, S.Var] = {}
        for n in c.init or ():
            self.shapes.node_shape(n, "init", source=True)
            for v in getattr(n, "outputs", ()):
                init_vars.setdefault(v.name, v)
        if not c.forward:
            self.emit(codes.EMPTY_PATTERN, "empty class forward pattern", c.forward_span or c.span,
                      label="matches nothing", help="write the computation forward performs")
            return
        defined: dict[str, S.Var] = {}
        for v in c.inputs:
            if v.name in defined:
                self.emit(codes.REBOUND_VAR, f"forward parameter `${v.name}` named twice", v.span, label="again here")
            defined[v.name] = v
        for v in init_vars:
            defined.setdefault(v, init_vars[v])
        used: Counter = Counter()
        produced: list[S.Var] = []
        for n in c.forward:
            if not self.forward_node(n, init_vars):
                continue
            for v in vars_in(n.expr):
                used[v.name] += 1
                defined.setdefault(v.name, v)  # free variables bind what they meet
            out = n.outputs[0]
            if out.name in defined and out.name != "_":
                self.emit(codes.REBOUND_VAR, f"variable `${out.name}` is bound twice", out.span,
                          label="second definition", extra=(Label(defined[out.name].span, "first definition"),),
                          help="use a new variable for this output")
            defined[out.name] = out
            produced.append(out)
        for out in produced[:-1]:
            if used[out.name] == 0:
                self.emit(codes.CLASS_RESULT, f"`${out.name}` is computed but no later node uses it", out.span,
                          label="dangling output",
                          help="the pattern is one expression: its last node's output is what forward returns")
        for v in c.scalars:
            if v.name not in defined:
                self.emit(codes.CONSTRAINT_UNKNOWN, f"`scalar` names `${v.name}`, which the pattern does not bind",
                          v.span, label="unknown variable", help=_suggest(v.name, defined))
        if c.target is not None:
            self.target(c, set(defined), produced[-1].name if produced else None)
        self.ck.class_vars = set(defined)

    def forward_node(self, n, init_vars: dict[str, S.Var]) -> bool:
        """Check one node of the class's forward pattern; False when it is
        not a computation with one output (then its variables are not read)."""
        if isinstance(n, S.Wildcard) or not n.outputs or len(n.outputs) != 1:
            self.emit(codes.CLASS_NODE, "a class forward node must be an expression with one output `-> $v`",
                      n.span, label="not allowed here")
            return False
        e = n.expr
        if not isinstance(e, (S.Call, S.BinOp, S.UnaryOp, S.AttrRef)):
            self.emit(codes.CLASS_NODE, "a class forward node must be a call, a method, an attribute read "
                      "or a tensor op", n.span, label="not a computation")
            return False
        term = self.shapes.term
        if isinstance(e, S.Call):
            if isinstance(e.callee, S.Subscript):
                self.emit(codes.CLASS_NODE, "a lookup call in a class forward pattern", n.span,
                          label="bind the looked-up layer in `init` and call it as `$layer(...)`")
                return False
            if isinstance(e.callee, S.Var) and e.callee.name not in init_vars:
                self.emit(codes.UNKNOWN_LAYER, f"forward calls layer `${e.callee.name}`, but no init node binds it",
                          e.callee.span, label="not an init layer",
                          help=f"bind it in the class's init pattern (`torch.nn.Linear(...) -> ${e.callee.name}`)")
            for a in e.args:
                if a.rest:
                    self.emit(codes.CLASS_NODE, "`...` in a class forward pattern", a.span,
                              label="the match covers every argument", help="list the arguments")
                elif not isinstance(a.value, (S.Var, S.Const, S.Name)):
                    term(a.value, True, where="argument", allow_expr=False)
        elif isinstance(e, S.BinOp):
            for operand in (e.left, e.right):
                term(operand, True, where="operand", allow_expr=False)
        elif isinstance(e, S.UnaryOp):
            term(e.operand, True, where="operand", allow_expr=False)
        return True

    def target(self, c: S.ClassItem, tdefined: set[str], result: str | None) -> None:
        for n in c.target:
            self.shapes.node_shape(n, "forward", source=False)
            for v in (vars_in(n.expr) if isinstance(n, S.Node) else []):
                if v.name not in tdefined:
                    self.ck.unbound(v, "forward")
            for v in getattr(n, "outputs", ()):
                tdefined.add(v.name)
        outs = {v.name for n in c.target for v in getattr(n, "outputs", ())}
        if result is not None and result not in outs:
            self.emit(codes.CLASS_RESULT, f"the class target does not compute `${result}`", c.target_span,
                      label=f"`${result}` is what forward returns",
                      help=f"end the target with a node `... -> ${result}`")


def _operands(n) -> list[S.Var]:
    """The variables a node reads (a layer call's callee variable excluded)."""
    e = n.expr
    if isinstance(e, S.Call):
        return [v for a in e.args if a.value is not None for v in vars_in(a.value)]
    return vars_in(e)


class _OptionalChecks(_Checks):
    """Optional forward nodes (`... optional when $m is not None`, ADR160)."""

    def run(self, init, fwd) -> None:
        others = [(init, "an init item")] + [(c, "a class item") for c in self.r.of(S.ClassItem)]
        for sec, where in others:
            if sec is None:
                continue
            nodes = (sec.item.source + (sec.item.target or ())) if where == "an init item" else \
                (tuple(sec.init or ()) + tuple(sec.forward) + tuple(sec.target or ()))
            for n in nodes:
                if getattr(n, "optional", None) is not None:
                    self.emit(codes.OPTIONAL_MISUSE, f"an optional node in {where}", n.span,
                              label="only forward items have optional nodes", help="remove `optional when ...`")
        if fwd is None:
            return
        src = fwd.item.source
        optional = [i for i, n in enumerate(src) if getattr(n, "optional", None) is not None]
        for i in optional[1:]:
            self.emit(codes.OPTIONAL_MISUSE, "a source pattern has one optional node at most", src[i].span,
                      label="second optional node", help="write a second rule for the other one")
        if not optional:
            for n in fwd.item.target or ():
                if getattr(n, "optional", None) is not None:
                    self.emit(codes.OPTIONAL_MISUSE, "an optional target node without an optional source node",
                              n.span, label="no source node is optional", help="remove `optional when ...`")
            return
        opt = src[optional[0]]
        if self.source_node(src, optional[0]):
            self.target(fwd.item.target or (), opt)

    def source_node(self, src, k: int) -> bool:
        n = src[k]
        m = n.optional.name
        bad = None
        earlier = {v.name for x in src[:k] for v in x.outputs}
        later = {v.name for x in src[k + 1:] for v in node_vars(x) if v not in x.outputs}
        operands = [v.name for v in _operands(n)]
        init = self.r.section("init")
        bound_elsewhere = {v.name for x in src if x is not n for v in node_vars(x)}
        bound_elsewhere |= {v.name for x in (init.item.source if init else ()) for v in node_vars(x)}
        if len(n.outputs) != 1:
            bad = "it must bind one output"
        elif m not in operands:
            bad = f"`${m}` is not an operand of the node"
        elif m in bound_elsewhere:
            bad = f"`${m}` is bound by another source node too"
        elif len([v for v in operands if v in earlier]) != 1:
            bad = "exactly one operand must be the output of an earlier source node (the value that flows on)"
        elif n.outputs[0].name not in later:
            bad = f"its output `${n.outputs[0].name}` is read by no later source node"
        if bad:
            self.emit(codes.OPTIONAL_MISUSE, f"invalid optional source node: {bad}", n.span,
                      label="optional node", help="see docs/adr-language.md, \"Optional nodes\"")
        return bad is None

    def target(self, tgt, opt) -> None:
        only = {v.name for v in _operands(opt)} - {v.name for x in self.r.section("forward").item.source
                                                   if x is not opt for v in node_vars(x)}
        init = self.r.section("init")
        only -= {v.name for x in (init.item.source if init else ()) for v in node_vars(x)}
        for i, n in enumerate(tgt):
            if getattr(n, "optional", None) is not None:
                if i == len(tgt) - 1:
                    self.emit(codes.OPTIONAL_MISUSE, "the last target node cannot be optional: it computes the "
                              "result on every path", n.span, label="optional target node",
                              help="remove `optional when ...` from it")
                elif n.optional.name != opt.optional.name:
                    self.emit(codes.OPTIONAL_MISUSE, f"an optional target node must be optional on "
                              f"`${opt.optional.name}`, as the source node", n.span,
                              label="optional target node", help="match the source's optional node")
                continue
            for v in _operands(n):
                if v.name in only:
                    self.emit(codes.OPTIONAL_MISUSE, f"`${v.name}` is bound only by the optional source node; "
                              f"it may be used only in optional target nodes", v.span,
                              label="None where the node is absent",
                              help=f"compute it in a target node `... -> ${opt.outputs[0].name} optional when "
                                   f"${opt.optional.name} is not None`")


class _InnerChecks(_Checks):
    """`option inner = "$v[0]"`: `$v` is an init layer that an init target
    node binds again and takes as an argument, the original constructor call
    embedded in the new layer (ADR121)."""

    def run(self, init) -> None:
        for o in self.r.of(S.Option):
            entries = parse_inner(o.value.value) if o.name == "inner" else None
            for var in entries or ():
                why = self.why_not(init, var)
                if why is not None:
                    self.emit(codes.INNER_MISUSE, f"`option inner` names `${var}`, {why}", o.value.span,
                              label="no original layer inside the new one",
                              help="name a layer the init target rebuilds around itself, e.g. "
                                   "`Fused($conv, $bn) -> $conv` with `option inner = \"$conv[0]\"`")

    @staticmethod
    def why_not(init, var: str) -> str | None:
        if init is None or init.item.target is None:
            return "but the rule has no init target"
        if not any(out.name == var for n in init.item.source for out in n.outputs):
            return "which the init source does not bind"
        rebinding = [n for n in init.item.target if any(out.name == var for out in n.outputs)]
        if not rebinding:
            return "which the init target does not bind again (the layer is removed, not kept)"
        n = rebinding[0]
        if len(n.outputs) != 1 or not isinstance(n.expr, S.Call) or not any(
                isinstance(a.value, S.Var) and a.value.name == var and not a.rest for a in n.expr.args):
            return f"but the target node that binds it again does not take `${var}` itself as an argument"
        return None


class _NeedsChecks(_Checks):
    """What the kernel dispatch needs at run time: `requires ... on`,
    `option check`, `fallback`."""

    def run(self, init, fwd) -> None:
        r = self.r
        bound = set(self.ck.class_vars)
        for sec in (init, fwd):
            if sec is not None:
                bound |= {v.name for n in sec.item.source for v in node_vars(n)}
        reqs = r.of(S.RuleRequires)
        for q in reqs:
            if q.package.lower().replace("_", "-") not in self.ck.packages:
                self.emit(codes.REQUIRES_UNKNOWN, f"rule requires `{q.package}`, which the pack does not require",
                          q.package_span, label="not in the pack's `requires`",
                          help=f'add `requires {q.package} install "<how to install it>"` at the top of the file')
            if q.device is not None and q.device not in DEVICES:
                self.emit(codes.BAD_DEVICE, f"unknown device `{q.device}`", q.device_span,
                          label="expected " + " or ".join(DEVICES))
            if q.var is not None and q.var.name not in bound:
                self.emit(codes.CONSTRAINT_UNKNOWN, f"`requires ... on` names `${q.var.name}`, which no source binds",
                          q.var.span, label="unknown variable", help=_suggest(q.var.name, bound))
        for o in r.of(S.Option):
            if o.name in ("check", "rows") and isinstance(o.value.value, str):
                for name in CHECK_VAR.findall(o.value.value):
                    if name not in bound:
                        self.emit(codes.CONSTRAINT_UNKNOWN, f"`option {o.name}` names `${name}`, which no source binds",
                                  o.value.span, label="unknown variable", help=_suggest(name, bound))
                if not r.of(S.Fallback):
                    self.emit(codes.BAD_OPTION, f"`option {o.name}` without `fallback original`", o.value.span,
                              label="it shapes the kernel dispatch", help="add `requires ...` and `fallback original`")
        self.guarded_forward(init, fwd, reqs)
        for f in r.of(S.Fallback):
            if f.kind != "original":
                self.emit(codes.BAD_FALLBACK, f"unknown fallback `{f.kind}`", f.span, label="expected `original`")
            elif not reqs:
                self.emit(codes.BAD_FALLBACK, "`fallback` without a `requires` clause in the rule", f.span,
                          label="nothing to check at run time",
                          help="say what the kernel needs: `requires <package> [device cuda on $x]`")
            elif fwd is not None and fwd.item.target is not None and init is None and len(fwd.item.target) != 1:
                self.emit(codes.BAD_FALLBACK, "`fallback` on a forward item whose target has several nodes",
                          f.span, label="cannot guard per call",
                          help="a per-call fallback needs a one-node forward target (a dispatch helper)")

    def guarded_forward(self, init, fwd, reqs) -> None:
        """A run-time choice made for `__init__` (`when`, or `fallback original`
        with an init target: per construction) keeps the old layers only in
        the `else` branch, so the rule's forward must stay as it is: `dslc
        apply` refuses every match of such a rule (S305)."""
        if fwd is None or fwd.item.target is None or fwd.item.target == fwd.item.source:
            return
        guard = self.r.of(S.When)[:1]
        if not guard and reqs and init is not None and init.item.target is not None:
            guard = [f for f in self.r.of(S.Fallback) if f.kind == "original"][:1]
        if not guard:
            return
        g = guard[0]
        what = "`when`" if isinstance(g, S.When) else "`fallback original` with an init item (a per-construction choice)"
        self.emit(codes.GUARDED_FORWARD, f"{what} guards `__init__` only, but the forward item changes code",
                  g.span, label="a run-time choice made in `__init__`",
                  extra=[Label(fwd.item.target_span or fwd.span, "this forward target differs from its source")]
                  if (fwd.item.target_span or fwd.span) is not None else (),
                  notes=("the old layers live only in the `else` branch, so `dslc apply` refuses every match "
                         "of this rule (S305)",),
                  help="leave forward unchanged (`=> _`, or a target equal to its source), or choose per call: "
                       "a one-node forward item with `fallback original` and no init target")


class _KeepChecks(_Checks):
    """`keep $v, ...`: each an intermediate of a forward item that rewrites
    code (the output of a source node other than the last), on a rule that
    makes no other run-time choice (`when`, `fallback`)."""

    def run(self, fwd) -> None:
        r = self.r
        for k in r.of(S.Keep):
            if fwd is None or fwd.item.target is None or fwd.item.target == fwd.item.source:
                self.emit(codes.KEEP_MISUSE, "`keep` on a rule without a forward rewrite", k.span,
                          label="nothing to keep", help="`keep` names intermediates of a forward item that changes code")
                continue
            for g in [c for c in r.clauses if isinstance(c, (S.When, S.Fallback))][:1]:
                what = "`when`" if isinstance(g, S.When) else "`fallback`"
                self.emit(codes.KEEP_MISUSE, f"`keep` with {what}: the rule would make two run-time choices",
                          k.span, label="a per-call guard on the values' conditions",
                          help=f"drop {what} or `keep`")
            source = fwd.item.source
            inner = {v.name for n in source[:-1] for v in getattr(n, "outputs", ())}
            last = {v.name for v in getattr(source[-1], "outputs", ())} if source else set()
            seen: set[str] = set()
            for v in k.vars:
                if v.name in seen:
                    self.emit(codes.KEEP_MISUSE, f"`${v.name}` kept twice", v.span, label="named again")
                elif v.name in last:
                    self.emit(codes.KEEP_MISUSE, f"`${v.name}` is the result of the chain, not an intermediate",
                              v.span, label="the target computes it", help="keep only values the target removes")
                elif v.name not in inner:
                    self.emit(codes.KEEP_MISUSE, f"`${v.name}` is not the output of a forward source node",
                              v.span, label="not an intermediate of the chain", help=_suggest(v.name, inner))
                seen.add(v.name)
        for o in r.of(S.Option):
            if o.name == "probe" and isinstance(o.value.value, str):
                self.probe(o, fwd)
            if o.name == "shape" and _parse_shape(o.value.value) is not None:
                self.shape(o, fwd)

    def shape(self, o, fwd) -> None:
        """`option shape = "$s = <expr>"`: `$s` is the output of a forward
        source node other than the last; every variable of the expression is
        an input of the forward target (so the data-flow checks keep it)."""
        from dslc.rewrite.kinds.keepchecks import template_vars

        name, template = _parse_shape(o.value.value)
        item = fwd.item if fwd is not None else None
        source = item.source if item is not None and item.target is not None else ()
        inner = {v.name for n in source[:-1] for v in getattr(n, "outputs", ())}
        if name not in inner:
            self.emit(codes.BAD_OPTION, f"`option shape` names `${name}`, which is not an intermediate of the "
                      f"forward source", o.value.span, label="not an intermediate of the chain",
                      help="name a value the rewrite removes")
            return
        used = {v.name for n in item.target for v in node_vars(n)}
        missing = [v for v in template_vars(template) if v not in used]
        if missing:
            self.emit(codes.BAD_OPTION, f"`option shape` reads `${missing[0]}`, which the forward target does not read",
                      o.value.span, label="not an input of the target",
                      help="state the size with the target's inputs (the data-flow checks keep them unchanged)")

    def probe(self, o, fwd) -> None:
        """`option probe = "$s"`: `$s` is the output of a forward source node
        other than the last that multiplies two tensors (`torch.matmul`,
        `torch.bmm`, `@`): the rewrite keeps that statement on empty slices."""
        name = o.value.value.strip()[1:]
        source = fwd.item.source if fwd is not None and fwd.item.target is not None else ()
        node = next((n for n in source[:-1] if any(v.name == name for v in getattr(n, "outputs", ()))), None)
        e = getattr(node, "expr", None)
        product = (isinstance(e, S.BinOp) and e.op == "@") or (
            isinstance(e, S.Call) and isinstance(e.callee, S.Name) and e.callee.qualname in ("torch.matmul", "torch.bmm")
            and len(e.args) == 2 and all(a.name is None and not a.rest for a in e.args))
        if not product:
            self.emit(codes.BAD_OPTION, f"`option probe` names `${name}`, which is not the output of a product "
                      f"(`torch.matmul`, `torch.bmm`, `@`) of the forward source other than the last node",
                      o.value.span, label="not a product of the chain",
                      help="name the q k^T product whose dtype and device the code reads")


# ---------------------------------------------------------------------------
# ADR5xx: names and types (`dslc check` only)


def check_semantics(files: list[S.File]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for f in files:
        for r in f.rules:
            diags = _Semantics(r).run()
            out.extend(_allowed(r, diags))
    return out


def _names_in(e):
    for x in _walk_expr(e):
        if isinstance(x, S.Name):
            yield x
        elif isinstance(x, S.Subscript) and isinstance(x.container, S.Name):
            yield x.container


def _const_kind(v) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return None


class _Semantics:
    def __init__(self, rule: S.Rule) -> None:
        self.r = rule
        self.out: list[Diagnostic] = []

    def run(self) -> list[Diagnostic]:
        from dslc.match import names

        seen: set[str] = set()
        items = [s.item for s in self.r.of(S.Section)]
        nodes = [n for it in items for n in list(it.source) + list(it.target or ()) if isinstance(n, S.Node)]
        candidates = [k.qualname for k in self.r.of(S.Kernel)] + [x for n in nodes for x in _names_in(n.expr)]
        for name in candidates:
            q = name.qualname
            if q in seen or "." not in q:
                continue
            seen.add(q)
            if names.exists(q) is False:
                better = names.suggestion(q)
                self.out.append(diag(codes.UNKNOWN_NAME, f"`{q}` does not exist in the installed package",
                                     name.span, label="no such module or name",
                                     help=f"did you mean `{better}`?" if better and better != q else None))
        self.keywords(nodes)
        self.tensors()
        self.params()
        return self.out

    def keywords(self, nodes) -> None:
        from dslc.match import signatures

        for n in nodes:
            for x in _walk_expr(n.expr):
                if not (isinstance(x, S.Call) and isinstance(x.callee, S.Name)):
                    continue
                sig = signatures.signature(x.callee.qualname)
                if sig is None:
                    continue
                defaults = {p.name: p.default for p in sig.params}
                for a in x.args:
                    if a.name is None or not isinstance(a.value, S.Const) or a.name not in defaults:
                        continue
                    d = defaults[a.name]
                    if d is None or not d.is_const or d.const is None or a.value.value is None:
                        continue
                    want, got = _const_kind(d.const), _const_kind(a.value.value)
                    if want is None or got is None or want == got or {want, got} == {"bool", "number"}:
                        continue
                    self.out.append(diag(
                        codes.KEYWORD_TYPE,
                        f"`{a.name}={pretty_const(a.value.value)}` is a {got}, but `{x.callee.qualname}` "
                        f"defaults `{a.name}` to {pretty_const(d.const)} (a {want})",
                        a.value.span, label=f"expected a {want}"))

    def tensors(self) -> None:
        fwd = self.r.section("forward")
        if fwd is None:
            return
        tensor: set[str] = set()
        for n in fwd.item.source:
            if not isinstance(n, S.Node):
                continue
            tensor.update(v.name for v in n.outputs)
            for x in _walk_expr(n.expr):
                if isinstance(x, S.BinOp):
                    tensor.update(v.name for v in (x.left, x.right) if isinstance(v, S.Var))
                elif isinstance(x, S.UnaryOp) and isinstance(x.operand, S.Var):
                    tensor.add(x.operand.name)
        for w in self.r.of(S.Where):
            for c in w.constraints:
                if c.var.name in tensor and any(isinstance(getattr(v, "value", None), str) for v in c.values):
                    self.out.append(diag(codes.TENSOR_VS_STRING,
                                         f"`${c.var.name}` holds a tensor and is compared with a string",
                                         c.span, label="never holds",
                                         help="constrain a layer argument (an init variable) instead"))

    def params(self) -> None:
        from dslc.match import names

        types: dict[str, str] = {}
        for sec in self.r.of(S.Section):
            if sec.kind != "init":
                continue
            for n in list(sec.item.source) + list(sec.item.target or ()):
                if isinstance(n, S.Node) and isinstance(n.expr, S.Call) and isinstance(n.expr.callee, S.Name):
                    for v in n.outputs:
                        types.setdefault(v.name, n.expr.callee.qualname)
        for p in self.r.of(S.Params):
            for m in p.maps:
                for ref in (m.target, m.source):
                    qual = types.get(ref.var.name)
                    if qual is None or "." in ref.path:
                        continue
                    have = names.layer_parameters(qual)
                    if have is not None and ref.path not in have:
                        self.out.append(diag(codes.NO_SUCH_PARAM,
                                             f"`{qual}` has no parameter `{ref.path}`",
                                             ref.span, label=f"`${ref.var.name}` is a {qual.rsplit('.', 1)[-1]}",
                                             help=f"its parameters and buffers: {', '.join(sorted(have))}"))
