"""Analysis speed on the 199 benchmark files (transformers 4.35.0).

Measures, in one run on the same machine:

1. the baseline: `ast.parse` of every file (read included);
2. cold: `dslc.analysis.analyze_paths` with an empty cache directory;
3. warm: the same call again, reading the cache;

and prints the times and their ratios to the baseline (the machine may be
shared, so the ratio is the figure to compare across runs).  With `--rules`
the compiled pack's anchor names are the cheap pre-filter (`want=`), as
`dslc apply` does.

    python benchmarks/analysis_speed.py [--jobs 2] [--rules rulepacks/adopter.adr] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="analysis worker processes (default 2)")
    parser.add_argument("--rules", help="an .adr pack whose anchor names pre-filter the files (want=)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from dslc import corpus
    from dslc.analysis import analyze_paths

    try:
        files = [str(f) for f in corpus.benchmark_files()]
    except RuntimeError as exc:
        print(f"analysis_speed: {exc}", file=sys.stderr)
        return 2
    want = None
    if args.rules:
        from dslc.match.compiler import compile_pack
        from dslc.lang.loader import load_rules

        loaded = load_rules([args.rules])
        if not loaded.packs:
            print(f"analysis_speed: no pack loaded from {args.rules}", file=sys.stderr)
            return 2
        names: set[str] = set()
        for pack in loaded.packs:
            names |= set(compile_pack(pack).anchor_names())
        want = frozenset(names)

    start = time.perf_counter()
    for path in files:
        with open(path, "rb") as fh:
            ast.parse(fh.read(), filename=path)
    baseline = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="dslc-analysis-cache-") as cache:
        start = time.perf_counter()
        cold_facts = analyze_paths(files, jobs=args.jobs, cache_dir=cache, want=want)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        warm_facts = analyze_paths(files, jobs=args.jobs, cache_dir=cache, want=want)
        warm = time.perf_counter() - start
    assert warm_facts == cold_facts, "the warm run must give the cold run's facts"

    classes = sum(len(f.classes) for f in cold_facts)
    paths = sum(len(c.paths) for f in cold_facts for c in f.classes)
    capped = sum(1 for f in cold_facts for p in f.problems if p.code == "path-cap")
    result = {
        "files": len(files), "jobs": args.jobs, "cpus": os.cpu_count(), "want": sorted(want) if want else None,
        "ast_parse_s": round(baseline, 2), "cold_s": round(cold, 2), "warm_s": round(warm, 2),
        "cold_ratio": round(cold / baseline, 1), "warm_ratio": round(warm / baseline, 2),
        "classes": classes, "paths": paths, "capped_functions": capped,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(files)} files, {classes} module classes, {paths} forward paths, "
              f"{capped} functions capped at 256 paths; jobs={args.jobs} on {os.cpu_count()} CPUs"
              + (f"; want={len(want)} names" if want else ""))
        print(f"  ast.parse baseline  {baseline:6.2f} s")
        print(f"  cold (empty cache)  {cold:6.2f} s   {cold / baseline:5.1f} x ast.parse")
        print(f"  warm (cache hits)   {warm:6.2f} s   {warm / baseline:5.2f} x ast.parse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
