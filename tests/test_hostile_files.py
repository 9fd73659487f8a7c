"""Hostile file systems (issue 13): symlinks, special files, size, permissions, leftovers.

Every case runs the real `dslc apply` (rulepacks/adopter.adr on the BERT
example, which the `dropout_layernorm` rule rewrites).  Cases that could hang
or eat memory on a bad implementation (a FIFO, /dev/zero) run dslc in a
subprocess with a timeout; the rest call `dslc.cli.main` in-process.  Every
one also asserts that no traceback was printed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dslc import fileio
from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
RULES = str(REPO / "rulepacks" / "adopter.adr")
MODEL = (REPO / "examples" / "bert_self_output.py").read_text()
TIMEOUT = 120  # seconds: a hang is a failure, never a stuck suite


def dslc(*args, cwd=None, env=None, timeout=TIMEOUT, user=None):
    """Run `python -m dslc ARGS` in a subprocess; returns (rc, stdout, stderr) as text."""
    cmd = [sys.executable, "-m", "dslc", *map(str, args)]
    if user is not None:
        cmd = user + cmd
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dslc {' '.join(map(str, args))} hung for more than {timeout} s")
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in out + err, err
    return proc.returncode, out, err


def run(capsys, *args):
    code = main(["apply", "--rules", RULES, "--no-cache", "--jobs", "1", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "t"
    t.mkdir()
    (t / "model.py").write_text(MODEL)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.py").write_text(MODEL)
    return t, outside / "victim.py"


# --------------------------------------------------------------------------- symlinks


def test_write_never_goes_through_a_symlink_out_of_the_paths_given(tree, capsys):
    t, victim = tree
    (t / "x.py").symlink_to(victim)
    code, _, err = run(capsys, "--write", t)
    assert code == 1
    assert "x.py: error[E107]" in err and "--follow-symlinks-outside" in err
    assert victim.read_text() == MODEL  # the file outside is untouched
    assert (t / "x.py").is_symlink()
    assert (t / "model.py").read_text() != MODEL  # the file inside was rewritten
    assert "rewrote" in err and "rewrote " + str(t / "x.py") not in err


def test_follow_symlinks_outside_allows_it(tree, capsys):
    t, victim = tree
    (t / "x.py").symlink_to(victim)
    code, _, _ = run(capsys, "--write", "--follow-symlinks-outside", t)
    assert code == 0 and victim.read_text() != MODEL and (t / "x.py").is_symlink()


def test_symlinks_inside_the_paths_and_named_links_are_written(tree, capsys):
    t, victim = tree
    (t / "alias.py").symlink_to(t / "model.py")  # the same file: processed once
    code, _, _ = run(capsys, "--write", t)
    assert code == 0 and (t / "model.py").read_text() != MODEL
    link = t.parent / "named.py"
    link.symlink_to(victim)  # the user named the link itself: its target is a path given
    code, _, _ = run(capsys, "--write", link)
    assert code == 0 and victim.read_text() != MODEL


def test_symlink_loop_is_reported_not_followed(tree, capsys):
    t, _ = tree
    (t / "loop.py").symlink_to("loop.py")
    (t / "a.py").symlink_to("b.py")
    (t / "b.py").symlink_to("a.py")
    code, _, err = run(capsys, t)
    assert code == 1
    assert "loop.py: error[E108]" in err and "a.py: error[E108]" in err and "b.py: error[E108]" in err


# --------------------------------------------------------------------------- special files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_source_and_fifo_rule_pack_do_not_block(tree):
    t, _ = tree
    os.mkfifo(t / "x.py")
    code, out, err = dslc("apply", "--rules", RULES, "--no-cache", t)
    assert code == 1 and "x.py: error[E106]" in err and "FIFO" in err
    assert "+++ b/" in out  # the regular file was still processed
    os.mkfifo(t / "fifo.adr")
    code, _, err = dslc("apply", "--rules", t / "fifo.adr", "--no-cache", t / "model.py")
    assert code == 2 and "ADR007" in err and "FIFO" in err
    code, _, err = dslc("check", t / "fifo.adr")
    assert code == 1 and "ADR007" in err + _
    code, _, err = dslc("structure", t / "x.py")
    assert code == 1 and "E106" in err


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_symlink_to_dev_zero_is_never_read(tree):
    t, _ = tree
    (t / "zero.py").symlink_to("/dev/zero")
    code, _, err = dslc("apply", "--rules", RULES, "--no-cache", t)
    assert code == 1
    assert "zero.py: error[E106]" in err and "character device" in err
    code, _, err = dslc("apply", "--rules", RULES, "--no-cache", "/dev/zero")
    assert code == 1 and "/dev/zero: error[E106]" in err
    code, _, err = dslc("structure", t / "zero.py")
    assert code == 1 and "E106" in err


def test_socket_is_skipped_with_a_code(tree, capsys):
    import socket

    t, _ = tree
    path = str(t / "s.py")
    if len(path) > 100:
        pytest.skip("socket path too long for AF_UNIX")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        code, _, err = run(capsys, t)
    assert code == 1 and "s.py: error[E106]" in err and "socket" in err


def test_file_size_limit(tree, capsys):
    t, _ = tree
    code, _, err = run(capsys, "--max-file-size", "100", t)
    assert code == 1 and "model.py: error[E109]" in err and "--max-file-size" in err
    code, _, _ = run(capsys, "--max-file-size", "1M", t)
    assert code == 0
    code, _, _ = run(capsys, "--max-file-size", "0", t)  # 0: no limit
    assert code == 0
    assert main(["apply", "--rules", RULES, "--max-file-size", "lots", str(t)]) == 2
    assert "expected a size" in capsys.readouterr().err


# --------------------------------------------------------------------------- permissions


def test_read_only_file_is_refused_even_as_root_unless_forced(tree, capsys):
    t, _ = tree
    target = t / "model.py"
    os.chmod(target, 0o444)
    code, _, err = run(capsys, "--write", t)
    assert code == 1 and "model.py: error[E103]" in err and "read-only" in err and "--force" in err
    assert target.read_text() == MODEL
    code, _, _ = run(capsys, "--write", "--force", t)
    assert code == 0 and target.read_text() != MODEL
    assert stat.S_IMODE(target.stat().st_mode) == 0o444  # the mode is kept


def test_file_in_a_read_only_folder_is_refused(tree, capsys):
    t, _ = tree
    os.chmod(t, 0o555)
    try:
        code, _, err = run(capsys, "--write", t)
        assert code == 1 and "error[E103]" in err and "folder is read-only" in err
        assert (t / "model.py").read_text() == MODEL
        assert sorted(os.listdir(t)) == ["model.py"]
    finally:
        os.chmod(t, 0o755)


def _nobody_prefix():
    """A command prefix running as the unprivileged user `nobody`, or a skip reason."""
    if os.geteuid() != 0:
        return [], None  # already unprivileged
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None, "needs setpriv to drop root privileges"
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(prefix + [sys.executable, "-c", "import dslc"], capture_output=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    if probe.returncode != 0:
        return None, f"cannot run python as nobody: {probe.stderr.decode(errors='replace')[-200:]}"
    return prefix, None


def test_unreadable_folder_is_an_error_for_an_unprivileged_user():
    prefix, why = _nobody_prefix()
    if prefix is None:
        pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="dslc-hostile-"))
    try:
        os.chmod(top, 0o755)
        (top / "ok.py").write_text(MODEL)
        hidden = top / "secret"
        hidden.mkdir()
        (hidden / "inner.py").write_text(MODEL)
        (top / "unreadable.py").write_text(MODEL)
        os.chmod(top / "unreadable.py", 0o200 if os.geteuid() == 0 else 0)
        if os.geteuid() == 0:
            for p in (top, top / "ok.py"):
                os.chown(p, 65534, 65534)
        os.chmod(hidden, 0)
        code, _, err = dslc("apply", "--rules", RULES, "--no-cache", top, cwd="/", user=prefix)
        assert code == 1, err
        assert f"{hidden}: error[E100]: cannot list directory" in err
        assert "unreadable.py: error[E100]" in err
        assert "2 errors" in err
    finally:
        os.chmod(top / "secret", 0o755)
        shutil.rmtree(top, ignore_errors=True)


# --------------------------------------------------------------------------- leftovers


def test_stale_temporary_files_are_removed_and_live_ones_kept(tree, capsys):
    t, _ = tree
    host = fileio._host()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = t / f".model.py.{dead.pid}@{host}.abcd_123.dslc-tmp"
    live = t / f".model.py.{os.getpid()}@{host}.live0001.dslc-tmp"
    old_legacy = t / ".model.py.oldone12.dslc-tmp"  # an older dslc's name: no pid, judged by age
    young_legacy = t / ".model.py.young123.dslc-tmp"
    not_ours = t / ".model.py.notours1.tmp"
    for p in (stale, live, old_legacy, young_legacy, not_ours):
        p.write_text("partial")
    hour_ago = time.time() - 3600
    os.utime(old_legacy, (hour_ago, hour_ago))
    # A dry run changes nothing, not even leftovers.
    run(capsys, t)
    assert stale.exists()
    code, _, err = run(capsys, "--write", t)
    assert code == 0
    assert not stale.exists() and not old_legacy.exists()
    assert live.exists() and young_legacy.exists() and not_ours.exists()
    assert "removed 2 temporary files left by an interrupted dslc run" in err


def test_an_interrupted_write_leaves_a_file_the_next_run_removes(tree, capsys, monkeypatch):
    t, _ = tree
    # The process dies between writing the temporary file and renaming it.
    real_replace = os.replace

    def die(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", die)
    monkeypatch.setattr(fileio, "_pid_alive", lambda pid: False)  # as if after kill -9
    original_unlink = os.unlink
    monkeypatch.setattr(os, "unlink", lambda p: None)  # kill -9: no cleanup ran
    assert main(["apply", "--rules", RULES, "--no-cache", "--jobs", "1", "--write", str(t)]) == 130
    left = [p for p in os.listdir(t) if p.endswith(".dslc-tmp")]
    assert len(left) == 1 and f".{os.getpid()}@" in left[0]
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "unlink", original_unlink)
    capsys.readouterr()
    code, _, err = run(capsys, "--write", t)
    assert code == 0 and not [p for p in os.listdir(t) if p.endswith(".dslc-tmp")]
    assert (t / "model.py").read_text() != MODEL


def test_full_disk_patch_dir_is_e103_and_not_counted(tree, capsys, monkeypatch):
    t, _ = tree
    out = t.parent / "patches"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run(capsys, "--patch-dir", out, t)
    assert code == 1 and "error[E103]" in err and "No space left on device" in err
    assert "patched 0, 1 error" in err
    assert not list(out.iterdir())
    code, out_json, _ = run(capsys, "--patch-dir", out, "--format", "json", t)
    report = json.loads(out_json)
    assert report["patches"] == [] and report["errors"][0]["code"] == "E103"


# --------------------------------------------------------------------------- interrupt


def test_ctrl_c_exits_130_without_a_traceback(tree):
    t, _ = tree
    # A factory that blocks lets the test interrupt a verify run at a known point.
    ready = t / "ready"
    factory = t / "factory.py"
    factory.write_text(
        "import time, pathlib\n"
        f"def make(cls):\n    pathlib.Path({str(ready)!r}).write_text('x')\n    time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "dslc", "verify", str(t / "model.py"), str(t / "model.py"),
                             "--class", "BertSelfOutput", "--factory", f"{factory}:make", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            # as from a terminal (a background shell job starts with SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + TIMEOUT
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=10)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in out + err and b"interrupted" in err


@pytest.mark.slow
def test_ctrl_c_during_parallel_apply_stops_the_workers_quietly():
    transformers = pytest.importorskip("transformers")
    models = Path(transformers.__file__).parent / "models"
    children = Path("/proc/self/task")
    if not children.exists():
        pytest.skip("needs /proc to see the worker processes")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "dslc", "apply", "--rules", RULES, "--no-cache", "--jobs", "2",
                             str(models)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + TIMEOUT
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        while time.time() < deadline and proc.poll() is None:
            if kids.exists() and len(kids.read_text().split()) >= 2:
                break
            time.sleep(0.1)
        time.sleep(2)  # the workers are analysing
        assert proc.poll() is None, "the run finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        # The workers are stopped, not waited for: without that, the run went on
        # for the rest of its chunks (about a minute here) before exiting.
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not stop the run within 30 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and b"Traceback" not in err, err[-2000:]
