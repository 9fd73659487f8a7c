"""Shared test support: `assert_rewrite` and the model sources tests reuse.

`assert_rewrite(before, after, rules=..., skipped=..., warnings=...)` is
modelled on LibCST's `CodemodTest.assertCodemod`: both texts are dedented,
`before` goes through the real `dslc apply` pipeline (`dslc.apply.driver.
apply_paths`: loader, compiler, analysis, matcher, rewriter, in diff mode on
a file in a fresh temporary folder), and the output must equal `after`
exactly.  The skipped matches (rule, code, and optionally a piece of the
reason) and the file's warnings (code, and optionally a piece of the message)
must be exactly the ones given.  Every rewrite must also parse and be a fixed
point: a second apply on the output changes nothing.

The model sources (`BERT_EXAMPLE`, `self_output()`) are the BertSelfOutput
block of the ADOPTER paper (examples/bert_self_output.py) in the few
spellings the tests need, written once here; `REMAP_HOOK` is the checkpoint
pre-hook rewrites add.  `run` and `stable` are the pipeline without the
comparison, `load_packs` loads packs or fails, `load_module` runs a model
source to compare an original and its rewrite in torch.
"""

from __future__ import annotations

import ast
import difflib
import functools
import os
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path
from typing import Iterable, Sequence

from dslc.apply.driver import ApplyOptions, FileResult, apply_paths
from dslc.lang.loader import load_rules

REPO = Path(__file__).resolve().parent.parent
RULEPACKS = REPO / "rulepacks"

# ---------------------------------------------------------------------------
# Model sources

BERT_EXAMPLE = (REPO / "examples" / "bert_self_output.py").read_text()

_SELF_OUTPUT = '''\
{imports}

class {name}(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
{forward}'''

# Dropout, add, LayerNorm as in the paper: one name rebound throughout.
PAPER_FORWARD = '''\
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states
'''

# The same with each intermediate named, so that a test can read one later.
NAMED_FORWARD = '''\
        hidden_states = self.dense(hidden_states)
        dropped = self.dropout(hidden_states)
        out = self.LayerNorm(dropped + input_tensor)
        return {tail}
'''


def self_output(name: str = "SelfOutput", *, tail: str | None = None,
                imports: str = "import torch\nfrom torch import nn\n") -> str:
    """A BertSelfOutput-like module.  With `tail`, the forward names its
    intermediates (`dropped`, `out`) and returns `tail`; without, it is the
    paper's version."""
    forward = PAPER_FORWARD if tail is None else NAMED_FORWARD.format(tail=tail)
    return _SELF_OUTPUT.format(imports=imports, name=name, forward=forward)



# The pre-hook a rewrite that renames parameters adds after the imports
# (with the blank lines around it), so that old checkpoints still load.
REMAP_HOOK = '''

def _dslc_remap_state_dict(renames):
    """A load_state_dict pre-hook (added by `dslc apply`): load checkpoints saved before the rewrite."""

    def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for new, old, keep in renames:
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict[prefix + old] if keep else state_dict.pop(prefix + old)

    return hook
'''


def remap_hook(indent: int = 8) -> str:
    """`REMAP_HOOK` indented to sit inside an indented `assert_rewrite` text."""
    return textwrap.indent(REMAP_HOOK, " " * indent)


# ---------------------------------------------------------------------------
# The pipeline


def fixture(code: str) -> str:
    """`code` dedented, without the newline that follows an opening `'''`."""
    code = textwrap.dedent(code)
    return code[1:] if code.startswith("\n") else code


def rule_paths(rules: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[str, ...]:
    """Pack names (`adopter` -> rulepacks/adopter.adr) or paths, as paths."""
    if isinstance(rules, (str, os.PathLike)):
        rules = (rules,)
    out = []
    for r in rules:
        shipped = RULEPACKS / f"{r}.adr"
        out.append(str(shipped if isinstance(r, str) and shipped.exists() else r))
    return tuple(out)


def load_packs(paths: tuple[str, ...] | str, select: tuple[str, ...] = ()) -> list:
    """The loaded packs; a pack that does not load fails the test (no fallback).
    Cached per path, selection and file contents (a test may rewrite a pack file)."""
    paths = rule_paths(paths)
    contents = tuple(Path(p).read_bytes() if Path(p).is_file() else None for p in paths)
    return list(_packs(paths, select, contents))


@functools.lru_cache(maxsize=None)
def _packs(paths: tuple[str, ...], select: tuple[str, ...], contents: tuple) -> list:
    result = load_rules(list(paths), select)
    errors = [str(d) for d in result.diagnostics if d.is_error]
    assert result.ok and result.packs, f"rule packs {paths} did not load: {errors}"
    return result.packs


def run(source: str, *, rules=("adopter",), select: Sequence[str] = (), unsafe: bool = False,
        name: str = "model.py") -> FileResult:
    """`dslc apply` (diff mode, one process, no cache) on `source` saved as `name`."""
    loaded = load_packs(rules, tuple(select))
    with tempfile.TemporaryDirectory(prefix="dslc-rewrite-") as tmp:
        path = Path(tmp) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.encode())
        report = apply_paths([str(path)], loaded, ApplyOptions(mode="diff", jobs=1, cache_dir=None, unsafe=unsafe))
        assert path.read_bytes() == source.encode(), "diff mode wrote the file"
    (result,) = report.files
    return result


def stable(new: str, **kw) -> None:
    """`new` parses and a second apply (same keywords as `run`) changes nothing."""
    ast.parse(new)
    again = run(new, **kw)
    assert again.new_source is None, "a second apply changed the output:\n" + _mismatch(new, again.new_source or "")
    assert not any(m.status == "applied" for m in again.matches)


def _short(rule: str) -> str:
    return rule.split(":", 1)[-1]


def _entries_agree(got: list[tuple[str, ...]], expected: Iterable[Sequence[str]], what: str) -> None:
    """`got`: (key, code, text); each expected item (key, code[, piece of text])."""
    expected = [tuple(e) for e in expected]
    keys = [g[:2] for g in got]
    want = [e[:2] for e in expected]
    assert sorted(keys) == sorted(want), f"{what}: got {got}, expected {expected}"
    for e in expected:
        if len(e) > 2:
            assert any(g[:2] == e[:2] and e[2] in g[2] for g in got), f"{what}: no {e[:2]} says {e[2]!r}: {got}"


def assert_rewrite(before: str, after: str | None = None, *, rules=("adopter",), select: Sequence[str] = (),
                   skipped: Iterable[Sequence[str]] = (), warnings: Iterable[Sequence[str] | str] = (),
                   applied: Iterable[str] | None = None, unsafe: bool = False, name: str = "model.py",
                   idempotent: bool = True) -> FileResult:
    """Rewrite `before` with `rules` and compare with `after` (None or equal
    to `before`: the file must stay unchanged).

    `skipped`: every skipped match as (rule, code) or (rule, code, a piece of
    its reason); rule names may be short (`softmax`) or qualified.
    `warnings`: every warning of the file as a code or (code, a piece of its
    message).  `applied`: when given, the rules applied, one entry per match.
    A changed output must parse and, unless `idempotent=False`, be left
    alone by a second apply.  Returns the `FileResult` for further checks.
    """
    before = fixture(before)
    expected = before if after is None else fixture(after)
    result = run(before, rules=rules, select=select, unsafe=unsafe, name=name)
    assert not result.errors, f"errors: {result.errors}"
    got = result.new_source if result.new_source is not None else before
    assert got == expected, _mismatch(expected, got)
    _entries_agree([(_short(m.rule), m.code or "", m.reason or "") for m in result.matches if m.status == "skipped"],
                   [(_short(s[0]), *s[1:]) for s in skipped], "skipped")
    _entries_agree([(w.code, "", w.message) for w in result.warnings],
                   [(w, "") if isinstance(w, str) else (w[0], "", *w[1:]) for w in warnings], "warnings")
    if applied is not None:
        done = sorted(_short(m.rule) for m in result.matches if m.status == "applied")
        assert done == sorted(_short(a) for a in applied), f"applied: {done}"
    if got != before:
        assert any(m.status == "applied" for m in result.matches)
        ast.parse(got)
        if idempotent:
            stable(got, rules=rules, select=select, unsafe=unsafe, name=name)
    return result


def _mismatch(expected: str, got: str) -> str:
    return "output differs (- expected, + got):\n" + "".join(
        difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "expected", "got"))


def load_module(source: str, name: str) -> types.ModuleType:
    """Run model source as a fresh module `name` (not put in sys.modules), to
    compare an original and its rewrite in torch."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


_LOAD = """\
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

"""

_WITHOUT_LIGER = """\
import importlib.util, sys
{path}sys.modules["liger_kernel"] = None
import torch

""" + _LOAD

# The start of a child script that runs a rewritten file's kernel branch on
# CPU: `load(name, path)` imports a file as a module; `FakeCuda` is a tensor
# subclass whose `is_cuda` is True (the run-time dispatch then takes the
# kernel); `fake_liger(name=function, ...)` installs a stand-in
# `liger_kernel.transformers.functional` holding the given functions.
KERNEL_PRELUDE = """\
import importlib.util, sys, types
import torch


class FakeCuda(torch.Tensor):
    # a CPU tensor that says it is on CUDA: the dispatch takes the kernel
    @property
    def is_cuda(self):
        return True


def fake_liger(**functions):
    fake = types.ModuleType("liger_kernel.transformers.functional")
    for name, fn in functions.items():
        setattr(fake, name, fn)
    for name in ("liger_kernel", "liger_kernel.transformers"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["liger_kernel.transformers.functional"] = fake


""" + _LOAD


# transformers 5.x' ForCausalLMLoss (transformers/loss/loss_utils.py), restated for the tests: the
# logits upcast, the labels padded with one ignored position and shifted (unless shift_labels is
# given), flattened to vocab_size columns, then a mean, or a sum divided by num_items_in_batch.
CAUSAL_LOSS = """
import torch.nn.functional as F


def ForCausalLMLoss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **kwargs):
    logits = logits.float()
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()
    flat = logits.view(-1, vocab_size)
    target = shift_labels.view(-1).to(flat.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat, target, ignore_index=ignore_index)
    return F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="sum") / num_items_in_batch
"""

# A child-script piece (after KERNEL_PRELUDE): `flce`, liger-kernel 0.8's
# liger_fused_linear_cross_entropy as documented, in PyTorch (the rows through
# the linear layer in their dtype, then in float32 the softcap `c * tanh(x /
# c)` and the cross-entropy), installed behind the guarded import; each call's
# rows, bias, softcap and reduction go to `calls`.
REF_FLCE = """
import torch.nn.functional as F

calls = []


def flce(x, weight, target, bias=None, ce_weight=None, ignore_index=-100, lse_square_scale=0.0,
         label_smoothing=0.0, reduction="mean", softcap=None):
    assert x.dim() == 2 and target.dim() == 1 and x.shape[0] == target.shape[0] and x.is_contiguous()
    assert ce_weight is None and lse_square_scale == 0.0
    calls.append({"rows": list(x.shape), "bias": bias is not None, "softcap": softcap, "reduction": reduction})
    logits = F.linear(x.as_subclass(torch.Tensor), weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, target.as_subclass(torch.Tensor), ignore_index=ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)


fake_liger(liger_fused_linear_cross_entropy=flce)
"""

# A child-script piece (after KERNEL_PRELUDE) for a rewritten file whose
# fused linear cross-entropy helper imported the real liger-kernel: `orig`
# and `new` are the two modules loaded from argv, and each call of Liger's
# function (on plain CPU tensors, for Triton's interpreter) is counted in
# `calls`.
SPY_REAL_FLCE = """
orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
real = new.liger_fused_linear_cross_entropy
assert real is not None, "liger_kernel did not import"
calls = []


def plain(x):
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def kernel(*a, **k):  # Liger's own function, on plain CPU tensors (Triton's interpreter)
    calls.append(1)
    return real(*[plain(x) for x in a], **{n: plain(v) for n, v in k.items()})


new.liger_fused_linear_cross_entropy = kernel
"""

# The end of a child script that compares two rotary attention modules `ma`
# (original) and `mb` (rewritten) of the tests' `Attn(x, cos, sin) -> (q, k)`
# form: the state dict loads strictly, and q, k and every parameter gradient
# are bit-identical; prints "ok".
ROPE_SAME_OUTPUTS_AND_GRADS = """
mb.load_state_dict(ma.state_dict(), strict=True)
x = torch.randn(2, 5, 16) * 2 + 0.5
ang = torch.rand(1, 5, 2) * 3
cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
outs = []
for m in (ma, mb):
    q, k = m(x, cos, sin)
    (q.square().sum() + (k * 3).sum()).backward()
    outs.append((q, k, [p.grad for p in m.parameters()]))
(qa, ka, ga), (qb, kb, gb) = outs
assert torch.equal(qa, qb) and torch.equal(ka, kb)
assert all(torch.equal(u, v) for u, v in zip(ga, gb))
print("ok")
"""


def run_without_liger(folder: Path, body: str, *, sys_path: str | os.PathLike | None = None,
                      timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `body` (dedented) in a fresh interpreter where `import liger_kernel`
    fails, as on a machine without it; `load(name, path)` imports a file as a
    module, and `sys_path` goes first on the module path."""
    path = f"sys.path.insert(0, {str(sys_path)!r})\n" if sys_path is not None else ""
    script = Path(folder) / "run.py"
    script.write_text(_WITHOUT_LIGER.format(path=path) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout)
