"""The repository stands alone: no file points outside it, and the docs
describe the tool, not how it was made."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"(?<![\w.])(\.\./)+shared\b|/work/|\bshared/(spec|bench|seed)\b|\bSTYLE\.md\b")
HISTORY = re.compile(r"built in parallel|modules and owners|who owns what|\bthe lead\b|\bhelper session",
                     re.IGNORECASE)


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = [REPO / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [p for p in files if p.is_file() and p.suffix in (".py", ".md", ".adr", ".cfg", ".toml", ".yaml", ".txt", ".lark", "")]


def test_no_file_refers_to_files_outside_the_repository():
    me = Path(__file__).resolve()
    hits = []
    for path in _tracked():
        if path.resolve() == me:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, hits


def test_docs_describe_the_tool_not_its_development():
    hits = []
    for path in sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # `owner` is also a term of the analysis (the class that defines a method)
            if HISTORY.search(line) and "`owner`" not in line and "owner=" not in line:
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, hits


@pytest.mark.parametrize("page", ["report-format.md", "adopter-rules.md"])
def test_the_user_pages_exist_and_are_linked(page):
    assert (REPO / "docs" / page).is_file()
    linked = (REPO / "README.md").read_text(encoding="utf-8") + (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    assert f"docs/{page}" in linked or f"({page})" in linked
