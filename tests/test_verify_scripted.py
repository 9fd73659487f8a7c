"""A rewrite held in memory is verified with its own source, even where
`@torch.jit.script` re-reads function sources (deberta, sew_d)."""

from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")

from dslc.verify import equivalence as verify  # noqa: E402

ORIGINAL = textwrap.dedent('''\
    import torch
    from torch import nn


    @torch.jit.script
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(8, 8)

        def forward(self, hidden_states):
            return double(self.dense(hidden_states))
''')

# Lines added above the scripted function: read from the file on disk at its
# new line number, its "source" would be Block.__init__, which TorchScript
# cannot compile.
REWRITTEN = ORIGINAL.replace("from torch import nn\n", "from torch import nn\n\nSCALE = 1\n" + "# moved\n" * 9, 1).replace(
    "return double(self.dense(hidden_states))", "return double(self.dense(hidden_states)) * SCALE")

FACTORY = textwrap.dedent('''\
    import torch


    def make(cls):
        return cls(), (torch.randn(2, 8),)
''')


def test_scripted_function_compiles_from_the_rewritten_source(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(ORIGINAL)
    (tmp_path / "factories.py").write_text(FACTORY)
    report = verify.verify_sources(ORIGINAL, REWRITTEN, path=str(path),
                                   factory=f"{tmp_path / 'factories.py'}:make", classes=("Block",))
    assert report.error is None, report.error
    assert [(r.name, r.status) for r in report.results] == [("Block", "pass")]
