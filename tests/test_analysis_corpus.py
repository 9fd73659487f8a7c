"""Corpus-wide analysis, the cache, and the package's import hygiene."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dslc.analysis import analyze_paths
from dslc.analysis.model import FileFacts

ANALYSIS = Path(__file__).resolve().parent.parent / "analysis"


def test_analysis_never_imports_dslc():
    offenders = []
    for path in sorted(ANALYSIS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            offenders += [f"{path.name}:{node.lineno}: {n}" for n in names if n == "dslc" or n.startswith("dslc.")]
    assert offenders == []
    assert len(list(ANALYSIS.glob("*.py"))) >= 6


@pytest.mark.slow
def test_all_benchmark_files_analyze_without_exceptions(transformers_src, tmp_path):
    from dslc import corpus

    files = corpus.benchmark_files(transformers_src)
    assert len(files) == 199
    facts = analyze_paths(files, jobs=2, cache_dir=str(tmp_path / "cache"))
    assert all(isinstance(f, FileFacts) for f in facts)
    codes = {p.code for f in facts for p in f.problems}
    assert codes <= {"path-cap"}, codes  # capped functions are reported, nothing raised
    assert sum(len(f.classes) for f in facts) > 2500
    # the warm run reads the cache and gives the same facts
    again = analyze_paths(files, jobs=1, cache_dir=str(tmp_path / "cache"))
    assert again == facts


def _tree(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("from torch import nn\nclass Base(nn.Module):\n    pass\n")
    (pkg / "model.py").write_text(
        "from torch import nn\nfrom .base import Base\n"
        "class M(Base):\n    def __init__(self):\n        super().__init__()\n        self.l = nn.Linear(2, 2)\n")
    return pkg


def test_cache_hits_and_invalidation_through_resolved_files(tmp_path):
    pkg = _tree(tmp_path)
    cache = str(tmp_path / "cache")
    first = analyze_paths([pkg / "model.py"], cache_dir=cache)
    assert [c.name for c in first[0].classes] == ["M"]
    entries = list((tmp_path / "cache").rglob("*.pickle"))
    assert len(entries) == 1
    assert analyze_paths([pkg / "model.py"], cache_dir=cache) == first
    # the base moves out of torch.nn.Module: the cached entry depended on base.py
    (pkg / "base.py").write_text("class Base:\n    pass\n")
    after = analyze_paths([pkg / "model.py"], cache_dir=cache)
    assert after[0].classes == ()
    # a corrupt entry is a miss, not an error
    for entry in (tmp_path / "cache").rglob("*.pickle"):
        entry.write_bytes(b"garbage")
    assert analyze_paths([pkg / "model.py"], cache_dir=cache) == after


def test_parallel_equals_serial(tmp_path):
    pkg = _tree(tmp_path)
    files = [pkg / "model.py", pkg / "base.py", pkg / "__init__.py"]
    assert analyze_paths(files, jobs=2) == analyze_paths(files, jobs=1)


def test_unreadable_paths_are_problems(tmp_path):
    (facts,) = analyze_paths([tmp_path / "missing.py"])
    assert facts.problems[0].code == "io-error"
