"""A kept layer that a subclass binds to something else (S216).

liger's layer_norm_call keeps the LayerNorm and reads it in the per-call
dispatch (`len(ln.normalized_shape)`, `ln.weight`).  A subclass that rebinds
the attribute after `super().__init__()` (`self.final_norm = nn.Identity()`)
inherits the rewritten forward: the dispatch raised AttributeError on the
Identity where the kernel is importable.  The base's match is now refused
(S216) with the subclass named; a subclass that rebinds a LayerNorm keeps
the rewrite.  Models written here; the kernel branch runs on CPU with a
stand-in `liger_layer_norm` (F.layer_norm) and a tensor that says it is on
CUDA.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rewrite_support import KERNEL_PRELUDE, fixture, run, stable

pytest.importorskip("torch")

TRUNKS = fixture('''
    import torch
    from torch import nn


    class PlainTrunk(nn.Module):
        def __init__(self, d=8):
            super().__init__()
            self.proj = nn.Linear(d, d)
            self.final_norm = nn.LayerNorm(d)

        def forward(self, x):
            return self.final_norm(self.proj(x))


    class BareTrunk(PlainTrunk):
        def __init__(self, d=8):
            super().__init__(d)
            self.final_norm = nn.Identity()
''')

SAME_TYPE = TRUNKS.replace("nn.Identity()", "nn.LayerNorm(d, eps=1e-3)")

RUN_BOTH = KERNEL_PRELUDE + textwrap.dedent("""
    import torch.nn.functional as F

    calls = []

    def liger_layer_norm(x, w, b, eps):
        calls.append(1)
        return F.layer_norm(x.as_subclass(torch.Tensor), w.shape, w, b, eps)

    fake_liger(liger_layer_norm=liger_layer_norm)
    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    for name in ("PlainTrunk", "BareTrunk"):
        torch.manual_seed(0)
        a, b = getattr(orig, name)(), getattr(new, name)()
        b.load_state_dict(a.state_dict(), strict=True)
        x = torch.randn(3, 8)
        ya, yb = a(x), b(x.as_subclass(FakeCuda))
        assert torch.allclose(ya, yb.as_subclass(torch.Tensor), atol=1e-6), name
    print("ok", len(calls))
""")


def _run_both(tmp_path, new_source: str) -> subprocess.CompletedProcess:
    orig, new, script = tmp_path / "orig.py", tmp_path / "new.py", tmp_path / "run.py"
    orig.write_text(TRUNKS)
    new.write_text(new_source)
    script.write_text(RUN_BOTH)
    return subprocess.run([sys.executable, str(script), str(orig), str(new)], capture_output=True, text=True,
                          timeout=120)


def test_a_subclass_binding_another_object_refuses_the_base_match(tmp_path):
    result = run(TRUNKS, rules=("liger",), select=("liger:layer_norm_call",))
    # what the program does stays what it did: both classes run (the
    # rewritten dispatch raised AttributeError on BareTrunk's Identity)
    proc = _run_both(tmp_path, result.new_source or TRUNKS)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "0"], proc.stderr[-2000:]
    assert not [m for m in result.matches if m.status == "applied"], result.matches
    base = {m.class_name: m for m in result.matches}["PlainTrunk"]
    assert base.code == "S216" and "`BareTrunk`" in base.reason and "Identity" in base.reason, base.reason


def test_a_subclass_rebinding_the_same_layer_type_keeps_the_rewrite(tmp_path):
    result = run(SAME_TYPE, rules=("liger",), select=("liger:layer_norm_call",))
    assert [m.status for m in result.matches if m.class_name == "PlainTrunk"] == ["applied"], result.matches
    assert result.new_source is not None
    stable(result.new_source, rules=("liger",), select=("liger:layer_norm_call",))


def test_a_subclass_in_a_sibling_module_that_assigns_the_layer_refuses(tmp_path):
    base = TRUNKS.split("\n\nclass BareTrunk")[0] + "\n"
    (tmp_path / "trunk.py").write_text(base)
    (tmp_path / "bare.py").write_text(fixture('''
        from torch import nn

        from .trunk import PlainTrunk


        class BareTrunk(PlainTrunk):
            def __init__(self, d=8):
                super().__init__(d)
                self.final_norm = nn.Identity()
    '''))
    from dslc.apply.driver import ApplyOptions, apply_paths
    from rewrite_support import load_packs

    report = apply_paths([str(tmp_path / "trunk.py")], load_packs(("liger",), ("liger:layer_norm_call",)),
                         ApplyOptions(mode="diff", jobs=1, cache_dir=None))
    (m,) = report.files[0].matches
    assert m.status == "skipped" and m.code == "S216" and "bare.py" in m.reason, m
