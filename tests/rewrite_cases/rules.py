"""Hand-built `ir.Rule`s for the rewriter tests (the front end is tested elsewhere)."""

from __future__ import annotations

from dslc.match import ir

V = ir.Var


def layer(qual=None, *args, var=None, out=(), kwargs=(), layer_var=None):
    callee = ir.Callee(qualname=qual, var=V(var) if var else None)
    return ir.PatNode("layer", callee, args=tuple(args), kwargs=tuple(kwargs), outputs=tuple(V(o) for o in out), layer_var=layer_var)


def op(sym, a, b, out):
    return ir.PatNode("op", op=sym, args=(a, b), outputs=(V(out),))


def rule(name, *, init=None, forward=None, params=(), where=(), options=()):
    return ir.Rule("adopter", name, name, (), ir.Contract(), init=init, forward=forward, params=tuple(params), where=tuple(where), options=tuple(options))


FUSED_DLN = "epoi.ops.torchscript_ops.FusedDropoutAddLayerNorm"

# Dropout + add + LayerNorm, the fused layer under a new attribute `$fused`.
DROPOUT_LAYERNORM = rule(
    "dropout_layernorm",
    init=ir.Item(
        (layer("torch.nn.Dropout", V("p"), out=["drop"]), layer("torch.nn.LayerNorm", V("h"), kwargs=[("eps", V("eps"))], out=["norm"])),
        (layer(FUSED_DLN, V("h"), V("p"), kwargs=[("eps", V("eps"))], out=["dropout_add_layernorm"]),),
    ),
    forward=ir.Item(
        (layer(var="drop", *[V("x")], out=["y"], layer_var="drop"), op("+", V("y"), V("res"), "z"), layer(None, V("z"), var="norm", out=["out"], layer_var="norm")),
        (layer(None, V("x"), V("res"), var="dropout_add_layernorm", out=["out"], layer_var="dropout_add_layernorm"),),
    ),
    params=[
        ir.ParamMap(ir.AttrOf(V("dropout_add_layernorm"), "weight"), ir.AttrOf(V("norm"), "weight")),
        ir.ParamMap(ir.AttrOf(V("dropout_add_layernorm"), "bias"), ir.AttrOf(V("norm"), "bias")),
    ],
)

# The same, the fused layer reusing the LayerNorm's attribute (identity params).
DROPOUT_LAYERNORM_REUSE = rule(
    "dropout_layernorm",
    init=ir.Item(
        (layer("torch.nn.Dropout", V("p"), out=["drop"]), layer("torch.nn.LayerNorm", V("h"), kwargs=[("eps", V("eps"))], out=["norm"])),
        (layer(FUSED_DLN, V("h"), V("p"), kwargs=[("eps", V("eps"))], out=["norm"]),),
    ),
    forward=ir.Item(
        (layer(None, V("x"), var="drop", out=["y"], layer_var="drop"), op("+", V("y"), V("res"), "z"), layer(None, V("z"), var="norm", out=["out"], layer_var="norm")),
        (layer(None, V("x"), V("res"), var="norm", out=["out"], layer_var="norm"),),
    ),
    params=[
        ir.ParamMap(ir.AttrOf(V("norm"), "weight"), ir.AttrOf(V("norm"), "weight")),
        ir.ParamMap(ir.AttrOf(V("norm"), "bias"), ir.AttrOf(V("norm"), "bias")),
    ],
)

CONV_BN = rule(
    "conv_batchnorm",
    init=ir.Item(
        (layer("torch.nn.Conv2d", V("cin"), V("cout"), kwargs=[("kernel_size", V("k"))], out=["conv"]), layer("torch.nn.BatchNorm2d", V("c"), out=["bn"])),
        (layer("torch.ao.nn.intrinsic.ConvBn2d", V("conv"), V("bn"), out=["conv"]),),
    ),
    forward=ir.Item(
        (layer(None, V("x"), var="conv", out=["h"], layer_var="conv"), layer(None, V("h"), var="bn", out=["o"], layer_var="bn")),
        (layer(None, V("x"), var="conv", out=["o"], layer_var="conv"),),
    ),
    params=[
        ir.ParamMap(ir.AttrOf(V("conv"), "0.weight"), ir.AttrOf(V("conv"), "weight")),
        ir.ParamMap(ir.AttrOf(V("conv"), "1.weight"), ir.AttrOf(V("bn"), "weight")),
    ],
)

SOFTMAX = rule(
    "softmax",
    forward=ir.Item(
        (layer("torch.nn.functional.softmax", V("x"), kwargs=[("dim", ir.Const(-1))], out=["y"]),),
        (layer("xformers.triton.softmax.softmax", V("x"), out=["y"]),),
    ),
)

BERT_ATTENTION = rule(
    "bert_self_attention",
    init=ir.Item(
        (layer("m.BertSelfAttention", V("config"), kwargs=[("position_embedding_type", V("pe"))], out=["attn"]),),
        (layer("epoi.ops.xformers_attn.BertSelfAttentionWithXF", V("config"), kwargs=[("position_embedding_type", V("pe")), ("attn_op_name", ir.Const("cutlass"))], out=["attn"]),),
    ),
    forward=ir.Item((layer(None, ir.Var("x"), var="attn", out=["o"], layer_var="attn"),), None),
)
