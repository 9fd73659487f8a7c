"""The caches cannot lie (issue 13): every way of corrupting an entry is a miss.

A small package with two models that get different rewrites (and a third
whose class is a module only through a base class in another file) is
applied once without a cache (the reference), once to fill the caches
(analysis facts and per-file results), and then again after corrupting the
entries: swapped between the files' keys (this once made dslc write one
file's rewrite into another), truncated, with random byte flips, replaced by
garbage, and sealed with a valid checksum around a wrong payload.  Every
run must give exactly the reference report, never raise, log the bad
entries once, and leave good entries behind.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest

from dslc.apply import driver as apply
from dslc.analysis import cachefile
from dslc.cli import main
from rewrite_support import load_packs, self_output

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"

BASE = '''from torch import nn


class Base(nn.Module):
    pass
'''

OUTPUT = self_output(imports="from torch import nn\n")  # the paper's BertSelfOutput

ATTN = '''import torch
from torch import nn


class Scores(nn.Module):
    def forward(self, q, k):
        scores = torch.matmul(q, k.transpose(-1, -2))
        probs = nn.functional.softmax(scores, dim=-1)
        return probs
'''

CHILD = '''from torch import nn

from .base import Base


class Child(Base):
    def __init__(self, config):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, res):
        y = self.dropout(x)
        return self.LayerNorm(y + res)
'''


@pytest.fixture(scope="module")
def packs():
    return load_packs(str(PACK))


@pytest.fixture
def tree(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(BASE)
    (pkg / "output.py").write_text(OUTPUT)
    (pkg / "attn.py").write_text(ATTN)
    (pkg / "child.py").write_text(CHILD)
    return pkg


def _run(pkg, packs, cache):
    opts = apply.ApplyOptions(jobs=1, cache_dir=None if cache is None else str(cache))
    report = apply.apply_paths([str(pkg)], packs, opts)
    return [(f.found.display, f.matches, f.errors, f.warnings, f.new_source) for f in report.files]


def _fill(pkg, packs, cache):
    """Fill both caches: a cold run keeps only a marker per analysis entry
    (the result cache holds the outcome); the second analysis of the same
    key, after the results are gone, writes the facts."""
    _run(pkg, packs, cache)
    shutil.rmtree(cache / "results")
    return _run(pkg, packs, cache)


def _tags(cache: Path) -> list[str]:
    """The kind of every analysis entry (`facts` or the marker `seen`)."""
    from dslc.analysis import api

    out = []
    for p in _entries(cache):
        if "results" not in p.parts:
            out.append(cachefile.loads(cachefile.read(str(p)), api._ALLOWED, api._analysis_dataclass)[0])
    return out


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and not p.name.startswith("."))


def _flip(data: bytes, rng: random.Random, n: int = 3) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _corruptions():
    rng = random.Random(13)
    return {
        "truncated": lambda data, other: data[: len(data) // 2],
        "truncated-to-header": lambda data, other: data[:20],
        "empty": lambda data, other: b"",
        "byte-flips": lambda data, other: _flip(data, rng),
        "garbage": lambda data, other: bytes(rng.randrange(256) for _ in range(len(data))),
        "sealed-garbage": lambda data, other: cachefile.seal(b"\x80\x05garbage"),
        "sealed-wrong-pickle": lambda data, other: cachefile.seal(pickle.dumps({"facts": [1, 2, 3]})),
        "sealed-evil-pickle": lambda data, other: cachefile.seal(pickle.dumps(("facts", _Evil()))),
        "sealed-deep-json": lambda data, other: cachefile.seal(b"[" * 100000 + b"]" * 100000),
        "swapped": lambda data, other: other,
    }


def test_good_entries_are_never_refused(tmp_path):
    """Constants of every kind (Ellipsis, complex, the not-a-constant marker)
    survive the restricted unpickler: a warm run reads every entry."""
    from dslc.analysis import analyze_paths

    f = tmp_path / "m.py"
    f.write_text("import torch\nfrom torch import nn\n\n\nclass M(nn.Module):\n"
                 "    def __init__(self, n):\n        super().__init__()\n"
                 "        self.a = nn.Linear(n, 2 + 1j, bias=...)\n        self.b = nn.Dropout(p=n.x)\n\n"
                 "    def forward(self, x):\n        return self.b(self.a(x[..., 0]))\n")
    cache = str(tmp_path / "cache")
    first = analyze_paths([f], cache_dir=cache)
    before = cachefile.BAD_ENTRIES[0]
    assert analyze_paths([f], cache_dir=cache) == first
    assert cachefile.BAD_ENTRIES[0] == before


def test_the_result_cache_makes_warm_runs_hit(tree, packs, tmp_path, monkeypatch):
    from dslc.analysis import api

    cache = tmp_path / "cache"
    ref = _run(tree, packs, None)
    assert _run(tree, packs, cache) == ref
    assert list((cache / "results").rglob("*.json")), "results were not cached"
    # the cold run kept markers, not facts: the result cache holds the outcome
    assert _tags(cache) and set(_tags(cache)) == {"seen"}
    analysed = []
    real_analyze = api.analyze_file
    monkeypatch.setattr(api, "analyze_file", lambda *a, **k: analysed.append(a[0]) or real_analyze(*a, **k))
    before = cachefile.BAD_ENTRIES[0]
    shutil.rmtree(cache / "results")
    assert _run(tree, packs, cache) == ref  # analysed again: now the facts are kept
    assert analysed and set(_tags(cache)) == {"facts"}
    analysed.clear()
    shutil.rmtree(cache / "results")
    assert _run(tree, packs, cache) == ref  # from the analysis cache
    assert analysed == [], "the analysis cache missed"
    assert cachefile.BAD_ENTRIES[0] == before, "a good analysis entry or marker was refused"

    calls = []
    real = apply.process_file
    try:
        apply.process_file = lambda *a, **k: calls.append(a) or real(*a, **k)
        assert _run(tree, packs, cache) == ref
    finally:
        apply.process_file = real
    assert calls == [], "a warm run re-processed unchanged files"


def test_without_the_result_cache_the_facts_are_written_at_once(tree, tmp_path):
    from dslc.analysis import analyze_paths

    cache = tmp_path / "cache"
    files = sorted(str(p) for p in tree.glob("*.py"))
    first = analyze_paths(files, cache_dir=str(cache))
    assert set(_tags(cache)) == {"facts"}
    assert analyze_paths(files, cache_dir=str(cache), lazy=True) == first  # hits, nothing rewritten
    assert set(_tags(cache)) == {"facts"}


@pytest.mark.parametrize("how", list(_corruptions()))
@pytest.mark.parametrize("which", ["results", "facts", "both", "markers"])
def test_corrupt_entries_are_misses_and_the_output_equals_a_no_cache_run(tree, packs, tmp_path, how, which, caplog):
    cache = tmp_path / "cache"
    ref = _run(tree, packs, None)
    assert any(new for *_, new in ref), "the fixture must produce rewrites"
    if which == "markers":  # a cold run's analysis entries
        _run(tree, packs, cache)
        assert set(_tags(cache)) == {"seen"}
    else:
        _fill(tree, packs, cache)
        assert set(_tags(cache)) == {"facts"}
    entries = _entries(cache)
    chosen = [p for p in entries if which == "both" or ("results" in p.parts) == (which == "results")]
    assert len(chosen) >= 2
    originals = {p: p.read_bytes() for p in chosen}
    corrupt = _corruptions()[how]
    for k, p in enumerate(chosen):
        # `swapped`: each entry gets the bytes of another file's entry of the same cache
        peers = [q for q in chosen if q.parent.parent == p.parent.parent and q != p] or [p]
        p.write_bytes(corrupt(originals[p], originals[peers[k % len(peers)]]))
    if which in ("facts", "markers"):  # the results would hit first: make the run read the facts
        shutil.rmtree(cache / "results")
    before = cachefile.BAD_ENTRIES[0]
    with caplog.at_level(logging.WARNING, logger="dslc.cache"):
        assert _run(tree, packs, cache) == ref
    assert cachefile.BAD_ENTRIES[0] > before
    # logged once per cache folder (facts, results), not once per entry
    logged = [r for r in caplog.records if r.name == "dslc.cache"]
    assert 1 <= len(logged) <= 2 < len(chosen) + 1
    # the bad entries were overwritten: the next run finds them good
    before = cachefile.BAD_ENTRIES[0]
    assert _run(tree, packs, cache) == ref
    assert cachefile.BAD_ENTRIES[0] == before


def test_a_swapped_entry_never_writes_another_files_rewrite(tree, packs, tmp_path, capsys):
    """The issue-13 case end to end: `--write` after swapping every entry."""
    cache = tmp_path / "cache"
    clean = tmp_path / "clean"
    shutil.copytree(tree, clean)
    assert main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "--write", str(clean)]) in (0, 1)
    _fill(tree, packs, cache)
    for sub in ("results", None):
        entries = [p for p in _entries(cache) if ("results" in p.parts) == (sub == "results")]
        data = [p.read_bytes() for p in entries]
        for p, d in zip(entries, data[1:] + data[:1]):
            p.write_bytes(d)
    code = main(["apply", "--rules", str(PACK), "--cache-dir", str(cache), "--jobs", "1", "--write", str(tree)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and code in (0, 1)
    for name in ("output.py", "attn.py", "child.py", "base.py"):
        assert (tree / name).read_text() == (clean / name).read_text(), name


def test_a_result_that_depends_on_another_file_is_recomputed_when_it_changes(tree, packs, tmp_path):
    cache = tmp_path / "cache"
    first = _run(tree, packs, cache)
    child = [f for f in first if f[0].endswith("child.py")][0]
    assert child[4] is not None, "Child is a module through Base: it is rewritten"
    (tree / "base.py").write_text("class Base:\n    pass\n")
    after = _run(tree, packs, cache)
    assert after == _run(tree, packs, None)
    assert [f for f in after if f[0].endswith("child.py")][0][4] is None


def test_unreadable_cache_folder_is_only_slower(tree, packs, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    assert _run(tree, packs, cache) == _run(tree, packs, None)
