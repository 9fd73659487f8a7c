"""Project configuration: the `[tool.dslc]` table of `pyproject.toml`.

`find_config(paths)` looks for the nearest `pyproject.toml` that has a
`[tool.dslc]` table, starting at the folder of the first PATH (a file's
folder, or the folder itself) and going up to the filesystem root, the way
ruff finds its settings.  `load_config(file)` reads and checks it:

    [tool.dslc]
    rules = ["rulepacks/"]            # .adr files or folders (relative to this file)
    select = ["adopter:softmax"]      # PACK:RULE, PACK or RULE
    ignore = ["adopter:fused_qkv"]    # rules not to apply
    exclude = ["tests/*", "*_old.py"] # globs, as --exclude
    unsafe = false                    # also apply rules marked unsafe (as --unsafe)
    jobs = 2                          # as --jobs
    cache-dir = ".dslc-cache"         # as --cache-dir (relative to this file)

Command-line flags win: a flag that is given replaces the key's value.
Unknown keys and values of the wrong type are errors (`ConfigError`, a
usage error of the command), so a typo never passes silently.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

KEYS = ("rules", "select", "ignore", "exclude", "unsafe", "jobs", "cache-dir")


class ConfigError(Exception):
    """An unreadable or invalid `[tool.dslc]` table; the message names the file."""


@dataclass(frozen=True)
class Config:
    path: str | None = None  # the pyproject.toml read (None: no configuration)
    rules: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    unsafe: bool | None = None
    jobs: int | None = None
    cache_dir: str | None = None
    given: frozenset[str] = field(default_factory=frozenset)  # the keys the table sets


def _start_dir(paths: Sequence[str]) -> Path:
    first = Path(paths[0]) if paths else Path(".")
    first = first.absolute()
    return first if os.path.isdir(first) else first.parent


def _has_table(pyproject: Path) -> dict | None:
    try:
        with open(pyproject, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{pyproject}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    tool = data.get("tool")
    table = tool.get("dslc") if isinstance(tool, dict) else None
    return table if isinstance(table, dict) else None


def find_config(paths: Sequence[str]) -> Config:
    """The nearest `[tool.dslc]` above the first path; an empty Config if none."""
    here = _start_dir(paths)
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if os.path.isfile(candidate):  # False behind a folder that cannot be searched (Path.is_file raises)
            table = _has_table(candidate)
            if table is not None:
                return parse_table(table, candidate)
    return Config()


def load_config(pyproject: str) -> Config:
    """Read the `[tool.dslc]` table of one named file (an empty Config if it has none)."""
    path = Path(pyproject)
    if not os.path.isfile(path):
        from dslc.fileio import path_problem

        raise ConfigError(path_problem(pyproject) or f"{pyproject}: not a file")
    table = _has_table(path)
    return parse_table(table, path) if table is not None else Config(path=str(path))


def _strings(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: `{key}` must be a string or a list of strings, got {value!r}")
    return tuple(value)


def parse_table(table: dict, path: Path) -> Config:
    where = f"{path}: [tool.dslc]"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))} (known: {', '.join(KEYS)})")
    base = path.parent
    kw: dict = {}
    if "rules" in table:
        kw["rules"] = tuple(str(_relative(base, r)) for r in _strings(table, "rules", where))
    for key in ("select", "ignore", "exclude"):
        if key in table:
            kw[key] = _strings(table, key, where)
    if "unsafe" in table:
        if not isinstance(table["unsafe"], bool):
            raise ConfigError(f"{where}: `unsafe` must be true or false, got {table['unsafe']!r}")
        kw["unsafe"] = table["unsafe"]
    if "jobs" in table:
        jobs = table["jobs"]
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"{where}: `jobs` must be a whole number of at least 1, got {jobs!r}")
        kw["jobs"] = jobs
    if "cache-dir" in table:
        value = table["cache-dir"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: `cache-dir` must be a folder name, got {value!r}")
        kw["cache_dir"] = str(_relative(base, value))
    return Config(path=str(path), given=frozenset(table), **kw)


def _relative(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else Path(os.path.relpath(base / p)) if _same_drive(base) else base / p


def _same_drive(base: Path) -> bool:
    try:
        os.path.relpath(base)
    except ValueError:  # another drive on Windows
        return False
    return True
