"""Coverage of the kernel packs on the newest transformers and timm (issue 10, item 7).

    python benchmarks/coverage.py [--rules rulepacks/sdpa.adr ...] [--src DIR] [--jobs N] [--json FILE] [--unsafe]

1. Gets the newest `transformers`, `timm` and `liger-kernel` wheels from the
   package index with `pip download --no-deps` (nothing is installed) and
   unpacks them into a cache folder (`--src DIR` reuses an unpacked folder).
2. Runs `dslc apply` (dry run) with rulepacks/sdpa.adr, plus
   rulepacks/liger.adr when the tree has it, over every
   `transformers/models/<arch>/modeling_*.py` and every `timm/models/*.py`.
3. Prints per architecture: the layers rewritten (rule -> count), the
   matches found but skipped (with their reasons), and, beside it, whether one
   of Liger's own `apply_liger_kernel_to_<arch>` functions covers the
   architecture; those names are read from the downloaded liger-kernel source
   (`liger_kernel/transformers/monkey_patch.py`), not written here.
4. With the liger pack: for each of Liger's `apply_liger_kernel_to_<arch>`
   functions, the kernels it patches by default (its boolean parameters that
   default to True: rope, rms_norm, swiglu, cross_entropy, ...; read from its
   signature) beside the Liger kernels dslc's rewrites bring into that
   architecture's modeling file (the kind of each rule is read from its
   `kernel` line), what dslc misses there, and the architectures outside
   Liger's list where the liger pack rewrites something.

`--arch NAME` (repeatable) restricts the run to those architectures (a quick
look; the totals are then of those only).  `--unsafe` also applies the rules
declared `unsafe` (`dslc apply --unsafe`): liger's fused linear cross-entropy
on causal LMs, whose logits are then None in training with labels, as with
Liger's own patching.

"verified": a rewrite of a transformers 5.x file can only be run against an
importable transformers 5.x, which the test extra does not install (it pins
4.35.0); this script reports "not run" for that column, and
tests/test_sdpa_rules.py + `dslc verify` run SDPA rewrites for real.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dslc.apply.driver import ApplyOptions, apply_paths  # noqa: E402
from dslc.lang.loader import load_rules  # noqa: E402

PACKAGES = ("transformers", "timm", "liger-kernel")


def fetch(dest: Path) -> dict[str, str]:
    """Download and unpack the newest wheels; package -> version."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = dest / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *PACKAGES],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    versions = {}
    for whl in sorted(wheels.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        versions[name] = version
        with zipfile.ZipFile(whl) as z:
            z.extractall(dest / "src")
    return versions


def liger_architectures(src: Path) -> list[str]:
    patch = src / "liger_kernel" / "transformers" / "monkey_patch.py"
    if not patch.exists():
        return []
    return sorted(set(re.findall(r"^def apply_liger_kernel_to_(\w+)\(", patch.read_text(), re.M)))


# Liger kernel kinds: the names of Liger's apply_liger_kernel_to_* parameters,
# recognised in a rule's `kernel` line (the first pattern that fits wins)
KINDS = (
    ("fused_linear_cross_entropy", r"fused_linear_cross_entropy|FusedLinearCrossEntropy"),
    ("cross_entropy", r"cross_entropy|CrossEntropy"),
    ("rms_norm", r"rms_norm|RMSNorm"),
    ("layer_norm", r"layer_norm|LayerNorm"),
    ("geglu", r"geglu|GEGLU"),
    ("swiglu", r"swiglu|SwiGLU"),
    ("rope", r"rotary|rope"),
)


def kernel_kind(kernels) -> str | None:
    for kind, pattern in KINDS:
        if any(re.search(pattern, k) for k in kernels):
            return kind
    return None


def liger_defaults(src: Path) -> dict[str, dict[str, bool]]:
    """apply_liger_kernel_to_<arch> -> {boolean parameter: its default}."""
    patch = src / "liger_kernel" / "transformers" / "monkey_patch.py"
    if not patch.exists():
        return {}
    out = {}
    for node in ast.parse(patch.read_text()).body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("apply_liger_kernel_to_")):
            continue
        args = node.args.args + node.args.kwonlyargs
        defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
        defaults += list(node.args.kw_defaults)
        out[node.name[len("apply_liger_kernel_to_"):]] = {
            a.arg: d.value for a, d in zip(args, defaults)
            if isinstance(d, ast.Constant) and isinstance(d.value, bool)}
    return out


def model_dir_for(arch: str, archs: set[str]) -> str | None:
    """The transformers model folder of a Liger architecture name (`gemma3_text` -> gemma3)."""
    for cand in (arch, re.sub(r"_text$", "", arch)):
        if cand in archs:
            return cand
    return None


def liger_comparison(table, kinds: dict[str, str], defaults: dict[str, dict[str, bool]], t_archs: set[str]) -> dict:
    """Per Liger architecture whose model folder was scanned (`t_archs`): what
    Liger patches by default, what dslc rewrote, what it missed."""
    rows = []
    for arch, params in sorted(defaults.items()):
        liger = sorted(k for k, on in params.items() if on)
        folder = model_dir_for(arch, t_archs)
        if folder is None:
            continue
        dslc = sorted({kinds[r] for r in table[("transformers", folder)]["rewritten"] if r in kinds})
        rows.append({"architecture": arch, "folder": folder, "liger": liger, "dslc": dslc,
                     "missing": sorted(set(liger) - set(dslc))})
    others = sorted(f"{lib}:{arch}" for (lib, arch), row in table.items()
                    if (lib != "transformers" or arch not in {r["folder"] for r in rows})
                    and any(r in kinds for r in row["rewritten"]))
    return {"rows": rows, "outside_liger": others}


def print_liger(cmp: dict) -> None:
    rows = cmp["rows"]
    print(f"\nLiger's own patching vs the liger pack, per apply_liger_kernel_to_<arch> whose model folder "
          f"was scanned ({len(rows)}):")
    print(f"{'architecture':20} {'folder':16} {'liger patches (default)':58} dslc rewrites")
    for r in rows:
        print(f"{r['architecture']:20} {r['folder']:16} {', '.join(r['liger']):58} {', '.join(r['dslc']) or '-'}")
    some = sum(bool(r["dslc"]) for r in rows)
    full = sum(bool(r["dslc"]) and not (set(r["missing"]) - {"fused_linear_cross_entropy"}) for r in rows)
    missed = collections.Counter(k for r in rows for k in r["missing"])
    print(f"Liger architectures with a liger-pack rewrite: {some} of {len(rows)}; with every default kernel "
          f"but fused_linear_cross_entropy: {full}; missed kernels: "
          + ", ".join(f"{k} x{c}" for k, c in missed.most_common()))
    outside = cmp["outside_liger"]
    libs = collections.Counter(name.split(":", 1)[0] for name in outside)
    print(f"outside Liger's list, with a liger-pack rewrite: {len(outside)} ("
          + ", ".join(f"{lib} {n}" for lib, n in sorted(libs.items())) + "): "
          + ", ".join(outside[:12]) + (f", ... (--json lists all {len(outside)})" if len(outside) > 12 else ""))


def arch_of(path: Path) -> tuple[str, str]:
    parts = path.parts
    if "transformers" in parts and "models" in parts:
        i = parts.index("models")
        return "transformers", parts[i + 1]
    return "timm", path.stem


def build_table(files: list[Path], report) -> dict[tuple[str, str], dict]:
    """(library, architecture) -> files, rewrites (per sdpa spelling / liger rule), applied rules, skips."""
    table: dict[tuple[str, str], dict] = collections.defaultdict(
        lambda: {"rewritten": collections.Counter(), "applied_rules": collections.Counter(), "skipped": [],
                 "files": 0, "errors": 0})
    for f in files:
        table[arch_of(f)]["files"] += 1
    for res in report.files:
        key = arch_of(Path(res.found.path if hasattr(res.found, "path") else str(res.found)))
        row = table[key]
        row["errors"] += len(res.errors)
        for m in res.matches:
            if m.status == "applied":
                row["rewritten"][m.rule.split(":", 1)[1].split("_")[0] if m.rule.startswith("sdpa:") else m.rule] += 1
                row["applied_rules"][m.rule] += 1
            else:
                row["skipped"].append(f"{m.class_name}: {m.rule}: {m.reason}")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", action="append", help="rule packs (default: sdpa.adr, + liger.adr if present)")
    ap.add_argument("--src", help="an unpacked folder holding transformers/, timm/, liger_kernel/ (skips the download)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write the per-architecture table as JSON here")
    ap.add_argument("--arch", action="append", help="only these architectures (model folder or timm module)")
    ap.add_argument("--unsafe", action="store_true",
                    help="also apply the rules declared unsafe (causal LMs' fused linear cross-entropy: logits None in training)")
    args = ap.parse_args(argv)

    rules = args.rules or [str(p) for p in (REPO / "rulepacks" / "sdpa.adr", REPO / "rulepacks" / "liger.adr") if p.exists()]
    loaded = load_rules(rules)
    if any(d.severity == "error" for d in loaded.diagnostics):
        print("the rule packs have errors", file=sys.stderr)
        return 2
    versions: dict[str, str] = {}
    if args.src:
        src = Path(args.src)
    else:
        cache = Path(tempfile.gettempdir()) / "dslc-coverage"
        versions = fetch(cache)
        src = cache / "src"
    files = sorted((src / "transformers" / "models").glob("*/modeling_*.py")) + sorted((src / "timm" / "models").glob("*.py"))
    files = [f for f in files if not f.name.startswith("_")]
    if args.arch:
        files = [f for f in files if arch_of(f)[1] in set(args.arch)]
    start = time.perf_counter()
    report = apply_paths([str(f) for f in files], loaded.packs, ApplyOptions(mode="diff", jobs=args.jobs, gitignore=False,
                                                                             unsafe=args.unsafe))
    seconds = time.perf_counter() - start

    table = build_table(files, report)

    liger = liger_architectures(src)
    liger_set = set(liger)
    print(f"packs: {', '.join(p.name for p in loaded.packs)} ({sum(len(p.rules) for p in loaded.packs)} rules"
          f"{', the unsafe ones applied' if args.unsafe else ''}); "
          f"versions: {versions or 'from ' + str(src)}")
    print(f"{len(files)} files in {seconds:.1f} s; {len(report.errors)} errors\n")
    print(f"{'library':12} {'architecture':28} {'rewritten':>9} {'skipped':>7} {'liger':>5}  rules applied")
    totals = collections.Counter()
    for (lib, arch), row in sorted(table.items()):
        n_rw = sum(row["rewritten"].values())
        n_sk = len(row["skipped"])
        in_liger = arch in liger_set
        totals["archs"] += 1
        totals["archs_rewritten"] += bool(n_rw)
        totals["rewritten"] += n_rw
        totals["skipped"] += n_sk
        totals["liger"] += in_liger
        totals["liger_and_dslc"] += in_liger and bool(n_rw)
        if not (n_rw or n_sk or in_liger):
            continue
        rules_txt = ", ".join(f"{r}x{c}" for r, c in sorted(row["rewritten"].items()))
        print(f"{lib:12} {arch:28} {n_rw:9} {n_sk:7} {'yes' if in_liger else '':>5}  {rules_txt}")
        for reason in row["skipped"][:3]:
            print(f"{'':42} skipped {reason}")
    print(f"\narchitectures: {totals['archs']}; with a rewrite: {totals['archs_rewritten']}; "
          f"layers rewritten: {totals['rewritten']}; found but skipped: {totals['skipped']}; errors: {len(report.errors)}")
    print(f"Liger's apply_liger_kernel_to_* functions: {len(liger)} ({', '.join(liger)}); "
          f"of those rewritten by dslc here: {totals['liger_and_dslc']}")
    kinds = {f"{p.name}:{r.name}": kernel_kind(r.kernels) for p in loaded.packs if p.name == "liger" for r in p.rules}
    kinds = {k: v for k, v in kinds.items() if v}
    cmp = None
    if kinds:
        liger_rows = {key: {"rewritten": row["applied_rules"]} for key, row in table.items()}
        scanned = {arch_of(f)[1] for f in files if arch_of(f)[0] == "transformers"}
        cmp = liger_comparison(collections.defaultdict(lambda: {"rewritten": {}}, liger_rows), kinds,
                               liger_defaults(src), scanned)
        print_liger(cmp)
    print("verified: not run (transformers 5.x is not importable here; see the module docstring)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "versions": versions, "unsafe": args.unsafe, "liger": liger, "liger_comparison": cmp,
            "seconds": seconds, "errors": [e.message for e in report.errors],
            "rows": [{"library": lib, "architecture": arch, "rewritten": dict(row["rewritten"]),
                      "skipped": row["skipped"], "files": row["files"]} for (lib, arch), row in sorted(table.items())],
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
