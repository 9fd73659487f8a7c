"""Every rule pack's equivalence on CUDA (`pytest -m cuda tests/gpu`).

For each pack in rulepacks/ and each model (the examples, and transformers
4.35.0 files where a rule of the pack applies), run `dslc apply` and then
`dslc verify --device cuda` on the rewrite.  The REAL kernels are used here
(no reference kernels on sys.path): a class whose kernel is not installed is
reported skipped with the pack's install hint, and the test skips with those
reasons.  Without a GPU the whole module skips.

DSLC_VERIFY_SUITE_DEVICE=cpu runs the same harness on the CPU (to check the
harness itself on a machine without a GPU; kernels that need CUDA then fail).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
from verify_factories import EXAMPLE_FACTORY

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[2]
PACKS = sorted((REPO / "rulepacks").glob("*.adr"))
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
# Models of the benchmark that the ADOPTER rules touch (rule -> model).
CORPUS_MODELS = ("bert", "roberta", "resnet", "dpt", "gpt2", "t5", "gptj")
DEVICE = os.environ.get("DSLC_VERIFY_SUITE_DEVICE", "cuda")


def _why_not() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        return "no GPU: torch.cuda.is_available() is False"
    for module in ("dslc.lang.loader", "dslc.apply.driver", "dslc.verify.equivalence"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not built"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_cuda():
    why = _why_not()
    if why:
        pytest.skip(why)


def _targets() -> list[tuple[str, Path]]:
    out = [("example", p) for p in EXAMPLES]
    try:
        from dslc import corpus

        root = corpus.transformers_root(download=False)
    except Exception:  # noqa: BLE001 - the corpus is optional here
        return out
    for m in CORPUS_MODELS:
        path = root / "models" / m / f"modeling_{m}.py"
        if path.exists():
            out.append(("corpus", path))
    return out


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("kind, target", _targets(), ids=lambda v: getattr(v, "stem", v))
def test_pack_rewrite_is_equivalent_on_cuda(pack, kind, target, tmp_path):
    from dslc.verify import equivalence as verify
    from dslc.cli import main

    if kind == "corpus" and importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not importable (pip install transformers==4.35.0)")
    work = tmp_path / target.name
    shutil.copyfile(target, work)
    code = main(["apply", "--rules", str(pack), "--no-cache", "--jobs", "1", "--write", "-q", str(work)])
    assert code in (0, 1)
    before, after = target.read_text(encoding="utf-8"), work.read_text(encoding="utf-8")
    if before == after:
        pytest.skip(f"no rule of {pack.name} applies to {target.name}")
    factory = None
    if kind == "example":
        (tmp_path / "factory.py").write_text(EXAMPLE_FACTORY)
        factory = f"{tmp_path / 'factory.py'}:make"
    report = verify.verify_sources(before, after, path=str(target), rules=[str(pack)],
                                   device=DEVICE, factory=factory)
    text = verify.render(report)
    print(text)
    assert report.device == DEVICE
    assert report.ok, text
    compared = [r for r in report.results if r.status == "pass"]
    assert all(not r.reference_kernels for r in compared), "reference kernels leaked into the CUDA suite"
    if not compared:
        reasons = sorted({r.reason for r in report.results}) or ["nothing to compare"]
        pytest.skip("; ".join(reasons))


def test_reference_kernels_are_not_on_the_path():
    for name in ("epoi", "slapo", "xformers"):
        mod = sys.modules.get(name)
        assert mod is None or not getattr(mod, "DSLC_REFERENCE_KERNEL", False)
