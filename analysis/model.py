"""The model-structure data model (paper §3.1, Fig. 2): what the analysis produces.

This module is the contract between `analysis/` (which builds these values
from Python source) and `dslc/` (which matches rule patterns against them and
rewrites the source).  Everything here is plain, frozen data; nothing imports
`dslc`.

Vocabulary
----------
* `Value`    an argument or input as it appears in source: a variable name,
             a constant, or any other expression (kept as source text).
* `StmtRef`  where a DL node came from: the statement that holds it, located
             precisely enough for the emitter to edit that statement.
* `InitBinding`  `self.<attr> = <ctor>(args)` in `__init__` (or a helper it
             calls), with the guards under which it runs.
* `Node`     one DL node of a path: a layer call (`self.attr(x)`), a call of
             a qualified function (`F.softmax(x, dim=-1)`), a tensor op
             (`a + b`, `-a`), or an opaque statement (`stmt`) that is not a DL
             node but reads or writes names (logging, `return`, asserts, ...);
             the matcher skips `stmt` nodes but the safety checks read them.
* `Path`     one feasible control-flow path of `forward`: guards + nodes.
* `ClassFacts` / `FileFacts`  everything known about a class / a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# A sentinel for "this Value is not a compile-time constant".
class _NotConst:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_CONST"

    def __reduce__(self):  # keep the singleton across pickling (cache, workers)
        return "NOT_CONST"


NOT_CONST = _NotConst()


@dataclass(frozen=True, slots=True)
class Value:
    """An argument, input or output as written in the source.

    `text` is the canonical source text (`ast.unparse` of the expression),
    e.g. `hidden_states`, `config.hidden_size`, `-1`, `'gelu'`.
    `kind` is `name` for a plain local variable (a data-flow variable),
    `const` for a literal (then `const` holds the Python value, negative
    numbers and tuples of literals included), `attr` for a dotted name such
    as `config.hidden_size` or `self.scale`, and `expr` for anything else.
    """

    text: str
    kind: Literal["name", "const", "attr", "expr"] = "name"
    const: object = NOT_CONST

    @property
    def is_const(self) -> bool:
        return self.const is not NOT_CONST


@dataclass(frozen=True, slots=True)
class StmtRef:
    """The source statement a node or binding belongs to.

    `method` is the name of the function that textually contains the
    statement (`forward`, `__init__`, a helper such as `_split_heads`),
    `owner` the class that defines that method (differs from the analyzed
    class for inherited or inlined code), `index_path` the position of the
    statement in the stdlib `ast` of that function: alternating field names
    and indices from the `FunctionDef`, e.g. `("body", 3, "orelse", 0)`.
    `lines` is the 1-based inclusive line span of the whole statement, `col`
    its column offset.  `blocks` lists the enclosing compound statements,
    outermost first, as `(index_path_of_compound, branch)` where branch is
    `body`, `orelse`, `handlers[i]`, `finalbody`, ...; two nodes are in the
    same basic-block nest when their `blocks` are equal.
    """

    method: str
    owner: str
    index_path: tuple = ()
    lines: tuple[int, int] = (0, 0)
    col: int = 0
    blocks: tuple = ()


@dataclass(frozen=True, slots=True)
class Guard:
    """A branch condition on a path or a binding: source text + polarity.

    `text` is the condition's source (`self.use_batch_norm`), `negated` says
    the path took the false branch; `str(guard)` gives `not (...)` for it.
    `lines` locates the `if`/`while`/`assert` that introduced it.
    """

    text: str
    negated: bool = False
    lines: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        return f"not ({self.text})" if self.negated else self.text


@dataclass(frozen=True, slots=True)
class InitBinding:
    """`self.<attr> = <ctor>(<args>)` found in `__init__` (or a helper it calls).

    `type` is the qualified, public name of what is called
    (`torch.nn.LayerNorm`, `transformers.activations.ACT2FN` for a
    subscript lookup) or None when it cannot be resolved, in which case
    `unresolved` holds the spelling.  `kind` is `call` for `Ctor(...)`,
    `subscript` for `ACT2FN[key]` (then `args == (key,)`), `other` for any
    other right-hand side (an alias of another attribute, a parameter, ...).
    `container` is set for layers held in `nn.ModuleList`/`nn.Sequential`.
    """

    attr: str
    type: str | None
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()
    kind: Literal["call", "subscript", "other"] = "call"
    unresolved: str | None = None
    guards: tuple[Guard, ...] = ()
    stmt: StmtRef | None = None
    container: str | None = None

    def kwarg(self, name: str) -> Value | None:
        for key, value in self.kwargs:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Node:
    """One DL node of a path (paper Fig. 2), or an opaque statement.

    kind:
      `layer`  `self.<attr>(inputs)`; `type` is the attr's init type.
      `call`   a call of a qualified function or class (`torch.nn.functional.softmax`,
               `torch.matmul`) or of a method of the analyzed class that was not
               inlined; `type` is its qualified name.
      `op`     a tensor op: binary `+ - * / @ // % **` (2 inputs) or unary
               `-`, `+`, `~` (1 input); `op` holds the operator.
      `stmt`   any other statement on the path (return, assert, logging,
               assignments of non-DL values); only `reads`/`writes` matter.
    `inputs` are the positional arguments, `kwargs` the keyword ones;
    `outputs` the names written (a temporary `temp_<n>` for nested
    expressions, several for tuple unpacking).  `reads`/`writes` are every
    local name the statement part reads / writes (for `stmt` nodes and for the
    data-flow safety checks); `self` attributes read appear as `self.<attr>`.
    """

    kind: Literal["layer", "call", "op", "stmt"]
    stmt: StmtRef
    type: str | None = None
    unresolved: str | None = None
    op: str | None = None
    attr: str | None = None
    inputs: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()
    outputs: tuple[str, ...] = ()
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    # For `self.<method>(...)` inlining: the call chain that led here,
    # outermost first, as (method, call-site lines).
    inlined_from: tuple[tuple[str, tuple[int, int]], ...] = ()
    # The exact source span of this node's own expression (the call or the
    # operator expression, nested arguments included) as
    # (lineno, col_offset, end_lineno, end_col_offset) of the stdlib `ast`
    # (1-based lines, 0-based UTF-8 byte columns); None for `stmt` nodes.
    # The emitter replaces expressions in place with it.
    expr_span: tuple[int, int, int, int] | None = None
    # Plain copies this `stmt` node makes, as (written name, read name): the
    # parameters an inlined helper binds from the caller's arguments (`y`
    # from `h` for `self._bn_act(h)` with `def _bn_act(self, y)`), and the
    # call site's result from a helper's `return <name>`.  Data flow follows
    # them (the value is the same), spellings stay those of the source.
    copies: tuple[tuple[str, str], ...] = ()
    # For a `stmt` node `name = <tensor method call>` (`x.view(a, b, c, d)`,
    # `.permute(...)`, `.transpose(...)`, ...): (name, source text of the
    # right-hand side, nested DL nodes spelled as their temporaries), from
    # which a consumer can prove the rank of `name` (softmax over `dim=3`).
    defs: tuple[tuple[str, str], ...] = ()

    def kwarg(self, name: str) -> Value | None:
        for key, value in self.kwargs:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Path:
    """One feasible control-flow path of a composition function."""

    guards: tuple[Guard, ...]
    nodes: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AttrUse:
    """A use of `self.<attr>` anywhere in the class (for the safety checks)."""

    attr: str
    method: str
    lines: tuple[int, int]
    kind: Literal["call", "read", "store"]


@dataclass(frozen=True, slots=True)
class ClassFacts:
    """Everything the analysis knows about one `torch.nn.Module` subclass."""

    name: str
    qualname: str  # module-qualified, e.g. transformers.models.bert.modeling_bert.BertSelfOutput
    lines: tuple[int, int]
    bases: tuple[str, ...]  # qualified names where resolved, else spelling
    init: tuple[InitBinding, ...]
    paths: tuple[Path, ...]  # of `forward`; empty when there is none
    methods: tuple[str, ...] = ()
    attr_uses: tuple[AttrUse, ...] = ()
    # Calls of module-level functions and other methods, for rules with no
    # init item (they apply at every call site): method name -> paths.
    other_paths: tuple[tuple[str, tuple[Path, ...]], ...] = ()
    # The expression graph of a straight-line `forward` defined by this class
    # (`analysis.compute.Compute`), for rules that match a class by what it
    # computes; None when the class defines no forward.
    compute: object = None
    # `__init__` attributes proved to hold a Python number (`self.scale =
    # 1 / config.d_head ** 0.5`), so `x * self.scale` keeps the rank of `x`;
    # see `analysis/scalars.py` for the proof and its one assumption.
    scalars: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the analysis could not handle (reported, never raised)."""

    code: str
    message: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class FileFacts:
    path: str
    module: str | None  # dotted module name where known (transformers.models.bert.modeling_bert)
    classes: tuple[ClassFacts, ...]
    # Module-level functions' paths (for init-less rules such as softmax).
    functions: tuple[tuple[str, tuple[Path, ...]], ...] = ()
    imports: tuple[tuple[str, str], ...] = ()  # local name -> qualified name
    problems: tuple[Problem, ...] = field(default=())
