"""The daily loop of `dslc apply`: [tool.dslc] configuration, `--ignore`,
`# dslc: ignore` suppressions, `--check`, `--format sarif` (validated against
the SARIF 2.1.0 schema), colour, and the pre-commit hook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dslc import color
from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "rulepacks" / "adopter.adr"
BERT = (REPO / "examples" / "bert_self_output.py").read_text()
SCHEMA = REPO / "tests" / "data" / "sarif-schema-2.1.0.json"

SOFTMAX = '''import torch.nn.functional as F


def attend(scores):
    probs = F.softmax(scores, dim=-1)
    return probs


def attend_too(scores):
    return F.softmax(scores, dim=-1)  # dslc: ignore[adopter:softmax]
'''


def run(capsys, *args):
    code = main(["apply", "--no-cache", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def project(tmp_path: Path, table: str) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.dslc]\n" + table)
    shutil.copy(PACK, tmp_path / "adopter.adr")
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "bert.py").write_text(BERT)
    (src / "attn.py").write_text(SOFTMAX)
    return src


# -- configuration -----------------------------------------------------------


def test_config_found_upward_and_flags_win(tmp_path, capsys, monkeypatch):
    src = project(tmp_path, 'rules = ["adopter.adr"]\nselect = ["adopter:softmax"]\njobs = 1\n')
    monkeypatch.chdir(src)  # rules are relative to the pyproject, not to the cwd
    code, out, _ = run(capsys, "--format", "json", ".")
    report = json.loads(out)
    assert code == 0 and report["rules"] == ["adopter:softmax"]
    code, out, _ = run(capsys, "--format", "json", "--select", "adopter:dropout_layernorm", ".")
    assert json.loads(out)["rules"] == ["adopter:dropout_layernorm"]  # the flag wins
    code, out, _ = run(capsys, "--format", "json", "--no-config", "--rules", str(PACK), ".")
    # the nine rules less adopter:linear_batchnorm and adopter:fused_qkv, which are `unsafe` (left out without --unsafe)
    assert len(json.loads(out)["rules"]) == 7


def test_config_ignore_exclude_and_the_ignore_flag(tmp_path, capsys):
    src = project(tmp_path, 'rules = "adopter.adr"\nignore = ["softmax"]\nexclude = ["attn.py"]\n')
    code, out, _ = run(capsys, "--format", "json", src)
    report = json.loads(out)
    assert "adopter:softmax" not in report["rules"] and len(report["rules"]) == 6  # and not the unsafe rules
    assert report["files_scanned"] == 1
    code, out, err = run(capsys, "--format", "json", "--ignore", "adopter:dropout_layernorm", "--exclude", "nothing", src)
    report = json.loads(out)
    assert "adopter:dropout_layernorm" not in report["rules"] and "adopter:softmax" in report["rules"]
    assert report["files_scanned"] == 2 and [Path(p).name for p in report["files_changed"]] == ["attn.py"]
    code, out, err = run(capsys, "--rules", str(PACK), "--ignore", "adopter:nope", src)
    assert "ADR402" in err and code == 0


@pytest.mark.parametrize("table, words", [
    ("rulez = []\n", "unknown key 'rulez'"),
    ("jobs = 0\n", "`jobs` must be a whole number"),
    ("unsafe = 'yes'\n", "`unsafe` must be true or false"),
    ("rules = [1]\n", "`rules` must be a string or a list of strings"),
    ("rules = [\n", "not valid TOML"),
])
def test_bad_config_is_a_usage_error(tmp_path, capsys, table, words):
    src = project(tmp_path, table)
    code, out, err = run(capsys, src)
    assert code == 2 and words in err and str(tmp_path / "pyproject.toml") in err


def test_no_rules_anywhere_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "m.py").write_text("x = 1\n")
    code, _, err = run(capsys, tmp_path / "m.py")
    assert code == 2 and "no rule packs" in err


# -- suppressions ---------------------------------------------------------------


def test_suppression_comments(tmp_path, capsys):
    f = tmp_path / "attn.py"
    f.write_text(SOFTMAX)
    code, out, err = run(capsys, "--rules", PACK, "--select", "adopter:softmax", "--format", "json", f)
    report = json.loads(out)
    by_line = {m["lines"][0]: m for m in report["matches"]}
    assert by_line[5]["status"] == "applied"
    assert by_line[10]["status"] == "skipped" and by_line[10]["code"] == "S406"
    assert report["summary"]["adopter:softmax"] == {"found": 2, "applied": 1, "skipped": 0, "suppressed": 1}
    assert report["suppressed"] == 1
    # a comment naming another rule does not suppress; a bare one suppresses every rule
    f.write_text(SOFTMAX.replace("[adopter:softmax]", "[adopter:fused_qkv]"))
    report = json.loads(run(capsys, "--rules", PACK, "--select", "adopter:softmax", "--format", "json", f)[1])
    assert report["suppressed"] == 0
    f.write_text(SOFTMAX.replace("probs = F.softmax(scores, dim=-1)", "probs = F.softmax(  # dslc: ignore\n        scores, dim=-1)"))
    code, out, err = run(capsys, "--rules", PACK, "--select", "adopter:softmax", f)
    assert any(line.startswith("rule ") and line.rstrip().endswith("suppressed") for line in err.splitlines())
    assert "skipped[S406]" in err and "+    return softmax" not in out
    # a `#` inside a string is no comment
    f.write_text(SOFTMAX.replace("# dslc: ignore[adopter:softmax]", "").replace("scores, dim=-1)\n", "scores, dim=-1)  # ok\n")
                 + "\nS = '# dslc: ignore'\n")
    report = json.loads(run(capsys, "--rules", PACK, "--select", "adopter:softmax", "--format", "json", f)[1])
    assert report["suppressed"] == 0


# -- --check ----------------------------------------------------------------------


def test_check_exits_1_when_a_rewrite_applies_and_writes_nothing(tmp_path, capsys):
    f = tmp_path / "bert.py"
    f.write_text(BERT)
    before = f.stat().st_mtime_ns
    code, out, err = run(capsys, "--rules", PACK, "--check", f)
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("would rewrite")] == [
        f"would rewrite {os.path.relpath(f).replace(os.sep, '/').lstrip('/')}"] or "would rewrite " in err and "bert.py" in err
    assert f.read_text() == BERT and f.stat().st_mtime_ns == before
    code, out, err = run(capsys, "--rules", PACK, "--check", "--diff", f)
    assert code == 1 and "+++ b/" in out
    g = tmp_path / "plain.py"
    g.write_text("x = 1\n")
    code, out, err = run(capsys, "--rules", PACK, "--check", g)
    assert code == 0 and "would rewrite" not in err
    code, out, err = run(capsys, "--rules", PACK, "--check", "--write", g)
    assert code == 2


# -- SARIF ----------------------------------------------------------------------------


def _validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (the test extra has it)")
    return jsonschema.Draft4Validator(json.loads(SCHEMA.read_text()))


def _apply_fixes(text: str, replacements) -> str:
    for rep in sorted(replacements, key=lambda r: r["deletedRegion"]["charOffset"], reverse=True):
        lo = rep["deletedRegion"]["charOffset"]
        hi = lo + rep["deletedRegion"]["charLength"]
        text = text[:lo] + rep.get("insertedContent", {}).get("text", "") + text[hi:]
    return text


def test_sarif_validates_and_its_fixes_give_the_rewrite(tmp_path, capsys, monkeypatch):
    validator = _validator()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert.py").write_text(BERT)
    (tmp_path / "attn.py").write_text(SOFTMAX)
    (tmp_path / "bad.py").write_text("class (:\n")
    code, out, _ = run(capsys, "--rules", PACK, "--format", "sarif", ".")
    assert code == 1  # bad.py
    log = json.loads(out)
    errors = sorted(validator.iter_errors(log), key=str)
    assert not errors, errors[:3]
    [sarif_run] = log["runs"]
    results = sarif_run["results"]
    assert {(r["ruleId"], r["level"]) for r in results} >= {("adopter:dropout_layernorm", "warning"),
                                                           ("adopter:softmax", "warning"), ("adopter:softmax", "note")}
    suppressed = [r for r in results if r.get("suppressions")]
    assert len(suppressed) == 1 and suppressed[0]["properties"]["code"] == "S406"
    assert [n["descriptor"]["id"] for n in sarif_run["invocations"][0]["toolExecutionNotifications"]] == ["E101"]
    # applying every fix of a file gives what `dslc apply --write` writes
    reps = [rep for r in results for fx in r.get("fixes", ()) for ch in fx["artifactChanges"]
            if ch["artifactLocation"]["uri"] == "bert.py" for rep in ch["replacements"]]
    fixed = _apply_fixes(BERT, reps)
    assert run(capsys, "--rules", PACK, "--write", "bert.py")[0] == 0
    assert fixed == (tmp_path / "bert.py").read_text() != BERT


@pytest.mark.slow
def test_sarif_of_the_benchmark_corpus_validates(transformers_src, tmp_path):
    validator = _validator()
    from dslc import corpus

    files = [str(p) for p in corpus.benchmark_files(transformers_src)]
    assert len(files) == 199
    proc = subprocess.run([sys.executable, "-m", "dslc", "apply", "--rules", str(PACK), "--format", "sarif",
                           "--cache-dir", str(tmp_path / "cache"), *files], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    log = json.loads(proc.stdout)
    assert not list(validator.iter_errors(log))
    assert len(log["runs"][0]["results"]) > 100


# -- colour -------------------------------------------------------------------------


class _Tty:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_colour_follows_the_terminal_and_the_environment(monkeypatch):
    for var in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(var, raising=False)
    assert color.enabled(_Tty(True)) and not color.enabled(_Tty(False))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color.enabled(_Tty(True)) and color.enabled(_Tty(False), "always")
    monkeypatch.setenv("NO_COLOR", "")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert color.enabled(_Tty(False)) and not color.enabled(_Tty(True), "never")
    monkeypatch.setenv("FORCE_COLOR", "0")
    monkeypatch.setenv("TERM", "dumb")
    assert not color.enabled(_Tty(True))


def test_colour_in_the_output_only_when_asked_or_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    f = tmp_path / "bert.py"
    f.write_text(BERT)
    _, out, err = run(capsys, "--rules", PACK, f)
    assert "\x1b[" not in out and "\x1b[" not in err  # pytest's capture is no terminal
    _, out2, err2 = run(capsys, "--rules", PACK, "--color", "always", f)
    assert "\x1b[32m+" in out2 and "\x1b[31m-" in out2
    assert color.strip(out2) == out
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b[" in run(capsys, "--rules", PACK, f)[1]
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR")
    assert "\x1b[" not in run(capsys, "--rules", PACK, "--color", "auto", f)[1]


# -- pre-commit ------------------------------------------------------------------------


def test_pre_commit_hook_file_runs_on_a_sample_repo(tmp_path):
    """The `dslc` hook of .pre-commit-hooks.yaml, run by pre-commit on a git repo.

    The hook's own `language: python` would build an environment from this
    repository (network); the test runs the same entry, args and file
    filters as a `local` hook with the installed dslc instead.
    """
    pre_commit = shutil.which("pre-commit") or (str(Path(sys.executable).parent / "pre-commit")
                                                if (Path(sys.executable).parent / "pre-commit").exists() else None)
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    if pre_commit is None or shutil.which("git") is None:
        pytest.skip("pre-commit or git is not installed (pip install pre-commit)")
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    hook = dict(hooks["dslc"])
    assert hook["entry"].startswith("dslc apply --check")
    bindir = Path(sys.executable).parent
    hook.update(language="system", entry=f"{bindir / 'dslc'} {hook['entry'].split(' ', 1)[1]}",
                args=["--rules", str(PACK), "--no-cache"])
    hook.pop("description", None)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, PRE_COMMIT_HOME=str(tmp_path / "pc-home"), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump({"repos": [{"repo": "local", "hooks": [hook]}]}))
    (repo / "plain.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    ok = subprocess.run([pre_commit, "run", "--all-files"], cwd=repo, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (repo / "bert.py").write_text(BERT)
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    bad = subprocess.run([pre_commit, "run", "--all-files"], cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "would rewrite bert.py" in bad.stdout and (repo / "bert.py").read_text() == BERT


def test_check_output_is_coloured_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    f = tmp_path / "p.adr"
    f.write_text('pack p "d"\nrule r "x" {\n  kernel torch.relu\n  exact\n'
                 '  forward { torch.relu($x) -> $y; } => { torch.relu($w) -> $y; }\n}\n')
    assert main(["check", str(f)]) == 1
    plain = capsys.readouterr().out
    assert "\x1b[" not in plain and "error[ADR201]" in plain
    assert main(["check", "--color", "always", str(f)]) == 1
    painted = capsys.readouterr().out
    assert "\x1b[31m\x1b[1merror[ADR201]\x1b[0m" in painted
    assert color.strip(painted).split("checked")[0] == plain.split("checked")[0]  # the timing differs


def test_unsafe_key_is_read_and_the_flag_wins(tmp_path):
    from dslc.cli import build_parser
    from dslc.commands.apply import _settings

    src = project(tmp_path, 'rules = ["adopter.adr"]\nunsafe = true\njobs = 3\ncache-dir = "cache"\n')
    settings, problem = _settings(build_parser().parse_args(["apply", str(src)]))
    assert problem is None and settings.unsafe is True and settings.jobs == 3
    assert settings.cache_dir == os.path.relpath(tmp_path / "cache")
    assert settings.rules == [os.path.relpath(tmp_path / "adopter.adr")]
    settings, _ = _settings(build_parser().parse_args(["apply", "--jobs", "1", "--cache-dir", "/x", str(src)]))
    assert settings.jobs == 1 and settings.cache_dir == "/x"
    settings, _ = _settings(build_parser().parse_args(["apply", "--no-config", "--rules", str(PACK), str(src)]))
    assert settings.unsafe is False and settings.jobs >= 1


def test_sarif_has_one_result_per_near_miss(tmp_path, capsys, monkeypatch):
    validator = _validator()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "attn.py").write_text(SOFTMAX + "\n\ndef other(scores):\n    return F.softmax(scores, dim=1)\n")
    code, out, _ = run(capsys, "--rules", PACK, "--select", "adopter:softmax", "--format", "sarif", "--near-misses", ".")
    log = json.loads(out)
    assert not list(validator.iter_errors(log))
    near = [r for r in log["runs"][0]["results"] if r["properties"]["status"] == "near-miss"]
    assert near and all(r["level"] == "note" and r["properties"]["code"].startswith("N") for r in near)
    assert near[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "attn.py"
