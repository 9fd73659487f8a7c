"""`dslc apply --near-misses` with a generated pack (sdpa.adr: 729 spellings of
one rewrite): one line per place and reason, not one per rule variant.

* a place a rule of the family holds (applied or skipped) is no near miss of
  its siblings;
* per line, only the family's deepest attempts are kept;
* near misses of one place with the same reason are one entry (text:
  `near-miss[rule +N more rules]`; JSON: `rules` lists them all).
"""

from __future__ import annotations

import io
import json
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
SDPA = REPO / "rulepacks" / "sdpa.adr"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sdpa_models  # noqa: E402


# A chain cut by an opaque statement that writes the scores again (`clamp` is
# no node): every spelling fails there or earlier.
CLAMPED = '''\
    def forward(self, x):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores / math.sqrt(self.head_dim)
        scores = scores.clamp(-50.0, 50.0)
        probs = nn.functional.softmax(scores, dim=-1)
        probs = self.drop(probs)
        out = torch.matmul(probs, v)
        return out.transpose(1, 2).flatten(2)
'''


def _source() -> str:
    classes = dict((name, body) for name, (body, *_) in sdpa_models.CLASSES.items())
    classes["Clamped"] = CLAMPED
    return sdpa_models.HEAD + "".join(f"\n\nclass {name}(_Base):\n{body}" for name, body in classes.items())


def _line(text: str, cls: str, needle: str) -> int:
    start = text.splitlines().index(f"class {cls}(_Base):")
    for i, line in enumerate(text.splitlines()[start:], start + 1):
        if needle in line:
            return i
    raise AssertionError(needle)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The model's text, and (stdout, stderr) of `dslc apply --near-misses` per format."""
    path = tmp_path_factory.mktemp("nm") / "models.py"
    path.write_text(_source())
    out = {}
    for fmt in ("text", "json"):
        so, se = io.StringIO(), io.StringIO()
        with redirect_stdout(so), redirect_stderr(se):
            code = main(["apply", "--rules", str(SDPA), "--no-cache", "--jobs", "1", "--near-misses",
                         "--format", fmt, str(path)])
        assert code == 0
        out[fmt] = (so.getvalue(), se.getvalue())
    return path.read_text(), out


def test_one_line_per_place_and_reason(runs):
    text, out = runs
    lines = [ln for ln in out["text"][1].splitlines() if "near-miss[" in ln]
    keys = [re.sub(r"near-miss\[[^\]]*\]", "", ln) for ln in lines]
    assert len(keys) == len(set(keys)), "two lines for one place and reason"
    assert len(lines) < 60  # 2098 lines, one per rule variant, before
    assert any(re.search(r"\+\d+ more rules\]", ln) for ln in lines)


def test_a_place_the_family_rewrote_is_no_near_miss(runs):
    text, out = runs
    first = _line(text, "MatmulDivAddDrop", "scores = torch.matmul")
    last = _line(text, "MatmulDivAddDrop", "out = torch.matmul")
    held = [ln for ln in out["text"][1].splitlines()
            if "near-miss[" in ln and "in MatmulDivAddDrop" in ln]
    assert not held, held  # its chain (lines first..last) was rewritten; the head merge is no near miss
    assert first < last


def test_only_the_deepest_attempts_at_a_place(runs):
    text, out = runs
    start = _line(text, "Clamped", "scores = torch.matmul")
    at = [ln for ln in out["text"][1].splitlines() if f":{start}: near-miss[" in ln]
    assert at and all(ln.endswith("[N102]") for ln in at), at  # the clamp rewrites the scores: the furthest step
    assert all("writes `scores` again" in ln for ln in at)
    # shallower attempts of other spellings (`@`, einsum, a transpose(-2, -1)) are not shown
    assert not any("does not fit" in ln for ln in at)


def test_json_groups_keep_every_field_and_list_the_rules(runs):
    _, out = runs
    report = json.loads(out["json"][0])
    near = report["near_misses"]
    for n in near:
        assert {"rule", "file", "class", "line", "reason", "function", "kind", "code", "rules"} <= set(n)
        assert n["rules"][0] == n["rule"]
    assert any(len(n["rules"]) > 1 for n in near)
    counted = sum(c.get("near_misses", 0) for c in report["summary"].values())
    assert counted == sum(len(n["rules"]) for n in near if n["kind"] == "unmatched")
