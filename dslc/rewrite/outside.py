"""Uses of a changed attribute reached from outside its class (issue 8).

A rewrite that replaces `self.<attr>` (another module type) or removes it
is checked against the class's own methods (`safety.check_attr_uses`), its
subclasses (`safety.check_subclass_uses`, `flow.package_subclass_uses`) and
the redirects of `option inner`.  Code outside the class reaches the same
object through a chain: `model.backbone.conv_stem.convolution.weight` in a
module-level weight loader, `self.body.layer[-1].convolution.out_channels`
in another class's `__init__`, `other.dense(h)`, `hasattr(m, "dense")`.
After the rewrite such a use reads a missing attribute, a parameter the
new module does not have, calls the fused layer where the original was
meant (a silent numeric change), or stores a layer nobody calls.  A
redirect (`option inner`) is written only inside the class, where the
expression is `self.<attr>`; from outside it is not attempted.

The treatment (docs/adopter-rules.md, "Uses from outside the class"):
every `<expr>.<attr>` (and `getattr` / `hasattr` / `setattr` / `delattr`
with the name as a literal) in the file and in the sibling modules of its
package, for an attribute the rewrite changes, refuses the rewrite (S220)
unless it provably reaches another object:
- `self.<attr>` in the class itself or a subclass: the class-level checks
  decide those;
- `self.<attr>` in another class that binds `self.<attr>` itself (or whose
  base in the same file does), when that class is no base of the rewritten
  one;
- a chain rooted at an imported name or at a class of the file
  (`nn.functional.dropout`, `Cls.attr`): a module or class attribute, never
  a layer of an instance;
- `self.a.b.<attr>` whose links resolve, through the `self.a = K(...)`
  bindings of the classes of the file, to a class that is neither the
  rewritten class nor a subclass of it;
- in the class's own file, a chain from a parameter or a local whose
  holder is the value of an attribute that the package stores only as
  instances of other classes (`dslc.rewrite.holders`, the `elsewhere`
  argument of `problems`).
Everything else may be the rewritten object and refuses.  With
`interface_kept` (a drop-in replacement, forward target `_`) only stores
count, as for the class's own uses.

Finding the uses is cheap: a regular expression over the text looks for
`.attr` or a quoted `"attr"` first, and only a file that has one is parsed.
A parsed file is walked once for the uses of every attribute (`index`), and
each question (a set of attributes) selects its part of that `FileIndex`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from dslc.rewrite import walkers

_ACCESSORS = {"getattr": "read", "hasattr": "read", "setattr": "store", "delattr": "store"}


@dataclass(frozen=True)
class Use:
    """One `<expr>.<attr>` (or `getattr(<expr>, "<attr>")`) in a file."""

    attr: str
    line: int
    kind: str  # "call" / "read" / "store"
    owner: str | None  # the innermost enclosing class
    where: str  # the enclosing function, or "module level"
    chain: tuple[str, ...] | None  # (root name, link, ...) before `.attr`, when a plain dotted chain
    then: str | None = None  # `<expr>.<attr>.<then>`: the attribute read right after it


@dataclass
class ClassInfo:
    name: str
    bases: tuple[str, ...]
    # attr -> the class named by each `self.<attr> = K(...)` binding (None for any other value)
    binds: dict[str, list[str | None]] = field(default_factory=dict)


@dataclass
class FileScan:
    """The uses of some attributes in one file, with what is needed to judge them."""

    uses: list[Use]
    classes: dict[str, ClassInfo]
    imported: frozenset[str]
    script: bool = False  # an `if __name__ == "__main__":` block at the top level: a program of its own


def pattern(attrs) -> re.Pattern:
    """Text that may be a use of one of `attrs`: `.attr` (spaces or a line
    continuation may follow the dot) or the name quoted."""
    names = "|".join(re.escape(a) for a in sorted(attrs))
    return re.compile(r"\.[\s\\]*(?:%s)\b|[\"'](?:%s)[\"']" % (names, names))


def _tail(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return None


def _chain(expr: ast.expr) -> tuple[str, ...] | None:
    links: list[str] = []
    while isinstance(expr, ast.Attribute):
        links.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    links.append(expr.id)
    return tuple(reversed(links))


# Per node class, the fields `_Scanner.generic_visit` looks into: those that
# may hold a node (not `ctx` and the name and flag fields, strings or numbers
# in every class that has them).  () for a class whose visit does nothing
# (no `visit_` method that records, no such field: `Name`, `Constant`, the
# operators, the contexts), so that the walk does not go into it: what the
# scanner records, and the depths it records them at, are the same.
_WALK: dict[type, tuple[str, ...]] = {}
_NAME_FIELDS = frozenset({"ctx", "id", "attr", "arg", "asname", "module", "level", "kind", "type_comment",
                          "is_async", "conversion", "simple"})


_WALK[ast.Constant] = ()


def _walked(cls: type) -> tuple[str, ...]:
    fields = tuple(f for f in cls._fields if f not in _NAME_FIELDS)
    if not fields and not hasattr(_Scanner, "visit_" + cls.__name__):
        fields = ()
    _WALK[cls] = fields
    return fields


class _Scanner(ast.NodeVisitor):
    """One walk of a tree: the uses of every attribute, the classes with
    their stores of `self.<a>`, the imported names, the computed-name walks."""

    def __init__(self):
        self._dispatch: dict[type, object] = {}
        self.uses: list[tuple] = []  # the fields of each `Use`, with the expression before `.attr` (`_use`)
        self.classes: dict[str, ClassInfo] = {}
        self.imported: set[str] = set()
        self.owner: list[str] = []
        self.func: list[str] = []
        self.calls: set[int] = set()
        self.after: dict[int, str] = {}
        self.depth = 0  # of the node being visited
        self.seq = 0
        self.made: dict[int, str | None] = {}  # id(target) -> K of an assignment `target = K(...)`
        self.open_classes: list[list] = []  # the `self.<a>` stores of each class being visited
        self.class_defs: list[tuple[ClassInfo, ast.ClassDef, list]] = []
        self.walks: list[walkers.Walk] = []  # `walkers.walks` of the tree, found on the way

    def visit(self, node):
        self.depth += 1
        self._method(type(node))(node)
        self.depth -= 1

    def _method(self, cls: type):
        """`NodeVisitor.visit`'s method for a node class, looked up once per class."""
        method = self._dispatch.get(cls)
        if method is None:
            method = self._dispatch[cls] = getattr(self, "visit_" + cls.__name__, None) or self.generic_visit
        return method

    def generic_visit(self, node) -> None:
        # `NodeVisitor.generic_visit`'s order (fields in order, lists in order), minus the
        # children whose visit does nothing (`_walked`: names, constants, operators, `ctx`);
        # `depth` is the children's while they are visited.
        dispatch = self._dispatch
        fields = _WALK.get(type(node))
        if fields is None:
            fields = _walked(type(node))
        self.depth += 1
        for name in fields:
            value = getattr(node, name, None)
            if type(value) is list:
                for item in value:
                    cls = type(item)
                    if _WALK.get(cls) != () and isinstance(item, ast.AST):
                        (dispatch.get(cls) or self._method(cls))(item)
            else:
                cls = type(value)
                if _WALK.get(cls) != () and isinstance(value, ast.AST):
                    (dispatch.get(cls) or self._method(cls))(value)
        self.depth -= 1

    def _add(self, attr: str, line: int, kind: str, value: ast.expr | None, then: str | None = None) -> None:
        owner = self.owner[-1] if self.owner else None
        where = self.func[-1] if self.func else "module level"
        self.uses.append((attr, line, kind, owner, where, value, then))

    def visit_Import(self, node) -> None:
        for alias in node.names:
            self.imported.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node) -> None:
        for alias in node.names:
            self.imported.add(alias.asname or alias.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        info = self.classes.setdefault(node.name, ClassInfo(node.name, tuple(filter(None, map(_tail, node.bases)))))
        # Its own attributes: `self.<a> = K(...)` (the class K is remembered),
        # any other store of `self.<a>` (tuples, `+=`, loop targets), methods
        # and names bound in the class body: collected by this walk
        # (`visit_Assign`, `visit_Attribute`), written by `finish`.
        stores: list[tuple[int, int, str, str | None]] = []
        self.class_defs.append((info, node, stores))
        self.open_classes.append(stores)
        self.owner.append(node.name)
        self.generic_visit(node)
        self.owner.pop()
        self.open_classes.pop()

    def visit_Assign(self, node: ast.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.value, ast.Call):
            self.made[id(node.targets[0])] = _tail(node.value.func)
            if walkers.is_walk(node):
                func = self.func[-1] if self.func else "module level"
                if not any(w.function == func for w in self.walks):
                    self.walks.append(walkers.Walk(func, node.lineno, ast.unparse(node)))
        self.generic_visit(node)

    def finish(self) -> None:
        """Each class's `binds`, as one `ast.walk` of each class (in the order of the
        classes) would find them: the `self.<a>` stores in breadth-first order
        (by depth, then in the walk's order), then the names bound in its body."""
        for info, node, stores in self.class_defs:
            stores.sort(key=lambda store: (store[0], store[1]))
            for _, _, attr, made in stores:
                info.binds.setdefault(attr, []).append(made)
            for item in node.body:
                names = [item.name] if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else \
                    [t.id for t in getattr(item, "targets", [getattr(item, "target", None)]) if isinstance(t, ast.Name)]
                for name in names:
                    info.binds.setdefault(name, []).append(None)

    def visit_FunctionDef(self, node) -> None:
        self.func.append(node.name)
        self.generic_visit(node)
        self.func.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Attribute):
            self.calls.add(id(f))
            self._add(f.attr, f.lineno, "call", f.value)
        if isinstance(f, ast.Name) and f.id in _ACCESSORS and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                self._add(name.value, node.lineno, _ACCESSORS[f.id], node.args[0])
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.open_classes and not isinstance(node.ctx, ast.Load) \
                and isinstance(node.value, ast.Name) and node.value.id == "self":
            self.seq += 1
            store = (self.depth, self.seq, node.attr, self.made.get(id(node)))
            for stores in self.open_classes:
                stores.append(store)
        if isinstance(node.value, ast.Attribute):
            self.after[id(node.value)] = node.attr
        if id(node) not in self.calls:
            kind = "read" if isinstance(node.ctx, ast.Load) else "store"
            self._add(node.attr, node.lineno, kind, node.value, self.after.get(id(node)))
        self.generic_visit(node)


def scan(tree: ast.AST, attrs) -> FileScan:
    """The uses of `attrs` in `tree` (`index(tree).select(attrs)`)."""
    return index(tree).select(attrs)


class FileIndex:
    """The uses of every attribute in one file, in the walk's order, by name:
    one walk answers the questions about any set of attributes.  The same
    walk finds the file's computed-name walks (`walks`: `walkers.walks` of
    the tree, the W112 check's question)."""

    def __init__(self, uses: list[tuple], classes: dict[str, ClassInfo], imported: frozenset[str], script: bool,
                 walks: tuple = ()):
        self.classes = classes
        self.imported = imported
        self.script = script
        self.walks = walks
        self._uses = uses  # as the scanner records them; a `Use` is made when a question selects it (`_use`)
        self._made: dict[int, Use] = {}
        self._at: dict[str, list[int]] = {}
        for i, use in enumerate(uses):
            self._at.setdefault(use[0], []).append(i)
        self._selected: dict[frozenset, FileScan] = {}

    def _use(self, i: int) -> Use:
        found = self._made.get(i)
        if found is None:
            attr, line, kind, owner, where, value, then = self._uses[i]
            found = self._made[i] = Use(attr, line, kind, owner, where, _chain(value) if value is not None else None,
                                        then)
        return found

    def names(self) -> set[str]:
        """The attributes used in the file."""
        return set(self._at)

    def select(self, attrs) -> FileScan:
        """The `FileScan` of `attrs`: the same uses, in the same order, as a walk for them alone."""
        attrs = frozenset(attrs)
        found = self._selected.get(attrs)
        if found is None:
            at = sorted(i for a in attrs for i in self._at.get(a, ()))
            found = self._selected[attrs] = FileScan([self._use(i) for i in at], self.classes, self.imported,
                                                     self.script)
        return found


def index(tree: ast.AST) -> FileIndex:
    """Walk `tree` once for the uses of every attribute."""
    s = _Scanner()
    s.visit(tree)
    s.finish()
    return FileIndex(s.uses, s.classes, frozenset(s.imported), _is_script(tree), tuple(s.walks))


def _is_script(tree: ast.AST) -> bool:
    for node in getattr(tree, "body", ()):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.comparators) == 1:
            sides = [node.test.left, node.test.comparators[0]]
            if any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) \
                    and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides):
                return True
    return False


def _ancestors(classes: dict[str, ClassInfo], name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        info = classes.get(todo.pop())
        for b in info.bases if info else ():
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def family(classes: dict[str, ClassInfo], base: str) -> set[str]:
    """The classes of the file deriving from `base` (by name), with `base`."""
    names = {base}
    grew = True
    while grew:
        grew = False
        for info in classes.values():
            if info.name not in names and any(b in names for b in info.bases):
                names.add(info.name)
                grew = True
    return names


def _binds(classes: dict[str, ClassInfo], name: str, attr: str) -> list[str | None] | None:
    """The bindings of `self.<attr>` in class `name` or its bases of the file, None when none."""
    for c in [name, *sorted(_ancestors(classes, name))]:
        info = classes.get(c)
        if info is not None and attr in info.binds:
            return info.binds[attr]
    return None


def _resolve(classes: dict[str, ClassInfo], owner: str, links: tuple[str, ...]) -> str | None:
    """The class of `self.<links...>` in class `owner`, when every link is bound to one class."""
    current = owner
    for link in links:
        made = _binds(classes, current, link)
        if not made or len(set(made)) != 1 or made[0] not in classes:
            return None
        current = made[0]
    return current


def reaches(fs: FileScan, use: Use, ours: set[str], bases_of_ours: set[str]) -> bool:
    """May `use` reach the attribute of an instance of a class in `ours`?"""
    chain = use.chain
    if chain is None:
        return True
    root, links = chain[0], chain[1:]
    if root in fs.imported or (root in fs.classes and root != "self"):
        return False
    if root != "self" or use.owner is None:
        return True
    if use.owner in bases_of_ours:
        return True  # a base's method runs on instances of the rewritten class
    if not links:
        return _binds(fs.classes, use.owner, use.attr) is None
    found = _resolve(fs.classes, use.owner, links)
    return found is None or found in ours


def problems(fs: FileScan, changed, cls_name: str, *, here: bool, interface_kept: bool, kept=None, elsewhere=None):
    """The uses in `fs` that may reach a changed attribute of `cls_name` from
    outside: (use, what the rewrite does to it).  `here`: `fs` is the file of
    the class (its own and its subclasses' `self.<attr>` uses are checked by the
    class-level checks); in a sibling module a class of the same name is
    another class, and its subclasses are `package_subclass_uses`' part.
    `kept`: attr -> the parameters the rewrite keeps as they are (the layer
    keeps its class, and the rule's `params` block does not move them):
    `<expr>.<attr>.weight` reads the same parameter after the rewrite.
    `elsewhere(use)`: True when `dslc.rewrite.holders` proves that a use
    this module cannot type reaches another object."""
    ours = family(fs.classes, cls_name) if here else family(fs.classes, cls_name) - {cls_name}
    bases = _ancestors(fs.classes, cls_name) if here else set()
    kept = kept or {}
    for use in fs.uses:
        if use.attr not in changed or (interface_kept and use.kind != "store"):
            continue
        if use.kind == "read" and use.then is not None and use.then in kept.get(use.attr, ()):
            continue
        if use.chain == ("self",) and use.owner in ours:
            continue
        if reaches(fs, use, ours | ({cls_name} if not here else set()), bases):
            if elsewhere is not None and elsewhere(use):
                continue
            yield use, changed[use.attr]


def kept_params(rule, bindings) -> dict[str, frozenset[str]]:
    """attr -> the parameters (`weight`, `bias`) a layer the init target
    rebuilds keeps as they are: the target builds the same class as the
    source, and the rule's `params` block moves neither (biased_gelu keeps
    `dense.weight` but moves `dense.bias` into the activation)."""
    if rule.init is None or not rule.init.target:
        return {}
    source = {o.name: pn for pn in rule.init.source for o in pn.outputs}
    out: dict[str, frozenset[str]] = {}
    for pn in rule.init.target:
        for var in (o.name for o in pn.outputs):
            old, binding = source.get(var), bindings.get(var)
            same = (old is not None and old.callee is not None and pn.callee is not None
                    and old.callee.qualname is not None and old.callee.qualname == pn.callee.qualname
                    and old.callee.subscript is None and pn.callee.subscript is None)
            if binding is None or not same:
                continue
            moved = {m.source.attr.split(".")[0] for m in rule.params if m.source.base.name == var}
            moved |= {m.target.attr.split(".")[0] for m in rule.params if m.target.base.name == var}
            out[binding.attr] = frozenset({"weight", "bias"} - moved)
    return out


def describe_script(use: Use, path: str, what: str, count: int = 1) -> str:
    how = {"call": "calls", "read": "reads", "store": "assigns"}[use.kind]
    expr = ".".join(use.chain) + "." + use.attr if use.chain else f"….{use.attr}"
    more = f" (and {count - 1} more use{'s' if count > 2 else ''} there)" if count > 1 else ""
    return (f"the script {path} {how} `{expr}` at line {use.line} (in `{use.where}`){more}, the attribute "
            f"`{use.attr}` that the rewrite {what}: update it for the rewritten layer")


def describe(use: Use, path: str, what: str) -> str:
    how = {"call": "called", "read": "read", "store": "assigned"}[use.kind]
    expr = ".".join(use.chain) + "." + use.attr if use.chain else f"….{use.attr}"
    if use.where == "module level":
        where = "at module level"
    else:
        where = f"in `{use.where}`" if use.owner is None else f"in `{use.owner}.{use.where}`"
    return (f"attribute `{use.attr}`, which the rewrite {what}, is {how} from outside the class at "
            f"{path}:{use.line} (`{expr}` {where}); that code would see the new layer or no layer")
