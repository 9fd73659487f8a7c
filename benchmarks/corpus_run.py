"""Run a rule pack over the newest (or given) releases of model libraries.

    python benchmarks/corpus_run.py [--packages transformers,timm] [--jobs 2]
                                    [--near-misses] [--json OUT] [--dir DIR]

Code nobody here wrote is where the rewriter meets what its tests did not
think of: the check is 0 errors and 0 internal errors (E199).

1. Fetch each package's wheel without installing it (`pip download --no-deps
   NAME -d DIR`; `NAME==VERSION` pins one) and unpack its `.py` files into
   DIR (default: a cache folder under `DSLC_CORPUS_DIR`, kept between runs).
2. Run `dslc.apply.driver.apply_paths` over the unpacked packages (dry run, no
   analysis cache, `--jobs` worker processes), optionally with near misses.
3. Print, per package and in total: files, matches, applied, skipped,
   near misses, errors by code, warnings by code, and the wall time; list
   every error.  `--json OUT` saves the numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from dslc.apply import driver as apply  # noqa: E402
from dslc import corpus


def fetch(spec: str, base: Path) -> tuple[str, Path]:
    """Download and unpack one package; returns (wheel name, package folder)."""
    name = spec.split("==")[0].strip()
    folder = base / spec.replace("==", "-")
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(folder)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(folder.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SystemExit(f"could not download {spec}: {proc.stderr.strip()[-500:]}")
    wheel = wheels[-1]
    src = folder / "src"
    marker = src / f".{wheel.name}.complete"
    if not marker.exists():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(src, [m for m in zf.namelist() if m.endswith(".py")])
        marker.write_text("ok\n")
    pkg = src / name.replace("-", "_")
    return wheel.name, pkg if pkg.exists() else src


def summarize(report) -> dict:
    matches = report.matches
    return {
        "files": report.files_scanned,
        "matches": len(matches),
        "applied": sum(1 for m in matches if m.status == "applied"),
        "skipped": sum(1 for m in matches if m.status == "skipped"),
        "near_misses": None if report.near_misses is None else
        sum(1 for n in report.near_misses if n.kind == "unmatched"),
        "errors": dict(collections.Counter(e.code for e in report.errors)),
        "warnings": dict(collections.Counter(w.code for w in report.warnings)),
        "seconds": round(report.seconds, 1),
        "error_list": [{"file": e.file, "line": e.line, "code": e.code, "message": e.message} for e in report.errors],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packages", default="transformers,timm",
                   help="comma-separated pip requirements (NAME or NAME==VERSION; default: transformers,timm)")
    p.add_argument("--rules", default=str(REPO / "rulepacks" / "adopter.adr"), help="rule pack")
    p.add_argument("--dir", help="where to keep the wheels and sources (default: DSLC_CORPUS_DIR/newest)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--near-misses", action="store_true", help="also compute the near misses")
    p.add_argument("--json", metavar="OUT", help="save the numbers as JSON")
    args = p.parse_args(argv)
    from dslc.lang.diagnostics import render
    from dslc.lang.loader import load_rules

    loaded = load_rules([args.rules], [])
    bad = [d for d in loaded.diagnostics if getattr(d, "severity", "error") == "error"]
    if bad:
        raise SystemExit(f"{args.rules} has errors:\n{render(bad, 'text', loaded.sources)}")
    base = Path(args.dir) if args.dir else corpus.cache_dir() / "newest"
    specs = [s.strip() for s in args.packages.split(",") if s.strip()]
    options = apply.ApplyOptions(mode="diff", jobs=max(1, args.jobs), cache_dir=None, near_misses=args.near_misses)
    out: dict = {"rules": args.rules, "jobs": options.jobs, "packages": {}}
    totals = collections.Counter()
    t0 = time.perf_counter()
    for spec in specs:
        wheel, folder = fetch(spec, base)
        report = apply.apply_paths([str(folder)], loaded.packs, options)
        s = summarize(report)
        out["packages"][wheel] = s
        for k in ("files", "matches", "applied", "skipped"):
            totals[k] += s[k]
        totals["errors"] += len(report.errors)
        totals["internal"] += s["errors"].get("E199", 0)
        totals["near_misses"] += s["near_misses"] or 0
        near = "" if s["near_misses"] is None else f", {s['near_misses']} near misses"
        print(f"{wheel}: {s['files']} files, {s['matches']} matches ({s['applied']} applied, {s['skipped']} skipped)"
              f"{near}, {len(report.errors)} errors {s['errors'] or ''}, warnings {s['warnings'] or '{}'}, "
              f"{s['seconds']} s")
        for e in s["error_list"]:
            print(f"  {e['file']}:{e['line']}: error[{e['code']}]: {e['message']}")
    out["total"] = dict(totals)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total: {totals['files']} files, {totals['matches']} matches ({totals['applied']} applied, "
          f"{totals['skipped']} skipped), {totals['errors']} errors ({totals['internal']} internal), "
          f"{out['seconds']} s wall with --jobs {options.jobs}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")
    return 1 if totals["errors"] else 0

if __name__ == "__main__":
    sys.exit(main())
