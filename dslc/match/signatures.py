"""Parameter names and defaults of the layers and functions rules match.

Arguments in source patterns match by parameter name, whether a call passes
them by position or by keyword, and a parameter the call leaves out takes its
default (`nn.LayerNorm(h)` binds `eps` to `1e-05`).  That needs the callee's
signature.  Importing torch costs seconds, so the signatures come from a table
shipped in `dslc/data/signatures.json`, generated from an installed torch (and
the transformers corpus sources) by this module:

    python -m dslc.match.signatures            # regenerate dslc/data/signatures.json
    python -m dslc.match.signatures --check    # exit 1 when the table is stale

`tests/test_compiler_signatures.py` checks that the table agrees with the
installed torch.

Table format: `{qualname: {"params": [[name, kind, default], ...], "source": s}}`
with kind `pos` (positional-or-keyword), `kwonly`, `varargs`, `varkw`, and
default `null` (no default), `{"const": v}` (a literal; `"tuple": true` when
it was a tuple) or `{"expr": text}` (anything else, kept as text).
"""

from __future__ import annotations

import ast
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dslc.analysis.model import NOT_CONST, Value

TABLE = Path(__file__).resolve().parent.parent / "data" / "signatures.json"

# The callees the shipped rules touch and their neighbours.
TORCH_NAMES = (
    "torch.nn.Linear", "torch.nn.Bilinear", "torch.nn.Identity",
    "torch.nn.Conv1d", "torch.nn.Conv2d", "torch.nn.Conv3d",
    "torch.nn.ConvTranspose1d", "torch.nn.ConvTranspose2d", "torch.nn.ConvTranspose3d",
    "torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d", "torch.nn.SyncBatchNorm",
    "torch.nn.LayerNorm", "torch.nn.GroupNorm", "torch.nn.RMSNorm",
    "torch.nn.InstanceNorm1d", "torch.nn.InstanceNorm2d", "torch.nn.InstanceNorm3d",
    "torch.nn.Dropout", "torch.nn.Dropout1d", "torch.nn.Dropout2d", "torch.nn.Dropout3d",
    "torch.nn.AlphaDropout", "torch.nn.Embedding", "torch.nn.EmbeddingBag",
    "torch.nn.GELU", "torch.nn.ReLU", "torch.nn.ReLU6", "torch.nn.SiLU", "torch.nn.Tanh",
    "torch.nn.Sigmoid", "torch.nn.Softmax", "torch.nn.LogSoftmax", "torch.nn.MultiheadAttention",
    "torch.nn.functional.softmax", "torch.nn.functional.log_softmax", "torch.nn.functional.gelu",
    "torch.nn.functional.relu", "torch.nn.functional.silu", "torch.nn.functional.dropout",
    "torch.nn.functional.layer_norm", "torch.nn.functional.group_norm", "torch.nn.functional.batch_norm",
    "torch.nn.functional.linear", "torch.nn.functional.conv1d", "torch.nn.functional.conv2d",
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.softmax", "torch.log_softmax", "torch.matmul", "torch.bmm",
)

# transformers classes matched by rules 1-3 (and Conv1D, GPT-2's linear),
# read from the corpus sources: qualname -> (path under transformers/, class).
TRANSFORMERS_NAMES = {
    "transformers.models.bert.modeling_bert.BertSelfAttention": "models/bert/modeling_bert.py",
    "transformers.models.t5.modeling_t5.T5Attention": "models/t5/modeling_t5.py",
    "transformers.models.gpt2.modeling_gpt2.GPT2Attention": "models/gpt2/modeling_gpt2.py",
    "transformers.pytorch_utils.Conv1D": "pytorch_utils.py",
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # pos | kwonly | varargs | varkw
    default: Value | None  # None: no default


@dataclass(frozen=True, slots=True)
class Signature:
    qualname: str
    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.kind in ("pos", "kwonly"))


# The positional parameters of `forward` of the torch layers in TORCH_NAMES
# (after `self`), so that a layer input passed by keyword (`self.bn(input=x)`)
# matches a positional pattern argument.  A test checks it against torch.
FORWARD_PARAMS: dict[str, tuple[str, ...]] = {
    **{q: ("input",) for q in (
        "torch.nn.Linear", "torch.nn.Identity", "torch.nn.Conv1d", "torch.nn.Conv2d", "torch.nn.Conv3d",
        "torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d", "torch.nn.SyncBatchNorm",
        "torch.nn.LayerNorm", "torch.nn.GroupNorm", "torch.nn.InstanceNorm1d", "torch.nn.InstanceNorm2d",
        "torch.nn.InstanceNorm3d", "torch.nn.Dropout", "torch.nn.Dropout1d", "torch.nn.Dropout2d",
        "torch.nn.Dropout3d", "torch.nn.AlphaDropout", "torch.nn.Embedding", "torch.nn.GELU", "torch.nn.ReLU",
        "torch.nn.ReLU6", "torch.nn.SiLU", "torch.nn.Tanh", "torch.nn.Sigmoid", "torch.nn.Softmax",
        "torch.nn.LogSoftmax")},
    "torch.nn.RMSNorm": ("x",),
    "torch.nn.Bilinear": ("input1", "input2"),
    **{q: ("input", "output_size") for q in (
        "torch.nn.ConvTranspose1d", "torch.nn.ConvTranspose2d", "torch.nn.ConvTranspose3d")},
    "torch.nn.EmbeddingBag": ("input", "offsets", "per_sample_weights"),
    "torch.nn.MultiheadAttention": ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                                    "average_attn_weights", "is_causal"),
}


def layer_call_args(qualname: str | None, args, kwargs):
    """A layer call's (args, kwargs) with the keyword arguments that name the
    next positional parameters of its `forward` moved into position
    (`self.bn(input=x)` -> `(x,), ()`); unchanged for an unknown layer or
    after a `*args`."""
    params = FORWARD_PARAMS.get(qualname or "")
    if not params or not kwargs or any(_is_star(a.text) for a in args):
        return args, kwargs
    given = dict(kwargs)
    args = list(args)
    moved = set()
    for name in params[len(args):]:
        if name not in given:
            break
        args.append(given[name])
        moved.add(name)
    if not moved:
        return tuple(args), kwargs
    return tuple(args), tuple((k, v) for k, v in kwargs if k not in moved)


def _value_of(obj: object) -> Value:
    """A default as an analysis `Value` (a constant where it is a literal)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return Value(repr(obj), "const", obj)
    if isinstance(obj, tuple) and all(isinstance(x, (bool, int, float, str, type(None))) for x in obj):
        return Value(repr(obj), "const", obj)
    return Value(str(obj), "expr")


def _encode_default(value: Value | None) -> object:
    if value is None:
        return None
    if value.is_const:
        c = value.const
        if isinstance(c, tuple):
            return {"const": list(c), "tuple": True}
        return {"const": c}
    return {"expr": value.text}


def _decode_default(raw: object) -> Value | None:
    if raw is None:
        return None
    if "const" in raw:
        c = raw["const"]
        return _value_of(tuple(c) if raw.get("tuple") else c)
    return Value(raw["expr"], "expr")


@lru_cache(maxsize=1)
def table() -> dict[str, Signature]:
    """The shipped table, loaded once (no torch import)."""
    raw = json.loads(TABLE.read_text())
    out = {}
    for qualname, entry in raw.items():
        params = tuple(Param(n, k, _decode_default(d)) for n, k, d in entry["params"])
        out[qualname] = Signature(qualname, params)
    return out


def signature(qualname: str | None) -> Signature | None:
    if not qualname:
        return None
    return table().get(qualname)


def _is_star(text: str) -> bool:
    return text.startswith("*")


def normalize(qualname: str | None, args, kwargs) -> dict[str, Value] | None:
    """Map a call's arguments to parameter names, defaults filled in.

    1. Look the callee up in the table; unknown -> None.
    2. Positional arguments take the positional parameters in order; a starred
       argument (`*args`) or too many positionals -> None.
    3. Keyword arguments take their parameter; an unknown keyword (with no
       `**kwargs` parameter) or `**kw` -> None; a parameter given twice -> None.
    4. Every parameter left out that has a default gets it; one without a
       default stays out of the result (it is *absent*).
    `args` is a sequence of `Value`s (or pattern terms), `kwargs` of
    `(name, value)` pairs; the values are returned as given.
    """
    sig = signature(qualname)
    if sig is None:
        return None
    positional = [p for p in sig.params if p.kind == "pos"]
    names = {p.name for p in sig.params if p.kind in ("pos", "kwonly")}
    has_varkw = any(p.kind == "varkw" for p in sig.params)
    out: dict[str, object] = {}
    for i, arg in enumerate(args):
        if isinstance(arg, Value) and _is_star(arg.text):
            return None
        if i >= len(positional):
            return None
        out[positional[i].name] = arg
    for key, arg in kwargs:
        if key is None or key.startswith("*"):
            return None
        if key in out or (key not in names and not has_varkw):
            return None
        out[key] = arg
    for p in sig.params:
        if p.name not in out and p.default is not None and p.kind in ("pos", "kwonly"):
            out[p.name] = p.default
    return out


def explicit_params(qualname: str | None, args, kwargs) -> tuple[str, ...] | None:
    """The parameter names a call gives explicitly (in call order), or None."""
    sig = signature(qualname)
    if sig is None:
        return None
    positional = [p.name for p in sig.params if p.kind == "pos"]
    if len(args) > len(positional):
        return None
    return tuple(positional[: len(args)]) + tuple(k for k, _ in kwargs)


# ---------------------------------------------------------------------------
# Generation (needs torch; never on the hot path).


def _params_from_ast(args: ast.arguments, *, skip_self: bool) -> list[list]:
    out: list[list] = []
    pos = list(args.posonlyargs) + list(args.args)
    if skip_self and pos and pos[0].arg in ("self", "cls"):
        pos = pos[1:]
    defaults = [None] * (len(pos) - len(args.defaults)) + list(args.defaults)
    for a, d in zip(pos, defaults):
        out.append([a.arg, "pos", _encode_default(_ast_default(d))])
    if args.vararg:
        out.append([args.vararg.arg, "varargs", None])
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out.append([a.arg, "kwonly", _encode_default(_ast_default(d))])
    if args.kwarg:
        out.append([args.kwarg.arg, "varkw", None])
    return out


def _ast_default(node: ast.expr | None) -> Value | None:
    if node is None:
        return None
    try:
        return _value_of(ast.literal_eval(node))
    except ValueError:
        return Value(ast.unparse(node), "expr")


def _from_inspect(obj) -> list[list] | None:
    import inspect

    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "pos",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "pos",
        inspect.Parameter.VAR_POSITIONAL: "varargs",
        inspect.Parameter.KEYWORD_ONLY: "kwonly",
        inspect.Parameter.VAR_KEYWORD: "varkw",
    }
    out = []
    for p in sig.parameters.values():
        default = None if p.default is inspect.Parameter.empty else _value_of(p.default)
        out.append([p.name, kinds[p.kind], _encode_default(default)])
    return out


def _from_docstring(obj, name: str) -> list[list] | None:
    """Builtins (`torch.softmax`) document their signature on the first line."""
    for line in (getattr(obj, "__doc__", None) or "").strip().splitlines()[:3]:
        line = line.strip()
        if line.startswith(name + "(") and ")" in line:
            head = line[: line.rindex(")") + 1].replace(name + "(", "def f(", 1)
            try:
                fn = ast.parse(head + ": pass").body[0]
            except SyntaxError:
                return None
            return _params_from_ast(fn.args, skip_self=False)
    return None


def _resolve(qualname: str):
    import importlib

    parts = qualname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(qualname)


def torch_entry(qualname: str) -> dict | None:
    """The table entry for a torch name, read from the installed torch."""
    obj = _resolve(qualname)
    params = _from_inspect(obj)
    source = "inspect"
    if params is None:
        params, source = _from_docstring(obj, qualname.rsplit(".", 1)[1]), "docstring"
    if params is None:
        return None
    return {"params": params, "source": source}


def transformers_entry(qualname: str, path: Path) -> dict | None:
    """`__init__` of a class in the transformers sources (read, not imported)."""
    tree = ast.parse(path.read_text())
    cls_name = qualname.rsplit(".", 1)[1]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return {"params": _params_from_ast(item.args, skip_self=True), "source": "transformers-4.35.0"}
    return None


# Tensor methods, recorded by the analysis as calls of `torch.Tensor.<m>` with
# the receiver as the first argument (`input`); their docstrings omit `self`,
# so the entries are written here (from the torch documentation).
TENSOR_METHOD_ENTRIES = {
    "torch.Tensor.transpose": [["input", "pos", None], ["dim0", "pos", None], ["dim1", "pos", None]],
    "torch.Tensor.masked_fill": [["input", "pos", None], ["mask", "pos", None], ["value", "pos", None]],
    "torch.Tensor.softmax": [["input", "pos", None], ["dim", "pos", None], ["dtype", "kwonly", {"const": None}]],
    "torch.Tensor.matmul": [["input", "pos", None], ["other", "pos", None]],
    "torch.Tensor.bmm": [["input", "pos", None], ["mat2", "pos", None]],
}


def generate(transformers_root: Path | None = None) -> dict:
    """Build the table from the installed torch and the corpus sources."""
    import warnings

    warnings.filterwarnings("ignore")
    out: dict[str, dict] = {}
    for qualname in TORCH_NAMES:
        try:
            entry = torch_entry(qualname)
        except (ImportError, AttributeError):
            entry = None
        if entry is not None:
            out[qualname] = entry
    for qualname, params in TENSOR_METHOD_ENTRIES.items():
        out[qualname] = {"params": params, "source": "manual"}
    if transformers_root is not None:
        for qualname, rel in TRANSFORMERS_NAMES.items():
            f = transformers_root / rel
            if f.exists():
                entry = transformers_entry(qualname, f)
                if entry is not None:
                    out[qualname] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dslc.match.signatures",
        description="Regenerate dslc/data/signatures.json from the installed torch "
        "and the transformers 4.35.0 corpus sources (parameter names and defaults "
        "for argument normalisation).",
    )
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when the table is stale")
    parser.add_argument("--output", default=str(TABLE), help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: torch is not installed; the table is generated from it", file=sys.stderr)
        return 2
    from dslc import corpus

    try:
        root = corpus.transformers_root(download=False)
    except RuntimeError:
        root = None
        print("warning: transformers corpus not cached; keeping its entries from the current table", file=sys.stderr)
    new = generate(root)
    if root is None and TABLE.exists():
        old = json.loads(TABLE.read_text())
        for qualname in TRANSFORMERS_NAMES:
            if qualname in old:
                new[qualname] = old[qualname]
    # One entry per line: readable diffs when torch changes a signature.
    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(new[k])}" for k in sorted(new)) + "\n}\n"
    if args.check:
        current = TABLE.read_text() if TABLE.exists() else ""
        if current != text:
            print(f"{TABLE} is stale: run python -m dslc.match.signatures", file=sys.stderr)
            return 1
        return 0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)  # atomic
    print(f"wrote {len(new)} signatures to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
