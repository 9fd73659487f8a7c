"""The sdpa pack's rewrites of transformers 4.35.0 attention classes that
`dslc verify`'s tiny configs cannot reach (constructors that take sizes, not
a config; whole models that need an image backbone or time-series
features), checked numerically with the real classes and the real
`torch.nn.functional.scaled_dot_product_attention` on the CPU: each file is
rewritten by `rulepacks/sdpa.adr` as `dslc apply` does, then each class is
verified with a factory of tests/sdpa_hf_factories.py (fp32 eval at three
input scales and, under the pack's bf16 contract, bf16; outputs, input
gradients and parameter gradients).

Needs transformers 4.35.0 importable (the factories follow its signatures).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import pytest

from test_verify_support import has_transformers

pytest.importorskip("torch")


def _is_4_35() -> bool:
    if not has_transformers():
        return False
    import transformers
    return transformers.__version__ == "4.35.0"


pytestmark = pytest.mark.skipif(not _is_4_35(), reason="needs transformers==4.35.0 importable")

REPO = Path(__file__).resolve().parent.parent
SDPA = REPO / "rulepacks" / "sdpa.adr"
FACTORIES = Path(__file__).resolve().parent / "sdpa_hf_factories.py"

# (model folder, class, factory): every class here is rewritten by sdpa.adr
# and is skipped by verify without a factory.
CASES = [
    ("detr", "DetrAttention", "detr_self"),
    ("detr", "DetrAttention", "detr_cross"),
    ("conditional_detr", "DetrAttention", "detr_self"),
    ("conditional_detr", "DetrAttention", "detr_cross"),
    ("conditional_detr", "ConditionalDetrAttention", "conditional"),
    ("conditional_detr", "ConditionalDetrAttention", "conditional_self"),
    ("table_transformer", "TableTransformerAttention", "detr_self"),
    ("table_transformer", "TableTransformerAttention", "detr_cross"),
    ("maskformer", "DetrAttention", "detr_self"),
    ("maskformer", "DetrAttention", "detr_cross"),
    ("x_clip", "XCLIPCrossAttention", "xclip_cross"),
    ("time_series_transformer", "TimeSeriesTransformerAttention", "bart_self"),
    ("time_series_transformer", "TimeSeriesTransformerAttention", "bart_causal"),
    ("time_series_transformer", "TimeSeriesTransformerAttention", "bart_cross"),
    ("gptsan_japanese", "GPTSanJapaneseAttention", "bart_self"),
    ("gptsan_japanese", "GPTSanJapaneseAttention", "bart_causal"),
    ("gptsan_japanese", "GPTSanJapaneseAttention", "bart_cross"),
]


@functools.lru_cache(maxsize=None)
def _packs():
    from dslc.lang.loader import load_rules
    loaded = load_rules([str(SDPA)], [])
    assert loaded.ok
    return tuple(loaded.packs)


@functools.lru_cache(maxsize=None)
def _rewritten(model: str):
    """(path, original, rewritten source, applied (rule, class) pairs) of the installed modeling file."""
    from dslc.apply import driver as apply
    mod = importlib.import_module(f"transformers.models.{model}.modeling_{model}")
    path = str(Path(mod.__file__))
    report = apply.apply_paths([path], _packs(), apply.ApplyOptions(mode="diff", jobs=1))
    (result,) = report.files
    pairs = tuple(dict.fromkeys((m.rule, m.class_name) for m in result.matches if m.status == "applied"))
    return path, result.original, result.new_source, pairs


@pytest.mark.parametrize("model,cls,factory", CASES, ids=[f"{m}-{c}-{f}" for m, c, f in CASES])
def test_rewritten_attention_is_equivalent(model, cls, factory):
    from dslc.verify import equivalence as verify
    path, original, new, pairs = _rewritten(model)
    assert any(c == cls for _, c in pairs), f"sdpa.adr no longer rewrites {cls} of {model}: {pairs}"
    report = verify.verify_sources(original, new, path=path, rules=_packs(), applied=pairs, classes=[cls],
                                   factory=f"{FACTORIES}:{factory}", device="cpu")
    assert report.error is None, report.error
    (res,) = report.results
    assert res.status == "pass", verify.render(report)
    assert res.modes == ("eval", "eval x0.01", "eval 2x+1", "eval bf16"), res.modes
    assert res.tolerance.rules and all(r.startswith("sdpa:") for r in res.tolerance.rules)


@pytest.mark.parametrize("model,cls,factory", [("conditional_detr", "ConditionalDetrAttention", "conditional"),
                                               ("x_clip", "XCLIPCrossAttention", "xclip_cross")])
def test_the_factory_check_fails_a_wrong_rewrite(model, cls, factory):
    """The same check on the rewrite with its queries halved inside the
    SDPA call (a scale off by 2) fails: the factories' inputs reach the
    kernel."""
    from dslc.verify import equivalence as verify
    path, original, new, pairs = _rewritten(model)
    wrong = new.replace("scaled_dot_product_attention(", "scaled_dot_product_attention(0.5 * ")
    assert wrong != new
    report = verify.verify_sources(original, wrong, path=path, rules=_packs(), applied=pairs, classes=[cls],
                                   factory=f"{FACTORIES}:{factory}", device="cpu")
    (res,) = report.results
    assert res.status == "fail" and res.mismatch.where.startswith("eval output"), verify.render(report)
