"""`dslc verify ORIGINAL REWRITTEN`: differential equivalence test of a rewrite.

Exit codes: 0 every compared class passes (skipped ones do not count),
1 a class fails or the rewritten file does not import, 2 usage errors.
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
in eval mode, again with inputs scaled by 0.01, and in train mode when the
rule declares itself deterministic, and the outputs,
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
      arguments, sizes as attributes) when it has one, else skipped.

A class is skipped, with the reason, when a kernel package is not installed
(with the pack's install hint when --rules is given), when --device cuda has no
GPU, or when it cannot be constructed."""

EPILOG = """\
exit status: 0 every compared class passes (skips do not count), 1 a class
fails or the rewritten file does not import, 2 usage error.

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
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--seed", type=int, default=0, help="seed for construction, inputs and forward (default 0)")
    p.add_argument("--module", metavar="DOTTED.NAME",
                   help="the original's module name, when its path does not tell (e.g. transformers.models.bert.modeling_bert)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dslc import verify

    options = verify.VerifyOptions(classes=tuple(args.classes), factory=args.factory,
                                   device=args.device, rules=tuple(args.rules),
                                   seed=args.seed, module=args.module)
    try:
        report = verify.verify_files(args.original, args.rewritten, options)
    except verify.VerifyUsageError as exc:
        print(f"dslc verify: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, not a traceback
        print(f"dslc verify: internal error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    print(verify.render(report, args.format))
    return 0 if report.ok else 1
