"""Optional forward nodes (`... -> $s2 optional when $m is not None`,
docs/adr-language.md "Optional nodes"): the absent variant the compiler
derives, the analysis split that only rules with optional nodes turn on,
and the three ways one rule rewrites (present, absent, guarded) or refuses
(S330) a small attention chain.  Numerical equivalence on both paths:
tests/test_sdpa_rules.py (OptionalMaskAdd, OptionalMaskFill, the BERT-like
file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rewrite_support import assert_rewrite, run, stable

from dslc.analysis.api import analyze_source
from dslc.analysis.budget import MAX_OPTIONAL_IFS
from dslc.lang.loader import load_rules
from dslc.match.compiler import compile_rules
from dslc.match.optional import absent_variant

PACK = '''\
pack opt "optional mask"
requires torch ">=2.1" install "pip install torch"
rule attn "scores, optional additive mask, softmax, @ v -> SDPA" {
  kernel torch.nn.functional.scaled_dot_product_attention
  tolerance atol=1e-5 rtol=1e-4
  forward {
    torch.Tensor.transpose($k, -2, -1) -> $kt;
    torch.matmul($q, $kt) -> $s0;
    $s0 * $c -> $s1;
    $s1 + $m -> $s2 optional when $m is not None;
    torch.nn.functional.softmax($s2, dim=-1) -> $p;
    torch.matmul($p, $v) -> $out;
  } => {
    torch.as_tensor($m, dtype=$q.dtype) -> $s2 optional when $m is not None;
    torch.nn.functional.scaled_dot_product_attention($q, $k, $v, attn_mask=$s2, scale=$c) -> $out;
  }
}
'''

HEAD = '''\
import torch
import torch.nn.functional as F
from torch import nn


class A(nn.Module):
    def forward(self, q, k, v, mask=None):
        s = torch.matmul(q, k.transpose(-2, -1)) * 0.5
'''
TAIL = '''\
        p = F.softmax(s, dim=-1)
        return torch.matmul(p, v)
'''
REWRITTEN = '''\
import torch
import torch.nn.functional as F
from torch import nn


class A(nn.Module):
    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, {mask}scale=0.5)
'''


@pytest.fixture()
def pack(tmp_path: Path) -> str:
    path = tmp_path / "opt.adr"
    path.write_text(PACK)
    return str(path)


def test_the_compiler_adds_the_absent_variant(pack):
    result = load_rules([pack])
    (rule,) = result.packs[0].rules
    variant = absent_variant(rule)
    src = [n.op or n.callee.qualname for n in variant.forward.source]
    assert "+" not in src and len(src) == len(rule.forward.source) - 1
    softmax = variant.forward.source[3]
    assert softmax.args[0].name == "s1"  # the optional node's output is its chain input
    (call,) = variant.forward.target
    assert [k for k, _ in call.kwargs] == ["scale"]  # attn_mask=$s2 left out
    compiled = compile_rules([rule])
    assert [c.variant_of for c in compiled.rules] == [None, 0]
    assert [c.rank for c in compiled.rules] == [0, 0]


SPLIT = '''\
import torch
from torch import nn


class A(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, mask=None, flag=False):
        s = self.fc(x)
        if mask is not None:
            s = s + mask
        y = 0
        if flag:
            y = y + 1
        return s
'''


def test_the_analysis_splits_only_for_optional_nodes_and_only_an_update_of_a_dl_value():
    plain = analyze_source(SPLIT, "m.py")
    split = analyze_source(SPLIT, "m.py", optional_ifs={("+", "torch.nn.Linear")})
    assert len(plain.classes[0].paths) == 1
    # `if mask is not None: s = s + mask` splits; `if flag: y = y + 1` (y: no DL value) does not
    assert len(split.classes[0].paths) == 2


def _ifs_source(n):
    body = "".join(f"        if m{i} is not None:\n            s = s + m{i}\n" for i in range(n))
    return SPLIT.split("    def forward")[0] + "    def forward(self, x, " + ", ".join(
        f"m{i}=None" for i in range(n)) + "):\n        s = self.fc(x)\n" + body + "        return s\n"


def test_optional_ifs_split_all_or_none_per_function():
    # up to the limit every one splits; one more and none does (splitting only
    # the first ones would let a second apply, after those are rewritten,
    # split and rewrite the rest: the output would not be a fixed point)
    facts = analyze_source(_ifs_source(MAX_OPTIONAL_IFS), "m.py", optional_ifs={("+", "torch.nn.Linear")})
    assert len(facts.classes[0].paths) == 2 ** MAX_OPTIONAL_IFS
    facts = analyze_source(_ifs_source(MAX_OPTIONAL_IFS + 1), "m.py", optional_ifs={("+", "torch.nn.Linear")})
    assert len(facts.classes[0].paths) == 1


def test_present_absent_and_guarded(pack):
    # present: the mask added unconditionally (the conversion, no None test)
    assert_rewrite(HEAD + "        s = s + mask\n" + TAIL,
                   REWRITTEN.format(mask="attn_mask=torch.as_tensor(mask, dtype=q.dtype), "), rules=(pack,))
    # absent: no mask, no attn_mask
    assert_rewrite(HEAD + TAIL, REWRITTEN.format(mask=""), rules=(pack,))
    # guarded: the `if` is deleted, the mask converted only where it is not None
    assert_rewrite(HEAD + "        if mask is not None:\n            s = s + mask\n" + TAIL,
                   REWRITTEN.format(mask="attn_mask=None if mask is None else torch.as_tensor(mask, dtype=q.dtype), "),
                   rules=(pack,))


@pytest.mark.parametrize("guard, reason", [
    ("        if mask is not None:\n            s = s + mask\n        else:\n            s = s * 2\n",
     "has an `else` branch"),
    ("        if self.training:\n            s = s + mask\n", "tests `self.training`, not `mask is not None`"),
    ("        if mask is None:\n            pass\n        else:\n            s = s + mask\n", "in the `else` branch"),
])
def test_other_guards_are_refused_with_s330(pack, guard, reason):
    assert_rewrite(HEAD + guard + TAIL, None, rules=(pack,), skipped=[("attn", "S330", reason)])


def test_other_statements_in_the_if_refuse_by_the_data_flow(pack):
    guard = "        if mask is not None:\n            s = s + mask\n            s = s * 2\n"
    assert_rewrite(HEAD + guard + TAIL, None, rules=(pack,), skipped=[("attn", "S204", "`s`")])


def test_mask_reassigned_after_the_if_is_refused(pack):
    guard = "        if mask is not None:\n            s = s + mask\n        mask = None\n"
    assert_rewrite(HEAD + guard + TAIL, None, rules=(pack,), skipped=[("attn", "S204", "`s`")])


def _chains(n: int) -> str:
    body = "".join(f"        s{i} = torch.matmul(q, k.transpose(-2, -1)) * 0.5\n"
                   f"        if m{i} is not None:\n            s{i} = s{i} + m{i}\n"
                   f"        o{i} = torch.matmul(F.softmax(s{i}, dim=-1), v)\n" for i in range(n))
    args = ", ".join(f"m{i}=None" for i in range(n))
    return HEAD.split("    def forward")[0] + f"    def forward(self, q, k, v, {args}):\n" + body + \
        "        return " + " + ".join(f"o{i}" for i in range(n)) + "\n"


@pytest.mark.parametrize("n", [MAX_OPTIONAL_IFS, MAX_OPTIONAL_IFS + 1])
def test_a_second_apply_changes_nothing_past_the_optional_if_limit(pack, n):
    # n chains, each with its mask in an `if`: up to the limit all are
    # rewritten, past it none (rewriting the first four would leave the fifth
    # for a second apply to rewrite)
    result = run(_chains(n), rules=(pack,))
    applied = [m for m in result.matches if m.status == "applied"]
    assert len(applied) == (n if n <= MAX_OPTIONAL_IFS else 0), [(m.status, m.reason) for m in result.matches]
    stable(result.new_source or _chains(n), rules=(pack,))
