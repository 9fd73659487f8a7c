"""The per-file result cache and the sibling modules of a file's package.

A file's result depends on the other modules of its folder: the outside-use
check (S220, W111) and the sibling-subclass check read them.  A warm run
must not serve a cached result once such a sibling changed, appeared or
went away; with the siblings unchanged it is still a hit.
"""

from __future__ import annotations

import rewrite_support
from dslc import codes
from dslc.apply import driver
from dslc.apply.driver import ApplyOptions, apply_paths

SELECT = ("adopter:conv_batchnorm",)

MODEL = """\
import torch
from torch import nn


class Stage(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x):
        return self.norm(self.conv(x))
"""

HARMLESS = "def export(net, sink):\n    sink.write(net.head.proj.weight)\n"
READS_CONV = "def export(net, sink):\n    sink.write(net.stage.conv.weight)\n"
SUBCLASS = ("from .model import Stage\n\n\nclass Wide(Stage):\n    def forward(self, x):\n"
            "        return self.conv(x) * 2\n")


def _run(pkg, cache, counter=None):
    packs = rewrite_support.load_packs(rewrite_support.rule_paths("adopter"), SELECT)
    report = apply_paths([str(pkg / "model.py")], packs, ApplyOptions(mode="diff", jobs=1, cache_dir=str(cache)))
    return [(m.status, m.code) for m in report.matches if m.rule == "adopter:conv_batchnorm"]


def _package(tmp_path, **siblings):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "model.py").write_text(MODEL)
    for name, text in siblings.items():
        (pkg / f"{name}.py").write_text(text)
    return pkg, tmp_path / "cache"


def _counting(monkeypatch):
    calls = []
    real = driver.process_file

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "process_file", counted)
    return calls


def test_unchanged_siblings_still_hit(tmp_path, monkeypatch):
    pkg, cache = _package(tmp_path, export=HARMLESS)
    calls = _counting(monkeypatch)
    assert _run(pkg, cache) == [("applied", None)]
    assert _run(pkg, cache) == [("applied", None)]
    assert len(calls) == 1  # the second run came from the cache


def test_a_sibling_that_now_reads_the_layer_refuses_on_the_warm_run(tmp_path):
    pkg, cache = _package(tmp_path, export=HARMLESS)
    assert _run(pkg, cache) == [("applied", None)]
    (pkg / "export.py").write_text(READS_CONV + "\n")
    assert _run(pkg, cache) == [("skipped", codes.S_OUTSIDE_USE)]
    (pkg / "export.py").write_text(HARMLESS)
    assert _run(pkg, cache) == [("applied", None)]


def test_a_new_sibling_that_reads_the_layer_refuses_on_the_warm_run(tmp_path):
    pkg, cache = _package(tmp_path)
    assert _run(pkg, cache) == [("applied", None)]
    (pkg / "export.py").write_text(READS_CONV)
    assert _run(pkg, cache) == [("skipped", codes.S_OUTSIDE_USE)]
    (pkg / "export.py").unlink()
    assert _run(pkg, cache) == [("applied", None)]


def test_a_new_sibling_subclass_refuses_on_the_warm_run(tmp_path):
    pkg, cache = _package(tmp_path, export=HARMLESS)
    assert _run(pkg, cache) == [("applied", None)]
    (pkg / "wide.py").write_text(SUBCLASS)
    assert _run(pkg, cache) == [("skipped", codes.S_ATTR_USED)]
