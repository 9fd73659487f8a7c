"""The astroid fallback (analysis/infer.py) for callees the import table
leaves unresolved: factories in locals, class attributes, conditional
module-level aliases.  Sound or unresolved, never guessed."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import time

import pytest

import dslc.analysis.infer as infer
from dslc.analysis import analyze_source

HEAD = "import torch.nn as nn\nfrom torch import nn as tnn\n"


def facts(body: str, module: str = "m"):
    return analyze_source(HEAD + textwrap.dedent(body), f"{module}.py", module=module)


def init_of(ff, cls: str) -> dict:
    (c,) = [c for c in ff.classes if c.name == cls]
    out = {}
    for b in c.init:
        out.setdefault(b.attr, []).append(b.type if b.type else ("?", b.unresolved))
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def test_local_variable_factory():
    ff = facts("""
        class B(nn.Module):
            def __init__(self, c):
                super().__init__()
                act = nn.GELU
                self.act = act()
                norm_layer = tnn.BatchNorm2d
                self.bn = norm_layer(c)
                g = nn.ReLU if c else nn.ReLU
                self.g = g()
    """)
    assert init_of(ff, "B") == {"act": "torch.nn.GELU", "bn": "torch.nn.BatchNorm2d", "g": "torch.nn.ReLU"}


def test_defining_module_spelling_is_canonicalised():
    ff = analyze_source(textwrap.dedent("""
        from torch.nn.modules import batchnorm
        import torch
        class B(torch.nn.Module):
            def __init__(self, c):
                super().__init__()
                f = batchnorm.BatchNorm2d
                self.bn = f(c)
    """), "m.py", module="m")
    assert init_of(ff, "B") == {"bn": "torch.nn.BatchNorm2d"}


def test_class_attribute_factory_and_subclass_override():
    ff = facts("""
        class B(nn.Module):
            norm_cls = nn.LayerNorm
            def __init__(self, d):
                super().__init__()
                self.norm = self.norm_cls(d)

        class C(B):
            norm_cls = nn.GroupNorm
    """)
    assert init_of(ff, "B") == {"norm": "torch.nn.LayerNorm"}
    assert init_of(ff, "C") == {"norm": "torch.nn.GroupNorm"}


def test_class_attribute_that_may_change_is_unresolved():
    ff = facts("""
        class B(nn.Module):
            norm_cls = nn.LayerNorm
            def __init__(self, d, other=False):
                super().__init__()
                if other:
                    self.norm_cls = nn.BatchNorm1d
                self.norm = self.norm_cls(d)

        class D(nn.Module):
            norm_cls = nn.LayerNorm
            def __init__(self, d):
                super().__init__()
                self.norm = self.norm_cls(d)
        D.norm_cls = nn.BatchNorm1d
    """)
    assert init_of(ff, "B")["norm"] == ("?", "self.norm_cls")
    assert init_of(ff, "D")["norm"] == ("?", "self.norm_cls")


def test_module_level_conditional_alias_agreeing_branches():
    ff = facts("""
        FAST = True
        Norm = nn.LayerNorm if FAST else nn.LayerNorm
        Mixed = nn.LayerNorm if FAST else nn.BatchNorm1d
        LN = getattr(nn, "LayerNorm")
        Twice = nn.ReLU if FAST else nn.ReLU
        Twice = nn.GELU if FAST else nn.GELU   # which one a call sees depends on when it runs

        class B(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.n1 = Norm(d)
                self.n2 = Mixed(d)
                self.n3 = LN(d)
                self.n4 = Twice()

            def forward(self, x):
                return Norm(x)
    """)
    assert init_of(ff, "B") == {"n1": "torch.nn.LayerNorm", "n2": ("?", "Mixed"), "n3": ("?", "LN"),
                                "n4": ("?", "Twice")}
    (c,) = ff.classes
    calls = [n.type for n in c.paths[0].nodes if n.kind == "call"]
    assert calls == ["torch.nn.LayerNorm"]


def test_default_argument_factory_stays_unresolved():
    # the caller may pass any factory: the default is not the type (documented choice)
    ff = facts("""
        class B(nn.Module):
            def __init__(self, c, norm_layer=None, act_layer=nn.GELU):
                super().__init__()
                if norm_layer is None:
                    norm_layer = nn.BatchNorm2d
                self.bn = norm_layer(c)
                self.act = act_layer()
    """)
    assert init_of(ff, "B") == {"bn": ("?", "norm_layer"), "act": ("?", "act_layer")}


def test_parameter_rebound_unconditionally_is_known():
    ff = facts("""
        class B(nn.Module):
            def __init__(self, c, norm_layer=None):
                super().__init__()
                norm_layer = nn.BatchNorm2d
                self.bn = norm_layer(c)
    """)
    assert init_of(ff, "B") == {"bn": "torch.nn.BatchNorm2d"}


def test_disagreement_and_loop_rebinding_stay_unresolved():
    # `a`/`b` hide the classes from the table's cheap pre-check, so astroid decides
    ff = facts("""
        class B(nn.Module):
            def __init__(self, c, flag=False):
                super().__init__()
                a = nn.ReLU
                b = nn.SiLU
                f = a
                if flag:
                    f = b
                self.f = f()
                try:
                    h = a
                except ImportError:
                    h = b
                self.h = h()
                k = a
                for i in range(2):
                    self.k = k()
                    k = b
                u = a
                u = b
                self.u = u()
    """)
    init = init_of(ff, "B")
    assert init["f"] == ("?", "f") and init["h"] == ("?", "h") and init["k"] == ("?", "k")
    assert init["u"] == "torch.nn.SiLU"  # the unconditional rebinding kills the first


def test_table_precheck_skips_astroid_when_assignments_differ(monkeypatch):
    calls = []
    monkeypatch.setattr(infer.Inferrer, "_astroid", lambda self: calls.append(1))
    ff = facts("""
        class B(nn.Module):
            def __init__(self, c, flag=False):
                super().__init__()
                f = nn.ReLU if flag else nn.SiLU
                self.f = f()
                g = nn.ReLU if flag else None
                if g is not None:
                    self.g = g()
    """)
    assert init_of(ff, "B") == {"f": ("?", "f"), "g": ("?", "g")}
    assert calls == []


def test_user_class_named_like_torch_is_not_torch():
    ff = facts("""
        class BatchNorm2d(nn.Module):
            def forward(self, x):
                return x

        class B(nn.Module):
            def __init__(self, c):
                super().__init__()
                f = BatchNorm2d
                self.bn = f(c)
    """)
    assert init_of(ff, "B") == {"bn": "m.BatchNorm2d"}


def test_file_that_resolves_fully_never_parses_with_astroid(monkeypatch):
    calls = []
    monkeypatch.setattr(infer.Inferrer, "_astroid", lambda self: calls.append(1))
    ff = facts("""
        Norm = nn.LayerNorm
        class B(nn.Module):
            def __init__(self, c, norm_layer=None):
                super().__init__()
                self.ln = Norm(c)
                self.lin = tnn.Linear(c, c)
                self.bn = norm_layer(c)   # a parameter only: unresolved without astroid

            def forward(self, x):
                return self.bn(self.ln(self.lin(x)))
    """)
    assert init_of(ff, "B")["ln"] == "torch.nn.LayerNorm"
    assert calls == []
    before = infer.PARSES
    facts("""
        class B(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.lin = nn.Linear(c, c)
    """)
    assert infer.PARSES == before


def test_time_budget_exhausted_is_unresolved(monkeypatch):
    monkeypatch.setattr(infer, "TIME_BUDGET", 0.0)
    ff = facts("""
        class B(nn.Module):
            def __init__(self, c):
                super().__init__()
                act = nn.GELU
                self.act = act()
    """)
    assert init_of(ff, "B") == {"act": ("?", "act")}


SNIPPET = HEAD + textwrap.dedent("""
    Norm = nn.LayerNorm if True else nn.LayerNorm
    class B(nn.Module):
        norm_cls = nn.GroupNorm
        def __init__(self, c):
            super().__init__()
            act = nn.GELU
            self.act = act()
            self.gn = self.norm_cls(2, c)
            self.ln = Norm(c)
""")


def test_same_results_with_torch_importable_and_hidden():
    pytest.importorskip("torch")
    from test_analysis_torch import PROGRAM

    out = []
    for mode in ("hidden", "importable"):
        proc = subprocess.run([sys.executable, "-c", PROGRAM, mode], input=SNIPPET,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append(json.loads(proc.stdout))
    assert out[0] == out[1]
    init = {b["attr"]: b["type"] for b in out[0][0]["classes"][0]["init"]}
    assert init == {"act": "torch.nn.GELU", "gn": "torch.nn.GroupNorm", "ln": "torch.nn.LayerNorm"}


def test_astroid_never_loads_torch():
    code = ("import sys\nfrom dslc.analysis import analyze_source\nimport dslc.analysis.infer as i\n"
            f"analyze_source({SNIPPET!r}, 'm.py', module='m')\n"
            "import astroid\n"
            "print(i.PARSES, 'torch' in sys.modules, any(k.startswith('torch') for k in astroid.MANAGER.astroid_cache))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "False", "False"]


TORCHVISION_STYLE = textwrap.dedent("""
    import torch.nn as nn


    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            norm_layer = nn.BatchNorm2d
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn = norm_layer(cout)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.conv(x)
            x = self.bn(x)
            return self.relu(x)


    class Param(nn.Module):
        def __init__(self, cin, cout, norm_layer=None):
            super().__init__()
            if norm_layer is None:
                norm_layer = nn.BatchNorm2d
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn = norm_layer(cout)

        def forward(self, x):
            return self.bn(self.conv(x))
""")


def test_apply_conv_batchnorm_through_a_local_factory(tmp_path, repo_root, capsys):
    from dslc.cli import main

    path = tmp_path / "block.py"
    path.write_text(TORCHVISION_STYLE)
    code = main(["apply", "--rules", str(repo_root / "rulepacks" / "adopter.adr"), "--no-cache",
                 "--jobs", "1", "--select", "adopter:conv_batchnorm", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    line = [ln for ln in (out + err).splitlines() if ln.startswith("adopter:conv_batchnorm")][0].split()
    assert line[1:3] == ["1", "1"], out  # Block only: Param's norm_layer may be any factory
    assert "ConvBn2d(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(cout))" in out
    assert out.count("ConvBn2d(") == 1


def test_apply_does_not_move_a_call_above_the_local_it_reads(tmp_path, repo_root, capsys):
    from dslc.cli import main

    path = tmp_path / "late.py"
    path.write_text(textwrap.dedent("""
        import torch.nn as nn


        class Block(nn.Module):
            def __init__(self, cin, cout):
                super().__init__()
                self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
                norm_layer = nn.BatchNorm2d
                self.bn = norm_layer(cout)

            def forward(self, x):
                return self.bn(self.conv(x))
    """))
    main(["apply", "--rules", str(repo_root / "rulepacks" / "adopter.adr"), "--no-cache",
          "--jobs", "1", "--select", "adopter:conv_batchnorm", str(path)])
    out, err = capsys.readouterr()
    assert "ConvBn2d(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(cout))" not in out
    assert "`norm_layer`, which the call at line 10 reads, is assigned at line 9" in err


def test_astroid_budget_clock_leaves_out_garbage_collection():
    """A full collection over a large heap falls wherever it falls; the
    astroid budget's clock must not charge it to the module it interrupts."""
    heap = [[i] for i in range(300_000)]
    clock0, cpu0 = infer._clock(), time.process_time()
    for _ in range(5):
        gc.collect()
    spent_clock, spent_cpu = infer._clock() - clock0, time.process_time() - cpu0
    del heap
    assert spent_cpu > 0.01
    assert spent_clock < 0.2 * spent_cpu
