"""How fast `dslc apply` is, side by side in one run (issue 11).

    python benchmarks/speed.py                      # everything below
    python benchmarks/speed.py --only corpus,rules,worst --models 60 --json out.json

Sections (`--only`, comma-separated):

* `corpus`: the benchmark's 199 `modeling_<model>.py` files (transformers
  4.35.0, `dslc.corpus`): read + `ast.parse` (the baseline: the median of
  5 passes over the same files in one child process, each pass's CPU
  seconds printed beside it, as the short baseline is the noisiest row), a cold
  `dslc apply` (empty cache folder), a warm one (the same folder again),
  then with the per-file result cache removed twice: the first of these
  analyses again and writes the analysis facts (a cold run keeps only a
  marker per file, `analyze_paths(lazy=True)`), the second is a warm one
  with only the analysis cache; all with `--jobs 1`.  CPU seconds (user + system of the process
  that does the work, imports and start-up excluded) and each one's ratio
  to the baseline; peak memory (max RSS).
* `rules`: cold runs with the 9 adopter rules and with 100 (the 9 plus 91
  generated detect-only rules over common layers and functions, written to
  a temporary pack), same files.
* `worst`: each generated worst case of benchmarks/worst_cases.py (40
  if/else, 40 ifs calling helpers, a 5000-element nn.Sequential, 40 while
  loops, 40 nested whiles, a 10 000-line forward, a 10 000-line forward
  with an `if` every 10 lines), each in a folder of its own, as a user runs
  it: `python -m dslc apply --no-cache --jobs 1` with `--rules` (adopter.adr),
  then with adopter + sdpa + liger, then with the three and `--near-misses`
  (which explains every class, so neither pre-filter skips any); CPU seconds (user +
  sys) and wall of the whole command, start-up and loading the packs
  included, and the budget warnings it gave.  A third row per file runs
  the three packs again with `--cache-dir` on a folder that holds only
  their pack-cache entry (`packs_cached`): the packs come from the cache,
  the file is analysed, matched and rewritten cold (a user's run after the
  first one, on a file not seen before).
* `newest`: cold and warm on every `.py` file of the newest transformers
  release (`pip download --no-deps transformers`, cached under
  `dslc.corpus.cache_dir()`); `--newest-limit N` takes the first N files.
* `stages`: where the CPU time goes, per stage (benchmarks/stages.py),
  cold and warm, on the corpus files.

Every measurement runs in its own child process (a fresh interpreter, so
the peak memory is that run's), one after another; the machine may be
shared, so compare ratios from one run.  `--models N` takes the first N
corpus files (quick look); `--json OUT` saves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SECTIONS = ("corpus", "rules", "worst", "newest", "stages")

LAYERS = ["Linear", "Conv1d", "Conv2d", "LayerNorm", "Dropout", "GELU", "ReLU", "Tanh", "Embedding",
          "BatchNorm1d", "BatchNorm2d", "GroupNorm", "SiLU", "Sigmoid", "Softmax", "Identity", "MaxPool2d",
          "AvgPool2d", "ConvTranspose2d", "Hardswish"]
FUNCTIONS = ["relu", "gelu", "silu", "dropout", "pad", "interpolate", "layer_norm", "linear", "normalize",
             "sigmoid", "tanh", "log_softmax", "embedding", "conv1d", "conv2d", "avg_pool2d", "max_pool2d",
             "cross_entropy", "mse_loss", "scaled_dot_product_attention"]

TORCH_FUNCTIONS = ["matmul", "cat", "tanh", "sigmoid", "bmm", "einsum", "where", "exp", "sqrt", "stack",
                   "arange", "zeros", "ones", "cumsum", "topk", "sort", "gather", "clamp", "flatten", "softmax"]


def generated_pack(n_rules: int) -> str:
    """`n_rules` detect-only rules: layer pairs (A then B) and functional calls."""
    out = ['pack generated "generated rules for the speed benchmark"\n',
           'requires fake install "not installable: detect-only rules"\n']
    k = 0
    pairs = [(a, b) for a in LAYERS for b in LAYERS if a != b]
    while k < n_rules:
        if k % 3 == 2 and k // 3 < len(FUNCTIONS) * 2:
            if k // 3 < len(FUNCTIONS):
                callee = f"torch.nn.functional.{FUNCTIONS[k // 3]}"
            else:
                callee = f"torch.{TORCH_FUNCTIONS[(k // 3) % len(TORCH_FUNCTIONS)]}"
            body = f"  forward {{\n    {callee}($x, ...) -> $y;\n  }} => _\n"
        else:
            a, b = pairs[(k * 7) % len(pairs)]
            body = (f"  init {{\n    torch.nn.{a}(...) -> $a;\n    torch.nn.{b}(...) -> $b;\n  }} => _\n"
                    f"  forward {{\n    $a($x) -> $h;\n    $b($h) -> $o;\n  }} => _\n")
        out.append(f'\nrule g{k} "generated rule {k}" {{\n  kernel fake.k{k}\n  option detect = True\n'
                   f'  tolerance atol=1e-3 rtol=1e-3\n{body}}}\n')
        k += 1
    return "".join(out)


# ---------------------------------------------------------------------------
# children: one measurement each, JSON on stdout


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mb() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(me, kids) / 1024, 1)


def child(spec: dict) -> dict:
    import ast
    import warnings

    files = spec["files"]
    if spec["kind"] == "parse":
        passes = []
        for _ in range(spec.get("repeat", 1)):
            start = _cpu()
            for path in files:
                with open(path, "rb") as fh, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ast.parse(fh.read(), filename=path)
            passes.append(_cpu() - start)
        return {"cpu": statistics.median(passes), "passes": passes, "peak_mb": _peak_mb()}
    from dslc.apply import driver as apply
    from dslc.lang.loader import load_rules

    loaded = load_rules(spec["rules"])
    opts = apply.ApplyOptions(jobs=spec.get("jobs", 1), cache_dir=spec.get("cache"))
    timer = None
    if spec.get("stages"):
        sys.path.insert(0, str(HERE))
        from stages import StageTimer

        timer = StageTimer().install()
    start = _cpu()
    t0 = time.perf_counter()
    if timer is not None:
        report, _ = timer.run(apply.apply_paths, files, loaded.packs, opts)
        from dslc.apply import report as rep

        timer.run(lambda: (rep.render_diff(report), rep.render_summary(report), rep.render_notes(report)))
    else:
        report = apply.apply_paths(files, loaded.packs, opts)
        from dslc.apply import report as rep

        rep.render_diff(report), rep.render_summary(report), rep.render_notes(report)
    cpu = _cpu() - start
    out = {"cpu": cpu, "wall": time.perf_counter() - t0, "peak_mb": _peak_mb(),
           "rules": len(report.rules), "applied": sum(1 for m in report.matches if m.status == "applied"),
           "found": len(report.matches),
           "budget_warnings": sorted({w.message.split(":")[0] for w in report.warnings
                                       if w.message.split(":")[0].endswith("-budget")}),
           "errors": len(report.errors)}
    if timer is not None:
        out["stages"] = timer.table()
    return out


ALL_PACKS = [str(REPO / "rulepacks" / f"{n}.adr") for n in ("adopter", "sdpa", "liger")]


def run_cli(path: str, rules: list[str], near_misses: bool, timeout: float | None = None,
            cache_dir: str | None = None) -> dict:
    """One `python -m dslc apply --no-cache --jobs 1` of `path`, as a user runs
    it: CPU seconds (user + sys) and wall of the whole command, interpreter
    start-up, imports and loading the packs included.  With `cache_dir`:
    `--cache-dir cache_dir` instead of `--no-cache`."""
    cache = ["--cache-dir", cache_dir] if cache_dir else ["--no-cache"]
    cmd = [sys.executable, "-m", "dslc", "apply", *cache, "--jobs", "1", "--format", "json"]
    cmd += (["--near-misses"] if near_misses else []) + [a for r in rules for a in ("--rules", r)] + [path]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(REPO)})
        # reaped by wait4: that child's own resource usage, not all children's
        killer = threading.Timer(timeout, proc.kill) if timeout else None
        if killer is not None:
            killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if killer is not None:
            killer.cancel()
        if proc.returncode == -9:
            return {"error": f"over {timeout} s"}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    try:
        rep = json.loads(stdout)
    except ValueError:
        return {"error": f"exit {proc.returncode}: {stderr.strip()[-200:]}"}
    found = rep.get("matches", [])
    return {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "peak_mb": round(usage.ru_maxrss / 1024, 1),
            "applied": sum(1 for m in found if m.get("status") == "applied"), "found": len(found),
            "errors": len(rep.get("errors", ())),
            "budget_warnings": sorted({w.get("message", "").split(":")[0] for w in rep.get("warnings", ())
                                       if w.get("message", "").split(":")[0].endswith("-budget")})}


def packs_cached(tmp: str) -> str:
    """A cache folder that holds only the three packs' pack-cache entry: a
    run on a one-line file with the three packs, then everything but
    `packs/` removed.  A worst-case run with a copy of it loads the packs
    from the cache and analyses, matches and rewrites its file cold."""
    folder = os.path.join(tmp, "packs-only")
    one = os.path.join(tmp, "one", "one.py")
    os.makedirs(os.path.dirname(one))
    Path(one).write_text("x = 1\n")
    run_cli(one, ALL_PACKS, True, timeout=300, cache_dir=folder)
    for entry in os.listdir(folder):
        if entry != "packs":
            target = os.path.join(folder, entry)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    return folder


def run_child(spec: dict, timeout: float | None = None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        name = fh.name
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    finally:
        os.unlink(name)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# sections


def corpus_files(n: int | None) -> list[str]:
    from dslc import corpus

    files = [str(f) for f in corpus.benchmark_files()]
    return files[:n] if n else files


def newest_files(limit: int | None) -> tuple[str, list[str]]:
    from dslc import corpus

    base = corpus.cache_dir() / "transformers-newest"
    base.mkdir(parents=True, exist_ok=True)
    wheel = next(base.glob("transformers-*.whl"), None)
    if wheel is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "transformers",
                               "-d", str(base)], capture_output=True, text=True)
        wheel = next(base.glob("transformers-*.whl"), None)
        if wheel is None:
            raise RuntimeError(f"pip download transformers failed: {proc.stderr.strip()[-300:]}")
    version = wheel.name.split("-")[1]
    root = base / version
    if not (root / ".complete").exists():
        import zipfile

        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(root, [m for m in zf.namelist() if m.startswith("transformers/") and m.endswith(".py")])
        (root / ".complete").write_text("ok\n")
    files = sorted(str(p) for p in (root / "transformers").rglob("*.py"))
    return version, files[:limit] if limit else files


BASELINE_PASSES = 5


def cold_warm(files, rules, label, rows, extra_warm_analysis=True, timeout=None) -> None:
    base = run_child({"kind": "parse", "files": files, "repeat": BASELINE_PASSES})
    rows.append((label, "read + ast.parse", base))
    cache = tempfile.mkdtemp(prefix="dslc-speed-")
    try:
        cold = run_child({"kind": "apply", "files": files, "rules": rules, "cache": cache}, timeout)
        rows.append((label, "cold (empty cache)", cold))
        warm = run_child({"kind": "apply", "files": files, "rules": rules, "cache": cache}, timeout)
        rows.append((label, "warm (result cache)", warm))
        if extra_warm_analysis:
            # A cold run keeps only markers in the analysis cache (the result cache holds the
            # outcome); the first run that misses the results (a pack change that keeps the
            # pack's names, say) writes the facts, the next one reads them.
            shutil.rmtree(os.path.join(cache, "results"), ignore_errors=True)
            fill = run_child({"kind": "apply", "files": files, "rules": rules, "cache": cache}, timeout)
            rows.append((label, "results removed: analysis, writes facts", fill))
            shutil.rmtree(os.path.join(cache, "results"), ignore_errors=True)
            warm2 = run_child({"kind": "apply", "files": files, "rules": rules, "cache": cache}, timeout)
            rows.append((label, "warm, analysis cache only", warm2))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(s for s in SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--models", type=int, help="only the first N corpus files")
    parser.add_argument("--newest-limit", type=int, help="only the first N files of the newest release")
    parser.add_argument("--rules", default=str(REPO / "rulepacks" / "adopter.adr"))
    parser.add_argument("--json", metavar="OUT", help="save the figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with open(args.child) as fh:
            print(json.dumps(child(json.load(fh))))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    rows: list = []
    print(f"dslc speed, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; CPU seconds (user+sys) of the "
          f"measured work, one child process per row, --jobs 1", flush=True)
    files = None
    if any(s in only for s in ("corpus", "rules", "stages")):
        try:
            files = corpus_files(args.models)
        except RuntimeError as exc:
            print(f"speed: corpus unavailable: {exc}", file=sys.stderr)
            return 2
    if "corpus" in only:
        cold_warm(files, [args.rules], f"corpus ({len(files)} files)", rows)
        _print(rows)
    if "rules" in only:
        tmp = tempfile.mkdtemp(prefix="dslc-rules-")
        gen = Path(tmp) / "generated.adr"
        gen.write_text(generated_pack(91))
        nine = run_child({"kind": "apply", "files": files, "rules": [args.rules], "cache": None})
        hundred = run_child({"kind": "apply", "files": files, "rules": [args.rules, str(gen)], "cache": None})
        shutil.rmtree(tmp, ignore_errors=True)
        rows.append(("rules", f"{nine.get('rules')} rules, cold, no cache", nine))
        rows.append(("rules", f"{hundred.get('rules')} rules, cold, no cache", hundred))
        _print(rows[-2:], ref=nine)
    if "worst" in only:
        sys.path.insert(0, str(HERE))
        import worst_cases

        tmp = tempfile.mkdtemp(prefix="dslc-worst-")
        paths = worst_cases.write_all(tmp, separate=True)
        packs_only = packs_cached(tmp)
        start = len(rows)
        for p in paths:
            for label, packs, near in (("adopter", [args.rules], False), ("3 packs", ALL_PACKS, False),
                                       ("3 packs + near misses", ALL_PACKS, True)):
                r = run_cli(str(p), packs, near, timeout=300)
                rows.append(("worst", f"{p.stem} ({label})", r))
            cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
            shutil.copytree(packs_only, cache, dirs_exist_ok=True)
            r = run_cli(str(p), ALL_PACKS, True, timeout=300, cache_dir=cache)
            rows.append(("worst", f"{p.stem} (3 packs + near misses, pack cache filled)", r))
        shutil.rmtree(tmp, ignore_errors=True)
        _print(rows[start:])
    if "newest" in only:
        try:
            version, nfiles = newest_files(args.newest_limit)
        except RuntimeError as exc:
            print(f"speed: newest transformers unavailable: {exc}", file=sys.stderr)
        else:
            start = len(rows)
            cold_warm(nfiles, [args.rules], f"transformers {version} ({len(nfiles)} files)", rows,
                      extra_warm_analysis=False)
            _print(rows[start:])
    if "stages" in only:
        cache = tempfile.mkdtemp(prefix="dslc-stages-")
        for label in ("cold", "warm"):
            r = run_child({"kind": "apply", "files": files, "rules": [args.rules], "cache": cache, "stages": True})
            rows.append(("stages", label, r))
            print(f"  stages {label:5s} {r.get('cpu', 0):7.2f} s: " + ", ".join(
                f"{k} {v:.2f}" for k, v in (r.get("stages") or {}).items() if v >= 0.005), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{"section": s, "what": w, **r} for s, w, r in rows], fh, indent=1)
    return 0


def _print(rows, ref=None) -> None:
    base = ref
    for section, what, r in rows:
        if what == "read + ast.parse":
            base = r
        if "error" in r:
            print(f"  {section:28s} {what:34s} ERROR {r['error']}", flush=True)
            continue
        ratio = f"{r['cpu'] / base['cpu']:6.2f}x" if base and base.get("cpu") else "       "
        extra = ""
        if len(r.get("passes", ())) > 1:
            extra = f"  median of {len(r['passes'])} passes in one process: " + " ".join(
                f"{p:.2f}" for p in r["passes"])
        if "applied" in r:
            extra = f"  applied {r['applied']}/{r['found']} found"
        if section == "worst" and "wall" in r:
            extra += f"  wall {r['wall']:.2f} s"
        if r.get("budget_warnings"):
            extra += f"  budget: {', '.join(r['budget_warnings'])}"
        print(f"  {section:8s} {what:44s} {r['cpu']:8.2f} s {ratio}  peak {r['peak_mb']:7.1f} MB{extra}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
