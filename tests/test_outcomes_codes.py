"""Every outcome has a stable, registered, explained code (dslc/codes.py).

* the registry: each code has a severity, a title and a doc, and
  `dslc explain CODE` prints it;
* the sources: every code-like string literal is registered, every
  `codes.NAME` exists, every `Skip` carries a code.  The sources are read
  once, and the registry they are held to is the one the same snapshot's
  codes.py defines: editing codes.py while the suite runs (after dslc was
  imported) cannot make the imported registry and the sources disagree;

* the run: skipped matches carry their code in text and JSON, an internal
  error in one rewrite is E199 and exit 1.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import pickle
import re
import tokenize
from pathlib import Path

import pytest

from dslc import codes
from dslc.cli import main
from rewrite_support import self_output

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"
SOURCES = sorted(list((REPO / "dslc").rglob("*.py")) + list((REPO / "benchmarks").glob("*.py")))
CODE_RE = re.compile(r"\b(ADR\d{3}|[EWISN]\d{3})\b")


def test_every_registered_code_is_documented_and_explained(capsys):
    assert len(codes.REGISTRY) > 60
    prefixes = {"ADR": {"error", "warning"}, "E": {"error"}, "W": {"warning"}, "I": {"note"}, "S": {"skip"},
                "N": {"note"}}
    for code, entry in codes.REGISTRY.items():
        assert entry.code == code and CODE_RE.fullmatch(code), code
        kind = "ADR" if code.startswith("ADR") else code[0]
        assert entry.severity in prefixes[kind], code
        assert entry.title and len(entry.doc) > 40, code
        assert main(["explain", code.lower()]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{code} ({entry.severity}): {entry.title}")


@pytest.mark.parametrize("code", ["E199", "E110", "W110", "I110", "S204", "W101", "I120", "I130", "E120"])
def test_explain_knows_the_apply_codes(code, capsys):
    assert main(["explain", code]) == 0
    assert code in capsys.readouterr().out


def test_explain_list_shows_every_code(capsys):
    assert main(["explain", "--list"]) == 0
    out = capsys.readouterr().out
    assert {line.split()[0] for line in out.splitlines()} == set(codes.REGISTRY)


@functools.lru_cache(maxsize=None)
def _snapshot() -> dict[Path, tuple[str, ast.Module]]:
    """Every source, read once: (text, tree) per path."""
    out = {}
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        out[path] = (text, ast.parse(text))
    return out


@functools.lru_cache(maxsize=None)
def _registered() -> dict[str, str]:
    """The snapshot's codes.py: constant name -> code, for every `NAME = _code("X", ...)`."""
    _, tree = _snapshot()[REPO / "dslc" / "codes.py"]
    out = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "_code"):
            (target,) = node.targets
            out[target.id] = node.value.args[0].value
    return out


def test_the_snapshot_reads_the_registry():
    """Whatever the snapshot says matches the imported registry when
    codes.py is as it was imported (the usual case): the parse is right."""
    current = Path(codes.__file__).read_text(encoding="utf-8")
    if current != _snapshot()[REPO / "dslc" / "codes.py"][0]:
        pytest.skip("dslc/codes.py changed while the suite ran")
    names = {name: value for name, value in vars(codes).items() if isinstance(value, str) and value in codes.REGISTRY}
    assert _registered() == names and set(_registered().values()) == set(codes.REGISTRY)


def _string_literals(path: Path):
    text, _ = _snapshot()[path]
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.STRING:
            yield tok.start[0], tok.string


def test_every_code_in_the_sources_is_registered():
    """A code printed anywhere (a string literal of dslc/ or benchmarks/) is in the registry."""
    unknown = []
    seen = set()
    registered = set(_registered().values())
    for path in SOURCES:
        for line, text in _string_literals(path):
            for code in CODE_RE.findall(text):
                seen.add(code)
                if code not in registered:
                    unknown.append(f"{path.relative_to(REPO)}:{line}: {code}")
    assert not unknown, unknown
    assert {"E100", "E199", "ADR001"} <= seen  # the scan does see codes


def test_every_codes_constant_used_exists():
    missing = []
    registered = _registered()
    for path in SOURCES:
        _, tree = _snapshot()[path]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("codes", "dslc_codes") and node.attr.isupper() and node.attr != "REGISTRY"):
                if node.attr not in registered:
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}: codes.{node.attr}")
    assert not missing, missing


def _skip_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Skip":
            yield node


def test_every_skip_carries_a_code():
    """`Skip(codes.X, message)` or `Skip(reason)` where reason is a value some check returned.

    A bare string (`Skip("...")`, `Skip(f"...")`) has no code and would be
    reported as S499; the same holds for an `Outcome(..., "skipped", "text")`.
    """
    bad = []
    count = 0
    for path in SOURCES:
        _, tree = _snapshot()[path]
        for call in _skip_calls(tree):
            count += 1
            first = call.args[0] if call.args else None
            coded = (len(call.args) == 2 and isinstance(first, ast.Attribute)
                     and isinstance(first.value, ast.Name) and first.value.id == "codes")
            passed_on = len(call.args) == 1 and isinstance(first, (ast.Name, ast.Call)) and not (
                isinstance(first, ast.Call) and isinstance(first.func, ast.Name) and first.func.id in ("str", "format"))
            if not (coded or passed_on):
                bad.append(f"{path.relative_to(REPO)}:{call.lineno}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Outcome":
                why = node.args[2] if len(node.args) >= 3 else None
                if isinstance(why, ast.JoinedStr) or (isinstance(why, ast.Constant) and isinstance(why.value, str)):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} (Outcome with a bare string)")
    assert count > 50
    assert not bad, bad


def test_reason_is_a_string_with_a_code_that_survives_pickling():
    r = codes.reason(codes.S_VALUE_READ, "intermediate `x` (line 3) is read at line 5 after the match")
    assert r == "intermediate `x` (line 3) is read at line 5 after the match" and r.code == "S204"
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.code == "S204" and isinstance(back, codes.Reason)
    assert codes.code_of(r) == "S204" and codes.code_of("plain") == "S499" and codes.code_of(None) is None
    with pytest.raises(KeyError):
        codes.reason("S999", "no such code")


def test_skip_takes_a_code_and_a_message():
    from dslc.rewrite.rewriter import Skip

    exc = Skip(codes.S_MULTI_STMT, "line 3 holds more than one statement")
    assert str(exc) == "line 3 holds more than one statement" and exc.reason.code == "S302"
    assert Skip(exc.reason).reason.code == "S302"
    assert Skip("legacy text").reason.code == codes.S_UNCLASSIFIED


READ_AFTER = self_output(tail="out, dropped")  # `dropped` is read after the fused statements


def _apply(capsys, *args):
    code = main(["apply", "--rules", str(PACK), "--no-cache", "--jobs", "1", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_skipped_match_has_its_code_in_json_and_text(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(READ_AFTER)
    code, out, err = _apply(capsys, "--format", "json", "--select", "adopter:dropout_layernorm", f)
    assert code == 0, err
    [m] = json.loads(out)["matches"]
    assert m["status"] == "skipped" and m["code"] == "S204", m
    assert "`dropped`" in m["reason"] and "is read at line 16 after the match" in m["reason"]
    code, out, err = _apply(capsys, "--select", "adopter:dropout_layernorm", f)
    assert code == 0 and out == ""
    assert f"{f}:9: skipped[S204] adopter:dropout_layernorm in SelfOutput: intermediate `dropped`" in err


def test_internal_error_in_one_rewrite_is_E199_and_exit_1(tmp_path, capsys, monkeypatch):
    from dslc.rewrite import rewriter

    def boom(self, match):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(rewriter._Rewriter, "plan", boom)
    f = tmp_path / "m.py"
    f.write_text((REPO / "examples" / "bert_self_output.py").read_text())
    code, out, err = _apply(capsys, "--format", "json", f)
    assert code == 1, err
    report = json.loads(out)
    assert [m["code"] for m in report["matches"]] == ["E199"]
    assert "internal error in the rewriter (ZeroDivisionError: planted)" in report["matches"][0]["reason"]
    assert [e["code"] for e in report["errors"]] == ["E199"]
    assert report["files_changed"] == []
