"""Which classes to compare and which rules hold them (steps 1 and 6 of
`dslc.verify.equivalence`): the classes a rewrite changed, the rules whose
kernels a source refers to, and the tolerance their contracts combine to."""

from __future__ import annotations

import ast
import functools
from typing import Iterable, Sequence

from dslc.verify.report import Tolerance, VerifyOptions, VerifyUsageError


def changed_classes(original_source: str, rewritten_source: str) -> list[str]:
    """Classes of ORIGINAL that the rewrite changed, in source order.

    1. A class whose AST (positions and comments ignored) differs, or that
       the rewritten file no longer defines (renamed, removed).
    2. A class that reads a module-level name whose definition changed
       (a rewritten helper function, a new import bound to an old name).
    """
    old, new = parsed(original_source), parsed(rewritten_source)
    # Only what a class can depend on is compared (a huge literal nothing reads is never dumped).
    wanted = {n.name for n in old.body if isinstance(n, ast.ClassDef)}
    for node in old.body:
        if isinstance(node, ast.ClassDef):
            wanted |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    old_defs, new_defs = _top_defs(old, wanted), _top_defs(new, wanted)
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


def _top_defs(tree: ast.Module, wanted: set[str]) -> dict[str, str]:
    """Module-level name -> the dump of what defines it; a name not in
    `wanted` is only marked present."""
    defs: dict[str, str] = {}

    def define(name: str, node: ast.AST, default: str | None = None) -> None:
        defs[name] = (default if default is not None else ast.dump(node)) if name in wanted else ""

    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            define(node.name, node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                plain = not alias.asname and not isinstance(node, ast.ImportFrom)
                define(name, node, defs.get(name, "import") if plain else None)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    define(target.id, node.value)
    return defs


@functools.lru_cache(maxsize=2)
def parsed(source: str) -> ast.Module:
    """`ast.parse(source)`, parsed once however many steps ask (the original
    and the rewritten source; never mutate the tree)."""
    return ast.parse(source)


def class_names(source: str) -> set[str]:
    return {n.name for n in parsed(source).body if isinstance(n, ast.ClassDef)}


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
        tree = parsed(source)
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


def applied_rules(rules: Sequence, applied: Sequence[tuple[str, str | None]] | None,
                  within: str | None = None) -> tuple[list, int]:
    """(the rules of `rules` that applied, how many others there are).

    `applied` holds (rule, class) pairs, the class a rule rewrote (None:
    module level).  With `within`, the rules applied in that class count, or
    when none did (a class that changed through a helper) those applied
    anywhere in the file.  Without the applied pairs (None), or when none of
    `rules` applied (the file was edited by hand after the rewrite), every
    rule counts, and no other.  A generated pack has hundreds of rules with
    one kernel: the tolerance and the report follow the ones that rewrote
    the file."""
    if applied is None:
        return list(rules), 0
    names = {r for r, c in applied if c == within} if within is not None else set()
    if not names:
        names = {r for r, _ in applied}
    kept = [r for r in rules if r.qualified_name in names]
    if not kept:
        return list(rules), 0
    return kept, len(rules) - len(kept)


def tolerance_for(rules: Sequence, others: int = 0) -> Tolerance:
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
        others=others,
        bf16=_bf16(contracts),
    )


def _bf16(contracts: Sequence) -> tuple[float, float] | None:
    """The loosest declared bf16 (atol, rtol), when every contract declares one."""
    declared = [dict((d, (a, r)) for d, a, r in c.per_dtype).get("bf16") for c in contracts]
    if not declared or any(d is None for d in declared):
        return None
    return max(d[0] for d in declared), max(d[1] for d in declared)
