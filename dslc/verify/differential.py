"""The differential test in this process (`dslc.verify.equivalence`, steps 1-6):
choose the classes, load both sources, then build and compare each class
in every configuration variant."""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
import warnings
from dataclasses import replace
from typing import Any, Iterator

from dslc.verify import tinyconfig
from dslc.verify.building import ClassFail, ClassSkip, build_from_config, build_with_factory
from dslc.verify.compare import compare_built
from dslc.verify.loading import Broken, Loaded, SkipAll, load_factory, load_pair, one_line, reference_kernels
from dslc.verify.report import ClassResult, Tolerance, VerifyOptions, VerifyReport, VerifyUsageError
from dslc.verify.selection import (all_rules, applied_rules, changed_classes, class_names, load_packs, parsed,
                                   rules_used, tolerance_for)


def resolve_device(device: str, torch: Any) -> tuple[str, str | None]:
    """(device, why-not) for `auto`/`cpu`/`cuda`: auto picks cuda only when one is usable."""
    if device not in ("auto", "cpu", "cuda"):
        raise VerifyUsageError(f"unknown device {device!r}: use cpu, cuda or auto")
    has_cuda = bool(torch.cuda.is_available())
    if device == "auto":
        return ("cuda" if has_cuda else "cpu"), None
    if device == "cuda" and not has_cuda:
        return "cuda", "no GPU: torch.cuda.is_available() is False"
    return device, None


def _no_progress(kind: str, value: Any) -> None:
    pass


def verify_in_process(orig_src: str, new_src: str, *, path: str, rewritten_path: str,
                      options: VerifyOptions, progress=_no_progress) -> VerifyReport:
    """The differential test itself (`dslc.verify.equivalence`), in this process.

    `progress(kind, value)` hears of each step (`verify_isolated` relays them
    from its child process): "device", "classes" (the names to compare),
    "stage" (what it is doing), "class" (a class starts), "result" (its
    ClassResult).
    """
    allow = options.allow_skip
    torch = _import_torch()
    device, no_device = resolve_device(options.device, torch)
    progress("device", device)
    packs = load_packs(options)
    progress("stage", "loading the factory")
    factory = load_factory(options.factory) if options.factory else None
    try:
        names = _class_names(orig_src, new_src, path, options)
    except SyntaxError as exc:
        return VerifyReport(path, rewritten_path, device,
                            error=f"the rewritten file does not parse: {one_line(exc)}")
    if not names and (orig_src == new_src or ast.dump(parsed(orig_src)) == ast.dump(parsed(new_src))):
        return VerifyReport(path, rewritten_path, device, unchanged=True, allow_skip=allow)
    progress("classes", list(names))
    if no_device:
        return VerifyReport(path, rewritten_path, device,
                            tuple(ClassResult(n, "skipped", no_device) for n in names), allow_skip=allow)
    try:
        progress("stage", "importing the original and the rewritten file")
        loaded = load_pair(orig_src, new_src, path, rewritten_path, options.module, packs)
    except SkipAll as exc:
        return VerifyReport(path, rewritten_path, device,
                            tuple(ClassResult(n, "skipped", str(exc)) for n in names), allow_skip=allow)
    except Broken as exc:
        return VerifyReport(path, rewritten_path, device, error=str(exc), allow_skip=allow)
    results = _compare_classes(loaded, names, packs, new_src, factory, device, torch, options, progress)
    return VerifyReport(path, rewritten_path, device, tuple(results), allow_skip=allow)


def _import_torch() -> Any:
    try:
        with warnings.catch_warnings():  # torch warns when numpy is absent
            warnings.simplefilter("ignore")
            import torch
    except ImportError:
        raise VerifyUsageError("verification needs PyTorch: pip install 'dslc[verify]'") from None
    return torch


def _class_names(orig_src: str, new_src: str, path: str, options: VerifyOptions) -> list[str]:
    """The classes to compare: those given with `--class`, else those the
    rewrite changed.  SyntaxError when the rewritten source does not parse."""
    try:
        parsed(orig_src)
    except SyntaxError as exc:
        raise VerifyUsageError(f"{path}: the original does not parse: {one_line(exc)}") from None
    names = changed_classes(orig_src, new_src)
    orig_classes = class_names(orig_src)
    for name in options.classes:
        if name not in orig_classes:
            raise VerifyUsageError(f"--class {name}: no such class in {path}")
    if options.classes:
        names = list(dict.fromkeys(options.classes))
    return names


def _compare_classes(loaded: Loaded, names: list[str], packs: tuple, new_src: str, factory: Any, device: str,
                     torch: Any, options: VerifyOptions, progress) -> list[ClassResult]:
    """Each class in turn; the loaded modules leave `sys.modules` after."""
    rules = all_rules(packs)
    file_tol = tolerance_for(*applied_rules(rules_used(new_src, rules), options.applied))
    refs = reference_kernels(loaded.rewritten)
    results = []
    via_cache: dict = {}  # one whole-model run serves every class inside it
    try:
        with _quiet(torch):
            for name in names:
                progress("class", name)
                class_rules = rules_used(new_src, rules, within=name)
                class_tol = (tolerance_for(*applied_rules(class_rules, options.applied, within=name))
                             if class_rules else file_tol)
                result = _verify_class(loaded, name, factory, class_tol, file_tol,
                                       refs, options.seed, device, torch, via_cache, options.input_shapes)
                results.append(result)
                progress("result", result)
    finally:
        for mod_name in loaded.registered:
            sys.modules.pop(mod_name, None)
    return results


@contextlib.contextmanager
def _quiet(torch: Any) -> Iterator[None]:
    """One thread, no warnings and no transformers advice while classes are
    compared; torch's RNG state and thread count restored after."""
    rng_state = torch.random.get_rng_state()  # apply runs us in-process: leave its RNG alone
    # Tiny models gain nothing from intra-op threads, and on a busy machine
    # OpenMP threads contend: one thread is 20x faster there (0.6 s vs 11 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # transformers logs advice ("add is_decoder=True") for tiny models: not ours to show.
    hf_logger = logging.getLogger("transformers")
    saved_level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.random.set_rng_state(rng_state)
        torch.set_num_threads(threads)
        hf_logger.setLevel(saved_level)


def _verify_class(loaded: Loaded, name: str, factory: Any, class_tol: Tolerance, file_tol: Tolerance,
                  refs: tuple[str, ...], seed: int, device: str, torch: Any,
                  via_cache: dict | None = None, input_shapes: tuple = ()) -> ClassResult:
    """Every configuration variant of one class; the first failure decides.

    Variant 0 is the tiny default configuration (or the factory); the others
    (`tinyconfig.variants`) are compared too when they apply, and a variant
    that cannot be built is ignored.  Passing variants are merged.
    """
    count = 1
    if factory is None:
        for config_cls in tinyconfig.config_candidates(loaded.original, getattr(loaded.original, name, object)):
            count = max(count, len(tinyconfig.variants(config_cls)))
    merged: ClassResult | None = None
    for variant in range(count):
        result = _verify_variant(loaded, name, factory, class_tol, file_tol, refs, seed, device,
                                 torch, via_cache, variant, input_shapes)
        label = _variant_label(loaded, name, variant)
        if variant and result.status == "skipped":
            continue
        if result.status != "pass":
            if variant and result.status == "fail":
                result = replace(result, reason=f"with {label}: {result.reason}")
            return result
        if merged is None:
            merged = result
        else:
            merged = replace(merged, max_abs=max(merged.max_abs, result.max_abs),
                             max_rel=max(merged.max_rel, result.max_rel), compared=merged.compared + result.compared,
                             modes=merged.modes + tuple(f"{m}[{label}]" for m in result.modes),
                             bf16_max_abs=_max_known(merged.bf16_max_abs, result.bf16_max_abs),
                             bf16_max_rel=_max_known(merged.bf16_max_rel, result.bf16_max_rel),
                             bf16_ref_ratio=_max_known(merged.bf16_ref_ratio, result.bf16_ref_ratio))
    return merged  # type: ignore[return-value] - variant 0 always returns above or sets it


def _max_known(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _variant_label(loaded: Loaded, name: str, variant: int) -> str:
    for config_cls in tinyconfig.config_candidates(loaded.original, getattr(loaded.original, name, object)):
        labels = tinyconfig.variants(config_cls)
        if variant < len(labels):
            return labels[variant]
    return str(variant)


def _verify_variant(loaded: Loaded, name: str, factory: Any, class_tol: Tolerance, file_tol: Tolerance,
                    refs: tuple[str, ...], seed: int, device: str, torch: Any,
                    via_cache: dict | None, variant: int, input_shapes: tuple = ()) -> ClassResult:
    orig_cls = getattr(loaded.original, name, None)
    new_cls = getattr(loaded.rewritten, name, None)
    if new_cls is None:
        return ClassResult(name, "fail", "the rewritten file no longer defines this class")
    if not isinstance(orig_cls, type) or not hasattr(orig_cls, "forward"):
        return ClassResult(name, "skipped", "not a torch module class")
    tol = class_tol
    built = None
    try:
        if factory is not None:
            built = build_with_factory(factory, orig_cls, new_cls, seed, torch)
        else:
            built = build_from_config(loaded, name, seed, torch, variant, input_shapes)
        if built.via:
            tol = file_tol
            if via_cache is not None and (built.via, variant) in via_cache:
                return replace(via_cache[built.via, variant], name=name)
        tally = compare_built(built, tol, seed, device, torch)
    except ClassSkip as exc:
        return ClassResult(name, "skipped", str(exc), tolerance=tol)
    except ClassFail as exc:
        result = ClassResult(name, "fail", str(exc), via=built.via if built else None,
                             tolerance=tol, reference_kernels=refs)
        if built is not None and built.via and via_cache is not None:
            via_cache[built.via, variant] = result
        return result
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:  # the user's code (a factory, a forward) tried to end the process
        return ClassResult(name, "fail", f"the code under test called sys.exit({exc.code!r}) while this class "
                                         "was built or run", tolerance=tol)
    except Exception as exc:  # noqa: BLE001 - the original itself failed to run
        return ClassResult(name, "skipped", f"the original does not run: {one_line(exc)}", tolerance=tol)
    except BaseException as exc:  # noqa: BLE001 - e.g. a factory raising BaseException itself
        return ClassResult(name, "fail", f"the code under test raised {one_line(exc)} (a BaseException) "
                                         "while this class was built or run", tolerance=tol)
    if tally.compared == 0 and tally.worst is None:
        return ClassResult(name, "skipped", "nothing to compare: the forward returned no tensors and there "
                                            "were no gradients", tolerance=tol)
    common = dict(via=built.via, tolerance=tol, max_abs=tally.max_abs, max_rel=tally.max_rel,
                  modes=tally.modes, compared=tally.compared, reference_kernels=refs,
                  nonfinite=tally.nonfinite, inputs=built.described,
                  bf16_max_abs=tally.bf16_max_abs, bf16_max_rel=tally.bf16_max_rel,
                  bf16_ref_ratio=tally.bf16_ref_ratio)
    if tally.worst is not None:
        m = tally.worst
        reason = m.message or f"max abs error {m.max_abs:.3g}, max rel error {m.max_rel:.3g}"
        result = ClassResult(name, "fail", f"{m.where}: {reason}", mismatch=m, **common)
    else:
        result = ClassResult(name, "pass", **common)
    if built.via and via_cache is not None:
        via_cache[built.via, variant] = result
    return result
