"""Alias-aware name resolution (issue §2): one test per alias form."""

from __future__ import annotations

import textwrap

import pytest

from dslc.analysis import analyze_source
from dslc.analysis.names import canonical


def facts(src: str, tmp_path, name: str = "m.py", module: str = "m"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(src))
    return analyze_source(path.read_text(), str(path), module=module, root=str(tmp_path))


def init_types(ff, cls: str) -> dict:
    c = next(c for c in ff.classes if c.name == cls)
    return {b.attr: b.type for b in c.init}


def forward_nodes(ff, cls: str, path: int = 0):
    c = next(c for c in ff.classes if c.name == cls)
    return [n for n in c.paths[path].nodes if n.kind != "stmt"]


BODY = """
class M(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.norm = {ctor}(h, eps=1e-5)

    def forward(self, x):
        return self.norm(x)
"""


@pytest.mark.parametrize("header, ctor", [
    ("import torch.nn as nn", "nn.LayerNorm"),
    ("from torch import nn", "nn.LayerNorm"),
    ("import torch\nimport torch.nn as nn", "torch.nn.LayerNorm"),
    ("import torch.nn as nn\nfrom torch.nn import LayerNorm as LN", "LN"),
    ("import torch.nn as nn\nfrom torch.nn import LayerNorm", "LayerNorm"),
    ("import torch.nn as nn\nNorm = nn.LayerNorm", "Norm"),
    ("import torch.nn as nn\nimport torch.nn as tnn\nNorm = tnn.LayerNorm\nN2 = Norm", "N2"),
    ("import torch.nn as nn\nfrom torch.nn.modules.normalization import LayerNorm", "LayerNorm"),
    ("import torch.nn as nn\nfrom torch.nn.modules import LayerNorm", "LayerNorm"),
])
def test_alias_forms_resolve_to_the_public_name(tmp_path, header, ctor):
    ff = facts(header + "\n" + BODY.format(ctor=ctor), tmp_path)
    assert not ff.problems
    assert init_types(ff, "M") == {"norm": "torch.nn.LayerNorm"}
    (node,) = forward_nodes(ff, "M")
    assert (node.kind, node.type, node.attr) == ("layer", "torch.nn.LayerNorm", "norm")


@pytest.mark.parametrize("header, call", [
    ("import torch.nn.functional as F", "F.softmax"),
    ("from torch.nn import functional as F", "F.softmax"),
    ("import torch\nfrom torch import nn", "nn.functional.softmax"),
    ("import torch", "torch.nn.functional.softmax"),
    ("from torch.nn.functional import softmax as sm", "sm"),
])
def test_functional_aliases(tmp_path, header, call):
    src = header + f"""
def attend(scores):
    return {call}(scores, dim=-1)
"""
    ff = facts(src, tmp_path)
    (name, paths), = ff.functions
    (node,) = [n for n in paths[0].nodes if n.kind == "call"]
    assert node.type == "torch.nn.functional.softmax"
    assert node.kwargs[0][0] == "dim" and node.kwargs[0][1].const == -1


def test_user_class_named_layernorm_is_not_torch(tmp_path):
    src = """
    import torch
    from torch import nn

    class LayerNorm(nn.Module):
        def forward(self, x):
            return x

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = LayerNorm()
            self.real = nn.LayerNorm(4)
    """
    ff = facts(src, tmp_path)
    assert init_types(ff, "Block") == {"ln": "m.LayerNorm", "real": "torch.nn.LayerNorm"}


def test_unresolvable_names_stay_unresolved(tmp_path):
    src = """
    from torch import nn

    class M(nn.Module):
        def __init__(self, norm_layer):
            super().__init__()
            self.a = norm_layer(4)          # a factory passed in: cannot see through
            self.b = make_layer(4)          # not bound anywhere
            self.c = getattr(nn, "ReLU")()  # computed

        def forward(self, x):
            x = self.a(x)
            return undefined_fn(x)
    """
    ff = facts(src, tmp_path)
    c = ff.classes[0]
    got = {b.attr: (b.type, b.unresolved) for b in c.init}
    assert got["a"] == (None, "norm_layer")
    assert got["b"] == (None, "make_layer")
    assert got["c"][0] is None
    nodes = forward_nodes(ff, "M")
    assert (nodes[0].type, nodes[0].unresolved) == (None, "self.a")
    assert (nodes[1].kind, nodes[1].type, nodes[1].unresolved) == ("call", None, "undefined_fn")


def test_ambiguous_module_binding_is_unresolved(tmp_path):
    src = """
    from torch import nn
    try:
        from apex.normalization import FusedLayerNorm as Norm
    except ImportError:
        Norm = nn.LayerNorm

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.n = Norm(4)
    """
    ff = facts(src, tmp_path)
    (b,) = ff.classes[0].init
    assert b.type is None and b.unresolved == "Norm"


def _package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "models" / "bert").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "bert" / "__init__.py").write_text("")
    (pkg / "activations.py").write_text(
        "from torch import nn\n"
        "class GELU(nn.Module):\n    pass\n"
        "ACT2FN = {'gelu': GELU}\n")
    (pkg / "layers.py").write_text(
        "import torch.nn as nn\n"
        "Norm = nn.LayerNorm\n"
        "from .activations import ACT2FN as TABLE\n")
    (pkg / "modeling_utils.py").write_text(
        "from torch import nn\n"
        "class PreTrained(nn.Module):\n    pass\n")
    model = pkg / "models" / "bert" / "modeling_bert.py"
    model.write_text(textwrap.dedent("""
        from ...layers import Norm, TABLE
        from ...activations import ACT2FN
        from ...modeling_utils import PreTrained
        from ... import layers

        class Intermediate(PreTrained):
            def __init__(self, config):
                super().__init__()
                self.norm = Norm(config.h)
                self.norm2 = layers.Norm(config.h)
                self.act = ACT2FN[config.act]
                self.act2 = TABLE[config.act]

            def forward(self, x):
                return self.act(self.norm(x))

        class NotAModule:
            pass
    """))
    return model


def test_relative_imports_and_reexports_inside_the_tree(tmp_path):
    from dslc.analysis import analyze_file

    model = _package(tmp_path)
    ff = analyze_file(str(model))  # root found from the package path
    assert ff.module == "pkg.models.bert.modeling_bert"
    assert [c.name for c in ff.classes] == ["Intermediate"]  # base in another file, via relative import
    c = ff.classes[0]
    assert c.bases == ("pkg.modeling_utils.PreTrained",)
    got = {b.attr: (b.kind, b.type, tuple(a.text for a in b.args)) for b in c.init}
    assert got == {
        "norm": ("call", "torch.nn.LayerNorm", ("config.h",)),
        "norm2": ("call", "torch.nn.LayerNorm", ("config.h",)),
        "act": ("subscript", "pkg.activations.ACT2FN", ("config.act",)),
        "act2": ("subscript", "pkg.activations.ACT2FN", ("config.act",)),
    }


def test_canonical_spellings():
    assert canonical("torch.nn.modules.linear.Linear") == "torch.nn.Linear"
    assert canonical("torch.nn.modules.Linear") == "torch.nn.Linear"
    assert canonical("torch.nn.parameter.Parameter") == "torch.nn.Parameter"
    assert canonical("torch.nn.functional.softmax") == "torch.nn.functional.softmax"
    assert canonical("torch.nn.modules.utils._pair") == "torch.nn.modules.utils._pair"
    assert canonical("torch.functional.einsum") == "torch.einsum"


def test_self_attr_resolves_to_init_type_and_module_list(tmp_path):
    src = """
    from torch import nn

    class M(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(n)])
            self.seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.act = nn.GELU() if n else nn.ReLU()

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.seq(x)
    """
    ff = facts(src, tmp_path)
    c = ff.classes[0]
    got = [(b.attr, b.type, b.container, tuple(str(g) for g in b.guards)) for b in c.init]
    assert got == [
        ("layers", "torch.nn.ModuleList", None, ()),
        ("layers.*", "torch.nn.Linear", "layers", ()),
        ("seq", "torch.nn.Sequential", None, ()),
        ("seq.0", "torch.nn.Linear", "seq", ()),
        ("seq.1", "torch.nn.ReLU", "seq", ()),
        ("act", "torch.nn.GELU", None, ("n",)),
        ("act", "torch.nn.ReLU", None, ("not (n)",)),
    ]
    # the loop runs once on one path and is skipped on the other
    shapes = sorted(tuple((n.type, n.attr) for n in p.nodes if n.kind == "layer") for p in c.paths)
    assert shapes == [
        (("torch.nn.Linear", "layers"), ("torch.nn.Sequential", "seq")),
        (("torch.nn.Sequential", "seq"),),
    ]


def test_class_with_invisible_base_is_reported(tmp_path):
    # A package that is neither in the analyzed tree nor installed (with
    # transformers installed, its sources would make the base visible).
    src = """
    from dslc_no_such_package import PreTrainedModel
    from torch import nn

    class Mine(PreTrainedModel):
        def forward(self, x):
            return x

    class Plain:
        def forward(self, x):
            return x
    """
    ff = facts(src, tmp_path)
    assert ff.classes == ()
    (problem,) = ff.problems
    assert problem.code == "base-not-visible" and "dslc_no_such_package.PreTrainedModel" in problem.message
    assert problem.line == 5


def test_base_from_an_installed_package_is_read_from_its_sources(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "fakehf").mkdir(parents=True)
    (site / "fakehf" / "__init__.py").write_text("from .modeling import Pre\n")
    (site / "fakehf" / "modeling.py").write_text("import torch.nn as nn\nclass Pre(nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(site))
    src = """
    from fakehf import Pre
    from torch import nn

    class Mine(Pre):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x):
            return self.l(x)
    """
    work = tmp_path / "work"
    work.mkdir()
    ff = facts(src, work)
    assert not ff.problems
    (c,) = ff.classes
    assert c.bases == ("fakehf.Pre",)  # the public spelling stays; sources only decide Module-ness
    assert [b.type for b in c.init] == ["torch.nn.Linear"]
