"""Fused linear cross-entropy on transformers' causal LMs (issue 10, item 3).

    python benchmarks/flce_causal_lm.py --src DIR [--src DIR ...] [--jobs N] [--json FILE] [--unsafe | --only-unsafe]

Each DIR holds an unpacked `transformers/` (tests and benchmarks cache them
under ~/.cache/dslc/corpus: transformers-4.35.0/ and transformers-newest/<v>/).
Runs `dslc apply` (dry run, near misses on) with rulepacks/liger.adr's fused
linear cross-entropy rules over every `transformers/models/*/modeling_*.py`
and, for every class whose name ends in `ForCausalLM`, prints:

* how many get the rewrite: with the rules that existed before the `_float`
  forms (`fused_linear_cross_entropy`, `fused_linear_cross_entropy_loss`:
  "before") and with all of them ("after");
* for the others, why not, as one reason per class: the skip reason (its
  code) when a match was found and refused, else the first near miss of the
  rules (its N code and the text with the line numbers and names stripped),
  else what the class's source shows instead (`self.loss_function(...)`, no
  `lm_head`-like Linear call followed by a loss, ...).
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dslc.apply.driver import ApplyOptions, apply_paths  # noqa: E402
from dslc.lang.loader import load_rules  # noqa: E402

BEFORE = ("liger:fused_linear_cross_entropy", "liger:fused_linear_cross_entropy_loss")
AFTER = BEFORE + ("liger:fused_linear_cross_entropy_float", "liger:fused_linear_cross_entropy_loss_float")
# applied with --unsafe only: the logits are None in training with labels
UNSAFE = AFTER + ("liger:fused_linear_cross_entropy_causal_lm",)


def modeling_files(src: Path) -> list[Path]:
    """The PyTorch modeling files (not the TF/Flax ones, not the auto classes)."""
    return sorted(f for f in (src / "transformers" / "models").glob("*/modeling_*.py")
                  if not f.name.startswith(("modeling_tf_", "modeling_flax_", "_")) and f.parent.name != "auto")


def causal_lm_classes(files: list[Path]) -> dict[tuple[str, str], str]:
    """(file, class) -> the class's forward source, for every *ForCausalLM class."""
    out = {}
    for f in files:
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("ForCausalLM"):
                fwd = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "forward"), None)
                out[(str(f), node.name)] = ast.unparse(fwd) if fwd is not None else ""
    return out


def _generic(reason: str) -> str:
    """A near miss's text without line numbers and the layer's own name."""
    reason = re.sub(r" ?\(line \d+\)|(at )?line \d+ ?", " ", reason)
    reason = re.sub(r"found `self\.\w+\(\.\.\.\)`", "found the head call", reason)
    return re.sub(r"\s+", " ", reason).strip()


# What the forward's source shows that the fused rules do not take (each
# counted apart: a class usually has several).
OBSTACLES = {
    "the loss is `self.loss_function(...)` (chosen at run time)": r"self\.loss_function\(",
    "a loss module built in forward (`loss_fct = CrossEntropyLoss()`)": r"\w+ = (nn\.)?CrossEntropyLoss\(",
    "the logits are returned (`logits=logits` / `(logits,) + ...`)": r"\blogits=(?!None)\w|\((\w*logits|prediction_scores),\) \+|return \(?\w*logits",
    "the reshaping spread over statements (`shift_logits = ...`)": r"shift_logits = ",
    "a last size that is not provably the logits' (`view(-1, self.config.vocab_size)`)": r"view\(-1, self\.(config\.)?vocab_size\)",
    "`logits = logits.float()`": r"logits = logits\.float\(\)",
    "no `lm_head` call (another head module, e.g. `self.cls(...)`)": r"^(?![\s\S]*lm_head\()",
}


def obstacles(forward: str) -> list[str]:
    return [name for name, pattern in OBSTACLES.items() if forward and re.search(pattern, forward)]


def source_reason(forward: str) -> str:
    if not forward:
        return "no forward of its own (inherited)"
    if "self.loss_function(" in forward:
        return "the loss is `self.loss_function(logits=logits, ...)` (a loss chosen at run time, not a cross-entropy call)"
    if "CrossEntropyLoss" not in forward and "cross_entropy" not in forward:
        return "no cross-entropy in forward"
    return "no near miss reported"


def run(src: Path, jobs: int, rules: tuple[str, ...], unsafe: bool = False) -> tuple[dict, float, int]:
    loaded = load_rules([str(REPO / "rulepacks" / "liger.adr")], select=rules)
    files = modeling_files(src)
    start = time.perf_counter()
    report = apply_paths([str(f) for f in files], loaded.packs,
                         ApplyOptions(mode="diff", jobs=jobs, gitignore=False, near_misses=True, unsafe=unsafe))
    seconds = time.perf_counter() - start
    classes = causal_lm_classes(files)
    applied = {(m.file, m.class_name) for m in report.matches if m.status == "applied"}
    skipped = {}
    for m in report.matches:
        if m.status == "skipped":
            skipped.setdefault((m.file, m.class_name), f"{m.code}: {_generic(m.reason or '')}")
    near = {}
    for n in report.near_misses or ():
        near.setdefault((n.file, n.class_name), f"{n.code}: {_generic(n.reason)}")
    out = {}
    for key, forward in classes.items():
        if key in applied:
            out[key] = "applied"
        else:
            out[key] = skipped.get(key) or near.get(key) or source_reason(forward)
    return out, seconds, len(report.errors), classes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", required=True, help="a folder holding transformers/")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--unsafe", action="store_true", help="also count the rewrites with --unsafe (logits None in training)")
    ap.add_argument("--only-unsafe", action="store_true", help="count only the rewrites with --unsafe")
    args = ap.parse_args(argv)
    dump = {}
    for src in map(Path, args.src):
        if args.only_unsafe:  # the safe rules' columns skipped (they rewrite none of these classes)
            after, seconds, errors, classes = run(src, args.jobs, UNSAFE, unsafe=True)
            n_unsafe = sum(v == "applied" for v in after.values())
            print(f"{src}: {len(after)} *ForCausalLM classes; with --unsafe: {n_unsafe} rewritten ({seconds:.0f} s, {errors} errors)")
            for reason, count in collections.Counter(v for v in after.values() if v != "applied").most_common():
                example = sorted(c for (_, c), v in after.items() if v == reason)[:3]
                print(f"  {count:4d}  {reason}  (e.g. {', '.join(example)})")
            dump[str(src)] = {"classes": len(after), "unsafe": n_unsafe,
                              "unsafe_applied": sorted(c for (_, c), v in after.items() if v == "applied")}
            continue
        before, _, _, _ = run(src, args.jobs, BEFORE)
        after, seconds, errors, classes = run(src, args.jobs, AFTER)
        n_before = sum(v == "applied" for v in before.values())
        n_after = sum(v == "applied" for v in after.values())
        print(f"{src}: {len(after)} *ForCausalLM classes; fused linear cross-entropy applied: "
              f"before {n_before}, after {n_after} ({seconds:.0f} s, {errors} errors)")
        reasons = collections.Counter(v for v in after.values() if v != "applied")
        for reason, count in reasons.most_common():
            example = sorted(c for (_, c), v in after.items() if v == reason)[:3]
            print(f"  {count:4d}  {reason}  (e.g. {', '.join(example)})")
        seen = collections.Counter(o for key, v in after.items() if v != "applied" for o in obstacles(classes[key]))
        print("  in the source of those not rewritten (a class counts under each it shows):")
        for name, count in seen.most_common():
            print(f"  {count:4d}  {name}")
        entry = {"obstacles": dict(seen), "before": n_before, "after": n_after, "classes": len(after),
                 "reasons": dict(reasons), "applied": sorted(c for (_, c), v in after.items() if v == "applied")}
        if args.unsafe:
            unsafe, seconds, errors, _ = run(src, args.jobs, UNSAFE, unsafe=True)
            n_unsafe = sum(v == "applied" for v in unsafe.values())
            print(f"  with --unsafe: {n_unsafe} rewritten ({seconds:.0f} s, {errors} errors); the others:")
            left = collections.Counter(v for v in unsafe.values() if v != "applied")
            for reason, count in left.most_common():
                example = sorted(c for (_, c), v in unsafe.items() if v == reason)[:3]
                print(f"  {count:4d}  {reason}  (e.g. {', '.join(example)})")
            entry.update(unsafe=n_unsafe, unsafe_reasons=dict(left),
                         unsafe_applied=sorted(c for (_, c), v in unsafe.items() if v == "applied"))
        dump[str(src)] = entry
    if args.json:
        args.json.write_text(json.dumps(dump, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
