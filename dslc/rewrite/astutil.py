"""Small questions about stdlib `ast` nodes and names that several kinds of rewrite ask."""

from __future__ import annotations

import ast
import re
import unicodedata
from collections import deque

from dslc import codes


def is_self_attr(node) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def dotted_parts(node) -> list[str]:
    """`a.b.c` -> ["a", "b", "c"]; [] when the chain does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    parts.append(node.id)
    return parts[::-1]


def dotted_name(node) -> str | None:
    return ".".join(dotted_parts(node)) or None


def dotted_tail(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return None


def self_attr_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return expr.attr
    return None


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id != "self"}


def is_prefix(short: list, long: list) -> bool:
    """Is the chain of compound statements `short` a proper prefix of `long` (by identity)?"""
    return len(short) < len(long) and all(a[0] is b[0] and a[1] == b[1] for a, b in zip(short, long))


def owner_name(owner: str | None, class_name: str) -> str:
    """The class that defines code, as the match names its class: `class_name`
    itself when `owner` (a qualname) is that class (`m.Outer.Inner` for
    `Outer.Inner`), else the owner's last component (an inherited base)."""
    if not owner or owner == class_name or owner.endswith("." + class_name):
        return class_name
    return owner.rsplit(".", 1)[-1]


def exit_between(stmts: list) -> int | None:
    """The line of a `return`/`raise`/`break`/`continue` among `stmts` (which
    the path analysis folds into an opaque `if` when no DL call is near)."""
    for st in stmts:
        if isinstance(st, (ast.Return, ast.Raise, ast.Break, ast.Continue)):
            return st.lineno
    return None


def fresh_name(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def container_reason(binding) -> str:
    line = binding.stmt.lines[0] if binding.stmt else 0
    return codes.reason(codes.S_CONTAINER, f"`self.{binding.attr}` lives inside the container `self.{binding.container}` (line {line}); "
                        f"the emitter does not rewrite layers inside containers")


def loop_carried_read(chain: list, names: set[str], matched: set[int]) -> tuple[str, int] | None:
    """(name, line) of a read of one of `names` inside a loop of `chain` (the
    compound statements around the matched code, outermost first, as
    `(statement, field)`), outside the matched statements (`matched`: ids):
    the paths walk a loop body once, so they do not see that read, which on
    the next iteration gets the value the matched code left in the name."""
    for compound, field in chain:
        if not isinstance(compound, (ast.For, ast.AsyncFor, ast.While)) or field != "body":
            continue
        stack = list(compound.body) + ([compound.test] if isinstance(compound, ast.While) else [])
        while stack:
            node = stack.pop()
            if id(node) in matched:
                continue
            if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load):
                return node.id, node.lineno
            stack.extend(ast.iter_child_nodes(node))
    return None


# The fields that hold blocks (lists of statements, handlers or cases), in
# the order of every node type's `_fields`.
_BLOCK_FIELDS = ("body", "handlers", "orelse", "finalbody", "cases")


def index_statements(tree: ast.Module):
    """(statements, parent, stmt_at, classes) of a module, as a walk of
    every node (`ast.walk`) would find them, walking only statements and
    the nodes that hold blocks (expressions hold no statement):

    * statements: every statement, in `ast.walk` order (breadth first);
    * parent: id(statement) -> (node whose block holds it, the field name);
    * stmt_at: (line, column) -> the statement that starts there;
    * classes: name -> the first `class` of that name in `ast.walk` order.
    """
    statements: list[ast.stmt] = []
    parent: dict[int, tuple[ast.AST, str]] = {}
    stmt_at: dict[tuple[int, int], ast.stmt] = {}
    classes: dict[str, ast.ClassDef] = {}
    queue = deque([tree])
    while queue:
        node = queue.popleft()
        if isinstance(node, ast.stmt):
            statements.append(node)
            stmt_at.setdefault((node.lineno, node.col_offset), node)
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, node)
        for fname in _BLOCK_FIELDS:
            value = getattr(node, fname, None)
            if type(value) is list:
                for child in value:
                    if isinstance(child, ast.stmt):
                        parent[id(child)] = (node, fname)
                queue.extend(value)
    return statements, parent, stmt_at, classes


# An identifier, and the `.` (on the same line) before it when it is an attribute.
_WORD = re.compile(r"(\.[ \t\f]*)?([A-Za-z_][A-Za-z0-9_]*)")
_WORD_CHARS = re.compile(r"\w+")
_WORD_CHAR = re.compile(r"\w")


_IDENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_DIGIT = frozenset("0123456789")


def bare_word(source: str, name: str) -> bool:
    """Is the ASCII identifier `name` a word of `source` not after a `.`?
    The same answer as `name in {w for dot, w in _WORD.findall(source) if not dot}`,
    from `name`'s occurrences only.

    `_WORD` scans left to right: a word starts at a letter or `_` that no
    earlier word reaches (after a non-identifier character, the text's
    start, or a run of digits that follows one), takes every identifier
    character after it, and is dotted when `.` and blanks (` `, tab, form
    feed) come right before it.  So an occurrence of `name` counts when the
    character after it is no identifier character, the identifier
    characters right before it are digits only (none, or a run after a
    non-identifier character or the start), and, with none, no `.`-and-blanks
    comes right before it.
    """
    n = len(name)
    i = source.find(name)
    while i != -1:
        end = i + n
        if end == len(source) or source[end] not in _IDENT:
            j = i
            while j > 0 and source[j - 1] in _DIGIT:
                j -= 1
            if j == 0 or source[j - 1] not in _IDENT:
                if j < i:
                    return True  # after digits: a word, not after a `.`
                k = i
                while k > 0 and source[k - 1] in " \t\f":
                    k -= 1
                if k == 0 or source[k - 1] != ".":
                    return True
        i = source.find(name, i + 1)
    return False


def has_word(text: str, word: str) -> bool:
    """`re.search(r"\\b" + re.escape(word) + r"\\b", text) is not None`, faster.

    A pattern that starts with `\\b` is tried at every position of the text;
    without it, the pattern starts with a literal, which `re` finds by a fast
    scan.  For a `word` of word characters only, `\\b` before it holds at
    the text's start or after a non-word character, checked at each hit (a
    hit inside a longer word cannot hide another: the character before any
    later start inside it is a word character).  Other words take the
    pattern as it is.
    """
    if not _WORD_CHARS.fullmatch(word):
        return re.search(r"\b" + re.escape(word) + r"\b", text) is not None
    for hit in re.finditer(re.escape(word) + r"\b", text):
        i = hit.start()
        if i == 0 or not _WORD_CHAR.match(text, i - 1):
            return True
    return False


def word_pattern(word: str) -> re.Pattern:
    """`re.compile(r"\\b" + re.escape(word) + r"\\b")`, the same matches, faster.

    A leading `\\b` makes `re` try the pattern at every position (see
    `has_word`); for a `word` of word characters only, the pattern starts
    with the word (a literal, found by a fast scan) and a look-behind after
    it checks that the character before the word is no word character.
    Other words take the pattern as it is.
    """
    escaped = re.escape(word)
    if not _WORD_CHARS.fullmatch(word):
        return re.compile(r"\b" + escaped + r"\b")
    return re.compile(escaped + r"\b(?<!\w" + escaped + ")")


class NameSet:
    """The names a module binds or reads (`Name`s, parameters, `def` and
    `class` names, the first part of imported names), for `in` questions.

    The set is walked from the whole tree only when a question needs it.
    `sure` names are in it (the module's classes, top-level functions and
    imports).  A name that is not a word of the text, or only after a `.`
    (an attribute: `F.softmax`), is no node's name, when no character of
    the text normalises (NFKC, as identifiers are) to ASCII.  `|` gives a
    `NameSet` with extra names (without walking); iterating walks it.
    """

    __slots__ = ("_tree", "_source", "_words", "_all", "_extra", "_sure", "_statements", "_asked")

    def __init__(self, tree: ast.Module, source: str, sure: set[str] = frozenset(), extra: set[str] | None = None,
                 statements: list | None = None):
        self._tree = tree
        self._source = source
        self._sure = sure
        self._words: dict[str, bool] | None = None  # name -> `bare_word`
        self._all: set[str] | None = None
        self._extra = set(extra or ())
        # every statement of the tree (`index_statements`): a word of the text
        # is then looked up in the statements on its lines only (`_names_on_lines`)
        self._statements = statements
        self._asked: dict[str, bool] = {}

    def names(self) -> set[str]:
        """The module's names (without the extra ones)."""
        if self._all is None:
            self._all = _module_names(self._tree)
        return self._all

    def _maybe(self, name: str) -> bool:
        """False when `name` is surely not one of the module's names."""
        if self._all is not None or not name.isascii() or not name.isidentifier():
            return True
        if self._words is None:
            source = self._source
            if not source.isascii():
                odd = [c for c in set(source) if not c.isascii()]
                if any(_ascii_word_char(unicodedata.normalize("NFKC", c)) for c in odd):
                    self._all = _module_names(self._tree)  # e.g. fullwidth letters: the words do not tell
                    return True
            self._words = {}
        found = self._words.get(name)
        if found is None:
            found = self._words[name] = bare_word(self._source, name)
        return found

    def __contains__(self, name) -> bool:
        if name in self._extra or name in self._sure:
            return True
        if not isinstance(name, str) or not self._maybe(name):
            return False
        source = self._source
        if (self._all is not None or self._statements is None or not name.isascii() or not name.isidentifier()
                or source.count("\r") != source.count("\r\n")):
            return name in self.names()  # (a lone CR ends a line too: the lines below count LFs)
        if name not in self._asked:
            self._asked[name] = name in _names_on_lines(self._statements, _word_lines(source, name))
        return self._asked[name]

    def __iter__(self):
        return iter(self.names() | self._extra)

    def __len__(self) -> int:
        return len(self.names() | self._extra)

    def __or__(self, other) -> "NameSet":
        out = NameSet(self._tree, self._source, self._sure, self._extra | set(other), self._statements)
        out._words, out._all, out._asked = self._words, self._all, self._asked
        return out

    __ror__ = __or__

    def add(self, name: str) -> None:
        self._extra.add(name)


def _ascii_word_char(text: str) -> bool:
    """Does `text` (a character's NFKC form) hold an ASCII letter, digit or
    `_`, i.e. could the character be part of an ASCII identifier's spelling
    (a fullwidth `Ａ`, a ligature `ﬁ`)?  Punctuation such as `…` -> `...`
    or `’` cannot."""
    return any(ch.isascii() and (ch.isalnum() or ch == "_") for ch in text)


def _word_lines(source: str, name: str) -> set[int]:
    """The lines (1-based, counted by LF) where `name` (an ASCII
    identifier) stands as a word of `source` not after a `.` (as `_WORD`
    reads the text; a non-ASCII neighbour counts as a word boundary, which
    can only add lines)."""
    lines: set[int] = set()
    line, at = 1, 0
    for m in re.finditer(rf"(\.[ \t\f]*)?(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", source):
        line += source.count("\n", at, m.start())
        at = m.start()
        if not m.group(1):
            lines.add(line)
    return lines


def _names_on_lines(statements: list, lines: set[int]) -> set[str]:
    """`_module_names` of the nodes of the statements that span one of
    `lines` (decorators included), each walked without its nested
    statements.  Every node lies within the lines of its nearest statement,
    so a name whose every spelling in the text is on `lines` is in this set
    exactly when it is in the whole module's."""
    if not lines:
        return set()
    low, high = min(lines), max(lines)
    roots = []
    for st in statements:
        end = st.end_lineno or st.lineno
        start = min([st.lineno] + [d.lineno for d in getattr(st, "decorator_list", ())])
        if end < low or start > high:
            continue
        if any(start <= line <= end for line in lines):
            roots.append(st)
    return _module_names(roots, skip=ast.stmt)


def _module_names(tree, skip=()) -> set[str]:
    """The names of `tree` (a node, or a list of nodes: their union); the
    walk does not go into nodes of the `skip` types below the roots."""
    names: set[str] = set()
    stack: list = list(tree) if type(tree) is list else [tree]
    while stack:  # every node, as ast.walk (the order does not matter); inlined: a hot loop
        node = stack.pop()
        for field in node._fields:
            value = getattr(node, field, None)
            if type(value) is list:
                stack.extend(v for v in value if isinstance(v, ast.AST) and not isinstance(v, skip))
            elif isinstance(value, ast.AST) and not isinstance(value, skip):
                stack.append(value)
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names
