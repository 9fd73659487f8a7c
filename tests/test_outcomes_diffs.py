"""Diffs a reviewer accepts: literals copied as written, headers that
`patch -p1` / `git apply` accept whatever PATH was given."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dslc.cli import main
from rewrite_support import assert_rewrite, remap_hook

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"
BERT = (REPO / "examples" / "bert_self_output.py").read_text()


def diff_of(capsys, *paths):
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "-q", *map(str, paths)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_literals_keep_their_spelling(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(BERT.replace("eps=config.layer_norm_eps", "eps=1e-6"))
    out = diff_of(capsys, f)
    added = [line for line in out.splitlines() if line.startswith("+") and "FusedDropoutAddLayerNorm(" in line]
    assert len(added) == 1 and "eps=1e-6)" in added[0] and "1e-06" not in out


@pytest.mark.parametrize("given", ["file", "folder"])
def test_diff_from_outside_the_current_folder_applies_with_patch_p1(tmp_path, capsys, monkeypatch, given):
    if shutil.which("patch") is None:
        pytest.skip("the `patch` program is not installed")
    proj = tmp_path / "proj"
    (proj / "models").mkdir(parents=True)
    target = proj / "models" / "x.py"
    target.write_text(BERT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    arg = "../proj/models/x.py" if given == "file" else "../proj"
    out = diff_of(capsys, arg)
    header = out.splitlines()[0]
    assert header.startswith("--- a/") and ".." not in header and "//" not in header
    # The patch applies from the folder of PATH (a file's folder).
    where = proj / "models" if given == "file" else proj
    proc = subprocess.run(["patch", "-p1", "--dry-run"], input=out, text=True, capture_output=True, cwd=where)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_diff_of_a_file_in_a_git_tree_applies_with_git_apply_from_its_top(tmp_path, capsys, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "src" / "models").mkdir(parents=True)
    (repo / "src" / "models" / "x.py").write_text(BERT)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = diff_of(capsys, repo / "src" / "models" / "x.py")
    assert out.splitlines()[0] == "--- a/src/models/x.py"
    proc = subprocess.run(["git", "apply", "--check", "-"], input=out, text=True, capture_output=True, cwd=repo)
    assert proc.returncode == 0, proc.stderr


GROUPED = '''import math

import torch
import torch.nn.functional as F

from mypkg import thing


def f(x):
    return F.softmax(x, dim=-1)
'''


def test_new_import_joins_the_torch_group_in_isort_order(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(GROUPED)
    main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "-q", "--write", str(f)])
    capsys.readouterr()
    assert f.read_text().splitlines()[:8] == [
        "import math", "", "import torch", "import torch.nn.functional as F",
        "from xformers.triton.softmax import softmax", "", "from mypkg import thing", ""]
    # sorted by module inside a sorted group
    g = tmp_path / "g.py"
    g.write_text(BERT)
    main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "-q", "--write", str(g)])
    capsys.readouterr()
    head = [line for line in g.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert head == ["import torch", "from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm", "from torch import nn"]
    # an unsorted group: appended at its end
    h = tmp_path / "h.py"
    h.write_text(GROUPED.replace("import torch\nimport torch.nn.functional as F\n",
                                 "import torch.nn.functional as F\nimport torch\n"))
    main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", "-q", "--write", str(h)])
    capsys.readouterr()
    assert h.read_text().splitlines()[2:5] == ["import torch.nn.functional as F", "import torch",
                                               "from xformers.triton.softmax import softmax"]


HOIST_DIFFERENT = '''import torch
from torch import nn


class SelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.post_norm = config.post_norm
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dropout(hidden_states)
        if self.post_norm:
            hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states
'''


def test_identical_branches_are_merged_but_different_ones_kept(tmp_path, capsys):
    f = tmp_path / "dpt.py"
    f.write_text((REPO / "examples" / "dpt_preact_residual.py").read_text())
    out = diff_of(capsys, "--select", "adopter:conv_batchnorm", f)
    assert "else:" not in out and "-        if self.use_batch_norm:" in out
    # Different branches: the dropout goes into the `else` the fusion leaves behind.
    assert_rewrite(HOIST_DIFFERENT, """\
        import torch
        from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm
        from torch import nn
        """ + remap_hook() + """

        class SelfOutput(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.post_norm = config.post_norm
                self.LayerNorm = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)
                self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                    ('LayerNorm.layer_norm.weight', 'LayerNorm.weight', False),
                    ('LayerNorm.layer_norm.bias', 'LayerNorm.bias', False),
                )))
                self.dropout = nn.Dropout(config.hidden_dropout_prob)

            def forward(self, hidden_states, input_tensor):
                if self.post_norm:
                    hidden_states = self.LayerNorm(hidden_states, input_tensor)
                else:
                    hidden_states = self.dropout(hidden_states)
                return hidden_states
        """, select=["adopter:dropout_layernorm"], applied=["dropout_layernorm"])
