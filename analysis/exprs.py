"""Expressions into DL nodes: the actions one expression adds to the paths.

`Expressions.evaluate` walks an expression in evaluation order and returns
its actions: a ("node", Node) for each DL node (a layer, a call of a
qualified name, an operator, a tensor method of `TENSOR_METHODS`), nested
expressions first, each into a fresh `temp_<n>`; an ("inline", ...) for a
helper whose paths are to be spliced in (`inline.py`); a ("fork", ...) for
`a if c else b` whose branches hold a DL call.  It leaves, for the
statement that asked, `replaced` (the sub-expressions that became
temporaries, for reads), `top_consumed` (the whole expression became a DL
node writing the statement's targets) and `last_value` (the expression's
`Value`).  The path builder runs the actions (`paths.py`).
"""

from __future__ import annotations

import ast

from .budget import MAX_INLINE_DEPTH
from .classify import Classifier, walk_no_opaque
from .context import FileContext
from .defuse import is_literal, reads_of, source_span, value_of
from .model import Node, StmtRef, Value
from .names import dotted
from .nodememo import NodeMemo
from .nodetext import node_text
from .pathstate import Frame

BINOPS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@",
    ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
}
_UNARY = {ast.USub: "-", ast.UAdd: "+", ast.Invert: "~"}
# Tensor methods recorded as `call` nodes (type `torch.Tensor.<name>`, the
# receiver as first input) when called on a local name: the steps of an eager
# attention chain (rulepacks/sdpa.adr), and `float` as a whole statement
# (`logits = logits.float()`, between an LM head and its loss: liger.adr's
# fused linear cross-entropy; nested, `f(q.float())`, it stays inside its
# statement; and as the input of a softmax, `F.softmax(s.float(), dim=-1)`:
# the float32 upcast of T5's attention).  `type_as`, as `to`, only on the
# result of a DL call (`F.softmax(s.float(), dim=-1).type_as(s)`).  Other
# tensor methods stay inside `stmt` nodes (reads/writes only).
TENSOR_METHODS = frozenset({"transpose", "masked_fill", "softmax", "matmul", "bmm", "to", "float", "type_as", "type"})
# Functions whose first argument `x.float()` is recorded as a node.
_FLOAT_INPUT_CALLS = frozenset({"torch.nn.functional.softmax", "torch.softmax"})
# Tensor methods recorded only on the result of a DL call.
_ON_CALL_ONLY = frozenset({"to", "type_as", "type"})
# Casts recorded after a softmax in the next statement (`softmax_casts`):
# `p = p.to(v.dtype)` (GPT-Neo) and `p = p.type(v.dtype)` (GPT-2).
_SOFTMAX_CAST_METHODS = frozenset({"to", "type"})

# Sub-expressions whose parts do not run exactly once, in order.
_OPAQUE = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
           ast.IfExp, ast.BoolOp)


class Expressions:
    """Evaluates the expressions of one function's statements (see the module docstring)."""

    def __init__(self, ctx: FileContext, kinds: Classifier):
        self.ctx = ctx
        self.kinds = kinds
        self.temp = 0  # the last `temp_<n>` of the function being walked
        self.float_inputs: set[int] = set()  # ids of `x.float()` that are a softmax's input
        self.replaced: dict = {}
        self.top_consumed = False
        self.last_value: Value | None = None

    def new_temp(self) -> str:
        self.temp += 1
        return f"temp_{self.temp}"

    def result_names(self, outputs, top: bool) -> tuple:
        """The names the value of a top-level or nested expression is bound to:
        the statement's own targets when it is the whole right-hand side
        (the statement is then consumed by the node), else a fresh temporary
        (an expression statement, `outputs == ()`, is consumed as well)."""
        if top and outputs:
            self.top_consumed = True
            return outputs
        if top and outputs == ():
            self.top_consumed = True
        return (self.new_temp(),)

    def evaluate(self, expr, frame: Frame, ref: StmtRef, outputs=None) -> list:
        """Actions for the DL nodes of `expr`, in evaluation order.

        An action is ("node", Node), ("inline", fn, owner, args, kwargs,
        result names, call, key, ref) for a helper to splice in, or ("fork",
        condition, lines, actions if true, actions if false) for `a if c else b`.
        Sets `self.replaced` (id of sub-expression -> temp) for reads, and
        `self.top_consumed` when `expr` itself became a DL node writing
        `outputs`.  `self.last_value` is the Value of `expr`.
        """
        self.replaced = {}
        self.top_consumed = False
        actions: list = []
        self.last_value = self._expr(expr, frame, ref, actions, outputs, top=True)
        return actions

    def _expr(self, e, frame, ref, actions, outputs=None, top=False, need=True) -> Value | None:
        if isinstance(e, ast.Call):
            return self._call(e, frame, ref, actions, outputs, top, need)
        if isinstance(e, ast.BinOp) and type(e.op) in BINOPS:
            if is_literal(e.left) and is_literal(e.right):
                return value_of(e) if need else None
            left = self._expr(e.left, frame, ref, actions)
            right = self._expr(e.right, frame, ref, actions)
            return self._emit(e, Node("op", ref, op=BINOPS[type(e.op)], inputs=(left, right)),
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
        for node in walk_no_opaque(e):
            if isinstance(node, ast.Call) and self.kinds.classify(node, frame) is not None:
                return True
        return False

    def _ifexp(self, e: ast.IfExp, frame, ref, actions, outputs, top) -> Value:
        """`a if c else b` with DL calls in a branch: a split like an `if`
        (a "fork" action); both branches write one result name."""
        self._expr(e.test, frame, ref, actions, need=False)
        outs = self.result_names(outputs, top)
        branches = []
        for branch in (e.body, e.orelse):
            sub: list = []
            saved = self.top_consumed
            self.top_consumed = False
            self._expr(branch, frame, ref, sub, outputs=outs, top=True)
            if not self.top_consumed:
                # a plain value: the result name is assigned from it
                sub.append(("node", Node("stmt", ref, reads=frozenset(reads_of(branch, self.replaced)),
                                         writes=frozenset(outs), inlined_from=frame.inlined_from)))
            self.top_consumed = saved
            branches.append(sub)
        lines = (e.test.lineno, e.test.end_lineno or e.test.lineno)
        actions.append(("fork", node_text(e.test), lines, branches[0], branches[1]))
        if len(outs) == 1:
            self.replaced[id(e)] = outs[0]
            return Value(outs[0], "name")
        return Value(", ".join(outs), "expr")

    def _emit(self, e, node: Node, frame, actions, outputs, top) -> Value:
        """Finish a DL node: outputs, reads/writes, span; record it."""
        outs = self.result_names(outputs, top)
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
            reads |= reads_of(part, self.replaced)
        if node.attr is not None:
            reads |= {"self", "self." + node.attr.split(".")[0]}
        node = Node(node.kind, node.stmt, node.type, node.unresolved, node.op, node.attr, node.inputs,
                    node.kwargs, outs, frozenset(reads), frozenset(outs), frame.inlined_from, source_span(e))
        actions.append(("node", node))
        self.replaced[id(e)] = outs[0] if len(outs) == 1 else None
        if len(outs) != 1:
            self.replaced.pop(id(e))
            return Value(", ".join(outs), "expr")
        return Value(outs[0], "name")

    def _args(self, call: ast.Call, frame, ref, actions):
        args = []
        for a in call.args:
            if isinstance(a, ast.Starred):
                self._expr(a.value, frame, ref, actions)
                args.append(Value(node_text(a), "expr"))
            else:
                args.append(self._expr(a, frame, ref, actions))
        kwargs = []
        for k in call.keywords:
            v = self._expr(k.value, frame, ref, actions)
            kwargs.append((k.arg or "**", v))
        return tuple(args), tuple(kwargs)

    def _call(self, e: ast.Call, frame, ref, actions, outputs, top, need=True) -> Value | None:
        if not top and _same_dtype_cast(e, frame):
            # `x.to(x.dtype)` nested in an expression: `Tensor.to` with the
            # tensor's own dtype returns the tensor itself (no copy, the same
            # autograd node), so its value is `x` (GPT-2's `torch.where(c,
            # s.to(s.dtype), mv)`); the statement still reads `x`
            return value_of(e.func.value) if need else None
        kind = self.kinds.classify(e, frame)
        if kind is None and self._is_tensor_method(e, frame) and (
                e.func.attr != "float" or self._whole_float(e, top) or id(e) in self.float_inputs):
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
            found = self.ctx.find_method(kind[1]) if kind[0] == "method" else (frame.local_funcs[kind[1]], None)
            fn, owner = found
            owner_qual = owner.qualname if owner is not None else frame.owner
            key = (owner_qual, fn.name, id(fn))
            # methods of bases in other files are not inlined: generic library
            # helpers (get_extended_attention_mask) that the emitter cannot edit here
            local_owner = owner is None or owner.scope is self.ctx.scope
            can_inline = (self.ctx.options.inline and frame.depth < MAX_INLINE_DEPTH and local_owner
                          and key not in frame.stack and self.kinds.fn_has_dl(fn, owner, frame))
            args, kwargs = self._args(e, frame, ref, actions)
            if can_inline:
                outs = self.result_names(outputs, top)
                actions.append(("inline", fn, owner_qual, args, kwargs, outs, e, key, ref))
                if len(outs) == 1:
                    self.replaced[id(e)] = outs[0]
                    return Value(outs[0], "name")
                return Value(", ".join(outs), "expr")
            qual = f"{owner_qual}.{fn.name}" if kind[0] == "method" else f"{frame.owner}.{frame.method}.{fn.name}"
            node = Node("call", ref, type=qual, inputs=args, kwargs=kwargs)
            return self._emit(e, node, frame, actions, outputs, top)
        if kind[0] == "layer":
            attr = kind[1]
            args, kwargs = self._args(e, frame, ref, actions)
            typ, unresolved = self.kinds.attr_type(attr)
            node = Node("layer", ref, type=typ, unresolved=unresolved, attr=attr, inputs=args, kwargs=kwargs)
            return self._emit(e, node, frame, actions, outputs, top)
        if kind[0] == "loop":
            attr = kind[1]
            args, kwargs = self._args(e, frame, ref, actions)
            types = {b.type for bs in self.ctx.init_types.values() for b in bs if b.container == attr}
            typ = types.pop() if len(types) == 1 else None
            node = Node("layer", ref, type=typ, unresolved=None if typ else f"self.{attr}[*]", attr=attr,
                        inputs=args, kwargs=kwargs)
            return self._emit(e, node, frame, actions, outputs, top)
        _, qual, func = kind
        if qual is None and (parts := dotted(func)) is not None:
            qual = self.ctx.infer(func, parts, frame)
        spelling = None if qual else node_text(func)
        first = e.args[0] if e.args else None
        if (qual in _FLOAT_INPUT_CALLS and isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute)
                and first.func.attr == "float" and self._whole_float(first, True)):
            self.float_inputs.add(id(first))
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
            # `.to` only on a DL call's result (`F.softmax(..., dtype=torch.float32).to(q.dtype)`)
            # or on a softmax's result in the statement right after it (`p = p.to(v.dtype)`,
            # `softmax_casts`): `x = x.to(torch.float32)` on a name stays a plain statement
            return ((func.attr not in _ON_CALL_ONLY or id(e) in softmax_casts(frame.fn))
                    and recv.id != "self" and recv.id in frame.locals and recv.id not in frame.local_imports
                    and recv.id not in frame.local_funcs and recv.id not in frame.loop_layers)
        # the result of a DL call (`F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)`)
        # (not on `x.float()`: that is a node only as a whole statement)
        return func.attr != "float" and isinstance(recv, ast.Call) and (
            self.kinds.classify(recv, frame) is not None
            or (self._is_tensor_method(recv, frame) and recv.func.attr != "float"))

    @staticmethod
    def _whole_float(e: ast.Call, top: bool) -> bool:
        """`y = x.float()`: the whole right-hand side, on a name, without arguments."""
        return top and isinstance(e.func.value, ast.Name) and not e.args and not e.keywords

    def _tensor_method(self, e: ast.Call, frame, ref, actions, outputs, top) -> Value:
        """A tensor method call as a `call` node of type `torch.Tensor.<m>` whose
        first input is the receiver (the function form's `self`), so that
        `torch.Tensor.transpose($k, -2, -1) -> $kt` matches `k.transpose(-2, -1)`."""
        receiver = self._expr(e.func.value, frame, ref, actions)
        args, kwargs = self._args(e, frame, ref, actions)
        node = Node("call", ref, type="torch.Tensor." + e.func.attr, inputs=(receiver,) + args, kwargs=kwargs)
        return self._emit(e, node, frame, actions, outputs, top)


_SOFTMAX_CASTS = NodeMemo(limit=4096)


def softmax_casts(fn: ast.AST) -> frozenset:
    """Ids of the `.to(...)` calls of `fn` that cast a softmax's result back
    in the statement right after it, in one block:

        p = nn.functional.softmax(s, dim=-1)    # (or `s.softmax(dim=-1)`)
        p = p.to(v.dtype)

    (GPT-Neo's and Bark's eager attention): recorded as `torch.Tensor.to`
    nodes, as `F.softmax(...).to(...)` is.  Memoised per function object."""
    hit = _SOFTMAX_CASTS.get(fn)
    if hit is not None:
        return hit
    out = set()
    # statement lists hold only statements, handlers and match cases (an
    # expression's `body` is an expression): walking them reaches every block
    stack = [fn]
    while stack:
        node = stack.pop()
        for field in ("handlers", "cases"):
            stack.extend(getattr(node, field, ()))
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            stack.extend(block)
            for a, b in zip(block, block[1:]):
                name = _softmax_target(a)
                if name is None or not (isinstance(b, ast.Assign) and len(b.targets) == 1):
                    continue
                v = b.value
                if (isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr in _SOFTMAX_CAST_METHODS
                        and isinstance(v.func.value, ast.Name) and v.func.value.id == name):
                    out.add(id(v))
    res = frozenset(out)
    _SOFTMAX_CASTS.put(fn, res)
    return res


def _softmax_target(stmt: ast.stmt) -> str | None:
    """`name` of `name = <...>.softmax(...)` (a plain assignment of a softmax call)."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
        return None
    v = stmt.value
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "softmax":
        return stmt.targets[0].id
    return None


def _same_dtype_cast(e: ast.Call, frame: Frame) -> bool:
    """`x.to(x.dtype)` on a local name `x` (not `self`), nothing else passed."""
    func = e.func
    if not (isinstance(func, ast.Attribute) and func.attr == "to" and isinstance(func.value, ast.Name)
            and len(e.args) == 1 and not e.keywords):
        return False
    name = func.value.id
    arg = e.args[0]
    return (name != "self" and name in frame.locals and isinstance(arg, ast.Attribute) and arg.attr == "dtype"
            and isinstance(arg.value, ast.Name) and arg.value.id == name)
