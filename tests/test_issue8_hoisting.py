"""Issue 8 item 15, hoisting: the compound statements a match may and may not
cross, beside tests/test_complete_issue8.py (`elif` rewritten, `for` and
`with` between the statements refused).  Here: `while` and `try` between
them are refused with the reason, the mirrored move out of an `elif` branch
is refused where the layer must stay for the other branches, and a match
wholly inside one `for` or `with` body needs no hoisting and is rewritten.
"""

from __future__ import annotations

import pytest

from dslc import codes
from rewrite_support import run, stable

SOURCE = '''
import torch
from torch import nn


class InWhile(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res, n: int):
        y = self.dropout(x)
        out = y
        while n > 0:
            out = self.LayerNorm(y + res)
            n -= 1
        return out


class InTry(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res):
        y = self.dropout(x)
        try:
            out = self.LayerNorm(y + res)
        except RuntimeError:
            out = y
        return out


class ElifReverse(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res, mode: int):
        if mode == 0:
            y = x
        elif mode == 1:
            y = self.dropout(x)
        else:
            y = x * 2
        return self.LayerNorm(y + res)


class WholeInFor(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res, n: int):
        for _ in range(n):
            y = self.dropout(x)
            x = self.LayerNorm(y + res)
        return x


class WholeInWith(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res):
        with torch.autocast("cpu", enabled=False):
            y = self.dropout(x)
            out = self.LayerNorm(y + res)
        return out
'''


def outcomes(result) -> dict:
    return {m.class_name: (m.status, m.code, m.reason) for m in result.matches if m.rule.endswith("dropout_layernorm")}


@pytest.mark.parametrize("name, code, reason", [
    ("InWhile", codes.S_HOIST, "sit on both sides of the `while` at line 14, whose body runs once per iteration (or never)"),
    ("InTry", codes.S_HOIST, "sit on both sides of the `try` at line 28, whose body does not run exactly once"),
    ("ElifReverse", codes.S_ANCHOR, "`self.LayerNorm` must stay as it is for the branch that does not use the fused layer"),
])
def test_refused_across_while_try_and_out_of_an_elif(name, code, reason):
    status, got, why = outcomes(run(SOURCE.lstrip("\n")))[name]
    assert (status, got) == ("skipped", code) and reason in why, why


def test_a_match_inside_one_loop_or_with_body_is_rewritten():
    result = run(SOURCE.lstrip("\n"))
    got = outcomes(result)
    assert got["WholeInFor"][0] == got["WholeInWith"][0] == "applied"
    new = result.new_source
    assert "        for _ in range(n):\n            x = self.LayerNorm(x, res)\n        return x\n" in new
    assert ('        with torch.autocast("cpu", enabled=False):\n            out = self.LayerNorm(x, res)\n'
            "        return out\n") in new
    stable(new)
