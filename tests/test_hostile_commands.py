"""Hostile input for every command (`apply`, `check`, `structure`, `explain`,
`verify`): a clear diagnostic and a non-zero exit, never a traceback.

The file-system cases of `apply` alone are in test_hostile_files.py.  Here
each command meets a file with a NUL byte, a symlink loop, a directory where
a file is wanted, rule files that are empty or not UTF-8, and paths behind a
folder that cannot be searched.  That last one needs an unprivileged user,
which a root CI cannot be without `setpriv`; it is simulated in-process:
`os.stat`, `os.lstat`, `os.listdir`, `os.scandir` and `open` fail with EACCES
for the folder's contents, exactly as the kernel does for a user without
the folder's x bit (`Path.exists()` then raises; `os.path.exists()` says
False).
"""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
RULES = str(REPO / "rulepacks" / "adopter.adr")
MODEL = (REPO / "examples" / "bert_self_output.py").read_text()


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ok.py").write_text(MODEL)
    return tmp_path


def test_structure_reads_like_apply_a_nul_byte_is_e102_at_its_line(here, capsys):
    Path("nul.py").write_bytes(MODEL.encode().replace(b"import torch", b"import torch\x00", 1))
    line = MODEL[:MODEL.index("import torch")].count("\n") + 1
    code, _, err = cli(capsys, "structure", "nul.py")
    assert code == 1 and f"nul.py:{line}:0: error[E102]: not a text file (contains NUL bytes)" in err
    code, _, err = cli(capsys, "apply", "--rules", RULES, "--no-cache", "nul.py")
    assert code == 1 and f"nul.py:{line}: error[E102]" in err


def test_structure_of_a_bom_and_a_latin1_file(here, capsys):
    Path("bom.py").write_bytes(b"\xef\xbb\xbf" + MODEL.encode())
    Path("l1.py").write_bytes(("# -*- coding: latin-1 -*-\n# caf\xe9\n" + MODEL).encode("latin-1"))
    for name in ("bom.py", "l1.py"):
        code, out, _ = cli(capsys, "structure", name)
        assert code == 0 and "BertSelfOutput" in out


@pytest.mark.parametrize("make, status, message", [
    (lambda: os.mkdir("adir"), 2, "adir is a directory; give one Python file"),
    # a file that cannot be read is the file's error (1), as in apply and structure
    (lambda: (os.symlink("loop2.py", "adir"), os.symlink("adir", "loop2.py")), 1,
     "adir:0:0: error[E108]: symlink loop"),
])
def test_explain_names_what_is_wrong_with_the_file(here, capsys, make, status, message):
    make()
    code, _, err = cli(capsys, "explain", "adir:3", "--rules", RULES)
    assert code == status and message in err and "no such file" not in err


def test_a_missing_file_is_a_usage_error_in_every_command(here, capsys):
    """A path that names nothing is 2 (usage) in apply, check, structure and explain alike."""
    for args in (["apply", "--rules", RULES, "--no-cache", "gone.py"], ["check", "gone.adr"],
                 ["structure", "gone.py"], ["explain", "gone.py:3", "--rules", RULES]):
        code, _, err = cli(capsys, *args)
        assert code == 2 and "no such file or directory: gone." in err, (args, code, err)


def test_a_file_that_cannot_be_read_is_1_in_every_command(here, capsys):
    """A file that is there but is no text (NUL bytes) or no regular file (a
    FIFO): the file's error line and status 1 in apply, structure and explain."""
    Path("nul.py").write_bytes(b"import torch\x00\n")
    os.mkfifo("fifo.py")
    for name, code_ in (("nul.py", "E102"), ("fifo.py", "E106")):
        for args in (["apply", "--rules", RULES, "--no-cache", name], ["structure", name],
                     ["explain", f"{name}:1", "--rules", RULES]):
            code, _, err = cli(capsys, *args)
            assert code == 1 and f"{name}:" in err and f"error[{code_}]" in err, (args, code, err)


@pytest.mark.parametrize("content, message", [
    (b"", "error[ADR101]: missing pack header"),
    (b'pack p "x"\n# \xff\xfe\n', "error[ADR004]: not valid UTF-8"),
])
def test_bad_rule_files_in_every_command(here, capsys, content, message):
    Path("bad.adr").write_bytes(content)
    for args, want in ((["check", "bad.adr"], 1), (["apply", "--rules", "bad.adr", "ok.py"], 2),
                       (["explain", "ok.py:3", "--rules", "bad.adr"], 2),
                       (["verify", "ok.py", "ok.py", "--rules", "bad.adr"], 2)):
        code, out, err = cli(capsys, *args)
        assert code == want and message in out + err, (args, code, err)


# --------------------------------------------------------------------------- a folder that cannot be searched


@pytest.fixture
def closed(here, monkeypatch):
    """`secret/` holds files, but this process may not look inside it."""
    secret = here / "secret"
    secret.mkdir()
    (secret / "m.py").write_text(MODEL)
    (secret / "x.adr").write_text(Path(RULES).read_text())
    (secret / "f.py").write_text("def make(cls):\n    return cls(), ()\n")
    (secret / "pyproject.toml").write_text("[tool.dslc]\n")
    inside = str(secret) + os.sep

    def denied(path) -> bool:
        if isinstance(path, int):
            return False
        return os.path.abspath(os.fsdecode(os.fspath(path))).startswith(inside)

    def guard(real, listing=False):
        def call(path=".", *args, **kwargs):
            full = os.path.abspath(os.fsdecode(os.fspath(path))) if not isinstance(path, int) else ""
            if denied(path) or (listing and full == str(secret)):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    for name in ("stat", "lstat", "open"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("listdir", "scandir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), listing=True))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    return secret


@pytest.mark.parametrize("args, code, message", [
    (["check", "secret/x.adr"], 2, "secret/x.adr: cannot read: Permission denied"),
    (["check", "secret"], 2, "secret: cannot list directory: Permission denied"),
    (["apply", "--rules", "secret/x.adr", "ok.py"], 2, "secret/x.adr: cannot read: Permission denied"),
    (["apply", "--rules", RULES, "--no-cache", "secret/m.py"], 2, "secret/m.py: cannot read: Permission denied"),
    (["apply", "--rules", RULES, "--no-cache", "secret"], 1, "secret: error[E100]: cannot list directory"),
    (["apply", "--rules", RULES, "--config", "secret/pyproject.toml", "ok.py"], 2,
     "secret/pyproject.toml: cannot read: Permission denied"),
    (["structure", "secret/m.py"], 2, "dslc structure: error: secret/m.py: cannot read: Permission denied"),
    (["explain", "secret/m.py:3", "--rules", RULES], 2, "secret/m.py: cannot read: Permission denied"),
    (["explain", "ok.py:3", "--rules", "secret/x.adr"], 2, "secret/x.adr: cannot read: Permission denied"),
    (["verify", "ok.py", "ok.py", "--rules", "secret/x.adr"], 2, "secret/x.adr: cannot read: Permission denied"),
    (["verify", "ok.py", "ok.py", "--factory", "secret/f.py:make"], 2,
     "--factory 'secret/f.py:make': secret/f.py: cannot read: Permission denied"),
    (["verify", "secret/m.py", "ok.py"], 2, "secret/m.py: cannot read: Permission denied [E100]"),
])
def test_paths_behind_a_folder_that_cannot_be_searched(closed, capsys, args, code, message):
    got, out, err = cli(capsys, *args)
    assert got == code and message in out + err, (got, err)
    assert "cannot read: cannot read" not in err
