"""Equivalence verification: does a rewritten model compute what the original did?

`dslc verify ORIGINAL REWRITTEN` and `dslc apply --verify` both end here.  The
check is a differential test, per rewritten class:

  1. Find the classes to compare: those whose AST differs between the two
     sources, those using a changed module-level name, or those asked for.
  2. Load both sources as modules.  A file inside a package (a transformers
     modeling file) is loaded as a sibling module of that package, so its
     relative imports resolve; a plain file is loaded standalone.  A rewritten
     file that does not import fails; one that lacks a kernel package is
     skipped with the pack's install hint.
  3. Build the original and the optimized module with the same constructor
     arguments and the same seed: from a factory `FUNC(cls) -> (module,
     inputs)`, or from a tiny configuration (`dslc.verify.tinyconfig`) with inputs
     synthesised from the forward signature.  When no inputs fit a class, the
     file's whole-model class that contains it is compared instead.
  4. Give the original's constant tensors (LayerNorm weight 1, zero biases,
     BatchNorm statistics) seeded noise, so that a wrong mapping or a dropped
     bias shows; then load its state_dict into the optimized module with
     strict=True: a failing load breaks checkpoint compatibility.
  5. Run both in eval mode, again with the inputs scaled by 0.01 (a wrong
     LayerNorm eps hides at unit scale), and in train mode when every rule
     involved declares itself deterministic, seeding before each forward;
     with a tiny config, repeat for each configuration variant that turns on
     dead code paths (`tinyconfig.variants`).  Compare all
     tensors of the nested outputs, the input gradients and the parameter
     gradients of `sum(outputs).backward()`.  Parameter gradients are compared
     by state-dict name after mapping the original's gradients through the
     optimized module's own load hooks (the checkpoint mapping).
  6. Hold each class to its tolerance: the rules whose kernels the class
     uses (from `--rules`), else atol=1e-5, rtol=1e-4.

Torch is imported lazily: the rest of dslc does not need it.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import itertools
import linecache
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from dslc.verify import tinyconfig

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
# A kernel package marks itself as a pure-PyTorch stand-in with this attribute
# (tests/kernel_refs/); results under it are reported as "reference kernel".
REFERENCE_MARKER = "DSLC_REFERENCE_KERNEL"

Status = Literal["pass", "fail", "skipped"]


class VerifyUsageError(Exception):
    """Bad input to verify (unreadable file, bad factory spec): exit 2."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    exact: bool = False
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    deterministic: bool = False
    rules: tuple[str, ...] = ()  # qualified names of the rules it came from

    def describe(self) -> str:
        base = "exact" if self.exact else f"atol={self.atol:g} rtol={self.rtol:g}"
        src = ", ".join(self.rules) if self.rules else "default"
        return f"{base} ({src})"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The worst disagreement found: where, and how large."""

    where: str  # e.g. "eval output.last_hidden_state", "eval grad param dense.weight"
    max_abs: float = math.inf
    max_rel: float = math.inf
    message: str = ""  # a structural problem (shape, missing output) instead of numbers


@dataclass(frozen=True, slots=True)
class ClassResult:
    name: str
    status: Status
    reason: str = ""
    via: str | None = None  # the whole-model class run to exercise this one
    tolerance: Tolerance | None = None
    mismatch: Mismatch | None = None
    max_abs: float = 0.0  # worst errors over everything compared
    max_rel: float = 0.0
    modes: tuple[str, ...] = ()
    compared: int = 0  # number of tensors compared
    reference_kernels: tuple[str, ...] = ()
    nonfinite: int = 0  # NaN/Inf values found at the same positions on both sides (they count as equal)
    inputs: str = ""  # how the inputs were made, when dslc synthesised them without a config

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.name, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.via:
            out["via"] = self.via
        if self.tolerance is not None:
            t = self.tolerance
            out["tolerance"] = {"exact": t.exact, "atol": t.atol, "rtol": t.rtol,
                                "deterministic": t.deterministic, "rules": list(t.rules)}
        if self.status != "skipped":
            out.update(max_abs=_num(self.max_abs), max_rel=_num(self.max_rel),
                       modes=list(self.modes), compared=self.compared)
        if self.mismatch is not None:
            m = self.mismatch
            out["mismatch"] = {"where": m.where, "max_abs": _num(m.max_abs),
                               "max_rel": _num(m.max_rel), "message": m.message}
        if self.reference_kernels:
            out["reference_kernels"] = list(self.reference_kernels)
        if self.status != "skipped":
            out["nonfinite_equal"] = self.nonfinite
        if self.inputs:
            out["inputs"] = self.inputs
        return out


@dataclass(frozen=True, slots=True)
class VerifyReport:
    original: str
    rewritten: str
    device: str
    results: tuple[ClassResult, ...] = ()
    error: str | None = None  # the rewritten file itself is broken (a failure)
    unchanged: bool = False  # the two sources are the same program: nothing to compare
    allow_skip: bool = False  # --allow-skip: a run that compared nothing is not a failure

    @property
    def nothing_compared(self) -> bool:
        """The sources differ but no class was compared (all skipped, or none found)."""
        return not self.unchanged and not any(r.status == "pass" for r in self.results)

    @property
    def ok(self) -> bool:
        if self.error is not None or any(r.status == "fail" for r in self.results):
            return False
        return self.allow_skip or not self.nothing_compared

    @property
    def summary(self) -> str:
        """One line: the file error or the first failing class, else the counts."""
        if self.error:
            return self.error
        for r in self.results:
            if r.status == "fail":
                return f"{r.name}: {r.reason}"
        c = self.counts
        if not self.ok:
            return f"nothing was compared ({c['skipped']} skipped); --allow-skip accepts that"
        return f"{c['pass']} passed, {c['skipped']} skipped"

    @property
    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "skipped": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original, "rewritten": self.rewritten, "device": self.device,
                "ok": self.ok, "error": self.error, "counts": self.counts,
                "nothing_compared": self.nothing_compared, "allow_skip": self.allow_skip,
                "results": [r.to_dict() for r in self.results]}


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    classes: tuple[str, ...] = ()
    factory: str | None = None  # "FILE.py:FUNC"
    device: str = "auto"
    rules: tuple[str, ...] = ()  # rule files or directories
    packs: tuple = ()  # already loaded ir.Pack or ir.Rule values (apply passes rules)
    seed: int = 0
    module: str | None = None  # dotted module name of ORIGINAL, when known
    allow_skip: bool = False  # a run that compares nothing is ok (else a failure)
    input_shapes: tuple[tuple[int, ...], ...] = ()  # --input-shape: inputs of a plain module
    isolate: bool = True  # run the user's code in a child process (verify_isolated)
    timeout: float | None = 600.0  # seconds for the child process; None: no limit


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


# ---------------------------------------------------------------------------
# Public entry points


def read_text(path: str) -> str:
    """A source file's text exactly as `dslc apply` reads it (`fileio.read_source`:
    only a regular file, PEP 263 coding cookie, BOM); VerifyUsageError otherwise."""
    from dslc.apply import fileio

    try:
        return fileio.read_source(path).text
    except fileio.SourceError as exc:
        where = f":{exc.line}" if exc.line else ""
        raise VerifyUsageError(f"{fileio.display_path(path)}{where}: cannot read: {exc.message} [{exc.code}]") from None


def verify_files(original: str, rewritten: str, options: VerifyOptions = VerifyOptions()) -> VerifyReport:
    """Verify two files on disk (the `dslc verify` command)."""
    orig_src = read_text(original)
    new_src = read_text(rewritten)
    return verify_isolated(orig_src, new_src, path=original, rewritten_path=rewritten, options=options)


def verify_sources(original_source: str, rewritten_source: str, *, path: str,
                   module: str | None = None, rules: Sequence | None = None,
                   device: str = "auto", classes: Sequence[str] = (),
                   factory: str | None = None, seed: int = 0, allow_skip: bool = False,
                   isolate: bool = True, timeout: float | None = 600.0) -> VerifyReport:
    """Verify a rewrite held in memory (`dslc apply --verify`).

    `path` is where the original lives (it decides the package a modeling
    file belongs to); `module` its dotted name when known; `rules` holds
    loaded `ir.Pack`s or `ir.Rule`s (the rules applied) or rule file paths.
    Never raises for bad input: a usage problem (no torch, rules that do not
    load) comes back as `report.error`, so the caller refuses the rewrite.
    """
    packs = tuple(r for r in (rules or ()) if not isinstance(r, (str, os.PathLike)))
    files = tuple(str(r) for r in (rules or ()) if isinstance(r, (str, os.PathLike)))
    options = VerifyOptions(classes=tuple(classes), factory=factory, device=device,
                            rules=files, packs=packs, seed=seed, module=module, allow_skip=allow_skip,
                            isolate=isolate, timeout=timeout)
    try:
        return verify_isolated(original_source, rewritten_source, path=path, rewritten_path=path, options=options)
    except VerifyUsageError as exc:
        return VerifyReport(path, path, device, error=f"cannot verify: {exc}")


# ---------------------------------------------------------------------------
# Isolation: the user's code runs in a child process


def verify_isolated(orig_src: str, new_src: str, *, path: str, rewritten_path: str,
                    options: VerifyOptions) -> VerifyReport:
    """`_verify` in a forked child process, so that the code it loads cannot
    end or crash dslc, nor make it report what did not happen.

    1. Fork (the child shares the parent's imports, `sys.path` and rule
       packs); the child runs `_verify`, sending over a pipe the classes it
       will compare, each class as it starts, each result as it ends, and the
       report.  It ends with `os._exit`: the parent's exit handlers never run
       in it.  It leads a process group of its own, killed when it is done,
       so that nothing the user's code started outlives the check; Ctrl-C in
       the parent kills it too.
    2. The parent collects the messages.  When the child ends without a
       report (the code it loaded called `os._exit`, a native crash, a
       signal) or runs past `options.timeout`: before any class, the report
       is a failure naming the stage (e.g. importing the rewritten file);
       during class X, X fails with that reason and the classes after it are
       compared in a fresh child.
    3. Without `os.fork` (or with `isolate=False`), `_verify` runs in process.
    """
    if not options.isolate or not hasattr(os, "fork"):
        return _verify(orig_src, new_src, path=path, rewritten_path=rewritten_path, options=options)
    try:  # imported once here, not again in every child (and not counted in --timeout)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch  # noqa: F401
    except ImportError:
        pass  # the child says so, as a usage error
    device = options.device
    done: list[ClassResult] = []
    pending: list[str] | None = None
    for _attempt in range(64):
        run_options = options if pending is None else replace(options, classes=tuple(pending))
        outcome = _run_child(orig_src, new_src, path, rewritten_path, run_options)
        if outcome.usage_error is not None:
            raise VerifyUsageError(outcome.usage_error)
        if outcome.report is not None:
            report = outcome.report
            if not done:
                return report
            return replace(report, results=tuple(done) + report.results)
        device = outcome.device or device
        names = outcome.classes if outcome.classes is not None else pending
        done.extend(outcome.results)
        if outcome.current is None or names is None:
            stage = outcome.stage or "starting"
            return VerifyReport(path, rewritten_path, device, tuple(done),
                                error=f"the verification process ended while {stage}: {outcome.why}",
                                allow_skip=options.allow_skip)
        done.append(ClassResult(outcome.current, "fail",
                                f"the verification process ended while comparing this class: {outcome.why}"))
        finished = {r.name for r in done}
        pending = [n for n in names if n not in finished]
        if not pending or outcome.timed_out:
            for n in pending:
                done.append(ClassResult(n, "skipped", f"not compared: {outcome.why} in class {outcome.current}"))
            return VerifyReport(path, rewritten_path, device, tuple(done), allow_skip=options.allow_skip)
    return VerifyReport(path, rewritten_path, device, tuple(done), error="the verification process kept failing",
                        allow_skip=options.allow_skip)


@dataclass
class _ChildOutcome:
    report: VerifyReport | None = None
    usage_error: str | None = None
    classes: list[str] | None = None
    results: list[ClassResult] = field(default_factory=list)
    current: str | None = None  # the class being compared when the child ended
    stage: str | None = None
    device: str | None = None
    why: str = ""
    timed_out: bool = False


def _send(fd: int, message: Any) -> None:
    import pickle
    import struct

    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = struct.pack("!Q", len(data)) + data
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _stop_group(pgid: int) -> None:
    """Kill what is left of the child's process group (processes the user's code started)."""
    import signal

    try:
        if pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _run_child(orig_src: str, new_src: str, path: str, rewritten_path: str,
               options: VerifyOptions) -> _ChildOutcome:
    import pickle
    import select
    import signal
    import struct
    import time

    for stream in (sys.stdout, sys.stderr):  # no buffered text may be written twice
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child
        status = 0
        try:
            os.close(read_fd)
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it quietly; the parent reports
            except (ValueError, OSError):
                pass
            try:  # a group of its own: whatever the user's code starts is stopped with it
                os.setpgid(0, 0)
            except OSError:
                pass
            torch = sys.modules.get("torch")
            if torch is not None:  # the parent's OpenMP pool does not survive a fork: one thread here
                try:
                    torch.set_num_threads(1)
                except Exception:  # noqa: BLE001
                    pass

            def progress(kind: str, value: Any) -> None:
                _send(write_fd, (kind, value))

            try:
                report = _verify(orig_src, new_src, path=path, rewritten_path=rewritten_path,
                                 options=options, progress=progress)
                _send(write_fd, ("report", report))
            except VerifyUsageError as exc:
                _send(write_fd, ("usage", str(exc)))
            except SystemExit as exc:
                _send(write_fd, ("died", f"the code it loaded called sys.exit({exc.code!r})"))
            except BaseException as exc:  # noqa: BLE001 - whatever the user's code raised
                _send(write_fd, ("died", f"{_one_line(exc)} escaped"))
        except BaseException:  # noqa: BLE001 - not even a message could be sent
            status = 70
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:  # noqa: BLE001
                pass
            os._exit(status)
    os.close(write_fd)
    outcome = _ChildOutcome()
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    buffer = b""
    died = None
    status = None  # the child's wait status, once it has ended
    try:
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if status is not None:
                wait = 0.0  # the child is gone: take what is left, then stop
            ready, _, _ = select.select([read_fd], [], [], wait)
            if not ready:
                if status is not None:
                    break  # a process the child started may hold the pipe open: no EOF to wait for
                if deadline is not None and time.monotonic() >= deadline:
                    outcome.timed_out = True
                    os.kill(pid, signal.SIGKILL)
                    break
                done_pid, done_status = os.waitpid(pid, os.WNOHANG)
                if done_pid:
                    status = done_status
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 8:
                (size,) = struct.unpack("!Q", buffer[:8])
                if len(buffer) < 8 + size:
                    break
                kind, value = pickle.loads(buffer[8:8 + size])
                buffer = buffer[8 + size:]
                if kind == "report":
                    outcome.report = value
                elif kind == "usage":
                    outcome.usage_error = value
                elif kind == "died":
                    died = value
                elif kind == "classes":
                    outcome.classes = list(value)
                elif kind == "device":
                    outcome.device = value
                elif kind == "stage":
                    outcome.stage = value
                elif kind == "class":
                    outcome.current = value
                elif kind == "result":
                    outcome.results.append(value)
                    outcome.current = None
    except BaseException:  # Ctrl-C (or anything else) in the parent: the child goes too
        if status is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        _stop_group(pid)
        os.close(read_fd)
        raise
    os.close(read_fd)
    if status is None:
        _, status = os.waitpid(pid, 0)
    _stop_group(pid)
    if outcome.report is None and outcome.usage_error is None:
        if outcome.timed_out:
            outcome.why = f"timed out after {options.timeout:g} s"
        elif died is not None:
            outcome.why = died
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            outcome.why = f"the process was killed by signal {name} (a crash in native code, or the code it loaded)"
        else:
            outcome.why = (f"the code it loaded ended the process with exit status {os.WEXITSTATUS(status)} "
                           "(os._exit, or a crash) before a result was reported")
    return outcome


def resolve_device(device: str, torch: Any) -> tuple[str, str | None]:
    """(device, why-not) for `auto`/`cpu`/`cuda`: auto picks cuda only when one is usable."""
    if device not in ("auto", "cpu", "cuda"):
        raise VerifyUsageError(f"unknown device {device!r}: use cpu, cuda or auto")
    has_cuda = bool(torch.cuda.is_available())
    if device == "auto":
        return ("cuda" if has_cuda else "cpu"), None
    if device == "cuda" and not has_cuda:
        return "cuda", "no GPU: torch.cuda.is_available() is False"
    return device, None


# ---------------------------------------------------------------------------
# Which classes, which rules


def changed_classes(original_source: str, rewritten_source: str) -> list[str]:
    """Classes of ORIGINAL that the rewrite changed, in source order.

    1. A class whose AST (positions and comments ignored) differs, or that
       the rewritten file no longer defines (renamed, removed).
    2. A class that reads a module-level name whose definition changed
       (a rewritten helper function, a new import bound to an old name).
    """
    old, new = ast.parse(original_source), ast.parse(rewritten_source)
    old_defs, new_defs = _top_defs(old), _top_defs(new)
    changed_names = {n for n, d in old_defs.items() if n in new_defs and new_defs[n] != d}
    # A changed class is compared itself; its users need not be compared too.
    changed_helpers = changed_names - {n.name for n in old.body if isinstance(n, ast.ClassDef)}
    out: list[str] = []
    for node in old.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if node.name not in new_defs:  # renamed or removed: a failure to report, never a silent pass
            out.append(node.name)
            continue
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if node.name in changed_names or used & changed_helpers:
            out.append(node.name)
    return out


def _top_defs(tree: ast.Module) -> dict[str, str]:
    defs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defs[node.name] = ast.dump(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                defs[name] = ast.dump(node) if alias.asname or isinstance(node, ast.ImportFrom) else defs.get(name, "import")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    defs[target.id] = ast.dump(node.value)
    return defs


def load_packs(options: VerifyOptions) -> tuple:
    """The packs of `--rules` (through the front end), plus those passed in."""
    packs = list(options.packs)
    if options.rules:
        from dslc.lang.diagnostics import render
        from dslc.lang.loader import load_rules

        result = load_rules(list(options.rules))
        errors = [d for d in result.diagnostics if d.is_error]
        if errors:
            text = render(errors, "text", result.sources)
            raise VerifyUsageError(f"the rules given with --rules do not load:\n{text}")
        packs.extend(result.packs)
    return tuple(packs)


def all_rules(packs: Iterable) -> list:
    """The rules of packs and loose rules, in order, each once."""
    out: list = []
    for item in packs:
        for rule in (item.rules if hasattr(item, "rules") else (item,)):
            if rule not in out:
                out.append(rule)
    return out


def rules_used(source: str, rules: Iterable, within: str | None = None) -> list:
    """Rules whose kernels `source` refers to (imported, or named qualified).

    With `within`, only references inside that top-level class count (the
    file's imports still resolve its names).
    """
    refs = _referenced_qualnames(source, within)
    return [r for r in rules if any(_kernel_referenced(k, refs) for k in r.kernels)]


def _referenced_qualnames(source: str, within: str | None = None) -> set[str]:
    """Dotted names a source (or one class of it) reaches: imports and attribute chains."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    aliases: dict[str, str] = {}
    refs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if within is None:
                    refs.add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                if within is None:
                    refs.add(f"{node.module}.{a.name}")
    if within is not None:
        found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == within]
        if not found:
            return refs
        tree = found[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts: list[str] = []
            cur: ast.AST = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                head = aliases.get(cur.id, cur.id)
                refs.add(".".join([head, *reversed(parts)]))
        elif isinstance(node, ast.Name) and node.id in aliases:
            refs.add(aliases[node.id])
    return refs


def _kernel_referenced(kernel: str, refs: set[str]) -> bool:
    return any(r == kernel or r.startswith(kernel + ".") for r in refs)


def tolerance_for(rules: Sequence) -> Tolerance:
    """Combine contracts: the loosest atol/rtol; exact and deterministic only if all are."""
    if not rules:
        return Tolerance()
    contracts = [r.contract for r in rules]
    exact = all(c.exact for c in contracts)
    loose = [c for c in contracts if not c.exact]
    return Tolerance(
        exact=exact,
        atol=max((c.atol for c in loose), default=0.0),
        rtol=max((c.rtol for c in loose), default=0.0),
        deterministic=all(c.deterministic for c in contracts),
        rules=tuple(r.qualified_name for r in rules),
    )


def _class_sources(source: str) -> dict[str, str]:
    tree = ast.parse(source)
    return {n.name: (ast.get_source_segment(source, n) or "") for n in tree.body if isinstance(n, ast.ClassDef)}


# ---------------------------------------------------------------------------
# Loading


@dataclass
class _Loaded:
    original: Any
    rewritten: Any
    registered: list[str] = field(default_factory=list)


def infer_module_name(path: str) -> tuple[str | None, str | None]:
    """(package, module) of a file, walking up while `__init__.py` exists.

    A file outside any package gives (None, None).
    """
    p = Path(path).resolve()
    parts = [p.stem]
    d = p.parent
    while (d / "__init__.py").exists():
        parts.append(d.name)
        d = d.parent
    if len(parts) == 1:
        return None, None
    dotted = ".".join(reversed(parts))
    return dotted.rpartition(".")[0], dotted


_COUNTER = itertools.count()


def _exec_module(source: str, name: str, package: str | None, filename: str) -> Any:
    spec = importlib.util.spec_from_loader(name, loader=None, origin=filename)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package or ""
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses and typing look modules up here
    # `@torch.jit.script` (and anything else using `inspect.getsource`)
    # re-reads a function's source by its code's file name: a rewrite held in
    # memory gets a name of its own, with its text in linecache, so that the
    # original file on disk is never read in its place.
    code_name = filename
    try:
        on_disk = read_text(filename)
    except VerifyUsageError:
        on_disk = None
    if on_disk != source:
        code_name = f"{filename}::dslc-{next(_COUNTER)}"
        linecache.cache[code_name] = (len(source), None, source.splitlines(True), code_name)
    try:
        exec(compile(source, code_name, "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _user_exc(exc: BaseException) -> str:
    """What the user's code raised, in one line (`sys.exit(4)` for a SystemExit)."""
    if isinstance(exc, SystemExit):
        return f"it calls sys.exit({exc.code!r})"
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class _Skip(Exception):
    """Every class is skipped for this reason."""


class _Broken(Exception):
    """The rewritten file is broken: a failure."""


def _top_imports(source: str) -> set[str]:
    found: set[str] = set()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def install_hint(missing: str, packs: Iterable) -> str | None:
    """The pack's install hint for a missing module (by import name or package)."""
    top = missing.split(".")[0]
    for pack in packs:
        for req in getattr(pack, "requires", ()):
            names = {req.package, (req.module or req.package).split(".")[0], req.module or ""}
            if missing in names or top in names or any(missing.startswith(n + ".") for n in names if n):
                return req.install
    return None


def _load_pair(orig_src: str, new_src: str, path: str, rewritten_path: str,
               module: str | None, packs: Sequence) -> _Loaded:
    """Import ORIGINAL and load REWRITTEN next to it (see the module docstring, step 2)."""
    package, dotted = (module.rpartition(".")[0] or None, module) if module else infer_module_name(path)
    if package is None and _has_relative_imports(orig_src):
        package, dotted = _guess_transformers_module(path)
        if package is None:
            raise _Skip("the file uses relative imports but is not inside a package: "
                        "pass --module with its dotted name (e.g. transformers.models.bert.modeling_bert)")
    registered: list[str] = []
    n = next(_COUNTER)
    stem = Path(path).stem
    extra_path = None
    if package:
        try:
            importlib.import_module(package)
        except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
            hint = ""
            if package.split(".")[0] == "transformers":
                hint = " (install transformers==4.35.0 to verify its modeling files)"
            raise _Skip(f"package {package} not importable: {_one_line(exc)}{hint}") from None
    else:
        extra_path = str(Path(path).resolve().parent)
        sys.path.insert(0, extra_path)
    try:
        original = None
        if dotted:
            try:
                mod = importlib.import_module(dotted)
                if Path(getattr(mod, "__file__", "") or "").is_file() and read_text(mod.__file__) == orig_src:
                    original = mod
            except (Exception, SystemExit):  # noqa: BLE001 - fall back to loading the given source
                original = None
        if original is None:
            name = f"{package}._dslc_original_{stem}_{n}" if package else f"_dslc_original_{stem}_{n}"
            try:
                original = _exec_module(orig_src, name, package, path)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - incl. sys.exit() at import
                raise _Skip(f"the original does not import: {_user_exc(exc)}") from None
            registered.append(name)
        name = f"{package}._dslc_rewritten_{stem}_{n}" if package else f"_dslc_rewritten_{stem}_{n}"
        try:
            rewritten = _exec_module(new_src, name, package, rewritten_path)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            top = missing.split(".")[0]
            hint = install_hint(missing, packs)
            newly = top and top not in _top_imports(orig_src) and top != (package or "").split(".")[0]
            if newly and (hint or not packs or _is_kernel_module(missing, packs)):
                how = f"; install: {hint}" if hint else ""
                raise _Skip(f"kernel not installed: no module named {missing!r}{how}") from None
            raise _Broken(f"the rewritten file does not import: {_one_line(exc)}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - any import-time failure is the rewrite's, sys.exit too
            raise _Broken(f"the rewritten file does not import: {_user_exc(exc)}") from None
        registered.append(name)
        return _Loaded(original, rewritten, registered)
    except BaseException:
        for mod_name in registered:  # no half-loaded pair left in sys.modules
            sys.modules.pop(mod_name, None)
        raise
    finally:
        if extra_path is not None:
            try:
                sys.path.remove(extra_path)
            except ValueError:
                pass


def _has_relative_imports(source: str) -> bool:
    try:
        return any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(source)))
    except SyntaxError:
        return False


def _guess_transformers_module(path: str) -> tuple[str | None, str | None]:
    """A copied `modeling_xxx.py` belongs to `transformers.models.xxx` when that exists."""
    stem = Path(path).stem
    if not stem.startswith("modeling_"):
        return None, None
    package = f"transformers.models.{stem[len('modeling_'):]}"
    try:  # transformers' lazy modules have no __spec__ once imported
        found = package in sys.modules or importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    return (package, f"{package}.{stem}") if found else (None, None)


def _is_kernel_module(missing: str, packs: Sequence) -> bool:
    return any(k == missing or k.startswith(missing + ".") for r in all_rules(packs) for k in r.kernels)


def _reference_kernels(module: Any) -> tuple[str, ...]:
    """Top-level packages used by `module` that mark themselves as reference kernels."""
    found = set()
    for value in vars(module).values():
        mod_name = getattr(value, "__module__", None) if not inspect.ismodule(value) else value.__name__
        if not isinstance(mod_name, str):
            continue
        top = sys.modules.get(mod_name.split(".")[0])
        if top is not None and getattr(top, REFERENCE_MARKER, False):
            found.add(top.__name__)
    return tuple(sorted(found))


# ---------------------------------------------------------------------------
# Building instances


@dataclass
class _Built:
    original: Any
    rewritten: Any
    inputs: dict[str, Any]
    via: str | None = None
    described: str = ""  # how synthesised inputs were made (plain modules)


def _load_factory(spec: str) -> Any:
    file, sep, func = spec.rpartition(":")
    if not sep or not file or not func:
        raise VerifyUsageError(f"--factory {spec!r}: expected FILE.py:FUNC")
    if not Path(file).is_file():
        raise VerifyUsageError(f"--factory {spec!r}: no such file {file}")
    name = f"_dslc_factory_{Path(file).stem}_{next(_COUNTER)}"
    parent = str(Path(file).resolve().parent)
    sys.path.insert(0, parent)
    try:
        module = _exec_module(read_text(file), name, None, file)
    except VerifyUsageError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - sys.exit() at import too
        raise VerifyUsageError(f"--factory {spec!r}: {file} does not import: {_user_exc(exc)}") from None
    finally:
        sys.path.remove(parent)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise VerifyUsageError(f"--factory {spec!r}: {file} defines no function {func}")
    return fn


def _as_kwargs(forward: Any, inputs: Any) -> dict[str, Any]:
    """Factory inputs (a tuple, or a dict) as keyword arguments of forward."""
    if isinstance(inputs, dict):
        return dict(inputs)
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    names = [p for p in list(inspect.signature(forward).parameters)[1:]]
    if len(inputs) > len(names):
        return {f"__pos{i}": v for i, v in enumerate(inputs)}
    return dict(zip(names, inputs))


def _call(module: Any, kwargs: dict[str, Any]) -> Any:
    pos = [v for k, v in kwargs.items() if k.startswith("__pos")]
    if pos:
        return module(*pos)
    return module(**kwargs)


def _build_with_factory(factory: Any, orig_cls: type, new_cls: type, seed: int, torch: Any) -> _Built:
    torch.manual_seed(seed)
    try:
        m0, x0 = factory(orig_cls)
    except Exception as exc:  # noqa: BLE001
        raise _ClassSkip(f"class not constructible: factory failed on the original: {_one_line(exc)}") from None
    torch.manual_seed(seed)
    try:
        m1, _ = factory(new_cls)
    except Exception as exc:  # noqa: BLE001
        raise _ClassFail(f"the factory fails on the rewritten class: {_one_line(exc)}") from None
    return _Built(m0, m1, _as_kwargs(orig_cls.forward, x0))


class _ClassSkip(Exception):
    pass


class _ClassFail(Exception):
    pass


def _build_from_config(loaded: _Loaded, name: str, seed: int, torch: Any, variant: int = 0,
                       input_shapes: tuple = ()) -> _Built:
    """Tiny-config construction, falling back to a containing whole model;
    a plain module without a config is built without arguments (`_build_plain`)."""
    orig_cls = getattr(loaded.original, name)
    new_cls = getattr(loaded.rewritten, name)
    configs = tinyconfig.config_candidates(loaded.original, orig_cls)
    if not configs or input_shapes:
        return _build_plain(orig_cls, new_cls, seed, torch, input_shapes, has_config=bool(configs))
    why = "class not constructible"
    for config_cls in configs:
        try:
            if variant >= len(tinyconfig.variants(config_cls)):
                continue
            cfg = tinyconfig.tiny_config(config_cls, variant)
            torch.manual_seed(seed)
            m0 = tinyconfig.construct_with_config(orig_cls, cfg)
        except Exception as exc:  # noqa: BLE001 - try the next config / the model
            why = f"class not constructible from {config_cls.__name__}: {_one_line(exc)}"
            continue
        m0.eval()
        inputs = _fitting_inputs(m0, orig_cls.forward, cfg, torch)
        if inputs is None:
            why = "cannot synthesise inputs for its forward"
            break
        torch.manual_seed(seed)
        try:
            m1 = tinyconfig.construct_with_config(new_cls, cfg)
        except Exception as exc:  # noqa: BLE001
            raise _ClassFail(f"the rewritten class does not construct: {_one_line(exc)}") from None
        return _Built(m0, m1, inputs)
    return _build_whole_model(loaded, name, why, seed, torch, variant)


def _required_params(forward: Any) -> list[str]:
    try:
        params = list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _first_layer_shapes(module: Any, torch: Any) -> tuple[str, list[tuple[tuple[int, ...], str]]]:
    """Input shapes a plain module's first layer takes: (description, [(shape, dtype)])."""
    nn = torch.nn
    for sub in module.modules():
        if sub is module and not isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding,
                                                  nn.LayerNorm, nn.RNNBase)):
            continue
        if isinstance(sub, nn.Linear):
            d = sub.in_features
            return f"the first Linear's in_features={d}", [((2, 4, d), "float"), ((2, d), "float")]
        if isinstance(sub, nn.Conv1d):
            c = sub.in_channels
            return f"the first Conv1d's in_channels={c}", [((2, c, 16), "float")]
        if isinstance(sub, nn.Conv2d):
            c = sub.in_channels
            return f"the first Conv2d's in_channels={c}", [((2, c, 8, 8), "float")]
        if isinstance(sub, nn.Conv3d):
            c = sub.in_channels
            return f"the first Conv3d's in_channels={c}", [((2, c, 4, 4, 4), "float")]
        if isinstance(sub, nn.Embedding):
            return f"the first Embedding's num_embeddings={sub.num_embeddings}", [((2, 8), "index")]
        if isinstance(sub, nn.LayerNorm):
            shape = tuple(sub.normalized_shape)
            return f"the first LayerNorm's normalized_shape={shape}", [((2, 4, *shape), "float")]
        if isinstance(sub, nn.RNNBase):
            d = sub.input_size
            shape = (2, 5, d) if sub.batch_first else (5, 2, d)
            return f"the first {type(sub).__name__}'s input_size={d}", [(shape, "float")]
    return "", []


def _build_plain(orig_cls: type, new_cls: type, seed: int, torch: Any, input_shapes: tuple,
                 has_config: bool = False) -> _Built:
    """A module without a config: built with no arguments, inputs synthesised.

    1. Both classes are constructed without arguments (same seed); a class
       whose constructor needs arguments is skipped: pass --factory.
    2. The inputs of forward's required parameters: `--input-shape` when
       given (one shape for all, or one per parameter, in order), else from
       the first layer of the original module: a Linear's in_features
       (shape (2, 4, in_features), then (2, in_features)), a Conv's
       in_channels ((2, C, 16) / (2, C, 8, 8) / (2, C, 4, 4, 4)), an
       Embedding's vocabulary (integer indices (2, 8)), a LayerNorm's
       normalized_shape, an RNN's input_size.  Seeded random values; the
       first candidate the original runs on is used.
    """
    required = _required_params(orig_cls.forward)
    torch.manual_seed(seed)
    try:
        m0 = orig_cls()
    except TypeError as exc:
        if has_config:
            raise _ClassSkip(f"--input-shape is for modules built without arguments: {_one_line(exc)}") from None
        raise _ClassSkip(f"no factory, and the class needs constructor arguments ({_one_line(exc)}): pass "
                         "--factory FILE.py:FUNC") from None
    m0.eval()
    if input_shapes:
        shapes = list(input_shapes)
        if len(shapes) == 1:
            shapes = shapes * len(required)
        if len(shapes) != len(required):
            raise _ClassSkip(f"--input-shape given {len(input_shapes)} times, but forward has {len(required)} "
                             f"required inputs ({', '.join(required)})")
        how = "from --input-shape " + ", ".join("x".join(map(str, sh)) for sh in shapes)
        candidates = [(how, [(tuple(sh), "float") for sh in shapes])]
    else:
        what, options = _first_layer_shapes(m0, torch)
        if not options or not required:
            raise _ClassSkip("no factory, no config, and no first Linear/Conv/Embedding/LayerNorm layer to "
                             "shape the inputs by: pass --input-shape or --factory FILE.py:FUNC")
        candidates = [(f"shape {'x'.join(map(str, sh))} from {what}", [(sh, kind)] * len(required))
                      for sh, kind in options]
    for how, specs in candidates:
        gen = torch.Generator().manual_seed(seed + 4321)
        inputs = {}
        for name, (shape, kind) in zip(required, specs):
            if kind == "index":
                high = next(m.num_embeddings for m in m0.modules() if isinstance(m, torch.nn.Embedding))
                inputs[name] = torch.randint(0, high, shape, generator=gen)
            else:
                inputs[name] = torch.randn(*shape, generator=gen)
        try:
            with torch.no_grad():
                m0(**inputs)
        except Exception:  # noqa: BLE001 - the shape did not fit; try the next
            continue
        torch.manual_seed(seed)
        try:
            m1 = new_cls()
        except Exception as exc:  # noqa: BLE001
            raise _ClassFail(f"the rewritten class does not construct: {_one_line(exc)}") from None
        return _Built(m0, m1, inputs, described=f"inputs synthesised: {how}")
    raise _ClassSkip("cannot synthesise inputs for its forward (tried "
                     + "; ".join(how for how, _ in candidates) + "): pass --input-shape or --factory")


def _fitting_inputs(m0: Any, forward: Any, cfg: Any, torch: Any) -> dict[str, Any] | None:
    for kwargs in tinyconfig.input_candidates(forward, cfg, torch):
        try:
            with torch.no_grad():
                m0(**kwargs)
        except Exception:  # noqa: BLE001 - the shape did not fit; try the next
            continue
        return kwargs
    return None


def _build_whole_model(loaded: _Loaded, name: str, why: str, seed: int, torch: Any,
                       variant: int = 0) -> _Built:
    """Run a whole-model class of the file that contains `name` instead.

    Candidates are the file's PreTrainedModel subclasses, `XxxModel` first;
    the first one whose tiny instance contains an instance of `name` and runs
    on synthesised inputs is used.
    """
    cands = [v for k, v in vars(loaded.original).items()
             if tinyconfig.is_pretrained_model(v) and v.__module__ == loaded.original.__name__]
    cands.sort(key=lambda c: (not c.__name__.endswith("Model"), c.__name__))
    for model_cls in cands:
        for config_cls in tinyconfig.config_candidates(loaded.original, model_cls)[:1]:
            if variant >= len(tinyconfig.variants(config_cls)):
                continue
            try:
                cfg = tinyconfig.tiny_config(config_cls, variant)
                torch.manual_seed(seed)
                m0 = model_cls(cfg)
            except Exception:  # noqa: BLE001
                continue
            if not any(type(m).__name__ == name for m in m0.modules()):
                continue
            m0.eval()
            inputs = _fitting_inputs(m0, model_cls.forward, cfg, torch)
            if inputs is None:
                continue
            new_cls = getattr(loaded.rewritten, model_cls.__name__, None)
            if new_cls is None:
                raise _ClassFail(f"the rewritten file lost class {model_cls.__name__}")
            torch.manual_seed(seed)
            try:
                m1 = new_cls(cfg)
            except Exception as exc:  # noqa: BLE001
                raise _ClassFail(f"the rewritten {model_cls.__name__} does not construct: {_one_line(exc)}") from None
            return _Built(m0, m1, inputs, via=model_cls.__name__)
    raise _ClassSkip(f"{why}; no whole-model class of the file contains it and runs")


# ---------------------------------------------------------------------------
# Comparing


def _flatten(value: Any, prefix: str, out: list[tuple[str, Any]], torch: Any) -> None:
    """All tensors of a nested output, with a path naming each."""
    if isinstance(value, torch.Tensor):
        out.append((prefix, value))
    elif isinstance(value, dict):  # also HF ModelOutput (an OrderedDict)
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out, torch)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out, torch)


@dataclass
class _Tally:
    tol: Tolerance
    max_abs: float = 0.0
    max_rel: float = 0.0
    compared: int = 0
    worst: Mismatch | None = None  # first failing comparison
    modes: tuple[str, ...] = ()
    nonfinite: int = 0  # NaN/Inf values at the same positions on both sides

    def compare(self, where: str, a: Any, b: Any, torch: Any) -> None:
        """Compare expected `a` (original) with actual `b` (rewritten)."""
        if a is None and b is None:
            return
        if (a is None) != (b is None) and ("grad" in where):
            # No gradient is a zero gradient: compare the values.
            a, b = (torch.zeros_like(b) if a is None else a), (torch.zeros_like(a) if b is None else b)
        if a is None or b is None:
            self._fail(Mismatch(where, message="present on one side only"))
            return
        if tuple(a.shape) != tuple(b.shape):
            self._fail(Mismatch(where, message=f"shape {tuple(b.shape)} instead of {tuple(a.shape)}"))
            return
        self.compared += 1
        if a.numel() == 0:
            return
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a.cpu(), b.cpu().to(a.dtype)):
                diff = (a.cpu().double() - b.cpu().double()).abs().max().item()
                self._fail(Mismatch(where, diff, math.inf, "integer values differ"))
            return
        x, y = a.detach().cpu().double(), b.detach().cpu().double()
        if x.is_complex():
            x, y = torch.view_as_real(x), torch.view_as_real(y)
        # NaN and Inf, explicitly: equal when both sides hold NaN, or the
        # same infinity, at the same position (counted and reported); a NaN
        # or Inf facing anything else is a failure that says so.
        finite = x.isfinite() & y.isfinite()
        same = (x.isnan() & y.isnan()) | (x.isinf() & y.isinf() & (x == y))
        bad = ~finite & ~same
        self.nonfinite += int(same.sum().item())
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0].item())
            index = tuple(int(k) for k in _unravel(i, tuple(x.shape)))
            xv, yv = float(x.reshape(-1)[i].item()), float(y.reshape(-1)[i].item())
            n_bad = int(bad.sum().item())
            self._fail(Mismatch(where, math.inf, math.inf,
                                f"the original gives {xv!r} and the rewrite {yv!r} at index {list(index)} "
                                f"({n_bad} such element{'s' * (n_bad != 1)} of {x.numel()})"))
            return
        if not bool(finite.any()):
            return
        x, y = x[finite], y[finite]
        diff = (x - y).abs()
        abs_err = float(diff.max().item())
        # The relative error only where it means something: where |expected|
        # exceeds atol (below that, the absolute tolerance is what holds).
        floor = self.tol.atol if not self.tol.exact else 0.0
        big = x.abs() > floor
        rel_err = float((diff[big] / x.abs()[big]).max().item()) if bool(big.any()) else 0.0
        self.max_abs, self.max_rel = max(self.max_abs, abs_err), max(self.max_rel, rel_err)
        if self.tol.exact:
            ok = abs_err == 0.0
        else:
            ok = bool((diff <= self.tol.atol + self.tol.rtol * x.abs()).all())
        if not ok:
            self._fail(Mismatch(where, abs_err, rel_err))

    def _fail(self, mismatch: Mismatch) -> None:
        if self.worst is None:
            self.worst = mismatch


def _unravel(i: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for dim in reversed(shape):
        out.append(i % dim if dim else 0)
        i = i // dim if dim else 0
    return list(reversed(out))


def _run(module: Any, inputs: dict[str, Any], seed: int, torch: Any) -> tuple[Any, dict[str, Any]]:
    """Forward (seeded) and backward of the sum of floating outputs."""
    args = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().clone().requires_grad_(True)
        elif isinstance(v, torch.Tensor):
            v = v.clone()
        args[k] = v
    torch.manual_seed(seed)
    out = _call(module, args)
    flat: list[tuple[str, Any]] = []
    _flatten(out, "output", flat, torch)
    loss = None
    for _, t in flat:
        if t.is_floating_point() and t.requires_grad:
            loss = t.sum() if loss is None else loss + t.sum()
    if loss is not None:
        loss.backward()
    grads = {k: v.grad for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    return out, grads


def _param_grads_mapped(m0: Any, m1: Any, torch: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(expected, actual) gradients of m1's parameters by state-dict name.

    The original's gradients are put in a state dict (buffers as they are)
    and loaded into a copy of m1, so m1's own load hooks map them exactly as
    they map a checkpoint.  None when that copy cannot be made.
    """
    params0 = dict(m0.named_parameters(remove_duplicate=False))
    sd = {}
    for key, value in m0.state_dict(keep_vars=True).items():
        p = params0.get(key)
        if p is not None:
            sd[key] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        else:
            sd[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
    try:
        shadow = copy.deepcopy(m1)
        shadow.load_state_dict(sd, strict=True)
    except Exception:  # noqa: BLE001 - fall back to same-name comparison
        return None
    expected = {k: v for k, v in shadow.named_parameters(remove_duplicate=False)}
    actual = {k: (v.grad if v.grad is not None else torch.zeros_like(v))
              for k, v in m1.named_parameters(remove_duplicate=False)}
    return {k: v.detach() for k, v in expected.items()}, actual


def _perturb(module: Any, seed: int, torch: Any) -> None:
    """Make initial constants informative before the weights are copied.

    Freshly built models hold constant tensors (LayerNorm weight 1 / bias 0,
    zero Linear biases, BatchNorm running mean 0 / variance 1) under which a
    wrong parameter mapping or a dropped bias computes the same thing.
    1. Every parameter whose elements are all equal gets seeded noise (0.1 σ).
    2. BatchNorm running means get noise; running variances a factor in
       [0.5, 1.5].
    """
    gen = torch.Generator().manual_seed(seed + 99)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and p.numel() and bool((p == p.reshape(-1)[0]).all()):
                p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))
        for name, buf in module.named_buffers():
            if buf is None or not buf.is_floating_point():
                continue
            if name.endswith("running_mean"):
                buf.add_(0.1 * torch.randn(buf.shape, generator=gen).to(buf.dtype))
            elif name.endswith("running_var"):
                buf.mul_((0.5 + torch.rand(buf.shape, generator=gen)).to(buf.dtype))


def _compare_built(built: _Built, tol: Tolerance, seed: int, device: str, torch: Any) -> _Tally:
    m0, m1 = built.original, built.rewritten
    tally = _Tally(tol)
    _perturb(m0, seed, torch)
    try:
        missing, unexpected = m1.load_state_dict(m0.state_dict(), strict=False)
    except Exception as exc:  # noqa: BLE001 - size mismatches raise even when not strict
        raise _ClassFail(f"checkpoint incompatible: the original's state_dict does not load "
                         f"strictly: {_compact_load_error(exc)}") from None
    if missing or unexpected:
        parts = [f"{len(keys)} {what} key(s) ({_some(keys)})"
                 for what, keys in (("unexpected", unexpected), ("missing", missing)) if keys]
        raise _ClassFail("checkpoint incompatible: the original's state_dict does not load "
                         "strictly: " + "; ".join(parts))
    m0.to(device)
    m1.to(device)
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in built.inputs.items()}
    # Small activations make constants such as a LayerNorm eps visible (an
    # eps of 1e-5 for 1e-12 is within tolerance at unit scale).
    has_float = any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in inputs.values())
    runs = [("eval", 1.0)] + ([("eval x0.01", 0.01)] if has_float else [])
    runs += [("train", 1.0)] if tol.deterministic else []
    for mode, scale in runs:
        m0.train(mode == "train")
        m1.train(mode == "train")
        m0.zero_grad(set_to_none=True)
        m1.zero_grad(set_to_none=True)
        scaled = {k: (v * scale if isinstance(v, torch.Tensor) and v.is_floating_point() and scale != 1.0 else v)
                  for k, v in inputs.items()}
        out0, g0 = _run(m0, scaled, seed, torch)
        try:
            out1, g1 = _run(m1, scaled, seed, torch)
        except Exception as exc:  # noqa: BLE001
            raise _ClassFail(f"the rewritten forward/backward raises in {mode} mode: {_one_line(exc)}") from None
        f0: list[tuple[str, Any]] = []
        f1: list[tuple[str, Any]] = []
        _flatten(out0, "output", f0, torch)
        _flatten(out1, "output", f1, torch)
        d1 = dict(f1)
        for where, t0 in f0:
            tally.compare(f"{mode} {where}", t0, d1.get(where), torch)
        for where, _ in f1:
            if where not in dict(f0):
                tally._fail(Mismatch(f"{mode} {where}", message="extra output"))
        for k in g0:
            tally.compare(f"{mode} grad input {k}", g0[k], g1.get(k), torch)
        mapped = _param_grads_mapped(m0, m1, torch)
        if mapped is None:
            p0 = dict(m0.named_parameters())
            mapped = ({k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in p0.items()},
                      {k: (v.grad if v.grad is not None else torch.zeros_like(v))
                       for k, v in m1.named_parameters() if k in p0})
        expected, actual = mapped
        for k in sorted(actual):
            tally.compare(f"{mode} grad param {k}", expected.get(k), actual[k], torch)
    tally.modes = tuple(mode for mode, _ in runs)
    return tally


def _some(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def _compact_load_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."


# ---------------------------------------------------------------------------
# The driver


def _no_progress(kind: str, value: Any) -> None:
    pass


def _verify(orig_src: str, new_src: str, *, path: str, rewritten_path: str,
            options: VerifyOptions, progress=_no_progress) -> VerifyReport:
    """The differential test itself (module docstring), in this process.

    `progress(kind, value)` hears of each step (`verify_isolated` relays them
    from its child process): "device", "classes" (the names to compare),
    "stage" (what it is doing), "class" (a class starts), "result" (its
    ClassResult).
    """
    allow = options.allow_skip
    try:
        with warnings.catch_warnings():  # torch warns when numpy is absent
            warnings.simplefilter("ignore")
            import torch
    except ImportError:
        raise VerifyUsageError("verification needs PyTorch: pip install 'dslc[verify]'") from None
    device, no_device = resolve_device(options.device, torch)
    progress("device", device)
    packs = load_packs(options)
    progress("stage", "loading the factory")
    factory = _load_factory(options.factory) if options.factory else None
    try:
        ast.parse(orig_src)
    except SyntaxError as exc:
        raise VerifyUsageError(f"{path}: the original does not parse: {_one_line(exc)}") from None
    try:
        names = changed_classes(orig_src, new_src)
    except SyntaxError as exc:
        return VerifyReport(path, rewritten_path, device,
                            error=f"the rewritten file does not parse: {_one_line(exc)}")
    orig_classes = _class_sources(orig_src)
    for name in options.classes:
        if name not in orig_classes:
            raise VerifyUsageError(f"--class {name}: no such class in {path}")
    if options.classes:
        names = list(dict.fromkeys(options.classes))
    if not names and ast.dump(ast.parse(orig_src)) == ast.dump(ast.parse(new_src)):
        return VerifyReport(path, rewritten_path, device, unchanged=True, allow_skip=allow)
    progress("classes", list(names))
    if no_device:
        return VerifyReport(path, rewritten_path, device,
                            tuple(ClassResult(n, "skipped", no_device) for n in names), allow_skip=allow)
    try:
        progress("stage", "importing the original and the rewritten file")
        loaded = _load_pair(orig_src, new_src, path, rewritten_path, options.module, packs)
    except _Skip as exc:
        return VerifyReport(path, rewritten_path, device,
                            tuple(ClassResult(n, "skipped", str(exc)) for n in names), allow_skip=allow)
    except _Broken as exc:
        return VerifyReport(path, rewritten_path, device, error=str(exc), allow_skip=allow)
    rules = all_rules(packs)
    file_rules = rules_used(new_src, rules)
    refs = _reference_kernels(loaded.rewritten)
    results = []
    rng_state = torch.random.get_rng_state()  # apply runs us in-process: leave its RNG alone
    # Tiny models gain nothing from intra-op threads, and on a busy machine
    # OpenMP threads contend: one thread is 20x faster there (0.6 s vs 11 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    via_cache: dict = {}  # one whole-model run serves every class inside it
    # transformers logs advice ("add is_decoder=True") for tiny models: not ours to show.
    hf_logger = logging.getLogger("transformers")
    saved_level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in names:
                progress("class", name)
                class_rules = rules_used(new_src, rules, within=name)
                result = _verify_class(loaded, name, factory, class_rules, file_rules,
                                       refs, options.seed, device, torch, via_cache, options.input_shapes)
                results.append(result)
                progress("result", result)
    finally:
        torch.random.set_rng_state(rng_state)
        torch.set_num_threads(threads)
        hf_logger.setLevel(saved_level)
        for mod_name in loaded.registered:
            sys.modules.pop(mod_name, None)
    return VerifyReport(path, rewritten_path, device, tuple(results), allow_skip=allow)


def _verify_class(loaded: _Loaded, name: str, factory: Any, class_rules: list, file_rules: list,
                  refs: tuple[str, ...], seed: int, device: str, torch: Any,
                  via_cache: dict | None = None, input_shapes: tuple = ()) -> ClassResult:
    """Every configuration variant of one class; the first failure decides.

    Variant 0 is the tiny default configuration (or the factory); the others
    (`tinyconfig.variants`) are compared too when they apply, and a variant
    that cannot be built is ignored.  Passing variants are merged.
    """
    count = 1
    if factory is None:
        for config_cls in tinyconfig.config_candidates(loaded.original, getattr(loaded.original, name, object)):
            count = max(count, len(tinyconfig.variants(config_cls)))
    merged: ClassResult | None = None
    for variant in range(count):
        result = _verify_variant(loaded, name, factory, class_rules, file_rules, refs, seed, device,
                                 torch, via_cache, variant, input_shapes)
        label = _variant_label(loaded, name, variant)
        if variant and result.status == "skipped":
            continue
        if result.status != "pass":
            if variant and result.status == "fail":
                result = replace(result, reason=f"with {label}: {result.reason}")
            return result
        if merged is None:
            merged = result
        else:
            merged = replace(merged, max_abs=max(merged.max_abs, result.max_abs),
                             max_rel=max(merged.max_rel, result.max_rel), compared=merged.compared + result.compared,
                             modes=merged.modes + tuple(f"{m}[{label}]" for m in result.modes))
    return merged  # type: ignore[return-value] - variant 0 always returns above or sets it


def _variant_label(loaded: _Loaded, name: str, variant: int) -> str:
    for config_cls in tinyconfig.config_candidates(loaded.original, getattr(loaded.original, name, object)):
        labels = tinyconfig.variants(config_cls)
        if variant < len(labels):
            return labels[variant]
    return str(variant)


def _verify_variant(loaded: _Loaded, name: str, factory: Any, class_rules: list, file_rules: list,
                    refs: tuple[str, ...], seed: int, device: str, torch: Any,
                    via_cache: dict | None, variant: int, input_shapes: tuple = ()) -> ClassResult:
    orig_cls = getattr(loaded.original, name, None)
    new_cls = getattr(loaded.rewritten, name, None)
    if new_cls is None:
        return ClassResult(name, "fail", "the rewritten file no longer defines this class")
    if not isinstance(orig_cls, type) or not hasattr(orig_cls, "forward"):
        return ClassResult(name, "skipped", "not a torch module class")
    tol = tolerance_for(class_rules or file_rules)
    built = None
    try:
        if factory is not None:
            built = _build_with_factory(factory, orig_cls, new_cls, seed, torch)
        else:
            built = _build_from_config(loaded, name, seed, torch, variant, input_shapes)
        if built.via:
            tol = tolerance_for(file_rules)
            if via_cache is not None and (built.via, variant) in via_cache:
                return replace(via_cache[built.via, variant], name=name)
        tally = _compare_built(built, tol, seed, device, torch)
    except _ClassSkip as exc:
        return ClassResult(name, "skipped", str(exc), tolerance=tol)
    except _ClassFail as exc:
        result = ClassResult(name, "fail", str(exc), via=built.via if built else None,
                             tolerance=tol, reference_kernels=refs)
        if built is not None and built.via and via_cache is not None:
            via_cache[built.via, variant] = result
        return result
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:  # the user's code (a factory, a forward) tried to end the process
        return ClassResult(name, "fail", f"the code under test called sys.exit({exc.code!r}) while this class "
                                         "was built or run", tolerance=tol)
    except Exception as exc:  # noqa: BLE001 - the original itself failed to run
        return ClassResult(name, "skipped", f"the original does not run: {_one_line(exc)}", tolerance=tol)
    except BaseException as exc:  # noqa: BLE001 - e.g. a factory raising BaseException itself
        return ClassResult(name, "fail", f"the code under test raised {_one_line(exc)} (a BaseException) "
                                         "while this class was built or run", tolerance=tol)
    if tally.compared == 0 and tally.worst is None:
        return ClassResult(name, "skipped", "nothing to compare: the forward returned no tensors and there "
                                            "were no gradients", tolerance=tol)
    common = dict(via=built.via, tolerance=tol, max_abs=tally.max_abs, max_rel=tally.max_rel,
                  modes=tally.modes, compared=tally.compared, reference_kernels=refs,
                  nonfinite=tally.nonfinite, inputs=built.described)
    if tally.worst is not None:
        m = tally.worst
        reason = m.message or f"max abs error {m.max_abs:.3g}, max rel error {m.max_rel:.3g}"
        result = ClassResult(name, "fail", f"{m.where}: {reason}", mismatch=m, **common)
    else:
        result = ClassResult(name, "pass", **common)
    if built.via and via_cache is not None:
        via_cache[built.via, variant] = result
    return result


# ---------------------------------------------------------------------------
# Rendering


def _describe_modes(modes: Sequence[str]) -> str:
    """`eval, eval x0.01, train` plus how many configuration variants ran them."""
    base = [m for m in modes if "[" not in m]
    variants = {m[m.index("[") + 1:-1] for m in modes if "[" in m}
    text = ", ".join(base) + " runs"
    if variants:
        text += f" (+ the same with {'; '.join(sorted(variants))})"
    return text


def render(report: VerifyReport, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    from dslc.apply.fileio import display_path

    lines = [f"verify {display_path(report.original)} -> {display_path(report.rewritten)} on {report.device}"]
    if report.error:
        lines.append(f"  FAIL  {report.error}")
    if not report.results and not report.error:
        lines.append("  no rewritten classes to compare" if report.unchanged else
                     "  the sources differ, but no class of the original is affected (only module-level "
                     "code no class uses changed?)")
    for r in report.results:
        via = f" via {r.via}" if r.via else ""
        ref = f" [reference kernel: {', '.join(r.reference_kernels)}]" if r.reference_kernels else ""
        tol = f"; tolerance {r.tolerance.describe()}" if r.tolerance and r.status != "skipped" else ""
        if r.status == "pass":
            nonfinite = (f", {r.nonfinite} NaN/Inf values equal on both sides (same positions)"
                         if r.nonfinite else "")
            inputs = f"; {r.inputs}" if r.inputs else ""
            lines.append(f"  pass  {r.name}{via}: {r.compared} tensors in {_describe_modes(r.modes)}, "
                         f"max abs error {r.max_abs:.3g}, {_rel_text(r)}{nonfinite}{tol}{inputs}{ref}")
        elif r.status == "fail":
            lines.append(f"  FAIL  {r.name}{via}: {r.reason}{tol}{ref}")
        else:
            lines.append(f"  skip  {r.name}: {r.reason}")
    c = report.counts
    verdict = "ok" if report.ok else "FAILED"
    tail = ""
    if report.nothing_compared and not report.error and not c["fail"]:
        tail = ("; nothing was compared (accepted: --allow-skip)" if report.allow_skip
                else "; nothing was compared, which is no pass (--allow-skip accepts it)")
    lines.append(f"{verdict}: {c['pass']} passed, {c['fail'] + (1 if report.error else 0)} failed, "
                 f"{c['skipped']} skipped{tail}")
    return "\n".join(lines)


def _rel_text(r: ClassResult) -> str:
    """The relative error of a pass, without alarm where the absolute tolerance held."""
    t = r.tolerance
    if t is not None and not t.exact and t.atol > 0:
        return f"max rel error {r.max_rel:.3g} (where |expected| > atol)"
    return f"max rel error {r.max_rel:.3g}"
