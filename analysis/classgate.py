"""The class pre-filter: skip the forward paths of a class no rule can match.

The file pre-filter (`api.mentions_any`) drops a file that names none of
the rules' names.  Inside a file that passes, most classes still cannot
match any rule: an embeddings class of a pack about attention, a model
class that only calls its submodules.  Enumerating their forward paths
was most of a cold run's analysis.

`Options.needs` holds, for each compiled rule, the last components of the
qualified names it needs (`CompiledRule.names`: every pattern node of a
linear automaton fires on one of them, so a rule needs all of them; an
optional node's absent variant is a rule of its own).  The nodes of a
class's paths can only carry names among `ClassGate.names(info)`, an
over-approximation built without enumerating anything:

* the identifiers of the class and of each class of this module on its
  MRO (names, attributes, definitions, keywords, imported names, and
  strings that spell a dotted name): the calls their methods make
  (`F.softmax`, `x.transpose`, `self._split_heads`), the helpers they
  inline and the local functions they define;
* the same of every module-level statement that binds a name those
  identifiers mention, and so on (`sm = F.softmax`, a helper function
  whose result a local name holds, a table);
* the last component of what each module-level name among them resolves
  to (an alias imported from another module of the tree) and of the
  library function a local copy stands for (`Scope.copies`);
* the last component of the type of each init binding (the layers its
  calls of `self.<attr>` are nodes of, wherever `__init__` is).

Module-level functions are never inlined (a call of one is a node named
after it), and methods of bases in other modules neither; a `forward`
inherited from another module, or a local `import` in the class, lets the
class through.  A class passes when some rule's names are all in the set.
The gate only ever drops classes no rule can match; a dropped class keeps
its init bindings, attribute uses and bases (the rewriter's checks read
those of every class), with no paths.  With `needs` None (near-miss
reports, `dslc structure`) every class passes.
"""

from __future__ import annotations

import ast
import re

from .classes import ClassInfo, top_level

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# a comment or a string literal (any prefix, triple-quoted or not; escapes honoured)
# (the lookahead makes the scan skip other characters fast)
_NOISE = re.compile(r"""(?=[#'"rRbBuUfF])(?:#[^\n]*|[rRbBuUfF]{0,2}(?:'''(?:[^'\\]|\\.|'(?!''))*'''|"""
                    r"""\"\"\"(?:[^"\\]|\\.|"(?!""))*\"\"\"|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"))""", re.S)


def _blank(m: re.Match) -> str:
    """A comment goes; a string keeps its line breaks only, unless it spells a
    dotted name (`getattr(F, "softmax")`: its words stay) or is an f-string
    (code inside)."""
    text = m.group()
    if text[0] == "#":
        return ""
    body = text.lstrip("rRbBuUfF")
    if "f" in text[: len(text) - len(body)].lower():
        return text
    quote = 3 if body[:3] in ("\'\'\'", '\"\"\"') else 1
    inner = body[quote:-quote]
    if _DOTTED.fullmatch(inner):
        return " " + inner.replace(".", " ") + " "
    return "\n" * text.count("\n")


def code_lines(source: str) -> list[str]:
    """The lines of `source` with comments and string literals blanked
    (`_blank`): the same line count, so a node's lines are where they were."""
    if "\r" in source:  # the line breaks Python's tokenizer counts
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    return _NOISE.sub(_blank, source).split("\n")


class ClassGate:
    """`passes(info, init)`: may some rule of `needs` match class `info`?"""

    def __init__(self, ctx, needs: tuple[frozenset[str], ...]):
        self.ctx = ctx
        self.needs = needs
        self._lines: list[str] | None = None
        self._words: dict[int, frozenset[str]] = {}  # id(node of this module) -> its words
        self._closed: dict[int, frozenset[str]] = {}  # id(class node) -> its words and what they bring in
        self._defs: dict[str, list[ast.stmt]] | None = None  # module-level name -> the statements binding it
        self._imported: frozenset[str] = frozenset()  # module-level names an import (or a copy) binds
        self._resolved: dict[str, frozenset[str]] = {}

    def passes(self, info: ClassInfo, init) -> bool:
        if not self.needs or self.ctx.source is None:
            return True
        found = self.ctx.find_method("forward")
        if found is not None and found[1].scope is not self.ctx.scope:
            return True  # inherited from another module: its words are not at hand
        words: set[str] = set()
        for c in self.ctx.classes.mro(info):
            if c.scope is not self.ctx.scope:
                continue  # its methods are not inlined: a call of one is a node named after it
            if "import" in self.words(c.node):
                return True  # a local import: its names may resolve to anything
            words |= self._closure(c.node)
        words.update(b.type.rsplit(".", 1)[-1] for b in init if b.type)
        if any(need <= words for need in self.needs):
            return True
        # only now (most classes pass or fail without it): what imported names stand for
        for name in words & self._imported:
            words |= self._resolve(name)
        return any(need <= words for need in self.needs)

    def words(self, node: ast.stmt) -> frozenset[str]:
        """The identifiers of the lines of `node` (a statement of this module),
        decorators included, comments and strings left out (`code_lines`)."""
        found = self._words.get(id(node))
        if found is None:
            if self._lines is None:
                self._lines = code_lines(self.ctx.source)
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())]) - 1
            text = "\n".join(self._lines[start:node.end_lineno or node.lineno])
            found = self._words[id(node)] = frozenset(_WORD.findall(text))
        return found

    def _closure(self, node: ast.ClassDef) -> frozenset[str]:
        """The words of class `node`, with those of the module-level
        statements binding a name they mention, and so on."""
        found = self._closed.get(id(node))
        if found is None:
            defs = self._module_defs()
            out = set(self.words(node))
            todo = list(out & defs.keys())
            seen = set(todo)
            while todo:
                for stmt in defs[todo.pop()]:
                    more = self.words(stmt)
                    out |= more
                    for name in more & defs.keys():
                        if name not in seen:
                            seen.add(name)
                            todo.append(name)
            found = self._closed[id(node)] = frozenset(out)
        return found

    def _module_defs(self) -> dict[str, list[ast.stmt]]:
        if self._defs is None:
            defs: dict[str, list[ast.stmt]] = {}
            imported = set(self.ctx.scope.copies)
            for stmt in top_level(self.ctx.tree.body):
                if isinstance(stmt, ast.ClassDef):
                    continue  # a class is a node only as a layer's type (init bindings)
                for name in _bound(stmt):
                    defs.setdefault(name, []).append(stmt)
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        imported.add(name)
            self._defs = defs
            self._imported = frozenset(imported)
        return self._defs

    def _resolve(self, name: str) -> frozenset[str]:
        """The last components of what imported `name` resolves to (followed
        through the tree: an alias imported from another module) and of the
        library function a local copy of it stands for."""
        found = self._resolved.get(name)
        if found is None:
            scope = self.ctx.scope
            got: set[str] = set()
            try:
                qual = self.ctx.resolve([name], scope=scope)
            except (RecursionError, ValueError):
                qual = None
            for q in (qual, scope.copies.get(name)):
                if q:
                    got.add(q.rsplit(".", 1)[-1])
            found = self._resolved[name] = frozenset(got)
        return found


def _bound(stmt: ast.stmt) -> list[str]:
    """The names a module-level statement binds."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name.split(".")[0]) for a in stmt.names]
    # assignments, loops, `with`, anything else: every name it stores to
    return [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)]
