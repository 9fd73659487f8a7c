"""tests/packcache.py (the test processes' memo of `load_rules`) gives what the
real loader gives, loads a shipped pack once, and steps aside for packs the
tests write and for tests that patch a loader stage."""

from __future__ import annotations

from pathlib import Path

import packcache
from dslc.lang import loader
from dslc.match import compiler

REPO = Path(__file__).resolve().parent.parent
ADOPTER = str(REPO / "rulepacks" / "adopter.adr")


def _names(result) -> list[str]:
    return [r.qualified_name for r in result.rules]


def test_installed_and_equal_to_the_real_loader():
    assert loader.load_rules is packcache.cached_load_rules
    real = packcache._original([ADOPTER], ("adopter:softmax",), ())
    got = loader.load_rules([ADOPTER], ["adopter:softmax"])
    assert _names(got) == _names(real) == ["adopter:softmax"]
    assert got.diagnostics == real.diagnostics and sorted(got.compiled) == sorted(real.compiled)


def test_a_second_load_is_a_hit_with_its_own_containers():
    first = _names(loader.load_rules(ADOPTER))
    hits = packcache.stats["hits"]
    second = loader.load_rules(ADOPTER)
    assert packcache.stats["hits"] == hits + 1
    assert _names(second) == first and len(first) > 1
    second.packs.clear()
    second.compiled.clear()
    again = loader.load_rules(ADOPTER)
    assert _names(again) == first and sorted(again.compiled) == sorted(first)


def test_a_pack_outside_rulepacks_is_always_loaded(tmp_path):
    p = tmp_path / "p.adr"
    p.write_text(Path(ADOPTER).read_text())
    bypassed = packcache.stats["bypassed"]
    loader.load_rules([str(p)])
    assert packcache.stats["bypassed"] == bypassed + 1


def test_a_patched_stage_sees_its_calls(monkeypatch):
    loader.load_rules(ADOPTER)  # memoised
    calls = []
    real = compiler.compile_rule
    monkeypatch.setattr(compiler, "compile_rule", lambda rule, *a, **k: calls.append(rule) or real(rule, *a, **k))
    assert _names(loader.load_rules(ADOPTER))
    assert calls
