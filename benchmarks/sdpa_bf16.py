"""The bf16 tolerance of rulepacks/sdpa.adr, measured (issue 10, items 2 and 6).

    python benchmarks/sdpa_bf16.py [--seeds N] [--widths 16,32] [--json FILE]

`dslc verify` runs a bf16 pass for a class when every rule behind it declares
a bf16 tolerance: both modules cast to bfloat16, the same (eval) inputs, the
outputs, input gradients and every parameter gradient compared elementwise,
|rewrite - original| <= atol + rtol * |original|.  This script builds what
that pass compares for an attention layer rewritten by the sdpa pack: a
Linear q/k/v projection, heads, the eager chain (scale, an additive mask:
none, causal or padding, softmax with or without the float32 upcast, @ v) or
SDPA in its place, an output projection; x ~ N(0, 1) of shape
(2, tokens, width) as verify synthesises it; the weights of PyTorch's default
init; backward of the sum of the outputs.

It prints, over every (width, heads, tokens, mask, upcast, seed):
* the smallest atol that holds with rtol = 1.6e-2 (torch.testing.assert_close's
  bf16 rtol), per module (the worst of its tensors): max, p99, median;
* the max |difference| and the largest magnitude of the tensors where it is
  needed (the errors scale with the tensor's largest magnitude: eager rounds
  the scores, the probabilities and each product to bf16, SDPA accumulates in
  float32);
* how many of three planted bugs in the rewrite (the scale doubled, halved,
  left out) the bf16 comparison catches at the pack's declared tolerance.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rulepacks"))
from gen_sdpa import BF16_ATOL, BF16_RTOL  # noqa: E402


def _attention(torch, width: int, heads: int, tokens: int, mask: str, upcast: bool, scale_factor):
    """One attention layer; `scale_factor` None runs the eager chain, a number
    runs SDPA with its scale multiplied by it (1.0: the correct rewrite)."""
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)
            self.register_buffer("tril", torch.tril(torch.ones(tokens, tokens, dtype=torch.bool)))

        def forward(self, x):
            b, n, _ = x.shape
            d = width // heads
            q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
            m = None
            if mask == "causal":
                m = torch.zeros(n, n, dtype=x.dtype).masked_fill(~self.tril[:n, :n], torch.finfo(x.dtype).min)
            elif mask == "padding":
                keep = torch.ones(b, 1, 1, n, dtype=torch.bool)
                keep[0, ..., n // 2:] = False
                m = torch.zeros(b, 1, 1, n, dtype=x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)
            if scale_factor is not None:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale_factor / math.sqrt(d))
            else:
                s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
                if m is not None:
                    s = s + m
                p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) if upcast else F.softmax(s, dim=-1)
                out = torch.matmul(p, v)
            return self.proj(out.transpose(1, 2).reshape(b, n, width))

    return Attention()


def _run(torch, module, x) -> dict:
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.sum().backward()
    return {"output": y.detach(), "input grad": x.grad, **{n: p.grad for n, p in module.named_parameters()}}


def measure(widths: list[int], seeds: int) -> dict:
    import torch

    need, big, planted = [], [], {"scale x2": 0, "scale x0.5": 0, "no scale": 0}
    cases = 0
    for width, tokens, mask, upcast, seed in itertools.product(widths, (4, 8, 16), ("none", "causal", "padding"),
                                                               (False, True), range(seeds)):
        heads = 2 if width <= 16 else 4
        torch.manual_seed(seed)
        eager = _attention(torch, width, heads, tokens, mask, upcast, None)
        state = eager.state_dict()
        x = torch.randn(2, tokens, width).to(torch.bfloat16)
        ref = _run(torch, eager.to(torch.bfloat16), x)

        def sdpa(factor):
            m = _attention(torch, width, heads, tokens, mask, upcast, factor)
            m.load_state_dict(state)
            return _run(torch, m.to(torch.bfloat16), x)

        got = sdpa(1.0)
        worst = 0.0
        for key, a in ref.items():
            a, b = a.double(), got[key].double()
            worst = max(worst, float(((a - b).abs() - BF16_RTOL * a.abs()).clamp(min=0).max()))
            big.append((float((a - b).abs().max()), float(a.abs().max())))
        need.append(worst)
        cases += 1
        for bug, factor in (("scale x2", 2.0), ("scale x0.5", 0.5), ("no scale", math.sqrt(width // heads))):
            bad = sdpa(factor)
            if any(not bool(((a.double() - bad[k].double()).abs() <= BF16_ATOL + BF16_RTOL * a.double().abs()).all())
                   for k, a in ref.items()):
                planted[bug] += 1
    need.sort()
    return {"cases": cases, "widths": widths, "declared": {"atol": BF16_ATOL, "rtol": BF16_RTOL},
            "atol_needed": {"max": need[-1], "p99": need[int(0.99 * (len(need) - 1))], "median": need[len(need) // 2]},
            "max_abs_diff": max(d for d, _ in big), "max_magnitude": max(m for _, m in big),
            "max_diff_over_magnitude": max(d / m for d, m in big if m > 0),
            "planted_bugs_caught": planted}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--widths", default="16,32", help="layer widths (verify's tiny configs: 32 for transformers)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    res = measure([int(w) for w in args.widths.split(",")], args.seeds)
    n = res["atol_needed"]
    print(f"{res['cases']} attention layers (widths {res['widths']}), bf16 eager vs bf16 SDPA, "
          f"outputs + input and parameter gradients")
    print(f"atol needed with rtol={BF16_RTOL:g}: max {n['max']:.3g}, p99 {n['p99']:.3g}, median {n['median']:.3g}"
          f" (declared: atol={BF16_ATOL:g})")
    print(f"max |diff| {res['max_abs_diff']:.3g}; largest magnitude {res['max_magnitude']:.3g}; "
          f"max |diff| / tensor's max magnitude {res['max_diff_over_magnitude']:.3g}")
    for bug, caught in res["planted_bugs_caught"].items():
        print(f"planted bug `{bug}`: caught by the bf16 comparison in {caught}/{res['cases']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
