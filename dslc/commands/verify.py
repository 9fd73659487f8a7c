"""`dslc verify ORIGINAL REWRITTEN`: differential equivalence test of a rewrite.

Exit codes: 0 every compared class passes and at least one was compared
(or the two files are the same program; `--allow-skip`: nothing compared is
fine too), 1 a class fails, nothing was compared, or the rewritten file does
not import, 2 usage errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Check that a rewritten model file computes what the original computes.

For each class the rewrite changed (or each --class), the original and the
rewritten class are built with the same constructor arguments and seed, the
original's state_dict is loaded into the rewritten module with strict=True
(checkpoint compatibility; constant weights such as LayerNorm's 1/0 are
perturbed first so that a wrong mapping shows), both run on the same inputs
in eval mode, again with inputs scaled by 0.01 and with inputs 2x+1, in
train mode when the rule declares itself deterministic, and in bfloat16 when
every rule declares a bf16 tolerance, and the outputs,
input gradients and parameter gradients are compared within the rule's
declared tolerance (default atol=1e-5 rtol=1e-4; `exact` rules bit for bit).

How modules are built:
  --factory FILE.py:FUNC   FUNC(cls) returns (module, example_inputs_tuple)
  a transformers modeling file: a tiny config (hidden 32, 2 layers, 4 heads,
      intermediate 37) from the file's XxxConfig and inputs synthesised from
      the forward signature; a class whose inputs cannot be synthesised is
      run inside the file's whole-model class (XxxModel) that contains it.
      transformers (4.35.0 for the benchmark) must be importable.
  a plain file without --factory: its own ...Config class (no constructor
      arguments, sizes as attributes) when it has one (a class that does not
      build from it runs inside the smallest class that does and contains
      it); else the class is built without arguments and its inputs are
      synthesised: --input-shape when given, else from the first layer (a
      Linear's in_features gives (2, 4, in_features), a Conv2d's
      in_channels (2, C, 8, 8), an Embedding integer indices (2, 8), ...);
      the report says which.

The code under test runs in a child process: if it exits (sys.exit,
os._exit), crashes or hangs (--timeout), the class being compared fails
with that reason; dslc's own exit status is never the user code's.
NaN and Inf count as equal only at the same positions on both sides (the
report counts them); facing a number they fail, with the values.

A class is skipped, with the reason, when a kernel package is not installed
(with the pack's install hint when --rules is given), when --device cuda has no
GPU, or when it cannot be constructed.  A run where every class was skipped
(or no class could be compared, e.g. the rewrite renamed it) is a failure
unless --allow-skip."""

EPILOG = """\
exit status: 0 every compared class passes and at least one was compared,
1 a class fails, nothing was compared (unless --allow-skip) or the rewritten
file does not import, 2 usage error, 130 interrupted.

examples:
  dslc verify before.py after.py --factory factories.py:make
  dslc verify modeling_bert.py modeling_bert.new.py --rules rulepacks/adopter.adr
  dslc verify a.py b.py --class BertSelfOutput --format json --seed 3"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="equivalence test of a rewritten model file",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original", metavar="ORIGINAL.py", help="the model file before the rewrite")
    p.add_argument("rewritten", metavar="REWRITTEN.py", help="the same file after the rewrite")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="compare this class (repeatable; default: every class the rewrite changed)")
    p.add_argument("--factory", metavar="FILE.py:FUNC",
                   help="FUNC(cls) -> (module, example_inputs_tuple) builds each side")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where to run (auto: cuda when available, else cpu)")
    p.add_argument("--rules", action="append", default=[], metavar="FILE|DIR",
                   help="rule packs: tolerances and install hints of the rules whose kernels the file uses")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default: one line per class and a verdict) or json (the report as an object)")
    p.add_argument("--allow-skip", action="store_true",
                   help="exit 0 even when no class could be compared (all skipped: no kernel, no GPU)")
    p.add_argument("--input-shape", action="append", default=[], type=_shape, metavar="D1,D2,...",
                   help="shape of the inputs of a plain module built without arguments (repeatable: one "
                        "per forward input, in order; default: from its first Linear/Conv/Embedding)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="stop the child process that runs the code under test after SECONDS "
                        "(default 600; 0: no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed for construction, inputs and forward (default 0)")
    p.add_argument("--module", metavar="DOTTED.NAME",
                   help="the original's module name, when its path does not tell (e.g. transformers.models.bert.modeling_bert)")
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 2,4,32, got {text!r}") from None
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected non-negative sizes such as 2,4,32, got {text!r}")
    return dims


def run(args: argparse.Namespace) -> int:
    from dslc.verify import equivalence as verify
    from dslc.output import write_json

    options = verify.VerifyOptions(classes=tuple(args.classes), factory=args.factory,
                                   device=args.device, rules=tuple(args.rules),
                                   seed=args.seed, module=args.module, allow_skip=args.allow_skip,
                                   input_shapes=tuple(args.input_shape),
                                   timeout=args.timeout if args.timeout and args.timeout > 0 else None,
                                   applied=applied_rules(args.original, args.rewritten, args.rules))
    try:
        report = verify.verify_files(args.original, args.rewritten, options)
    except verify.VerifyUsageError as exc:
        print(f"dslc verify: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, not a traceback
        print(f"dslc verify: internal error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    if args.format == "json":
        write_json(verify.render(report, "json"))
    else:
        print(verify.render(report, args.format))
    return 0 if report.ok else 1


def applied_rules(original: str, rewritten: str, rules: list[str]) -> tuple[tuple[str, str | None], ...] | None:
    """The rules of `--rules` that rewrite ORIGINAL into REWRITTEN, found by
    running `dslc apply` (diff mode, no cache; safe rules, then with
    `--unsafe`) on ORIGINAL: the applied (rule, class) pairs when its output
    is the same program as REWRITTEN, else None (the rewrite came from other
    rules or was edited: every rule whose kernels it uses counts)."""
    if not rules:
        return None
    import ast

    from dslc.apply import driver
    from dslc.lang.loader import load_rules

    try:
        loaded = load_rules(list(rules))
        if any(d.is_error for d in loaded.diagnostics):
            return None  # verify reports the rules' errors itself
        with open(rewritten, encoding="utf-8") as fh:
            want = ast.dump(ast.parse(fh.read()))
        for unsafe in (False, True):
            report = driver.apply_paths([original], loaded.packs,
                                        driver.ApplyOptions(mode="diff", jobs=1, cache_dir=None, unsafe=unsafe))
            if report.errors or len(report.files) != 1:
                return None
            result = report.files[0]
            got = result.new_source if result.changed else result.original
            if ast.dump(ast.parse(got)) == want:
                return tuple(dict.fromkeys((m.rule, m.class_name) for m in report.matches if m.status == "applied"))
    except Exception:  # noqa: BLE001 - unreadable or unparsable files: verify reports them itself
        return None
    return None
