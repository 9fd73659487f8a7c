"""Class items: the language (parse, lower), the forward graph, the matcher."""

from __future__ import annotations

import textwrap

import pytest

from dslc.match import ir
from dslc.analysis import analyze_source
from dslc.match.compiler import compile_rules
from dslc.lang.loader import load_rules
from dslc.match.matcher import match_file
from dslc.rewrite.rewriter import rewrite_source

PACK = textwrap.dedent('''
    pack t "test"
    requires liger-kernel ">=0.8" module liger_kernel
    rule rms "rms" {
      kernel liger_kernel.transformers.functional.liger_rms_norm
      safe
      tolerance fp32 atol=1e-5 rtol=1e-5; bf16 atol=1e-2 rtol=1.6e-2
      requires liger-kernel device cuda on $x
      fallback original
      class {
        init { torch.nn.Parameter(...) -> $w; }
        scalar $eps;
        forward($x) {
          $x.pow(2) -> $p;
          $p.mean(-1, keepdim=True) -> $v;
          $v + $eps -> $ve;
          torch.rsqrt($ve) -> $r;
          $x * $r -> $n;
          $w * $n -> $out;
        }
      } => {
        liger_kernel.transformers.functional.liger_rms_norm($x, $w, $eps, 0.0, "llama", False) -> $out;
      }
    }
    rule swiglu "swiglu" {
      kernel liger_kernel.transformers.functional.liger_swiglu
      tolerance atol=1e-5 rtol=1e-5
      requires liger-kernel device cuda on $x
      fallback original
      class {
        init { torch.nn.Linear(...) -> $gate; torch.nn.Linear(...) -> $up; torch.nn.Linear(...) -> $down; }
        forward($x) {
          $gate($x) -> $g; torch.nn.functional.silu($g) -> $a; $up($x) -> $u; $a * $u -> $m; $down($m) -> $out;
        }
      } => {
        $gate($x) -> $g; $up($x) -> $u;
        liger_kernel.transformers.functional.liger_swiglu($g, $u) -> $m;
        $down($m) -> $out;
      }
    }
''')


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("pack") / "t.adr"
    path.write_text(PACK)
    loaded = load_rules([str(path)])
    assert not loaded.diagnostics
    return loaded.packs[0]


def _matches(pack, body: str, init: str = "self.weight = nn.Parameter(torch.ones(8))\nself.eps = 1e-6"):
    head = ("import torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
            "from transformers.activations import ACT2FN\n\n\n"
            "class C(nn.Module):\n    def __init__(self, config=None):\n        super().__init__()\n")
    src = head + textwrap.indent(init, " " * 8) + "\n" + textwrap.indent(textwrap.dedent(body), "    ")
    facts = analyze_source(src, "m.py")
    return src, facts, match_file(compile_rules(pack.rules), facts)


def test_lowering(pack):
    rms = pack.rules[0]
    assert rms.safety == "safe" and rms.fallback == "original"
    assert rms.needs == (ir.Need("liger-kernel", "liger_kernel", "cuda", ir.Var("x")),)
    assert rms.contract.per_dtype == (("fp32", 1e-5, 1e-5), ("bf16", 1e-2, 1.6e-2))
    assert rms.contract.tolerance_for("bf16") == (1e-2, 1.6e-2)
    assert rms.contract.tolerance_for("fp32") == (rms.contract.atol, rms.contract.rtol) == (1e-5, 1e-5)
    k = rms.klass
    assert [v.name for v in k.inputs] == ["x"] and [v.name for v in k.scalars] == ["eps"]
    assert k.forward[0].kind == "method" and k.forward[0].callee.qualname == "pow"
    assert pack.rules[1].safety == "safe"  # not declared: safe, as before


@pytest.mark.parametrize("body", [
    # the pattern's spelling
    """
    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # x ** 2, torch.mean with keywords, 1 / sqrt, operands swapped
    """
    def forward(self, hidden):
        ms = torch.mean(hidden ** 2, dim=-1, keepdim=True)
        return hidden * (1 / torch.sqrt(self.eps + ms)) * self.weight
    """,
    # square(), rsqrt method, a docstring, a constant eps
    """
    def forward(self, h):
        "doc"
        r = (h.square().mean(dim=-1, keepdim=True) + 1e-5).rsqrt()
        return (h * r) * self.weight
    """,
])
def test_spellings_match(pack, body):
    src, facts, matches = _matches(pack, body)
    (m,) = matches
    assert m.rule.name == "rms" and m.conflict is None and m.class_name == "C"
    result = rewrite_source(src, facts, matches, path="m.py")
    assert result.outcomes[0].status == "applied", result.outcomes[0].reason
    assert "liger_rms_norm(" in result.new_source


@pytest.mark.parametrize("body", [
    # an extra term
    """
    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps)) + 1
    """,
    # mean without keepdim
    """
    def forward(self, x):
        v = x.pow(2).mean(-1)
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # mean over another dim
    """
    def forward(self, x):
        v = x.pow(2).mean(1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # a branch: not straight-line
    """
    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        if self.training:
            v = v + 1
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # a second parameter
    """
    def forward(self, x, residual):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # a statement with an effect
    """
    def forward(self, x):
        print(x)
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # dead code that calls a layer
    """
    def forward(self, x):
        unused = torch.relu(x)
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))
    """,
    # eps is computed from the input
    """
    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + x.mean()))
    """,
])
def test_near_misses_do_not_match(pack, body):
    _, _, matches = _matches(pack, body)
    assert matches == []


def test_weight_must_be_a_parameter_assigned_once(pack):
    body = """
    def forward(self, x):
        v = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(v + self.eps))

    def reset(self):
        self.weight = None
    """
    src, facts, matches = _matches(pack, body)
    (m,) = matches
    assert m.conflict and "also assigned in `reset`" in m.conflict
    result = rewrite_source(src, facts, matches, path="m.py")
    assert result.new_source is None and result.outcomes[0].status == "skipped"
    _, _, matches = _matches(pack, body.split("\n    def reset")[0],
                             init="self.weight = torch.ones(8)\nself.eps = 1e-6")
    assert matches and matches[0].conflict and "not `torch.nn.Parameter`" in matches[0].conflict


@pytest.mark.parametrize("init, act, check", [
    ("self.act = nn.SiLU()", "self.act(self.w1(x))", False),
    ("self.act = ACT2FN['silu']", "self.act(self.w1(x))", False),
    ("self.act = ACT2FN[config.hidden_act]", "self.act(self.w1(x))", True),
    ("self.act = None", "F.silu(self.w1(x))", False),
])
def test_gated_mlp_activations(pack, init, act, check):
    layers = "self.w1 = nn.Linear(8, 16)\nself.w3 = nn.Linear(8, 16)\nself.w2 = nn.Linear(16, 8)\n" + init
    body = f"""
    def forward(self, x):
        return self.w2({act} * self.w3(x))
    """
    src, facts, matches = _matches(pack, body, init=layers)
    (m,) = matches
    assert m.rule.name == "swiglu" and m.conflict is None
    result = rewrite_source(src, facts, matches, path="m.py")
    assert result.outcomes[0].status == "applied", result.outcomes[0].reason
    assert ("isinstance(self.act, " in result.new_source) == check


def test_gelu_activation_is_not_silu(pack):
    layers = "self.w1 = nn.Linear(8, 16)\nself.w3 = nn.Linear(8, 16)\nself.w2 = nn.Linear(16, 8)\nself.act = ACT2FN['gelu']"
    body = """
    def forward(self, x):
        return self.w2(self.act(self.w1(x)) * self.w3(x))
    """
    _, _, matches = _matches(pack, body, init=layers)
    assert matches == []


def test_compute_graph_shares_pure_subexpressions():
    facts = analyze_source(textwrap.dedent('''
        import torch
        from torch import nn

        class C(nn.Module):
            def forward(self, x):
                u = x.mean(-1, keepdim=True)
                return (x - u) * (x - u)
    '''), "m.py")
    c = facts.classes[0].compute
    assert c.problem is None
    last = c.nodes[c.output]
    assert last.op == "binop" and last.args[0] == last.args[1]


WHEN_WHERE = textwrap.dedent('''
    pack w "t"
    rule r "d" {
      kernel torch.nn.functional.silu
      exact
      class {
        forward($x) { torch.sigmoid($x) -> $s; $x * $s -> $y; }
      } => { torch.nn.functional.silu($x) -> $y; }
      when $x != None
    }
    rule q "d" {
      kernel torch.nn.functional.silu
      exact
      class {
        forward($x) { torch.tanh($x) -> $s; $x * $s -> $y; }
      } => { torch.nn.functional.silu($x) -> $y; }
      where $s == 1
    }
''')


def test_when_guards_the_dispatch_and_where_is_checked(tmp_path):
    path = tmp_path / "w.adr"
    path.write_text(WHEN_WHERE)
    loaded = load_rules([str(path)])
    assert not loaded.diagnostics
    src = ("import torch\nfrom torch import nn\n\n\nclass S(nn.Module):\n    def forward(self, x):\n"
           "        return x * torch.sigmoid(x)\n\n\nclass T(nn.Module):\n    def forward(self, x):\n"
           "        return x * torch.tanh(x)\n")
    facts = analyze_source(src, "m.py")
    matches = match_file(compile_rules(loaded.packs[0].rules), facts)
    result = rewrite_source(src, facts, matches, path="m.py")
    status = {o.match.class_name: (o.status, o.reason) for o in result.outcomes}
    assert status["S"] == ("applied", None)
    assert status["T"][0] == "skipped" and "not known statically" in status["T"][1]
    assert "        if (x != None):\n" in result.new_source


def test_init_pattern_variables_must_agree(tmp_path):
    path = tmp_path / "v.adr"
    path.write_text(PACK.replace(
        "init { torch.nn.Linear(...) -> $gate; torch.nn.Linear(...) -> $up; torch.nn.Linear(...) -> $down; }",
        "init { torch.nn.Linear($h, $i) -> $gate; torch.nn.Linear($h, $i) -> $up; torch.nn.Linear($i, $h) -> $down; }"))
    (pack,) = load_rules([str(path)]).packs
    body = """
    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
    """
    ok = "self.w1 = nn.Linear(8, 16)\nself.w3 = nn.Linear(8, 16)\nself.w2 = nn.Linear(16, 8)"
    _, _, matches = _matches(pack, body, init=ok)
    assert [m.conflict for m in matches] == [None]
    bad = "self.w1 = nn.Linear(8, 16)\nself.w3 = nn.Linear(8, 32)\nself.w2 = nn.Linear(16, 8)"
    _, _, matches = _matches(pack, body, init=bad)
    assert len(matches) == 1 and "`$i` is `16` and `32`" in matches[0].conflict


def test_dispatch_needs_a_line_of_its_own(tmp_path):
    path = tmp_path / "w.adr"
    path.write_text(WHEN_WHERE)
    (pack,) = load_rules([str(path)]).packs
    src = ("import torch\nfrom torch import nn\n\n\nclass S(nn.Module):\n"
           "    def forward(self, x): return x * torch.sigmoid(x)\n\n\nclass U(nn.Module):\n    def forward(self, x):\n"
           "        y = torch.sigmoid(x); return x * y\n")
    facts = analyze_source(src, "m.py")
    result = rewrite_source(src, facts, match_file(compile_rules(pack.rules), facts), path="m.py")
    status = {o.match.class_name: o.status for o in result.outcomes}
    assert status == {"S": "skipped", "U": "applied"}
    compile(result.new_source, "m.py", "exec")
