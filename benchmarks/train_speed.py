"""Training speed of dslc-rewritten models (paper Fig. 6; issue 10, item 8).

    python benchmarks/train_speed.py --device cpu --small [--models bert,gpt2,...]
                                     [--packs sdpa,liger] [--compile] [--out DIR]

Models: BERT-base, GPT-2, T5-small, ViT-base and a Llama-style model (their
configs from the installed transformers, 4.35.0 in the test extra, built from
the config without weights: no hub download; the Llama-style model has about
1B parameters on a GPU and is small on the CPU), plus examples/tiny_llm.py.
`--small` shrinks every config (hidden 128, 2 layers, 4 heads, sequence 64).

Variants per model: `eager` (the source as it is), `dslc:<pack>` for each
pack in rulepacks/ that exists (sdpa, liger) and `dslc:all` (every pack
together): the modeling file is rewritten with `dslc apply` and the model
built from the rewritten module; `compile` (torch.compile of eager; with
`--compile`, default on CUDA only); `liger` (Liger's own
apply_liger_kernel_to_llama, Llama on CUDA with liger-kernel installed only).

Per variant, in a child process (so peak memory is its own): AdamW, random
batches (seeded, the same for every variant), dropout off (so the losses of
variants are comparable), 3 warm-up steps, then one timed run of 20 steps;
3 such children per variant, interleaved across variants (run 1 of each
variant, then run 2, ...); reported: median samples/s of the 3 runs, peak memory (CUDA: max_memory_allocated; CPU:
the child's peak resident set size), the loss after the last step and its
difference from eager's, and how many rewrites dslc made.  A table (stdout and
OUT/train_speed.md), JSON, and OUT/train_speed.png when matplotlib is
installed (else a note).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = ("bert", "gpt2", "t5", "vit", "llama", "tiny_llm")
STEPS, RUNS, WARMUP = 20, 3, 3


def _config(name: str, small: bool, device: str):
    import transformers as tf

    if name == "bert":
        cfg = tf.BertConfig()
    elif name == "gpt2":
        cfg = tf.GPT2Config()
    elif name == "t5":
        cfg = tf.T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64,  # t5-small
                          decoder_start_token_id=0, pad_token_id=0)
    elif name == "vit":
        cfg = tf.ViTConfig()
    elif name == "llama":
        # ~1B parameters (TinyLlama-1.1B's shape) on a GPU
        cfg = tf.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
    else:
        raise ValueError(name)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop",
                "attn_pdrop", "dropout_rate", "attention_dropout"):
        if hasattr(cfg, key):
            setattr(cfg, key, 0.0)
    if small or device == "cpu":
        for key, value in dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                               n_embd=128, n_layer=2, n_head=4, d_model=128, d_ff=256, num_layers=2, num_heads=4,
                               d_kv=32, num_key_value_heads=4, vocab_size=1000, image_size=64, patch_size=8).items():
            if hasattr(cfg, key):
                setattr(cfg, key, value)
    return cfg


def _rewrite(path: Path, packs: list[str]) -> tuple[str, int]:
    """The rewritten source of `path` with `packs` and the number of rewrites.

    The parent process rewrites and hands the text to the child through
    DSLC_BENCH_SRC / DSLC_BENCH_REWRITES, so dslc is never loaded in the
    measured process (its memory would count in the peak)."""
    if os.environ.get("DSLC_BENCH_SRC"):
        return Path(os.environ["DSLC_BENCH_SRC"]).read_text(), int(os.environ["DSLC_BENCH_REWRITES"])
    from dslc.apply.driver import ApplyOptions, apply_paths
    from dslc.lang.loader import load_rules

    loaded = load_rules([str(REPO / "rulepacks" / f"{p}.adr") for p in packs])
    report = apply_paths([str(path)], loaded.packs, ApplyOptions(mode="diff", jobs=1, gitignore=False))
    res = report.files[0]
    n = sum(1 for m in res.matches if m.status == "applied")
    return (res.new_source if res.changed else res.original), n


def _load(source: str, path: Path, module: str | None):
    """Load `source` as the module at `path` (a sibling of its package)."""
    name = (module or path.stem) + "_dslc_bench"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = str(path)
    if module:
        mod.__package__ = module.rsplit(".", 1)[0]
    sys.modules[name] = mod
    exec(compile(source, str(path), "exec"), mod.__dict__)
    return mod


def _build(name: str, variant: str, small: bool, device: str):
    """(model, batch function, rewrites)."""
    import torch

    packs = [] if variant in ("eager", "compile", "liger") else (
        _all_packs() if variant == "dslc:all" else [variant.split(":", 1)[1]])
    if name == "tiny_llm":
        path = REPO / "examples" / "tiny_llm.py"
        source, n = _rewrite(path, packs) if packs else (path.read_text(), 0)
        mod = _load(source, path, None)
        cfg = mod.TinyConfig()
        cfg.attention_dropout = 0.0
        if not small and device == "cuda":
            cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 1024, 2816, 8
            cfg.num_attention_heads, cfg.vocab_size, cfg.max_position_embeddings = 16, 32000, 512
        model = mod.TinyLM(cfg)
        seq = 64 if small or device == "cpu" else 512

        def batch(g):
            ids = torch.randint(0, cfg.vocab_size, (8, seq), generator=g)
            return {"input_ids": ids, "labels": ids}
        return model, batch, n, lambda out: out[1]
    import transformers

    modname = {"bert": "bert", "gpt2": "gpt2", "t5": "t5", "vit": "vit", "llama": "llama"}[name]
    module = f"transformers.models.{modname}.modeling_{modname}"
    path = Path(importlib.import_module(module).__file__)
    source, n = _rewrite(path, packs) if packs else (path.read_text(), 0)
    mod = _load(source, path, module)
    cfg = _config(name, small, device)
    if hasattr(cfg, "_attn_implementation"):
        cfg._attn_implementation = "eager"
    cls = {"bert": "BertForMaskedLM", "gpt2": "GPT2LMHeadModel", "t5": "T5ForConditionalGeneration",
           "vit": "ViTForImageClassification", "llama": "LlamaForCausalLM"}[name]
    model = getattr(mod, cls)(cfg)
    if variant == "liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama  # GPU only

        apply_liger_kernel_to_llama(model=model)
    seq = 64 if small or device == "cpu" else 512
    bs = 8
    vocab = getattr(cfg, "vocab_size", 1000)

    def batch(g):
        if name == "vit":
            return {"pixel_values": torch.randn(bs, 3, cfg.image_size, cfg.image_size, generator=g),
                    "labels": torch.randint(0, 2, (bs,), generator=g)}
        ids = torch.randint(0, vocab, (bs, seq), generator=g)
        if name == "t5":
            return {"input_ids": ids, "labels": ids}
        return {"input_ids": ids, "labels": ids}
    return model, batch, n, lambda out: out.loss


def _source_path(name: str) -> Path:
    if name == "tiny_llm":
        return REPO / "examples" / "tiny_llm.py"
    spec = importlib.util.find_spec(f"transformers.models.{name}.modeling_{name}")
    return Path(spec.origin)


def _all_packs() -> list[str]:
    return [p for p in ("sdpa", "liger") if (REPO / "rulepacks" / f"{p}.adr").exists()]


def child(name: str, variant: str, small: bool, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    model, batch, n, loss_of = _build(name, variant, small, device)
    model.to(device).train()
    if variant == "compile":
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    batches = [{k: v.to(device) for k, v in batch(g).items()} for _ in range(4)]
    bs = next(iter(batches[0].values())).shape[0]

    def step(i):
        out = model(**batches[i % len(batches)])
        loss = loss_of(out)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for i in range(WARMUP):
        step(i)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    loss = None
    for _ in range(int(os.environ.get("DSLC_BENCH_RUNS", RUNS))):
        sync()
        t = time.perf_counter()
        for i in range(STEPS):
            loss = step(i)
        sync()
        rates.append(STEPS * bs / (time.perf_counter() - t))
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": name, "variant": variant, "samples_per_s": statistics.median(rates), "rates": rates,
            "peak_mb": peak / 2**20, "loss": float(loss), "rewrites": n,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--packs", default=None, help="packs for dslc:<pack> rows (default: those in rulepacks/)")
    ap.add_argument("--compile", action="store_true", default=None, help="add torch.compile rows (default: CUDA only)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per child (the machine is shared)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child[0], args.child[1], args.small, args.device)))
        return 0
    packs = args.packs.split(",") if args.packs else _all_packs()
    do_compile = args.compile if args.compile is not None else args.device == "cuda"
    rows = []
    for name in args.models.split(","):
        variants = ["eager"] + [f"dslc:{p}" for p in packs] + (["dslc:all"] if len(packs) > 1 else [])
        if do_compile:
            variants.append("compile")
        if name == "llama" and args.device == "cuda" and importlib.util.find_spec("liger_kernel"):
            variants.append("liger")
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        # interleaved: run 1 of every variant, then run 2, ... (a load change on
        # the machine then hits every variant alike); one timed run per child
        for _ in range(RUNS):
            for variant in variants:
                if runs[variant] and "error" in runs[variant][-1]:
                    continue
                runs[variant].append(_one(name, variant, args))
        for variant in variants:
            done = [r for r in runs[variant] if "error" not in r]
            if not done:
                rows.append(runs[variant][-1])
                continue
            row = dict(done[0])
            row["rates"] = [r["samples_per_s"] for r in done]
            row["samples_per_s"] = statistics.median(row["rates"])
            row["peak_mb"] = max(r["peak_mb"] for r in done)
            row["losses"] = sorted({r["loss"] for r in done})
            rows.append(row)
            print(f"{name:9} {variant:11} {row['samples_per_s']:9.1f} samples/s (runs {', '.join(f'{x:.1f}' for x in row['rates'])})"
                  f"  peak {row['peak_mb']:8.1f} MB  loss {row['loss']:.5f}  rewrites {row['rewrites']}", file=sys.stderr)
    table = render(rows, args)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_speed_{args.device}.md").write_text(table)
    (out / f"train_speed_{args.device}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / f"train_speed_{args.device}.png")
    return 0


def _one(name: str, variant: str, args) -> dict:
    """One child process: warm-up, then one timed run of STEPS steps."""
    cmd = [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads),
           "--child", name, variant] + (["--small"] if args.small else [])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("DSLC_BENCH_SRC", None)
    if variant.startswith("dslc:"):
        vpacks = _all_packs() if variant == "dslc:all" else [variant.split(":", 1)[1]]
        src_path = _source_path(name)
        text, n = _rewrite(src_path, vpacks)
        saved = Path(args.out) / "src" / f"{name}_{variant.replace(':', '_')}.py"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(text)
        env.update(DSLC_BENCH_SRC=str(saved), DSLC_BENCH_REWRITES=str(n))
    env["DSLC_BENCH_RUNS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{name:9} {variant:11} failed: {why}", file=sys.stderr)
        return {"model": name, "variant": variant, "error": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(rows: list[dict], args) -> str:
    eager = {r["model"]: r for r in rows if r["variant"] == "eager" and "error" not in r}
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"python {platform.python_version()}; device {args.device}; small={args.small}; "
             f"threads per run {args.threads}; {RUNS} runs x {STEPS} steps after {WARMUP} warm-up",
             "",
             "| model | variant | rewrites | samples/s | vs eager | peak MB | vs eager | loss | loss - eager |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | | failed: {r['error'][:80]} | | | | | |")
            continue
        e = eager.get(r["model"])
        speed = f"{(r['samples_per_s'] / e['samples_per_s'] - 1) * 100:+.1f} %" if e else ""
        mem = f"{(r['peak_mb'] / e['peak_mb'] - 1) * 100:+.1f} %" if e else ""
        dloss = f"{r['loss'] - e['loss']:+.2e}" if e else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['rewrites']} | {r['samples_per_s']:.1f} | {speed} | "
                     f"{r['peak_mb']:.0f} | {mem} | {r['loss']:.5f} | {dloss} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed; no plot written ({path.name})", file=sys.stderr)
        return
    ok = [r for r in rows if "error" not in r]
    models = list(dict.fromkeys(r["model"] for r in ok))
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs, ys = [], []
        for i, m in enumerate(models):
            r = next((r for r in ok if r["model"] == m and r["variant"] == v), None)
            e = next((r for r in ok if r["model"] == m and r["variant"] == "eager"), None)
            if r and e:
                xs.append(i + j * width)
                ys.append(r["samples_per_s"] / e["samples_per_s"])
        ax.bar(xs, ys, width, label=v)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models)
    ax.set_ylabel("training samples/s relative to eager")
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
