"""The near-miss report: `dslc apply --near-misses` and `dslc explain FILE:LINE`.

Every model here is written for the test: each class holds the anchors of a
rule and misses it in one way (a pattern node, an init argument, a
constraint, a safety check), or holds no anchors at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"

MODEL = '''\
import torch
from torch import nn
import torch.nn.functional as F
from transformers.activations import ACT2FN
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention


def scores(x):
    return F.softmax(x, dim=0)


class NeverCalled(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = GPT2Attention(config, is_cross_attention=False, layer_idx=0)

    def forward(self, x):
        return x


class NoResidualRead(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(h, eps=1e-5)

    def forward(self, x, res):
        y = self.drop(x)
        z = y + res
        return self.norm(x) + z


class Fused(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(h, eps=1e-5)

    def forward(self, x, res):
        return self.norm(self.drop(x) + res)


class Softmaxes(nn.Module):
    def forward(self, x):
        a = F.softmax(x, dim=1)
        return F.softmax(a, dim=-1)


class UnpackedKwargs(nn.Module):
    def __init__(self, c, **dd):  # (a local dict literal `dd` is resolved: issue 8 item 9)
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c, **dd)

    def forward(self, x):
        return self.bn(self.conv(x))


class NotAffine(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c, affine=False)

    def forward(self, x):
        return self.bn(self.conv(x))


class ReadAfter(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        return y + h


class Rebound(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(h)

    def forward(self, x, res):
        y = self.drop(x)
        y = y * 2
        return self.norm(y + res)


class OtherKey(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = ACT2FN[config.activation_function]

    def forward(self, x):
        return self.act(self.fc1(x))


class OnlyDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(x)
'''


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return path


def apply_json(path, *extra):
    import io
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--format", "json", *extra, str(path)])
    return code, json.loads(out.getvalue())


def by_class(report) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for n in report["near_misses"]:
        out.setdefault(n["class"], []).append(n)
    return out


def test_json_has_near_misses_only_when_asked(model):
    code, plain = apply_json(model)
    assert code == 0 and "near_misses" not in plain
    code, report = apply_json(model, "--near-misses")
    assert code == 0
    assert "near_misses" not in plain["summary"]["adopter:softmax"]
    assert report["summary"]["adopter:softmax"] == {"found": 1, "applied": 1, "skipped": 0, "suppressed": 0,
                                                    "near_misses": 2}
    # The rewrites are the same with and without the report.
    assert [(m["rule"], m["class"], m["status"]) for m in report["matches"]] == \
           [(m["rule"], m["class"], m["status"]) for m in plain["matches"]]
    for n in report["near_misses"]:
        assert set(n) >= {"rule", "file", "class", "line", "reason"}
        assert n["file"].endswith("model.py") and n["reason"]


def test_each_miss_says_why(model):
    _, report = apply_json(model, "--near-misses")
    miss = by_class(report)
    # A pattern node that did not fit: the LayerNorm reads `x`, not the sum.
    [dl] = miss["NoResidualRead"]
    assert dl["rule"] == "adopter:dropout_layernorm" and dl["kind"] == "unmatched"
    assert dl["line"] == line_of(MODEL, "y = self.drop(x)")
    assert "`self.drop(...)`" in dl["reason"] and "`y + res`" in dl["reason"]
    assert f"line {line_of(MODEL, 'return self.norm(x) + z')} `self.norm(...)`" in dl["reason"]
    # A literal the call does not give: dim=1 is not dim=-1; the dim=-1 call is applied.
    [sm] = miss["Softmaxes"]
    assert sm["rule"] == "adopter:softmax" and sm["line"] == line_of(MODEL, "dim=1")
    assert "dim == -1" in sm["reason"] and "'1'" in sm["reason"]
    # An init constraint hidden behind **dd.
    [dd] = miss["UnpackedKwargs"]
    assert dd["rule"] == "adopter:conv_batchnorm"
    assert "**dd" in dd["reason"] and "affine" in dd["reason"] and "__init__" in dd["reason"]
    # An init constraint that is refuted.
    [na] = miss["NotAffine"]
    assert "affine == True" in na["reason"] and "'False'" in na["reason"]
    # A safety refusal: the skipped match is a near miss too, with its reason.
    [ra] = miss["ReadAfter"]
    assert ra["kind"] == "skipped" and ra["rule"] == "adopter:conv_batchnorm"
    skipped = [m for m in report["matches"] if m["class"] == "ReadAfter"]
    assert skipped and skipped[0]["status"] == "skipped" and ra["reason"] == skipped[0]["reason"]
    # A matched value written again between the pattern's nodes.
    [rb] = miss["Rebound"]
    assert f"line {line_of(MODEL, 'y = y * 2')} writes `y` again before a node fits `$y + $res" in rb["reason"]
    # A module-level function (an init-less rule's place is each anchor call).
    [fn] = miss[None]
    assert fn["rule"] == "adopter:softmax" and fn["function"] == "scores" and "'0'" in fn["reason"]
    # A layer the rule replaces, built but never called by forward.
    [nc] = miss["NeverCalled"]
    assert nc["rule"] == "adopter:gpt2_attention" and nc["line"] == line_of(MODEL, "self.attn = GPT2Attention")
    assert "no path of forward calls it" in nc["reason"]
    # A lookup key the rule does not take.
    [ok] = miss["OtherKey"]
    assert ok["rule"] == "adopter:biased_gelu"
    assert "the key is `config.activation_function`, the rule needs `$cfg.hidden_act`" in ok["reason"]
    # Applied places and classes without every anchor name are no near misses.
    assert "Fused" not in miss and "OnlyDropout" not in miss


def test_text_report_groups_near_misses_on_stderr(model, capsys):
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--near-misses", str(model)])
    out, err = capsys.readouterr()
    assert code == 0
    lines = [ln for ln in err.splitlines() if "near-miss[" in ln]
    assert len(lines) == 9
    numbers = [int(ln.split(":")[1]) for ln in lines]
    assert numbers == sorted(numbers)
    assert f"model.py:{line_of(MODEL, 'dim=1')}: near-miss[adopter:softmax] in Softmaxes: " in err
    # The summary table counts them per rule (the unmatched ones; skipped are skipped).
    row = next(ln for ln in err.splitlines() if ln.startswith("adopter:conv_batchnorm "))
    assert row.split()[1:] == ["1", "0", "1", "2"]
    assert "near-miss" in next(ln for ln in err.splitlines() if ln.startswith("rule "))
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", str(model)])
    err = capsys.readouterr().err
    assert "near-miss" not in err


def test_explain_place(model, capsys):
    line = line_of(MODEL, "return self.norm(x) + z")
    assert main(["explain", "--rules", str(PACK), f"{model}:{line}"]) == 0
    out = capsys.readouterr().out
    assert f"{model}:{line} in NoResidualRead.forward" in out
    assert "near miss adopter:dropout_layernorm" in out and "does not fit" in out
    line = line_of(MODEL, "return self.norm(self.drop(x) + res)")
    assert main(["explain", "--rules", str(PACK), f"{model}:{line}"]) == 0
    assert "applied   adopter:dropout_layernorm" in capsys.readouterr().out
    line = line_of(MODEL, "return y + h")
    assert main(["explain", "--rules", str(PACK), f"{model}:{line}"]) == 0
    assert "skipped   adopter:conv_batchnorm" in capsys.readouterr().out
    line = len(MODEL.splitlines())  # OnlyDropout's `return self.drop(x)`
    assert main(["explain", "--rules", str(PACK), f"{model}:{line}"]) == 0
    assert "holds no rule's anchors" in capsys.readouterr().out


def test_explain_place_usage_errors(model, capsys):
    assert main(["explain", "--rules", str(PACK), f"{model}:9999"]) == 2
    assert "not 9999" in capsys.readouterr().err
    assert main(["explain", "--rules", str(PACK), f"{model}.missing:3"]) == 2
    assert "no such file" in capsys.readouterr().err
    # Codes still work.
    assert main(["explain", "ADR201"]) == 0
    assert "ADR201" in capsys.readouterr().out


def test_recording_is_off_by_default(model):
    """A normal match_file run records nothing; a recorder sees the failures."""
    from dslc.analysis import analyze_file
    from dslc.match.compiler import compile_pack
    from dslc.lang.loader import load_rules
    from dslc.match.matcher import match_file
    from dslc.rewrite.nearmiss import Recorder

    compiled = compile_pack(load_rules([str(PACK)]).packs[0])
    facts = analyze_file(str(model))
    plain = match_file(compiled, facts)
    rec = Recorder()
    recorded = match_file(compiled, facts, recorder=rec)
    assert [m.lines for m in plain] == [m.lines for m in recorded]
    assert any(e.fail is not None and not e.fail for _, e in rec.best.values())


# ---------------------------------------------------------------------------
# The benchmark's label sets and its near-miss counts (no corpus needed).


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("adopter_bench_nm", REPO / "benchmarks" / "adopter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_both_label_sets_ship():
    from dslc import corpus

    paper = corpus.ground_truth()
    adj = corpus.ground_truth(labels="adjudicated")
    assert sum(paper.values()) == 474 and sum(adj.values()) == 497
    assert set(paper) == set(adj)
    # Two softmax places over another dimension than the last are removed.
    assert sum(max(paper[k] - adj[k], 0) for k in paper) == 2
    assert sum(max(adj[k] - paper[k], 0) for k in paper) == 25


def test_score_counts_near_misses_per_rule():
    from dslc.apply.driver import MatchEntry
    from dslc.rewrite.nearmiss import NearMiss

    bench = _bench()
    records = [{
        "model": "m1",
        "matches": (MatchEntry("adopter:softmax", "m1.py", "A", (3,), "applied"),
                    MatchEntry("adopter:softmax", "m1.py", "A", (9,), "skipped", "why")),
        "near_misses": [NearMiss("adopter:softmax", "A", "forward", 5, "dim == -1 ..."),
                        NearMiss("adopter:conv_batchnorm", "B", "forward", 7, "affine ...")],
    }]
    truth = {("m1", "rule_4"): 2, ("m1", "rule_7"): 1}
    res = bench.score(records, truth, ["m1"])
    assert res["rules"]["rule_4"]["near_misses"] == 1 and res["rules"]["rule_7"]["near_misses"] == 1
    assert res["total"]["near_misses"] == 2 and res["total"]["tp"] == 1 and res["total"]["fn"] == 2
    [miss4, miss7] = res["misses"]
    assert miss4["near_misses"] == [{"class": "A", "line": 5, "reason": "dim == -1 ..."}]
    assert miss7["near_misses"][0]["class"] == "B"


def test_a_failing_near_miss_report_keeps_the_rewrites(model, monkeypatch):
    from dslc.apply import driver as apply

    def boom(*args, **kwargs):
        raise RuntimeError("planted")

    monkeypatch.setattr(apply, "near_misses", boom)
    code, report = apply_json(model, "--near-misses")
    assert code == 0 and report["errors"] == []
    assert any(m["status"] == "applied" for m in report["matches"])
    assert any(w["code"] == "W199" and "planted" in w["message"] for w in report["warnings"])


CODES_PACK = '''\
pack t "near-miss codes"

rule drop_half "Dropout(0.5) only" {
  kernel torch.nn.Identity
  exact
  init {
    torch.nn.Dropout($p) -> $drop;
  } => {
    torch.nn.Identity() -> $drop;
  }
  forward {
    $drop($x) -> $y;
  } => {
    $drop($x) -> $y;
  }
  where $p == 0.5
}

rule after_any "softmax of a computed value" {
  kernel torch.softmax
  exact
  forward {
    * -> $a;
    torch.nn.functional.softmax($a, dim=-1) -> $y;
  } => {
    torch.softmax($a, -1) -> $y;
  }
}
'''

CODES_MODEL = '''\
import torch.nn.functional as F
from torch import nn


class Tenth(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(x)


def first(x):
    return F.softmax(x, dim=-1)
'''


def test_codes_of_near_misses(model, tmp_path, capsys):
    from dslc import codes

    _, report = apply_json(model, "--near-misses")
    got = {(n["class"], n["code"]) for n in report["near_misses"] if n["kind"] == "unmatched"}
    assert {("NoResidualRead", "N101"), ("Rebound", "N102"), ("UnpackedKwargs", "N201"),
            ("NotAffine", "N201"), ("OtherKey", "N201"), ("NeverCalled", "N401"), (None, "N101")} <= got
    assert all(n["code"].startswith("S") for n in report["near_misses"] if n["kind"] == "skipped")  # the skip reason's code
    # A dropout whose result is never added (N103).
    plain = tmp_path / "plain.py"
    plain.write_text(MODEL.split("class NoResidualRead")[0] + '''
class NoAdd(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(h)

    def forward(self, x):
        return self.norm(self.drop(x))
''')
    _, report = apply_json(plain, "--near-misses")
    [n] = [n for n in report["near_misses"] if n["class"] == "NoAdd"]
    assert n["code"] == "N103" and "no later node fits `$y + $res -> $z`" in n["reason"]
    # A refuted `where` (N301) and a leading wildcard with nothing before the anchor (N402).
    pack = tmp_path / "t.adr"
    pack.write_text(CODES_PACK)
    src = tmp_path / "m.py"
    src.write_text(CODES_MODEL)
    assert main(["apply", "--rules", str(pack), "--no-cache", "--jobs", "1", "--near-misses", str(src)]) == 0
    err = capsys.readouterr().err
    assert "near-miss[t:drop_half] in Tenth: " in err and "where $p == 0.5: $p is 0.1 [N301]" in err
    assert "near-miss[t:after_any]: the rule's anchor `softmax(...)` (line 15) is here, " \
           "but no node before it fits `* -> $a` [N402]" in err
    for code in ("N101", "N102", "N103", "N201", "N301", "N401", "N402", "W199"):
        assert codes.lookup(code) is not None
    assert main(["explain", "N102"]) == 0 and "written again" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# A second place in a class where the rule applied at another one.

TWO_PLACES = '''\
import torch
from torch import nn


class TwoPlaces(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3)
        self.bn2 = nn.BatchNorm2d(c, affine=False)
        self.conv3 = nn.Conv2d(c, c, 3)
        self.bn3 = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, c, 1)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.bn2(self.conv2(x))
        h = self.conv3(x)
        y = self.bn3(h)
        return self.head(y + h)
'''


def test_a_second_place_in_a_class_where_the_rule_applied(tmp_path, capsys):
    path = tmp_path / "two.py"
    path.write_text(TWO_PLACES)
    _, report = apply_json(path, "--near-misses")
    statuses = sorted((m["status"], line_of(TWO_PLACES, needle) in m["lines"])
                      for m, needle in zip(report["matches"], ("self.bn1(", "h = self.conv3")))
    assert statuses == [("applied", True), ("skipped", True)], report["matches"]
    # the pair the rule could not fuse is reported with its reason; the
    # applied pair is not, the skipped one has its own reason (kind skipped),
    # and a lone conv with no BatchNorm after it (`self.head`) is no place
    unmatched = [n for n in report["near_misses"] if n["kind"] == "unmatched"]
    assert len(unmatched) == 1, report["near_misses"]
    [miss] = unmatched
    assert miss["rule"] == "adopter:conv_batchnorm" and miss["class"] == "TwoPlaces"
    assert miss["line"] == line_of(TWO_PLACES, "self.bn2(self.conv2(x))")
    assert "self.bn2" in miss["reason"] and "affine == True" in miss["reason"] and "'False'" in miss["reason"]
    assert main(["explain", "--rules", str(PACK), f"{path}:{miss['line']}"]) == 0
    out = capsys.readouterr().out
    assert "near miss adopter:conv_batchnorm" in out and "affine == True" in out
