"""Near misses: the places that hold a rule's anchors but got no rewrite, and why.

A user who sees no rewrite cannot tell "nothing to do" from "could not prove
it".  `near_misses(compiled, facts, covered, file=...)` answers for one
analysed file, after the normal run (so that a run without `--near-misses`
pays nothing):

1. Places.  A place is where a rule could have applied: for a rule with an
   init item (or `option scope = "forward"`), a class whose forward paths hold
   a node carrying the rule's anchor key (`CompiledPack.index`, the same
   index the matcher uses) -- or, for an init-only rule, an init binding of
   the rule's type; for an init-less rule, each anchor node itself (a
   `softmax(...)` call) in any method or function.  A place counts only when
   its class (or function) mentions every name the rule needs
   (`CompiledRule.names`, the pre-filter of `anchor_names`): a class with a
   Dropout but no LayerNorm is no near miss of dropout_layernorm.  The
   names are those the analysis typed, or, where it could not (a layer
   built by a parameter whose default is `nn.BatchNorm2d`, `ACT2FN[...]`
   called inline), those the class's source spells (`SourceNames`).
2. Reasons.  The matcher runs again with a `Recorder`: every failed attempt
   (`dslc.match.matcher.Fail`, falsy, its reason formatted lazily) is offered with
   a score -- how many pattern nodes had matched, then how far the failing
   step got (no candidate node < a bound name written again < a node of the
   right kind whose arguments did not fit < forward matched but __init__ did
   not < a `where` constraint failed).  Per place the deepest attempt is kept.
3. Places already covered by a match (applied, or skipped by the matcher's
   conflicts and the safety checks: those are reported with their own
   reasons) are left out; every other place is a `NearMiss` with the
   deepest attempt's reason, formatted only now.  In a class where the rule
   matched, each anchor node that no match holds is a place of its own (a
   second conv -> BN pair the rule could not fuse), with the deepest attempt
   from that anchor, when that attempt got past the anchor (`_got_past_anchor`).
   A class that inherits the code its base matched (forward and the
   bindings of __init__) matched too: its match is its base's, reported
   once at the base's class and lines, and it is no near miss.
4. Class rules (no anchor node: they match a whole forward) have places
   and reasons of their own: `dslc.rewrite.classmiss`.
5. Families (`family_pruned`): the rules of a pack with the same kernels
   spell one rewrite, so a place one of them holds is no near miss of the
   others, and per line only the family's deepest attempts are kept.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Iterable

from dslc.analysis.api import kept_tree
from dslc.match import ir
from dslc.rewrite.astutil import dotted_parts
from dslc.rewrite.classmiss import class_near_misses
from dslc.rewrite.unreached import SourceCalls, TreeIndex
from dslc.match.matcher import Fail, _expand_sequential, _node_id, _PathCtx, _scopes, match_file


@dataclass(frozen=True, slots=True)
class NearMiss:
    """A place holding a rule's anchors where the rule did not match."""

    rule: str  # qualified name
    class_name: str | None
    function: str | None
    line: int
    reason: str
    code: str = "N101"  # dslc.codes: N1xx forward, N2xx init, N3xx where, N4xx no attempt, N5xx class rules


@dataclass(frozen=True, slots=True)
class _Event:
    rule: object  # CompiledRule
    scope: object  # matcher._Scope
    anchor: object  # the anchor Node (None: init-only rules)
    matched: tuple  # the forward nodes matched so far
    k: int  # the pattern node that failed
    fail: Fail | None  # None: no node of the path fitted pattern node k
    node: object  # the path node that failed it, if any
    stage: str  # forward | kill | init | where


def _unit(cr, scope, anchor) -> tuple:
    """The place an attempt belongs to (see the module doc, step 1)."""
    if cr.class_scoped or anchor is None:
        cls = scope.cls
        return ("class", cls.qualname if cls is not None else scope.paths_of)
    return ("node", _node_id(anchor))


class Recorder:
    """Keeps the deepest failed attempt per (rule, place), and for a class
    place also per anchor node (a second place of a class where the rule
    applied elsewhere); see `match_file(recorder=)`."""

    def __init__(self) -> None:
        self.best: dict[tuple, tuple[tuple, _Event]] = {}
        self.done: set[tuple] = set()  # class places where the rule matched
        self.over: set[tuple] = set()  # the path sets whose matching ran out of budget (`_scope_key`)

    def matched(self, cr, scope, nodes) -> None:
        """Told of every match before the matcher merges one location's
        matches: a subclass that inherits the matched code (forward and
        __init__) matched too, and its match is reported as its base's."""
        if cr.class_scoped or not nodes:
            self.done.add((cr.name, _unit(cr, scope, None)))

    def over_budget(self, scope) -> None:
        """`match_file` gave up on a path set (its match budget): the
        places in it are not fully analysed (N405)."""
        self.over.add(_scope_key(scope))

    def event(self, cr, scope, anchor, matched, k, sub, fail, *, node=None, stage="forward") -> None:
        unit = _unit(cr, scope, anchor)
        score = (k, sub)
        keys = [(cr.name, unit)]
        if unit[0] == "class" and anchor is not None:
            keys.append((cr.name, _anchor_unit(unit, anchor)))
        for key in keys:
            cur = self.best.get(key)
            if cur is None or score > cur[0]:
                self.best[key] = (score, _Event(cr, scope, anchor, tuple(matched), k, fail, node, stage))


def _scope_key(scope) -> tuple:
    """A path set of the matcher, by what it is (class and paths_of)."""
    return (scope.cls.qualname if scope.cls is not None else None, scope.paths_of)


def _anchor_unit(unit: tuple, anchor) -> tuple:
    """One anchor node of a class place."""
    return ("anchor", unit[1], _node_id(anchor))


# ---------------------------------------------------------------------------
# Places (step 1).


def _last(name: str | None) -> str:
    return (name or "").rsplit(".", 1)[-1]


def _names_of_paths(paths) -> set[str]:
    out: set[str] = set()
    for path in paths:
        for n in path.nodes:
            if n.type:
                out.add(_last(n.type))
            if n.unresolved:
                out.add(_last(n.unresolved))
    return out


@dataclass
class _Place:
    rule: object
    key: tuple
    class_name: str | None
    function: str | None
    line: int
    hint: str | None = None  # the reason when no attempt can start (the anchor layer is never called)
    code: str | None = None  # the hint's code (default N401)
    anchor: object = None  # the first anchor node seen
    # a class place: every anchor node in it, by node id (its other places
    # where the rule applied at one of them)
    anchors: dict = field(default_factory=dict)
    scopes: set = field(default_factory=set)  # the path sets it was seen in (`_scope_key`)


def _add_place(found: dict, cr, scope, node) -> None:
    """Record anchor `node` of rule `cr`: its own place (an init-less rule),
    or its class's, which keeps its first line and all its anchors."""
    unit = _unit(cr, scope, node)
    line = node.stmt.lines[0]
    k = (cr.name, unit)
    place = found.get(k)
    if place is None or line < place.line and unit[0] == "class":
        new = _Place(cr, unit, scope.cls.name if scope.cls else None,
                     node.stmt.method if unit[0] == "node" else "forward", line, anchor=node)
        if place is not None:
            new.anchors = place.anchors
        found[k] = place = new
    place.scopes.add(_scope_key(scope))
    if unit[0] == "class":
        place.anchors.setdefault(_node_id(node), node)


class SourceNames:
    """The names a class or function of the file's source mentions (parsed
    only when asked): where the analysis cannot type a layer (`self.bn =
    norm_layer(c)` with `norm_layer=nn.BatchNorm2d` a parameter's default,
    `ACT2FN[self.config.act](h)` called inline), the source still names the
    rule's types, and the place is a near miss to explain, not nothing.
    Attributes of `self` are layer names (`self.LayerNorm`), not types: left out."""

    # The last file's: the near misses of each pack of a run read the same
    # text (one parse and one name walk per file, not per pack).
    _last: SourceNames | None = None

    @classmethod
    def of(cls, source: str | None) -> SourceNames:
        """The `SourceNames` of `source`, shared with the last caller that
        passed the same text object (everything here derives from the text
        alone; `SourceCalls` keys its answers by the imports too)."""
        last = cls._last
        if last is None or last.source is not source:
            last = cls._last = cls(source)
        return last

    def __init__(self, source: str | None):
        self.source = source
        self._defs: list | None = None
        self._tree: ast.Module | None = None
        self._index: TreeIndex | None = None
        self._names: dict[tuple[int, int], frozenset[str]] = {}
        self._calls: SourceCalls | None = None

    @property
    def calls(self) -> SourceCalls:
        """The file's calls by callee (`dslc.rewrite.unreached`)."""
        if self._calls is None:
            self._load()
            self._calls = SourceCalls(self._tree, self._index)
        return self._calls

    def _load(self) -> list:
        if self._defs is None:
            self._defs, self._tree, self._index = [], None, None
            tree = kept_tree(self.source) if self.source else None  # the analysis' tree: read only
            try:
                tree = tree or ast.parse(self.source or "")
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                return self._defs
            self._tree, self._index = tree, TreeIndex(tree)
            self._defs = sorted((((n.lineno, n.end_lineno), n) for n in self._index.defs),
                                key=lambda d: d[0][1] - d[0][0])
        return self._defs

    def around(self, line: int) -> frozenset[str]:
        """The names of the innermost class or function holding `line`."""
        if not self.source:
            return frozenset()
        for span, node in self._load():
            if span[0] <= line <= span[1]:
                return self._names_of(span, node)
        return frozenset()

    def defs_around(self, line: int) -> list[tuple[tuple[int, int], str, frozenset[str]]]:
        """(span, name, names it mentions) of every function holding `line`, innermost first."""
        return [(span, node.name, self._names_of(span, node)) for span, node in self._load()
                if span[0] <= line <= span[1] and not isinstance(node, ast.ClassDef)]

    def _names_of(self, span: tuple[int, int], node) -> frozenset[str]:
        if span not in self._names:
            self._names[span] = frozenset(self._index.names[id(node)])
        return self._names[span]

    def local_value(self, line: int) -> tuple[str, str] | None:
        """(function, name) when a statement starting at `line`, in a function
        other than `__init__`, binds a call's result to a plain local name
        (`loss_fct = CrossEntropyLoss()` in forward)."""
        self._load()
        fn = next((n for span, n in self._defs if span[0] <= line <= span[1]
                   and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
        if fn is None or fn.name == "__init__":
            return None
        for n in ast.walk(fn):
            if isinstance(n, ast.Assign) and n.lineno == line and isinstance(n.value, ast.Call) \
                    and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                return fn.name, n.targets[0].id
        return None

    def first_call(self, line: int, qualname: str, imports: dict[str, str]) -> int | None:
        """The line of the first call of `qualname` (spelled through the
        file's imports: `nn.Conv2d(` is `torch.nn.Conv2d`) in the innermost
        class or function holding `line`."""
        if not self.source:
            return None
        node = next((n for span, n in self._load() if span[0] <= line <= span[1]), None)
        lines = []
        method = qualname.startswith("torch.Tensor.") and qualname.rsplit(".", 1)[-1]
        for n in ast.walk(node) if node is not None else ():
            if isinstance(n, ast.Call):
                if method and isinstance(n.func, ast.Attribute) and n.func.attr == method:
                    lines.append(n.lineno)  # a tensor method: of any value
                    continue
                parts = dotted_parts(n.func)
                if parts and parts[0] in imports and ".".join([imports[parts[0]], *parts[1:]]) == qualname:
                    lines.append(n.lineno)
        return min(lines, default=None)


def _scope_line(scope, node) -> int:
    """A line of the class (its first) or, outside a class, of the anchor."""
    if scope.cls is not None:
        return scope.cls.lines[0]
    return node.stmt.lines[0]


def _outside_forward(found: dict, cr, scope, node) -> None:
    """An anchor of a forward-only rule in a method forward does not call."""
    if scope.cls is None:
        return
    key = (cr.name, ("class", scope.cls.qualname))
    if key not in found:
        line = node.stmt.lines[0]
        found[key] = _Place(cr, key[1], scope.cls.name, node.stmt.method, line,
                            f"`{node_text(node)}` (line {line}) is in `{node.stmt.method}`, which forward does not "
                            f"call: the rule applies to forward and what it calls only", anchor=node)


def _unreached_places(compiled, facts, found: dict, class_names: dict, spelled: SourceNames) -> None:
    """A class that builds a rule's anchor layer but whose forward never calls
    it where the analysis can see: bound in __init__ and not called (a layer
    list iterated, a call the analysis cannot see), or built inside a
    container the analysis does not follow (`nn.Sequential(*[...])`, an
    `OrderedDict`, `ModuleList.append(nn.Sequential(...))`).  An anchor
    call of a rule without init items (its places are functions) that no
    path holds: `_unreached_calls`."""
    covered: list = []
    by_rule: dict[str, list[int]] = {}
    for k, p in found.items():
        by_rule.setdefault(k[0], []).append(p.line)
    for cr in compiled.rules:
        anchor = cr.forward.anchor if cr.forward is not None else None
        if anchor is None or anchor[0] not in ("layer", "call"):
            continue
        if anchor[0] == "call" and not covered:
            covered.append(_covered_lines(facts))
        if anchor[0] == "call" and not cr.class_scoped:
            _unreached_calls(cr, anchor[1], facts, found, spelled, covered[0], by_rule.get(cr.name, ()))
            continue
        for cls in facts.classes:
            key = (cr.name, ("class", cls.qualname))
            if key in found or any(k[0] == cr.name and k[1][0] == "node" and p.class_name == cls.name
                                   for k, p in found.items()) \
                    or not cr.names <= class_names[cls.qualname] | spelled.around(cls.lines[0]):
                continue
            built = [b for b in cls.init if b.type == anchor[1]] if anchor[0] == "layer" and cr.init else []
            if built:
                b = built[0]
                line = b.stmt.lines[0] if b.stmt else cls.lines[0]
                found[key] = _Place(cr, key[1], cls.name, "__init__", line,
                                    f"self.{b.attr} = {_short(anchor[1])}(...) (line {line}) is built in __init__, "
                                    f"but no path of forward calls it")
                continue
            line = spelled.first_call(cls.lines[0], anchor[1], dict(getattr(facts, "imports", ()) or ()))
            if line is None:
                continue
            if anchor[0] == "call":
                calls = [c for c in spelled.calls.calls(anchor[1], _imports(facts)) if c.line == line]
                found[key] = _Place(cr, key[1], cls.name, None, line, spelled.calls.why(calls[0], covered[0])
                                    if calls else f"{_short(anchor[1])}(...) (line {line}) is in code no analysed "
                                    f"path reaches: no pattern is tried there", code="N404")
                continue
            holder = next((b for b in cls.init if b.stmt and b.stmt.lines[0] <= line <= b.stmt.lines[1]
                           and in_file(b.stmt, facts)), None)
            local = spelled.local_value(line) if holder is None else None
            if local is not None:
                found[key] = _Place(cr, key[1], cls.name, local[0], line,
                                    f"{_short(anchor[1])}(...) (line {line}) is built in `{local[0]}` as the local "
                                    f"value `{local[1]}`, not bound to an attribute in __init__: the rule starts "
                                    f"from a layer __init__ builds, so no pattern is tried there")
                continue
            where = (f"inside `self.{holder.attr} = {_short(holder.type or holder.unresolved)}(...)`"
                     if holder is not None else "as a local value or inside a container")
            found[key] = _Place(cr, key[1], cls.name, "__init__", line,
                                f"{_short(anchor[1])}(...) (line {line}) is built {where}, which the analysis "
                                f"does not follow into layers: no path of forward calls it")


def in_file(stmt, facts) -> bool:
    """Is `stmt` in this file's source?  A class's facts hold what it
    inherits from a base in another module (`PreTrainedModel.__init__`'s
    bindings), whose lines are lines of that other file."""
    owner = getattr(stmt, "owner", None)
    module = getattr(facts, "module", None)
    if not owner or not module or owner == module:
        return True
    return any(owner == c.qualname or owner.startswith(c.qualname + ".") for c in facts.classes)


def _imports(facts) -> dict[str, str]:
    return dict(getattr(facts, "imports", ()) or ())


def _covered_lines(facts) -> list[tuple[int, int]]:
    """The line spans of this file's path nodes (every scope; a node
    inherited from a class of another file has its lines there: left out)."""
    module = getattr(facts, "module", None)
    owners = [c.qualname for c in facts.classes]
    seen: set[tuple[int, int]] = set()
    done: set[int] = set()
    for _, paths in _scopes(facts):
        for path in paths:
            for n in path.nodes:
                if id(n) in done:
                    continue
                done.add(id(n))
                owner = n.stmt.owner
                if owner and module and owner != module and not any(
                        owner == q or owner.startswith(q + ".") for q in owners):
                    continue
                seen.add(tuple(n.stmt.lines))
    return sorted(seen)


def _unreached_calls(cr, qualname: str, facts, found: dict, spelled: SourceNames, covered: list,
                     lines: Iterable[int]) -> None:
    """The functions that call rule `cr`'s anchor in the source and mention
    every name it needs, where no path node of the rule is: one place each,
    at the first such call, with the reason no path holds it
    (`dslc.rewrite.unreached`)."""
    lines = sorted(lines)
    done: set[tuple[int, int]] = set()
    for c in spelled.calls.calls(qualname, _imports(facts)):
        span, name = next(((sp, nm) for sp, nm, names in spelled.defs_around(c.line) if cr.names <= names),
                          (None, None))
        if span is None or span in done:
            continue
        done.add(span)
        if any(span[0] <= line <= span[1] for line in lines):
            continue  # a path node of the rule is there: its attempts say why
        key = (cr.name, ("def", span))
        found[key] = _Place(cr, key, c.class_name, name, c.line, spelled.calls.why(c, covered), code="N404")


def places(compiled, facts, source: str | None = None) -> list[_Place]:
    """Every (rule, place) that holds the rule's anchors (module doc, step 1)."""
    found: dict[tuple, _Place] = {}
    class_names: dict[str, set[str]] = {}
    spelled = SourceNames.of(source)
    for cls in facts.classes:
        names = {_last(b.type) for b in cls.init if b.type} | {_last(b.unresolved) for b in cls.init if b.unresolved}
        names |= _names_of_paths(cls.paths)
        for _, paths in cls.other_paths:
            names |= _names_of_paths(paths)
        class_names[cls.qualname] = names
    for scope, paths in _scopes(facts):
        if scope.cls is not None:
            names = class_names[scope.cls.qualname]
        else:
            names = _names_of_paths(paths)
        seen: set = set()  # paths share their nodes: a node's places are those of its first path
        for path in paths:
            ctx = _PathCtx(_expand_sequential(path, scope), scope)
            for pos, node in enumerate(ctx.nodes):
                if node.kind == "stmt":
                    continue
                nid = _node_id(node)
                if nid in seen:
                    continue
                seen.add(nid)
                for key in ctx.keys[pos]:
                    for r in compiled.candidates(key):
                        cr = compiled.rules[r]
                        if cr.class_scoped and not scope.class_scoped:
                            _outside_forward(found, cr, scope, node)
                            continue
                        if not cr.names <= names and not cr.names <= names | spelled.around(_scope_line(scope, node)):
                            continue
                        _add_place(found, cr, scope, node)
    _unreached_places(compiled, facts, found, class_names, spelled)
    for r in compiled.init_only:
        cr = compiled.rules[r]
        types = {t.type for t in cr.init.tests}
        for cls in facts.classes:
            hits = [b for b in cls.init if b.type in types]
            if hits and cr.names <= class_names[cls.qualname] | spelled.around(cls.lines[0]):
                line = min((b.stmt.lines[0] for b in hits if b.stmt), default=cls.lines[0])
                found[(cr.name, ("class", cls.qualname))] = _Place(cr, ("class", cls.qualname), cls.name, "__init__", line)
    return list(found.values())


# ---------------------------------------------------------------------------
# Reasons (step 2, formatted lazily).


def _short(name: str | None) -> str:
    return _last(name) or "?"


def node_text(n) -> str:
    """A short rendering of a path node: `self.dropout(...)`, `softmax(...)`, `+`."""
    if n is None:
        return "?"
    if n.kind == "layer":
        return f"self.{n.attr}(...)"
    if n.kind == "call":
        spelled = n.unresolved or n.type or "?"
        if spelled.startswith("self."):
            return f"{spelled}(...)"
        return f"{_short(spelled)}(...)"
    if n.kind == "op":
        ins = [v.text for v in n.inputs]
        if len(ins) == 2:
            return f"{ins[0]} {n.op} {ins[1]}"
        return f"{n.op}{ins[0] if ins else ''}"
    return "a statement"


def _term(t) -> str:
    if isinstance(t, ir.Var):
        return str(t)
    if isinstance(t, ir.Const):
        return "..." if t.value is Ellipsis else repr(t.value)
    if isinstance(t, ir.Code):
        return t.text
    if isinstance(t, ir.AttrOf):
        return f"{_term(t.base)}.{t.attr}"
    if isinstance(t, ir.Expr):
        return f" {t.op} ".join(_term(o) for o in t.operands)
    return "?"


def pattern_text(t) -> str:
    """A pattern node as written in the rule: `$norm($z) -> $out`."""
    pn = t.pattern
    if pn is None:
        return t.test.describe()
    if pn.kind in ("op", "unary"):
        ops = [_term(a) for a in pn.args]
        body = f" {pn.op} ".join(ops) if len(ops) == 2 else f"{pn.op}{ops[0] if ops else ''}"
    elif pn.kind == "wildcard":
        body = "*"
    else:
        c = pn.callee
        if c is not None and c.var is not None:
            head = str(c.var)
        elif c is not None and c.qualname:
            head = c.qualname
        else:
            head = "?"
        if c is not None and c.subscript is not None:
            head += f"[{_term(c.subscript)}]"
        args = [_term(a) for a in pn.args] + [f"{k}={_term(v)}" for k, v in pn.kwargs]
        body = f"{head}({', '.join(args)})"
    if pn.outputs:
        body += " -> " + ", ".join(str(o) for o in pn.outputs)
    if t.test.kind == "layer" and t.test.type:
        body += f" (a {_short(t.test.type)} layer)"
    return body


_SLOT = re.compile(r"\b(?:p|kw):(\w+)")
_POS = re.compile(r"\bin(\d+)\b")


_VALUE = re.compile(r"'([^']*?)@-?\d+'")
_BOUND = re.compile(r"(\$\w+) <- ([\w #]+): \1 is bound to (.+?), the node has (.+?)$")


_KEY = re.compile(r"sub is `<(\$\w+)>\.(\w+)`, \$\w+ <- its base: needs `<value>\.\w+`, the node has '(.+?)'")


def tidy(reason: str) -> str:
    """Slot names of the automaton dump (`p:dim`, `in0`) and the matcher's
    value positions (`x@3`) in words."""
    reason = _KEY.sub(r"the key is `\3`, the rule needs `\1.\2`", reason)
    reason = _SLOT.sub(r"\1", reason)
    reason = _POS.sub(lambda m: f"argument #{int(m.group(1)) + 1}", reason)
    reason = _VALUE.sub(r"`\1`", reason)
    return _BOUND.sub(r"its \2 is \4, but \1 is \3 (another value)", reason)


def _found_text(nodes) -> str:
    return " then ".join(f"`{node_text(n)}` (line {n.stmt.lines[0]})" for n in nodes)


def code_of(e: _Event) -> str:
    """The near-miss code of an attempt (`dslc explain N101`)."""
    if e.stage == "kill":
        return "N102"
    if e.stage == "forward":
        if e.anchor is None:
            return "N401"
        return "N103" if e.fail is None else "N101"
    return "N201" if e.stage == "init" else "N301"


def _untyped(e: _Event, trans, here=None) -> str:
    """When the pattern node wants a layer of a type: the class's layers the
    analysis could not type (`self.bn = norm_layer(c)`, a parameter), which
    may be the one it wants."""
    t = trans[e.k] if e.k < len(trans) else None
    cls = getattr(e.scope, "cls", None)
    if t is None or t.test.kind != "layer" or not t.test.type or cls is None:
        return ""
    unknown = [b for b in cls.init if b.type is None and b.unresolved and b.kind == "call"
               and (here is None or b.stmt is None or here(b.stmt))]  # lines of this file only
    if not unknown:
        return ""
    shown = ", ".join(f"`self.{b.attr} = {b.unresolved}(...)`" + (f" (line {b.stmt.lines[0]})" if b.stmt else "")
                      for b in unknown[:3])
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return f"; the type of {shown}{more} is not known here (a parameter or a call the analysis cannot resolve)"


def describe(e: _Event, here=None) -> str:
    """The reason of the deepest attempt, in words (`here`: is a statement
    in this file, for the bindings it names)."""
    trans = e.rule.forward.transitions if e.rule.forward is not None else ()
    found = _found_text(e.matched)
    if e.stage == "forward" and e.anchor is None:  # an init-only rule
        return tidy(e.fail.reason) if e.fail else "forward does not call the layer"
    if e.stage == "kill":  # a node between matched ones rebinds a matched value
        want = f"`{pattern_text(trans[e.k])}`" if e.k < len(trans) else "the next pattern node"
        return f"found {found}, but {e.fail.reason} before a node fits {want}"
    if e.stage == "forward":
        want = f"`{pattern_text(trans[e.k])}`" if e.k < len(trans) else "the next pattern node"
        if e.fail is None:
            return f"found {found}, but no later node fits {want}{_untyped(e, trans, here)}"
        where = f"line {e.node.stmt.lines[0]} `{node_text(e.node)}`" if e.node is not None else "a node"
        head = f"found {found}, but " if found else ""
        return f"{head}{where} does not fit {want}: {tidy(e.fail.reason)}"
    if e.stage == "init":
        head = f"forward matched ({found}), but " if found else ""
        return f"{head}__init__ does not fit: {tidy(e.fail.reason)}"
    head = f"matched ({found}), but " if found else ""
    return f"{head}a constraint does not hold: {tidy(e.fail.reason)}"


def _no_attempt(p: _Place) -> str:
    auto = p.rule.forward
    where = f"`{node_text(p.anchor)}` (line {p.anchor.stmt.lines[0]})" if p.anchor is not None else "here"
    if auto is not None and auto.anchor_index > 0:
        before = ", ".join(f"`{pattern_text(t)}`" for t in auto.transitions[:auto.anchor_index])
        return f"the rule's anchor {where} is here, but no node before it fits {before}"
    return f"the rule's anchor {where} is here, but no attempt from it got further"


# ---------------------------------------------------------------------------
# The driver (step 3).


def covered_units(compiled, matches: Iterable[ir.Match]) -> set[tuple]:
    """The (rule, place) keys that a match (applied or skipped) covers."""
    by_name = {cr.name: cr for cr in compiled.rules}
    out: set[tuple] = set()
    for m in matches:
        cr = by_name.get(m.rule.qualified_name)
        if cr is None:
            continue
        if cr.class_scoped or not m.nodes:
            out.add((cr.name, ("class-name", m.class_name)))
            # the nodes it holds: its class's other anchors are places of their own
            out.update((cr.name, ("class-node", m.class_name, _node_id(n))) for n in m.nodes)
            continue
        for n in m.nodes:
            out.add((cr.name, ("node", _node_id(n))))
    return out


def _got_past_anchor(got) -> bool:
    """A second place in a class counts when its attempt is a partial
    instance of the pattern: two pattern nodes matched, or the whole forward
    (then `__init__` or a `where` failed).  A lone anchor (a conv with no
    BatchNorm after it, next to the pair the rule fused) is no near miss."""
    if got is None:
        return False
    e = got[1]
    return len(e.matched) >= 2 or e.stage in ("init", "where")


def _open_places(p: _Place, covered: set[tuple]) -> list[_Place]:
    """`p` when no match covers it.  A class place where the rule matched
    (applied or skipped) is covered, but each of its anchor nodes that no
    match holds is a place of its own: a second place in the class."""
    name = p.rule.name
    if (name, p.key) in covered:
        return []
    if p.key[0] != "class" or (name, ("class-name", p.class_name)) not in covered:
        return [p]
    out = []
    for nid, node in p.anchors.items():
        if (name, ("class-node", p.class_name, nid)) not in covered:
            out.append(_Place(p.rule, _anchor_unit(p.key, node), p.class_name, p.function,
                              node.stmt.lines[0], anchor=node, scopes=p.scopes))
    return out


def near_misses(compiled, facts, matches: Iterable[ir.Match], *, file: str | None = None,
                source: str | None = None, recorder: Recorder | None = None) -> list[NearMiss]:
    """The near misses of one compiled pack in one analysed file (module doc).

    `matches`: the matches the normal run found (applied or skipped): their
    places are covered and left out.  `source`: the file's text, for the
    names a place spells where the analysis could not type them (`SourceNames`).
    `recorder`: a `Recorder` the run that found `matches` filled (then the
    matcher is not run again).
    """
    file = file or facts.path
    matches = list(matches)
    namesakes = own_namesakes(compiled, facts)
    namesakes += class_near_misses(compiled, facts, matches, NearMiss)
    todo = places(compiled, facts, source)
    covered = covered_units(compiled, matches) if todo else set()
    todo = [q for p in todo for q in _open_places(p, covered)]
    if not todo:
        return sorted(family_pruned(compiled, namesakes, matches, {}), key=lambda n: (n.line, n.rule))
    rec = recorder
    if rec is None:
        rec = Recorder()
        match_file(compiled, facts, file=file, recorder=rec)
    todo = [p for p in todo if (p.rule.name, p.key) not in rec.done]
    out = []
    depth: dict[int, tuple] = {}  # id(NearMiss) -> (score of its attempt, got past its anchor)
    unanalysed: set[tuple] = set()  # (family, class, line) given N405 already: one per family
    over_classes = {q for q, _ in rec.over if q is not None}
    for p in todo:
        got = rec.best.get((p.rule.name, p.key))
        # a class place gathers the attempts of all its class's path sets
        if rec.over and (p.scopes & rec.over or p.key[0] in ("class", "anchor") and p.key[1] in over_classes):
            # the matcher gave up on its path set: say so, whatever it saw
            key = (family_key(p.rule.rule), p.class_name, p.line)
            if key not in unanalysed:
                unanalysed.add(key)
                out.append(NearMiss(p.rule.name, p.class_name, p.function, p.line, _not_analysed(p), "N405"))
            continue
        if p.key[0] == "anchor" and not _got_past_anchor(got):
            continue
        if got is None:
            reason = p.hint or _no_attempt(p)
            code = (p.code or "N401") if p.hint else "N402"
            line = p.line
        else:
            e = got[1]
            reason, code = describe(e, lambda stmt: in_file(stmt, facts)), code_of(e)
            first = e.matched[0] if e.matched else (e.anchor if e.anchor is not None else None)
            if p.key[0] == "anchor" and first is not None \
                    and (p.rule.name, ("class-node", p.class_name, _node_id(first))) in covered:
                first = None  # the attempt began at the place where the rule applied: the anchor's line
            line = first.stmt.lines[0] if first is not None and p.key[0] in ("class", "anchor") else p.line
        nm = NearMiss(p.rule.name, p.class_name, p.function, line, reason, code)
        depth[id(nm)] = (got[0] if got is not None else (-1, -1), _got_past_anchor(got))
        out.append(nm)
    out = family_pruned(compiled, out + namesakes, matches, depth)
    out.sort(key=lambda n: (n.line, n.rule))
    return out


def _not_analysed(p: _Place) -> str:
    where = f"`{node_text(p.anchor)}` (line {p.anchor.stmt.lines[0]})" if p.anchor is not None else "here"
    return (f"the rule's anchor {where} is here, but the function has too many paths and rules to try for the "
            f"matching budget (W105): it was not fully analysed, and no rule of the pack is matched in it")


def own_namesakes(compiled, facts) -> list[NearMiss]:
    """Calls of a function of this file that has the name of a library
    function a rule starts from, but is no copy of it (N403): transformers
    5.x copies `apply_rotary_pos_emb` into every modeling file; GLM's or
    Cohere's differs from Llama's, so the rule for Llama's does not apply."""
    module = getattr(facts, "module", None)
    wanted: dict[str, list] = {}
    for cr in compiled.rules:
        anchor = cr.forward.anchor if cr.forward is not None else None
        if anchor is not None and anchor[0] == "call" and "." in anchor[1]:
            wanted.setdefault(anchor[1].rsplit(".", 1)[1], []).append(cr)
    if not module or not wanted:
        return []
    out: dict[tuple, NearMiss] = {}
    for scope, paths in _scopes(facts):
        for path in paths:
            for node in path.nodes:
                if node.kind != "call" or not node.type or node.type.rsplit(".", 1)[0] != module:
                    continue
                name = node.type.rsplit(".", 1)[1]
                for cr in wanted.get(name, ()):
                    if cr.forward.anchor[1] == node.type:
                        continue
                    line = node.stmt.lines[0]
                    out.setdefault((cr.name, line), NearMiss(
                        cr.name, scope.cls.name if scope.cls is not None else None, node.stmt.method, line,
                        f"`{name}` (line {line}) is this file's own function, and its definition is no "
                        f"word-for-word copy of the library function the rule names, so what it computes "
                        f"is not known to be what the kernel computes", "N403"))
    return list(out.values())


# ---------------------------------------------------------------------------
# Rule families (step 4): a generated pack spells one rewrite as many rules.


def family_key(rule: ir.Rule) -> tuple:
    """Rules of one pack with the same kernels are one family: the spellings
    of one rewrite (sdpa.adr's 729 rules of `scaled_dot_product_attention`)."""
    return (rule.pack, tuple(sorted(rule.kernels)))


def _lone_anchor(cr, depth: tuple | None) -> bool:
    """The attempt of a chain rule stopped at its anchor (see `family_pruned`)."""
    chain = cr is not None and cr.rule.forward is not None and len(cr.rule.forward.source) >= 2
    return chain and depth is not None and not depth[1]


def family_pruned(compiled, found: list[NearMiss], matches: list, depth: dict[int, tuple]) -> list[NearMiss]:
    """The near misses a user needs from a family of rules, per place.

    1. A place a match of the family holds (applied or skipped: its own
       outcome says what happened there) is no near miss of its siblings:
       a near miss whose line is a line of such a match in its class goes.
    2. In a function where the family matched (the match's own function
       or a helper its nodes sit in), another place of a rule whose forward
       pattern is a chain (two nodes or more) counts only when its attempt
       got past the anchor (as for a class-scoped rule itself, module doc
       step 3): a lone `transpose(1, 2)` beside the rewritten attention
       chain is none; a second `softmax(dim=1)` of a one-node rule still
       is; and so is a lone anchor in another method of the class (an
       `einsum` of a relative-position helper beside the attention chain):
       that method is a place of its own, which the user needs explained.
    3. Of the family's near misses that start at one line of one class, only
       the deepest attempts stay (most pattern nodes matched, then the
       furthest step): a spelling that failed at its second node says less
       than one that failed at its sixth.
    """
    by_name = {cr.name: cr for cr in compiled.rules}
    held: dict[tuple, set[int]] = {}
    functions: set[tuple] = set()  # (family, class, function) holding a match
    for m in matches:
        fam = family_key(m.rule)
        held.setdefault((fam, m.class_name), set()).update(m.lines)
        for fn in {m.function, *(getattr(getattr(n, "stmt", None), "method", None) for n in m.nodes)}:
            functions.add((fam, m.class_name, fn))
    kept: list[NearMiss] = []
    for nm in found:
        cr = by_name.get(nm.rule)
        fam = family_key(cr.rule) if cr is not None else nm.rule
        lines = held.get((fam, nm.class_name))
        if lines is not None and (nm.line in lines or (fam, nm.class_name, nm.function) in functions
                                  and _lone_anchor(cr, depth.get(id(nm)))):
            continue
        kept.append(nm)
    best: dict[tuple, tuple] = {}
    for nm in kept:
        cr = by_name.get(nm.rule)
        key = (family_key(cr.rule) if cr is not None else nm.rule, nm.class_name, nm.function, nm.line)
        score = depth.get(id(nm), ((), False))[0]
        if key not in best or score > best[key]:
            best[key] = score
    out = []
    for nm in kept:
        cr = by_name.get(nm.rule)
        key = (family_key(cr.rule) if cr is not None else nm.rule, nm.class_name, nm.function, nm.line)
        if depth.get(id(nm), ((), False))[0] == best[key]:
            out.append(nm)
    return out
