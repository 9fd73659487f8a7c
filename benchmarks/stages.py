"""Where `dslc apply` spends its CPU time, per stage (issue 11's profile).

`StageTimer().install()` wraps the entry points of each stage (module
attributes, so that every caller that goes through the module sees the
wrapper) with an exclusive CPU-time accountant: time spent inside a wrapped
function is charged to its stage, minus the time spent in nested wrapped
functions (which is charged to theirs).  `ast.parse` is wrapped too, so
re-parses by later stages show up as `parse`, not as the stage that asked.

The overhead is one `time.process_time()` pair per wrapped call (the
wrapped functions are coarse: per file, per function, per guard query), far
below cProfile's, so the shares are close to an unprofiled run's.

Stages: read, parse, names, astroid, init (init bindings), paths (forward
path enumeration), z3 (guard feasibility and equivalence), analysis (the
rest of the analysis), cache (analysis and result cache reads/writes),
matching, safety, rewriting, reporting; `other` is what is left of the run.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections import defaultdict

# stage -> [(module, attribute path)]
TARGETS: dict[str, list[tuple[str, str]]] = {
    "read": [("dslc.fileio", "read_source"), ("dslc.fileio", "discover")],
    "parse": [("ast", "parse")],
    "names": [("dslc.analysis.names", "build_scope"), ("dslc.analysis.names", "Resolver.resolve_parts"),
              ("dslc.analysis.names", "Resolver.follow"), ("dslc.analysis.names", "Resolver.load")],
    "astroid": [("dslc.analysis.infer", "Inferrer.infer_qualname")],
    "init": [("dslc.analysis.initbind", "InitBindings.bindings")],
    "paths": [("dslc.analysis.paths", "PathBuilder.function_paths")],
    "z3": [("dslc.analysis.guards", "feasible_key"), ("dslc.analysis.guards", "consistent"),
           ("dslc.analysis.guards", "equivalent"), ("dslc.analysis.guards", "merge_equivalent")],
    "analysis": [("dslc.analysis.api", "analyze_source")],
    "cache": [("dslc.analysis.api", "_cache_get"), ("dslc.analysis.api", "_cache_put"),
              ("dslc.apply.resultcache", "ResultCache.get"), ("dslc.apply.resultcache", "ResultCache.put")],
    "matching": [("dslc.apply.driver", "match_file")],
    "safety": [("dslc.rewrite.safety", name) for name in (
        "check_guards", "check_dataflow", "check_attr_uses", "check_constraints", "check_when",
        "check_conflict", "verify_output", "paths_through", "candidate_paths")],
    "rewriting": [("dslc.apply.driver", "rewrite_source")],
    "reporting": [("dslc.apply.report", name) for name in (
        "render_diff", "render_json", "render_summary", "render_notes", "render_errors", "file_diff")],
}


class StageTimer:
    def __init__(self) -> None:
        self.exclusive: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [stage, start, child_time]
        self._undo: list = []

    def _wrap(self, stage: str, fn):
        timer = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            clock = time.process_time
            frame = [stage, clock(), 0.0]
            timer._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - frame[1]
                timer._stack.pop()
                timer.exclusive[stage] += elapsed - frame[2]
                timer.calls[stage] += 1
                if timer._stack:
                    timer._stack[-1][2] += elapsed

        wrapper.__wrapped_stage__ = fn
        return wrapper

    def install(self) -> "StageTimer":
        for stage, targets in TARGETS.items():
            for modname, attr in targets:
                try:
                    owner = importlib.import_module(modname)
                except ImportError:
                    continue
                *path, name = attr.split(".")
                for part in path:
                    owner = getattr(owner, part, None)
                    if owner is None:
                        break
                if owner is None or not hasattr(owner, name):
                    continue
                fn = owner.__dict__.get(name, getattr(owner, name))
                if isinstance(fn, (staticmethod, classmethod)):
                    continue
                setattr(owner, name, self._wrap(stage, fn))
                self._undo.append((owner, name, fn))
        # modules that bound `ast.parse` at import under another name are not seen
        return self

    def uninstall(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()

    def run(self, fn, *args, **kwargs):
        """Call `fn` with the timer running; returns (result, total CPU seconds)."""
        start = time.process_time()
        frame = ["other", start, 0.0]
        self._stack.append(frame)
        try:
            result = fn(*args, **kwargs)
        finally:
            total = time.process_time() - start
            self._stack.pop()
            self.exclusive["other"] += total - frame[2]
        return result, total

    def table(self) -> dict[str, float]:
        order = list(TARGETS) + ["other"]
        return {stage: round(self.exclusive.get(stage, 0.0), 3) for stage in order}
