"""Output any terminal can take (issue 13): encodings and hostile file names.

`PYTHONIOENCODING=ascii` runs the real command in a subprocess (that is how
the interpreter sets its streams up); undecodable file names are made with
bytes the file system takes but UTF-8 does not.  No case may print a
traceback, and every JSON document must parse as UTF-8.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dslc import output
from dslc.fileio import display_path

REPO = Path(__file__).resolve().parent.parent
RULES = str(REPO / "rulepacks" / "adopter.adr")
MODEL = (REPO / "examples" / "bert_self_output.py").read_text()
# A non-ASCII comment inside the rewritten statements' context: the diff shows it.
MODEL_NON_ASCII = MODEL.replace("        hidden_states = self.dropout(hidden_states)\n",
                                "        hidden_states = self.dropout(hidden_states)  # café → ∑\n")


def dslc(*args, env=None, cwd=None):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "dslc", *args], cwd=cwd, env=full_env,
                          capture_output=True, timeout=180)
    out, err = proc.stdout, proc.stderr
    assert b"Traceback" not in out + err, err.decode("utf-8", "replace")
    return proc.returncode, out, err


ASCII = {"PYTHONIOENCODING": "ascii"}


def test_structure_under_an_ascii_terminal(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    code, out, _ = dslc("structure", str(tmp_path / "m.py"), env=ASCII)
    assert code == 0 and b"\\u2192" in out  # the arrow, escaped
    out.decode("ascii")
    code, out, _ = dslc("structure", str(tmp_path / "m.py"), "--format", "json", env=ASCII)
    assert code == 0 and json.loads(out.decode("utf-8"))["classes"]


def test_apply_with_a_non_ascii_diff_under_an_ascii_terminal(tmp_path):
    (tmp_path / "m.py").write_text(MODEL_NON_ASCII)
    code, out, err = dslc("apply", "--rules", RULES, "--no-cache", str(tmp_path / "m.py"), env=ASCII)
    assert code == 0, err
    out.decode("ascii")
    assert b"caf\\xe9 \\u2192 \\u2211" in out  # escaped, not a crash
    code, out, _ = dslc("apply", "--rules", RULES, "--no-cache", "--format", "json", str(tmp_path / "m.py"),
                        env=ASCII)
    assert code == 0 and json.loads(out.decode("utf-8"))["files_changed"] == [str(tmp_path / "m.py")]


def test_write_under_an_ascii_terminal_keeps_the_file_utf8(tmp_path):
    target = tmp_path / "m.py"
    target.write_text("# résumé ✓\n" + MODEL_NON_ASCII, encoding="utf-8")
    code, _, err = dslc("apply", "--rules", RULES, "--no-cache", "--write", str(target), env=ASCII)
    assert code == 0, err
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# résumé ✓\n") and "FusedDropoutAddLayerNorm" in text


UNDECODABLE = b"caf\xe9_\xff.py"  # latin-1 bytes: not UTF-8


@pytest.fixture
def odd_name(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    try:
        path = os.path.join(os.fsencode(folder), UNDECODABLE)
        with open(path, "wb") as fh:
            fh.write(MODEL_NON_ASCII.encode())
    except (OSError, UnicodeError) as exc:
        pytest.skip(f"the file system refuses undecodable names: {exc}")
    return folder


def test_undecodable_name_is_shown_escaped_in_text_and_json_with_the_cache(odd_name, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    for _ in range(2):  # a cold and a warm cache
        code, out, err = dslc("apply", "--rules", RULES, *cache, str(odd_name))
        assert code == 0, err
        assert b"E199" not in err and b"+++ b/" in out
        assert b"caf\\xe9_\\xff.py" in out  # the diff header names the bytes
    code, out, err = dslc("apply", "--rules", RULES, *cache, "--format", "json", str(odd_name))
    report = json.loads(out.decode("utf-8"))
    assert code == 0 and report["files_changed"] == ["caf\\xe9_\\xff.py"] and not report["errors"]
    code, out, err = dslc("apply", "--rules", RULES, "--no-cache", str(odd_name), env=ASCII)
    assert code == 0 and b"caf\\xe9_\\xff.py" in out


def test_undecodable_name_with_write_and_structure(odd_name):
    code, _, err = dslc("apply", "--rules", RULES, "--no-cache", "--write", str(odd_name))
    assert code == 0 and b"rewrote " in err and b"caf\\xe9_\\xff.py" in err
    path = os.path.join(os.fsencode(odd_name), UNDECODABLE)
    with open(path, "rb") as fh:
        assert fh.read() != MODEL_NON_ASCII.encode()
    code, out, err = dslc("structure", os.fsdecode(path))
    assert code == 0 and b"caf\\xe9_\\xff" in out
    code, out, err = dslc("structure", os.fsdecode(path), "--format", "json")
    assert code == 0 and json.loads(out.decode("utf-8"))["file"].endswith("caf\\xe9_\\xff.py")


def test_a_newline_or_escape_in_a_name_cannot_forge_output(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "evil\nfake: error[E999]: x\x1b[2J.py").write_text("x = (\n")
    code, _, err = dslc("apply", "--rules", RULES, "--no-cache", str(folder))
    assert code == 1
    lines = err.decode().splitlines()
    assert not [l for l in lines if l.startswith("fake:")] and b"\x1b" not in err
    assert "evil\\x0afake: error[E999]: x\\x1b[2J.py:1: error[E101]" in err.decode()


def test_display_path_and_writer_units():
    assert display_path("plain/ok é.py") == "plain/ok é.py"
    assert display_path(os.fsdecode(b"a\xffb")) == "a\\xffb"
    assert display_path("a\tb") == "a\\x09b"
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    output.setup([stream])
    stream.write("→ é " + os.fsdecode(b"\xff") + "\n")
    stream.flush()
    assert raw.getvalue() == b"\\u2192 \\xe9 \\xff\n"
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    output.write_json(json.dumps({"f": os.fsdecode(b"x\xff"), "g": "→"}), stream)
    assert json.loads(raw.getvalue().decode("utf-8")) == {"f": "x\\xff", "g": "→"}


def test_check_json_with_non_ascii_rules_under_an_ascii_terminal(tmp_path):
    rules = tmp_path / "r.adr"
    rules.write_text('pack café "résumé → ∑"\nrule x { }\n', encoding="utf-8")
    code, out, _ = dslc("check", str(rules), "--format", "json", env=ASCII)
    assert code == 1
    diags = json.loads(out.decode("utf-8"))  # valid UTF-8 JSON, not terminal escapes
    assert diags
    code, out, _ = dslc("check", str(rules), env=ASCII)
    assert code == 1
    out.decode("ascii")
