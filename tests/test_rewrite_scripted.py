"""A match inside a @torch.jit.script function is skipped, with the reason."""

from __future__ import annotations

import json
import textwrap

from dslc.cli import main

SOURCE = textwrap.dedent('''\
    import torch
    import torch.nn.functional as F


    @torch.jit.script
    def scripted(x: torch.Tensor):
        return F.softmax(x, dim=-1)


    def plain(x):
        return F.softmax(x, dim=-1)
''')


def test_softmax_in_torchscript_function_is_skipped(tmp_path, repo_root, capsys):
    model = tmp_path / "m.py"
    model.write_text(SOURCE)
    rc = main(["apply", "--rules", str(repo_root / "rulepacks" / "adopter.adr"),
               "--select", "adopter:softmax", "--format", "json", "--no-cache", str(model)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    by_line = {m["lines"][0]: m for m in report["matches"]}
    assert by_line[7]["status"] == "skipped"
    assert "torch.jit.script" in by_line[7]["reason"] and "TorchScript" in by_line[7]["reason"]
    assert by_line[11]["status"] == "applied"
    assert model.read_text() == SOURCE  # dry run
