"""What `dslc verify` takes and gives: options, tolerances, per-class results,
the report, and the report rendered as text or JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
# A kernel package marks itself as a pure-PyTorch stand-in with this attribute
# (tests/kernel_refs/); results under it are reported as "reference kernel".
REFERENCE_MARKER = "DSLC_REFERENCE_KERNEL"

Status = Literal["pass", "fail", "skipped"]
# The text report names at most this many rules per tolerance (the JSON all).
MAX_RULES_SHOWN = 4


class VerifyUsageError(Exception):
    """Bad input to verify (unreadable file, bad factory spec): exit 2."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    exact: bool = False
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    deterministic: bool = False
    rules: tuple[str, ...] = ()  # qualified names of the rules it came from
    # rules whose kernels the file uses but that did not apply to it (left
    # out of `rules` when the applied rules are known: `VerifyOptions.applied`)
    others: int = 0
    # (atol, rtol) for a run in bfloat16, when every rule declares one
    # (`tolerance fp32 ...; bf16 atol=.. rtol=..`); None: no bf16 run
    bf16: tuple[float, float] | None = None

    def describe(self) -> str:
        base = "exact" if self.exact else f"atol={self.atol:g} rtol={self.rtol:g}"
        if self.bf16 is not None:
            base += f", bf16 atol={self.bf16[0]:g} rtol={self.bf16[1]:g}"
        shown = self.rules if len(self.rules) <= MAX_RULES_SHOWN else self.rules[:MAX_RULES_SHOWN - 1]
        src = ", ".join(shown) if shown else "default"
        if len(shown) < len(self.rules):
            src += f" and {len(self.rules) - len(shown)} more rules with these kernels"
        if self.others:
            src += f"; {self.others} other rule{'s' if self.others != 1 else ''} with these kernels did not apply"
        return f"{base} ({src})"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The worst disagreement found: where, and how large."""

    where: str  # e.g. "eval output.last_hidden_state", "eval grad param dense.weight"
    max_abs: float = math.inf
    max_rel: float = math.inf
    message: str = ""  # a structural problem (shape, missing output) instead of numbers


@dataclass(frozen=True, slots=True)
class ClassResult:
    name: str
    status: Status
    reason: str = ""
    via: str | None = None  # the whole-model class run to exercise this one
    tolerance: Tolerance | None = None
    mismatch: Mismatch | None = None
    max_abs: float = 0.0  # worst errors over everything compared
    max_rel: float = 0.0
    modes: tuple[str, ...] = ()
    compared: int = 0  # number of tensors compared
    reference_kernels: tuple[str, ...] = ()
    nonfinite: int = 0  # NaN/Inf values found at the same positions on both sides (they count as equal)
    inputs: str = ""  # how the inputs were made, when dslc synthesised them without a config
    # the worst errors of the bfloat16 run (`Tolerance.bf16`), when there was one
    bf16_max_abs: float | None = None
    bf16_max_rel: float | None = None
    # a class run inside a containing model: the worst ratio of the rewrite's
    # bf16 error against float32 to its bound (`compare._compare_bf16_whole`)
    bf16_ref_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.name, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.via:
            out["via"] = self.via
        if self.tolerance is not None:
            t = self.tolerance
            out["tolerance"] = {"exact": t.exact, "atol": t.atol, "rtol": t.rtol,
                                "deterministic": t.deterministic, "rules": list(t.rules),
                                "other_rules": t.others,
                                "bf16": None if t.bf16 is None else {"atol": t.bf16[0], "rtol": t.bf16[1]}}
        if self.status != "skipped":
            out.update(max_abs=_num(self.max_abs), max_rel=_num(self.max_rel),
                       modes=list(self.modes), compared=self.compared)
        if self.mismatch is not None:
            m = self.mismatch
            out["mismatch"] = {"where": m.where, "max_abs": _num(m.max_abs),
                               "max_rel": _num(m.max_rel), "message": m.message}
        if self.reference_kernels:
            out["reference_kernels"] = list(self.reference_kernels)
        if self.status != "skipped":
            out["nonfinite_equal"] = self.nonfinite
        if self.inputs:
            out["inputs"] = self.inputs
        if self.bf16_max_abs is not None:
            out["bf16"] = {"max_abs": _num(self.bf16_max_abs), "max_rel": _num(self.bf16_max_rel or 0.0)}
            if self.bf16_ref_ratio is not None:
                out["bf16"]["fp32_error_ratio"] = _num(self.bf16_ref_ratio)
        return out


def _ratio_text(r: ClassResult) -> str:
    if r.bf16_ref_ratio is None:
        return ""
    if not r.bf16_ref_ratio:
        return "; inside the model, every tensor within the layer contract"
    return (f"; inside the model, tensors beyond the layer contract: error against float32 at most "
            f"{r.bf16_ref_ratio:.2f} of its bound, 2 x the bf16 original's + 2^-8 x max")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    original: str
    rewritten: str
    device: str
    results: tuple[ClassResult, ...] = ()
    error: str | None = None  # the rewritten file itself is broken (a failure)
    unchanged: bool = False  # the two sources are the same program: nothing to compare
    allow_skip: bool = False  # --allow-skip: a run that compared nothing is not a failure

    @property
    def nothing_compared(self) -> bool:
        """The sources differ but no class was compared (all skipped, or none found)."""
        return not self.unchanged and not any(r.status == "pass" for r in self.results)

    @property
    def ok(self) -> bool:
        if self.error is not None or any(r.status == "fail" for r in self.results):
            return False
        return self.allow_skip or not self.nothing_compared

    @property
    def summary(self) -> str:
        """One line: the file error or the first failing class, else the counts."""
        if self.error:
            return self.error
        for r in self.results:
            if r.status == "fail":
                return f"{r.name}: {r.reason}"
        c = self.counts
        if not self.ok:
            return f"nothing was compared ({c['skipped']} skipped); --allow-skip accepts that"
        return f"{c['pass']} passed, {c['skipped']} skipped"

    @property
    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "skipped": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original, "rewritten": self.rewritten, "device": self.device,
                "ok": self.ok, "error": self.error, "counts": self.counts,
                "nothing_compared": self.nothing_compared, "allow_skip": self.allow_skip,
                "results": [r.to_dict() for r in self.results]}


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    classes: tuple[str, ...] = ()
    factory: str | None = None  # "FILE.py:FUNC"
    device: str = "auto"
    rules: tuple[str, ...] = ()  # rule files or directories
    packs: tuple = ()  # already loaded ir.Pack or ir.Rule values (apply passes rules)
    seed: int = 0
    module: str | None = None  # dotted module name of ORIGINAL, when known
    allow_skip: bool = False  # a run that compares nothing is ok (else a failure)
    input_shapes: tuple[tuple[int, ...], ...] = ()  # --input-shape: inputs of a plain module
    isolate: bool = True  # run the user's code in a child process (verify_isolated)
    timeout: float | None = 600.0  # seconds for the child process; None: no limit
    # The rules that applied to the file, when known, as (qualified name,
    # class or None) pairs (`dslc apply --verify`; `dslc verify` re-runs the
    # rewrite to find them): the tolerance comes from those alone.  None:
    # every rule whose kernels the rewritten source uses.
    applied: tuple[tuple[str, str | None], ...] | None = None


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _describe_modes(modes: Sequence[str]) -> str:
    """`eval, eval x0.01, train` plus how many configuration variants ran them."""
    base = [m for m in modes if "[" not in m]
    variants = {m[m.index("[") + 1:-1] for m in modes if "[" in m}
    text = ", ".join(base) + " runs"
    if variants:
        text += f" (+ the same with {'; '.join(sorted(variants))})"
    return text


def render(report: VerifyReport, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    from dslc.fileio import display_path

    lines = [f"verify {display_path(report.original)} -> {display_path(report.rewritten)} on {report.device}"]
    if report.error:
        lines.append(f"  FAIL  {report.error}")
    if not report.results and not report.error:
        lines.append("  no rewritten classes to compare" if report.unchanged else
                     "  the sources differ, but no class of the original is affected (only module-level "
                     "code no class uses changed?)")
    for r in report.results:
        via = f" via {r.via}" if r.via else ""
        ref = f" [reference kernel: {', '.join(r.reference_kernels)}]" if r.reference_kernels else ""
        tol = f"; tolerance {r.tolerance.describe()}" if r.tolerance and r.status != "skipped" else ""
        if r.status == "pass":
            nonfinite = (f", {r.nonfinite} NaN/Inf values equal on both sides (same positions)"
                         if r.nonfinite else "")
            inputs = f"; {r.inputs}" if r.inputs else ""
            bf16 = (f" (bf16: max abs error {r.bf16_max_abs:.3g}, max rel error {r.bf16_max_rel or 0.0:.3g}"
                    f"{_ratio_text(r)})" if r.bf16_max_abs is not None else "")
            lines.append(f"  pass  {r.name}{via}: {r.compared} tensors in {_describe_modes(r.modes)}, "
                         f"max abs error {r.max_abs:.3g}, {_rel_text(r)}{bf16}{nonfinite}{tol}{inputs}{ref}")
        elif r.status == "fail":
            lines.append(f"  FAIL  {r.name}{via}: {r.reason}{tol}{ref}")
        else:
            lines.append(f"  skip  {r.name}: {r.reason}")
    c = report.counts
    verdict = "ok" if report.ok else "FAILED"
    tail = ""
    if report.nothing_compared and not report.error and not c["fail"]:
        tail = ("; nothing was compared (accepted: --allow-skip)" if report.allow_skip
                else "; nothing was compared, which is no pass (--allow-skip accepts it)")
    lines.append(f"{verdict}: {c['pass']} passed, {c['fail'] + (1 if report.error else 0)} failed, "
                 f"{c['skipped']} skipped{tail}")
    return "\n".join(lines)


def _rel_text(r: ClassResult) -> str:
    """The relative error of a pass, without alarm where the absolute tolerance held."""
    t = r.tolerance
    if t is not None and not t.exact and t.atol > 0:
        return f"max rel error {r.max_rel:.3g} (where |expected| > atol)"
    return f"max rel error {r.max_rel:.3g}"
