"""Issue 8 (S220) recall: an outside use whose chain starts at a parameter or
a local reaches another object when every store of the attribute that holds
it, in the package, stores something else (`dslc.rewrite.holders`).

Every model here is written for the test.  Each allowed case has a
look-alike that still refuses.
"""

from __future__ import annotations

import ast
import textwrap

import rewrite_support
from dslc import codes
from dslc.apply.driver import ApplyOptions, apply_paths
from dslc.rewrite import holders

SELECT = ("adopter:conv_batchnorm",)

MODEL = """\
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.conv(x))


class Stem(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 1)

    def forward(self, x):
        return self.conv(x)


class Net(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stem = Stem(c)
        self.block = Block(c)

    def forward(self, x):
        return self.block(self.stem(x))

"""


def statuses(source: str):
    result = rewrite_support.run(textwrap.dedent(source), select=SELECT)
    assert not result.errors, result.errors
    return [(m.status, m.code) for m in result.matches], result


def allowed(source: str) -> None:
    found, result = statuses(source)
    assert found == [("applied", None)], result.matches
    rewrite_support.stable(result.new_source, select=SELECT)


def refused(source: str, piece: str) -> None:
    found, result = statuses(source)
    assert found == [("skipped", codes.S_OUTSIDE_USE)], result.matches
    assert piece in result.matches[0].reason, result.matches[0].reason


def test_a_chain_from_a_parameter_through_a_link_bound_only_to_another_class():
    """`model.stem.conv`: every `.stem` of the package is a `Stem`, which is no `Block`."""
    allowed(MODEL + "\ndef weight_map(model):\n    return {'stem/kernel': model.stem.conv.weight}\n")


def test_the_same_chain_through_the_link_that_holds_the_block_refuses():
    refused(MODEL + "\ndef weight_map(model):\n    return {'block/kernel': model.block.conv.weight}\n",
            "(`model.block.conv` in `weight_map`)")


def test_a_link_also_bound_to_the_block_or_to_an_unknown_value_refuses():
    other = "\n\nclass Twin(nn.Module):\n    def __init__(self, c):\n        super().__init__()\n        self.stem = {}\n"
    use = "\ndef weight_map(model):\n    return model.stem.conv.weight\n"
    refused(MODEL + use + other.format("Block(c)"), "(`model.stem.conv` in `weight_map`)")
    refused(MODEL + use + other.format("make_stem(c)"), "(`model.stem.conv` in `weight_map`)")
    refused(MODEL + use + other.format("Stem(c) if c else Block(c)"), "(`model.stem.conv` in `weight_map`)")
    # a class deriving from the rewritten one is an instance of it
    refused(MODEL + use + "\n\nclass Sub(Block):\n    pass\n" + other.format("Sub(c)"), "`model.stem.conv`")


def test_a_link_stored_under_a_computed_name_anywhere_refuses():
    use = "\ndef weight_map(model):\n    return model.stem.conv.weight\n"
    refused(MODEL + use + "\n\ndef install(model, name, layer):\n    setattr(model, name, layer)\n", "`model.stem.conv`")
    refused(MODEL + use + "\n\ndef install(model, name, layer):\n    model.add_module(name, layer)\n", "`model.stem.conv`")
    refused(MODEL + use + "\n\nclass Proxy:\n    def __getattr__(self, name):\n        return Block(3)\n",
            "`model.stem.conv`")


def test_a_link_bound_to_the_block_in_a_sibling_module_refuses(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "modeling.py").write_text(MODEL + "\ndef weight_map(model):\n    return model.stem.conv.weight\n")
    packs = rewrite_support.load_packs(rewrite_support.rule_paths("adopter"), SELECT)

    def status():
        report = apply_paths([str(pkg / "modeling.py")], packs, ApplyOptions(mode="diff", jobs=1, cache_dir=None))
        return [(m.status, m.code) for m in report.matches]

    assert status() == [("applied", None)]
    (pkg / "wrap.py").write_text("from .modeling import Block\n\n\nclass Wrap:\n"
                                 "    def __init__(self):\n        self.stem = Block(3)\n")
    assert status() == [("skipped", codes.S_OUTSIDE_USE)]
    (pkg / "wrap.py").write_text("class Wrap:\n    def __init__(self, c):\n        self.stem = WrapStem(c)\n\n\n"
                                 "class WrapStem:\n    pass\n")
    assert status() == [("applied", None)]


LOADER = """
def load(model, names):
    for name in names:
        pointer = model
        for part in name.split("/"):
            if part == "stem":
                pointer = getattr(pointer, "stem")
                if "kernel" in name:
                    pointer = getattr(pointer, "conv")
            else:
                {other}
"""


def test_a_loader_pointer_from_getattr_of_a_link_bound_only_to_another_class():
    """`pointer = getattr(pointer, "stem")` then `getattr(pointer, "conv")`:
    the one definition reaching the second is the first, a `Stem`."""
    allowed(MODEL + LOADER.format(other="pointer = getattr(pointer, part)"))


def test_a_loader_pointer_with_another_definition_that_may_reach_refuses():
    # the pointer of the previous iteration: `getattr(pointer, "conv")` on anything
    source = MODEL + LOADER.format(other="pointer = getattr(pointer, part)").replace(
        '                pointer = getattr(pointer, "stem")\n', "")
    refused(source, "(`pointer.conv` in `load`)")
    # through the link that holds the block
    refused(MODEL + LOADER.format(other="pointer = getattr(pointer, part)").replace('"stem")', '"block")'),
            "(`pointer.conv` in `load`)")


def _value_of(source: str, name: str = "p"):
    """The reaching definition of `name` at the statement holding `USE`."""
    tree = ast.parse(textwrap.dedent(source))
    fn = tree.body[0]
    node = next(n for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id == "USE")
    stmt = holders._statement_of(fn, node)
    found = holders.reaching_value(fn, stmt, name)
    return None if found is None else ast.unparse(found[0])


def test_reaching_definition_is_only_the_straight_line_one():
    assert _value_of("def f(m):\n    p = m.a\n    if c:\n        USE(p)\n") == "m.a"
    assert _value_of("def f(m):\n    p = m.a\n    with x:\n        q = 1\n        USE(p)\n") == "m.a"
    assert _value_of("def f(m):\n    p = m.a\n    try:\n        USE(p)\n    except E:\n        pass\n") == "m.a"
    # a parameter, or a definition that may be bypassed or come later
    assert _value_of("def f(p):\n    USE(p)\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    if c:\n        p = m.b\n    USE(p)\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    for x in m:\n        USE(p)\n        p = x\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    while c:\n        USE(p)\n        p.x, p = 1, 2\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    try:\n        p = g()\n    except E:\n        USE(p)\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    if (p := m.b):\n        USE(p)\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    def g():\n        nonlocal p\n        p = 1\n    g()\n    USE(p)\n") is None
    assert _value_of("def f(m):\n    p = m.a\n    [p for p in m]\n    USE(p)\n") is None


def test_holders_record_the_stores_of_every_spelling():
    h = holders.holders(ast.parse(textwrap.dedent("""
        class A:
            x = B()
            def y(self):
                pass
            @property
            def z(self):
                return self.w
            def __init__(self):
                self.v = C()
                self.u, self.t = 1, 2
                setattr(self, "s", D())
                self.add_module("r", E())
                self.q += 1
        """)))
    assert h.stores == {"x": [("class", "B")], "y": [("other",)], "z": [("unknown",)], "__init__": [("other",)],
                        "v": [("class", "C")], "u": [("unknown",)], "t": [("unknown",)], "s": [("class", "D")],
                        "r": [("class", "E")], "q": [("unknown",)]}
    assert not h.dynamic
    for code in ("setattr(m, n, v)", "m.add_module(n, v)", "m.__dict__[n] = v", "vars(m).update(d)",
                 "m._modules[n] = v", "m.__class__ = K", "object.__setattr__(m, n, v)"):
        assert holders.holders(ast.parse(f"def f(m, n, v):\n    {code}\n")).dynamic, code
    restore = "class T:\n    def __setstate__(self, d):\n        self.__dict__ = d\n        self.__dict__.update(d)\n"
    assert not holders.holders(ast.parse(restore)).dynamic


def test_a_link_the_package_never_binds_refuses():
    """`model.module.conv`: `module` is no attribute the package stores
    (a wrapper of another library holds the model there)."""
    refused(MODEL + "\ndef weight_map(model):\n    return model.module.conv.weight\n", "`model.module.conv`")


def test_a_class_name_bound_again_or_deriving_from_a_sibling_class_refuses():
    use = "\ndef weight_map(model):\n    return model.stem.conv.weight\n"
    refused(MODEL + use + "\n\nif torch.cuda.is_available():\n    Stem = Block\n", "`model.stem.conv`")
    refused(MODEL.replace("class Stem(nn.Module):", "class Stem(SiblingBase):").replace(
        "from torch import nn\n", "from torch import nn\nfrom .base import SiblingBase\n") + use, "`model.stem.conv`")


def test_an_annotated_class_field_of_that_name_refuses():
    """`stem: object = None` in a dataclass is a field its generated
    `__init__` sets to whatever it is given, not the default."""
    use = "\ndef weight_map(model):\n    return model.stem.conv.weight\n"
    refused(MODEL + use + "\n\n@dataclasses.dataclass\nclass Parts:\n    stem: object = None\n", "`model.stem.conv`")
    allowed(MODEL + use + "\n\nclass Parts:\n    stem = None\n")


def test_function_defs_are_the_functions_of_a_walk_in_its_order():
    """`holders.find_use_node` takes the module's functions from its indexed
    statements: the same definitions, in the order `ast.walk` finds them (a
    later one of the same first line wins there)."""
    from pathlib import Path

    from dslc.rewrite.astutil import index_statements

    src = textwrap.dedent("""\
        def a():
            def b(): pass
            class C:
                def m(self): pass
                async def n(self): pass
            try:
                def t(): pass
            except ValueError:
                def e(): pass
            else:
                def el(): pass
            finally:
                def f(): pass
            return [lambda: 0]

        match x:
            case 1:
                def one(): pass
            case _:
                def other(): pass

        if y:
            def g(): pass
        else:
            def g(): pass
        """)
    sources = [src] + [p.read_text() for p in sorted(Path(holders.__file__).parent.glob("*.py"))]
    for text in sources:
        tree = ast.parse(text)
        walked = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        assert holders.function_defs(index_statements(tree)[0]) == walked
