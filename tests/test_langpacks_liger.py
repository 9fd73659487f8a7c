"""rulepacks/liger.adr: class items, guarded fallback, per-call dispatch.

The rewritten model must import, load the original checkpoint strictly and
compute the same numbers on a machine without liger-kernel (hidden here
with `sys.modules['liger_kernel'] = None` in a child process) and without
a GPU (this one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dslc.cli import main
from rewrite_support import KERNEL_PRELUDE, ROPE_SAME_OUTPUTS_AND_GRADS, run_without_liger

REPO = Path(__file__).resolve().parent.parent
LIGER = REPO / "rulepacks" / "liger.adr"
TINY = REPO / "tests" / "langpacks_models" / "liger_spellings.py"


def _apply(tmp_path: Path, src: Path, *extra: str) -> tuple[Path, dict]:
    target = tmp_path / "rewritten.py"
    shutil.copy(src, target)
    out = tmp_path / "report.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["apply", "--rules", str(LIGER), *extra, "--no-cache", "--jobs", "1", "--write",
                     "--format", "json", str(target)])
    assert code == 0
    out.write_text(buf.getvalue())
    return target, json.loads(buf.getvalue())


def _applied(report: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for m in report["matches"]:
        if m["status"] == "applied":
            found.setdefault(m["rule"], []).append(m["class"])
    return found


def test_classes_are_recognised_by_computation(tmp_path):
    rewritten, report = _apply(tmp_path, TINY)
    applied = _applied(report)
    assert applied == {
        "liger:rms_norm_fp32": ["ScaleNorm"],
        "liger:rms_norm": ["PlainRMS"],
        "liger:swiglu_mlp": ["GatedFF", "ActGatedFF"],
        "liger:geglu_mlp": ["TanhGatedFF"],
        "liger:layer_norm": ["ManualLayerNorm"],
        "liger:cross_entropy": ["TinyLM"],
        "liger:cross_entropy_loss": ["TinyLM"],
        "liger:layer_norm_call": ["TinyLM"],
    }
    text = rewritten.read_text()
    original = TINY.read_text()
    # near misses keep their code
    for cls in ("NotQuiteRMS", "BiasedGate"):
        start = original.index(f"class {cls}")
        end = original.index("\nclass ", start + 1)
        assert original[start:end] in text
    # the kernel imports are guarded
    assert "from liger_kernel" in text
    for line in text.splitlines():
        if line.startswith("from liger_kernel") or line.startswith("import liger_kernel"):
            pytest.fail(f"unguarded kernel import: {line}")


def test_second_apply_changes_nothing(tmp_path):
    rewritten, _ = _apply(tmp_path, TINY)
    first = rewritten.read_text()
    target = tmp_path / "again.py"
    target.write_text(first)
    code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(target)])
    assert code == 0 and target.read_text() == first


CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    sys.modules["liger_kernel"] = None      # the package is not installed here
    import torch

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    orig = load("orig", sys.argv[1])
    new = load("new", sys.argv[2])
    out = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        a = getattr(orig, sys.argv[3])().to(dtype)
        b = getattr(new, sys.argv[3])().to(dtype)
        b.load_state_dict(a.state_dict(), strict=True)
        args = eval(sys.argv[4])
        ra, rb = a(*args), b(*args)
        ra = ra if isinstance(ra, tuple) else (ra,)
        rb = rb if isinstance(rb, tuple) else (rb,)
        sum(x.float().pow(2).sum() for x in ra).backward()
        sum(x.float().pow(2).sum() for x in rb).backward()
        diff = max(float((x - y).abs().max()) for x, y in zip(ra, rb))
        gb = dict(b.named_parameters())
        gdiff = max(float((p.grad - gb[n].grad).abs().max()) for n, p in a.named_parameters() if p.grad is not None)
        out[str(dtype)] = [diff, gdiff, len(list(a.parameters()))]
    print(json.dumps(out))
""")


def _run_child(tmp_path: Path, original: Path, rewritten: Path, cls: str, args: str) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(original), str(rewritten), cls, args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_rewritten_model_without_liger_gives_the_same_numbers(tmp_path):
    rewritten, _ = _apply(tmp_path, TINY)
    args = "(torch.randint(0, 37, (3, 5)), torch.randint(0, 37, (3, 5)))"
    result = _run_child(tmp_path, TINY, rewritten, "TinyLM", args)
    for dtype, (out_diff, grad_diff, n_params) in result.items():
        assert n_params > 10
        assert out_diff <= 1e-4 and grad_diff <= 1e-4, (dtype, out_diff, grad_diff)


NAMED = textwrap.dedent("""
    from torch import nn
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm


    class Layer(nn.Module):
        def __init__(self, config=LlamaConfig(hidden_size=16, intermediate_size=24)):
            super().__init__()
            self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = LlamaMLP(config)

        def forward(self, x):
            return x + self.mlp(self.norm(x))
""")


def test_named_classes_are_chosen_per_construction(tmp_path):
    pytest.importorskip("transformers")
    src = tmp_path / "named.py"
    src.write_text(NAMED)
    rewritten, report = _apply(tmp_path, src)
    assert _applied(report) == {"liger:llama_rms_norm": ["Layer"], "liger:llama_mlp": ["Layer"]}
    text = rewritten.read_text()
    assert "torch.cuda.is_available()" in text and "LigerRMSNorm(" in text and "LigerSwiGLUMLP(" in text
    assert 'config.hidden_act in ("silu", "swish")' in text
    again = tmp_path / "again.py"
    again.write_text(text)
    assert main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(again)]) == 0
    assert again.read_text() == text
    result = _run_child(tmp_path, src, rewritten, "Layer", "(torch.randn(2, 3, 16) * 3 + 1,)")
    for dtype, (out_diff, grad_diff, _) in result.items():
        assert out_diff <= 1e-4 and grad_diff <= 1e-4, (dtype, out_diff, grad_diff)


def test_per_call_dispatch_is_a_helper_that_evaluates_arguments_once(tmp_path):
    src = tmp_path / "ce.py"
    src.write_text(textwrap.dedent("""
        import torch
        import torch.nn.functional as F


        def loss(logits, labels):
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    """))
    target, report = _apply(tmp_path, src)
    (m,) = [m for m in report["matches"] if m["rule"] == "liger:cross_entropy"]
    assert m["status"] == "applied"
    text = target.read_text()
    assert "return _dslc_liger_cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))" in text
    assert "def _dslc_liger_cross_entropy(x, y):" in text and "return F.cross_entropy(x, y)" in text
    # the original call inside the helper is not rewritten again
    code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(target)])
    assert code == 0 and target.read_text() == text
    # without liger: the same loss as the original function
    proc = run_without_liger(tmp_path, f"""
        a, b = load("a", {str(src)!r}), load("b", {str(target)!r})
        torch.manual_seed(0)
        logits, labels = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
        assert torch.equal(a.loss(logits, labels), b.loss(logits, labels))
        assert b.liger_cross_entropy is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _liger_names(module: str) -> set[str]:
    """Names a liger_kernel module defines or re-exports, read from its source (no import: Triton may be absent)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("liger_kernel")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("liger-kernel is not installed")
    base = Path(list(spec.submodule_search_locations)[0]).parent
    path = base.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def test_kernel_names_exist_in_the_installed_liger_kernel():
    from dslc.lang.loader import load_rules

    (pack,) = load_rules([str(LIGER)]).packs
    targets = set()
    for rule in pack.rules:
        targets.update(rule.kernels)
        for item in (rule.init, rule.forward):
            for pn in (item.target or ()) if item is not None else ():
                if pn.callee is not None and pn.callee.qualname and pn.callee.qualname.startswith("liger_kernel."):
                    targets.add(pn.callee.qualname)
        for pn in (rule.klass.target or ()) if rule.klass is not None else ():
            if pn.callee is not None and pn.callee.qualname and pn.callee.qualname.startswith("liger_kernel."):
                targets.add(pn.callee.qualname)
    assert len(targets) >= 8
    for qual in sorted(targets):
        module, name = qual.rsplit(".", 1)
        assert name in _liger_names(module), qual


KERNEL_PATH = KERNEL_PRELUDE + textwrap.dedent("""
    import json
    import torch
    import torch.nn.functional as F

    # Reference implementations of the Liger functions the rules call, as
    # Liger documents them; each records its calls.
    calls = {}

    def record(name, fn):
        def wrapped(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)
        return wrapped

    def rms_norm(X, W, eps, offset=0.0, casting_mode="llama", in_place=True):
        assert casting_mode == "llama" and offset == 0.0
        Xf = X.float()
        return (Xf * torch.rsqrt(Xf.pow(2).mean(-1, keepdim=True) + eps)).to(X.dtype) * W

    fake_liger(
        liger_rms_norm=record("rms_norm", rms_norm),
        liger_swiglu=record("swiglu", lambda a, b: F.silu(a) * b),
        liger_geglu=record("geglu", lambda a, b: F.gelu(a, approximate="tanh") * b),
        liger_layer_norm=record("layer_norm", lambda X, W, B, eps: F.layer_norm(X, (X.shape[-1],), W, B, eps)),
        liger_cross_entropy=record("cross_entropy", lambda x, y, **k: F.cross_entropy(x, y, **k)),
    )

    orig, new = load("orig", sys.argv[1]), load("new", sys.argv[2])
    torch.manual_seed(0)
    a = orig.TinyLM().double()
    b = new.TinyLM().double()
    b.load_state_dict(a.state_dict(), strict=True)
    ids, labels = torch.randint(0, 37, (3, 5)), torch.randint(0, 37, (3, 5))
    la, lossa = a(ids, labels)
    lb, lossb = b(ids.as_subclass(FakeCuda), labels.as_subclass(FakeCuda))
    (la.pow(2).sum() + lossa).backward()
    (lb.pow(2).sum() + lossb).backward()
    gb = dict(b.named_parameters())
    grad = max(float((p.grad - gb[n].grad).abs().max()) for n, p in a.named_parameters())
    print(json.dumps({"calls": calls, "out": float((la - lb.as_subclass(torch.Tensor)).abs().max()),
                      "loss": abs(float(lossa - lossb)), "grad": grad}))
""")


def test_kernel_path_passes_the_right_arguments(tmp_path):
    """With reference kernels behind the guarded names and tensors that say
    they are on CUDA, the rewritten model takes every kernel path and still
    computes what the original does: the rules wire the right tensors,
    weights and eps into the Liger API."""
    rewritten, _ = _apply(tmp_path, TINY)
    script = tmp_path / "kernel_path.py"
    script.write_text(KERNEL_PATH)
    proc = subprocess.run([sys.executable, str(script), str(TINY), str(rewritten)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["calls"]) == {"rms_norm", "swiglu", "geglu", "layer_norm", "cross_entropy"}, result
    # float64 model; Liger's llama casting mode (as the reference) computes the
    # norm in float32, so the rules' fp32 tolerance bounds the difference
    assert result["out"] <= 1e-5 and result["loss"] <= 1e-5 and result["grad"] <= 1e-5, result


def test_two_calls_in_one_statement_and_a_second_run(tmp_path):
    src = tmp_path / "ln.py"
    src.write_text(textwrap.dedent("""
        import torch
        from torch import nn


        class Block(nn.Module):
            def __init__(self, h, post):
                super().__init__()
                self.norm = nn.LayerNorm(h)
                self.mlp = nn.Linear(h, h)
                self.post = post

            def forward(self, x):
                return self.norm(self.mlp(x)) if self.post else self.mlp(self.norm(x))
    """))
    target, report = _apply(tmp_path, src)
    assert [m["status"] for m in report["matches"]] == ["applied", "applied"]
    text = target.read_text()
    assert text.count("_dslc_liger_layer_norm_call(self.norm, ") == 2
    assert text.count("def _dslc_liger_layer_norm_call") == 1
    code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(target)])
    assert code == 0 and target.read_text() == text


_ROPE_438 = '''
import torch


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """transformers >= 4.38 (Llama): cos/sin already gathered; position_ids unused."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
'''

_ROPE_MODEL = '''
import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.k_proj = nn.Linear(16, 8)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, 4, 4).transpose(1, 2)
        k = self.k_proj(x).view(b, s, 2, 4).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k
'''


def _fake_transformers(tmp_path: Path, arch: str = "llama") -> Path:
    """A `transformers.models.<arch>.modeling_<arch>` with the 4.38 function (the installed 4.35 one needs position_ids)."""
    root = tmp_path / "fake"
    pkg = root / "transformers" / "models" / arch
    pkg.mkdir(parents=True)
    for d in (root / "transformers", root / "transformers" / "models", pkg):
        (d / "__init__.py").write_text("")
    (pkg / f"modeling_{arch}.py").write_text(_ROPE_438)
    return root


@pytest.mark.parametrize("arch, rule", [("llama", "rotary_pos_emb"), ("mistral", "mistral_rotary_pos_emb"),
                                        ("qwen2", "qwen2_rotary_pos_emb")])
def test_rotary_call_gets_a_guarded_dispatch_with_the_same_numbers(tmp_path, arch, rule):
    src = tmp_path / "rope.py"
    src.write_text(_ROPE_MODEL.replace("models.llama.modeling_llama", f"models.{arch}.modeling_{arch}"))
    target, report = _apply(tmp_path, src)
    assert [(m["rule"], m["status"]) for m in report["matches"]] == [(f"liger:{rule}", "applied")]
    text = target.read_text()
    assert "        q, k = _dslc_liger_{}(q, k, cos, sin)\n".format(rule) in text
    assert "def _dslc_liger_{}(q, k, cos, sin):".format(rule) in text
    assert "return liger_rotary_pos_emb(q, k, cos, sin)" in text and "q.is_cuda" in text
    assert "return apply_rotary_pos_emb(q, k, cos, sin)" in text
    # a second run changes nothing
    assert main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(target)]) == 0
    assert target.read_text() == text
    # without liger-kernel, on CPU: the same outputs and gradients as the original
    fake = _fake_transformers(tmp_path, arch)
    proc = run_without_liger(tmp_path, textwrap.dedent(f"""
        a, b = load("a", {str(src)!r}), load("b", {str(target)!r})
        assert b.liger_rotary_pos_emb is None
        torch.manual_seed(0)
        ma = a.Attn()
        mb = b.Attn()
    """) + ROPE_SAME_OUTPUTS_AND_GRADS, sys_path=fake)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_rotary_calls_of_other_forms_are_not_rewritten(tmp_path):
    """The 4.35 form gathers cos/sin by position_ids inside the function; another unsqueeze_dim is another layout."""
    src = tmp_path / "rope_old.py"
    src.write_text(textwrap.dedent("""
        from torch import nn
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


        class Attn435(nn.Module):
            def forward(self, q, k, cos, sin, position_ids):
                q, k = apply_rotary_pos_emb(q, k, cos, sin, position_ids)
                return q, k


        class AttnOtherLayout(nn.Module):
            def forward(self, q, k, cos, sin):
                q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
                return q, k


        def rotate(q, k, cos, sin, apply_rotary_pos_emb):
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            return q, k
    """))
    before = src.read_bytes()
    target, report = _apply(tmp_path, src)
    assert [m for m in report["matches"] if m["status"] == "applied"] == []
    assert target.read_bytes() == before


def test_rotary_call_inside_the_modeling_module_itself_keeps_its_own_name(tmp_path):
    """In transformers' modeling_llama.py the function is the module's own: the fallback calls it by its name (no self-import)."""
    fake = _fake_transformers(tmp_path)
    src = fake / "transformers" / "models" / "llama" / "modeling_llama.py"
    model = _ROPE_MODEL.replace("from transformers.models.llama.modeling_llama import apply_rotary_pos_emb\n", "")
    src.write_text(_ROPE_438 + model)
    original = tmp_path / "original.py"
    shutil.copy(src, original)
    code = main(["apply", "--rules", str(LIGER), "--no-cache", "--jobs", "1", "-q", "--write", str(src)])
    assert code == 0
    text = src.read_text()
    assert "import transformers" not in text
    assert "    return apply_rotary_pos_emb(q, k, cos, sin)\n" in text
    assert "        q, k = _dslc_liger_rotary_pos_emb(q, k, cos, sin)\n" in text
    proc = run_without_liger(tmp_path, f"""
        a, b = load("a", {str(original)!r}), load("b", {str(src)!r})
        torch.manual_seed(0)
        ma, mb = a.Attn(), b.Attn()
        mb.load_state_dict(ma.state_dict(), strict=True)
        x = torch.randn(2, 5, 16)
        ang = torch.rand(2, 5, 2) * 3
        cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
        (qa, ka), (qb, kb) = ma(x, cos, sin), mb(x, cos, sin)
        assert torch.equal(qa, qb) and torch.equal(ka, kb)
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
