"""W112: a function that walks the model by computed attribute names.

A TF-checkpoint loader (`pointer = getattr(pointer, scope_names[0])`)
names no attribute in its text, so the outside-use check (S220) cannot see
that it reaches `LayerNorm`, which dropout_layernorm replaces by a fused
module.  The rewrite is kept and warned about, with the loader named; a
file whose getattr names are literals gets no such warning.  Models
written here.
"""

from __future__ import annotations

from dslc.apply.driver import ApplyOptions, apply_paths
from rewrite_support import fixture, load_packs, run

LAYER = fixture('''
    import torch
    from torch import nn


    class SelfOutput(nn.Module):
        def __init__(self, d=8, p=0.1):
            super().__init__()
            self.dense = nn.Linear(d, d)
            self.LayerNorm = nn.LayerNorm(d, eps=1e-12)
            self.dropout = nn.Dropout(p)

        def forward(self, h, x):
            h = self.dense(h)
            h = self.dropout(h)
            return self.LayerNorm(h + x)
''')

LOADER = fixture('''


    def load_checkpoint(model, names):
        for name in names:
            pointer = model
            for part in name.split("/"):
                pointer = getattr(pointer, part)
            pointer.data.zero_()
''')

LITERAL = fixture('''


    def bias_of(model):
        return getattr(model, "dense").bias
''')


def _walk_warnings(result):
    return [w for w in result.warnings if w.code == "W112"]


def test_a_loader_in_the_file_is_named_on_the_applied_rewrite():
    result = run(LAYER + LOADER, rules=("adopter",), select=("adopter:dropout_layernorm",))
    assert [m.status for m in result.matches] == ["applied"], result.matches
    (w,) = _walk_warnings(result)
    assert "`load_checkpoint`" in w.message and "getattr(pointer, part)" in w.message and "`LayerNorm`" in w.message


def test_literal_getattr_is_no_walk():
    result = run(LAYER + LITERAL, rules=("adopter",), select=("adopter:dropout_layernorm",))
    assert [m.status for m in result.matches] == ["applied"] and not _walk_warnings(result), result.warnings


def test_a_loader_in_a_sibling_module_is_named(tmp_path):
    (tmp_path / "layers.py").write_text(LAYER)
    (tmp_path / "convert.py").write_text("from .layers import SelfOutput\n" + LOADER)
    report = apply_paths([str(tmp_path / "layers.py")], load_packs(("adopter",), ("adopter:dropout_layernorm",)),
                         ApplyOptions(mode="diff", jobs=1, cache_dir=None))
    (result,) = report.files
    assert [m.status for m in result.matches] == ["applied"], result.matches
    (w,) = _walk_warnings(result)
    assert "convert.py" in w.message and "`load_checkpoint`" in w.message


def _walks_one_by_one(tree):
    """The W112 walks as a plain recursive walk of every node finds them: the
    first of each function name, in the order of the tree."""
    import ast

    from dslc.rewrite import walkers

    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if walkers.is_walk(child) and not any(w.function == func for w in out):
                out.append(walkers.Walk(func, child.lineno, ast.unparse(child)))
            visit(child, func)

    visit(tree, "module level")
    return tuple(out)


def test_the_index_finds_the_walks_of_a_plain_walk():
    """`outside.index` finds the walks in its own walk (which skips names and
    constants): the same ones, in the same order, as a walk of every node."""
    import ast
    import textwrap

    from dslc.rewrite import outside

    src = textwrap.dedent('''\
        p = getattr(p, names[0])

        class Loader:
            q = getattr(q, key)

            def load(self, model, parts, d=lambda m: getattr(m, "x")):
                pointer = model
                for part in parts:
                    pointer = getattr(pointer, part)
                    pointer = getattr(pointer, part + "_")
                async def inner(m, k):
                    m = getattr(m, k, None)
                    m = getattr(m, "literal")
                    (m) = getattr(m, k)
                return [getattr(pointer, k) for k in parts]

        def load(tree, names):
            while names:
                if names:
                    tree = getattr(tree, names.pop())

        def other(x, y):
            x = getattr(y, x)
            x, y = getattr(x, y), 1
            x.a = getattr(x, y)
        ''')
    tree = ast.parse(src)
    found = outside.index(tree).walks
    assert found == _walks_one_by_one(tree)
    assert [(w.function, w.line) for w in found] == [("module level", 1), ("load", 9), ("inner", 12)]
    for path in sorted(__import__("pathlib").Path(outside.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert outside.index(tree).walks == _walks_one_by_one(tree), path
