"""Issue 8 items 7 and 12 together: a layer `__init__` binds to `None`
where its condition fails, whose guarded call is reached through a helper
method (the guarded call in `self._norm(x)`, or the conv returned by
`self._conv(x)` and the guarded call in forward).

The guarded kind changes only `__init__`, so the helper changes for every
caller: it must be the class's own method called once, from the matched
code (a second caller passes it another value, whose norm the rewrite
would skip); the conv's value and each copy of it (the helper's parameter,
its `return`) are read by nothing but the guarded call, told apart per
method; nothing leaves between the calls; no loop reads the value on its
next iteration.  Small models written for these tests; torch runs each
applied rewrite against the original (strict state_dict, both branches of
the init condition).
"""

from __future__ import annotations

import pytest

from rewrite_support import load_module, run, stable

HEAD = '''import torch
from torch import nn


class M(nn.Module):
    def __init__(self, c, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        if use_norm:
            self.norm = nn.BatchNorm2d(c)
        else:
            self.norm = None
'''

BODIES = {
    'guarded call in the helper': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x)\n',
    'conv returned by a helper': '\n    def _conv(self, z):\n        return self.conv(z)\n\n    def forward(self, x):\n        x = self._conv(x)\n        if self.norm is not None:\n            x = self.norm(x)\n        return x\n',
    'helper result named': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        x = self._norm(x)\n        return x\n',
    'early return in the helper': '\n    def _norm(self, y):\n        if self.norm is None:\n            return y\n        y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x) * 2\n',
    'helper called twice': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x) + self._norm(x * 2)\n',
    'caller reads the conv value after': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x) + x\n',
    'helper reads its parameter before': '\n    def _norm(self, y):\n        m = y.mean()\n        if self.norm is not None:\n            y = self.norm(y)\n        return y + m\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x)\n',
    'caller and helper share a name': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        y = self.conv(x)\n        out = self._norm(y)\n        return out + y\n',
    'helper reads the conv value': '\n    def _conv(self, z):\n        t = self.conv(z)\n        self.last = t.mean()\n        return t\n\n    def forward(self, x):\n        x = self._conv(x)\n        if self.norm is not None:\n            x = self.norm(x)\n        return x + self.last\n',
    'caller copies the value': '\n    def _conv(self, z):\n        return self.conv(z)\n\n    def forward(self, x):\n        x = self._conv(x)\n        y = x * 1\n        if self.norm is not None:\n            x = self.norm(x)\n        return x + y\n',
    'helper may leave before the call': '\n    def _norm(self, y):\n        if y.shape[0] == 0:\n            return y\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x)\n',
    'caller loop reads it next iteration': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        s = x.sum() * 0\n        h = x\n        for _ in range(2):\n            x = x + s\n            s = s + h.sum()\n            h = self.conv(x)\n            x = self._norm(h)\n        return x\n',
    'helper called from another method': '\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def extra(self, x):\n        return self._norm(x)\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x)\n',
    'helper passes it to another helper': '\n    def _stat(self, z):\n        return torch.relu(z).mean() + torch.nn.functional.softmax(z, dim=-1).sum()\n\n    def _norm(self, y):\n        m = self._stat(y)\n        if self.norm is not None:\n            y = self.norm(y)\n        return y + m\n\n    def forward(self, x):\n        x = self.conv(x)\n        return self._norm(x)\n',
    'caller passes it to another helper': '\n    def _stat(self, z):\n        return torch.relu(z).mean() + torch.nn.functional.softmax(z, dim=-1).sum()\n\n    def _norm(self, y):\n        if self.norm is not None:\n            y = self.norm(y)\n        return y\n\n    def forward(self, x):\n        x = self.conv(x)\n        s = self._stat(x)\n        return self._norm(x) + s\n',
}

APPLIED = ['guarded call in the helper', 'conv returned by a helper', 'helper result named', 'early return in the helper']

REFUSED = {
    'helper called twice': ('S318', 'the helper `self._norm` is used more than once (lines 21, 21)'),
    'caller reads the conv value after': ('S204', '`x` (the value of `self.conv` or a copy of it) is also read at line 21 (in `forward`)'),
    'helper reads its parameter before': ('S204', '`y` (the value of `self.conv` or a copy of it) is also read at line 15 (in `_norm`)'),
    'caller and helper share a name': ('S204', '`y` (the value of `self.conv` or a copy of it) is also read at line 22 (in `forward`)'),
    'helper reads the conv value': ('S318', 'in the helper `_conv` the matched call is not the `return` value'),
    'caller copies the value': ('S204', '`x` (the value of `self.conv` or a copy of it) is also read at line 19 (in `forward`)'),
    'helper may leave before the call': ('S318', 'line 16 may leave before it'),
    'caller loop reads it next iteration': ('S204', '`h` is read at line 24 inside the loop around the match'),
    'helper called from another method': ('S318', 'the helper `self._norm` is used more than once (lines 20, 24)'),
    'helper passes it to another helper': ('S204', '`y` (the value of `self.conv` or a copy of it) is also read at line 18 (in `_norm`)'),
    'caller passes it to another helper': ('S204', '`x` (the value of `self.conv` or a copy of it) is also read at line 24 (in `forward`)'),
}


def _perturbed(cls, **kw):
    torch = pytest.importorskip("torch", reason="torch runs the models")
    torch.manual_seed(0)
    m = cls(3, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-1, 1)
        for key, b in m.named_buffers():
            if "running" in key:
                b.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("case", APPLIED)
def test_guarded_layer_through_a_helper_is_fused_under_the_init_guard(case):
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    source = HEAD + BODIES[case]
    result = run(source)
    assert [(m.status, m.code) for m in result.matches] == [("applied", None)], result.matches
    new = result.new_source
    # the methods after `__init__` stay; `__init__` builds the fused layer under the guard
    assert new[new.index("\n    def ", new.index("super().__init__()")):] == source[source.index("\n    def ", source.index("super().__init__()")):]
    assert "            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(c))\n            self.norm = None\n" in new
    stable(new)
    old_cls, new_cls = vars(load_module(source, "old"))["M"], vars(load_module(new, "new"))["M"]
    for kw in ({}, {"use_norm": False}):
        old = _perturbed(old_cls, **kw)
        fresh = new_cls(3, **kw)
        fresh.load_state_dict(old.state_dict())
        x = torch.randn(2, 3, 6, 6)
        for train in (False, True):
            old.train(train)
            fresh.train(train)
            torch.testing.assert_close(fresh(x), old(x))


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_guarded_layer_through_a_helper_refusals(case):
    code, why = REFUSED[case]
    result = run(HEAD + BODIES[case], select=["conv_batchnorm"])
    got = [(m.status, m.code, m.reason) for m in result.matches]
    assert len(got) == 1 and got[0][:2] == ("skipped", code) and why in got[0][2], got
    assert result.new_source is None


@pytest.mark.parametrize("case", ["helper called twice", "helper passes it to another helper",
                                  "caller passes it to another helper", "caller and helper share a name"])
def test_the_refused_rewrites_would_have_changed_the_numbers(case):
    """What the refused rewrite computes where the layer exists: the conv
    fused with the norm, the norm skipped at every call of the helper."""
    torch = pytest.importorskip("torch", reason="torch shows the refused rewrite would differ")
    m = _perturbed(vars(load_module(HEAD + BODIES[case], "refused"))["M"]).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = m(x)
    m.conv, m.norm = torch.nn.Sequential(m.conv, m.norm), None
    assert not torch.allclose(m(x), expected)
