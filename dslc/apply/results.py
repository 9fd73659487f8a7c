"""The values an apply run produces: per-match, per-file and whole-run results.

`dslc.apply.driver` fills them, `dslc.apply.report` and `dslc.apply.sarif`
render them, `dslc.apply.resultcache` stores a `FileResult`'s entries.  Plain
frozen dataclasses with no behaviour beyond derived properties, so every one of
those modules can import them without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dslc.fileio import Found

Mode = Literal["diff", "write", "patch"]


@dataclass(frozen=True, slots=True)
class MatchEntry:
    """One match as reported (report.md: rule, file, class, lines, status, reason)."""

    rule: str
    file: str
    class_name: str | None
    lines: tuple[int, ...]
    status: Literal["applied", "skipped"]
    reason: str | None = None
    function: str | None = None
    code: str | None = None  # the reason's registered code (dslc/codes.py); None when applied


@dataclass(frozen=True, slots=True)
class NearMissEntry:
    """A place holding a rule's anchors where no rewrite was applied, and why.

    `kind` is `unmatched` (a pattern node, an init argument or a constraint
    did not fit: `dslc.rewrite.nearmiss`) or `skipped` (the rule matched but a check
    refused it: the skipped match's reason).
    """

    rule: str
    file: str
    class_name: str | None
    line: int
    reason: str
    function: str | None = None
    kind: Literal["unmatched", "skipped"] = "unmatched"
    code: str | None = None  # N1xx-N4xx for unmatched places, the skip reason's S code for skipped ones


@dataclass(frozen=True, slots=True)
class FileError:
    """An `errors` (or `warnings`) entry: file, 1-based line (0: whole file), code, message."""

    file: str
    line: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one file.

    `original`/`new_source` are decoded text (`new_source` None: no change);
    `written` says the file on disk was replaced (mode `write`); `patch` is
    the path of the `.patch` written for it (mode `patch`).
    """

    found: Found
    matches: tuple[MatchEntry, ...] = ()
    errors: tuple[FileError, ...] = ()
    warnings: tuple[FileError, ...] = ()
    original: str | None = None
    new_source: str | None = None
    written: bool = False
    patch: str | None = None
    seconds: float = 0.0
    near_misses: tuple[NearMissEntry, ...] = ()  # the `unmatched` ones (with `near_misses`)

    @property
    def changed(self) -> bool:
        return self.new_source is not None and self.new_source != self.original


@dataclass(frozen=True, slots=True)
class MissingKernel:
    """A kernel package a pack requires that is not importable here."""

    pack: str
    package: str
    module: str
    version: str | None
    install: str | None
    reason: str
    rules: tuple[str, ...]  # the selected rules whose kernels live in it
    applied: int = 0  # rewrites in this run that import it
    # every such rule declares `fallback original`: the rewritten code imports
    # the kernel under a guard and runs without it
    guarded: bool = False


@dataclass(frozen=True, slots=True)
class Report:
    rules: tuple[str, ...]
    files: tuple[FileResult, ...]
    errors: tuple[FileError, ...]  # path-level problems (no such file) + every file's errors
    warnings: tuple[FileError, ...]
    missing_kernels: tuple[MissingKernel, ...]
    seconds: float
    mode: Mode = "diff"
    # Rules not applied because they are `unsafe` and `--unsafe` was not given:
    # (qualified rule name, the rule's note or description).
    left_out: tuple[tuple[str, str], ...] = ()
    removed_temp_files: tuple[str, ...] = ()  # leftovers of an interrupted run, removed now
    # With `ApplyOptions.near_misses`: every near miss, skipped matches
    # included, per file in line order (None: not asked for).
    near_misses: tuple[NearMissEntry, ...] | None = None

    @property
    def files_scanned(self) -> int:
        return len(self.files)

    @property
    def matches(self) -> list[MatchEntry]:
        return [m for f in self.files for m in f.matches]

    @property
    def ok(self) -> bool:
        return not self.errors
