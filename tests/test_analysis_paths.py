"""Control flow, inlining, temporaries and source locations (issue §1, §3, §4)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path as FsPath

from dslc.analysis import analyze_source
from dslc.analysis.pathstate import merge_paths
from dslc.analysis.model import Guard, Node, Path, StmtRef

HEADER = """\
import torch
import torch.nn.functional as F
from torch import nn


class M(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Dropout(0.1)
        self.c = nn.LayerNorm(4)
        self.use_bn = config.use_bn

"""


def cls(body: str, **kw):
    src = HEADER + textwrap.indent(textwrap.dedent(body), "    ")
    ff = analyze_source(src, "m.py", module="m", root=None, **kw)
    assert not [p for p in ff.problems if p.code != "path-cap"], ff.problems
    return next(c for c in ff.classes if c.name == "M"), src, ff


def shapes(c):
    """Per path: (guards, DL nodes as 'attr/type/op')."""
    out = []
    for p in c.paths:
        nodes = tuple(n.attr or n.op or n.type for n in p.nodes if n.kind != "stmt")
        out.append((tuple(str(g) for g in p.guards), nodes))
    return out


def test_if_elif_else():
    c, _, _ = cls("""
    def forward(self, x, mode):
        if mode == 1:
            x = self.a(x)
        elif mode == 2:
            x = self.b(x)
        else:
            x = self.c(x)
        return x
    """)
    assert shapes(c) == [
        (("mode == 1",), ("a",)),
        (("not (mode == 1)", "mode == 2"), ("b",)),
        (("not (mode == 1)", "not (mode == 2)"), ("c",)),
    ]


def test_if_without_dl_nodes_is_one_stmt():
    c, _, _ = cls("""
    def forward(self, x, mask=None):
        if mask is not None:
            x = x + mask
        return self.a(x)
    """)
    assert len(c.paths) == 1 and c.paths[0].guards == ()
    kinds = [n.kind for n in c.paths[0].nodes]
    assert kinds == ["stmt", "layer", "stmt"]
    assert c.paths[0].nodes[0].reads == {"mask", "x"} and c.paths[0].nodes[0].writes == {"x"}


def test_early_return_ends_the_path():
    c, _, _ = cls("""
    def forward(self, x, skip):
        if skip:
            return self.b(x)
        x = self.a(x)
        return self.c(x)
    """)
    assert shapes(c) == [(("skip",), ("b",)), (("not (skip)",), ("a", "c"))]


def test_try_except_with_and_finally():
    c, _, _ = cls("""
    def forward(self, x):
        try:
            x = self.a(x)
        except RuntimeError as err:
            x = self.b(x)
        finally:
            y = 1
        with torch.no_grad():
            x = self.c(x)
        return x
    """)
    got = [s[1] for s in shapes(c)]
    assert got == [("a", "torch.no_grad", "c"), ("b", "torch.no_grad", "c")]


def test_loops_run_once_or_not_at_all():
    c, _, _ = cls("""
    def forward(self, x, n):
        for i in range(n):
            x = self.a(x)
        while n > 0:
            x = self.b(x)
            n = n - 1
        return x
    """)
    got = sorted(shapes(c))
    assert got == sorted([
        (("n > 0",), ("a", "b", "-")),
        (("not (n > 0)",), ("a",)),
        (("n > 0",), ("b", "-")),
        (("not (n > 0)",), ()),
    ])
    loop_node = next(n for n in c.paths[0].nodes if n.attr == "a")
    assert loop_node.stmt.blocks == ((("body", 0), "body"),)


def test_break_and_continue_end_the_iteration():
    c, _, _ = cls("""
    def forward(self, x, items):
        for item in items:
            if item:
                break
            x = self.a(x)
        return self.c(x)
    """)
    # `if item: break` holds no DL node: one stmt node; the paths are the
    # loop run once (a, c) and skipped (c)
    got = sorted(s[1] for s in shapes(c))
    assert got == sorted([("a", "c"), ("c",)])


def test_same_guard_both_ways_is_infeasible():
    c, _, _ = cls("""
    def forward(self, x):
        x = self.a(x)
        if self.use_bn:
            x = self.b(x)
        if not self.use_bn:
            x = self.c(x)
        return x
    """)
    assert sorted(shapes(c)) == [
        (("not (self.use_bn)", "not self.use_bn"), ("a", "c")),
        (("self.use_bn", "not (not self.use_bn)"), ("a", "b")),
    ]


def test_one_attribute_with_two_constants_is_infeasible():
    c, _, _ = cls("""
    def forward(self, x, config):
        if config.kind == 3:
            x = self.a(x)
        if config.kind == 4:
            x = self.b(x)
        return x
    """)
    guards = [s[0] for s in shapes(c)]
    assert ("config.kind == 3", "config.kind == 4") not in guards
    assert len(c.paths) == 3


def test_contradictory_and_in_one_guard_and_assert():
    c, _, _ = cls("""
    def forward(self, x, a):
        assert not self.use_bn
        if self.use_bn and a:
            x = self.a(x)
        return self.b(x)
    """)
    assert shapes(c) == [(("not self.use_bn", "not (self.use_bn and a)"), ("b",))]


def test_reassigned_local_is_a_new_symbol():
    c, _, _ = cls("""
    def forward(self, x, y=None):
        if y is None:
            y = self.a(x)
        if y is None:
            y = self.b(x)
        return y
    """)
    got = [s for s in shapes(c)]
    # (not None, None) is infeasible; after `y = self.a(x)` y may be None again
    assert len(got) == 3
    assert (("not (y is None)", "y is None"), ("b",)) not in got


def test_merge_paths_with_equal_nodes():
    ref = StmtRef("forward", "m.M", ("body", 0), (1, 1))
    nodes = (Node("layer", ref, type="torch.nn.Linear", attr="a"),)
    c, d = Guard("c"), Guard("d")
    merged = merge_paths([Path((c, d), nodes), Path((Guard("c", True), d), nodes)])
    assert merged == (Path((d,), nodes),)
    kept = merge_paths([Path((c,), nodes), Path((d,), nodes)])
    assert len(kept) == 2


def test_path_cap_is_reported():
    body = "def forward(self, x, " + ", ".join(f"f{i}" for i in range(10)) + "):\n"
    for i in range(10):
        body += f"    if f{i}:\n        x = self.a(x)\n"
    body += "    if x:\n        x = self.b(x)\n    else:\n        x = self.c(x)\n"
    body += "    return x\n"
    c, _, ff = cls(body)
    assert len(c.paths) == 256
    assert [p.code for p in ff.problems] == ["path-cap"]
    # the kept paths still cover both branches of the last split
    last = {n.attr for p in c.paths for n in p.nodes if n.attr in ("b", "c")}
    assert last == {"b", "c"}


def test_flatten_gives_one_guardless_path():
    c, _, _ = cls("""
    def forward(self, x):
        if self.use_bn:
            x = self.a(x)
        else:
            x = self.b(x)
        return self.c(x)
    """, flatten=True)
    assert shapes(c) == [((), ("a", "b", "c"))]


def test_temporaries_for_nested_expressions_and_tuple_outputs():
    c, _, _ = cls("""
    def forward(self, x, r):
        y = self.c(self.b(x) + r)
        p, q = torch.split(y, 2)
        return -p
    """)
    nodes = [n for n in c.paths[0].nodes if n.kind != "stmt"]
    assert [(n.attr or n.op or n.type, [v.text for v in n.inputs], n.outputs) for n in nodes] == [
        ("b", ["x"], ("temp_1",)),
        ("+", ["temp_1", "r"], ("temp_2",)),
        ("c", ["temp_2"], ("y",)),
        ("torch.split", ["y", "2"], ("p", "q")),
        ("-", ["p"], ("temp_3",)),
    ]
    ret = c.paths[0].nodes[-1]
    assert ret.kind == "stmt" and ret.reads == {"temp_3"}


def test_values_kinds_and_constants():
    c, _, _ = cls("""
    def forward(self, x, config):
        return F.softmax(x, -1, dtype=torch.float32, _stacklevel=True, extra=config.x, e=x * 2)
    """)
    node = next(n for n in c.paths[0].nodes if n.kind == "call")
    assert node.inputs[0].kind == "name" and node.inputs[1].const == -1 and node.inputs[1].kind == "const"
    kw = dict(node.kwargs)
    assert kw["dtype"].kind == "attr" and kw["_stacklevel"].const is True
    assert kw["extra"].kind == "attr" and kw["extra"].text == "config.x"
    assert kw["e"].kind == "name" and kw["e"].text.startswith("temp_")


def test_expr_span_is_exact_utf8_bytes():
    c, src, _ = cls("""
    def forward(self, x):
        y = self.b(F.softmax(x, dim=-1)) + len("é€")
        return y
    """)
    lines = src.encode().splitlines()
    for n in c.paths[0].nodes:
        if n.kind == "stmt":
            assert n.expr_span is None
            continue
        l1, c1, l2, c2 = n.expr_span
        assert l1 == l2
        text = lines[l1 - 1][c1:c2].decode()
        expected = {"call": "F.softmax(x, dim=-1)", "layer": "self.b(F.softmax(x, dim=-1))",
                    "op": 'self.b(F.softmax(x, dim=-1)) + len("é€")'}[n.kind]
        assert text == expected


def _navigate(fn: ast.FunctionDef, index_path: tuple):
    node = fn
    for step in index_path:
        node = getattr(node, step) if isinstance(step, str) else node[step]
    return node


def test_index_paths_and_blocks_locate_statements():
    c, src, _ = cls("""
    def forward(self, x):
        if self.use_bn:
            try:
                x = self.a(x)
            except ValueError:
                x = self.b(x)
        return self.c(x)
    """)
    tree = ast.parse(src)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward")
    seen = set()
    for p in c.paths:
        for n in p.nodes:
            stmt = _navigate(fn, n.stmt.index_path)
            assert isinstance(stmt, ast.stmt)
            assert (stmt.lineno, stmt.end_lineno) == n.stmt.lines
            for block_path, branch in n.stmt.blocks:
                assert isinstance(_navigate(fn, block_path), ast.stmt)
            seen.add((n.attr, n.stmt.index_path, n.stmt.blocks))
    assert (None, ("body", 0), ()) in seen  # the if test as a stmt node
    assert ("b", ("body", 0, "body", 0, "handlers", 0, "body", 0),
            ((("body", 0), "body"), (("body", 0, "body", 0), "handlers[0]"))) in seen


HELPERS = """
def _project(self, h):
    h = self.a(h)
    return self.b(h)

def _shape(self, t, n):
    return t.view(n, -1)

def forward(self, x):
    def local(z):
        return self.c(z)
    y = self._project(x)
    y = self._shape(y, 2)
    return local(y)
"""


def test_helpers_are_inlined_with_locations_in_the_helper():
    c, src, _ = cls(HELPERS)
    (path,) = c.paths
    line_of = {text: i for i, line in enumerate(src.splitlines(), 1) for text in [line.strip()]}
    site1, site2 = line_of["y = self._project(x)"], line_of["return local(y)"]
    dl = [n for n in path.nodes if n.kind != "stmt"]
    assert [(n.attr or n.type, n.stmt.method, n.inlined_from) for n in dl] == [
        ("a", "_project", (("forward", (site1, site1)),)),
        ("b", "_project", (("forward", (site1, site1)),)),
        ("m.M._shape", "forward", ()),  # no DL nodes inside: kept as a call
        ("c", "local", (("forward", (site2, site2)),)),
    ]
    # parameter binding and return renaming are explicit stmt nodes
    entry = next(n for n in path.nodes if n.kind == "stmt" and n.writes == {"h"})
    assert entry.reads == {"x"} and entry.stmt.lines == (site1, site1) and entry.stmt.method == "forward"
    ret = next(n for n in path.nodes if n.kind == "stmt" and n.stmt.method == "_project" and n.writes)
    assert ret.writes == {"y"} and "temp_1" in ret.reads
    tree = ast.parse(src)
    helper = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_project")
    assert _navigate(helper, dl[0].stmt.index_path).lineno == dl[0].stmt.lines[0]


def test_no_inline_keeps_helper_calls():
    c, _, _ = cls(HELPERS, inline=False)
    dl = [n.attr or n.type for n in c.paths[0].nodes if n.kind != "stmt"]
    assert dl == ["m.M._project", "m.M._shape", "m.M.forward.local"]


def test_recursive_helper_terminates():
    c, _, _ = cls("""
    def step(self, x, n):
        if n:
            return self.step(self.a(x), n - 1)
        return x

    def forward(self, x):
        return self.step(x, 3)
    """)
    kinds = {(n.kind, n.type) for p in c.paths for n in p.nodes if n.kind == "call"}
    assert ("call", "m.M.step") in kinds


def test_inherited_forward_and_init_from_a_base_in_the_file():
    src = HEADER + textwrap.indent(textwrap.dedent("""
    def forward(self, x):
        return self.a(x)
    """), "    ") + "\n\nclass N(M):\n    pass\n"
    ff = analyze_source(src, "m.py", module="m")
    n = next(c for c in ff.classes if c.name == "N")
    assert {b.attr for b in n.init} >= {"a", "b", "c"}
    (node,) = [x for x in n.paths[0].nodes if x.kind == "layer"]
    assert node.stmt.owner == "m.M" and node.type == "torch.nn.Linear"


def test_init_guards_and_attr_uses():
    src = """
import torch
from torch import nn
from transformers.activations import ACT2FN


class Intermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        if isinstance(config.hidden_act, str):
            self.act = ACT2FN[config.hidden_act]
        else:
            self.act = config.hidden_act

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.act(hidden_states)
        return hidden_states
"""
    ff = analyze_source(src, "m.py", module="m")
    c = ff.classes[0]
    got = [(b.attr, b.kind, b.type, [str(g) for g in b.guards]) for b in c.init]
    assert got == [
        ("dense", "call", "torch.nn.Linear", []),
        ("act", "subscript", "transformers.activations.ACT2FN", ["isinstance(config.hidden_act, str)"]),
        ("act", "other", None, ["not (isinstance(config.hidden_act, str))"]),
    ]
    nodes = [n for n in c.paths[0].nodes if n.kind == "layer"]
    # the layer-building bindings agree on the type; the other one is in init
    assert nodes[1].type == "transformers.activations.ACT2FN"
    uses = {(u.attr, u.method, u.kind) for u in c.attr_uses}
    assert ("act", "forward", "call") in uses and ("act", "__init__", "store") in uses


def test_layer_with_two_different_init_types_is_unresolved():
    c, _, _ = cls("""
    def _unused(self):
        self.d = nn.GELU()

    def forward(self, x):
        return self.d(x)
    """)
    # `self.d` is assigned outside __init__ only: not an init binding
    (node,) = [n for n in c.paths[0].nodes if n.kind == "layer"]
    assert node.type is None and node.unresolved == "self.d"
    src = HEADER.replace("self.use_bn = config.use_bn",
                         "self.d = nn.GELU() if config.g else nn.ReLU()") + "    def forward(self, x):\n        return self.d(x)\n"
    ff = analyze_source(src, "m.py", module="m")
    (node,) = [n for n in ff.classes[0].paths[0].nodes if n.kind == "layer"]
    assert node.type is None and node.unresolved == "self.d"


def test_bad_input_is_a_problem_not_an_exception():
    ff = analyze_source("def f(:\n", "bad.py")
    assert ff.classes == () and ff.problems[0].code == "syntax-error" and ff.problems[0].line == 1
    ff = analyze_source("x = 1\0", "nul.py")
    assert ff.problems and ff.problems[0].code == "syntax-error"
    deep = "x = " + "(" * 300 + "1" + ")" * 300 + "\n"
    ff = analyze_source(deep, "deep.py")
    assert ff.classes == ()


def test_want_prefilter_skips_files_without_the_names():
    src = HEADER + "    def forward(self, x):\n        return self.a(x)\n"
    assert analyze_source(src, "m.py", module="m", want=frozenset({"Conv2d"})).classes == ()
    assert analyze_source(src, "m.py", module="m", want=frozenset({"Linear"})).classes != ()


def test_conditional_expression_with_dl_nodes_splits():
    c, _, _ = cls("""
    def forward(self, x):
        y = self.a(x) if self.use_bn else x
        z = self.b(y) + (self.c(y) if y is not None else 0)
        return z
    """)
    got = shapes(c)
    assert sorted(got) == [
        (("not (self.use_bn)", "not (y is not None)"), ("b", "+")),
        (("not (self.use_bn)", "y is not None"), ("b", "c", "+")),
        (("self.use_bn", "not (y is not None)"), ("a", "b", "+")),
        (("self.use_bn", "y is not None"), ("a", "b", "c", "+")),
    ]
    full = next(p for p in c.paths if len([n for n in p.nodes if n.kind != "stmt"]) == 4)
    first = [n for n in full.nodes if n.kind != "stmt"]
    assert first[0].outputs == ("y",) and first[2].outputs == ("temp_2",) and first[3].inputs[1].text == "temp_2"
    plain = [n for p in c.paths for n in p.nodes if n.kind == "stmt" and n.writes == {"y"}]
    assert plain and plain[0].reads == {"x"}


def test_while_true_has_no_skip_path():
    c, _, _ = cls("""
    def forward(self, x):
        while True:
            x = self.a(x)
            if x.sum() > 0:
                break
        return x
    """)
    assert shapes(c) == [(("True",), ("a",))]


def test_mutated_sources_never_raise():
    """Random edits of a real model file: facts or problems, never an exception."""
    import random

    from dslc.analysis.model import FileFacts

    base = (FsPath(__file__).resolve().parent.parent / "examples" / "dpt_preact_residual.py").read_text()
    rng = random.Random(1234)
    pieces = ["if ", "else:", "    ", "\n", "(", ")", "self.", "return ", "for i in x:", "=", ":", "not ",
              "try:\n", "except:\n", "lambda: ", "yield ", "await ", "*", "**", "@", "[", "]", ","]
    for _ in range(300):
        text = list(base)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(text))
            if rng.random() < 0.5:
                del text[pos:pos + rng.randint(1, 8)]
            else:
                text.insert(pos, rng.choice(pieces))
        facts = analyze_source("".join(text), "mutant.py", module="mutant")
        assert isinstance(facts, FileFacts)


def test_flatten_keeps_the_last_init_assignment_without_guards():
    src = HEADER.replace("self.use_bn = config.use_bn", "if config.x:\n            self.d = nn.GELU()\n"
                         "        else:\n            self.d = config.act") + "    def forward(self, x):\n        return self.d(x)\n"
    full = analyze_source(src, "m.py", module="m").classes[0]
    flat = analyze_source(src, "m.py", module="m", flatten=True, inline=False).classes[0]
    assert [(b.kind, len(b.guards)) for b in full.init if b.attr == "d"] == [("call", 1), ("other", 1)]
    assert [(b.kind, b.guards) for b in flat.init if b.attr == "d"] == [("other", ())]


def test_reads_of_nested_nodes_inside_plain_expressions():
    c, _, _ = cls("""
    def forward(self, x, y):
        z = torch.cat([self.a(x), y], dim=-1)
        return z
    """)
    a, cat = [n for n in c.paths[0].nodes if n.kind != "stmt"]
    assert a.outputs == ("temp_1",)
    assert cat.reads == {"temp_1", "y"} and cat.inputs[0].text == "[self.a(x), y]"
