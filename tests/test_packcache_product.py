"""`dslc apply`'s cache of loaded rule packs (dslc/commands/packcache.py)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from dslc.cli import main
from dslc.commands import packcache
from dslc.lang import loader

REPO = Path(__file__).resolve().parent.parent
ADOPTER = str(REPO / "rulepacks" / "adopter.adr")
PACK = """pack tiny "t"

rule soft "softmax" {
  kernel torch.softmax
  exact
  forward {
    torch.nn.functional.softmax($x, dim=-1) -> $y;
  } => {
    torch.softmax($x, -1) -> $y;
  }
}
"""


def _entries(cache: Path) -> list[str]:
    folder = cache / "packs"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _no_loader(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the loader ran: the cache missed")
    monkeypatch.setattr(loader, "load_rules", fail)


def test_second_load_comes_from_the_cache_and_equals_the_first(tmp_path, monkeypatch):
    first = packcache.load_rules([ADOPTER], (), (), str(tmp_path))
    assert len(_entries(tmp_path)) == 1
    _no_loader(monkeypatch)
    again = packcache.load_rules([ADOPTER], (), (), str(tmp_path))
    assert repr(again.packs) == repr(first.packs)
    assert sorted(again.compiled) == sorted(first.compiled) and not again.diagnostics


def test_changed_bytes_selection_or_no_cache_miss(tmp_path, monkeypatch):
    pack = tmp_path / "tiny.adr"
    pack.write_text(PACK)
    cache = tmp_path / "c"
    one = packcache.load_rules([str(pack)], (), (), str(cache))
    assert [r.name for p in one.packs for r in p.rules] == ["soft"]
    pack.write_text(PACK.replace("rule soft", "rule soft2"))
    two = packcache.load_rules([str(pack)], (), (), str(cache))
    assert [r.name for p in two.packs for r in p.rules] == ["soft2"]
    sel = packcache.load_rules([str(pack)], ["tiny:soft2"], (), str(cache))
    assert len(_entries(cache)) == 3 and [r.name for p in sel.packs for r in p.rules] == ["soft2"]
    none = tmp_path / "none"
    packcache.load_rules([str(pack)], (), (), None)
    assert not none.exists()


def test_a_bad_entry_is_a_miss(tmp_path):
    packcache.load_rules([ADOPTER], (), (), str(tmp_path))
    (entry,) = _entries(tmp_path)
    path = tmp_path / "packs" / entry
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    again = packcache.load_rules([ADOPTER], (), (), str(tmp_path))
    assert any(r.name == "softmax" for p in again.packs for r in p.rules)


def test_an_entry_holding_other_classes_is_refused(tmp_path):
    import pickle

    from dslc.analysis import cachefile

    packcache.load_rules([ADOPTER], (), (), str(tmp_path))
    (entry,) = _entries(tmp_path)
    key = entry.split(".")[0]
    cachefile.write(str(tmp_path / "packs" / entry), pickle.dumps((key, [os.getcwd], {})))
    again = packcache.load_rules([ADOPTER], (), (), str(tmp_path))
    assert any(r.name == "softmax" for p in again.packs for r in p.rules)


def test_a_pack_with_diagnostics_is_not_cached(tmp_path):
    pack = tmp_path / "warn.adr"
    pack.write_text(PACK + PACK.replace('pack tiny "t"\n', ""))  # a duplicate rule: an error
    result = packcache.load_rules([str(pack)], (), (), str(tmp_path / "c"))
    assert result.diagnostics and _entries(tmp_path / "c") == []


@pytest.mark.parametrize("no_cache", [False, True])
def test_apply_uses_the_cache_folder_unless_no_cache(tmp_path, no_cache):
    model = tmp_path / "m.py"
    model.write_text("import torch.nn.functional as F\n\n\ndef f(x):\n    return F.softmax(x, dim=-1)\n")
    cache = tmp_path / "cache"
    args = ["apply", "--rules", ADOPTER, "--jobs", "1", "--cache-dir", str(cache)] + (["--no-cache"] if no_cache else [])
    outs = []
    for _ in range(2):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args + [str(model)])
        assert code == 0
        outs.append(out.getvalue())
    assert outs[0] == outs[1] and "softmax" in outs[0]
    assert (len(_entries(cache)) == 1) != no_cache
