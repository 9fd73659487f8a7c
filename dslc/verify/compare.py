"""Comparing the two instances (steps 4 and 5 of `dslc.verify.equivalence`):
informative constants, the strict state-dict load, then outputs, input
gradients and parameter gradients in each mode, held to a tolerance."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

from dslc.verify.building import Built, ClassFail, call_module
from dslc.verify.loading import one_line
from dslc.verify.report import Mismatch, Tolerance


def _flatten(value: Any, prefix: str, out: list[tuple[str, Any]], torch: Any) -> None:
    """All tensors of a nested output, with a path naming each."""
    if isinstance(value, torch.Tensor):
        out.append((prefix, value))
    elif isinstance(value, dict):  # also HF ModelOutput (an OrderedDict)
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out, torch)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out, torch)


@dataclass
class Tally:
    tol: Tolerance
    max_abs: float = 0.0
    max_rel: float = 0.0
    compared: int = 0
    worst: Mismatch | None = None  # first failing comparison
    modes: tuple[str, ...] = ()
    nonfinite: int = 0  # NaN/Inf values at the same positions on both sides
    check_dtype: bool = False  # a floating result in another dtype fails (the bf16 run)
    bf16_max_abs: float | None = None  # the worst errors of the bf16 run, when there was one
    bf16_max_rel: float | None = None
    # a whole-model bf16 run (`_compare_bf16_whole`): the worst ratio of the
    # rewrite's error against float32 to its bound (<= 1 passes) among the
    # tensors beyond the layer contract; 0.0 when every tensor was within it
    bf16_ref_ratio: float | None = None

    def compare(self, where: str, a: Any, b: Any, torch: Any) -> None:
        """Compare expected `a` (original) with actual `b` (rewritten)."""
        if a is None and b is None:
            return
        if (a is None) != (b is None) and ("grad" in where):
            # No gradient is a zero gradient: compare the values.
            a, b = (torch.zeros_like(b) if a is None else a), (torch.zeros_like(a) if b is None else b)
        if a is None or b is None:
            self._fail(Mismatch(where, message="present on one side only"))
            return
        if tuple(a.shape) != tuple(b.shape):
            self._fail(Mismatch(where, message=f"shape {tuple(b.shape)} instead of {tuple(a.shape)}"))
            return
        if self.check_dtype and a.dtype != b.dtype:
            self._fail(Mismatch(where, message=f"dtype {b.dtype} instead of {a.dtype}"))
            return
        self.compared += 1
        if a.numel() == 0:
            return
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a.cpu(), b.cpu().to(a.dtype)):
                diff = (a.cpu().double() - b.cpu().double()).abs().max().item()
                self._fail(Mismatch(where, diff, math.inf, "integer values differ"))
            return
        x, y = a.detach().cpu().double(), b.detach().cpu().double()
        if x.is_complex():
            x, y = torch.view_as_real(x), torch.view_as_real(y)
        # NaN and Inf, explicitly: equal when both sides hold NaN, or the
        # same infinity, at the same position (counted and reported); a NaN
        # or Inf facing anything else is a failure that says so.
        finite = x.isfinite() & y.isfinite()
        same = (x.isnan() & y.isnan()) | (x.isinf() & y.isinf() & (x == y))
        bad = ~finite & ~same
        self.nonfinite += int(same.sum().item())
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0].item())
            index = tuple(int(k) for k in _unravel(i, tuple(x.shape)))
            xv, yv = float(x.reshape(-1)[i].item()), float(y.reshape(-1)[i].item())
            n_bad = int(bad.sum().item())
            self._fail(Mismatch(where, math.inf, math.inf,
                                f"the original gives {xv!r} and the rewrite {yv!r} at index {list(index)} "
                                f"({n_bad} such element{'s' * (n_bad != 1)} of {x.numel()})"))
            return
        if not bool(finite.any()):
            return
        x, y = x[finite], y[finite]
        diff = (x - y).abs()
        abs_err = float(diff.max().item())
        # The relative error only where it means something: where |expected|
        # exceeds atol (below that, the absolute tolerance is what holds).
        floor = self.tol.atol if not self.tol.exact else 0.0
        big = x.abs() > floor
        rel_err = float((diff[big] / x.abs()[big]).max().item()) if bool(big.any()) else 0.0
        self.max_abs, self.max_rel = max(self.max_abs, abs_err), max(self.max_rel, rel_err)
        if self.tol.exact:
            ok = abs_err == 0.0
        else:
            ok = bool((diff <= self.tol.atol + self.tol.rtol * x.abs()).all())
        if not ok:
            self._fail(Mismatch(where, abs_err, rel_err))

    def compare_to_reference(self, where: str, r: Any, a: Any, b: Any, torch: Any) -> None:
        """A whole model in bf16: the rewrite `b` within one layer's
        elementwise contract of the bf16 original `a`, or else, against the
        float32 original `r`, no farther than twice `a` is, plus bf16's
        unit roundoff times the tensor's largest magnitude.  The worst
        ratio of error to bound among the tensors beyond the contract is
        kept (0 when none was).

        A pair that is not a finite floating tensor on all three sides, or
        of another shape, is held to the elementwise contract (`compare`).
        """
        usable = all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (r, a, b))
        if usable:
            usable = tuple(r.shape) == tuple(a.shape) == tuple(b.shape) and r.numel() > 0 and bool(
                r.isfinite().all() and a.isfinite().all() and b.isfinite().all())
        if not usable:
            self.compare(where, a, b, torch)
            return
        if self.check_dtype and a.dtype != b.dtype:
            self._fail(Mismatch(where, message=f"dtype {b.dtype} instead of {a.dtype}"))
            return
        self.compared += 1
        x, ya, yb = r.detach().cpu().double(), a.detach().cpu().double(), b.detach().cpu().double()
        diff = (ya - yb).abs()  # the two bf16 results against each other, as reported
        big = ya.abs() > self.tol.atol
        rel = float((diff[big] / ya.abs()[big]).max().item()) if bool(big.any()) else 0.0
        self.max_abs, self.max_rel = max(self.max_abs, float(diff.max().item())), max(self.max_rel, rel)
        self.bf16_ref_ratio = self.bf16_ref_ratio or 0.0
        if bool((diff <= self.tol.atol + self.tol.rtol * ya.abs()).all()):
            return  # within one layer's contract: nothing more to ask
        err_orig = float((ya - x).abs().max().item())
        err_new = float((yb - x).abs().max().item())
        floor = BF16_UNIT_ROUNDOFF * float(x.abs().max().item())
        bound = BF16_REFERENCE_FACTOR * err_orig + floor
        ratio = err_new / bound if bound > 0 else (0.0 if err_new == 0 else math.inf)
        self.bf16_ref_ratio = max(self.bf16_ref_ratio, ratio)
        if err_new > bound:
            self._fail(Mismatch(where, float(diff.max().item()), rel,
                                f"the rewrite's bf16 error against the float32 original is {err_new:.3g}, "
                                f"more than {BF16_REFERENCE_FACTOR:g} x the bf16 original's ({err_orig:.3g}) "
                                f"+ {floor:.3g} (2^-8 of the tensor's largest magnitude)"))

    def _fail(self, mismatch: Mismatch) -> None:
        if self.worst is None:
            self.worst = mismatch


# The bf16 check of a class run inside a containing model (`Built.via`): see
# `_compare_bf16_whole` and docs/verify.md ("bf16 across layers").
BF16_REFERENCE_FACTOR = 2.0
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def _unravel(i: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for dim in reversed(shape):
        out.append(i % dim if dim else 0)
        i = i // dim if dim else 0
    return list(reversed(out))


def _run(module: Any, inputs: dict[str, Any], seed: int, torch: Any) -> tuple[Any, dict[str, Any]]:
    """Forward (seeded) and backward of the sum of floating outputs."""
    args = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().clone().requires_grad_(True)
        elif isinstance(v, torch.Tensor):
            v = v.clone()
        args[k] = v
    torch.manual_seed(seed)
    out = call_module(module, args)
    flat: list[tuple[str, Any]] = []
    _flatten(out, "output", flat, torch)
    loss = None
    for _, t in flat:
        if t.is_floating_point() and t.requires_grad:
            loss = t.sum() if loss is None else loss + t.sum()
    if loss is not None:
        loss.backward()
    grads = {k: v.grad for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    return out, grads


def _param_grads_mapped(m0: Any, m1: Any, torch: Any,
                        dtype: Any = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(expected, actual) gradients of m1's parameters by state-dict name.

    The original's gradients are put in a state dict (buffers as they are)
    and loaded into a copy of m1 (in `dtype` when given, so float32
    gradients are not rounded to m1's bf16), so m1's own load hooks map them
    exactly as they map a checkpoint.  None when that copy cannot be made.
    """
    params0 = dict(m0.named_parameters(remove_duplicate=False))
    sd = {}
    for key, value in m0.state_dict(keep_vars=True).items():
        p = params0.get(key)
        if p is not None:
            sd[key] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        else:
            sd[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
    try:
        shadow = copy.deepcopy(m1)
        if dtype is not None:
            shadow.to(dtype)
        shadow.load_state_dict(sd, strict=True)
    except Exception:  # noqa: BLE001 - fall back to same-name comparison
        return None
    expected = {k: v for k, v in shadow.named_parameters(remove_duplicate=False)}
    actual = {k: (v.grad if v.grad is not None else torch.zeros_like(v))
              for k, v in m1.named_parameters(remove_duplicate=False)}
    return {k: v.detach() for k, v in expected.items()}, actual


def _perturb(module: Any, seed: int, torch: Any) -> None:
    """Make initial constants informative before the weights are copied.

    Freshly built models hold constant tensors (LayerNorm weight 1 / bias 0,
    zero Linear biases, BatchNorm running mean 0 / variance 1) under which a
    wrong parameter mapping or a dropped bias computes the same thing.
    1. Every parameter whose elements are all equal gets seeded noise (0.1 σ).
    2. BatchNorm running means get noise; running variances a factor in
       [0.5, 1.5].
    """
    gen = torch.Generator().manual_seed(seed + 99)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and p.numel() and bool((p == p.reshape(-1)[0]).all()):
                p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))
        for name, buf in module.named_buffers():
            if buf is None or not buf.is_floating_point():
                continue
            if name.endswith("running_mean"):
                buf.add_(0.1 * torch.randn(buf.shape, generator=gen).to(buf.dtype))
            elif name.endswith("running_var"):
                buf.mul_((0.5 + torch.rand(buf.shape, generator=gen)).to(buf.dtype))


def compare_built(built: Built, tol: Tolerance, seed: int, device: str, torch: Any) -> Tally:
    m0, m1 = built.original, built.rewritten
    tally = Tally(tol)
    _perturb(m0, seed, torch)
    try:
        missing, unexpected = m1.load_state_dict(m0.state_dict(), strict=False)
    except Exception as exc:  # noqa: BLE001 - size mismatches raise even when not strict
        raise ClassFail(f"checkpoint incompatible: the original's state_dict does not load "
                         f"strictly: {_compact_load_error(exc)}") from None
    if missing or unexpected:
        parts = [f"{len(keys)} {what} key(s) ({_some(keys)})"
                 for what, keys in (("unexpected", unexpected), ("missing", missing)) if keys]
        raise ClassFail("checkpoint incompatible: the original's state_dict does not load "
                         "strictly: " + "; ".join(parts))
    m0.to(device)
    m1.to(device)
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in built.inputs.items()}
    # Small activations make constants such as a LayerNorm eps visible (an
    # eps of 1e-5 for 1e-12 is within tolerance at unit scale); inputs with a
    # mean of 1 and a deviation of 2 (not standard normal) show a dropped
    # mean subtraction or shift, and larger scores.
    has_float = any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in inputs.values())
    runs = [("eval", 1.0, 0.0)] + ([("eval x0.01", 0.01, 0.0), ("eval 2x+1", 2.0, 1.0)] if has_float else [])
    runs += [("train", 1.0, 0.0)] if tol.deterministic else []
    for mode, scale, shift in runs:
        scaled = {k: (v * scale + shift if isinstance(v, torch.Tensor) and v.is_floating_point()
                      and (scale, shift) != (1.0, 0.0) else v)
                  for k, v in inputs.items()}
        _compare_run(m0, m1, scaled, mode, seed, torch, tally)
    tally.modes = tuple(mode for mode, _, _ in runs)
    if tol.bf16 is not None:
        _compare_bf16(m0, m1, inputs, seed, torch, tally, whole_model=bool(built.via))
    return tally


def _compare_bf16(m0: Any, m1: Any, inputs: dict[str, Any], seed: int, torch: Any, tally: Tally,
                  whole_model: bool = False) -> None:
    """The same eval run with both modules and the floating inputs in
    bfloat16, held to the rules' declared bf16 tolerance (a class compared
    alone), or, for a class run inside a containing model, to the original's
    own bf16 error (`_compare_bf16_whole`); a floating result in another
    dtype fails (a kernel that forgets to cast back)."""
    atol, rtol = tally.tol.bf16
    low = Tally(Tolerance(atol=atol, rtol=rtol), check_dtype=True)
    m0.to(torch.bfloat16)
    m1.to(torch.bfloat16)
    cast = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in inputs.items()}
    if whole_model:
        _compare_bf16_whole(m0, m1, cast, seed, torch, low)
    else:
        _compare_run(m0, m1, cast, "eval bf16", seed, torch, low)
    tally.compared += low.compared
    tally.nonfinite += low.nonfinite
    tally.bf16_max_abs, tally.bf16_max_rel = low.max_abs, low.max_rel
    tally.bf16_ref_ratio = low.bf16_ref_ratio
    if low.worst is not None:
        tally._fail(low.worst)
    tally.modes += ("eval bf16",)


def _compare_bf16_whole(m0: Any, m1: Any, cast: dict[str, Any], seed: int, torch: Any, low: Tally) -> None:
    """bf16 across layers, against a float32 reference.

    The rules' bf16 contract is measured on one layer: both bf16 results
    within atol + rtol * |original| of each other.  Through several layers
    (and in the gradients of an embedding that sums them) the rounding of
    each layer is amplified by the next ones, on both sides, so the two
    bf16 results drift apart by more than one layer's contract even when
    the rewrite is the more accurate of the two.  A tensor within the
    contract passes; beyond it, what must hold is that the rewrite loses
    no more precision than the original does: the tensor's largest error
    against the float32 original may be at most twice the bf16 original's,
    plus bf16's unit roundoff (2^-8) times the tensor's largest magnitude
    (the criterion of the FlashAttention tests, made relative to the
    tensor's scale).  The float32 original is the original with the same
    bf16-rounded weights, run in float32 on the same bf16-rounded inputs:
    `m0` itself taken back to float32 for that run (not a copy: a model
    can hold tensors deepcopy refuses).
    """
    mode = "eval bf16"
    wide = {k: (v.to(torch.float32) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in cast.items()}
    m0.to(torch.float32)
    m0.eval()
    m0.zero_grad(set_to_none=True)
    try:
        out, grads = _run(m0, wide, seed, torch)
        flat: list[tuple[str, Any]] = []
        _flatten(out, "output", flat, torch)
        truth = {f"{mode} {where}": t.detach() for where, t in flat}
        truth.update((f"{mode} grad input {k}", v) for k, v in grads.items())
        mapped = _param_grads_mapped(m0, m1, torch, torch.float32)
        params = (mapped[0] if mapped is not None else
                  {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in m0.named_parameters()})
        truth.update((f"{mode} grad param {k}", v.detach().clone()) for k, v in params.items())
    finally:
        m0.to(torch.bfloat16)
    for where, a, b in _pairs(m0, m1, cast, mode, seed, torch, low):
        low.compare_to_reference(where, truth.get(where), a, b, torch)


def _compare_run(m0: Any, m1: Any, inputs: dict[str, Any], mode: str, seed: int, torch: Any,
                 tally: Tally) -> None:
    """One forward and backward of both modules on the same inputs: outputs,
    input gradients and parameter gradients (through the load mapping)."""
    for where, a, b in _pairs(m0, m1, inputs, mode, seed, torch, tally):
        tally.compare(where, a, b, torch)


def _pairs(m0: Any, m1: Any, inputs: dict[str, Any], mode: str, seed: int, torch: Any,
           tally: Tally) -> list[tuple[str, Any, Any]]:
    """(where, expected, actual) for each output, input gradient and
    parameter gradient (by m1's state-dict names, through its load
    mapping); an output on one side only fails `tally`."""
    m0.train(mode == "train")
    m1.train(mode == "train")
    m0.zero_grad(set_to_none=True)
    m1.zero_grad(set_to_none=True)
    out0, g0 = _run(m0, inputs, seed, torch)
    try:
        out1, g1 = _run(m1, inputs, seed, torch)
    except Exception as exc:  # noqa: BLE001
        raise ClassFail(f"the rewritten forward/backward raises in {mode} mode: {one_line(exc)}") from None
    f0: list[tuple[str, Any]] = []
    f1: list[tuple[str, Any]] = []
    _flatten(out0, "output", f0, torch)
    _flatten(out1, "output", f1, torch)
    d1 = dict(f1)
    pairs = [(f"{mode} {where}", t0, d1.get(where)) for where, t0 in f0]
    for where, _ in f1:
        if where not in dict(f0):
            tally._fail(Mismatch(f"{mode} {where}", message="extra output"))
    pairs += [(f"{mode} grad input {k}", g0[k], g1.get(k)) for k in g0]
    mapped = _param_grads_mapped(m0, m1, torch)
    if mapped is None:
        p0 = dict(m0.named_parameters())
        mapped = ({k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in p0.items()},
                  {k: (v.grad if v.grad is not None else torch.zeros_like(v))
                   for k, v in m1.named_parameters() if k in p0})
    expected, actual = mapped
    pairs += [(f"{mode} grad param {k}", expected.get(k), actual[k]) for k in sorted(actual)]
    return pairs


def _some(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def _compact_load_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."
