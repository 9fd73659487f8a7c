"""`dslc apply` end to end through `dslc.cli.main`, with the stages faked.

The fakes (test_apply_fakes.py) rewrite `F.softmax(x, dim=-1)` into
`fast_softmax(x)`; what is tested here is the driver: discovery, encodings,
atomic writes, error entries, exit codes and the report.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess

import pytest

from dslc.cli import main

from test_apply_fakes import fake_pipeline  # noqa: F401  (fixture)

MODEL = "import torch.nn.functional as F\n\n\ndef forward(x):\n    y = F.softmax(x, dim=-1)\n    return y\n"
MODEL_OUT = MODEL.replace("F.softmax(x, dim=-1)", "fast_softmax(x)")
PLAIN = "def forward(x):\n    return x + 1\n"


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def snapshot(*paths):
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in paths}


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    a = write(src / "a.py", MODEL)
    b = write(src / "pkg" / "b.py", MODEL.replace("x, dim", "h, dim").replace("(x)", "(h)"))
    plain = write(src / "plain.py", PLAIN)
    return src, a, b, plain


def run_cli(capsys, *args):
    code = main(["apply", "--rules", "fake.adr", "--no-cache", "--jobs", "1", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _rules_file(tmp_path, monkeypatch):
    # The fake loader ignores the content, but the command checks that --rules exists.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake.adr").write_text("pack fake\n")


def test_dry_run_prints_diff_and_changes_nothing(fake_pipeline, tree, capsys):
    src, a, b, plain = tree
    before = snapshot(a, b, plain)
    code, out, err = run_cli(capsys, "src")
    assert code == 0
    assert "--- a/src/a.py\n+++ b/src/a.py\n" in out
    assert "-    y = F.softmax(x, dim=-1)\n+    y = fast_softmax(x)\n" in out
    assert "src/pkg/b.py" in out and "plain.py" not in out
    assert snapshot(a, b, plain) == before
    assert "fake:softmax" in err and "would change 2" in err


def test_explicit_diff_flag_is_the_dry_run(fake_pipeline, tree, capsys):
    src, a, *_ = tree
    code, out, _ = run_cli(capsys, "--diff", "src/a.py")
    assert code == 0 and "+    y = fast_softmax(x)" in out
    assert a.read_text() == MODEL


def test_write_rewrites_and_second_write_is_a_no_op(fake_pipeline, tree, capsys):
    src, a, b, plain = tree
    os.chmod(a, 0o640)
    untouched = snapshot(plain)
    code, _, err = run_cli(capsys, "--write", "src")
    assert code == 0, err
    assert a.read_text() == MODEL_OUT
    assert "fast_softmax(h)" in b.read_text()
    assert (a.stat().st_mode & 0o777) == 0o640  # the mode survives the atomic replace
    assert snapshot(plain) == untouched
    assert not [p for p in src.rglob("*") if "dslc-tmp" in p.name]  # no temporary files left
    first = snapshot(a, b, plain)
    code, out, err = run_cli(capsys, "--write", "src")
    assert code == 0 and out == ""
    assert snapshot(a, b, plain) == first
    assert "changed 0" in err


def test_file_that_does_not_parse_is_an_error_and_others_are_rewritten(fake_pipeline, tree, capsys):
    src, a, *_ = tree
    broken = write(src / "broken.py", "def f(:\n    pass\n")
    code, out, err = run_cli(capsys, "--write", "--format", "json", "src")
    assert code == 1
    report = json.loads(out)
    assert report["errors"] == [{"file": "broken.py", "line": 1, "code": "E101", "message": report["errors"][0]["message"]}]
    assert a.read_text() == MODEL_OUT
    assert broken.read_text() == "def f(:\n    pass\n"


def test_unwritable_file_is_an_error_entry(fake_pipeline, tree, capsys, monkeypatch):
    src, a, b, _ = tree
    real_replace = os.replace

    def deny(src_path, dst, *args, **kwargs):
        if str(dst).endswith("a.py"):
            raise PermissionError(13, "Permission denied")
        return real_replace(src_path, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", deny)
    code, _, err = run_cli(capsys, "--write", "src")
    assert code == 1
    assert "a.py: error[E103]: cannot write: Permission denied" in err
    assert a.read_text() == MODEL  # intact
    assert "fast_softmax(h)" in b.read_text()  # the other file still rewritten
    assert not [p for p in src.rglob("*") if "dslc-tmp" in p.name]


def test_read_only_file_is_not_replaced(fake_pipeline, tree, capsys):
    src, a, *_ = tree
    os.chmod(a, 0o444)
    code, _, err = run_cli(capsys, "--write", "src")
    assert code == 1 and "E103" in err
    assert a.read_text() == MODEL


def test_unreadable_file_is_an_error_entry(fake_pipeline, tree, capsys, monkeypatch):
    src, a, b, _ = tree
    os.chmod(a, 0)
    if os.geteuid() == 0:  # root reads it anyway: the open fails as it would for a user
        real_open = os.open

        def deny(path, flags, *args, **kwargs):
            if str(path).endswith(os.sep + "a.py") and not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    code, _, err = run_cli(capsys, "--write", "src")
    os.chmod(a, 0o644)
    assert code == 1 and "a.py: error[E100]" in err
    assert "fast_softmax(h)" in b.read_text()


def test_invalid_utf8_is_an_error_entry_not_a_crash(fake_pipeline, tree, capsys):
    src, a, *_ = tree
    write(src / "binary.py", b"x = '\xff\xfe'\n")
    write(src / "nul.py", b"x = 1\n\x00\x00")
    code, out, err = run_cli(capsys, "--format", "json", "src")
    assert code == 1
    errors = {e["file"]: e for e in json.loads(out)["errors"]}
    assert errors["binary.py"]["code"] == "E102" and errors["binary.py"]["line"] == 1
    assert "utf-8" in errors["binary.py"]["message"]
    assert errors["nul.py"]["code"] == "E102" and errors["nul.py"]["line"] == 2
    assert len(json.loads(out)["files_changed"]) == 2


def test_latin1_coding_cookie_round_trips(fake_pipeline, tmp_path, capsys):
    text = "# -*- coding: latin-1 -*-\n" + MODEL.replace("return y", "return y  # café")
    f = write(tmp_path / "src" / "l1.py", text, "latin-1")
    code, _, err = run_cli(capsys, "--write", "src")
    assert code == 0, err
    data = f.read_bytes()
    assert b"caf\xe9" in data  # still latin-1, not UTF-8
    assert data.decode("latin-1") == text.replace("F.softmax(x, dim=-1)", "fast_softmax(x)")


def test_bad_coding_cookie_is_an_error(fake_pipeline, tmp_path, capsys):
    write(tmp_path / "src" / "c.py", "# coding: no-such-codec\nx = 1\n")
    code, _, err = run_cli(capsys, "src")
    assert code == 1 and "c.py:1: error[E102]" in err


def test_bom_and_crlf_are_kept(fake_pipeline, tmp_path, capsys):
    text = MODEL.replace("\n", "\r\n")
    f = write(tmp_path / "src" / "bom.py", b"\xef\xbb\xbf" + text.encode())
    code, _, err = run_cli(capsys, "--write", "src")
    assert code == 0, err
    assert f.read_bytes() == b"\xef\xbb\xbf" + MODEL_OUT.replace("\n", "\r\n").encode()


def test_gitignore_and_exclude_skip_files(fake_pipeline, tree, capsys):
    src, a, b, _ = tree
    (src / ".git").mkdir()
    (src / ".gitignore").write_text("# build output\n/pkg/\n*.gen.py\n!keep.gen.py\n")
    write(src / "x.gen.py", MODEL)
    write(src / "keep.gen.py", MODEL)
    write(src / "vendor" / "v.py", MODEL)
    write(src / "sub" / ".gitignore", "local.py\n")
    write(src / "sub" / "local.py", MODEL)
    write(src / "sub" / "kept.py", MODEL)
    code, out, _ = run_cli(capsys, "--format", "json", "--exclude", "vendor", "src")
    assert code == 0
    changed = sorted(json.loads(out)["files_changed"])
    assert changed == ["a.py", "keep.gen.py", "sub/kept.py"]
    code, out, _ = run_cli(capsys, "--format", "json", "--exclude", "*.gen.py", "--exclude", "a.py", "--no-gitignore", "src")
    assert sorted(json.loads(out)["files_changed"]) == ["pkg/b.py", "sub/kept.py", "sub/local.py", "vendor/v.py"]


def test_json_report_matches_the_contract(fake_pipeline, tree, capsys):
    src, a, *_ = tree
    write(src / "keep.py", MODEL.replace("dim=-1)", "dim=-1)  # keep"))
    write(src / "broken.py", "def (\n")
    code, out, _ = run_cli(capsys, "--format", "json", "src")
    assert code == 1
    report = json.loads(out)
    assert isinstance(report["dslc"], str)
    assert report["rules"] == ["fake:softmax", "fake:relu"]
    assert report["files_scanned"] == 5 and isinstance(report["files_scanned"], int)
    assert isinstance(report["seconds"], float)
    types_ = {"rule": str, "file": str, "class": (str, type(None)), "lines": list, "status": str, "reason": (str, type(None))}
    assert report["matches"]
    for m in report["matches"]:
        for key, typ in types_.items():
            assert isinstance(m[key], typ), (key, m)
        assert all(isinstance(n, int) for n in m["lines"]) and m["lines"] == sorted(m["lines"])
        assert m["status"] in ("applied", "skipped")
        assert (m["reason"] is None) == (m["status"] == "applied")
    by_file = {m["file"]: m for m in report["matches"]}
    assert by_file["a.py"] == {"rule": "fake:softmax", "file": "a.py", "class": "Model", "lines": [5],
                               "status": "applied", "reason": None, "code": None, "function": "forward"}
    assert by_file["keep.py"]["status"] == "skipped"
    assert by_file["keep.py"]["code"] == "S499"  # the fake rewriter gives a plain string: no code
    assert by_file["keep.py"]["reason"] == "the value is used after the match"
    assert by_file["pkg/b.py"]["file"] == "pkg/b.py"  # relative to the path given
    for e in report["errors"]:
        assert set(e) == {"file", "line", "code", "message"}
        assert isinstance(e["line"], int) and isinstance(e["code"], str)
    assert report["summary"]["fake:softmax"] == {"found": 3, "applied": 2, "skipped": 1, "suppressed": 0}


def test_select_filters_rules(fake_pipeline, tmp_path, capsys):
    write(tmp_path / "src" / "m.py", MODEL.replace("return y", "return y.relu()"))
    code, out, _ = run_cli(capsys, "--format", "json", "--select", "fake:relu", "src")
    report = json.loads(out)
    assert code == 0 and report["rules"] == ["fake:relu"]
    assert {m["rule"] for m in report["matches"]} == {"fake:relu"}
    assert report["files_changed"] == []
    code, out, _ = run_cli(capsys, "--format", "json", "src")
    assert {m["rule"] for m in json.loads(out)["matches"]} == {"fake:relu", "fake:softmax"}


def test_missing_kernel_reported_once_with_install_hint(fake_pipeline, tree, capsys):
    code, out, err = run_cli(capsys, "src")
    assert code == 0
    notes = [line for line in err.splitlines() if "nosuchkernelpkg" in line]
    assert len(notes) == 1
    assert "pip install nosuchkernelpkg" in notes[0] and "2 rewrites" in notes[0]
    code, out, _ = run_cli(capsys, "--format", "json", "src")
    (kernel,) = json.loads(out)["missing_kernels"]
    assert kernel["package"] == "nosuchkernelpkg" and kernel["install"] == "pip install nosuchkernelpkg"
    assert kernel["rules"] == ["fake:softmax"] and kernel["applied"] == 2
    # A selection that needs no kernel of that package reports nothing.
    code, out, _ = run_cli(capsys, "--format", "json", "--select", "fake:relu", "src")
    assert json.loads(out)["missing_kernels"] == []


@pytest.mark.skipif(shutil.which("patch") is None and shutil.which("git") is None, reason="needs patch or git")
def test_patch_dir_patches_apply_and_reproduce_the_output(fake_pipeline, tree, tmp_path, capsys):
    src, a, b, _ = tree
    nonl = write(src / "nonl.py", MODEL.rstrip("\n"))  # no newline at the end of the file
    latin_text = "# -*- coding: latin-1 -*-\n" + MODEL.replace("return y", "return y  # café")  # in the hunk
    latin = write(src / "l1.py", latin_text, "latin-1")
    bom = write(src / "bom.py", b"\xef\xbb\xbf" + MODEL.encode())
    original = snapshot(a, b, nonl)
    code, _, err = run_cli(capsys, "--patch-dir", "patches", "src")
    assert code == 0, err
    assert snapshot(a, b, nonl) == original  # patch mode does not edit sources
    patches = sorted((tmp_path / "patches").iterdir())
    assert [p.name for p in patches] == ["a.py.patch", "bom.py.patch", "l1.py.patch", "nonl.py.patch",
                                         "pkg__b.py.patch"]
    for p in patches:
        if shutil.which("patch"):
            subprocess.run(["patch", "-p1", "-s", "-i", str(p)], check=True, cwd=tmp_path)
        else:
            subprocess.run(["git", "apply", str(p)], check=True, cwd=tmp_path)
    assert a.read_text() == MODEL_OUT
    assert nonl.read_text() == MODEL_OUT.rstrip("\n")
    assert latin.read_bytes() == latin_text.replace("F.softmax(x, dim=-1)", "fast_softmax(x)").encode("latin-1")
    assert bom.read_bytes() == b"\xef\xbb\xbf" + MODEL_OUT.encode()
    assert "fast_softmax(h)" in b.read_text()


def test_rule_pack_errors_exit_2(fake_pipeline, tree, capsys, tmp_path):
    (tmp_path / "bad.adr").write_text("garbage\n")
    code = main(["apply", "--rules", "bad.adr", "src"])
    err = capsys.readouterr().err
    assert code == 2 and "ADR001" in err and "nothing was applied" in err


@pytest.mark.parametrize("args", [
    ["src", "no/such/dir"],
    ["--jobs", "0", "src"],
    ["--write", "--patch-dir", "p", "src"],
    ["--format", "xml", "src"],
])
def test_usage_errors_exit_2(fake_pipeline, tree, capsys, args):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "Traceback" not in err


def test_missing_rules_option_is_a_usage_error(capsys):
    assert main(["apply", "src"]) == 2
    assert "--rules" in capsys.readouterr().err


def test_help_teaches_with_examples(capsys):
    assert main(["apply", "--help"]) == 0
    out = capsys.readouterr().out
    for needle in ("--write", "--patch-dir", "--select", "examples:", "exit status", ".gitignore"):
        assert needle in out


def test_verify_unavailable_is_a_clear_usage_error(fake_pipeline, tree, capsys, monkeypatch):
    from dslc.apply import driver as apply

    monkeypatch.setattr(apply, "verify_available", lambda: False)
    code, _, err = run_cli(capsys, "--verify", "src")
    assert code == 2 and "--verify needs" in err


def test_verify_failure_keeps_the_file_and_reports(fake_pipeline, tree, capsys, monkeypatch):
    from dslc.apply import driver as apply

    src, a, b, _ = tree

    class Verdict:
        def __init__(self, ok):
            self.ok = ok
            self.summary = "max abs diff 0.5 > atol"

    seen = []
    applied_seen = []

    def verify(original, rewritten, *, path, rules, applied=None):
        seen.append((path, [r.name for pack in rules for r in pack.rules]))
        applied_seen.append(applied)
        return Verdict(not path.endswith("a.py"))

    monkeypatch.setattr(apply, "verify_available", lambda: True)
    monkeypatch.setattr(apply, "verify_sources", verify)
    code, out, _ = run_cli(capsys, "--verify", "--write", "--format", "json", "src")
    assert code == 1
    report = json.loads(out)
    assert a.read_text() == MODEL and "fast_softmax(h)" in b.read_text()
    (err,) = report["errors"]
    assert err["code"] == "E110" and "max abs diff" in err["message"]
    assert {m["file"]: m["status"] for m in report["matches"]} == {"a.py": "skipped", "pkg/b.py": "applied"}
    assert [r for _, r in seen] == [["softmax", "relu"]] * 2  # the loaded packs
    assert all(a and all(name.endswith(":softmax") for name, _ in a) for a in applied_seen)  # the rules applied


def test_a_crashing_stage_costs_only_its_file(fake_pipeline, tree, capsys, monkeypatch):
    from dslc.apply import driver as apply

    real = apply.rewrite_source

    def flaky(source, facts, matches, *, path):
        if path.endswith("a.py"):
            raise KeyError("boom")
        return real(source, facts, matches, path=path)

    monkeypatch.setattr(apply, "rewrite_source", flaky)
    src, a, b, _ = tree
    code, _, err = run_cli(capsys, "--write", "src")
    assert code == 1 and "a.py: error[E199]: internal error: KeyError" in err
    assert "fast_softmax(h)" in b.read_text()


def test_analysis_gets_prefilter_and_cache(fake_pipeline, tree, capsys, tmp_path):
    code = main(["apply", "--rules", "fake.adr", "--jobs", "1", "--cache-dir", "cache", "src"])
    capsys.readouterr()
    assert code == 0
    (call,) = fake_pipeline
    assert call["want"] == frozenset({"softmax", "relu"})
    assert call["cache_dir"] == "cache" and len(call["paths"]) == 3
    fake_pipeline.clear()
    run_cli(capsys, "src")
    assert fake_pipeline[0]["cache_dir"] is None  # --no-cache


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the fakes reach workers only by fork")
def test_workers_give_the_same_report(fake_pipeline, tree, capsys):
    src = tree[0]
    for n in range(6):
        write(src / f"more{n}.py", MODEL if n % 2 else PLAIN)
    write(src / "broken.py", "def (\n")
    reports = []
    for jobs in ("1", "3"):
        code = main(["apply", "--rules", "fake.adr", "--no-cache", "--jobs", jobs, "--format", "json", "src"])
        report = json.loads(capsys.readouterr().out)
        assert code == 1
        report.pop("seconds")
        reports.append(report)
    assert reports[0] == reports[1]
    assert len(reports[0]["files_changed"]) == 5


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from dslc.commands.apply import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "dslc" / "facts")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir().endswith(os.path.join(".cache", "dslc", "facts"))


def test_progress_bar_is_one_carriage_return_line():
    import io

    from dslc.commands.apply import _Progress

    stream = io.StringIO()
    bar = _Progress(stream)
    bar(0, 4)
    bar(2, 4)
    bar(4, 4)
    bar.clear()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r") == 5  # three updates, then clear: \r blanks \r
    assert "2/4 files" in text and "[" + "#" * 30 + "]" in text
    assert text.endswith("\r")


def test_no_progress_bar_when_stderr_is_not_a_terminal(fake_pipeline, tree, capsys):
    _, _, err = run_cli(capsys, "src")
    assert "\r" not in err


def test_patch_dir_that_is_a_file_is_a_usage_error(fake_pipeline, tree, capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    code, _, err = run_cli(capsys, "--patch-dir", "afile/sub", "src")
    assert code == 2 and "--patch-dir" in err
