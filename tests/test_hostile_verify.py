"""`dslc verify` cannot be fooled by the code it loads (issue 13, and issue 12's verify items).

The user's code runs in a child process: its `sys.exit`, `os._exit`, a
`BaseException` or a hang is a failure of the class with the reason, never
dslc's exit status.  Nothing compared is no pass.  NaN/Inf are explicit.  The
sources are read as `dslc apply` reads them.  Every run goes through
`dslc.cli.main` and must print no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dslc.verify import equivalence as verify
from dslc.verify.compare import Tally
from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent

MODEL = '''\
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.dense(x) * 2.0


class Other(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.dense(x) + 1.0
'''

FACTORY = '''\
import torch


def make(cls):
    torch.manual_seed(0)
    return cls(), (torch.randn(2, 3, 8),)


def base(cls):
    raise BaseException("factory gave up")


def exits(cls):
    import sys
    sys.exit(3)


def hard_exit(cls):
    import os
    if cls.__name__ == "Block":
        os._exit(0)
    return make(cls)


def hang(cls):
    import time
    time.sleep(600)


def nan_inputs(cls):
    x = torch.randn(2, 3, 8)
    x[0, 1, 2] = float("nan")
    x[1, 0, 0] = float("inf")
    return cls(), (x,)
'''


@pytest.fixture
def files(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "factories.py").write_text(FACTORY)

    def write(rewritten: str, factory: str = "make") -> tuple[str, str, str]:
        (tmp_path / "rewritten.py").write_text(rewritten)
        return str(tmp_path / "model.py"), str(tmp_path / "rewritten.py"), f"{tmp_path / 'factories.py'}:{factory}"

    return write


def cli(capsys, *argv):
    code = main(["verify", *map(str, argv)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err, out.err
    return code, out.out, out.err


CHANGED = MODEL.replace("return self.dense(x) * 2.0", "return 2.0 * self.dense(x)")  # same values


def test_a_correct_rewrite_passes(files, capsys):
    orig, new, factory = files(CHANGED)
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 0 and "pass  Block" in out, out


@pytest.mark.parametrize("line, reason", [
    ("import sys\nsys.exit(4)\n", "sys.exit(4)"),
    ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
    ("raise SystemExit\n", "sys.exit(None)"),
    ("raise KeyError('k')\n", "KeyError"),
    ("class Stop(BaseException):\n    pass\nraise Stop('no')\n", "Stop: no"),
])
def test_rewritten_file_that_exits_at_import_fails_with_the_reason(files, capsys, line, reason):
    orig, new, factory = files(CHANGED + "\n" + line)
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 1, out
    assert "FAIL  the rewritten file does not import" in out and reason in out


def test_os_exit_at_import_is_a_failure_not_dslc_exit_status(files, capsys):
    orig, new, factory = files(CHANGED + "\nimport os\nos._exit(0)\n")
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 1, out
    assert "FAIL  the verification process ended while importing the original and the rewritten file" in out
    assert "exit status 0" in out


def test_os_exit_at_import_through_the_real_command(files):
    # The whole command in a process of its own: dslc's status is not the user's 0.
    orig, new, factory = files(CHANGED + "\nimport os\nos._exit(0)\n")
    proc = subprocess.run([sys.executable, "-m", "dslc", "verify", orig, new, "--factory", factory],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1 and "FAILED" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("factory, reason", [
    ("base", "BaseException: factory gave up"),
    ("exits", "sys.exit(3)"),
])
def test_factory_raising_base_exception_fails_the_class(files, capsys, factory, reason):
    orig, new, fac = files(CHANGED, factory)
    code, out, _ = cli(capsys, orig, new, "--factory", fac, "--class", "Block")
    assert code == 1 and "FAIL  Block" in out and reason in out, out


def test_os_exit_in_a_factory_fails_that_class_and_the_others_still_run(files, capsys):
    changed = CHANGED.replace("return self.dense(x) + 1.0", "return 1.0 + self.dense(x)")
    orig, new, fac = files(changed, "hard_exit")
    code, out, _ = cli(capsys, orig, new, "--factory", fac)
    assert code == 1
    assert "FAIL  Block: the verification process ended while comparing this class" in out
    assert "pass  Other" in out, out


def test_a_hang_times_out(files, capsys):
    orig, new, fac = files(CHANGED, "hang")
    code, out, _ = cli(capsys, orig, new, "--factory", fac, "--class", "Block", "--timeout", "3")
    assert code == 1 and "FAIL  Block" in out and "timed out after 3 s" in out


def test_renamed_class_is_a_failure_not_zero_compared(files, capsys):
    orig, new, factory = files(MODEL.replace("class Block(", "class Renamed("))
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 1
    assert "FAIL  Block: the rewritten file no longer defines this class" in out


def test_all_skipped_is_a_failure_unless_allowed(files, capsys):
    orig, new, factory = files(CHANGED.replace("import torch\n", "import torch\nimport not_a_kernel_pkg_xyz\n"))
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 1 and "skip  Block" in out and "nothing was compared" in out, out
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--allow-skip")
    assert code == 0 and "accepted: --allow-skip" in out
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["nothing_compared"] is True


def test_only_module_level_changes_compare_nothing(files, capsys):
    orig, new, factory = files(MODEL + "\nUNUSED = 1\n")
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 1 and "no class of the original is affected" in out


def test_nan_and_inf_at_the_same_positions_pass_and_are_reported(files, capsys):
    orig, new, fac = files(CHANGED, "nan_inputs")
    code, out, _ = cli(capsys, orig, new, "--factory", fac, "--class", "Block")
    assert code == 0, out
    assert "NaN/Inf values equal on both sides (same positions)" in out
    code, out, _ = cli(capsys, orig, new, "--factory", fac, "--class", "Block", "--format", "json")
    (result,) = json.loads(out)["results"]
    assert result["status"] == "pass" and result["nonfinite_equal"] > 0


def test_nan_where_the_original_has_a_number_fails_with_the_values(files, capsys):
    broken = CHANGED.replace("return 2.0 * self.dense(x)",
                             "y = 2.0 * self.dense(x)\n        return torch.where(y > 0.5, y * float('nan'), y)")
    orig, new, factory = files(broken)
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--class", "Block")
    assert code == 1
    line = next(l for l in out.splitlines() if "FAIL  Block" in l)
    assert "the rewrite nan" in line and "the original gives" in line and "at index" in line
    assert "max abs error 0" not in line


def test_inf_of_the_other_sign_fails(files, capsys):
    broken = CHANGED.replace("return 2.0 * self.dense(x)", "return 2.0 * self.dense(x) - float('inf') * (x[..., :1] > 99)")
    orig, new, factory = files(broken)
    # -inf * False is nan: a NaN facing the original's numbers, reported with both values.
    code, out, _ = cli(capsys, orig, new, "--factory", factory, "--class", "Block")
    assert code == 1 and "the original gives" in out


def test_unit_compare_nan_inf():
    import torch

    tally = Tally(verify.Tolerance())
    nan, inf = float("nan"), float("inf")
    tally.compare("t", torch.tensor([1.0, nan, inf, -inf]), torch.tensor([1.0, nan, inf, -inf]), torch)
    assert tally.worst is None and tally.nonfinite == 3
    tally.compare("u", torch.tensor([1.0, inf]), torch.tensor([1.0, -inf]), torch)
    assert tally.worst is not None and "the original gives inf and the rewrite -inf at index [1]" in tally.worst.message


def test_pass_within_atol_shows_no_alarming_relative_error():
    import torch

    tally = Tally(verify.Tolerance(atol=1e-5, rtol=1e-4))
    # 1e-9 against 2e-9: 100% relative, but far inside atol.
    tally.compare("t", torch.tensor([1e-9, 1.0]), torch.tensor([2e-9, 1.0]), torch)
    assert tally.worst is None and tally.max_rel < 1e-3


def test_latin1_cookie_and_bom_are_read_as_apply_reads_them(files, capsys, tmp_path):
    cookie = "# -*- coding: latin-1 -*-\n# caf\xe9\n"
    orig = tmp_path / "latin.py"
    new = tmp_path / "latin_new.py"
    orig.write_bytes((cookie + MODEL).encode("latin-1"))
    new.write_bytes((cookie + CHANGED).encode("latin-1"))
    _, _, factory = files(CHANGED)
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 0 and "pass  Block" in out, out
    orig.write_bytes(b"\xef\xbb\xbf" + MODEL.encode())
    new.write_bytes(b"\xef\xbb\xbf" + CHANGED.encode())
    code, out, _ = cli(capsys, orig, new, "--factory", factory)
    assert code == 0 and "pass  Block" in out, out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_as_input_is_a_usage_error_without_blocking(files, tmp_path):
    orig, _, factory = files(CHANGED)
    os.mkfifo(tmp_path / "pipe.py")
    proc = subprocess.run([sys.executable, "-m", "dslc", "verify", orig, str(tmp_path / "pipe.py")],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "E106" in proc.stderr and "Traceback" not in proc.stderr


PLAIN_CONV = '''\
import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))
'''


def test_plain_module_inputs_from_the_first_conv_and_from_input_shape(tmp_path, capsys):
    (tmp_path / "a.py").write_text(PLAIN_CONV)
    (tmp_path / "b.py").write_text(PLAIN_CONV.replace("return self.bn(self.conv(x))", "y = self.conv(x)\n        return self.bn(y)"))
    code, out, _ = cli(capsys, tmp_path / "a.py", tmp_path / "b.py")
    assert code == 0 and "inputs synthesised: shape 2x3x8x8 from the first Conv2d's in_channels=3" in out, out
    code, out, _ = cli(capsys, tmp_path / "a.py", tmp_path / "b.py", "--input-shape", "1,3,5,5")
    assert code == 0 and "inputs synthesised: from --input-shape 1x3x5x5" in out, out
    code, out, _ = cli(capsys, tmp_path / "a.py", tmp_path / "b.py", "--input-shape", "1,7,5,5")
    assert code == 1 and "skip  ConvBlock: cannot synthesise inputs" in out


def test_format_has_help(capsys):
    assert main(["verify", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--format {text,json}" in out and "json (the report as an object)" in out
    assert "--allow-skip" in out and "--input-shape" in out and "--timeout" in out


def test_apply_verify_keeps_skips_as_warnings(tmp_path):
    # apply --verify writes a rewrite whose classes were all skipped (W110 warnings), as before.
    from dslc.apply import driver as apply

    (tmp_path / "m.py").write_text(MODEL)
    skipped = CHANGED.replace("import torch\n", "import torch\nimport not_a_kernel_pkg_xyz\n")
    report = apply.verify_sources(MODEL, skipped, path=str(tmp_path / "m.py"), rules=())
    assert report.ok and {r.status for r in report.results} == {"skipped"}
    assert not verify.verify_sources(MODEL, skipped, path=str(tmp_path / "m.py")).ok


def test_a_process_left_behind_by_the_user_code_does_not_hold_verify(files, capsys, tmp_path):
    # The factory forks a process that keeps the result pipe open and sleeps;
    # verify must end when its own child ends (not when the pipe closes), and
    # the stray process is stopped with the child's process group.
    pid_file = tmp_path / "stray.pid"
    factory_src = FACTORY + f'''

def forks(cls):
    import os, time
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    open({str(pid_file)!r}, "w").write(str(pid))
    return make(cls)
'''
    orig, new, fac = files(CHANGED, "forks")
    Path(fac.rpartition(":")[0]).write_text(factory_src)
    code, out, _ = cli(capsys, orig, new, "--factory", fac, "--class", "Block", "--timeout", "20")
    assert code == 0 and "pass  Block" in out, out
    stray = int(pid_file.read_text())
    import time

    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(stray, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{stray}/stat").exists() and Path(f"/proc/{stray}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the process the factory started is still running")
