"""Generated programs (hypothesmith) through `dslc apply`: no internal error, every output parses.

Each example is a random Python module (from the grammar, or a libcst tree)
with, half the time, the BERT example class appended, so that rules match
and the rewriter edits a file full of odd surrounding code.  Asserted: no
E199 (an internal error, the traceback-catching path), no other error than
"does not parse"/"not text" for inputs Python itself refuses, every
rewritten file parses, and a second run on the output changes nothing.

The fast suite runs a smoke of a few examples; the full run is slow.
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
hypothesmith = pytest.importorskip("hypothesmith", reason="hypothesmith (the `test` extra) is not installed")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from dslc.apply import driver  # noqa: E402
from rewrite_support import load_packs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = (REPO / "examples" / "bert_self_output.py").read_text()
PACKS = load_packs("adopter")  # fails the module if the pack does not load
OPTIONS = driver.ApplyOptions(mode="diff", jobs=1, cache_dir=None)

programs = st.one_of(hypothesmith.from_grammar(), hypothesmith.from_node())


def check_program(source: str, with_model: bool) -> None:
    text = source + ("\n\n" + MODEL if with_model else "")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gen.py")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        report = driver.apply_paths([path], PACKS, OPTIONS)
        codes = {e.code for e in report.errors}
        assert "E199" not in codes, [e.message for e in report.errors]
        assert codes <= {"E101", "E102"}, report.errors
        for f in report.files:
            if f.changed:
                ast.parse(f.new_source)  # every emitted file parses
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(f.new_source)
                again = driver.apply_paths([path], PACKS, OPTIONS)
                assert not [g for g in again.files if g.changed], "a second apply changed the output"
                assert "E199" not in {e.code for e in again.errors}


COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@settings(max_examples=8, **COMMON)
@given(programs, st.booleans())
def test_fuzz_smoke(source, with_model):
    check_program(source, with_model)


@pytest.mark.slow
@settings(max_examples=300, **COMMON)
@given(programs, st.booleans())
def test_fuzz_generated_programs(source, with_model):
    check_program(source, with_model)
