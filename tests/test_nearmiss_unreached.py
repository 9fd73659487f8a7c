"""Places holding a rule's anchors that the near-miss report used to leave
unexplained (issue 8, "Why not" report), each written from scratch:

1. a lone anchor in another function than the one where the family matched:
   a module function beside a rewritten one (`transpose(2, 3)`, which no
   spelling takes), a relative-position helper method beside the attention
   chain of its class (an `einsum` whose result is only sliced) -- the pattern
   node that failed is named;
2. an anchor call the analysis has no node for (N404), one place per
   function, with the cause: a tensor method on a value the analysis does not
   follow (`k.reshape(...).transpose(-1, -2)`), a comprehension, a function
   no analysed path reaches;
3. `dslc explain FILE:LINE` prints one line per place and reason, not one per
   rule variant (`+N more rules`, as `dslc apply --near-misses` does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
SDPA = REPO / "rulepacks" / "sdpa.adr"

MODEL = '''\
import torch
from torch import nn
import torch.nn.functional as F


def eager(module, q, k, v, mask, scaling, dropout=0.0):
    w = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if mask is not None:
        w = w + mask
    w = F.softmax(w, dim=-1)
    w = F.dropout(w, p=dropout, training=module.training)
    return torch.matmul(w, v)


def eager_dims(module, q, k, v, mask, scaling, dropout=0.0):
    w = torch.matmul(q, k.transpose(2, 3)) * scaling
    if mask is not None:
        w = w + mask
    w = F.softmax(w, dim=-1)
    w = F.dropout(w, p=dropout, training=module.training)
    return torch.matmul(w, v)


class RelPos(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.rel = nn.Parameter(torch.zeros(8, d))
        self.scale = d ** -0.5

    def rel_bias(self, q, rel):
        r = torch.einsum("bhqd,kd->bhqk", q, rel)
        return r[..., :8] + r[..., 8:]

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        w = (q * self.scale) @ k.transpose(-2, -1)
        w = w + self.rel_bias(q, self.rel)
        w = F.softmax(w, dim=-1)
        return w @ v


class Fused(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)

    def heads(self, x):
        return x.view(self.h, -1, 8).transpose(1, 2)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.reshape(self.h, -1, 8)
        k = k.reshape(self.h, -1, 8).transpose(-1, -2)
        v = self.heads(v)
        s = torch.bmm(q, k) + mask
        p = F.softmax(s, dim=-1)
        return torch.bmm(p, v)


def listed(qs, ks, v):
    ws = [torch.matmul(q, k.transpose(-1, -2)) for q, k in zip(qs, ks)]
    p = F.softmax(torch.stack(ws), dim=-1)
    return torch.matmul(p, v)
'''


def line_of(needle: str) -> int:
    return next(i for i, line in enumerate(MODEL.splitlines(), 1) if needle in line)


def _run(path: Path, *extra: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["apply", "--rules", str(SDPA), "--no-cache", "--jobs", "1", "--format", "json",
                     "--near-misses", *extra, str(path)])
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("unreached") / "model.py"
    path.write_text(MODEL)
    code, rep = _run(path)
    assert code == 0 and rep["errors"] == [], rep["errors"]
    return path, rep


def _near(rep, line: int) -> list[dict]:
    return [n for n in rep["near_misses"] if n["line"] == line and n["kind"] == "unmatched"]


def test_a_lone_anchor_in_another_module_function_is_explained(report):
    _, rep = report
    applied = [m for m in rep["matches"] if m["status"] == "applied"]
    assert [m["function"] for m in applied] == ["eager"]  # the family matched in `eager` ...
    near = _near(rep, line_of("k.transpose(2, 3)"))  # ... and `eager_dims` is a place of its own
    assert near and all(n["function"] == "eager_dims" and n["code"] == "N101" for n in near), near
    assert all("transpose" in n["reason"] and "does not fit" in n["reason"] and "'2'" in n["reason"] for n in near)
    # the place the family rewrote is still no near miss of its other spellings
    assert not _near(rep, line_of("w = torch.matmul(q, k.transpose(-1, -2)) * scaling"))


def test_a_lone_anchor_in_a_helper_method_is_explained(report):
    _, rep = report
    assert any(m["class"] == "RelPos" for m in rep["matches"])  # the family matched in RelPos.forward
    near = _near(rep, line_of('r = torch.einsum("bhqd'))
    assert near and all(n["class"] == "RelPos" and n["function"] == "rel_bias" for n in near), near
    assert any("found `einsum(...)`" in n["reason"] and "does not fit `$s0 + $m -> $s2`" in n["reason"] for n in near)


def test_a_tensor_method_on_a_value_not_followed_is_explained_in_its_function(report):
    _, rep = report
    line = line_of("k = k.reshape(self.h, -1, 8).transpose(-1, -2)")
    near = _near(rep, line)
    assert near and {n["code"] for n in near} == {"N404"} and {n["function"] for n in near} == {"forward"}, near
    reason = near[0]["reason"]
    assert "tensor method called on `k.reshape(self.h, -1, 8)`" in reason and "no pattern is tried there" in reason
    # `heads` calls transpose too but names none of the chain's other operations: no place
    assert not _near(rep, line_of("return x.view(self.h, -1, 8).transpose(1, 2)"))


def test_an_anchor_inside_a_comprehension_is_explained(report):
    _, rep = report
    near = _near(rep, line_of("ws = [torch.matmul(q, k.transpose(-1, -2))"))
    assert near and {n["code"] for n in near} == {"N404"} and {n["function"] for n in near} == {"listed"}, near
    assert "inside a comprehension" in near[0]["reason"]


def test_a_function_on_no_analysed_path(tmp_path):
    """The reason names the function when no path node lies on the call's line."""
    from dslc.rewrite.unreached import SourceCalls
    import ast

    calls = SourceCalls(ast.parse(MODEL))
    [c] = [c for c in calls.calls("torch.Tensor.transpose", {}) if c.function == "listed"]
    assert c.class_name is None and c.method
    why = calls.why(c, [])
    assert "`listed` (lines" in why and "on no analysed path" in why
    assert calls.why(c, [(c.line, c.line)]).count("comprehension") == 1


def _explained():
    spec = importlib.util.spec_from_file_location("dslc_bench_explained_u", REPO / "benchmarks" / "explained.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_explained_benchmark_has_no_gap(tmp_path):
    ex = _explained()
    src = tmp_path / "src"
    (src / "transformers" / "models" / "tiny").mkdir(parents=True)
    (src / "transformers" / "models" / "tiny" / "modeling_tiny.py").write_text(MODEL)
    (src / "timm" / "models").mkdir(parents=True)
    res = ex.run([str(SDPA)], ex.files_of(src), 1, None)
    assert res["errors"] == 0 and res["internal_errors"] == 0
    assert res["places"] > 0 and res["unexplained"] == [], res["unexplained"][:5]


def test_explain_prints_one_line_per_place_and_reason(report, capsys):
    path, rep = report
    line = line_of("k = k.reshape(self.h, -1, 8).transpose(-1, -2)")
    assert main(["explain", "--rules", str(SDPA), f"{path}:{line}"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("  near miss ")]
    [entry] = _near(rep, line)  # the JSON report groups them too: `rules`
    n_rules = len(entry["rules"])
    assert n_rules > 1 and len(lines) == 1, out  # one per rule variant before
    assert f"+{n_rules - 1} more rules (line {line})" in lines[0] and lines[0].endswith("[N404]")
    line = line_of("k.transpose(2, 3)")
    assert main(["explain", "--rules", str(SDPA), f"{path}:{line}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  near miss ")]
    reasons = {r["reason"] for r in _near(rep, line)}
    assert len(lines) == len(reasons) >= 1


def test_explain_groups_skipped_matches(tmp_path, capsys):
    """Two spellings that matched one place and were skipped for one reason: one line."""
    from types import SimpleNamespace

    from dslc.apply.results import MatchEntry
    from dslc.commands.explain import explain_text

    ms = [MatchEntry(f"p:r{i}", "m.py", "A", (3, 4), "skipped", "read after the match") for i in range(3)]
    rep = SimpleNamespace(errors=(), near_misses=(), matches=ms + [MatchEntry("p:q", "m.py", "A", (3, 4), "applied")])
    text = explain_text(rep, "m.py", 3, "A", "forward", (1, 9))
    assert text.count("skipped   p:r0 +2 more rules (lines 3-4): read after the match") == 1
    assert "applied   p:q (lines 3-4)" in text and "p:r1" not in text
