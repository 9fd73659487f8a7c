"""`option causal_lm = True`: a causal LM's head and its loss, fused in training.

transformers' `*ForCausalLM.forward` computes the logits with a Linear head
and, when labels are given, the next-token cross-entropy on them; it then
returns the logits beside the loss.  4.x spells the loss in place:

    logits = self.lm_head(hidden_states)
    logits = logits.float()                          # (Llama, Mistral)
    loss = None
    if labels is not None:
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        loss_fct = CrossEntropyLoss()
        shift_logits = shift_logits.view(-1, self.config.vocab_size)
        shift_labels = shift_labels.view(-1)
        shift_labels = shift_labels.to(shift_logits.device)
        loss = loss_fct(shift_logits, shift_labels)

A fused linear cross-entropy never computes the logits, so the logits the
forward returns cannot exist: the rewrite is sound only for a caller that
does not read them, which no analysis of the class can prove.  A rule with
this option is therefore declared `unsafe` (applied with `--unsafe` only)
and its contract is Liger's own (`apply_liger_kernel_to_<arch>`): *in
training with labels, where the kernel can run, the logits are None*; the
loss and every gradient are the original's.  The rewrite guards the
statements from the head to the loss:

    if self.training and labels is not None and _dslc_<rule>_ok(self.lm_head, hidden_states, labels,
                                                                self.config.vocab_size, True):
        logits = None
        loss = _dslc_<rule>(self.lm_head, hidden_states, labels)
    else:
        <the original statements, unchanged>

`_ok` holds where the kernel
imports, the hidden states are on CUDA, the shapes are (B, T, H) and
(B, T) integer labels, the head has `vocab` rows and (without the cast to
float) the loss the original computes is float32.  Everywhere else, CPU
without liger-kernel included, the original statements run.

The rule's pattern is the head call alone (`$head($h) -> $logits`); this
kind reads the rest from the source, and takes only what it can follow:

* the head: `<logits> = self.<head>(<h>)` (`<h>` a name, an attribute, an
  item at names, constants and slices, possibly cast to the head's dtype,
  `.to(self.<head>.weight.dtype)` as Mamba's; the call possibly followed by
  `.contiguous()`, `.float()` or `.to(torch.float32)`), possibly the one statement of
  a branch of an `if T:` whose test reads names and attributes only (Llama
  4.35's `pretraining_tp`; the guard adds `T` or `not (T)`), then
  assignments of `<logits>` that cast it (`.float()`), scale it (`* s`,
  `s *`, `/ s`: Cohere's `logit_scale`, Granite's `logits_scaling`, also in
  the head's own statement as Falcon-H1's) and softcap it last (`tanh(<logits>
  / c) * c` in one to three statements, Gemma-2's under `if c is not None:`),
  `s` and `c` numbers, names or attributes (`name = <attribute>` before, as
  RecurrentGemma's `cap = self.config.logits_soft_cap`, is read through),
  and `loss = None`, nothing else.  The fused branch reads `s` and `c` in
  the guard (nothing between writes them), folds the factors into the
  hidden states and the bias (`(h @ W.T + b) * s == (h * s) @ W.T + b * s`,
  as Liger's own MuseGlimmer forward folds its multiplier) and passes `c` as
  the kernel's `softcap`; where at run time a factor is not a finite
  nonzero number or the cap not a finite positive one (a tensor, a bool,
  None where the original divides by it) the original statements run.
  A factor after the softcap, or one computed by a call, is refused (S421);
* the loss: `if <labels> is not None:` (no `else`) whose statements are
  assignments built from `<logits>[..., :-1, :]`, `<labels>[..., 1:]`,
  `.contiguous()`, `.view(-1, X.size(-1))`, `.view(-1, <vocab>)` (the
  `<vocab>` checked against the head's rows at run time), `.view(-1)`,
  `.to(<x>.device)` on the labels, a default `CrossEntropyLoss()` built
  there (ignore_index -100, mean, no smoothing, no class weight) and its
  call on the flattened logits and labels, both shifted or neither, once;
  or transformers 5.x' `loss = self.loss_function(logits, labels,
  vocab_size[, **kwargs])` (by position or keyword), where at run time the
  model's loss is transformers' `ForCausalLMLoss` (its parameter names
  checked): the helper repeats its padding shift (or takes the caller's
  `shift_labels`), `ignore_index` and its `num_items_in_batch` sum and
  division.

Every name those statements write, but the logits and the loss, must not
be read after them (it would be unbound in the fused branch: S421), nor
may the hidden states or labels be written before the loss.  The head
call with no labelled loss after it is no candidate (S420, left out of the
report).  A match inside the original branch of a guard written by an
earlier run is left alone (S407).
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.match import ir
from dslc.rewrite.edits import Edit, indent_lines
from dslc.rewrite.kinds.base import Kind
from dslc.rewrite.plan import Plan, Skip

OPTION = "causal_lm"
_PURE = (ast.Name, ast.Attribute, ast.Constant, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.Load,
         ast.cmpop, ast.boolop, ast.unaryop)


def _form(message: str) -> Skip:
    return Skip(codes.S_CAUSAL_LM_FORM, message)


def _self_attr(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _pure(node: ast.AST) -> bool:
    """A test that reads names and attributes only (no call, no subscript)."""
    return all(isinstance(n, _PURE) for n in ast.walk(node))


def _stored(nodes) -> set[str]:
    out = set()
    for stmt in nodes:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                out.add(n.id)
            elif isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, (ast.Store, ast.Del)):
                out.add("<attribute or item>")
    return out


def _generated_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and any(
        isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id.startswith("_dslc_") for c in ast.walk(node.test))


class _Loss:
    """Abstract values of the labelled block's statements (see the module docstring)."""

    def __init__(self, logits: str, labels: str, ce_names: set[str]):
        self.env: dict[str, tuple] = {logits: ("logits", False, False), labels: ("labels", False, False)}
        self.ce_names = ce_names
        self.vocab: ast.expr | None = None
        self.loss: str | None = None
        self.shift = True
        self.form = ""  # "loss_function": transformers 5.x' call
        self.kwargs: str | None = None

    def value(self, e: ast.expr) -> tuple:
        if isinstance(e, ast.Name):
            if e.id not in self.env:
                raise _form(f"the loss reads `{e.id}`, which is not the logits, the labels or a value computed from them")
            return self.env[e.id]
        if isinstance(e, ast.Subscript):
            what, shifted, flat = self.value(e.value)
            # the helper's check makes the logits 3-d and the labels 2-d: `...` is `:` there
            want = ("..., :-1, :", ":, :-1, :") if what == "logits" else ("..., 1:", ":, 1:")
            if what not in ("logits", "labels") or shifted or flat \
                    or ast.unparse(e) not in [f"{ast.unparse(e.value)}[{w}]" for w in want]:
                raise _form(f"`{ast.unparse(e)}` is not the next-token shift (`[{want[0]}]`) of the logits or labels")
            return (what, True, False)
        if isinstance(e, ast.Call) and ast.unparse(e.func) == "self.loss_function":
            return self._loss_function(e)
        if isinstance(e, ast.Call) and ast.unparse(e.func) in self.ce_names:
            if e.args or e.keywords:
                raise _form(f"`{ast.unparse(e)}` is not a default CrossEntropyLoss() (ignore_index, reduction, weight or smoothing given)")
            return ("ce", False, False)
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and not any(isinstance(a, ast.Starred) for a in e.args):
            what, shifted, flat = self.value(e.func.value)
            meth, args = e.func.attr, e.args
            if e.keywords:
                raise _form(f"`{ast.unparse(e)}` passes keywords")
            if meth == "contiguous" and not args:
                return (what, shifted, flat)
            if meth == "to" and what == "labels" and len(args) == 1 and isinstance(args[0], ast.Attribute) \
                    and args[0].attr == "device":
                return (what, shifted, flat)
            if meth == "view" and what == "labels" and len(args) == 1 and ast.unparse(args[0]) == "-1":
                return (what, shifted, True)
            if meth == "view" and what == "logits" and len(args) == 2 and ast.unparse(args[0]) == "-1":
                last = args[1]
                if not (isinstance(last, ast.Call) and isinstance(last.func, ast.Attribute) and last.func.attr == "size"
                        and len(last.args) == 1 and ast.unparse(last.args[0]) == "-1" and not last.keywords
                        and self.value(last.func.value)[0] == "logits"):  # the logits' own last size
                    if not _pure(last):
                        raise _form(f"the last size of `{ast.unparse(e)}` is not a name or attribute")
                    self.vocab = last
                return (what, shifted, True)
            raise _form(f"`{ast.unparse(e)}` is not a shift, flattening or device move the rewrite follows")
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in self.env \
                and self.env[e.func.id][0] == "ce" and len(e.args) == 2 and not e.keywords:
            if self.loss is not None or self.form:
                raise _form("the loss is computed twice")
            a, b = self.value(e.args[0]), self.value(e.args[1])
            if a[0] != "logits" or b[0] != "labels" or not (a[2] and b[2]) or a[1] != b[1]:
                raise _form(f"`{ast.unparse(e)}` is not the loss on the flattened logits and labels, both shifted or neither")
            self.shift = a[1]
            return ("loss", False, False)
        raise _form(f"`{ast.unparse(e)}` is not a value the rewrite follows")

    def _loss_function(self, e: ast.Call) -> tuple:
        """transformers 5.x: `self.loss_function(logits=.., labels=.., vocab_size=.., **kwargs)`, the three
        also by position."""
        named = {k.arg: k.value for k in e.keywords if k.arg is not None}
        rest = [k.value for k in e.keywords if k.arg is None]
        if self.loss is not None or self.form:
            raise _form("the loss is computed twice")
        # positional arguments in ForCausalLMLoss' order (the helper checks its parameter names at run time)
        positional = dict(zip(("logits", "labels", "vocab_size"), e.args))
        if len(e.args) > 3 or any(isinstance(a, ast.Starred) for a in e.args) or set(positional) & set(named):
            raise _form(f"`{ast.unparse(e)}` is not `self.loss_function(logits, labels, vocab_size[, **kwargs])`")
        named.update(positional)
        if set(named) != {"logits", "labels", "vocab_size"} or len(rest) > 1 \
                or (rest and not isinstance(rest[0], ast.Name)):
            raise _form(f"`{ast.unparse(e)}` is not `self.loss_function(logits=.., labels=.., vocab_size=..[, **kwargs])`")
        if self.value(named["logits"]) != ("logits", False, False) or self.value(named["labels"]) != ("labels", False, False) \
                or not _pure(named["vocab_size"]):
            raise _form(f"`{ast.unparse(e)}` does not pass the head's logits and the labels as they are")
        self.form, self.vocab = "loss_function", named["vocab_size"]
        self.kwargs = rest[0].id if rest else None
        return ("loss", False, False)

    def run(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                raise _form(f"line {stmt.lineno} is not an assignment to one name")
            v = self.value(stmt.value)
            name = stmt.targets[0].id
            if v[0] == "loss":
                self.loss = name
            self.env[name] = v
        if self.loss is None:
            raise _form("no call of a CrossEntropyLoss() or of self.loss_function on the logits in the labelled block")


class _LogitOps:
    """What the head's statement and those between it and the loss do to the logits (see the module
    docstring): casts to float32, scale factors (`* s`, `/ s`, folded into the hidden states and the
    bias) and one final softcap (`tanh(logits / c) * c`, possibly over three statements under `if c is
    not None:`), each `s` and `c` a number or a name or attribute the fused branch reads in the guard."""

    def __init__(self, tanh: set[str]):
        self.tanh = tanh
        self.logits = ""
        self.protected: set[str] = set()  # the logits, hidden states and labels: never a factor
        self.aliases: dict[str, ast.expr] = {}  # `cap = self.config.logits_soft_cap` (RecurrentGemma)
        self.nones: set[str] = set()  # `loss = None`
        self.ops: list[tuple] = []  # ("float",), ("mul", s), ("div", s), ("tanh",), ("cap", c, optional)

    def _leaf(self, e: ast.expr) -> ast.expr | None:
        """A number, or a name or attribute chain (an alias replaced by its value); None otherwise."""
        if isinstance(e, ast.Constant) and type(e.value) in (int, float):
            return e
        if isinstance(e, ast.Attribute):
            value = self._leaf(e.value)
            return None if value is None or isinstance(value, ast.Constant) else ast.Attribute(value, e.attr, ast.Load())
        if isinstance(e, ast.Name) and e.id not in self.protected and e.id not in self.nones:
            return self.aliases.get(e.id, e)
        return None

    def chain(self, e: ast.expr, is_base, out: list | None = None) -> ast.expr:
        """The base of `e` (where `is_base` holds) under casts, `.contiguous()`, factors and tanh; the
        operations, innermost first, go to `out` (the logits' own by default)."""
        out = self.ops if out is None else out
        if is_base(e):
            return e
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and not e.keywords:
            meth, args = e.func.attr, e.args
            if meth == "contiguous" and not args:  # the same values
                return self.chain(e.func.value, is_base, out)
            op = ("float",) if (meth == "float" and not args) or (
                meth == "to" and len(args) == 1 and ast.unparse(args[0]) in ("torch.float32", "torch.float")) else \
                ("tanh",) if meth == "tanh" and not args else None
            if op is not None:
                base = self.chain(e.func.value, is_base, out)
                out.append(op)
                return base
        if isinstance(e, ast.Call) and ast.unparse(e.func) in self.tanh and len(e.args) == 1 and not e.keywords:
            base = self.chain(e.args[0], is_base, out)
            out.append(("tanh",))
            return base
        if isinstance(e, ast.BinOp) and isinstance(e.op, (ast.Mult, ast.Div)):
            x, factor = e.left, e.right
            if isinstance(e.op, ast.Mult) and self._leaf(x) is not None and self._leaf(factor) is None:
                x, factor = factor, x  # `s * logits`
            leaf = self._leaf(factor)
            if leaf is None:
                raise _form(f"the factor of `{ast.unparse(e)}` is not a number, a name or an attribute")
            base = self.chain(x, is_base, out)
            out.append(("mul" if isinstance(e.op, ast.Mult) else "div", leaf))
            return base
        raise _form(f"`{ast.unparse(e)}` is not a cast, scale or softcap of the logits the rewrite follows")

    def _is_logits(self, e: ast.expr) -> bool:
        return isinstance(e, ast.Name) and e.id == self.logits

    def statement(self, stmt: ast.stmt) -> None:
        """One statement between the head and the loss."""
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value = stmt.targets[0].id, stmt.value
            if name == self.logits:
                self.chain(value, self._is_logits)
                return
            if name not in self.protected and name not in self.aliases:
                if isinstance(value, ast.Constant) and value.value is None:
                    self.nones.add(name)
                    return
                leaf = self._leaf(value)
                if leaf is not None and not isinstance(leaf, ast.Constant) and name not in self.nones:
                    self.aliases[name] = leaf
                    return
        if isinstance(stmt, ast.If) and _is_not_none(stmt):
            inner: list[tuple] = []
            for s in stmt.body:
                if not _assigns(s, self.logits):
                    raise _form(f"line {s.lineno} (under `if {ast.unparse(stmt.test)}:`) is not an assignment to `{self.logits}`")
                self.chain(s.value, self._is_logits, inner)
            cap = self._leaf(stmt.test.left)
            inner = [op for op in inner if op[0] != "float"]  # a cast under the test: not the loss's dtype
            if cap is None or len(inner) != 3 or [op[0] for op in inner] != ["div", "tanh", "mul"] \
                    or not ast.unparse(inner[0][1]) == ast.unparse(inner[2][1]) == ast.unparse(cap):
                raise _form(f"line {stmt.lineno}: `if {ast.unparse(stmt.test)}:` is not a softcap of `{self.logits}` by that value")
            self.ops.append(("cap", cap, True))
            return
        raise _form(f"line {stmt.lineno} (between the head and the loss) is not a cast, scale or softcap of "
                    f"`{self.logits}`, `loss = None` or a name for an attribute")

    def result(self) -> tuple[bool, list[tuple[str, bool]], str | None, bool]:
        """(the logits upcast, the factors in order as (source, divide), the softcap's source, whether
        the original skips it where it is None)."""
        ops = [op for op in self.ops if op[0] != "float"]
        scales, cap, optional, i = [], None, False, 0
        while i < len(ops):
            op = ops[i]
            if op[0] == "cap":
                c, opt, i = op[1], op[2], i + 1
            elif op[0] == "div" and [o[0] for o in ops[i + 1:i + 3]] == ["tanh", "mul"] \
                    and ast.unparse(ops[i + 2][1]) == ast.unparse(op[1]):
                c, opt, i = op[1], False, i + 3
            elif op[0] in ("mul", "div"):
                if cap is not None:
                    raise _form("the logits are scaled after the softcap (the kernel applies the softcap last)")
                scales.append((ast.unparse(op[1]), op[0] == "div"))
                i += 1
                continue
            else:
                raise _form("a tanh of the logits that is not a softcap `tanh(logits / c) * c`")
            if cap is not None:
                raise _form("the logits are softcapped twice")
            cap, optional = c, opt
        return (len(ops) < len(self.ops), scales, None if cap is None else ast.unparse(cap), optional)


class CausalLMLoss(Kind):
    """A rule with `option causal_lm = True`; see the module docstring."""

    def select(self, match: ir.Match, setup):
        return True if match.rule.option(OPTION) and match.nodes else None

    def plan(self, match: ir.Match, setup, found, plan: Plan) -> None:
        mod = self.mod
        first = match.nodes[0]
        if first.inlined_from or first.stmt.method != "forward" or first.stmt.owner.rsplit(".", 1)[-1] != match.class_name.rsplit(".", 1)[-1]:
            raise Skip(codes.S_NO_CAUSAL_LM_LOSS, "the head call is in an inlined helper or an inherited forward")
        head_stmt = mod.stmt(first.stmt)
        node = head_stmt
        while id(node) in mod.parent:
            if _generated_guard(node):
                raise Skip(codes.S_GENERATED, "inside the original branch of a guard that dslc generated")
            node = mod.parent[id(node)][0]
        ops = _LogitOps(self._tanh_names())
        v = None
        if isinstance(head_stmt, ast.Assign):
            try:  # `self.lm_head(outputs[0]).contiguous()` (OPT), `.to(torch.float32)` (CodeGen), `* s` (Falcon-H1)
                v = ops.chain(head_stmt.value, lambda e: isinstance(e, ast.Call) and _self_attr(e.func) is not None)
            except Skip:
                v = None
        read = v.args[0] if isinstance(v, ast.Call) and len(v.args) == 1 else None
        if read is not None and _head_cast(read, _self_attr(v.func)):
            read = read.func.value  # `self.lm_head(h.to(self.lm_head.weight.dtype))` (Mamba): h cast as the head takes it
        if not (isinstance(head_stmt, ast.Assign) and len(head_stmt.targets) == 1 and isinstance(head_stmt.targets[0], ast.Name)
                and isinstance(v, ast.Call) and _self_attr(v.func) and len(v.args) == 1 and not v.keywords
                and _read(read)):
            raise Skip(codes.S_NO_CAUSAL_LM_LOSS, "the head call is not `<logits> = self.<head>(<name, attribute or item>)`")
        logits, head, hidden = head_stmt.targets[0].id, v.func.attr, ast.unparse(v.args[0])
        hidden_root = _root(read)
        ops.logits, ops.protected = logits, {logits, hidden_root}
        start, guard_extra = self._outer(head_stmt)
        parent, fname, block = mod.block_of(start)
        i = block.index(start)
        # the first such `if` reading the logits that does more than assign them (`if cap is not None:` softcaps)
        labelled = next((j for j in range(i + 1, len(block)) if self._labels_if(block[j]) and any(
            isinstance(n, ast.Name) and n.id == logits for s in block[j].body for n in ast.walk(s))
            and not all(_assigns(s, logits) for s in block[j].body)), None)
        if labelled is None:
            raise Skip(codes.S_NO_CAUSAL_LM_LOSS, f"no `if <labels> is not None:` reading `{logits}` follows the head in its block")
        between = block[i + 1:labelled]
        cond = block[labelled]
        labels = cond.test.left.id
        ops.protected.add(labels)
        for stmt in between:
            ops.statement(stmt)
        upcast, scales, cap, cap_optional = ops.result()
        loss = _Loss(logits, labels, self._ce_names())
        loss.run(cond.body)
        written = _stored([start, *between])
        if written & {hidden_root, labels, "<attribute or item>"}:
            raise _form(f"the hidden states `{hidden}` or the labels `{labels}` are written between the head and the loss")
        fn = self._function(start)
        if any(isinstance(p, (ast.For, ast.AsyncFor, ast.While)) for p, _ in self.ctx.mod.chain(start)):
            raise _form("the head and the loss are inside a loop (a read before them may run after them)")
        after = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                 and (n.lineno, n.col_offset) > (cond.end_lineno, cond.end_col_offset)}
        unbound = (_stored([start, *between, cond]) - {logits, loss.loss}) & after
        if unbound:
            raise _form(f"{', '.join(sorted(unbound))} (written from the head to the loss) read after the loss")
        self._emit(match, plan, start, cond, block, i, labelled, dict(
            logits=logits, head=head, hidden=hidden, labels=labels, loss=loss.loss,
            vocab=ast.unparse(loss.vocab) if loss.vocab is not None else "None", upcast=upcast, extra=guard_extra,
            shift=loss.shift, form=loss.form, kwargs=loss.kwargs or "{}", scales=scales, cap=cap, cap_optional=cap_optional))

    # -- reading the source ------------------------------------------------

    def _outer(self, head_stmt: ast.stmt) -> tuple[ast.stmt, str]:
        """The statement of the loss's block that holds the head, and the guard's extra test."""
        parent, fname, block = self.mod.block_of(head_stmt)
        if isinstance(parent, ast.If) and len(block) == 1 and _pure(parent.test) \
                and not any(self._labels_if(s) for s in getattr(parent, "orelse" if fname == "body" else "body")):
            test = ast.unparse(parent.test)
            return parent, (f"({test})" if fname == "body" else f"not ({test})")
        return head_stmt, ""

    @staticmethod
    def _labels_if(stmt: ast.stmt) -> bool:
        return _is_not_none(stmt) and isinstance(stmt.test.left, ast.Name)

    def _spellings(self, *quals: str) -> set[str]:
        """How the file spells the qualified names (through its top-level imports)."""
        out = set()
        mine = set(self.mod.classes) | set(self.mod.functions)  # a name the file defines again is not the import
        for local, imported in self.mod.imports.items():
            if local in mine:
                continue
            for qual in quals:
                if qual == imported or qual.startswith(imported + "."):
                    out.add(local + qual[len(imported):])
        return out

    def _ce_names(self) -> set[str]:
        return self._spellings("torch.nn.CrossEntropyLoss")

    def _tanh_names(self) -> set[str]:
        return self._spellings("torch.tanh", "torch.nn.functional.tanh")

    def _function(self, stmt: ast.stmt) -> ast.AST:
        node = stmt
        while id(node) in self.mod.parent and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node = self.mod.parent[id(node)][0]
        return node

    # -- writing -------------------------------------------------------------

    def _emit(self, match: ir.Match, plan: Plan, start, cond, block, i, labelled, f: dict) -> None:
        mod, ctx = self.mod, self.ctx
        kernel = ctx.imports.guarded_import("liger_kernel.transformers.functional.liger_fused_linear_cross_entropy", plan)
        torch = ctx.imports.torch_module(plan)
        base = "_dslc_" + match.rule.pack + "_" + match.rule.name
        unit, nl = mod.block_unit, mod.nl
        rule = match.rule.qualified_name
        scaled = bool(f["scales"]) or f["cap"] is not None
        # the factors and the softcap, read where the guard runs (numbers, names and attributes that
        # nothing from the head to the loss writes: the values the original reads)
        logit_args = ("(" + "".join(f"({s}, {d}), " for s, d in f["scales"]).rstrip(" ") + ")", f["cap"] or "None")
        more = f", {logit_args[0]}, {logit_args[1]}" if scaled else ""
        if f["form"] == "loss_function":
            ok, fused = self._loss_function_helpers(plan, base, rule, kernel, torch, scaled)
            args = f"self.{f['head']}, {f['hidden']}, {f['labels']}"
            test = f"self.training and {f['labels']} is not None and {ok}(self, {args}, {f['vocab']}, {f['kwargs']})"
            call = f"{fused}({args}, {f['kwargs']}{more})"
        else:
            ok, fused = self._cross_entropy_helpers(plan, base, rule, kernel, torch, scaled)
            # the tests the original makes first come first; the vocabulary size is read only with labels, as there
            test = f"self.training and {f['labels']} is not None and {ok}(self.{f['head']}, {f['hidden']}, {f['labels']}, {f['vocab']}, {f['upcast']})"
            call = f"{fused}(self.{f['head']}, {f['hidden']}, {f['labels']}, {f['shift']}{more})"
        if scaled:
            test += f" and {self._logits_ok(plan, base, rule)}({logit_args[0]}, {logit_args[1]}, {f['cap_optional'] or f['cap'] is None})"
        indent = mod.indent(start)
        if f["extra"]:
            test = f"{f['extra']} and {test}"
        lo = mod.smap.line_start(start.lineno)
        hi = mod.smap.line_end(cond.end_lineno)
        original = mod.source[lo:hi]
        if not original.endswith(("\n", "\r")):
            original += nl
        text = (f"{indent}if {test}:{nl}"
                f"{indent}{unit}{f['logits']} = None{nl}"
                f"{indent}{unit}{f['loss']} = {call}{nl}"
                f"{indent}else:{nl}" + indent_lines(original, unit))
        text = ctx.fit(text, cond)
        plan.edits.append(Edit(lo, hi, text))
        plan.claimed.add((lo, hi))
        plan.lines.update(range(start.lineno, cond.end_lineno + 1))

    def _logits_ok(self, plan: Plan, base: str, rule: str) -> str:
        unit, nl = self.mod.block_unit, self.mod.nl
        return self.ctx.imports.dispatch_helper(base + "_logits_ok", (
            f"(scales, softcap, optional):{nl}"
            f'{unit}"""Added by `dslc apply` ({rule}, unsafe): whether the kernel computes the original\'s logits: each (factor, divide) of scales a finite nonzero number (folded into the hidden states and the bias), the softcap a finite positive number (None only where the original skips it where it is None)."""{nl}'
            f"{unit}def number(v):{nl}"
            f"{unit}{unit}return isinstance(v, (int, float)) and not isinstance(v, bool) and -float(\"inf\") < v < float(\"inf\"){nl}"
            f"{unit}return (all(number(s) and s != 0 for s, _ in scales){nl}"
            f"{unit}        and (number(softcap) and softcap > 0 if softcap is not None else optional)){nl}"), plan)

    def _scaled(self, rule: str, what: str) -> tuple[str, str, str, str]:
        """The pieces a fused helper adds where the logits are scaled or softcapped: (parameters,
        docstring, the lines folding the factors into h and the bias, the kernel's softcap argument)."""
        unit, nl = self.mod.block_unit, self.mod.nl
        return (", scales, softcap",
                f'{unit}"""Added by `dslc apply` ({rule}, unsafe): {what} of head(h) scaled by scales and softcapped as the original\'s logits, against labels, the logits not computed."""{nl}',
                f"{unit}bias = head.bias{nl}"
                f"{unit}for s, divide in scales:  # (h @ W.T + b) * s == (h * s) @ W.T + b * s{nl}"
                f"{unit}{unit}h, bias = (h / s, None if bias is None else bias / s) if divide else (h * s, None if bias is None else bias * s){nl}",
                ", softcap=softcap")

    def _cross_entropy_helpers(self, plan: Plan, base: str, rule: str, kernel: str, torch: str,
                               scaled: bool) -> tuple[str, str]:
        """transformers 4.x: a default CrossEntropyLoss() on the (shifted) flattened logits and labels."""
        unit, nl, helper = self.mod.block_unit, self.mod.nl, self.ctx.imports.dispatch_helper
        params, doc, fold, cap = self._scaled(rule, "the next-token cross-entropy") if scaled else (
            "", f'{unit}"""Added by `dslc apply` ({rule}, unsafe): the next-token cross-entropy of head(h) against labels, the logits not computed."""{nl}',
            "", "")
        ok = helper(base + "_ok", (
            f"(head, h, labels, vocab, upcast):{nl}"
            f'{unit}"""Added by `dslc apply` ({rule}, unsafe): in training with labels, whether the kernel takes the loss (on CUDA, the shapes it takes); the logits are then None."""{nl}'
            f"{unit}return ({kernel} is not None and h.is_cuda{nl}"
            f"{unit}        and h.dim() == 3 and labels.dim() == 2 and h.shape[:2] == labels.shape and not labels.is_floating_point(){nl}"
            f"{unit}        and (vocab is None or vocab == head.weight.shape[0]){nl}"
            f"{unit}        and (upcast or h.dtype == {torch}.float32 or {torch}.is_autocast_enabled())){nl}"), plan)
        fused = helper(base + ("_scaled" if scaled else ""), (
            f"(head, h, labels, shift{params}):{nl}" + doc + fold +
            f"{unit}if shift:  # tokens < n predict n{nl}"
            f"{unit}{unit}h, labels = h[..., :-1, :], labels[..., 1:]{nl}"
            f"{unit}rows = h.reshape(-1, h.shape[-1]){nl}"
            f"{unit}target = labels.reshape(-1).to(h.device){nl}"
            f"{unit}return {kernel}(rows, head.weight, target, {'bias' if scaled else 'head.bias'}, ignore_index=-100, reduction=\"mean\", label_smoothing=0.0{cap}){nl}"), plan)
        return ok, fused

    def _loss_function_helpers(self, plan: Plan, base: str, rule: str, kernel: str, torch: str,
                               scaled: bool) -> tuple[str, str]:
        """transformers 5.x: `self.loss_function(...)` where it is transformers' ForCausalLMLoss, whose
        computation (the labels padded with ignore_index and shifted, the logits upcast, a sum divided by
        num_items_in_batch or a mean) the fused helper repeats; the other losses run the original."""
        unit, nl, helper = self.mod.block_unit, self.mod.nl, self.ctx.imports.dispatch_helper
        lossfn = self.ctx.imports.guarded_import("transformers.loss.loss_utils.ForCausalLMLoss", plan)
        ok = helper(base + "_lf_ok", (
            f"(module, head, h, labels, vocab, kwargs):{nl}"
            f'{unit}"""Added by `dslc apply` ({rule}, unsafe): in training with labels, whether the kernel takes the loss: the model\'s loss_function is transformers\' ForCausalLMLoss (with the parameters this helper follows), the kernel runs on CUDA and takes the shapes; the logits are then None."""{nl}'
            f"{unit}shift_labels = kwargs.get(\"shift_labels\"){nl}"
            f"{unit}return ({kernel} is not None and {lossfn} is not None and h.is_cuda{nl}"
            f"{unit}        and {lossfn}.__code__.co_varnames[:6] == (\"logits\", \"labels\", \"vocab_size\", \"num_items_in_batch\", \"ignore_index\", \"shift_labels\"){nl}"
            f"{unit}        and module.loss_function is {lossfn}{nl}"
            f"{unit}        and not set(kwargs) & {{\"logits\", \"labels\", \"vocab_size\", \"source\", \"target\"}}{nl}"
            f"{unit}        and isinstance(kwargs.get(\"ignore_index\", -100), int){nl}"
            f"{unit}        and h.dim() == 3 and labels.dim() == 2 and h.shape[:2] == labels.shape and not labels.is_floating_point(){nl}"
            f"{unit}        and vocab == head.weight.shape[0]{nl}"
            f"{unit}        and (shift_labels is None or ({torch}.is_tensor(shift_labels) and shift_labels.is_contiguous(){nl}"
            f"{unit}                                      and shift_labels.numel() == labels.numel() and not shift_labels.is_floating_point()))){nl}"), plan)
        params, doc, fold, cap = self._scaled(rule, "ForCausalLMLoss") if scaled else (
            "", f'{unit}"""Added by `dslc apply` ({rule}, unsafe): ForCausalLMLoss of head(h) against labels, the logits not computed."""{nl}',
            "", "")
        fused = helper(base + ("_lf_scaled" if scaled else "_lf"), (
            f"(head, h, labels, kwargs{params}):{nl}" + doc + fold +
            f"{unit}ignore_index = kwargs.get(\"ignore_index\", -100){nl}"
            f"{unit}num_items = kwargs.get(\"num_items_in_batch\"){nl}"
            f"{unit}target = kwargs.get(\"shift_labels\"){nl}"
            f"{unit}if target is None:  # tokens < n predict n; the last position predicts nothing{nl}"
            f"{unit}{unit}target = {torch}.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]{nl}"
            f"{unit}rows = h.reshape(-1, h.shape[-1]){nl}"
            f"{unit}loss = {kernel}(rows, head.weight, target.reshape(-1).to(h.device), {'bias' if scaled else 'head.bias'}, ignore_index=ignore_index,{nl}"
            f"{unit}            reduction=\"sum\" if num_items is not None else \"mean\", label_smoothing=0.0{cap}){nl}"
            f"{unit}if num_items is not None:{nl}"
            f"{unit}{unit}loss = loss / (num_items.to(loss.device) if {torch}.is_tensor(num_items) else num_items){nl}"
            f"{unit}return loss{nl}"), plan)
        return ok, fused


def _is_not_none(stmt: ast.stmt) -> bool:
    """`if X is not None:` with no `else`."""
    t = stmt.test if isinstance(stmt, ast.If) else None
    return (t is not None and not stmt.orelse and isinstance(t, ast.Compare) and len(t.ops) == 1
            and isinstance(t.ops[0], ast.IsNot) and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value is None)


def _read(e: ast.expr) -> bool:
    """A name, an attribute of one, or an item of one at constants, names and slices of them
    (`outputs[0]`, `hidden_states[:, slice_indices, :]`): no call, so reading it twice gives the same value."""
    while isinstance(e, (ast.Attribute, ast.Subscript)):
        if isinstance(e, ast.Subscript) and not all(
                isinstance(n, (ast.Name, ast.Constant, ast.Slice, ast.Tuple, ast.UnaryOp, ast.unaryop, ast.Load))
                for n in ast.walk(e.slice)):
            return False
        e = e.value
    return isinstance(e, ast.Name)


def _head_cast(e: ast.expr, head: str | None) -> bool:
    """`<x>.to(self.<head>.weight.dtype)` (or `dtype=`): the same values each time it is evaluated (the
    guard passes it to both helpers)."""
    if not (isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "to"):
        return False
    dtypes = [*e.args, *(k.value for k in e.keywords if k.arg == "dtype")]
    return len(dtypes) == 1 and len(e.args) + len(e.keywords) == 1 and ast.unparse(dtypes[0]) == f"self.{head}.weight.dtype"


def _root(e: ast.expr) -> str:
    while isinstance(e, (ast.Attribute, ast.Subscript)):
        e = e.value
    return e.id


def _assigns(stmt: ast.stmt, name: str) -> bool:
    return isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
        and stmt.targets[0].id == name
