"""Equivalence of the benchmark's rewrites: apply, then `dslc verify`, per model.

    python benchmarks/verify_corpus.py [--select adopter:conv_batchnorm]... \
        [--models dpt,resnet] [--reference-kernels] [--factories FILE.py] [--json OUT]

Steps:
1. Load the pack (default rulepacks/adopter.adr, optionally `--select`ed
   rules) and the 199 benchmark files of transformers 4.35.0 (`dslc.corpus`).
2. For each file, run the apply driver in memory (nothing is written).  Files
   with no applied rewrite are not verified.
3. Verify the rewrite with `dslc.verify.equivalence.verify_sources` (tiny config, same
   weights, strict state_dict load, eval/train outputs and gradients within
   the rules' tolerance) and print one row per rewritten class: pass (max
   abs/rel error), fail (why) or skipped (why).

Needs torch and transformers==4.35.0 importable (the test extra installs
them).  Kernels that are not installed make their classes `skipped` with the
pack's install hint; `--reference-kernels` puts the clearly labelled
pure-PyTorch references of tests/kernel_refs/ on sys.path instead, which
checks the rewrite's wiring (arguments, data flow, checkpoint mapping), not
the real kernels.

`--factories FILE.py` (e.g. tests/sdpa_hf_factories.py): a class the tiny
configs skip is checked again with each factory that FILE's `BY_CLASS`
dict names for it (`dslc verify --factory FILE.py:FUNC`), one row per
factory (`via factory FUNC`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The checkout's dslc, not an installed one: sys.path[0] is benchmarks/ when
# this script runs, and an installed (or editable) dslc of another tree would
# otherwise be what gets measured.
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default=str(REPO / "rulepacks" / "adopter.adr"))
    ap.add_argument("--select", action="append", default=[], metavar="PACK:RULE")
    ap.add_argument("--models", help="comma-separated model folder names (default: all 199)")
    ap.add_argument("--reference-kernels", action="store_true",
                    help="use the pure-PyTorch reference kernels of tests/kernel_refs/")
    ap.add_argument("--factories", metavar="FILE.py",
                    help="check skipped classes with the factories FILE's BY_CLASS names for them")
    ap.add_argument("--json", metavar="OUT", help="save the rows as JSON")
    args = ap.parse_args(argv)

    if args.reference_kernels:
        sys.path.insert(0, str(REPO / "tests" / "kernel_refs"))
    from dslc.apply import driver as apply
    from dslc import corpus
    from dslc.lang.loader import load_rules
    from dslc.lang.diagnostics import render
    from dslc.verify.equivalence import verify_sources

    by_class: dict[str, tuple[str, ...]] = {}
    if args.factories:
        import runpy
        args.factories = str(Path(args.factories).resolve())
        by_class = runpy.run_path(args.factories).get("BY_CLASS", {})
    loaded = load_rules([args.rules], args.select)
    if not loaded.ok:
        print(render(loaded.diagnostics, "text", loaded.sources), file=sys.stderr)
        return 2
    files = corpus.benchmark_files()
    if args.models:
        wanted = set(args.models.split(","))
        files = [f for f in files if f.parent.name in wanted]
    # every rule, unsafe ones too: this benchmark measures which rewrites verify
    options = apply.ApplyOptions(mode="diff", jobs=1, unsafe=True)
    rows = []
    t0 = time.perf_counter()
    for f in files:
        report = apply.apply_paths([str(f)], loaded.packs, options)
        result = report.files[0] if report.files else None
        if result is None or not result.changed:
            continue
        applied = sorted({m.rule.split(":")[1] for m in result.matches if m.status == "applied"})
        # the rules that rewrote each class give its tolerance, as `apply --verify` passes them
        pairs = tuple(dict.fromkeys((m.rule, m.class_name) for m in result.matches if m.status == "applied"))
        verdict = verify_sources(result.original, result.new_source, path=str(f), rules=tuple(loaded.packs),
                                 applied=pairs)
        if verdict.error:
            rows.append({"model": f.parent.name, "class": "-", "rules": applied, "status": "fail",
                         "max_abs": None, "detail": verdict.error})
            continue
        results = []
        for r in verdict.results:
            if r.status == "skipped" and r.name in by_class:
                for func in by_class[r.name]:
                    again = verify_sources(result.original, result.new_source, path=str(f),
                                           rules=tuple(loaded.packs), applied=pairs, classes=[r.name],
                                           factory=f"{args.factories}:{func}")
                    results += [(x, f"factory {func}") for x in again.results]
            else:
                results.append((r, None))
        for r, factory in results:
            detail = r.reason or ""
            if factory and r.status != "pass":
                detail = f"{factory}: {detail}"
            if r.status == "pass":
                detail = f"via {r.via or factory}" if r.via or factory else ""
                if r.bf16_ref_ratio is not None:
                    detail += f"; bf16 error vs fp32 {r.bf16_ref_ratio:.2f} of bound"
                elif r.bf16_max_abs is not None:
                    detail += f"; bf16 max abs {r.bf16_max_abs:.3g}"
                if r.reference_kernels:
                    detail += f" [reference kernel: {', '.join(r.reference_kernels)}]"
            rows.append({"model": f.parent.name, "class": r.name, "rules": applied, "status": r.status,
                         "max_abs": r.max_abs if r.status != "skipped" else None, "detail": detail.strip("; "),
                         "via": r.via, "factory": factory, "bf16_max_abs": r.bf16_max_abs, "bf16_ref_ratio": r.bf16_ref_ratio})
    seconds = time.perf_counter() - t0

    print(f"{'model':<22} {'class':<42} {'status':<8} {'max abs':>9}  detail")
    for row in rows:
        err = "" if row["max_abs"] is None else f"{row['max_abs']:.2e}"
        print(f"{row['model']:<22} {row['class']:<42} {row['status']:<8} {err:>9}  {row['detail'][:140]}")
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("pass", "fail", "skipped")}
    classes = len({(r["model"], r["class"]) for r in rows})
    print(f"\n{len(rows)} checks of {classes} classes in {len({r['model'] for r in rows})} rewritten models: "
          f"{counts['pass']} pass, {counts['fail']} fail, {counts['skipped']} skipped ({seconds:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "counts": counts}, indent=1))
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
