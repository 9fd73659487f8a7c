"""The canonical printer: syntax tree -> `.adr` text.

`parse(print(tree)) == tree` for every tree the parser can build (spans
aside).  Expressions are printed with the fewest parentheses that keep the
tree: an operand is parenthesised when its precedence is lower than its
position needs (the right operand of a left-associative operator needs a
strictly higher one).  Recursion depth is bounded by `parser.MAX_DEPTH`.
"""

from __future__ import annotations

import json

from dslc.lang import syntax as S

INDENT = "  "

_EXPR_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2}
_UNARY_PREC = 3
_ATOM_PREC = 4


def const(value: object) -> str:
    if value is True:
        return "True"
    if value is False:
        return "False"
    if value is None:
        return "None"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"not a constant: {value!r}")


def _prec(e) -> int:
    if isinstance(e, S.BinOp):
        return _EXPR_PREC[e.op]
    if isinstance(e, S.UnaryOp):
        return _UNARY_PREC
    if isinstance(e, S.Const) and isinstance(e.value, (int, float)) \
            and not isinstance(e.value, bool) and str(e.value).startswith("-"):
        return _UNARY_PREC  # a negative number reads as a unary minus
    return _ATOM_PREC


def expr(e, need: int = 0) -> str:
    text = _expr(e)
    return f"({text})" if _prec(e) < need else text


def _expr(e) -> str:
    if isinstance(e, S.Var):
        return f"${e.name}"
    if isinstance(e, S.AttrRef):
        return f"${e.var.name}.{e.path}"
    if isinstance(e, S.Const):
        return const(e.value)
    if isinstance(e, S.Name):
        return e.qualname
    if isinstance(e, S.BinOp):
        p = _EXPR_PREC[e.op]
        return f"{expr(e.left, p)} {e.op} {expr(e.right, p + 1)}"
    if isinstance(e, S.UnaryOp):
        operand = e.operand
        # `-(-1)`: a negative constant under a minus keeps its parentheses.
        need = _ATOM_PREC if isinstance(operand, S.Const) else _UNARY_PREC
        return f"{e.op}{expr(operand, need)}"
    if isinstance(e, S.Subscript):
        return f"{e.container.qualname}[{expr(e.key)}]"
    if isinstance(e, S.Call):
        return f"{_expr(e.callee)}({', '.join(arg(a) for a in e.args)})"
    raise TypeError(f"not an expression: {e!r}")


def arg(a: S.Arg) -> str:
    if a.rest:
        return "..."
    if a.name is not None:
        return f"{a.name}={expr(a.value)}"
    return expr(a.value)


def node(n) -> str:
    outs = ", ".join(f"${v.name}" for v in n.outputs)
    head = "*" if isinstance(n, S.Wildcard) else expr(n.expr)
    opt = getattr(n, "optional", None)
    tail = f" optional when ${opt.name} is not None" if opt is not None else ""
    return f"{head} -> {outs}{tail}" if outs else head


def block(nodes, indent: str) -> str:
    if not nodes:
        return "{ }"
    inner = indent + INDENT
    return "{\n" + "".join(f"{inner}{node(n)};\n" for n in nodes) + indent + "}"


def item(it: S.Item, indent: str) -> str:
    target = "_" if it.target is None else block(it.target, indent)
    return f"{block(it.source, indent)} => {target}"


# -- conditions -------------------------------------------------------------

_COND_PREC = {"or": 1, "and": 2}
_NOT_PREC = 3
_CMP_PREC = 4
_CATOM_PREC = 5


def _cprec(c) -> int:
    if isinstance(c, S.BoolOp):
        return _COND_PREC[c.op]
    if isinstance(c, S.Not):
        return _NOT_PREC
    if isinstance(c, S.Compare):
        return _CMP_PREC
    return _CATOM_PREC


def cond(c, need: int = 0) -> str:
    text = _cond(c)
    return f"({text})" if _cprec(c) < need else text


def _cond(c) -> str:
    if isinstance(c, S.BoolOp):
        p = _COND_PREC[c.op]
        return f"{cond(c.left, p)} {c.op} {cond(c.right, p + 1)}"
    if isinstance(c, S.Not):
        return f"not {cond(c.operand, _NOT_PREC)}"
    if isinstance(c, S.Compare):
        return f"{cond(c.left, _CATOM_PREC)} {c.op} {cond(c.right, _CATOM_PREC)}"
    if isinstance(c, S.TupleLit):
        return tuple_lit(c.items)
    return _expr(c)


def tuple_lit(items) -> str:
    if len(items) == 1:
        return f"({const(items[0].value)},)"
    return "(" + ", ".join(const(i.value) for i in items) + ")"


def constraint(c: S.Constraint) -> str:
    if c.op in ("==", "!="):
        return f"${c.var.name} {c.op} {_where_value(c.values[0])}"
    return f"${c.var.name} {c.op} " + "(" + ", ".join(_where_value(i) for i in c.values) + ")"


def _where_value(v) -> str:
    return v.qualname if isinstance(v, S.Name) else const(v.value)


# -- clauses, rules, files ----------------------------------------------------


def clause(c, indent: str) -> str:
    if isinstance(c, S.Kernel):
        return f"kernel {c.qualname.qualname}"
    if isinstance(c, S.Exact):
        return "exact deterministic" if c.deterministic else "exact"
    if isinstance(c, S.Tolerance):
        parts = ["tolerance"] + [f"{a.name}={const(a.value.value)}" for a in c.args]
        if c.deterministic:
            parts.append("deterministic")
        return " ".join(parts)
    if isinstance(c, S.Section):
        return f"{c.kind} {item(c.item, indent)}"
    if isinstance(c, S.Where):
        return "where " + ", ".join(constraint(x) for x in c.constraints)
    if isinstance(c, S.When):
        return f"when {cond(c.cond)}"
    if isinstance(c, S.Params):
        if not c.maps:
            return "params { }"
        inner = indent + INDENT
        body = "".join(f"{inner}{_expr(m.target)} <- {_expr(m.source)};\n" for m in c.maps)
        return "params {\n" + body + indent + "}"
    if isinstance(c, S.Option):
        return f"option {c.name} = {const(c.value.value)}"
    if isinstance(c, S.Note):
        return f"note {const(c.text)}"
    if isinstance(c, S.Safety):
        return c.kind
    if isinstance(c, S.DtypeTolerance):
        groups = ["; ".join(f"{d.dtype} " + " ".join(f"{a.name}={const(a.value.value)}" for a in d.args)
                            for d in c.dtypes)]
        return "tolerance " + groups[0] + (" deterministic" if c.deterministic else "")
    if isinstance(c, S.RuleRequires):
        dev = f" device {c.device} on ${c.var.name}" if c.device is not None and c.var is not None else ""
        return f"requires {c.package}{dev}"
    if isinstance(c, S.Fallback):
        return f"fallback {c.kind}"
    if isinstance(c, S.Keep):
        return "keep " + ", ".join(f"${v.name}" for v in c.vars)
    if isinstance(c, S.ClassItem):
        inner = indent + INDENT
        parts = []
        if c.init is not None:
            parts.append(f"{inner}init {block(c.init, inner)}\n")
        if c.scalars:
            parts.append(f"{inner}scalar " + ", ".join(f"${v.name}" for v in c.scalars) + ";\n")
        ins = ", ".join(f"${v.name}" for v in c.inputs)
        parts.append(f"{inner}forward({ins}) {block(c.forward, inner)}\n")
        target = "_" if c.target is None else block(c.target, indent)
        return "class {\n" + "".join(parts) + indent + "} => " + target
    raise TypeError(f"not a clause: {c!r}")


def rule(r: S.Rule) -> str:
    body = "".join(f"{INDENT}{clause(c, INDENT)}\n" for c in r.clauses)
    return f"rule {r.name} {const(r.description)} {{\n{body}}}\n"


def requires(q: S.Requires) -> str:
    parts = ["requires", q.package]
    if q.version is not None:
        parts.append(const(q.version.value))
    if q.module is not None:
        parts += ["module", q.module.qualname]
    if q.install is not None:
        parts += ["install", const(q.install.value)]
    return " ".join(parts)


def file(f: S.File) -> str:
    out = [f"pack {h.name} {const(h.description)}\n" for h in f.headers]
    if f.requires:
        out.append("\n" + "".join(requires(q) + "\n" for q in f.requires))
    for r in f.rules:
        out.append("\n" + rule(r))
    return "".join(out)
