"""The result is the same whether torch can be imported or not (issue §2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SNIPPET = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.modules.linear import Linear
    from torch.nn import LayerNorm as LN
    Norm = nn.BatchNorm1d

    class M(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.lin = Linear(h, h)
            self.ln = LN(h, eps=1e-5)
            self.bn = Norm(h)
            self.conv = torch.nn.modules.conv.Conv2d(h, h, 3)

        def forward(self, x):
            x = self.bn(self.lin(x))
            return F.softmax(self.ln(x), dim=-1) @ torch.matmul(x, x)
""")

PROGRAM = r"""
import json, sys
if sys.argv[1] == "hidden":
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch hidden for this test")
            return None
    sys.meta_path.insert(0, Blocker())
    try:
        import torch  # noqa: F401
        raise SystemExit("torch was importable")
    except ImportError:
        pass
else:
    import torch  # noqa: F401  (importable, loaded)
from dslc.analysis import analyze_source, analyze_file
from dslc.analysis.render import file_json
out = [file_json(analyze_source(sys.stdin.read(), "m.py", module="m"))]
for f in sys.argv[2:]:
    out.append(file_json(analyze_file(f)))
print(json.dumps(out, sort_keys=True))
"""


def _run(mode: str, files: list[str]) -> list:
    proc = subprocess.run([sys.executable, "-c", PROGRAM, mode, *files], input=SNIPPET,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_same_facts_with_torch_importable_and_hidden(repo_root):
    pytest.importorskip("torch")
    files = [str(repo_root / "examples" / "bert_self_output.py"),
             str(repo_root / "examples" / "dpt_preact_residual.py")]
    hidden = _run("hidden", files)
    shown = _run("importable", files)
    assert hidden == shown
    init = {b["attr"]: b["type"] for b in hidden[0]["classes"][0]["init"]}
    assert init == {"lin": "torch.nn.Linear", "ln": "torch.nn.LayerNorm", "bn": "torch.nn.BatchNorm1d",
                    "conv": "torch.nn.Conv2d"}
    calls = [n.get("type") or n.get("op") for n in hidden[0]["classes"][0]["paths"][0]["nodes"]
             if n["kind"] != "stmt"]
    assert calls == ["torch.nn.Linear", "torch.nn.BatchNorm1d", "torch.nn.LayerNorm",
                     "torch.nn.functional.softmax", "torch.matmul", "@"]


def test_analysis_never_imports_torch():
    code = ("import sys\nfrom dslc.analysis import analyze_source\n"
            f"analyze_source({SNIPPET!r}, 'm.py', module='m')\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
