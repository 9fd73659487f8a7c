"""Load rule packs: files or directories -> checked, lowered `ir.Pack`s.

`load_rules(paths, select)`:
1. Expand the paths: a directory contributes its `*.adr` files (recursively,
   sorted); a missing path or an empty directory is an ADR007 diagnostic.
2. Read every file (`fileio.read_bytes`: only a regular file) and parse it
   (`parser.parse_bytes`; neither step raises), then check all the
   parsed files together (`checker.check_files`: per-file checks plus the
   cross-file duplicate-pack warning).
3. Lower each file that has no error to an `ir.Pack`, in path order.
4. Apply `select` (`pack:rule`, `pack`, `rule`, or `pack:*`): keep only the
   selected rules, drop packs left empty; a selection that names nothing is
   an ADR401 error.  Then `ignore` (same forms) drops rules; an ignore that
   names no loaded rule is an ADR402 warning.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from dslc.lang import checker
from dslc import codes
from dslc.match import ir
from dslc.lang.diagnostics import Diagnostic, diag
from dslc.lang.lower import lower_file
from dslc.fileio import SourceError, display_path, path_problem, read_bytes
from dslc.lang.parser import ParseResult, parse_bytes
from dslc.lang.source import MAX_SOURCE_BYTES

if TYPE_CHECKING:
    from dslc.match.compiler import CompiledRule


@dataclass(frozen=True)
class LoadResult:
    packs: list[ir.Pack]
    diagnostics: list[Diagnostic]
    # path -> text of every file read (for rendering snippets; undecodable
    # bytes replaced)
    sources: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    # every parsed file, with or without errors (for counting and printing)
    parsed: tuple = ()
    # qualified rule name -> its `CompiledRule`: every loaded rule is compiled
    # once, here; `apply_paths(..., compiled=)` reuses them
    compiled: dict[str, CompiledRule] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def rules(self) -> list[ir.Rule]:
        return [r for p in self.packs for r in p.rules]


def expand(paths: Iterable[str]) -> tuple[list[str], list[Diagnostic]]:
    """Rule files named by `paths` (directories: their `*.adr`, sorted)."""
    files: list[str] = []
    diags: list[Diagnostic] = []
    for raw in paths:
        p = Path(raw)
        problem = path_problem(str(raw))  # never raises (Path.exists() does, behind a closed folder)
        if problem:
            diags.append(diag(codes.IO_ERROR, problem, ir.Span(str(raw), 1, 1, 1, 1)))
        elif os.path.isdir(raw):
            found = sorted(str(f) for f in p.rglob("*.adr") if f.is_file())
            if not found:
                diags.append(diag(codes.IO_ERROR, f"no .adr files in directory {raw}", ir.Span(str(raw), 1, 1, 1, 1)))
            files.extend(found)
        else:
            files.append(str(p))
    # The same file given twice is read once.
    seen: set[str] = set()
    unique = [f for f in files if not (str(Path(f).resolve()) in seen or seen.add(str(Path(f).resolve())))]
    return unique, diags


def load_rules(paths: list[str] | str, select: Iterable[str] = (), ignore: Iterable[str] = ()) -> LoadResult:
    """The steps of the module doc, with the cyclic garbage collector paused:
    the packs are many small objects and no cyclic garbage, and its full
    collections while they are built were a fifth of loading sdpa.adr."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_rules(paths, select, ignore)
    finally:
        if enabled:
            gc.enable()


def _load_rules(paths, select, ignore) -> LoadResult:
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    files, diags = expand(paths)
    parsed = []
    sources: dict[str, str] = {}
    for path in files:
        result = parse_path(path, sources)
        diags.extend(result.diagnostics)
        if result.file is not None:
            parsed.append(result.file)
    diags.extend(checker.check_files(parsed))
    failed = {d.span.path for d in diags if d.is_error and d.span is not None}
    packs = [lower_file(f) for f in parsed if f.path not in failed]
    compiled: dict[str, CompiledRule] = {}
    packs = _compilable(packs, diags, compiled)
    # Rules of files with errors are not loaded, but a selection naming them
    # is not "unknown": the file's own diagnostics say what is wrong.
    broken = [ir.Pack(f.header.name, "", (), tuple(ir.Rule(f.header.name, r.name, "", (), ir.Contract())
                                                   for r in f.rules))
              for f in parsed if f.path in failed and f.header is not None]
    packs, sel_diags = apply_select(packs, list(select), broken)
    diags.extend(sel_diags)
    packs, ign_diags = apply_ignore(packs, list(ignore), broken)
    diags.extend(ign_diags)
    diags.sort(key=Diagnostic.sort_key)
    kept = {r.qualified_name for p in packs for r in p.rules}
    compiled = {name: c for name, c in compiled.items() if name in kept}
    return LoadResult(packs, diags, sources, tuple(files), tuple(parsed), compiled)


def parse_path(path: str, sources: dict[str, str]) -> ParseResult:
    """Read and parse one rule file; never raises.  Its text goes into
    `sources` for the diagnostics' snippets (undecodable bytes replaced)."""
    span = ir.Span(path, 1, 1, 1, 1)
    try:  # only a regular file: a FIFO would block, /dev/zero never end
        data = read_bytes(path, MAX_SOURCE_BYTES)
    except SourceError as exc:
        if exc.code == "E109":
            d = diag(codes.TOO_LARGE, f"file too large (the limit is {MAX_SOURCE_BYTES} bytes)", span)
        else:
            d = diag(codes.IO_ERROR, f"cannot read {display_path(path)}: {exc.message}", span)
        return ParseResult(None, [d], None)
    result = parse_bytes(data, path)
    sources[path] = result.source.text if result.source is not None else data.decode("utf-8", "replace")
    return result


def _compilable(packs: list[ir.Pack], diags: list[Diagnostic], compiled: dict[str, CompiledRule]) -> list[ir.Pack]:
    """Compile each rule once, into `compiled`; a rule the compiler refuses is
    an ADR120 error and is dropped, so neither `check` nor `apply` meets it later."""
    from dslc.match.compiler import CompileError, compile_rule

    out = []
    for pack in packs:
        kept = []
        for rule in pack.rules:
            try:
                compiled[rule.qualified_name] = compile_rule(rule)
            except CompileError as exc:
                message = str(exc).split(f"rule {rule.qualified_name}: ", 1)[-1]
                diags.append(diag(codes.UNCOMPILABLE, message, exc.span, label="cannot be compiled"))
                continue
            kept.append(rule)
        out.append(replace(pack, rules=tuple(kept)))
    return out


def _names(p, r, sel: str) -> bool:
    pack_name, sep, rule_name = sel.partition(":")
    if sep:
        return p.name == pack_name and rule_name in (r.name, "*", "")
    return sel in (p.name, r.name)


def apply_ignore(packs: list[ir.Pack], ignore: list[str],
                 broken: list[ir.Pack] = ()) -> tuple[list[ir.Pack], list[Diagnostic]]:
    """Drop the rules `ignore` names (`--ignore`, `ignore = [...]`); packs left empty go."""
    if not ignore:
        return packs, []
    diags = []
    for sel in ignore:
        if not any(_names(p, r, sel) for p in list(packs) + list(broken) for r in p.rules):
            diags.append(Diagnostic(codes.UNKNOWN_IGNORE, "warning", f"--ignore {sel!r} names no selected rule",
                                    None, help="write pack:rule, pack, or rule"))
    out = []
    for p in packs:
        rules = tuple(r for r in p.rules if not any(_names(p, r, sel) for sel in ignore))
        if rules:
            out.append(replace(p, rules=rules))
    return out, diags


def apply_select(packs: list[ir.Pack], select: list[str],
                 broken: list[ir.Pack] = ()) -> tuple[list[ir.Pack], list[Diagnostic]]:
    """Keep the selected rules; `broken` packs (files with errors) count as
    known names but are never returned."""
    if not select:
        return packs, []
    wanted: set[tuple[str, str]] = set()
    diags = []
    for sel in select:
        pack_name, sep, rule_name = sel.partition(":")
        hits = []
        for p in list(packs) + list(broken):
            for r in p.rules:
                if sep:
                    ok = p.name == pack_name and rule_name in (r.name, "*", "")
                else:
                    ok = sel in (p.name, r.name)
                if ok:
                    hits.append((p.name, r.name))
        if not hits:
            known = ", ".join(f"{p.name}:{r.name}" for p in packs for r in p.rules) or "none loaded"
            diags.append(Diagnostic(codes.UNKNOWN_SELECT, "error", f"--select {sel!r} names no loaded rule",
                                    None, notes=(f"known rules: {known}",),
                                    help="write pack:rule, pack, or rule"))
        wanted.update(hits)
    out = []
    for p in packs:
        rules = tuple(r for r in p.rules if (p.name, r.name) in wanted)
        if rules:
            out.append(ir.Pack(p.name, p.description, p.requires, rules, p.path, p.span))
    return out, diags
