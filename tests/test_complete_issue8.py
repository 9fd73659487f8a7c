"""Issue 8, places that were missed (items 6-9, 12, 14, 15).

Each test is a small model written for the test: the real pipeline (loader,
compiler, analysis, matcher, rewriter) must find the place and rewrite it
(before/after), or refuse it with a reason where a rewrite is unsafe.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dslc.analysis import analyze_source
from dslc import codes
from rewrite_support import assert_rewrite, load_module, remap_hook, run, stable

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"


def outcomes(result, rule: str):
    """(class, status, reason with its code) of each match of `rule`."""
    return [(m.class_name, m.status, m.reason if m.reason is None else codes.Reason(m.code, m.reason))
            for m in result.matches if m.rule.split(":")[-1] == rule]


def vars_of_module(source: str, name: str) -> dict:
    return vars(load_module(source, name))


# ---------------------------------------------------------------------------
# 6. classes nested inside classes

NESTED = '''import torch
from torch import nn


class Outer(nn.Module):
    class Inner(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h)

    def __init__(self, c):
        super().__init__()
        self.inner = Outer.Inner(c)

    def forward(self, x):
        return self.inner(x)
'''


def test_nested_class_is_analysed_with_its_qualified_name():
    facts = analyze_source(NESTED, "m.py")
    names = {c.name: c for c in facts.classes}
    assert set(names) == {"Outer", "Outer.Inner"}
    inner = names["Outer.Inner"]
    assert inner.qualname == "m.Outer.Inner"
    assert [b.attr for b in inner.init] == ["conv", "bn"]
    assert [n.attr for n in inner.paths[0].nodes if n.kind == "layer"] == ["conv", "bn"]
    # the outer class's layer resolves to the nested class
    assert names["Outer"].init[0].type == "m.Outer.Inner"


def test_nested_class_is_rewritten():
    # The inner class is rewritten in place; the outer class keeps its code.
    assert_rewrite(NESTED, """\
        import torch
        from torch import nn
        from torch.ao.nn.intrinsic import ConvBn2d
        """ + remap_hook() + """

        class Outer(nn.Module):
            class Inner(nn.Module):
                def __init__(self, c):
                    super().__init__()
                    self.conv = ConvBn2d(nn.Conv2d(c, c, 3), nn.BatchNorm2d(c))
                    self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                        ('conv.0.weight', 'conv.weight', False),
                        ('conv.0.bias', 'conv.bias', False),
                        ('conv.1.weight', 'bn.weight', False),
                        ('conv.1.bias', 'bn.bias', False),
                        ('conv.1.running_mean', 'bn.running_mean', False),
                        ('conv.1.running_var', 'bn.running_var', False),
                        ('conv.1.num_batches_tracked', 'bn.num_batches_tracked', False),
                    )))

                def forward(self, x):
                    return self.conv(x)

            def __init__(self, c):
                super().__init__()
                self.inner = Outer.Inner(c)

            def forward(self, x):
                return self.inner(x)
        """, applied=["conv_batchnorm"])


def test_nested_class_with_a_sibling_base_and_a_top_level_namesake():
    source = '''import torch
from torch import nn


class Outer(nn.Module):
    class Base(nn.Module):
        pass

    class Inner(Base):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h)


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.conv2 = nn.Conv2d(c, c, 3)

    def forward(self, x):
        return self.conv2(self.conv(x))
'''
    facts = analyze_source(source, "m.py")
    inner = next(c for c in facts.classes if c.name == "Outer.Inner")
    assert inner.bases == ("m.Outer.Base",)
    result = run(source)
    assert outcomes(result, "conv_batchnorm") == [("Outer.Inner", "applied", None)]
    # the top-level namesake keeps its code
    assert "        return self.conv2(self.conv(x))\n" in result.new_source
    stable(result.new_source)


# ---------------------------------------------------------------------------
# 7. inlined helpers: parameters bound to the caller's arguments

HELPERS = '''import torch
from torch import nn


class InHelper(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)

    def _conv_bn(self, inp):
        t = self.conv(inp)
        return self.bn(t)

    def forward(self, x):
        return self._conv_bn(x) + 1


class Across(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def _bn_act(self, y):
        y = self.bn(y)
        return self.act(y)

    def forward(self, x):
        h = self.conv(x)
        return self._bn_act(h)


class SameName(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)

    def _bn(self, h):
        return self.bn(h)

    def forward(self, x):
        h = self.conv(x)
        return self._bn(h)


class ThroughReturn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)

    def _conv(self, z):
        return self.conv(z)

    def forward(self, x):
        o = self._conv(x)
        return self.bn(o)


class OtherValue(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)

    def _bn(self, y):
        return self.bn(y)

    def forward(self, x):
        h = self.conv(x)
        return self._bn(x) + h
'''


def test_helper_parameters_carry_the_callers_values():
    facts = analyze_source(HELPERS, "m.py")
    across = next(c for c in facts.classes if c.name == "Across")
    entry = next(n for n in across.paths[0].nodes if n.copies)
    assert entry.copies == (("y", "h"),)
    result = run(HELPERS)
    got = {name: (status, reason) for name, status, reason in outcomes(result, "conv_batchnorm")}
    # entirely inside the helper: rewritten there, spelled with the helper's names
    assert got["InHelper"] == ("applied", None)
    assert "        return self.conv(inp)\n" in result.new_source
    # conv in forward, its BatchNorm in a helper: found through the parameter
    # binding and rewritten (the helper's call deleted, the init fused)
    assert got["Across"] == ("applied", None)
    assert "    def _bn_act(self, y):\n        return self.act(y)\n" in result.new_source
    # found through a same-name parameter / the helper's return, refused with the reason
    status, reason = got["SameName"]
    assert status == "skipped" and "is not `v = self.<layer>(v)`" in reason, reason
    status, reason = got["ThroughReturn"]
    assert status == "skipped" and "crosses methods" in reason, reason
    # the helper is called on another value: no match at all
    assert "OtherValue" not in got
    stable(result.new_source)


def test_fusion_across_a_helper_computes_the_same():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    source = HELPERS[: HELPERS.index("class SameName")]
    result = run(source)
    assert dict((n, s) for n, s, _ in outcomes(result, "conv_batchnorm")) == {"InHelper": "applied", "Across": "applied"}
    old_ns, new_ns = vars_of_module(source, "old"), vars_of_module(result.new_source, "new")
    for name in ("InHelper", "Across"):
        torch.manual_seed(0)
        old = old_ns[name](3)
        with torch.no_grad():
            old.bn.running_mean.uniform_(-1, 1)
        new = new_ns[name](3)
        new.load_state_dict(old.state_dict())
        x = torch.randn(2, 3, 8, 8)
        for train in (False, True):
            old.train(train)
            new.train(train)
            torch.testing.assert_close(new(x), old(x))


ACROSS = HELPERS[HELPERS.index("class Across"): HELPERS.index("class SameName")]


@pytest.mark.parametrize("change, expected", [
    # the helper has another caller
    ("        return self._bn_act(h)\n", "        return self._bn_act(h) + self._bn_act(x)\n"),
    # the conv output is read again
    ("        return self._bn_act(h)\n", "        return self._bn_act(h) + h\n"),
    ("        return self._bn_act(h)\n", "        return self._bn_act(h, h.mean())\n"),
    # a second parameter aliases the conv output and is read after the BatchNorm
    ("        return self._bn_act(h)\n", "        return self._bn_act(h, h)\n"),
    # the helper's BatchNorm runs only on some paths
    ("        y = self.bn(y)\n", "        if y.shape[0] > 1:\n            y = self.bn(y)\n"),
    # the helper reads its parameter before the BatchNorm
    ("        y = self.bn(y)\n", "        print(y)\n        y = self.bn(y)\n"),
])
def test_fusion_across_a_helper_refusals(change, expected):
    source = "import torch\nfrom torch import nn\n\n\n" + ACROSS.replace(change, expected)
    assert ACROSS.replace(change, expected) != ACROSS
    if "(h, h" in expected:
        source = source.replace("    def _bn_act(self, y):\n", "    def _bn_act(self, y, z):\n")
        source = source.replace("        return self.act(y)\n", "        return self.act(y) + z\n")
    result = run(source)
    got = outcomes(result, "conv_batchnorm")
    assert got and all(status == "skipped" for _, status, _ in got), got


# ---------------------------------------------------------------------------
# 8. a layer input passed by keyword

def test_layer_input_by_keyword():
    source = '''import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        h = self.conv(input=x)
        return self.bn(input=h)
'''
    result = run(source)
    assert outcomes(result, "conv_batchnorm") == [("Block", "applied", None)]
    assert "    def forward(self, x):\n        return self.conv(x)\n" in result.new_source
    stable(result.new_source)


def test_forward_parameter_table_agrees_with_torch():
    torch = pytest.importorskip("torch", reason="torch is needed to read the layers' forward signatures")
    import inspect

    from dslc.match.signatures import FORWARD_PARAMS

    for qual, params in FORWARD_PARAMS.items():
        cls = getattr(torch.nn, qual.rsplit(".", 1)[1], None)
        if cls is None:
            continue
        names = [p.name for p in list(inspect.signature(cls.forward).parameters.values())[1:]
                 if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert tuple(names) == params, qual


# ---------------------------------------------------------------------------
# 9. `**dd` of a local dict literal in a constructor call

STAR = '''import torch
from torch import nn


class Literal(nn.Module):
    def __init__(self, c, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(c, c, 3, **dd)
        self.bn = nn.BatchNorm2d(c, **dd)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h)


class DictCall(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        dd = dict(affine=False, device=device)
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c, **dd)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h)


class Unknown(nn.Module):
    def __init__(self, c, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c, **kw)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h)


class Mutated(nn.Module):
    def __init__(self, c, device=None):
        super().__init__()
        dd = {"device": device}
        dd["affine"] = False
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c, **dd)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h)


class Rebound(nn.Module):
    def __init__(self, c, flag=True):
        super().__init__()
        dd = {"affine": flag}
        flag = False
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c, **dd)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h)
'''


def test_star_kwargs_of_a_local_dict_literal():
    facts = analyze_source(STAR, "m.py")
    by = {c.name: {b.attr: b for b in c.init} for c in facts.classes}
    assert [(k, v.text) for k, v in by["Literal"]["bn"].kwargs] == [("device", "device"), ("dtype", "dtype")]
    assert [(k, v.text) for k, v in by["DictCall"]["bn"].kwargs] == [("affine", "False"), ("device", "device")]
    # unknown keys, a mutated dict, a value rebound before the call: left as `**`
    for name in ("Unknown", "Mutated", "Rebound"):
        assert [k for k, _ in by[name]["bn"].kwargs] == ["**"], name


def test_star_kwargs_match_or_refuse():
    result = run(STAR)
    got = {name: (status, reason) for name, status, reason in outcomes(result, "conv_batchnorm")}
    assert got["Literal"] == ("applied", None)
    assert "        self.conv = ConvBn2d(nn.Conv2d(c, c, 3, **dd), nn.BatchNorm2d(c, **dd))\n" in result.new_source
    assert "DictCall" not in got  # affine=False: proved not to match
    # unknown keys: no match, a near miss that names what cannot be proved
    for name in ("Unknown", "Mutated", "Rebound"):
        assert name not in got
    stable(result.new_source)


def test_unknown_star_kwargs_are_near_misses(tmp_path, capsys):
    import json

    from dslc.cli import main

    model = tmp_path / "star.py"
    model.write_text(STAR)
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--format", "json", "--near-misses",
                 "--diff", str(model)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    why = {n["class"]: n["reason"] for n in report["near_misses"] if n["rule"] == "adopter:conv_batchnorm"}
    assert "Literal" not in why and "DictCall" in why
    for name, star in (("Unknown", "**kw"), ("Mutated", "**dd"), ("Rebound", "**dd")):
        assert star in why[name] and "affine" in why[name], (name, why.get(name))


# ---------------------------------------------------------------------------
# 14. softmax over `dim=3` of a tensor of provable rank 4

RANKS = '''import math
import torch
from torch import nn
import torch.nn.functional as F


class Einsum(nn.Module):
    def forward(self, q, k):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        return F.softmax(scores, dim=3)


class Viewed(nn.Module):
    def forward(self, x, b, h, s):
        x = x.view(b, h, s, s)
        return F.softmax(x * 0.5, dim=3)


class Matmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, q, k, b, s, h, d):
        q = q.view(b, s, h, d).permute(0, 2, 1, 3)
        k = k.view(b, s, h, d).permute(0, 2, 1, 3)
        att = torch.matmul(q, k.transpose(-1, -2))
        att = self.drop(att)
        return F.softmax(att, dim=3)


class WrongDim(nn.Module):
    def forward(self, q, k):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        return F.softmax(scores, dim=2)


class UnknownDivisor(nn.Module):
    def forward(self, q, k, d):
        scores = torch.matmul(q, k) / math.sqrt(d)
        return F.softmax(scores, dim=3)


class MaybeRank5(nn.Module):
    def forward(self, q, k, m):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) + m
        return F.softmax(scores, dim=3)


class ViewOfShape(nn.Module):
    def forward(self, x, shape):
        x = x.view(shape)
        return F.softmax(x, dim=3)


class OnOnePath(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, x, flag: bool):
        if flag:
            x = self.drop(x.view(2, 3, 4, 5))
        return F.softmax(x, dim=3)
'''


def test_softmax_over_the_last_of_four_provable_dims():
    result = run(RANKS)
    got = {name: status for name, status, _ in outcomes(result, "softmax")}
    assert got == {"Einsum": "applied", "Viewed": "applied", "Matmul": "applied", "OnOnePath": "skipped"}
    reason = next(r for name, _, r in outcomes(result, "softmax") if name == "OnOnePath")
    assert "only on some paths" in reason
    new = result.new_source
    assert "        return softmax(scores)\n" in new
    assert "        return softmax(x * 0.5)\n" in new
    assert "        return softmax(att)\n" in new
    # not provable, or not the last dim: unchanged
    for line in ("F.softmax(scores, dim=2)", "F.softmax(scores, dim=3)\n\n\nclass MaybeRank5",
                 "F.softmax(x, dim=3)\n\n\nclass OnOnePath"):
        assert line in new, line
    assert new.rstrip().endswith("return F.softmax(x, dim=3)")
    stable(new)


# 14, scaled scores: `scores * self.scale` keeps the rank when `self.scale` is
# a Python number computed in `__init__` (analysis/scalars.py)

SCALED = '''import math
import torch
from torch import nn
import torch.nn.functional as F


class ConfigScale(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.scale = 1 / (config.d_head ** 0.5)

    def forward(self, q, k):
        scores = torch.einsum("ibnd,jbnd->bnij", q, k) * self.scale
        return F.softmax(scores, dim=3)


class ChainedScale(nn.Module):
    def __init__(self, config, dim_head: int = 64):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_heads
        inner = dim_head
        inner *= 2
        self.temp = math.sqrt(inner) if config.scaled else 1.0
        self.scale = self.head_dim ** -0.5 * self.temp

    def forward(self, q, k):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale / math.sqrt(self.head_dim)
        return F.softmax(scores, dim=3)


class TensorScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.ones(1, 1, 1, 1, 1)

    def forward(self, q, k):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale
        return F.softmax(scores, dim=3)


class ParameterScale(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(config.n))

    def forward(self, q, k):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.gain
        return F.softmax(scores, dim=3)
'''


def test_softmax_over_scores_scaled_by_an_init_number():
    result = run(SCALED)
    got = {name: status for name, status, _ in outcomes(result, "softmax")}
    assert got == {"ConfigScale": "applied", "ChainedScale": "applied"}
    new = result.new_source
    assert new.count("return softmax(scores)\n") == 2
    # a tensor (rank 5 here: dim=3 is not its last dim) and a parameter prove nothing
    assert new.count("return F.softmax(scores, dim=3)\n") == 2
    stable(new)


def test_the_rank_5_tensor_scale_is_really_not_the_last_dim():
    # the refusal above is needed: with the tensor scale, dim=3 is not dim=-1
    import torch
    scope: dict = {}
    exec(compile(SCALED, "scaled.py", "exec"), scope)
    q, k = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scope["TensorScale"]().scale
    assert scores.dim() == 5
    assert not torch.allclose(torch.softmax(scores, dim=3), torch.softmax(scores, dim=-1))


SCALAR_INITS = '''import math
import torch
from torch import nn


class Init(nn.Module):
    def __init__(self, config, dim, heads=8, ratio: float = 0.5, tensor_arg: torch.Tensor = None,
                 made=torch.ones(2)):
        super().__init__()
        self.a = config.d_head ** -0.5                 # config field: a number
        self.b = heads * 2 + math.pi                   # numeric default, math constant
        self.c = math.sqrt(ratio) if dim else 1        # annotated float, both branches
        self.d = dim * 2                               # `dim` has no numeric declaration
        self.e = tensor_arg * 2                        # annotated tensor
        self.f = made * 2                              # default is a call
        t = torch.ones(3)
        self.g = t * 2                                 # a local tensor
        self.h = float(config.x)
        self.i = abs(t)                                # builtin on a tensor
        self.j = sum([1, 2])                           # other functions prove nothing
        for n in range(3):
            pass
        self.k = n * 1.0                               # bound by a loop
        self.m = 0.5                                   # rebound below
        self.n = 0.5                                   # written through a string
        self.register_buffer("n", torch.ones(1))
        self.o = self.a * self.h                       # other scalar attributes
        self.p = self.d * 2                            # ... and a non-scalar one
        self.q = 2.0                                   # a method has its name in another class
        self.s = 2.0                                   # a subclass rebinds it

    def rebind(self, x):
        self.m = x


class Sub(Init):
    def __init__(self, config, dim):
        super().__init__(config, dim)
        self.s = torch.ones(1)


class Mutated(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.r = config.r                              # the config's field is overwritten
        config.r = torch.ones(1)
        self.s = 1.0                                   # unrelated classes do not matter


class Other(nn.Module):
    def q(self):
        return 1
'''


def test_init_numbers_are_proved_scalar_and_nothing_else():
    facts = analyze_source(SCALAR_INITS, "m.py")
    scalars = {c.name: c.scalars for c in facts.classes}
    assert scalars["Init"] == {"a", "b", "c", "h", "o"}
    assert scalars["Mutated"] == {"s"}


def test_a_scalar_needs_its_binding_in_this_file(tmp_path):
    # a base `__init__` in another file binds it: the stores there are not
    # read (nor a subclass there), so nothing is proved; the same classes in
    # one file prove it
    from dslc.analysis import analyze_file

    base = ("import torch\nfrom torch import nn\n\n\nclass Base(nn.Module):\n"
            "    def __init__(self, config):\n        super().__init__()\n"
            "        self.scale = 1 / config.d ** 0.5\n")
    child = ("\n\nclass Child(Base):\n    def forward(self, q, k):\n"
             "        return torch.einsum('bhqd,bhkd->bhqk', q, k) * self.scale\n")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(base)
    (pkg / "child.py").write_text("import torch\nfrom pkg.base import Base\n" + child)
    (pkg / "both.py").write_text(base + child)
    for name, want in (("child.py", frozenset()), ("both.py", {"scale"})):
        facts = analyze_file(str(pkg / name), root=str(tmp_path))
        found = next(c for c in facts.classes if c.name == "Child")
        assert [b.attr for b in found.init] == ["scale"], name
        assert found.scalars == want, name


# ---------------------------------------------------------------------------
# 12. a guard on the layer itself: `if self.norm is not None:`

GUARDED = '''import torch
from torch import nn


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, use_normalization=True, use_activation=True):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, 3)
        if use_normalization:
            self.normalization = nn.BatchNorm2d(cout, affine=True, track_running_stats=True)
        else:
            self.normalization = None
        if use_activation:
            self.activation = nn.ReLU()
        else:
            self.activation = None

    def forward(self, features):
        features = self.convolution(features)
        if self.normalization is not None:
            features = self.normalization(features)
        if self.activation is not None:
            features = self.activation(features)
        return features
'''


def test_layer_guarded_by_is_not_none_is_fused_under_the_init_guard():
    result = run(GUARDED)
    assert outcomes(result, "conv_batchnorm") == [("ConvLayer", "applied", None)]
    new = result.new_source
    assert ("        if use_normalization:\n"
            "            self.convolution = ConvBn2d(self.convolution, nn.BatchNorm2d(cout, affine=True, track_running_stats=True))\n"
            "            self.normalization = None\n") in new
    assert "        else:\n            self.normalization = None\n" in new
    # forward is unchanged
    assert GUARDED[GUARDED.index("    def forward"):] in new
    stable(new)


def test_guarded_fusion_computes_the_same_and_loads_old_checkpoints():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    result = run(GUARDED)
    old_ns, new_ns = vars_of_module(GUARDED, "old"), vars_of_module(result.new_source, "new")
    for use_norm in (True, False):
        torch.manual_seed(0)
        old = old_ns["ConvLayer"](3, 4, use_normalization=use_norm)
        torch.manual_seed(0)
        new = new_ns["ConvLayer"](3, 4, use_normalization=use_norm)
        if use_norm:
            with torch.no_grad():
                old.normalization.running_mean.uniform_(-1, 1)
                old.normalization.weight.uniform_(0.5, 2)
        new.load_state_dict(old.state_dict())
        x = torch.randn(2, 3, 8, 8)
        for train in (False, True):
            old.train(train)
            new.train(train)
            torch.testing.assert_close(new(x), old(x))


@pytest.mark.parametrize("change, reason", [
    # the None branch may run after the layer's binding
    ("        else:\n            self.normalization = None\n",
     "        else:\n            self.normalization = None\n        if cin == cout:\n            self.normalization = None\n"),
    # bound to another layer where the condition fails (an `nn.Identity()`
    # there is rewritten: tests/test_guarded_forms.py)
    ("        else:\n            self.normalization = None\n",
     "        else:\n            self.normalization = nn.GroupNorm(1, cout)\n"),
    # the attribute is used elsewhere
    ("        return features\n", "        return features, self.normalization\n"),
    # the value before the guarded call is read in between
    ("        if self.normalization is not None:\n",
     "        print(features)\n        if self.normalization is not None:\n"),
])
def test_guarded_layer_refusals(change, reason):
    source = GUARDED.replace(change, reason)
    assert source != GUARDED
    result = run(source)
    got = outcomes(result, "conv_batchnorm")
    assert len(got) == 1 and got[0][1] == "skipped", got
    # (another layer on the other branch is refused before the guard is looked at)
    assert ("is not None:" in got[0][2]) != (got[0][2].code == "S216"), got


# ---------------------------------------------------------------------------
# 12. a layer `__init__` may bind to something else than the matched type:
# forward calls whichever was bound, so the rewrite is refused (S216), unless
# it is an `nn.Identity()` the guarded kind rewrites under the init guard

ALTERNATIVES = '''import torch
from torch import nn


class IdentityElse(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)
        if use_norm:
            self.norm = nn.BatchNorm2d(cout)
        else:
            self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


class IdentityIfExp(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)
        self.norm = nn.BatchNorm2d(cout) if use_norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


class NoneIfExp(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)
        self.norm = nn.BatchNorm2d(cout) if use_norm else None

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


class LaterOverride(nn.Module):
    def __init__(self, cin, cout, plain=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)
        self.norm = nn.BatchNorm2d(cout)
        if plain:
            self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


class SameTypeIfExp(nn.Module):
    def __init__(self, cin, cout, wide=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3) if wide else nn.Conv2d(cin, cout, 1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.norm(self.conv(x))


class Overwritten(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)
        self.norm = nn.Identity()
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.norm(self.conv(x))
'''


def test_a_layer_bound_to_something_else_on_a_branch_is_refused():
    result = run(ALTERNATIVES)
    got = {name: (status, reason) for name, status, reason in outcomes(result, "conv_batchnorm")}
    # (an `nn.Identity()` or `None` on the other branch of a BatchNorm the
    # rewrite removes is rewritten under the init guard, in an `else:` or in
    # `a if c else b`: tests/test_guarded_forms.py)
    assert {name: status for name, (status, _) in got.items()} == {
        "IdentityElse": "applied", "IdentityIfExp": "applied", "NoneIfExp": "applied", "LaterOverride": "skipped",
        "SameTypeIfExp": "applied", "Overwritten": "skipped"}
    # an Identity always overwritten by the BatchNorm is no alternative (the
    # second assignment is refused for its own reason)
    assert got["Overwritten"][1].code == "S206", got["Overwritten"]
    # an Identity that may replace the BatchNorm after it is built
    assert got["LaterOverride"][1].code == "S318", got["LaterOverride"]
    assert "`self.norm = nn.Identity()` (line 47) may run after the layer's binding" in got["LaterOverride"][1]
    assert ("        if use_norm:\n            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))\n"
            "            self.norm = None\n") in result.new_source
    # both branches are a Conv2d: the whole expression is the fused layer's conv
    assert "ConvBn2d(nn.Conv2d(cin, cout, 3) if wide else nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))" \
        in result.new_source
    stable(result.new_source)


ACT_IFEXP = '''import torch
from torch import nn
from transformers.activations import ACT2FN


class Inter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act

    def forward(self, x):
        return self.act(self.dense(x))
'''


def test_a_config_callable_on_the_other_branch_of_a_replaced_binding_is_no_alternative():
    # the target builds its own activation (it does not copy `self.act`'s
    # expression), under the rule's `when`, where `config.hidden_act` is a
    # string; the other branch is the module doc's config callable
    result = run(ACT_IFEXP)
    assert outcomes(result, "biased_gelu") == [("Inter", "applied", None)]
    new = result.new_source
    assert "        if config.hidden_act in (" in new
    assert ("        else:\n            self.dense = nn.Linear(config.hidden_size, config.intermediate_size)\n"
            "            self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) "
            "else config.hidden_act\n") in new
    stable(new)


def test_the_refused_alternatives_were_wrong_rewrites():
    # what the rewrite would have built (the rewriter's output before S216):
    # the fused layer needs a BatchNorm2d, and the Identity branch computes
    # no normalisation at all
    torch = pytest.importorskip("torch", reason="torch builds the layers")
    from torch.ao.nn.intrinsic import ConvBn2d
    with pytest.raises(AssertionError):
        ConvBn2d(torch.nn.Conv2d(3, 4, 3), torch.nn.Identity())
    with pytest.raises(AssertionError):
        ConvBn2d(torch.nn.Conv2d(3, 4, 3), None)
    ns = vars_of_module(ALTERNATIVES, "alternatives")
    torch.manual_seed(0)
    plain = ns["IdentityElse"](3, 4, use_norm=False).eval()
    fused = ConvBn2d(plain.conv, torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        fused[1].running_mean.fill_(1.0)
    x = torch.randn(1, 3, 8, 8)
    assert not torch.allclose(plain(x), fused(x))


# ---------------------------------------------------------------------------
# 15. hoisting across elif (rewritten), for / with (refused with the reason)

HOIST = '''import torch
from torch import nn


class Elif(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res, mode: int):
        y = self.dropout(x)
        if mode == 0:
            out = y
        elif mode == 1:
            out = self.LayerNorm(y + res)
        else:
            out = y * 2
        return out


class InWith(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res):
        y = self.dropout(x)
        with torch.autocast("cpu"):
            out = self.LayerNorm(y + res)
        return out


class InFor(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, res, n: int):
        y = self.dropout(x)
        out = y
        for i in range(n):
            out = self.LayerNorm(y + res)
        return out
'''


def test_hoisting_through_elif_and_refusals_for_loops_and_with():
    result = run(HOIST)
    got = {name: (status, reason) for name, status, reason in outcomes(result, "dropout_layernorm")}
    assert got["Elif"] == ("applied", None)
    new = result.new_source
    assert ("        if mode == 0:\n            y = self.dropout(x)\n            out = y\n"
            "        elif mode == 1:\n            out = self.LayerNorm(x, res)\n"
            "        else:\n            y = self.dropout(x)\n            out = y * 2\n") in new
    status, reason = got["InWith"]
    assert status == "skipped" and "the `with` at line" in reason and "context manager" in reason
    status, reason = got["InFor"]
    assert status == "skipped" and "the `for` at line" in reason and "once per iteration" in reason
    stable(new)


# ---------------------------------------------------------------------------
# 15. layers of an nn.ModuleList called by `for layer in self.layers:`

LOOPS = '''import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertSelfAttention


class Comprehension(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([BertSelfAttention(config, position_embedding_type="absolute") for _ in range(config.n)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return x


class Literal(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([BertSelfAttention(config, "absolute"), BertSelfAttention(config, "absolute")])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return x


class Mixed(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([BertSelfAttention(config), nn.Identity()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[0]
        return x


class ConvLoop(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(n)])
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.bn(x)
'''


def test_module_list_elements_called_in_a_loop():
    result = run(LOOPS)
    got = {name: (status, reason) for name, status, reason in outcomes(result, "bert_self_attention")}
    assert got["Comprehension"] == ("applied", None)
    assert got["Literal"] == ("applied", None)
    assert "Mixed" not in got  # not every element is the matched layer
    new = result.new_source
    assert ("        self.layers = nn.ModuleList([BertSelfAttentionWithXF(config, position_embedding_type='absolute', "
            "attn_op_name='cutlass') for _ in range(config.n)])\n") in new
    assert new.count("BertSelfAttentionWithXF(config, position_embedding_type='absolute', attn_op_name='cutlass')") == 3
    # a fusion across the loop boundary is found and refused with the reason
    status, reason = outcomes(result, "conv_batchnorm")[0][1:]
    assert status == "skipped" and "container `self.convs`" in reason
    stable(new)


def test_guarded_layer_with_none_bound_first():
    source = GUARDED.replace(
        "        if use_normalization:\n            self.normalization = nn.BatchNorm2d(cout, affine=True, track_running_stats=True)\n"
        "        else:\n            self.normalization = None\n",
        "        self.normalization = None\n        if use_normalization:\n"
        "            self.normalization = nn.BatchNorm2d(cout, affine=True, track_running_stats=True)\n")
    assert source != GUARDED
    result = run(source)
    assert outcomes(result, "conv_batchnorm") == [("ConvLayer", "applied", None)]
    assert ("        self.normalization = None\n        if use_normalization:\n"
            "            self.convolution = ConvBn2d(self.convolution, nn.BatchNorm2d(cout, affine=True, track_running_stats=True))\n"
            "            self.normalization = None\n") in result.new_source
    stable(result.new_source)


@pytest.mark.parametrize("change, expected", [
    # the conv runs only on some paths: the BatchNorm may see another value
    ("        features = self.convolution(features)\n",
     "        if features.dim() == 4:\n            features = self.convolution(features)\n"),
    # an early return between the conv and the guarded BatchNorm
    ("        if self.normalization is not None:\n",
     "        if features.shape[0] == 0:\n            return features\n        if self.normalization is not None:\n"),
    # an early exit the path analysis folds into an opaque `if` (BatchNorm statistics would change)
    ("        if self.normalization is not None:\n",
     "        if self.training:\n            return None\n        if self.normalization is not None:\n"),
])
def test_guarded_layer_needs_both_calls_on_every_path(change, expected):
    source = GUARDED.replace(change, expected)
    assert source != GUARDED
    result = run(source)
    got = outcomes(result, "conv_batchnorm")
    assert got and all(status == "skipped" for _, status, _ in got), got


def test_fusion_across_a_helper_needs_the_conv_on_every_path():
    source = "import torch\nfrom torch import nn\n\n\n" + ACROSS.replace(
        "        h = self.conv(x)\n", "        h = x\n        if x.dim() == 4:\n            h = self.conv(x)\n")
    result = run(source)
    got = outcomes(result, "conv_batchnorm")
    assert got and all(status == "skipped" for _, status, _ in got), got


def test_fusion_across_a_helper_refused_after_an_early_exit():
    source = "import torch\nfrom torch import nn\n\n\n" + ACROSS.replace(
        "        y = self.bn(y)\n", "        if self.training:\n            return None\n        y = self.bn(y)\n")
    result = run(source)
    got = outcomes(result, "conv_batchnorm")
    assert got and all(status == "skipped" and "may leave before it" in reason for _, status, reason in got), got


def test_masked_fill_does_not_keep_the_rank():
    # out of place, masked_fill broadcasts the tensor to the mask's shape
    source = RANKS.split("class Einsum")[0] + '''class Masked(nn.Module):
    def forward(self, q, k, mask):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k).masked_fill(mask, 0.0)
        return F.softmax(scores, dim=3)
'''
    result = run(source)
    assert outcomes(result, "softmax") == []


# 14, a number literal on one path: `ef = 0` on one branch and an einsum on
# the other (a segment term that may be absent) keeps the scores at rank 4,
# since a Python number broadcasts without adding dimensions.

LITERAL_TERM = '''import torch
from torch import nn
import torch.nn.functional as F


class LiteralTerm(nn.Module):
    def forward(self, q, k, seg):
        ac = torch.einsum("ibnd,jbnd->bnij", q, k)
        if seg is None:
            ef = 0
        else:
            ef = torch.einsum("ibnd,snd->ibns", q, seg)
            ef = torch.einsum("ijbs,ibns->bnij", seg, ef)
        scores = ac + ef
        return F.softmax(scores, dim=3)


class NegativeLiteral(nn.Module):
    def forward(self, q, k, flag: bool):
        ac = torch.einsum("bhqd,bhkd->bhqk", q, k)
        bias = -1.5
        return F.softmax(ac + bias, dim=3)


class StringTerm(nn.Module):
    def forward(self, q, k, bias):
        ac = torch.einsum("bhqd,bhkd->bhqk", q, k)
        if bias is None:
            bias = "x"
        return F.softmax(ac + bias, dim=3)
'''


def test_softmax_rank_through_a_number_literal_on_one_path():
    result = run(LITERAL_TERM)
    got = {name: status for name, status, _ in outcomes(result, "softmax")}
    assert got.get("LiteralTerm") == "applied"
    assert got.get("NegativeLiteral") == "applied"
    assert got.get("StringTerm") != "applied"  # a string literal proves no rank
    new = result.new_source
    assert "        return softmax(scores)\n" in new
    assert "        return softmax(ac + bias)\n" in new
    assert "return F.softmax(ac + bias, dim=3)\n" in new  # StringTerm unchanged
    stable(new)
