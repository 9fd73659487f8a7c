"""Hand-built model structures and rules for the compiler/matcher tests.

Small builders so that a test reads like the model code it stands for.
"""

from __future__ import annotations

from dslc.match import ir
from dslc.analysis.model import (
    ClassFacts,
    FileFacts,
    Guard,
    InitBinding,
    Node,
    Path,
    StmtRef,
    Value,
)


def N(text: str) -> Value:
    """A local name."""
    return Value(text, "name")


def C(value: object) -> Value:
    return Value(repr(value), "const", value)


def A(text: str) -> Value:
    """A dotted name such as config.hidden_size."""
    return Value(text, "attr")


def _stmt(line: int, method: str = "forward", owner: str = "M") -> StmtRef:
    return StmtRef(method, owner, ("body", line), (line, line), 8)


def layer(line, attr, typ, inputs, outputs, kwargs=(), method="forward"):
    ins = tuple(N(i) if isinstance(i, str) else i for i in inputs)
    return Node("layer", _stmt(line, method), type=typ, attr=attr, inputs=ins, kwargs=tuple(kwargs),
                outputs=tuple(outputs), reads=frozenset(v.text for v in ins if v.kind == "name") | {f"self.{attr}"},
                writes=frozenset(outputs), expr_span=(line, 8, line, 40))


def call(line, typ, inputs, outputs, kwargs=(), method="forward", unresolved=None):
    ins = tuple(N(i) if isinstance(i, str) else i for i in inputs)
    return Node("call", _stmt(line, method), type=typ, unresolved=unresolved, inputs=ins, kwargs=tuple(kwargs),
                outputs=tuple(outputs), reads=frozenset(v.text for v in ins if v.kind == "name"),
                writes=frozenset(outputs), expr_span=(line, 8, line, 40))


def op(line, sym, inputs, output, method="forward"):
    ins = tuple(N(i) if isinstance(i, str) else i for i in inputs)
    return Node("op", _stmt(line, method), op=sym, inputs=ins, outputs=(output,),
                reads=frozenset(v.text for v in ins if v.kind == "name"), writes=frozenset({output}),
                expr_span=(line, 8, line, 30))


def stmt(line, reads=(), writes=(), method="forward"):
    return Node("stmt", _stmt(line, method), reads=frozenset(reads), writes=frozenset(writes))


def init(attr, typ, args=(), kwargs=(), line=1, kind="call", guards=()):
    return InitBinding(attr, typ, tuple(args), tuple(kwargs), kind=kind, guards=tuple(guards),
                       stmt=StmtRef("__init__", "M", ("body", line), (line, line), 8))


def cls(name, inits, *paths, other_paths=()):
    return ClassFacts(name, f"m.{name}", (1, 100), ("torch.nn.Module",), tuple(inits),
                      tuple(Path((), tuple(p)) if not isinstance(p, Path) else p for p in paths),
                      other_paths=tuple(other_paths))


def facts(*classes, functions=()):
    return FileFacts("m.py", "m", tuple(classes), functions=tuple(functions))


# ---------------------------------------------------------------------------
# Rules, as the front end lowers them.


def V(name: str) -> ir.Var:
    return ir.Var(name)


def K(value: object) -> ir.Const:
    return ir.Const(value)


def L(qual=None, args=(), kwargs=(), out=(), var=None, sub=None) -> ir.PatNode:
    callee = ir.Callee(qualname=qual, var=V(var) if var else None, subscript=sub)
    return ir.PatNode("layer", callee, None, tuple(args), tuple(kwargs), tuple(V(o) for o in out))


def O(sym, args, out) -> ir.PatNode:
    return ir.PatNode("op", None, sym, tuple(args), (), (V(out),))


def W(out=()) -> ir.PatNode:
    return ir.PatNode("wildcard", outputs=tuple(V(o) for o in out))


def rule(name, init=None, forward=None, where=(), pack="t") -> ir.Rule:
    return ir.Rule(
        pack, name, name, (), ir.Contract(),
        init=ir.Item(tuple(init), None) if init is not None else None,
        forward=ir.Item(tuple(forward), None) if forward is not None else None,
        where=tuple(where),
    )


def dropout_layernorm() -> ir.Rule:
    return rule(
        "dropout_layernorm",
        init=[L("torch.nn.Dropout", [V("p")], out=["drop"]),
              L("torch.nn.LayerNorm", [V("h")], [("eps", V("eps"))], out=["norm"])],
        forward=[L(var="drop", args=[V("x")], out=["y"]),
                 O("+", [V("y"), V("res")], "z"),
                 L(var="norm", args=[V("z")], out=["out"])],
    )


def softmax() -> ir.Rule:
    return rule("softmax", forward=[L("torch.nn.functional.softmax", [V("x")], [("dim", K(-1))], out=["y"])])


def conv_batchnorm() -> ir.Rule:
    return rule(
        "conv_batchnorm",
        init=[L("torch.nn.Conv2d", [V("cin"), V("cout"), V("k")], out=["conv"]),
              L("torch.nn.BatchNorm2d", [V("c")], [("affine", K(True)), ("track_running_stats", K(True))], out=["bn"])],
        forward=[L("torch.nn.Conv2d", [V("x")], out=["h"]), L("torch.nn.BatchNorm2d", [V("h")], out=["o"])],
    )


def biased_gelu() -> ir.Rule:
    return rule(
        "biased_gelu",
        init=[L("torch.nn.Linear", [V("fin"), V("fout")], [("bias", V("bias"))], out=["lin"]),
              L("transformers.activations.ACT2FN", sub=V("key"), out=["act"])],
        forward=[L(var="lin", args=[V("x")], out=["y"]), L(var="act", args=[V("y")], out=["z"])],
        where=[ir.Constraint(V("bias"), "!=", (False,))],
    )


def bert_self_output(first="hidden_states", second="input_tensor", between=()):
    """BertSelfOutput: dense -> dropout -> LayerNorm(h + input)."""
    inits = [
        init("dense", "torch.nn.Linear", [A("config.hidden_size"), A("config.hidden_size")], line=2),
        init("LayerNorm", "torch.nn.LayerNorm", [A("config.hidden_size")], [("eps", A("config.layer_norm_eps"))], line=3),
        init("dropout", "torch.nn.Dropout", [A("config.hidden_dropout_prob")], line=4),
    ]
    nodes = [
        layer(10, "dense", "torch.nn.Linear", ["hidden_states"], ["hidden_states"]),
        layer(11, "dropout", "torch.nn.Dropout", ["hidden_states"], ["hidden_states"]),
        *between,
        op(12, "+", [first, second], "temp_1"),
        layer(12, "LayerNorm", "torch.nn.LayerNorm", ["temp_1"], ["hidden_states"]),
        stmt(13, reads=["hidden_states"]),
    ]
    return cls("BertSelfOutput", inits, nodes)


__all__ = [n for n in dir() if not n.startswith("_")] + ["Guard"]
