"""The `dslc apply` driver: rule packs + source files -> matches, rewrites, a report.

`apply_paths(paths, packs, options)` is the whole pipeline (docs/design.md):

1. Find the files (`fileio.discover`: directories walked for `*.py`,
   `.gitignore` and `--exclude` honoured).
2. Compile every pack once; the union of the compiled packs'
   `anchor_names()` is the analysis pre-filter (`want=`): a file that
   mentions none of those names cannot match and is not analyzed deeply.
3. Read and decode every file (`fileio.read_source`); an unreadable or
   non-text file becomes an error entry and drops out.
4. Deal the rest into chunks and run each chunk in a worker process
   (`--jobs`): with a cache folder, take each unchanged file's whole
   result from the result cache (`dslc.apply.resultcache`: same bytes, packs,
   options, dslc, and unchanged files it depends on); analyze the rest
   (`dslc.analysis.analyze_paths`, content-hash cache; files in an
   encoding other than UTF-8 go through `analyze_source` with the text
   decoded here, so the analysis and the rewriter see the same
   characters), then per file (`process_file`): a file that does not parse
   is an error entry; otherwise match every compiled pack and hand all
   matches to `dslc.rewrite.rewriter.rewrite_source`.
5. Back in this process, with `verify`, check each rewrite with
   `dslc.verify.equivalence.verify_sources` and drop those that are not equivalent.
6. Emit per the mode: `diff` keeps everything in memory (the caller prints
   the diff), `write` replaces changed files atomically, `patch` writes one
   `.patch` per changed file.  Unchanged files are never touched.
7. Check the packs' kernel requirements without importing anything and
   report those that are missing, with the pack's install hint.

No stage may bring the run down: an exception inside one file's processing
is an error entry (E199) for that file and the others go on.  This module does
no printing; `dslc.apply.report` renders the `Report` and `dslc.commands.apply`
owns the exit code.
"""

from __future__ import annotations

import ast
import gc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from dslc import codes
from dslc.apply import report  # the diff text of a patch is the report's business
from dslc import fileio
from dslc.fileio import Found, SourceError, SourceFile
# The result types live in dslc.apply.results (report and resultcache read them
# without the driver); callers also know them as `driver.Report` etc.
from dslc.apply.results import FileError, FileResult, MatchEntry, MissingKernel, Mode, NearMissEntry, Report

W_NEAR_MISS = "W199"  # the near-miss report of a file failed (a dslc bug; its rewrites stand)


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    """How to run.  `cache_dir=None` disables the analysis cache.

    `inline`/`flatten` are passed to the analysis (the paper's ablation
    ADOPTER_p is `inline=False, flatten=True`); `root` is the analysis root
    for resolving imports inside the analyzed tree (None: found per file).
    """

    mode: Mode = "diff"
    patch_dir: str | None = None
    jobs: int = 1
    excludes: tuple[str, ...] = ()
    gitignore: bool = True
    cache_dir: str | None = None
    verify: bool = False
    inline: bool = True
    flatten: bool = False
    root: str | None = None
    # Apply `unsafe` rules too (ruff's --unsafe-fixes); by default they are
    # left out and the report lists them (`Report.left_out`).
    unsafe: bool = False
    # Hostile inputs (docs/reliability.md): the read limit, the symlink policy, read-only files.
    max_file_size: int | None = fileio.DEFAULT_MAX_FILE_SIZE
    follow_symlinks_outside: bool = False
    force: bool = False
    near_misses: bool = False  # also explain the places where a rule did not apply


# ---------------------------------------------------------------------------
# The stages, imported lazily (tests replace these names with fakes).


def compile_pack(pack, done=None):
    """`done`: rules compiled before (`LoadResult.compiled`), not compiled again."""
    from dslc.match.compiler import compile_pack as _compile

    return _compile(pack, done)


def match_file(compiled, facts, over=None, recorder=None):
    """`over`: gets the path sets whose matching ran out of budget;
    `recorder`: the near-miss recorder (`near_misses` then matches no more)."""
    from dslc.match.matcher import match_file as _match

    return _match(compiled, facts, over=over, recorder=recorder)


def near_misses(compiled, facts, matches, *, file, source=None, recorder=None):
    from dslc.rewrite.nearmiss import near_misses as _near

    return _near(compiled, facts, matches, file=file, source=source, recorder=recorder)


def rewrite_source(source, facts, matches, *, path):
    from dslc.rewrite.rewriter import rewrite_source as _rewrite

    return _rewrite(source, facts, matches, path=path)


def analyze_paths(paths, **kwargs):
    from dslc.analysis import analyze_paths as _analyze

    return _analyze(paths, **kwargs)


def analyze_source(source, path, **kwargs):
    from dslc.analysis import analyze_source as _analyze

    return _analyze(source, path, **kwargs)


def verify_sources(original, rewritten, *, path, rules, applied=None):
    """`rules`: the loaded packs (the verifier takes its tolerances from them);
    `applied`: the rules that rewrote the file, as (rule, class) pairs."""
    from dslc.verify.equivalence import verify_sources as _verify

    # Skipped classes stay W110 warnings here (the rewrite is written): allow_skip.
    return _verify(original, rewritten, path=path, rules=rules, allow_skip=True, applied=applied)


def verify_available() -> bool:
    """Whether `--verify` can run: it needs PyTorch (optional: `dslc[verify]`)."""
    return module_available("torch")


# ---------------------------------------------------------------------------
# Kernel requirements


def module_available(name: str) -> bool:
    """Whether `import name` would find a module, without importing anything.

    `importlib.util.find_spec("a.b.c")` imports `a` and `a.b` (and a kernel
    package typically imports torch: seconds).  Instead: find the top-level
    spec, then look each further component up with `PathFinder` in the
    parent's search locations, which only reads directories.
    """
    parts = name.split(".")
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0])
        if spec is None and parts[0] in sys.modules:
            spec = getattr(sys.modules[parts[0]], "__spec__", None)
    except (ImportError, ValueError):
        return False
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return False
        try:
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
        except (ImportError, ValueError):
            return False
    return spec is not None


def _version_problem(package: str, spec: str | None) -> str | None:
    """A reason when the installed version is outside `spec` (None: fine or unknowable)."""
    if not spec:
        return None
    try:
        installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None  # importable but not installed as a distribution: cannot tell
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # packaging is optional; without it versions go unchecked
        return None
    try:
        if SpecifierSet(spec).contains(installed, prereleases=True):
            return None
    except (InvalidSpecifier, InvalidVersion):
        return None
    return f"{package} {installed} is installed, the pack needs {spec}"


def _kernel_in(kernel: str, module: str) -> bool:
    return kernel == module or kernel.startswith(module + ".")


def missing_kernels(packs: Sequence, applied: dict[str, int] | None = None) -> list[MissingKernel]:
    """Requirements of the packs' (selected) rules that are not importable here.

    A requirement concerns the rules whose `kernels` live in its module (or
    its package, when it names no module); one no selected rule needs is not
    reported.  `applied` counts applied rewrites per qualified rule name.
    """
    applied = applied or {}
    out = []
    for pack in packs:
        for req in pack.requires:
            module = req.module or req.package
            tops = {module, module.split(".")[0], req.package}
            rules = tuple(
                r.qualified_name for r in pack.rules if any(_kernel_in(k, t) for k in r.kernels for t in tops)
            )
            if not rules:
                continue
            if not module_available(module):
                reason = f"module {module} is not importable" if module != req.package else f"{req.package} is not installed"
            else:
                reason = _version_problem(req.package, req.version)
                if reason is None:
                    continue
            out.append(MissingKernel(
                pack=pack.name, package=req.package, module=module, version=req.version,
                install=req.install, reason=reason, rules=rules,
                applied=sum(applied.get(r, 0) for r in rules),
                guarded=all(getattr(r, "fallback", None) == "original" for r in pack.rules
                            if r.qualified_name in rules),
            ))
    return out


# ---------------------------------------------------------------------------
# The driver


@dataclass
class Compiled:
    """The packs, compiled once per run, and the analysis pre-filter."""

    packs: list
    compiled: list
    want: frozenset[str]  # the analysis pre-filter: every name some rule needs
    rules: dict[str, object] = field(default_factory=dict)  # qualified name -> ir.Rule
    # the operators / tensor methods of the rules' optional nodes: the analysis
    # splits `if m is not None: s = s + m` for them (`dslc.match.optional`)
    optional_ifs: frozenset = frozenset()
    # whether some rule is a class rule (it reads the analysis' forward graphs)
    class_rules: bool = True
    # the class pre-filter (`dslc.analysis.classgate`): the names each rule
    # needs, minimal sets only; None when some rule needs no name
    needs: frozenset | None = None


def compile_packs(packs: Sequence, done: dict | None = None) -> Compiled:
    """The packs' combined matchers, with the cyclic garbage collector paused:
    its full collections would re-scan the loaded packs while the absent
    variants are compiled (three quarters of this step with the three
    shipped packs)."""
    from dslc.match.optional import optional_updates

    enabled = gc.isenabled()
    gc.disable()
    try:
        compiled = [compile_pack(p, done) for p in packs]
    finally:
        if enabled:
            gc.enable()
    want = frozenset().union(*(c.anchor_names() for c in compiled))
    optional_ifs = optional_updates(getattr(cp, "rules", ()) for cp in compiled)
    class_rules = any(getattr(r, "klass", None) is not None for p in packs for r in p.rules)
    return Compiled(list(packs), compiled, want, _rule_index(packs), optional_ifs, class_rules, _needs(compiled))


def _needs(compiled) -> frozenset | None:
    """Per compiled rule (absent variants included), the names it needs
    (`CompiledRule.names`), less the sets that hold another one: a class whose
    names include none of them cannot match (`dslc.analysis.classgate`).
    Class rules are left out: they match the forward graph
    (`ClassFacts.compute`), which the gate does not skip, and their names are
    init types they report as a refusal when absent.  None when some rule
    needs no name at all, or every rule is a class rule."""
    sets = {frozenset(r.names) for c in compiled for r in getattr(c, "rules", ())
            if getattr(getattr(r, "rule", None), "klass", None) is None}
    if not sets or frozenset() in sets:
        return None
    return frozenset(s for s in sets if not any(o < s for o in sets))


def _rule_index(packs) -> dict[str, object]:
    return {r.qualified_name: r for p in packs for r in p.rules}


def _analysis_kwargs(options: ApplyOptions, want, optional_ifs=frozenset(), class_rules=True, needs=None) -> dict:
    kw: dict = {"root": options.root, "want": want}
    if needs is not None and not options.near_misses:
        # the class pre-filter; a near-miss report explains classes no rule matched, so it needs them all
        kw["needs"] = needs
    if optional_ifs:
        kw["optional_ifs"] = frozenset(optional_ifs)
    if not class_rules:
        kw["compute"] = False  # no class rule: the forward graphs are not needed
    # Pass the ablation switches only when set, so an analysis without them still runs.
    if not options.inline:
        kw["inline"] = False
    if options.flatten:
        kw["flatten"] = True
    return kw


def _parse_error(text: str, path: str) -> FileError | None:
    from dslc.analysis.api import parsed

    if parsed(text):  # the analysis parsed this very text just now
        return None
    try:
        ast.parse(text, filename=path)
    except SyntaxError as exc:
        return FileError(path, exc.lineno or 0, fileio.E_SYNTAX, exc.msg or "invalid syntax")
    except (ValueError, MemoryError, RecursionError) as exc:
        return FileError(path, 0, fileio.E_SYNTAX, f"cannot parse: {exc}")
    return None


def _is_empty(facts) -> bool:
    return not getattr(facts, "classes", ()) and not getattr(facts, "functions", ())


# The analysis's problem kinds (it never imports dslc) -> registered codes.
PROBLEM_CODES = {
    "path-cap": codes.W_PATH_CAP,
    "base-not-visible": codes.W_BASE_HIDDEN,
    "analysis-recursion": codes.W_RECURSION,
    "encoding": codes.W_ANALYSIS,
    "io-error": codes.W_ANALYSIS,
    "syntax-error": codes.W_ANALYSIS,
    "path-budget": codes.W_BUDGET,
    "node-budget": codes.W_BUDGET,
    "solver-budget": codes.W_BUDGET,
}


def _anchor_keys(compiled: Compiled) -> set | None:
    """(kind, qualified type) of every node some forward automaton starts from;
    None when some rule has no such anchor (it may match anywhere)."""
    keys: set = set()
    for c in compiled.compiled:
        index = getattr(c, "index", None)
        if index is None or getattr(c, "unanchored", ()):
            return None
        keys |= set(index)
    return keys


def _cap_matters(facts, message: str, compiled: Compiled) -> bool:
    """Does the function whose paths were capped hold a node a rule anchors on?

    The path-cap problem names `owner.function`; its kept paths (the class's
    forward paths, another method's, or a function's) show which nodes it
    calls.  When that cannot be told, the warning is kept.
    """
    keys = _anchor_keys(compiled)
    qual = message.split(":", 1)[0]
    owner, _, fn = qual.rpartition(".")
    if keys is None or not fn:
        return True
    paths = None
    for c in getattr(facts, "classes", ()):
        if c.qualname == owner:
            paths = c.paths if fn == "forward" else next((ps for n, ps in c.other_paths if n == fn), None)
            break
    if paths is None:
        for n, ps in getattr(facts, "functions", ()):
            if qual == n or qual.endswith("." + n):
                paths = ps
                break
    if paths is None:
        return True
    return any((n.kind, n.type) in keys for p in paths for n in p.nodes)


# ---------------------------------------------------------------------------
# Suppressions: `# dslc: ignore` / `# dslc: ignore[pack:rule, rule]`

_IGNORE_RE = re.compile(r"#\s*dslc:\s*ignore\b(?:\[([^\]]*)\])?")


def suppressions(text: str) -> dict[int, frozenset[str] | None]:
    """Line -> the rules its `# dslc: ignore[...]` comment names (None: every rule).

    Comments only (a `#` inside a string is no comment), found with tokenize.
    """
    if "dslc:" not in text:
        return {}
    import io
    import tokenize

    out: dict[int, frozenset[str] | None] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.COMMENT:
                continue
            m = _IGNORE_RE.search(tok.string)
            if m is None:
                continue
            names = None if m.group(1) is None else frozenset(n.strip() for n in m.group(1).split(",") if n.strip())
            out[tok.start[0]] = names or None
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass
    return out


def _rule_named(qualified: str, name: str) -> bool:
    pack, _, rule = qualified.partition(":")
    p, sep, r = name.partition(":")
    if sep:
        return p == pack and r in (rule, "*", "")
    return name in (pack, rule)


def _match_lines(match) -> set[int]:
    """Every line of every statement the match involves (forward nodes and init bindings)."""
    lines = set(getattr(match, "lines", ()) or ())
    stmts = [n.stmt for n in getattr(match, "nodes", ())]
    stmts += [b.stmt for b in (getattr(match, "init_nodes", None) or {}).values() if getattr(b, "stmt", None)]
    for stmt in stmts:
        lo, hi = getattr(stmt, "lines", (0, 0))
        if lo and hi >= lo:
            lines.update(range(lo, hi + 1))
    return lines


def split_suppressed(text: str, matches: list) -> tuple[list, list]:
    """(matches to rewrite, [(match, comment line)] suppressed by a comment)."""
    table = suppressions(text)
    if not table:
        return matches, []
    keep, dropped = [], []
    for m in matches:
        rule = m.rule.qualified_name
        hit = next((line for line in sorted(_match_lines(m)) if line in table
                    and (table[line] is None or any(_rule_named(rule, n) for n in table[line]))), None)
        if hit is None:
            keep.append(m)
        else:
            dropped.append((m, hit))
    return keep, dropped


def suppressed_entries(suppressed: list, name: str):
    for m, line in suppressed:
        yield MatchEntry(
            rule=m.rule.qualified_name, file=name, class_name=m.class_name,
            lines=tuple(sorted(set(m.lines))), status="skipped",
            reason=f"suppressed by `# dslc: ignore` at line {line}",
            function=getattr(m, "function", None), code=codes.S_SUPPRESSED,
        )


def process_file(found: Found, source: SourceFile, facts, compiled: Compiled, options: ApplyOptions) -> FileResult:
    """`_process_file` with the cyclic garbage collector run once, at its end.

    Every object alive before it (the analysis facts of the whole chunk,
    the compiled packs) is frozen (`gc.freeze`), and the automatic
    collections are paused meanwhile: otherwise the collector re-scans the
    facts on every full collection, and the matcher's and rewriter's many
    young objects on every young one, about a third of a cold run on the
    benchmark corpus.  The one collection at the end scans only what this
    file allocated and frees its reference cycles.
    """
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        return _process_file(found, source, facts, compiled, options)
    finally:
        if enabled:
            gc.collect()
            gc.enable()
        gc.unfreeze()


def _process_file(found: Found, source: SourceFile, facts, compiled: Compiled, options: ApplyOptions) -> FileResult:
    """Match, check and rewrite one analyzed file (no writing: see `emit`).

    1. A file that does not parse is an E101 error.  The analysis reports
       such files as problems (or, pre-filtered, as empty facts), so only
       those files are parsed again here to tell.
    2. Other analysis problems are warnings.
    3. Matches of every compiled pack go to the rewriter in one call; its
       outcomes become the report's match entries.
    """
    text = source.text
    name = found.display
    warnings = []
    problems = tuple(getattr(facts, "problems", ()) or ())
    if problems or _is_empty(facts):
        err = _parse_error(text, name)
        if err is not None:
            return FileResult(found, errors=(err,), original=text)
    errors = []
    for p in problems:
        line, code, msg = getattr(p, "line", 0) or 0, getattr(p, "code", ""), getattr(p, "message", str(p))
        if code == "analysis-error":  # the analysis gave up on the file: it was not processed
            errors.append(FileError(name, line, fileio.E_INTERNAL, f"analysis failed: {msg}"))
        elif code == "path-cap" and not _cap_matters(facts, msg, compiled):
            continue  # no rule looks for anything in that function: the cap costs nothing
        else:
            warnings.append(FileError(name, line, PROBLEM_CODES.get(code, codes.W_ANALYSIS), msg))
    if errors or _is_empty(facts):
        return FileResult(found, errors=tuple(errors), warnings=tuple(warnings), original=text)
    matches = []
    near: list[NearMissEntry] = []
    for c in compiled.compiled:
        over: list = []
        rec = _recorder() if options.near_misses else None
        found_here = match_file(c, facts, over=over, recorder=rec)
        matches.extend(found_here)
        warnings += _match_budget_warnings(name, c, over, warnings)
        if options.near_misses:
            try:
                near += [NearMissEntry(n.rule, name, n.class_name, n.line, n.reason, n.function,
                                       code=getattr(n, "code", None))
                         for n in near_misses(c, facts, found_here, file=name, source=text, recorder=rec)]
            except Exception as exc:  # the report must not cost the file its rewrites
                err = _internal_error(name, exc)
                warnings.append(FileError(name, 0, W_NEAR_MISS, f"near-miss report failed: {err.message}"))
    if not matches:
        return FileResult(found, warnings=tuple(warnings), original=text, near_misses=tuple(near))
    matches, suppressed = split_suppressed(text, matches)
    result = rewrite_source(text, facts, matches, path=name) if matches else None
    entries = list(suppressed_entries(suppressed, name))
    if result is None:
        return FileResult(found, matches=tuple(entries), warnings=tuple(warnings), original=text,
                          near_misses=tuple(near))
    for o in result.outcomes:
        m = o.match
        code = codes.code_of(o.reason) if o.status == "skipped" else None
        file, lines = _code_location(found, facts, m, tuple(sorted(set(o.lines or m.lines))), options)
        entry = MatchEntry(
            rule=m.rule.qualified_name, file=file, class_name=m.class_name,
            lines=lines, status=o.status,
            reason=None if o.reason is None else str(o.reason),
            function=getattr(m, "function", None), code=code,
        )
        entries.append(entry)
        if code == codes.E_INTERNAL:  # a dslc bug: the match is skipped and the file is an error
            first = entry.lines[0] if entry.lines else 0
            errors.append(FileError(name, first, codes.E_INTERNAL, f"{entry.rule}: {entry.reason}"))
    for line, code, message in getattr(result, "warnings", ()):
        warnings.append(FileError(name, line, code, message))
    new_source = result.new_source
    if new_source == text:
        new_source = None
    return FileResult(found, matches=tuple(entries), errors=tuple(errors), warnings=tuple(warnings),
                      original=text, new_source=new_source, near_misses=tuple(near))


def _recorder():
    """A near-miss recorder for the normal matching run (one run serves
    both; the recorder only watches)."""
    from dslc.rewrite.nearmiss import Recorder

    return Recorder()


def _match_budget_warnings(name: str, compiled, over: list, earlier: list) -> list:
    """W105 for each path set whose matching of `compiled` ran out of budget."""
    from dslc.match.matcher import over_budget_message

    out = []
    packs = ", ".join(sorted({getattr(cr.rule, "pack", "") or "?" for cr in getattr(compiled, "rules", ())}))
    for scope in over:
        w = FileError(name, scope.budget_line, codes.W_BUDGET, over_budget_message(scope, packs))
        if w not in earlier and w not in out:
            out.append(w)
    return out


def _code_location(found: Found, facts, match, lines: tuple[int, ...], options: ApplyOptions) -> tuple[str, tuple[int, ...]]:
    """The file and lines where a match's code is.

    A match in a subclass can sit in code it inherits from a base class of
    another module (`StmtRef.owner`): its lines are that module's.  When all
    of the match's statements are in another module, report that module's
    file (relative to where this file's name is relative to); when only some
    are, keep this file and the lines of the statements that are in it.
    """
    local_classes = [c.qualname for c in facts.classes]
    module = getattr(facts, "module", None)

    def is_local(owner: str | None) -> bool:
        return (not owner or owner == module
                or any(owner == q or owner.startswith(q + ".") for q in local_classes))

    refs = [n.stmt for n in match.nodes] + [b.stmt for b in match.init_nodes.values() if getattr(b, "stmt", None)]
    foreign = [r for r in refs if not is_local(r.owner)]
    if not foreign:
        return found.display, lines
    if len(foreign) < len(refs):
        mine: set[int] = set()
        for r in refs:
            if is_local(r.owner):
                mine.update(range(r.lines[0], r.lines[1] + 1))
        return found.display, tuple(sorted(mine))
    owners = {r.owner for r in foreign}
    path = _module_file(found, module, options, owners.pop()) if len(owners) == 1 else None
    if path is None:
        return found.display, lines
    shown = path
    absolute = os.path.abspath(found.path)
    display = found.display.replace("\\", "/")
    if not os.path.isabs(found.display) and absolute.replace(os.sep, "/").endswith("/" + display.lstrip("./")):
        base = absolute[: len(absolute) - len(display.lstrip("./"))]
        shown = os.path.relpath(path, base)
    return shown, lines


def _module_file(found: Found, module: str | None, options: ApplyOptions, owner: str) -> str | None:
    """The file of the module that defines the class `owner` (a qualified name), if it is in the tree."""
    from dslc.analysis.names import tree_root_for

    if options.root:
        root = options.root
    elif module:
        root = tree_root_for(found.path, module)
    else:
        return None
    parts = owner.split(".")
    for k in range(len(parts) - 1, 0, -1):
        base = os.path.join(root, *parts[:k])
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
    return None


def verify_result(result: FileResult, packs: Sequence) -> FileResult:
    """`--verify`: check a rewrite with `dslc.verify.equivalence`; a failing one is dropped.

    Its applied matches turn `skipped` (with the verifier's reason) and the
    file gets an E110 error; classes the verifier had to skip are warnings.
    """
    if not result.changed:
        return result
    name = result.found.display
    applied = tuple(dict.fromkeys((m.rule, m.class_name) for m in result.matches if m.status == "applied"))
    verdict = verify_sources(result.original, result.new_source, path=result.found.path, rules=tuple(packs),
                             applied=applied)
    warnings = result.warnings + tuple(_verify_skips(verdict, name))
    if getattr(verdict, "ok", False):
        return replace(result, warnings=warnings)
    why = _verify_summary(verdict)
    entries = tuple(replace(e, status="skipped", reason=f"verification failed: {why}", code=codes.S_VERIFY_FAILED)
                    if e.status == "applied" else e
                    for e in result.matches)
    error = FileError(name, 0, fileio.E_VERIFY, f"rewrite not written: verification failed: {why}")
    return replace(result, matches=entries, warnings=warnings, errors=result.errors + (error,), new_source=None)


def _verify_summary(verdict) -> str:
    """One line saying why a VerifyReport failed (its error, else its failing classes)."""
    if getattr(verdict, "error", None):
        return str(verdict.error)
    parts = []
    for r in getattr(verdict, "results", ()) or ():
        if getattr(r, "status", None) != "fail":
            continue
        m = getattr(r, "mismatch", None)
        if getattr(r, "reason", ""):
            why = r.reason
        elif m is not None:
            why = m.message or f"{m.where}: max abs diff {m.max_abs:g}, max rel diff {m.max_rel:g}"
        else:
            why = "outputs differ"
        parts.append(f"{r.name}: {why}")
    if parts:
        return "; ".join(parts)
    for attr in ("summary", "message", "reason"):
        value = getattr(verdict, attr, None)
        if value:
            return str(value)
    return "outputs differ"


def _verify_skips(verdict, name: str) -> list[FileError]:
    """What the verifier said of each class that did not fail.

    Classes it could not run (missing kernel, no GPU) are W110 warnings;
    classes that passed are I110 notes, so that `--verify` says what it
    checked and how close the outputs were (and under which kernels).
    """
    out = []
    for r in getattr(verdict, "results", ()) or ():
        status = getattr(r, "status", None)
        if status == "skipped":
            out.append(FileError(name, 0, "W110", f"verification of {r.name} skipped: {r.reason or 'no reason given'}"))
        elif status == "pass":
            via = f" via {r.via}" if getattr(r, "via", None) else ""
            refs = getattr(r, "reference_kernels", ())
            ref = f" [reference kernel: {', '.join(refs)}]" if refs else ""
            out.append(FileError(name, 0, "I110",
                                 f"verified {r.name}{via}: pass, max abs err {r.max_abs:.3g}, "
                                 f"max rel err {r.max_rel:.3g}{ref}"))
    return out


def patch_name(found: Found, used: set[str]) -> str:
    """A flat, unique `.patch` file name for a file: `pkg/mod.py` -> `pkg__mod.py.patch`."""
    base = found.display.replace("\\", "/").lstrip("./").replace("/", "__") or "file.py"
    name, n = base + ".patch", 1
    while name in used:
        n += 1
        name = f"{base}.{n}.patch"
    used.add(name)
    return name


def emit(result: FileResult, source: SourceFile, options: ApplyOptions, used_patch_names: set[str],
         roots: frozenset[str] | None = None) -> FileResult:
    """Write a changed file (mode `write`) or its patch (mode `patch`); errors become entries.

    `roots` are the resolved command-line paths: `--write` does not follow a
    symlink out of them (E107) unless `options.follow_symlinks_outside`.
    """
    if not result.changed:
        return result
    name = result.found.display
    try:
        if options.mode == "write":
            data = fileio.encode_source(result.new_source, source.encoding)
            fileio.atomic_write(result.found.path, data, expect=source.data,
                                roots=roots if roots is not None else _roots((), [result.found]),
                                follow_outside=options.follow_symlinks_outside, force=options.force)
            return replace(result, written=True)
        if options.mode == "patch":
            fileio.encode_source(result.new_source, source.encoding)  # must be writable later
            # The patch must match the file's bytes: same encoding, BOM on line 1.
            bom = source.encoding == "utf-8-sig"
            data = fileio.encode_source(report.file_diff(result, bom=bom), "utf-8" if bom else source.encoding)
            target = os.path.join(options.patch_dir, patch_name(result.found, used_patch_names))
            fileio.atomic_write_new(target, data)
            return replace(result, patch=target)
    except SourceError as exc:
        return replace(result, errors=result.errors + (FileError(name, exc.line, exc.code, exc.message),))
    return result


def apply_paths(
    paths: Sequence[str],
    packs: Sequence,
    options: ApplyOptions = ApplyOptions(),
    *,
    progress: Callable[[int, int], None] | None = None,
    files: Sequence[Found] | None = None,
    compiled: dict | None = None,  # LoadResult.compiled: those rules are not compiled again
) -> Report:
    """Run the pipeline (module docstring) over command-line `paths`.

    `files`, when given, replaces discovery (the benchmark passes its own
    list).  `progress(done, total)` is called as files complete.
    """
    start = time.perf_counter()
    errors: list[FileError] = []
    if files is None:
        found, problems = fileio.discover(list(paths), tuple(options.excludes), gitignore=options.gitignore)
        errors += [FileError(p, 0, code, msg) for p, msg, code in problems]
    else:
        found = list(files)
    packs, left_out = safe_packs(packs, options.unsafe)
    compiled = compile_packs(packs, compiled)
    total = len(found)
    results: dict[int, FileResult] = {}
    sources: dict[int, SourceFile] = {}
    for i, f in enumerate(found):
        try:
            sources[i] = fileio.read_source(f.path, options.max_file_size)
        except SourceError as exc:
            results[i] = FileResult(f, errors=(FileError(f.display, exc.line, exc.code, exc.message),))
    done = len(results)
    if progress:
        progress(done, total)

    items = [(i, found[i], sources[i]) for i in sorted(sources)]
    for i, r in _run_all(items, packs, compiled, options, progress, done, total):
        results[i] = r
    roots = _roots(paths, found)
    removed = _remove_leftovers(options, [found[i] for i in sources])
    _verify_and_emit(found, sources, results, packs, options, roots)
    ordered = tuple(results[i] for i in range(total))
    for r in ordered:
        errors += r.errors
    applied: dict[str, int] = {}
    for r in ordered:
        for m in r.matches:
            if m.status == "applied":
                applied[m.rule] = applied.get(m.rule, 0) + 1
    return Report(
        rules=tuple(compiled.rules),
        files=ordered,
        errors=tuple(errors),
        warnings=tuple(w for r in ordered for w in r.warnings),
        missing_kernels=tuple(missing_kernels(packs, applied)),
        seconds=time.perf_counter() - start,
        mode=options.mode,
        left_out=left_out,
        removed_temp_files=tuple(fileio.display_path(p) for p in removed),
        near_misses=tuple(n for r in ordered for n in file_near_misses(r)) if options.near_misses else None,
    )


def _remove_leftovers(options: ApplyOptions, readable: Sequence[Found]) -> list[str]:
    """Temporary files an interrupted run left where this one writes (the
    patch folder, created here, or the folders of the files read); removed."""
    removed: list[str] = []
    if options.mode == "patch" and options.patch_dir:
        try:
            os.makedirs(options.patch_dir, exist_ok=True)
        except OSError:  # each patch write then reports the problem per file
            pass
        removed += fileio.remove_stale_temp_files(options.patch_dir)
    elif options.mode == "write":
        # Leftovers of an interrupted --write in the folders written to now.
        folders = {os.path.dirname(os.path.realpath(f.path)) for f in readable}
        for folder in sorted(folders):
            removed += fileio.remove_stale_temp_files(folder)
    return removed


def _verify_and_emit(found: Sequence[Found], sources: dict[int, SourceFile], results: dict[int, FileResult],
                     packs: Sequence, options: ApplyOptions, roots: frozenset[str]) -> None:
    """Verify (with `options.verify`) and emit each file read, in order; `results` updated in place."""
    used_patch_names: set[str] = set()
    for i, f in enumerate(found):
        if i not in sources:
            continue
        try:
            r = results[i]
            if options.verify:
                r = verify_result(r, packs)
            results[i] = emit(r, sources[i], options, used_patch_names, roots)
        except Exception as exc:  # a dslc bug must not cost the other files
            results[i] = replace(results[i], new_source=None,
                                 errors=results[i].errors + (_internal_error(f.display, exc),))


def safe_packs(packs: Sequence, unsafe: bool) -> tuple[list, tuple[tuple[str, str], ...]]:
    """The packs without their `unsafe` rules (unless `unsafe`), and what was left out."""
    if unsafe:
        return list(packs), ()
    out, left = [], []
    for pack in packs:
        kept = tuple(r for r in pack.rules if r.safety != "unsafe")
        for r in pack.rules:
            if r.safety == "unsafe":
                why = (r.contract.note or r.description or "").split("\n")[0]
                left.append((r.qualified_name, why))
        out.append(replace(pack, rules=kept) if len(kept) != len(pack.rules) else pack)
    return out, tuple(left)


def _roots(paths: Sequence[str], found: Sequence[Found]) -> frozenset[str]:
    """The resolved command-line paths (and those the found files came from)."""
    return frozenset(os.path.realpath(p) for p in [*paths, *(f.arg for f in found)])


def file_near_misses(result: FileResult) -> list[NearMissEntry]:
    """A file's near misses: its unmatched places and its skipped matches, by line."""
    out = list(result.near_misses)
    for m in result.matches:
        if m.status == "skipped":
            out.append(NearMissEntry(m.rule, m.file, m.class_name, m.lines[0] if m.lines else 0,
                                     m.reason or "no reason given", m.function, "skipped", code=m.code))
    out.sort(key=lambda n: (n.line, n.rule, n.kind))
    return out


def _internal_error(name: str, exc: BaseException) -> FileError:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return FileError(name, 0, fileio.E_INTERNAL, f"internal error: {type(exc).__name__}: {exc}{where}")


# Files analyzed by path; a BOM or another codec goes through analyze_source with our text.
_UTF8 = ("utf-8",)


_WORKER: dict = {}


def _init_worker(packs, options) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it
    # (exit 130, workers stopped), so a worker prints no traceback of its own.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Compile once per worker process: the ir values pickle, compiled automata need not.
    _WORKER["compiled"] = compile_packs(packs)
    _WORKER["options"] = options


def _run_chunk(items, compiled=None, options=None) -> list[tuple[int, FileResult]]:
    """`_run_chunk_kept` with the analysis keeping the trees it parses
    (`dslc.analysis.api.keep_trees`): the rewriter takes a file's tree
    instead of parsing the same text again, and `_process_one` drops each
    file's tree once the file is done."""
    from dslc.analysis.api import keep_trees

    with keep_trees():
        return _run_chunk_kept(items, compiled, options)


def _run_chunk_kept(items, compiled=None, options=None) -> list[tuple[int, FileResult]]:
    """Analyze, match and rewrite a chunk of files (in a worker, or in-process).

    With a cache folder, each file's whole result is first looked up in the
    result cache (`dslc.apply.resultcache`: same bytes, packs, options and dslc);
    only the misses go on.  UTF-8 files go to `analyze_paths` together (they
    share its parsed-module cache); files in other encodings (or with a BOM)
    go through `analyze_source` with the text decoded here, so the analysis
    and the rewriter see the same characters.  An exception is an E199 entry
    for its file only.
    """
    compiled = compiled or _WORKER["compiled"]
    options = options or _WORKER["options"]
    kw = _analysis_kwargs(options, compiled.want, compiled.optional_ifs, compiled.class_rules, compiled.needs)
    cache = _result_cache(compiled, options)
    out: list[tuple[int, FileResult]] = []
    keys: dict[int, tuple[str, str]] = {}
    if cache is not None:
        items, hits = _cached_results(cache, items, keys)
        out.extend(hits)
    facts: dict[int, object] = {}
    deps: dict[int, list] = {}
    failed: dict[int, BaseException] = {}
    utf8 = [(i, f) for i, f, s in items if s.encoding in _UTF8]
    if utf8:
        try:
            found_deps: list = []
            # With the result cache on, a file's facts are cached only when the same analysis
            # is needed again (`lazy`: the result cache keeps the outcome of the first run).
            extra = {"deps_out": found_deps, "lazy": True} if cache is not None else {}
            out_facts = _analyze_frozen([f.path for _, f in utf8], cache_dir=options.cache_dir, **kw, **extra)
            if len(out_facts) != len(utf8):
                raise RuntimeError(f"analysis returned {len(out_facts)} results for {len(utf8)} files")
            facts.update(zip([i for i, _ in utf8], out_facts))
            if len(found_deps) == len(utf8):
                deps.update(zip([i for i, _ in utf8], found_deps))
        except Exception:
            # One by one, so that a single bad file does not take the chunk with it.
            for i, f in utf8:
                try:
                    facts[i] = analyze_paths([f.path], jobs=1, cache_dir=options.cache_dir, **kw)[0]
                    deps.pop(i, None)
                except Exception as exc:
                    failed[i] = exc
    for i, f, src in items:
        if cache is not None and i not in facts and i not in failed:
            consulted: set = set()
            kw_i = dict(kw, _consulted=consulted)
            try:
                facts[i] = analyze_source(src.text, f.path, **kw_i)
                deps[i] = [(p, _file_digest(p)) for p in sorted(consulted)]
            except Exception:  # noqa: BLE001 - `_process_one` retries and reports it
                pass
        from dslc.rewrite.flow import reading_siblings

        with reading_siblings() as folders:
            result = _process_one(i, f, src, facts, failed, compiled, options, kw)
        out.append(result)
        if cache is not None and i in keys and i in deps:
            _store_result(cache, keys[i], deps[i], result[1], folders)
    return out


def _analyze_frozen(paths, **kwargs) -> list:
    """`analyze_paths` (one job) with the cyclic GC paused, and everything
    alive after it frozen (`gc.freeze`): the facts of a whole chunk are one
    young generation of millions of long-lived objects, which the first
    collection after the analysis would scan (1.7 s on the benchmark
    corpus) only to keep them all.  `process_file` unfreezes them into the
    oldest generation, where they are scanned only by a full collection.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(analyze_paths(paths, jobs=1, **kwargs))
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _file_digest(path: str) -> str | None:
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


# The stages as this module defines them: the result cache is used only with
# these (tests replace them with fakes, whose results must not be cached).
_REAL_STAGES = (compile_pack, match_file, rewrite_source, analyze_paths, analyze_source, near_misses)


def _result_cache(compiled: Compiled, options: ApplyOptions):
    if options.cache_dir is None:
        return None
    import inspect

    # wrappers (functools.wraps: the stage profiler) of the real stages count as real
    current = [inspect.unwrap(f) for f in (compile_pack, match_file, rewrite_source, analyze_paths, analyze_source,
                                           near_misses)]
    if any(a is not b for a, b in zip(current, _REAL_STAGES)):
        return None
    try:
        from dslc.apply.resultcache import ResultCache

        return ResultCache(options.cache_dir, compiled.packs, options)
    except Exception:  # noqa: BLE001 - no cache is only slower
        return None


def _cached_results(cache, items, keys):
    """Split `items` into misses and (index, FileResult) hits; record each miss's key."""
    from dslc.apply.resultcache import from_json
    from dslc.analysis.cachefile import bad, digest

    misses, hits = [], []
    for i, f, src in items:
        t0 = time.perf_counter()
        try:
            content = digest(src.data)
            key = cache.key(f.path, f.display, src.data)
            keys[i] = (key, content)
            value = cache.get(key, content)
            if value is not None:
                try:
                    r = from_json(value, f, src.text)
                except Exception as exc:  # noqa: BLE001 - malformed: a miss
                    bad(cache._path(key), f"malformed result ({type(exc).__name__})")
                else:
                    hits.append((i, replace(r, seconds=time.perf_counter() - t0)))
                    continue
        except Exception:  # noqa: BLE001 - the cache never costs a file
            keys.pop(i, None)
        misses.append((i, f, src))
    return misses, hits


def _store_result(cache, key_content, deps, result: FileResult, folders=()) -> None:
    """Store `result` with its dependencies: `deps` (what the analysis read) and the
    package folders whose modules the sibling checks read (`flow.reading_siblings`)."""
    if any(e.code == fileio.E_INTERNAL for e in result.errors):
        return  # a dslc bug's outcome is not worth keeping
    try:
        from dslc.apply.resultcache import to_json

        key, content = key_content
        deps = list(deps) + cache.folder_deps(folders)
        cache.put(key, content, deps, to_json(result))
    except Exception:  # noqa: BLE001
        pass


def _process_one(i, f, src, facts, failed, compiled, options, kw) -> tuple[int, FileResult]:
    """One file of a chunk: its facts (analyzed now if needed), then `process_file`."""
    t0 = time.perf_counter()
    try:
        if i in failed:
            raise failed[i]
        if i not in facts:
            facts[i] = analyze_source(src.text, f.path, **kw)
        r = process_file(f, src, facts[i], compiled, options)
    except Exception as exc:
        r = FileResult(f, errors=(_internal_error(f.display, exc),), original=src.text)
    finally:
        from dslc.analysis.api import drop_tree

        drop_tree(src.text)  # the rewriter took it, or nothing needs it any more
    return i, replace(r, seconds=time.perf_counter() - t0)


def _stop_pool(pool) -> None:
    """Stop a pool now (an interrupt, a failure): no waiting for running chunks."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        try:
            proc.terminate()
        except (OSError, AttributeError, ValueError):
            pass
    for proc in processes:
        try:
            proc.join(5)
        except (OSError, AttributeError, ValueError, AssertionError):
            pass


def _run_all(items, packs, compiled, options, progress, done, total):
    """Run every file through `_run_chunk`: in `options.jobs` worker processes
    when there is more than one job and file, else in this process.

    1. Deal the files round-robin into 2 chunks per worker (4 when a
       progress bar is shown, so that it moves): sizes even out, and each
       chunk keeps the analysis's parsed-module cache for its files.
    2. Submit them to a process pool whose workers compile the packs once.
    3. If the pool cannot run (no fork/spawn, a worker died), the chunks not
       finished yet run in this process instead.
    """
    if not items:
        return []
    jobs = max(1, options.jobs)
    # Fewer, larger chunks keep the analysis's per-call module cache useful; more move the bar.
    if jobs > 1:
        n_chunks = min(len(items), jobs * (4 if progress else 2))
    else:
        n_chunks = max(1, len(items) // 8) if progress else 1
    chunks = [items[k::n_chunks] for k in range(n_chunks)]
    results: list = []
    pending = list(range(len(chunks)))
    if jobs > 1 and len(items) > 1:
        try:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            pool = ProcessPoolExecutor(max_workers=min(jobs, len(chunks)), initializer=_init_worker,
                                       initargs=(list(packs), options))
            try:
                futures = {pool.submit(_run_chunk, chunks[k]): k for k in pending}
                for fut in as_completed(futures):
                    part = fut.result()
                    results.extend(part)
                    pending.remove(futures[fut])
                    done += len(part)
                    if progress:
                        progress(done, total)
            except BaseException:
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
        except Exception:  # BrokenProcessPool, OSError, pickling: finish here
            pass
    for k in pending:
        part = _run_chunk(chunks[k], compiled, options)
        results.extend(part)
        done += len(part)
        if progress:
            progress(done, total)
    return results
