"""dslc.fileio: gitignore semantics, decoding, atomic writes; kernel look-up without imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dslc.apply import driver as apply
from dslc import fileio
from dslc.fileio import IgnoreSet, SourceError, parse_gitignore


def ignores(text, base=""):
    s = IgnoreSet()
    s.rules.extend(parse_gitignore(text, base))
    return s


@pytest.mark.parametrize("pattern,path,is_dir,expected", [
    ("*.pyc", "a/b/c.pyc", False, True),
    ("*.pyc", "a/b/c.py", False, False),
    ("/build", "build", True, True),
    ("/build", "src/build", True, False),  # anchored to the .gitignore's folder
    ("build/", "src/build", True, True),  # unanchored, directories only
    ("build/", "src/build", False, False),
    ("doc/*.txt", "doc/a.txt", False, True),
    ("doc/*.txt", "doc/x/a.txt", False, False),  # * does not cross /
    ("**/gen/*.py", "a/b/gen/x.py", False, True),
    ("**/gen/*.py", "gen/x.py", False, True),
    ("a/**/z.py", "a/z.py", False, True),
    ("a/**/z.py", "a/b/c/z.py", False, True),
    ("out/**", "out/x/y.py", False, True),
    ("file[0-9].py", "file7.py", False, True),
    ("file[!0-9].py", "file7.py", False, False),
    ("\\#hash.py", "#hash.py", False, True),
    ("# comment", "# comment", False, False),
    ("?.py", "ab.py", False, False),
])
def test_gitignore_patterns(pattern, path, is_dir, expected):
    assert ignores(pattern).ignored(path, is_dir) is expected


def test_gitignore_negation_last_match_wins_and_bases():
    s = ignores("*.py\n!keep.py\n")
    assert s.ignored("x.py", False) and not s.ignored("keep.py", False)
    s.rules.extend(parse_gitignore("keep.py\n", "sub"))
    assert s.ignored("sub/keep.py", False) and not s.ignored("keep.py", False)
    assert not ignores("/x.py", "sub").ignored("x.py", False)
    assert ignores("/x.py", "sub").ignored("sub/x.py", False)


def test_discover_reads_gitignore_above_the_argument(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("models/skip_*.py\n")
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.py", "skip_b.py", "c.txt"):
        (models / name).write_text("x = 1\n")
    (models / "__pycache__").mkdir()
    (models / "__pycache__" / "d.py").write_text("")
    found, problems = fileio.discover([str(models)])
    assert [f.display for f in found] == ["a.py"] and not problems
    found, _ = fileio.discover([str(models)], gitignore=False)
    assert [f.display for f in found] == ["a.py", "skip_b.py"]
    found, problems = fileio.discover([str(models / "skip_b.py"), str(models), str(tmp_path / "nope")])
    # An explicit file is taken even when ignored; each file once; missing paths reported.
    assert [f.display for f in found] == [str(models / "skip_b.py"), "a.py"]
    assert problems == [(str(tmp_path / "nope"), "no such file or directory", "E100")]


def test_exclude_globs():
    assert fileio.excluded("tests/x.py", ["tests"])
    assert fileio.excluded("a/tests/x.py", ["tests"])
    assert fileio.excluded("a/b/x_old.py", ["*_old.py"])
    assert fileio.excluded("vendor/a/b.py", ["vendor/*"])
    assert not fileio.excluded("src/a.py", ["vendor", "*.txt"])


def test_read_source_encodings(tmp_path):
    p = tmp_path / "x.py"
    p.write_bytes(b"# coding: latin-1\nx = '\xe9'\n")
    src = fileio.read_source(str(p))
    assert src.encoding == "iso-8859-1" and "é" in src.text
    p.write_bytes(b"\xef\xbb\xbfx = 1\n")
    src = fileio.read_source(str(p))
    assert src.encoding == "utf-8-sig" and src.text == "x = 1\n"
    assert fileio.encode_source(src.text, src.encoding) == b"\xef\xbb\xbfx = 1\n"
    p.write_bytes(b"x = 1\ny = 2\nz = '\xc3('\n")
    with pytest.raises(SourceError) as exc:
        fileio.read_source(str(p))
    assert exc.value.code == "E102" and exc.value.line == 3
    with pytest.raises(SourceError) as exc:
        fileio.read_source(str(tmp_path))
    assert exc.value.code == "E100"
    with pytest.raises(SourceError) as exc:
        fileio.encode_source("x = 'é'\n", "ascii")
    assert exc.value.code == "E104"


def test_atomic_write_keeps_mode_follows_symlinks_and_detects_changes(tmp_path):
    real = tmp_path / "real.py"
    real.write_text("old\n")
    os.chmod(real, 0o600)
    link = tmp_path / "link.py"
    link.symlink_to(real)
    fileio.atomic_write(str(link), b"new\n", expect=b"old\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert (real.stat().st_mode & 0o777) == 0o600
    with pytest.raises(SourceError) as exc:
        fileio.atomic_write(str(real), b"newer\n", expect=b"old\n")
    assert exc.value.code == "E105" and real.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.py", "real.py"]


def test_module_available_does_not_import():
    assert apply.module_available("json")
    assert apply.module_available("email.mime.text")
    assert not apply.module_available("email.no_such_module")
    assert not apply.module_available("no_such_top_level_pkg.x")
    # Looking up a submodule of an installed package imports nothing (run fresh).
    code = ("import sys; from dslc.apply.driver import module_available as m; "
            "assert m('xml.dom.minidom'); assert 'xml.dom' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_kernels_checks_modules_and_versions():
    from dslc.match import ir

    def rule(name, kernel):
        return ir.Rule(pack="p", name=name, description="", kernels=(kernel,), contract=ir.Contract())

    pack = ir.Pack("p", "", requires=(
        ir.Requirement("pytest", version="<1", install="pip install 'pytest<1'"),  # installed, too new
        ir.Requirement("json", module="json.decoder"),  # present: not reported
        ir.Requirement("nosuchpkg", module="nosuchpkg.sub", install="pip install nosuchpkg"),
        ir.Requirement("unused_pkg"),  # no selected rule needs it: not reported
    ), rules=(rule("a", "pytest.fused"), rule("b", "json.decoder.x"), rule("c", "nosuchpkg.sub.k")))
    got = {k.package: k for k in apply.missing_kernels([pack], {"p:a": 3})}
    assert set(got) == {"pytest", "nosuchpkg"}
    assert "is installed, the pack needs <1" in got["pytest"].reason and got["pytest"].applied == 3
    assert got["pytest"].rules == ("p:a",)
    assert got["nosuchpkg"].reason == "module nosuchpkg.sub is not importable"
    assert got["nosuchpkg"].install == "pip install nosuchpkg"
