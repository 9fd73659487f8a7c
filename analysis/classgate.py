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
_NOISE = re.compile(r"""#[^\n]*|[rRbBuUfF]{0,2}(?:'''(?:[^'\\]|\\.|'(?!''))*'''|\"\"\"(?:[^"\\]|\\.|"(?!""))*\"\"\"|"""
                    r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""", re.S)


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
        self._defs: dict[str, list[ast.stmt]] | None = None  # module-level name -> the statements binding it
        self._closure: dict[str, frozenset[str]] = {}  # name -> the words its definitions bring in
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
            own = self.words(c.node)
            if "import" in own:
                return True  # a local import: its names may resolve to anything
            words |= own
        for w in list(words):
            words |= self._brought(w)
        for b in init:
            if b.type:
                words.add(b.type.rsplit(".", 1)[-1])
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

    def _brought(self, name: str) -> frozenset[str]:
        """What module-level name `name` brings in: the words of the
        statements that bind it and, transitively, of those binding the
        names they mention; and what each of those names resolves to."""
        known = self._closure.get(name)
        if known is not None:
            return known
        defs = self._module_defs()
        scope = self.ctx.scope
        out: set[str] = set()
        todo, seen = [name], {name}
        while todo:
            w = todo.pop()
            out.add(w)
            out |= self._resolve(w, scope)
            for stmt in defs.get(w, ()):
                for v in self.words(stmt):
                    if v not in seen:
                        seen.add(v)
                        todo.append(v)
        found = self._closure[name] = frozenset(out)
        return found

    def _module_defs(self) -> dict[str, list[ast.stmt]]:
        if self._defs is None:
            defs: dict[str, list[ast.stmt]] = {}
            for stmt in top_level(self.ctx.tree.body):
                if isinstance(stmt, ast.ClassDef):
                    continue  # a class is a node only as a layer's type (init bindings)
                for name in _bound(stmt):
                    defs.setdefault(name, []).append(stmt)
            self._defs = defs
        return self._defs

    def _resolve(self, name: str, scope) -> frozenset[str]:
        """The last components of what module-level `name` resolves to (its
        import followed through the tree) and of the library function a
        local copy of it stands for."""
        if name not in scope.names and name not in scope.copies:
            return frozenset()
        found = self._resolved.get(name)
        if found is None:
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
