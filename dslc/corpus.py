"""The ADOPTER benchmark corpus: transformers 4.35.0 modeling files.

Used by the benchmarks and the slow tests, never by the tool itself.  The
sources come from the release wheel, fetched once with `pip download` (no
install) into a cache directory and unpacked there:

    DSLC_CORPUS_DIR   where to keep it (default: ~/.cache/dslc/corpus)
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

TRANSFORMERS_VERSION = "4.35.0"
# Models of 4.35.0 that are not in the benchmark (the benchmark labels in dslc/data/ leave them out).
NOT_IN_BENCHMARK = ("fuyu", "kosmos2", "seamless_m4t")
_DATA = Path(__file__).resolve().parent / "data"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "dslc" / "corpus"
    return Path(os.environ.get("DSLC_CORPUS_DIR", default))


def transformers_root(download: bool = True) -> Path:
    """Return the unpacked `transformers/` package directory of 4.35.0.

    Downloads the wheel with pip (no dependencies, nothing installed) when it
    is not cached yet; raises RuntimeError when that is impossible.
    """
    base = cache_dir() / f"transformers-{TRANSFORMERS_VERSION}"
    root = base / "transformers"
    marker = base / ".complete"
    if marker.exists():
        return root
    if not download:
        raise RuntimeError(f"transformers {TRANSFORMERS_VERSION} sources not cached in {base}")
    base.mkdir(parents=True, exist_ok=True)
    wheel = next(base.glob("transformers-*.whl"), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
               f"transformers=={TRANSFORMERS_VERSION}", "-d", str(base)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(base.glob("transformers-*.whl"), None)
        if proc.returncode != 0 or wheel is None:
            raise RuntimeError(f"could not download transformers {TRANSFORMERS_VERSION}: {proc.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith("transformers/")]
        zf.extractall(base, members)
    marker.write_text("ok\n")
    return root


# The label sets the benchmark scores against: the paper's own table (474
# locations, drawn from what its tool reported) and the adjudicated one (497
# locations: places the rules cover that the paper's labels left out added,
# two softmax calls over another dimension than the last removed; README.md,
# "The ADOPTER benchmark").
LABELS = {
    "paper": "adopter-groundtruth-long.tsv",
    "adjudicated": "adopter-groundtruth-adjudicated.tsv",
}


def ground_truth(path: Path | None = None, *, labels: str = "paper") -> dict[tuple[str, str], int]:
    """(model, rule_N) -> count, from a long TSV (`model rule count` rows):
    `labels` names one of `LABELS` (the paper's 474 locations by default)."""
    path = path or _DATA / LABELS[labels]
    with open(path, newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t")
        return {(r["model"], r["rule"]): int(r["count"]) for r in rows}


def benchmark_models() -> list[str]:
    return sorted({model for model, _ in ground_truth()})


def benchmark_files(root: Path | None = None) -> list[Path]:
    """The 199 `modeling_<model>.py` files of the benchmark, sorted by model."""
    root = root or transformers_root()
    out = []
    for model in benchmark_models():
        f = root / "models" / model / f"modeling_{model}.py"
        if f.exists():
            out.append(f)
    return out


# The benchmark's rule numbers and the pack's rule names (docs/adopter-rules.md).
RULE_NAMES = {
    "rule_1": "bert_self_attention",
    "rule_2": "t5_attention",
    "rule_3": "gpt2_attention",
    "rule_4": "softmax",
    "rule_5": "dropout_layernorm",
    "rule_6": "biased_gelu",
    "rule_7": "conv_batchnorm",
    "rule_8": "linear_batchnorm",
    "rule_9": "fused_qkv",
}
