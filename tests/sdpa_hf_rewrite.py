"""The installed transformers 4.35 modeling files rewritten by rulepacks/sdpa.adr
and loaded beside the originals, for the slow real-model tests
(test_sdpa_gpt2/gptneo/t5/bark/bart_hf)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUFFIX = "_dslc_sdpa_test"


def rewrite(path: Path) -> tuple[str, list]:
    """`path` rewritten by sdpa.adr (its own text when nothing applies), and the matches."""
    from dslc.apply.driver import ApplyOptions, apply_paths
    from dslc.lang.loader import load_rules

    loaded = load_rules([str(REPO / "rulepacks" / "sdpa.adr")])
    report = apply_paths([str(path)], loaded.packs, ApplyOptions(mode="diff", jobs=1, gitignore=False))
    res = report.files[0]
    return (res.new_source if res.changed else res.original), res.matches


def load_rewritten(module: str):
    """(original module, rewritten module, its source, the matches); the
    rewritten one is registered as `module + SUFFIX` (pop it when done).
    Skips unless the installed transformers is 4.35."""
    import transformers

    if not transformers.__version__.startswith("4.35."):
        pytest.skip(f"written for transformers 4.35 (installed: {transformers.__version__})")
    original = importlib.import_module(module)
    path = Path(original.__file__)
    source, matches = rewrite(path)
    name = module + SUFFIX
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = str(path)
    mod.__package__ = module.rsplit(".", 1)[0]
    sys.modules[name] = mod
    exec(compile(source, str(path), "exec"), mod.__dict__)
    return original, mod, source, matches
