"""SDPA on the CPU with an additive float mask that needs a gradient (issue 10).

    python benchmarks/sdpa_cpu_mask.py [--shape B,H,L,D] [--rounds N] [--calls N]
    python benchmarks/sdpa_cpu_mask.py --model t5 [--rounds N] [--calls N]

T5's rewritten attention passes its position bias (a learned embedding plus
the padding/causal mask) as SDPA's `attn_mask`; in training that mask
requires a gradient.  This script times one attention call, forward and
backward, in one process, the variants interleaved, CPU seconds, one thread:

* `eager`: T5's chain (q k^T, += mask, softmax in float32, @ v);
* `sdpa, mask with grad`: the rewrite as emitted (the mask requires grad);
* `sdpa, mask without grad`: the same call with a mask that needs none (what
  T5's cross-attention gets: zeros + the padding mask);

and prints which kernel PyTorch picked for each SDPA variant (the profiler's
aten op names), plus the cost of `isneginf(scores).all(-1)` and of a softmax
on scores of that shape (the math kernel's `_safe_softmax` runs both).

`--model t5`: the whole training step instead, T5-small at train_speed.py's
`--small` config, eager and rewritten by sdpa.adr (train_speed's own build,
its batches, AdamW), both models in this one process, `--calls` steps per
round, the two interleaved round by round (on a loaded machine a load
change then hits both alike); CPU seconds per step and their ratio, and
the SDPA kernels one rewritten step runs.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8,4,64,32", help="batch, heads, tokens, head dim (train_speed --small: 8,4,64,32)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--model", choices=("t5",), help="time a whole training step of this model instead")
    args = ap.parse_args(argv)
    if args.model:
        return _model(args.model, args.rounds, args.calls)
    import torch
    import torch.nn.functional as F
    from torch.profiler import profile

    torch.set_num_threads(1)
    torch.manual_seed(0)
    b, h, n, d = (int(x) for x in args.shape.split(","))
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    bias = torch.randn(b, h, n, n, requires_grad=True)
    grad = torch.randn(b, h, n, d)

    def eager():
        scores = torch.matmul(q, k.transpose(3, 2))
        scores += bias
        return torch.matmul(F.softmax(scores.float(), dim=-1).type_as(scores), v)

    def sdpa_grad():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)

    def sdpa_nograd():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.detach(), scale=1.0)

    variants = {"eager": eager, "sdpa, mask with grad": sdpa_grad, "sdpa, mask without grad": sdpa_nograd}
    ref = eager()
    for name, fn in variants.items():
        torch.testing.assert_close(fn(), ref, atol=1e-5, rtol=1e-5)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t = time.process_time()
            for _ in range(args.calls):
                fn().backward(grad)
            times[name].append((time.process_time() - t) / args.calls * 1e3)
    base = statistics.median(times["eager"])
    print(f"shape {b},{h},{n},{d}; torch {torch.__version__}; {args.rounds} rounds x {args.calls} calls, CPU ms per call")
    for name, fn in variants.items():
        kernels = ""
        if name != "eager":
            with profile() as prof:
                fn().backward(grad)
            kernels = ", ".join(sorted({e.key for e in prof.key_averages() if "scaled_dot_product_" in e.key
                                        and not e.key.endswith("_backward") and e.key != "aten::scaled_dot_product_attention"}))
        med = statistics.median(times[name])
        print(f"{name:24} median {med:7.3f}  min {min(times[name]):7.3f}  x{med / base:5.2f}  {kernels}")
    scores = torch.randn(b, h, n, n)
    for label, fn in (("isneginf(s).all(-1)", lambda: torch.isneginf(scores).all(dim=-1, keepdim=True)),
                      ("softmax(s, -1)", lambda: torch.softmax(scores, dim=-1))):
        t = time.process_time()
        for _ in range(args.calls * 4):
            fn()
        print(f"{label:24} {(time.process_time() - t) / (args.calls * 4) * 1e3:7.3f} ms")
    return 0


def _model(name: str, rounds: int, calls: int) -> int:
    import os
    import sys
    import tempfile
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_speed

    torch.set_num_threads(1)
    text, n = train_speed._rewrite(train_speed._source_path(name), ["sdpa"])
    saved = Path(tempfile.mkdtemp()) / f"{name}_sdpa.py"
    saved.write_text(text)
    os.environ.update(DSLC_BENCH_SRC=str(saved), DSLC_BENCH_REWRITES=str(n))  # what _build reads
    steps = {}
    for variant in ("eager", "dslc:sdpa"):
        torch.manual_seed(0)
        model, batch, n, loss_of = train_speed._build(name, variant, True, "cpu")
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        batches = [batch(g) for _ in range(4)]

        def step(i, model=model, opt=opt, batches=batches, loss_of=loss_of):
            loss_of(model(**batches[i % len(batches)])).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for i in range(3):
            step(i)
        steps[variant] = (step, n)
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(rounds):
        for variant, (step, _) in steps.items():
            t = time.process_time()
            for i in range(calls):
                step(i)
            times[variant].append((time.process_time() - t) / calls * 1e3)
    from torch.profiler import profile

    with profile() as prof:
        steps["dslc:sdpa"][0](0)
    kernels = {e.key.removeprefix("aten::"): e.count for e in prof.key_averages()
               if e.key.startswith("aten::_scaled_dot_product_") and not e.key.endswith("_backward")}
    base = statistics.median(times["eager"])
    print(f"{name} --small, one thread; {rounds} rounds x {calls} steps, CPU ms per training step")
    print(f"SDPA kernels in one step of dslc:sdpa: {kernels}")
    for variant, t in times.items():
        med = statistics.median(t)
        print(f"{variant:10} rewrites {steps[variant][1]}  median {med:8.1f}  x{med / base:5.3f}  "
              f"rounds {' '.join(f'{x:.0f}' for x in t)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
