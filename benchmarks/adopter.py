"""The ADOPTER benchmark (paper §4, Table 2): rulepacks/adopter.adr on 199 models.

    python benchmarks/adopter.py [--models bert,t5] [--cold] [--json OUT] [--show-misses]

Steps:
1. Get the corpus (`dslc.corpus`: transformers 4.35.0 sources, downloaded
   once) and the 199 labelled `modeling_<model>.py` files; the model of a file
   is its folder name.
2. Baseline: read + `ast.parse` of the same files, timed in this run (the
   machine is shared, so ratios mean more than seconds).
3. The full run, one file after another through the apply driver's own
   per-file path (`analyze_paths` with the pack's pre-filter and the cache,
   then `dslc.apply.driver.process_file`: match, safety, rewrite; nothing written),
   timing each file.  `--cold` starts from an empty cache directory.
4. Score as the paper does, against two label sets (`dslc.corpus.LABELS`):
   the paper's own table (474 locations) and the adjudicated one (497: the
   places the rules cover that the paper's labels left out, minus two
   softmax calls over another dimension than the last).  Per (model, rule)
   TP = min(found, truth), FN = truth - TP, FP = found - TP, summed per
   rule; found counts only `applied` matches.  Found-but-skipped matches are
   counted beside, grouped by their reason's code (`dslc explain CODE`), and so
   are the near misses
   (`dslc.rewrite.nearmiss`: places holding a rule's anchors where it did not match;
   computed after each file's timed run, so they do not count in its time).
5. Checks on every patched file: it parses, and a second apply on the
   patched text (analysis from scratch, no cache) changes nothing.
6. The ablation ADOPTER_p: the same run with the analysis at
   `inline=False, flatten=True` (no helper inlining, control flow flattened),
   scored beside the full run.
7. Print everything beside the paper's Table 2 / Table 3 figures; `--json OUT`
   saves the numbers.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from dslc.apply import driver as apply  # noqa: E402
from dslc import fileio
from dslc import corpus
from dslc.rewrite import nearmiss
from dslc import codes as dslc_codes  # noqa: E402

# Paper Table 2 (ADOPTER): rule -> (ground truth, TP, FN, FP).
PAPER = {
    "rule_1": (1, 1, 0, 0), "rule_2": (2, 2, 0, 0), "rule_3": (2, 2, 0, 0),
    "rule_4": (208, 197, 11, 0), "rule_5": (80, 80, 0, 0), "rule_6": (143, 136, 7, 0),
    "rule_7": (35, 31, 4, 0), "rule_8": (2, 2, 0, 0), "rule_9": (2, 2, 0, 0),
}
# Paper Table 3 (ADOPTER_p, the ablation): rule -> (TP, FN, FP).
PAPER_P = {
    "rule_1": (1, 0, 0), "rule_2": (2, 0, 0), "rule_3": (2, 0, 0), "rule_4": (197, 11, 1),
    "rule_5": (80, 0, 0), "rule_6": (25, 118, 0), "rule_7": (25, 10, 0), "rule_8": (2, 0, 0),
    "rule_9": (2, 0, 0),
}
NAME_TO_RULE = {name: rule for rule, name in corpus.RULE_NAMES.items()}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _fmt(x: float | None) -> str:
    return "    -" if x is None else f"{x:5.3f}"


# ---------------------------------------------------------------------------
# Running


def load_packs(rules: str):
    from dslc.lang.loader import load_rules
    from dslc.lang.diagnostics import render

    loaded = load_rules([rules], [])
    errors = [d for d in loaded.diagnostics if getattr(d, "severity", "error") == "error"]
    if errors:
        raise SystemExit(f"{rules} has errors:\n{render(errors, 'text', loaded.sources)}")
    return loaded.packs


_STATE: dict = {}


def _init(packs, cache_dir, inline, flatten, check, near=True) -> None:
    compiled = apply.compile_packs(packs)
    options = apply.ApplyOptions(mode="diff", cache_dir=cache_dir, inline=inline, flatten=flatten)
    _STATE.update(compiled=compiled, options=options, check=check, near=near, modules={},
                  kw=apply._analysis_kwargs(options, compiled.want, compiled.optional_ifs,
                                                compiled.class_rules))


def _near_misses(found, facts, compiled, source=None) -> list:
    """The file's unmatched places (`dslc.rewrite.nearmiss`), after the timed run."""
    if facts is None or apply._is_empty(facts):
        return []
    out = []
    for c in compiled.compiled:
        out += nearmiss.near_misses(c, facts, apply.match_file(c, facts), file=found.display, source=source)
    return out


def _one_file(path: Path) -> dict:
    """One file through the driver's per-file path, timed (analysis apart)."""
    compiled, options, kw = _STATE["compiled"], _STATE["options"], _STATE["kw"]
    found = fileio.Found(str(path), f"{path.parent.name}/{path.name}", str(path.parent.parent))
    t0 = time.perf_counter()
    t_analysis = 0.0
    facts = None
    try:
        source = fileio.read_source(found.path)
        if source.encoding == "utf-8":
            facts = apply.analyze_paths([found.path], jobs=1, cache_dir=options.cache_dir, **kw)[0]
        else:
            facts = apply.analyze_source(source.text, found.path, **kw)
        t_analysis = time.perf_counter() - t0
        result = apply.process_file(found, source, facts, compiled, options)
    except Exception as exc:  # recorded, like the driver does
        result = apply.FileResult(found, errors=(apply._internal_error(found.display, exc),))
    seconds = time.perf_counter() - t0
    near = []
    if _STATE["near"] and not result.errors:
        try:
            near = _near_misses(found, facts, compiled, result.original)
        except Exception as exc:
            result = apply.FileResult(found, matches=result.matches, new_source=result.new_source,
                                      original=result.original,
                                      errors=(apply._internal_error(found.display, exc),))
    rec = {"model": path.parent.name, "file": found.display, "seconds": seconds, "analysis": t_analysis,
           "matches": result.matches, "errors": result.errors, "changed": result.changed, "near_misses": near}
    if _STATE["check"] and result.changed:
        rec.update(_check_patched(found, result.new_source, compiled, kw))
    return rec


def run_files(files: list[Path], packs, *, cache_dir: str | None, inline: bool = True,
              flatten: bool = False, check: bool = True, jobs: int = 1, near: bool = True) -> dict:
    """Steps 3 and 5 for one analysis configuration; returns per-file records.

    Each file is analyzed on its own (per-file times, as the paper reports
    per model), one after another, or in `jobs` worker processes (each file
    still timed alone; the total is then the sum of per-file times, and the
    wall time is reported beside it).
    """
    wall0 = time.perf_counter()
    args = (list(packs), cache_dir, inline, flatten, check, near)
    if jobs > 1 and len(files) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, initializer=_init, initargs=args) as pool:
            records = list(pool.map(_one_file, files, chunksize=1))
    else:
        _init(*args)
        records = [_one_file(f) for f in files]
    return {"records": records, "wall": time.perf_counter() - wall0}


def _check_patched(found, new_source: str, compiled, kw) -> dict:
    """Step 5: the patched text parses, and applying again changes nothing."""
    try:
        ast.parse(new_source)
    except SyntaxError as exc:
        return {"parses": False, "idempotent": None, "check_error": f"line {exc.lineno}: {exc.msg}"}
    try:
        # The package modules the file imports, parsed once for all the checks
        # (`_STATE["modules"]`, read from disk as a fresh resolver would); the
        # patched file's own module goes into this check's copy only.
        shared = _STATE["modules"]
        modules = dict(shared)
        facts = apply.analyze_source(new_source, found.path, **kw, _modules=modules)
        own = facts.module
        shared.update((name, entry) for name, entry in modules.items() if name not in shared and name != own)
        again = apply.process_file(found, fileio.SourceFile(found.path, new_source, "utf-8", b""),
                                   facts, compiled, apply.ApplyOptions())
        idem = not again.changed and not again.errors
        why = None if idem else ("changes again: " + ", ".join(
            f"{m.rule}@{m.lines[:1]}" for m in again.matches if m.status == "applied") if again.changed
            else "; ".join(e.message for e in again.errors))
        return {"parses": True, "idempotent": idem, "check_error": why}
    except Exception as exc:
        return {"parses": True, "idempotent": False, "check_error": f"second apply raised {type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------
# Scoring


def reason_group(match) -> str:
    """A skipped match's group: its registered code and the code's title (dslc/codes.py)."""
    code = getattr(match, "code", None) or dslc_codes.S_UNCLASSIFIED
    entry = dslc_codes.lookup(code)
    return f"{code} {entry.title if entry else 'unregistered code'}"


def score(records: list[dict], truth: dict[tuple[str, str], int], models: list[str]) -> dict:
    """Step 4; returns per-rule and total TP/FN/FP/precision/recall and skip reasons."""
    found = collections.Counter()
    skipped = collections.Counter()
    reasons: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    where: dict[tuple[str, str], list] = collections.defaultdict(list)
    near = collections.Counter()
    near_where: dict[tuple[str, str], list] = collections.defaultdict(list)
    for rec in records:
        for n in rec.get("near_misses", ()):
            rule = NAME_TO_RULE.get(n.rule.split(":", 1)[1])
            if rule is not None:
                near[rule] += 1
                near_where[(rec["model"], rule)].append(n)
        for m in rec["matches"]:
            rule = NAME_TO_RULE.get(m.rule.split(":", 1)[1])
            if rule is None:
                continue
            where[(rec["model"], rule)].append(m)
            if m.status == "applied":
                found[(rec["model"], rule)] += 1
            else:
                skipped[rule] += 1
                reasons[rule][reason_group(m)] += 1
    rules = {}
    for rule in corpus.RULE_NAMES:
        tp = fn = fp = gt = 0
        for model in models:
            t = truth.get((model, rule), 0)
            f = found.get((model, rule), 0)
            hit = min(f, t)
            tp, fn, fp, gt = tp + hit, fn + t - hit, fp + f - hit, gt + t
        rules[rule] = {"name": corpus.RULE_NAMES[rule], "truth": gt, "tp": tp, "fn": fn, "fp": fp,
                       "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                       "skipped": skipped[rule], "skip_reasons": dict(reasons[rule].most_common()),
                       "near_misses": near[rule]}
    tot = {k: sum(r[k] for r in rules.values()) for k in ("truth", "tp", "fn", "fp", "skipped", "near_misses")}
    tot["precision"] = _ratio(tot["tp"], tot["tp"] + tot["fp"])
    tot["recall"] = _ratio(tot["tp"], tot["tp"] + tot["fn"])
    misses = []
    for model in models:
        for rule in corpus.RULE_NAMES:
            t = truth.get((model, rule), 0)
            f = found.get((model, rule), 0)
            if t != f:
                misses.append({"model": model, "rule": rule, "truth": t, "found": f,
                               "matches": [{"status": m.status, "class": m.class_name, "lines": list(m.lines),
                                            "reason": m.reason, "code": m.code} for m in where[(model, rule)]],
                               "near_misses": [{"class": n.class_name, "line": n.line, "reason": n.reason}
                                               for n in near_where[(model, rule)]]})
    return {"rules": rules, "total": tot, "misses": misses}


# ---------------------------------------------------------------------------
# Printing


def print_table(title: str, result: dict, paper: dict, paper_label: str) -> None:
    print(f"\n{title}")
    head = (f"{'rule':<28} {'truth':>5} {'TP':>4} {'FN':>4} {'FP':>4} {'prec':>5} {'recall':>6}"
            f" | {paper_label + ' TP/FN/FP':>22} {'prec':>5} {'recall':>6} | skipped near-miss")
    print(head)
    print("-" * len(head))
    ptot = [0, 0, 0]
    for rule, r in result["rules"].items():
        p = paper[rule]
        ptp, pfn, pfp = p[-3:]
        ptot = [ptot[0] + ptp, ptot[1] + pfn, ptot[2] + pfp]
        print(f"{rule + ' ' + r['name']:<28} {r['truth']:>5} {r['tp']:>4} {r['fn']:>4} {r['fp']:>4} "
              f"{_fmt(r['precision'])} {_fmt(r['recall']):>6} | {f'{ptp}/{pfn}/{pfp}':>22} "
              f"{_fmt(_ratio(ptp, ptp + pfp))} {_fmt(_ratio(ptp, ptp + pfn)):>6} | {r['skipped']:>7} {r['near_misses']:>9}")
    t = result["total"]
    print(f"{'total':<28} {t['truth']:>5} {t['tp']:>4} {t['fn']:>4} {t['fp']:>4} {_fmt(t['precision'])} "
          f"{_fmt(t['recall']):>6} | {f'{ptot[0]}/{ptot[1]}/{ptot[2]}':>22} "
          f"{_fmt(_ratio(ptot[0], ptot[0] + ptot[2]))} {_fmt(_ratio(ptot[0], ptot[0] + ptot[1])):>6} | {t['skipped']:>7} "
          f"{t['near_misses']:>9}")


def print_skips(result: dict) -> None:
    rows = [(rule, r) for rule, r in result["rules"].items() if r["skipped"]]
    if not rows:
        print("\nfound but skipped: none")
        return
    print("\nfound but skipped (not counted as found), by reason code:")
    for rule, r in rows:
        print(f"  {rule} {r['name']}: {r['skipped']}")
        for reason, n in r["skip_reasons"].items():
            print(f"    {n:>4}  {reason}")


def print_misses(result: dict, labels: str = "the paper's labels") -> None:
    print(f"\nper-model differences from {labels} (FN: found < truth, FP: found > truth):")
    for m in result["misses"]:
        kind = f"FN {m['truth'] - m['found']}" if m["found"] < m["truth"] else f"FP {m['found'] - m['truth']}"
        print(f"  {m['model']:<32} {m['rule']} {corpus.RULE_NAMES[m['rule']]:<20} truth {m['truth']} "
              f"found {m['found']} ({kind})")
        for x in m["matches"]:
            print(f"      {x['status']:<8} {x['class']} lines {x['lines']}"
                  + (f": [{x['code']}] {x['reason']}" if x["reason"] else ""))
        for x in m.get("near_misses", ()):
            print(f"      near-miss {x['class']} line {x['line']}: {x['reason']}")


def timing(records: list[dict], wall: float) -> dict:
    secs = [r["seconds"] for r in records]
    return {"total": sum(secs), "wall_with_checks": wall, "files": len(secs), "analysis": sum(r["analysis"] for r in records),
            "mean": statistics.mean(secs) if secs else 0.0,
            "median": statistics.median(secs) if secs else 0.0, "max": max(secs) if secs else 0.0,
            "max_model": max(records, key=lambda r: r["seconds"])["model"] if records else None}


def checks(records: list[dict]) -> dict:
    patched = [r for r in records if r["changed"]]
    return {
        "patched": len(patched),
        "parse": sum(1 for r in patched if r.get("parses")),
        "idempotent": sum(1 for r in patched if r.get("idempotent")),
        "failures": [{"file": r["file"], "why": r.get("check_error")} for r in patched
                     if not (r.get("parses") and r.get("idempotent"))],
        "errors": [{"file": e.file, "line": e.line, "code": e.code, "message": e.message}
                   for r in records for e in r["errors"]],
    }


def baseline(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for f in files:
        ast.parse(f.read_bytes())
    return time.perf_counter() - t0


def run_benchmark(models: list[str] | None = None, *, rules: str | None = None, cold: bool = False,
                  cache_dir: str | None = None, ablation: bool = True, check: bool = True,
                  jobs: int = 1, near: bool = True) -> dict:
    """Steps 1-6; returns all the numbers (what `--json` saves)."""
    rules = rules or str(REPO / "rulepacks" / "adopter.adr")
    root = corpus.transformers_root()
    files = corpus.benchmark_files(root)
    if models:
        wanted = set(models)
        unknown = wanted - {f.parent.name for f in files}
        if unknown:
            raise SystemExit(f"not benchmark models: {', '.join(sorted(unknown))}")
        files = [f for f in files if f.parent.name in wanted]
    names = [f.parent.name for f in files]
    truth = corpus.ground_truth()
    adjudicated = corpus.ground_truth(labels="adjudicated")
    packs = load_packs(rules)
    tmp = tempfile.TemporaryDirectory(prefix="dslc-bench-cache-") if cold else None
    try:
        cache = tmp.name if tmp else cache_dir
        base = baseline(files)
        full = run_files(files, packs, cache_dir=cache, check=check, jobs=jobs, near=near)
        out = {
            "rules_file": rules, "models": len(files), "jobs": jobs,
            "cache": "cold (empty dir)" if cold else (str(cache) if cache else "none"),
            "ast_parse_seconds": base,
            # Scored against the paper's labels; `adjudicated`: the same run against the adjudicated ones.
            "full": {**score(full["records"], truth, names), "timing": timing(full["records"], full["wall"]),
                     "checks": checks(full["records"]),
                     "adjudicated": score(full["records"], adjudicated, names)},
        }
        if ablation:
            abl = run_files(files, packs, cache_dir=cache, inline=False, flatten=True, check=False, jobs=jobs,
                            near=near)
            out["ablation"] = {**score(abl["records"], truth, names), "timing": timing(abl["records"], abl["wall"]),
                               "adjudicated": score(abl["records"], adjudicated, names)}
    finally:
        if tmp:
            tmp.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", help="rule pack (default: rulepacks/adopter.adr)")
    p.add_argument("--models", help="comma-separated model folder names (default: all 199)")
    p.add_argument("--cold", action="store_true", help="start from an empty analysis cache")
    p.add_argument("--cache-dir", help="analysis cache (default: dslc apply's; --cold uses a fresh empty one)")
    p.add_argument("--no-cache", action="store_true", help="no analysis cache at all")
    p.add_argument("--json", metavar="OUT", help="save the numbers as JSON")
    p.add_argument("--show-misses", action="store_true", help="list every (model, rule) whose count differs")
    p.add_argument("--no-ablation", action="store_true", help="skip the ADOPTER_p run")
    p.add_argument("--no-near-misses", action="store_true",
                   help="do not compute the near misses (places with a rule's anchors but no match)")
    p.add_argument("--jobs", type=int, default=1,
                   help="files in parallel worker processes (default 1: cleanest per-file times)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    from dslc.commands.apply import default_cache_dir

    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    res = run_benchmark(models, rules=args.rules, cold=args.cold, cache_dir=cache_dir,
                        ablation=not args.no_ablation, jobs=max(1, args.jobs), near=not args.no_near_misses)
    full = res["full"]
    print(f"ADOPTER benchmark: {res['models']} models x 9 rules, {res['rules_file']}, transformers "
          f"{corpus.TRANSFORMERS_VERSION}, cache {res['cache']}")
    print_table("ADOPTER (dslc, full analysis) against the paper's labels, beside the paper's Table 2:",
                full, PAPER, "paper")
    print_table("The same run against the adjudicated labels (497 locations; the paper's Table 2 beside):",
                full["adjudicated"], PAPER, "paper")
    print_skips(full)
    t = full["timing"]
    base = res["ast_parse_seconds"]
    how = "one process, sequential" if res["jobs"] == 1 else f"sum over {res['jobs']} worker processes"
    print(f"\ntime: {t['total']:.2f} s total for {t['files']} files ({how}); per model, all rules at once: "
          f"mean {t['mean']:.3f} s, median {t['median']:.3f} s, max {t['max']:.3f} s ({t['max_model']})")
    print(f"  of which analysis {t['analysis']:.2f} s, match + safety + rewrite {t['total'] - t['analysis']:.2f} s"
          f" (the checks below are not included; wall time with them {t['wall_with_checks']:.2f} s)")
    print(f"ast.parse of the same files in this run: {base:.2f} s; ratio {t['total'] / base:.1f}x" if base else "")
    print("paper's artifact on a 2-core machine (as reported with the benchmark labels): 2094 s for 199 x 9 separate runs, "
          "1.17 s mean / 1.02 s median / 10.3 s max per (model, rule); ast.parse 1.5 s")
    c = full["checks"]
    print(f"checks: {c['patched']} patched files, {c['parse']} parse, {c['idempotent']} unchanged by a second apply")
    for f in c["failures"]:
        print(f"  FAILED {f['file']}: {f['why']}")
    for e in c["errors"]:
        print(f"  error {e['file']}:{e['line']} [{e['code']}] {e['message']}")
    if "ablation" in res:
        abl = res["ablation"]
        print_table("ADOPTER_p (inline=False, flatten=True) beside the paper's Table 3:", abl, PAPER_P, "paper_p")
        print_table("ADOPTER_p against the adjudicated labels:", abl["adjudicated"], PAPER_P, "paper_p")
        ft, at = full["total"], abl["total"]
        print(f"recall: full {_fmt(ft['recall'])} vs ablation {_fmt(at['recall'])}; "
              f"precision: full {_fmt(ft['precision'])} vs ablation {_fmt(at['precision'])} "
              f"(paper: 0.954/1.00 vs 0.707/1.00)")
    if args.show_misses:
        print_misses(full)
        print_misses(full["adjudicated"], "the adjudicated labels")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
