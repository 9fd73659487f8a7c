"""Equivalence verification: does a rewritten model compute what the original did?

`dslc verify ORIGINAL REWRITTEN` and `dslc apply --verify` both end here.  The
check is a differential test, per rewritten class:

  1. Find the classes to compare: those whose AST differs between the two
     sources, those using a changed module-level name, or those asked for.
  2. Load both sources as modules.  A file inside a package (a transformers
     modeling file) is loaded as a sibling module of that package, so its
     relative imports resolve; a plain file is loaded standalone.  A rewritten
     file that does not import fails; one that lacks a kernel package is
     skipped with the pack's install hint.
  3. Build the original and the optimized module with the same constructor
     arguments and the same seed: from a factory `FUNC(cls) -> (module,
     inputs)`, or from a tiny configuration (`dslc.verify.tinyconfig`) with inputs
     synthesised from the forward signature.  When no inputs fit a class, the
     file's whole-model class that contains it is compared instead.
  4. Give the original's constant tensors (LayerNorm weight 1, zero biases,
     BatchNorm statistics) seeded noise, so that a wrong mapping or a dropped
     bias shows; then load its state_dict into the optimized module with
     strict=True: a failing load breaks checkpoint compatibility.
  5. Run both in eval mode, again with the inputs scaled by 0.01 (a wrong
     LayerNorm eps hides at unit scale) and with inputs 2x+1 (not standard
     normal), in train mode when every rule involved declares itself
     deterministic, and in bfloat16 when every rule declares a bf16
     tolerance (`compare._compare_bf16`; a class run inside a containing
     model against a float32 reference, `compare._compare_bf16_whole`),
     seeding before each forward;
     with a tiny config, repeat for each configuration variant that turns on
     dead code paths (`tinyconfig.variants`).  Compare all
     tensors of the nested outputs, the input gradients and the parameter
     gradients of `sum(outputs).backward()`.  Parameter gradients are compared
     by state-dict name after mapping the original's gradients through the
     optimized module's own load hooks (the checkpoint mapping).
  6. Hold each class to its tolerance: the rules whose kernels the class
     uses (from `--rules`), else atol=1e-5, rtol=1e-4.

Torch is imported lazily: the rest of dslc does not need it.

This module holds the entry points; the steps live in their own modules of
dslc.verify: `selection` (which classes, which rules: steps 1 and 6),
`loading` (step 2), `building` (step 3), `compare` (steps 4 and 5),
`differential` (the steps in order, in this process), `isolation` (the same
in a forked child process) and `report` (the options, results and report,
and their rendering).
"""

from __future__ import annotations

import os
from typing import Sequence

from dslc.verify.differential import resolve_device
from dslc.verify.isolation import verify_isolated
from dslc.verify.loading import infer_module_name, install_hint, read_text
from dslc.verify.report import (DEFAULT_ATOL, DEFAULT_RTOL, REFERENCE_MARKER, ClassResult, Mismatch, Status,
                                Tolerance, VerifyOptions, VerifyReport, VerifyUsageError, render)
from dslc.verify.selection import all_rules, changed_classes, load_packs, rules_used, tolerance_for

__all__ = [
    "DEFAULT_ATOL", "DEFAULT_RTOL", "REFERENCE_MARKER", "ClassResult", "Mismatch", "Status", "Tolerance",
    "VerifyOptions", "VerifyReport", "VerifyUsageError", "all_rules", "changed_classes", "infer_module_name",
    "install_hint", "load_packs", "read_text", "render", "resolve_device", "rules_used", "tolerance_for",
    "verify_files", "verify_isolated", "verify_sources",
]


def verify_files(original: str, rewritten: str, options: VerifyOptions = VerifyOptions()) -> VerifyReport:
    """Verify two files on disk (the `dslc verify` command)."""
    orig_src = read_text(original)
    new_src = read_text(rewritten)
    return verify_isolated(orig_src, new_src, path=original, rewritten_path=rewritten, options=options)


def verify_sources(original_source: str, rewritten_source: str, *, path: str,
                   module: str | None = None, rules: Sequence | None = None,
                   device: str = "auto", classes: Sequence[str] = (),
                   factory: str | None = None, seed: int = 0, allow_skip: bool = False,
                   isolate: bool = True, timeout: float | None = 600.0,
                   applied: Sequence[tuple[str, str | None]] | None = None) -> VerifyReport:
    """Verify a rewrite held in memory (`dslc apply --verify`).

    `path` is where the original lives (it decides the package a modeling
    file belongs to); `module` its dotted name when known; `rules` holds
    loaded `ir.Pack`s or `ir.Rule`s or rule file paths; `applied` the rules
    that rewrote the file, as (qualified name, class) pairs (their contracts
    give the tolerance; None: every rule whose kernels the rewrite uses).
    Never raises for bad input: a usage problem (no torch, rules that do not
    load) comes back as `report.error`, so the caller refuses the rewrite.
    """
    packs = tuple(r for r in (rules or ()) if not isinstance(r, (str, os.PathLike)))
    files = tuple(str(r) for r in (rules or ()) if isinstance(r, (str, os.PathLike)))
    options = VerifyOptions(classes=tuple(classes), factory=factory, device=device,
                            rules=files, packs=packs, seed=seed, module=module, allow_skip=allow_skip,
                            isolate=isolate, timeout=timeout,
                            applied=tuple(applied) if applied is not None else None)
    try:
        return verify_isolated(original_source, rewritten_source, path=path, rewritten_path=path, options=options)
    except VerifyUsageError as exc:
        return VerifyReport(path, path, device, error=f"cannot verify: {exc}")
