"""What a module's `forward` computes, as one expression graph (class rules).

Rules that recognise a layer by its computation (the `class` item of the
rule language) need the whole data flow of `forward`, not a path of DL
nodes: every tensor method (`x.pow(2)`, `x.mean(-1, keepdim=True)`,
`x.to(torch.float32)`), attribute read (`x.dtype`), operator, function
call and layer call, and which value the function returns.  The paths of
`extract.py` record only the DL nodes (calls of layers and qualified
functions, operators); tensor methods are not nodes there.

`forward_compute(fn, resolve)` builds that graph for a *straight-line*
`forward`: its body is a docstring, assignments to plain names and one final
`return <expr>`.  Anything else (a branch, a loop, an expression statement
such as a logging call, a `*args` parameter, a tuple target, a subscript, a
lambda, ...) gives `Compute(problem=<why>)` and no graph: the computation
cannot then be stated as one expression, so no class rule may claim it.
This is what makes a whole-class match sound: the graph *is* the function.

Nodes (`CNode`), by `op`:
  `input`  a parameter of forward (`name`; `args` empty)
  `const`  a literal (`value`)
  `global` a module-level or qualified name (`name`: qualified where resolved,
           else the spelling), e.g. `torch.float32`
  `self`   `self.<name>` read (a parameter, a buffer, a float such as eps)
  `layer`  `self.<name>(args)` (a call of a submodule or a method)
  `call`   a call of a qualified function (`name`: `torch.rsqrt`)
  `method` `recv.<name>(args)`: `args[0]` is the receiver
  `attr`   `recv.<name>`: `args[0]` is the receiver (`x.dtype`)
  `binop`  `a <op> b` (`name`: `+ - * / @ ** // %`)
  `unary`  `-a` / `+a` (`name`: the operator)
Arguments are node indices; keyword arguments are (name, index) pairs.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable

from .model import NOT_CONST
from .nodetext import node_text


@dataclass(frozen=True, slots=True)
class CNode:
    op: str
    name: str = ""
    args: tuple[int, ...] = ()
    kwargs: tuple[tuple[str, int], ...] = ()
    value: object = NOT_CONST
    text: str = ""  # canonical source text of the expression (ast.unparse)
    lines: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class Compute:
    """The graph of a straight-line forward; `problem` says why there is none."""

    inputs: tuple[str, ...] = ()
    nodes: tuple[CNode, ...] = ()
    output: int = -1
    # 1-based line span of the forward `def` and of its body (for the rewriter)
    lines: tuple[int, int] = (0, 0)
    problem: str | None = None
    # every operation forward spells, straight-line or not (`forward_ops`):
    # which rules' distinctive operations a class holds, for the near misses
    ops: tuple[tuple[str, str], ...] = ()


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@",
           ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%"}
_UNARY = {ast.USub: "-", ast.UAdd: "+"}


class _Unsupported(Exception):
    pass


def _dotted(e: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(e, ast.Attribute):
        parts.append(e.attr)
        e = e.value
    if isinstance(e, ast.Name):
        parts.append(e.id)
        return parts[::-1]
    return None


def forward_compute(fn: ast.FunctionDef, resolve: Callable[[list[str]], str | None]) -> Compute:
    """The expression graph of `fn` (see the module docstring); never raises."""
    lines = (fn.lineno, fn.end_lineno or fn.lineno)
    ops = forward_ops(fn, resolve)
    problem = _signature_problem(fn)
    if problem is not None:
        return Compute(lines=lines, problem=problem, ops=ops)
    inputs = tuple(p.arg for p in fn.args.args[1:])
    graph = _Graph(resolve, inputs, lines)
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    try:
        if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
            raise _Unsupported("forward does not end with `return <expression>`")
        for stmt in body[:-1]:
            target, value = _assignment(stmt)
            graph.env[target] = graph.expr(value)
        output = graph.expr(body[-1].value)
    except _Unsupported as exc:
        return Compute(inputs, (), -1, lines, problem=str(exc), ops=ops)
    except RecursionError:
        return Compute(inputs, (), -1, lines, problem="expression nested too deeply", ops=ops)
    return Compute(inputs, tuple(graph.nodes), output, lines, None, ops)


def forward_ops(fn: ast.AST, resolve: Callable[[list[str]], str | None]) -> tuple[tuple[str, str], ...]:
    """The operations `fn` spells anywhere in its body, as (op, name) pairs
    in the node vocabulary above: ("binop", "*"), ("method", "pow"),
    ("call", "torch.rsqrt"), ("layer", "gate_proj").  A dotted callee whose
    root is a local value (a parameter, an assigned name) is a method."""
    local = _locals(fn)
    out: dict[tuple[str, str], None] = {}
    for e in ast.walk(fn):
        if isinstance(e, ast.BinOp) and type(e.op) in _BINOPS:
            out[("binop", _BINOPS[type(e.op)])] = None
        elif isinstance(e, ast.Call):
            f = e.func
            parts = _dotted(f)
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                out[("layer", f.attr)] = None
            elif parts is not None and parts[0] != "self" and (len(parts) == 1 or parts[0] not in local):
                try:
                    qual = resolve(parts)
                except Exception:  # a name the resolver cannot follow: as written
                    qual = None
                out[("call", qual or ".".join(parts))] = None
            elif isinstance(f, ast.Attribute):
                out[("method", f.attr)] = None
    return tuple(out)


def _locals(fn: ast.AST) -> set[str]:
    """The parameters of `fn` and the names its body assigns."""
    out: set[str] = set()
    args = getattr(fn, "args", None)
    if isinstance(args, ast.arguments):
        out.update(a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs))
        out.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    for n in ast.walk(fn):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
    return out


def _signature_problem(fn: ast.FunctionDef) -> str | None:
    """Why `fn`'s signature rules out a graph, or None."""
    if not isinstance(fn, ast.FunctionDef):
        return "forward is not a plain `def`"
    a = fn.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
        return "forward takes *args, **kwargs or keyword-only parameters"
    params = [p.arg for p in a.args]
    if not params or params[0] != "self":
        return "forward has no `self` parameter"
    if fn.decorator_list:
        return "forward is decorated"
    return None


def _assignment(stmt: ast.stmt) -> tuple[str, ast.expr]:
    """(target, value) of a statement of the straight-line body, or raise."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        target, value = stmt.targets[0].id, stmt.value
    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        target, value = stmt.target.id, stmt.value
    else:
        raise _Unsupported(f"line {stmt.lineno} is not an assignment to one name "
                           f"(forward must be straight-line code)")
    if target == "self":
        raise _Unsupported("`self` is reassigned")
    return target, value


class _Graph:
    """The nodes built so far, and the node each local name holds (`env`)."""

    def __init__(self, resolve: Callable[[list[str]], str | None], inputs: tuple[str, ...], lines: tuple[int, int]):
        self.resolve = resolve
        self.nodes: list[CNode] = []
        self.env: dict[str, int] = {}
        self.seen: dict[tuple, int] = {}
        for name in inputs:
            self.env[name] = len(self.nodes)
            self.nodes.append(CNode("input", name, text=name, lines=lines))

    def add(self, node: CNode) -> int:
        # Pure nodes (operators, attribute reads, constants, names) computed
        # twice from the same operands are one value: `(x - u) ... (x - u)`.
        key = None
        if node.op in ("binop", "unary", "attr", "global", "self") or (
                node.op == "const" and type(node.value) in (int, float, str, bool, type(None))):
            key = (node.op, node.name, node.args, node.kwargs, type(node.value), node.value)
            if key in self.seen:
                return self.seen[key]
        self.nodes.append(node)
        if key is not None:
            self.seen[key] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def expr(self, e: ast.expr) -> int:
        span = (e.lineno, e.end_lineno or e.lineno)
        text = node_text(e)
        env, add, resolve = self.env, self.add, self.resolve
        if isinstance(e, ast.Constant):
            return add(CNode("const", value=e.value, text=text, lines=span))
        if isinstance(e, ast.UnaryOp) and type(e.op) in _UNARY:
            if isinstance(e.operand, ast.Constant) and isinstance(e.operand.value, (int, float)) \
                    and not isinstance(e.operand.value, bool):
                value = -e.operand.value if isinstance(e.op, ast.USub) else e.operand.value
                return add(CNode("const", value=value, text=text, lines=span))
            return add(CNode("unary", _UNARY[type(e.op)], (self.expr(e.operand),), text=text, lines=span))
        if isinstance(e, ast.BinOp) and type(e.op) in _BINOPS:
            left, right = self.expr(e.left), self.expr(e.right)
            return add(CNode("binop", _BINOPS[type(e.op)], (left, right), text=text, lines=span))
        if isinstance(e, ast.Name):
            if e.id in env:
                return env[e.id]
            if e.id == "self":
                raise _Unsupported("`self` is used as a value")
            qual = resolve([e.id])
            return add(CNode("global", qual or e.id, text=text, lines=span))
        if isinstance(e, ast.Attribute):
            if isinstance(e.value, ast.Name) and e.value.id == "self":
                return add(CNode("self", e.attr, text=text, lines=span))
            parts = _dotted(e)
            if parts is not None and parts[0] not in env and parts[0] != "self":
                qual = resolve(parts)
                return add(CNode("global", qual or ".".join(parts), text=text, lines=span))
            return add(CNode("attr", e.attr, (self.expr(e.value),), text=text, lines=span))
        if isinstance(e, ast.Call):
            return self._call(e, text, span)
        raise _Unsupported(f"`{text}` ({type(e).__name__}) is not a tensor expression the analysis follows")

    def _call(self, e: ast.Call, text: str, span: tuple[int, int]) -> int:
        if any(isinstance(x, ast.Starred) for x in e.args) or any(k.arg is None for k in e.keywords):
            raise _Unsupported(f"`{text}` unpacks arguments")
        func = e.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            op, name, recv = "layer", func.attr, ()
        elif isinstance(func, ast.Attribute) and not (
                (parts := _dotted(func)) is not None and parts[0] not in self.env and parts[0] != "self"):
            op, name, recv = "method", func.attr, (self.expr(func.value),)
        else:
            parts = _dotted(func)
            if parts is None:
                raise _Unsupported(f"`{text}` calls a computed callee")
            if parts[0] in self.env:
                raise _Unsupported(f"`{text}` calls a local value")
            op, name, recv = "call", self.resolve(parts) or ".".join(parts), ()
        args = recv + tuple(self.expr(x) for x in e.args)
        kwargs = tuple((k.arg, self.expr(k.value)) for k in e.keywords)
        return self.add(CNode(op, name, args, kwargs, text=text, lines=span))


def reachable(compute: Compute) -> set[int]:
    """Indices of the nodes the output depends on."""
    seen: set[int] = set()
    stack = [compute.output] if compute.output >= 0 else []
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = compute.nodes[i]
        stack.extend(node.args)
        stack.extend(j for _, j in node.kwargs)
    return seen
