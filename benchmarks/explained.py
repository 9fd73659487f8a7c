"""Is every unrewritten place that holds a rule's anchors explained? (issue 8, "Why not" report)

    python benchmarks/explained.py [--src DIR] [--rules PACK.adr ...] [--jobs N] [--show N] [--json FILE]
        [--only PART ...] [--skip PART ...]

1. Gets the newest `transformers` and `timm` wheels from the package index
   (`benchmarks/coverage.py`'s `fetch`; `--src DIR` reuses an unpacked
   folder) and takes every `transformers/models/<arch>/modeling_*.py` and
   every `timm/models/*.py`.
2. Runs `dslc apply` (dry run) with `--near-misses` over them, each rule
   pack given (default: rulepacks/adopter.adr, sdpa.adr, liger.adr), and
   counts errors and internal errors (E9xx codes, and W199: a near-miss
   report that failed).
3. Finds the places that hold a rule's anchors, from the analysis facts
   (read back from the same analysis cache) with the matcher's own anchor
   index and pre-filter, not from the near-miss module:
   - every path node of every scope (`forward`, the other methods, module
     functions) whose anchor key (`CompiledPack.candidates`) starts rule R,
     in a class (or function) that mentions every name R needs
     (`CompiledRule.names`, the file pre-filter of `anchor_names`);
   - for a rule with an init item and no forward item, every class that
     binds one of its init types;
   - from the source itself (`ast`): every class that calls R's anchor
     (a call whose callee's last name is the anchor's) and mentions every
     name R needs -- a place the analysis did not see at all.
   - for a class rule (`class { ... }`: matched by the expression graph of
     a whole forward, no anchor node), from the source (`ast`): every class
     whose own `forward` spells the rule's anchors, the operations of its
     pattern (`classmatch.class_anchors`; `classmatch.candidates` says how
     many must be there), read here from the source without the analysis:
     `x ** 2` / `.square()` / `torch.pow` are `pow`, `.float()` is `to`, a
     layer called as `self.<attr>(...)` is the type its `__init__` builds
     (an activation layer, `ACT2FN[...]` included, is its function).
   A place is a class for a rule with an init item (or `scope = "forward"`,
   or a class rule), else the innermost function or method around the anchor.
4. A place is explained when the report holds, for that rule (or a rule of
   its family: one pack, the same kernels, which the report gives one entry
   per place and reason) and inside the place's lines, an applied match, a
   skipped match (its reason) or a near miss (its reason); a class place
   whose anchor is code inherited from a base in the file, by an entry at
   the anchor's line (the base's, which is of the same code).  Unsafe rules
   left out of the run (`--unsafe` not given) are listed, not checked.

Prints the counts per pack and every unexplained place (`--show` of them),
with the anchor node and which source found it; exit status 1 when some
place is unexplained or some error occurred.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import collections
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from dslc.apply.driver import ApplyOptions, analyze_paths, apply_paths, compile_packs  # noqa: E402
from dslc.lang.loader import load_rules  # noqa: E402
from dslc.match import classmatch  # noqa: E402
from dslc.match.matcher import _expand_sequential, _PathCtx, _scopes  # noqa: E402
from dslc.rewrite.nearmiss import family_key  # noqa: E402

DEFAULT_PACKS = ("adopter.adr", "sdpa.adr", "liger.adr")
INTERNAL = ("E9", "W199")


@dataclass(frozen=True)
class Place:
    rule: str
    file: str
    unit: str  # "class Foo" / "def bar"
    span: tuple[int, int]
    line: int  # the anchor's line (or the class's)
    source: str  # analysis | init | ast


def _last(name: str | None) -> str:
    return (name or "").rsplit(".", 1)[-1]


class Defs:
    """The classes and functions of one file, by line span (innermost first)."""

    def __init__(self, tree: ast.AST):
        self.defs: list[tuple[int, int, str, ast.AST]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                self.defs.append((node.lineno, node.end_lineno, f"class {node.name}", node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.defs.append((node.lineno, node.end_lineno, f"def {node.name}", node))
        self.defs.sort(key=lambda d: d[1] - d[0])

    def around(self, line: int, kind: str) -> tuple[int, int, str, ast.AST] | None:
        for d in self.defs:
            if d[0] <= line <= d[1] and d[2].startswith(kind):
                return d
        return None


def _dotted(f: ast.AST) -> list[str]:
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    elif not parts:
        return []
    else:
        parts.append("")  # a call's result, a subscript: no name at the root
    return parts[::-1]


def _identifiers(node: ast.AST, imported: dict[str, str]) -> tuple[set[str], set[str], set[str]]:
    """Under `node`: the names it mentions (an attribute of `self` is a
    layer's name, not a type's: left out), the qualified names of the
    callees whose root is an imported name (`nn.Conv2d(` is
    `torch.nn.Conv2d`), and the last names of method calls on any value
    (`k.transpose(`)."""
    names, module_callees, methods = set(), set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute) and not (isinstance(n.value, ast.Name) and n.value.id == "self"):
            names.add(n.attr)
        if isinstance(n, ast.Call):
            parts = _dotted(n.func)
            if not parts:
                continue
            if parts[0] in imported:
                module_callees.add(".".join([imported[parts[0]], *parts[1:]]))
            if len(parts) > 1:
                methods.add(parts[-1])
    return names, module_callees, methods


def _imported(tree: ast.AST, module: str | None = None) -> dict[str, str]:
    """Local name -> qualified name of the file's imports (relative ones
    too where the file's own module name is known)."""
    out = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                out[a.asname] = a.name if a.asname else out.setdefault(a.name.split(".")[0], a.name.split(".")[0])
        elif isinstance(n, ast.ImportFrom) and (n.module or n.level):
            base = n.module
            if n.level:
                parts = module.split(".") if module else []
                if not module or n.level > len(parts):
                    continue
                base = ".".join(parts[:-n.level] + ([n.module] if n.module else []))
            for a in n.names:
                out[a.asname or a.name] = f"{base}.{a.name}"
    out.pop(None, None)
    return out


def _module_of(path: Path) -> str | None:
    """The dotted module name of a file inside packages (`__init__.py` up the tree)."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.append(folder.name)
        folder = folder.parent
    return ".".join(reversed(parts)) if len(parts) > 1 else None


def _unit_of(cr, scope, node, defs: Defs) -> tuple[str, tuple[int, int]] | None:
    line = node.stmt.lines[0]
    if cr.class_scoped and scope.cls is not None:
        d = defs.around(scope.cls.lines[0], "class")
        if d is not None and d[0] == scope.cls.lines[0]:
            return d[2], (d[0], d[1])
        return f"class {scope.cls.name}", tuple(scope.cls.lines)
    d = defs.around(line, "def")
    return (d[2], (d[0], d[1])) if d is not None else None


def analysis_places(compiled, facts, defs: Defs, file: str) -> dict[tuple, Place]:
    """Step 3, from the facts: anchor nodes of every scope, init-only rules."""
    out: dict[tuple, Place] = {}
    for c in compiled:
        class_names: dict[str, set[str]] = {}
        for cls in facts.classes:
            names = {_last(b.type) for b in cls.init} | {_last(b.unresolved) for b in cls.init}
            for paths in [cls.paths, *(ps for _, ps in cls.other_paths)]:
                names |= {_last(x) for p in paths for n in p.nodes for x in (n.type, n.unresolved)}
            class_names[cls.qualname] = names
        for scope, paths in _scopes(facts):
            if scope.cls is not None:
                names = class_names[scope.cls.qualname]
            else:
                names = {_last(x) for p in paths for n in p.nodes for x in (n.type, n.unresolved)}
            for path in paths:
                ctx = _PathCtx(_expand_sequential(path, scope), scope)
                for pos, node in enumerate(ctx.nodes):
                    if node.kind == "stmt" or (node.stmt.owner and facts.module and not _local(node, facts)):
                        continue
                    for key in ctx.keys[pos]:
                        for r in c.candidates(key):
                            cr = c.rules[r]
                            if not cr.names <= names:
                                continue
                            unit = _unit_of(cr, scope, node, defs)
                            if unit is not None:
                                out.setdefault((cr.name, unit[0], unit[1]),
                                               Place(cr.name, file, unit[0], unit[1], node.stmt.lines[0], "analysis"))
        for r in c.init_only:
            cr = c.rules[r]
            types = {t.type for t in cr.init.tests}
            for cls in facts.classes:
                if any(b.type in types for b in cls.init) and cr.names <= class_names[cls.qualname]:
                    span = (cls.lines[0], cls.lines[1])
                    out.setdefault((cr.name, f"class {cls.name}", span),
                                   Place(cr.name, file, f"class {cls.name}", span, cls.lines[0], "init"))
    return out


def _local(node, facts) -> bool:
    """Is the node's statement in this file (not inherited from another module)?"""
    owner = node.stmt.owner
    if owner == facts.module:
        return True
    return any(owner == c.qualname or owner.startswith(c.qualname + ".") for c in facts.classes)


def source_places(compiled, defs: Defs, imported: dict[str, str], file: str) -> dict[tuple, Place]:
    """Step 3, from the source: classes (functions) calling a rule's anchor.

    The anchor is called when a call's callee, resolved through the file's
    imports, is the anchor (`nn.Conv2d(...)`, `F.softmax(...)`), or,
    for a tensor method anchor (`torch.Tensor.transpose`), is that method of
    any value (`k.transpose(...)`); the place mentions every name the rule
    needs (the attributes of `self` are layer names, not types)."""
    out: dict[tuple, Place] = {}
    cache: dict[int, tuple] = {}
    for c in compiled:
        for cr in c.rules:
            anchor = cr.forward.anchor if cr.forward is not None else None
            if anchor is None:
                continue
            want = _last(anchor[1])
            method = anchor[1].startswith("torch.Tensor.")
            kind = "class" if cr.class_scoped else "def"
            for lo, hi, unit, node in defs.defs:
                if not unit.startswith(kind):
                    continue
                if id(node) not in cache:
                    cache[id(node)] = _identifiers(node, imported)
                names, module_callees, methods = cache[id(node)]
                if (want in methods if method else anchor[1] in module_callees) and cr.names <= names:
                    line = next((n.lineno for n in ast.walk(node) if isinstance(n, ast.Call)
                                 and want in (getattr(n.func, "attr", None), getattr(n.func, "id", None))), lo)
                    out.setdefault((cr.name, unit, (lo, hi)), Place(cr.name, file, unit, (lo, hi), line, "ast"))
    return out


def _layer_key(value: ast.AST, imported: dict[str, str]) -> tuple[str, str] | None:
    """The anchor key of a layer built by `value` in __init__ (`nn.Linear(...)`,
    `nn.SiLU()`, `ACT2FN["silu"]`, `ACT2FN[config.hidden_act]`)."""
    if isinstance(value, ast.Subscript):
        parts = _dotted(value.value)
        qual = ".".join([imported[parts[0]], *parts[1:]]) if parts and parts[0] in imported else None
        if qual != classmatch.ACT2FN:
            return None
        key = value.slice
        if isinstance(key, ast.Constant):
            found = classmatch.ACT2FN_KEYS.get(key.value)
            return ("call", found[0]) if found else None
        return ("call", next(iter(classmatch.ACT2FN_RUNTIME))[0])  # checked at run time
    if not isinstance(value, ast.Call):
        return None
    parts = _dotted(value.func)
    if not parts or parts[0] not in imported:
        return None
    qual = ".".join([imported[parts[0]], *parts[1:]])
    if qual in classmatch.ACTIVATION_LAYERS:
        return ("call", classmatch.ACTIVATION_LAYERS[qual][0])
    return ("layer", qual)


def _class_ops(node: ast.ClassDef, imported: dict[str, str]) -> frozenset | None:
    """The anchor keys the class's own `forward` spells (None: it has none)."""
    methods = {f.name: f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    fwd = methods.get("forward")
    if fwd is None:
        return None
    layers: dict[str, tuple | None] = {}
    for n in ast.walk(methods["__init__"]) if "__init__" in methods else ():
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Attribute) \
                and isinstance(n.targets[0].value, ast.Name) and n.targets[0].value.id == "self":
            attr = n.targets[0].attr
            layers[attr] = _layer_key(n.value, imported) if attr not in layers else None
    binops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@", ast.FloorDiv: "//",
              ast.Mod: "%"}
    out = set()
    for n in ast.walk(fwd):
        if isinstance(n, ast.BinOp):
            out.add(("method", "pow") if isinstance(n.op, ast.Pow) else ("binop", binops.get(type(n.op), "?")))
        if not isinstance(n, ast.Call):
            continue
        parts = _dotted(n.func)
        if len(parts) == 2 and parts[0] == "self":
            if layers.get(parts[1]):
                out.add(layers[parts[1]])
        elif parts and parts[0] in imported:
            qual = ".".join([imported[parts[0]], *parts[1:]])
            name = qual[6:] if qual.startswith("torch.") else None
            out.add(("method", "pow" if name == "square" else name) if name in classmatch.TORCH_METHODS
                    else ("call", qual))
        elif len(parts) > 1:
            out.add(("method", {"square": "pow", "float": "to"}.get(parts[-1], parts[-1])))
    return frozenset(out)


def class_places(compiled, defs: Defs, imported: dict[str, str], file: str) -> dict[tuple, Place]:
    """Step 3 for class rules, from the source: classes whose own forward
    spells the rule's anchors (`classmatch.candidates`)."""
    out: dict[tuple, Place] = {}
    anchors = {cr.name: classmatch.class_anchors(cr.rule) for c in compiled for cr in c.rules
               if cr.rule.klass is not None}
    if not anchors:
        return out
    for lo, hi, unit, node in defs.defs:
        if not isinstance(node, ast.ClassDef):
            continue
        ops = _class_ops(node, imported)
        if ops is None:
            continue
        for name in classmatch.candidates(anchors, ops):
            out.setdefault((name, unit, (lo, hi)), Place(name, file, unit, (lo, hi), lo, "class"))
    return out


def _innermost(places: dict[tuple, Place]) -> dict[tuple, Place]:
    """A function place inside another function place of the same rule is
    the same place seen twice (`def` nested in `def`): keep the innermost."""
    by_rule = collections.defaultdict(list)
    for k, p in places.items():
        by_rule[p.rule].append((k, p))
    out = {}
    for items in by_rule.values():
        for k, p in items:
            if any(q is not p and q.unit.split()[0] == p.unit.split()[0]
                   and p.span[0] <= q.span[0] and q.span[1] <= p.span[1] and q.span != p.span for _, q in items):
                continue
            out[k] = p
    return out


def explained(result, family) -> tuple[dict, set]:
    """The report's entries in this file (applied, skipped, near misses):
    rule family -> their sorted lines, and the (family, class name) pairs (an
    entry of a subclass can sit at the lines of the base it inherits from).
    The report gives one entry per place and reason for a family of rules
    (one pack, the same kernels: `nearmiss.family_key`), and none where one
    of the family matched, so a family's entry explains each of its rules."""
    lines = collections.defaultdict(list)
    classes = set()
    for m in result.matches:
        if m.file == result.found.display:
            lines[family(m.rule)].extend(m.lines)
        if m.class_name:
            classes.add((family(m.rule), m.class_name))
    for n in result.near_misses:
        for r in (n.rule, *(getattr(n, "rules", ()) or ())):
            lines[family(r)].append(n.line)
            if n.class_name:
                classes.add((family(r), n.class_name))
    return {r: sorted(ls) for r, ls in lines.items()}, classes


def _inside(lines: list[int], span: tuple[int, int]) -> bool:
    i = bisect.bisect_left(lines, span[0])
    return i < len(lines) and lines[i] <= span[1]


def _inherited_entry(lines: list[int], p: Place) -> bool:
    """A class place whose anchor is code it inherits from a base in the
    file (its line lies outside the class) is explained by an entry at that
    line: the base's match (or near miss) is of the same code, reported once
    at the base."""
    if p.span[0] <= p.line <= p.span[1]:
        return False
    i = bisect.bisect_left(lines, p.line)
    return i < len(lines) and lines[i] == p.line


def check_file(compiled, facts, result, left_out: set[str]) -> tuple[list[Place], list[Place]]:
    """(every place, the unexplained ones) of one file."""
    try:
        text = Path(result.found.path).read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return [], []
    defs = Defs(tree)
    file = result.found.display
    imported = _imported(tree, _module_of(Path(result.found.path)))
    places = source_places(compiled, defs, imported, file)
    places.update(class_places(compiled, defs, imported, file))
    if facts is not None:
        for k, p in analysis_places(compiled, facts, defs, file).items():
            places[k] = p  # the analysis's anchor line wins
    places = {k: p for k, p in _innermost(places).items() if p.rule not in left_out}
    by_name = {cr.name: cr for c in compiled for cr in c.rules}

    def family(rule: str):
        cr = by_name.get(rule)
        return family_key(cr.rule) if cr is not None else rule

    seen, classes = explained(result, family)
    missing = [p for p in places.values() if not _inside(seen.get(family(p.rule), []), p.span)
               and not (p.unit.startswith("class ") and (family(p.rule), p.unit[6:]) in classes)
               and not _inherited_entry(seen.get(family(p.rule), []), p)]
    return list(places.values()), missing


def files_of(src: Path) -> list[Path]:
    files = sorted((src / "transformers" / "models").glob("*/modeling_*.py")) + sorted((src / "timm" / "models").glob("*.py"))
    return [f for f in files if not f.name.startswith("_")]


def run(rules: list[str], files: list[Path], jobs: int, cache_dir: str) -> dict:
    loaded = load_rules(rules)
    if any(d.severity == "error" for d in loaded.diagnostics):
        raise SystemExit("the rule packs have errors")
    options = ApplyOptions(mode="diff", jobs=jobs, gitignore=False, near_misses=True, cache_dir=cache_dir)
    start = time.perf_counter()
    report = apply_paths([str(f) for f in files], loaded.packs, options)
    seconds = time.perf_counter() - start
    left_out = {name for name, _ in report.left_out}
    kept = [replace(p, rules=tuple(r for r in p.rules if r.qualified_name not in left_out)) for p in loaded.packs]
    compiled = compile_packs(kept)  # the run's own packs: the same analysis pre-filter, so the cache answers
    paths = [r.found.path for r in report.files]
    facts = analyze_paths(paths, jobs=jobs, cache_dir=cache_dir, root=None, want=compiled.want)
    places, missing = [], []
    for result, f in zip(report.files, facts):
        ok = not result.errors and getattr(f, "classes", None) is not None
        p, m = check_file(compiled.compiled, f if ok else None, result, left_out)
        places += p
        missing += m
    errors = list(report.errors)
    internal = [e for e in errors if e.code.startswith(INTERNAL)] + \
        [w for w in report.warnings if w.code.startswith(INTERNAL)]
    return {"packs": [p.name for p in loaded.packs], "files": len(report.files), "seconds": round(seconds, 1),
            "errors": len(errors), "internal_errors": len(internal),
            "error_list": [f"{e.file}:{e.line}: {e.code} {e.message}" for e in errors + internal][:50],
            "applied": sum(m.status == "applied" for m in report.matches),
            "skipped": sum(m.status == "skipped" for m in report.matches),
            "near_misses": sum(n.kind == "unmatched" for n in report.near_misses or ()),
            "left_out": sorted(left_out),
            "places": len(places), "by_source": dict(collections.Counter(p.source for p in places)),
            "unexplained": [p.__dict__ for p in sorted(missing, key=lambda p: (p.file, p.line, p.rule))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", action="append", help="rule packs, each checked in its own run (default: adopter, sdpa, liger)")
    ap.add_argument("--src", help="an unpacked folder holding transformers/ and timm/ (skips the download)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache-dir", help="the analysis cache (default: a folder under the temp folder)")
    ap.add_argument("--show", type=int, default=40, help="unexplained places to print per pack")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--only", action="append", help="only files whose path contains this (a quick look)")
    ap.add_argument("--skip", action="append", help="leave out files whose path contains this")
    args = ap.parse_args(argv)
    if args.src:
        src = Path(args.src)
    else:
        from coverage import fetch

        cache = Path(tempfile.gettempdir()) / "dslc-coverage"
        print("versions:", fetch(cache))
        src = cache / "src"
    files = files_of(src)
    if args.only:
        files = [f for f in files if any(o in str(f) for o in args.only)]
    if args.skip:
        files = [f for f in files if not any(o in str(f) for o in args.skip)]
    cache_dir = args.cache_dir or str(Path(tempfile.gettempdir()) / "dslc-explained-cache")
    rules = args.rules or [str(REPO / "rulepacks" / p) for p in DEFAULT_PACKS]
    out, bad = {}, False
    for pack in rules:
        res = run([pack], files, args.jobs, cache_dir)
        out[pack] = res
        gap = res["unexplained"]
        bad |= bool(gap or res["errors"] or res["internal_errors"])
        print(f"{Path(pack).name}: {res['files']} files in {res['seconds']} s; errors {res['errors']}, "
              f"internal errors {res['internal_errors']}; applied {res['applied']}, skipped {res['skipped']}, "
              f"near misses {res['near_misses']}; places {res['places']} {res['by_source']}; unexplained {len(gap)}")
        for e in res["error_list"]:
            print("  error:", e)
        if res["left_out"]:
            print("  left out (unsafe, not checked):", ", ".join(res["left_out"]))
        for p in gap[:args.show]:
            print(f"  {p['file']}:{p['line']}: {p['rule']} in {p['unit']} (lines {p['span'][0]}-{p['span'][1]}; "
                  f"found by {p['source']})")
        if len(gap) > args.show:
            print(f"  ... and {len(gap) - args.show} more")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
