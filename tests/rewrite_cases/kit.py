"""A tiny stand-in analysis for the rewriter's tests (straight-line + `if` code).

It builds `analysis.model` facts from source the way the real analysis does
for the simple shapes the rewrite tests use, so the rewriter can be tested
without the analysis or the matcher; `make_match` builds an `ir.Match` by
picking nodes of a path by attribute / operator / function name.
"""

from __future__ import annotations

import ast
import itertools

from dslc.match import ir
from dslc.analysis.model import (
    AttrUse, ClassFacts, FileFacts, Guard, InitBinding, Node, Path, StmtRef, Value,
)


def _dotted(e):
    parts = []
    while isinstance(e, ast.Attribute):
        parts.append(e.attr)
        e = e.value
    if isinstance(e, ast.Name):
        parts.append(e.id)
        return ".".join(reversed(parts))
    return None


class _Analyzer:
    def __init__(self, source):
        self.source = source
        self.tree = ast.parse(source)
        self.imports = {}
        for node in self.tree.body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.imports[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    self.imports[a.asname or a.name] = f"{node.module}.{a.name}"
        self.local_classes = {n.name for n in self.tree.body if isinstance(n, ast.ClassDef)}

    def qualify(self, e):
        d = _dotted(e)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        if head in self.imports:
            return self.imports[head] + ("." + rest if rest else "")
        if head in self.local_classes:
            return "m." + d
        return None

    def value(self, e, temps):
        if id(e) in temps:
            return Value(temps[id(e)], "name")
        if isinstance(e, ast.Name):
            return Value(e.id, "name")
        if isinstance(e, ast.Constant):
            return Value(ast.unparse(e), "const", e.value)
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub) and isinstance(e.operand, ast.Constant):
            return Value(ast.unparse(e), "const", -e.operand.value)
        if _dotted(e):
            return Value(ast.unparse(e), "attr")
        return Value(ast.unparse(e), "expr")

    def cls(self, cdef):
        init, uses, methods = [], [], []
        for f in cdef.body:
            if isinstance(f, ast.FunctionDef):
                methods.append(f.name)
                for n in ast.walk(f):
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self":
                        kind = "store" if isinstance(n.ctx, ast.Store) else "read"
                        uses.append([n.attr, f.name, (n.lineno, n.end_lineno), kind, n])
                for n in ast.walk(f):
                    if isinstance(n, ast.Call):
                        for u in uses:
                            if u[4] is n.func:
                                u[3] = "call"
        attr_uses = tuple(AttrUse(a, m, l, k) for a, m, l, k, _ in uses)
        fdefs = {f.name: f for f in cdef.body if isinstance(f, ast.FunctionDef)}
        if "__init__" in fdefs:
            self.init_block(cdef.name, fdefs["__init__"].body, (), ("body",), (), init)
        types = {b.attr: b.type for b in init}
        paths = ()
        if "forward" in fdefs:
            self.counter = itertools.count(1)
            paths = tuple(Path(g, tuple(n)) for g, n in self.block(cdef.name, "forward", fdefs["forward"].body, ("body",), (), types))
        return ClassFacts(cdef.name, "m." + cdef.name, (cdef.lineno, cdef.end_lineno), (), tuple(init), paths, tuple(methods), attr_uses)

    def ref(self, cname, method, s, ipath, blocks):
        return StmtRef(method, cname, ipath, (s.lineno, s.end_lineno), s.col_offset, blocks)

    def init_block(self, cname, body, guards, prefix, blocks, out):
        for i, s in enumerate(body):
            ip = prefix + (i,)
            if isinstance(s, ast.If):
                g = Guard(ast.unparse(s.test), False, (s.lineno, s.lineno))
                self.init_block(cname, s.body, guards + (g,), ip + ("body",), blocks + ((ip, "body"),), out)
                self.init_block(cname, s.orelse, guards + (Guard(g.text, True, g.lines),), ip + ("orelse",), blocks + ((ip, "orelse"),), out)
            elif isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Attribute) and isinstance(s.value, (ast.Call, ast.Subscript)):
                attr = s.targets[0].attr
                v = s.value
                if isinstance(v, ast.Call):
                    args = tuple(self.value(a, {}) for a in v.args)
                    kwargs = tuple((k.arg, self.value(k.value, {})) for k in v.keywords)
                    out.append(InitBinding(attr, self.qualify(v.func), args, kwargs, "call", None, guards, self.ref(cname, "__init__", s, ip, blocks)))
                else:
                    out.append(InitBinding(attr, self.qualify(v.value), (self.value(v.slice, {}),), (), "subscript", None, guards, self.ref(cname, "__init__", s, ip, blocks)))

    def block(self, cname, method, body, prefix, blocks, types, guards=()):
        paths = [(guards, [])]
        for i, s in enumerate(body):
            ip = prefix + (i,)
            if isinstance(s, ast.If):
                g = Guard(ast.unparse(s.test), False, (s.lineno, s.lineno))
                new = []
                for pg, pn in paths:
                    for bg, bn in self.block(cname, method, s.body, ip + ("body",), blocks + ((ip, "body"),), types, pg + (g,)):
                        new.append((bg, pn + bn))
                    ng = Guard(g.text, True, g.lines)
                    for bg, bn in self.block(cname, method, s.orelse, ip + ("orelse",), blocks + ((ip, "orelse"),), types, pg + (ng,)):
                        new.append((bg, pn + bn))
                paths = new
            else:
                nodes = self.stmt_nodes(cname, method, s, ip, blocks, types)
                paths = [(g, n + nodes) for g, n in paths]
        return paths

    def stmt_nodes(self, cname, method, s, ip, blocks, types):
        ref = self.ref(cname, method, s, ip, blocks)
        target = None
        value = None
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            target, value = s.targets[0].id, s.value
        elif isinstance(s, (ast.Return, ast.Expr)):
            value = s.value
        nodes = []
        temps = {}
        if value is not None:
            self.expr_nodes(value, ref, types, nodes, temps, top=True, target=target)
        allnames = {n.id for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        writes = {n.id for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        if not nodes or not (target and nodes[-1].outputs == (target,)):
            nodes.append(Node("stmt", ref, reads=frozenset(allnames), writes=frozenset(writes)))
        return nodes

    def expr_nodes(self, e, ref, types, nodes, temps, top=False, target=None):
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                self.expr_nodes(child, ref, types, nodes, temps)
        kind = None
        if isinstance(e, ast.Call):
            f = e.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                kind, typ, attr = "layer", types.get(f.attr), f.attr
            elif self.qualify(f):
                kind, typ, attr = "call", self.qualify(f), None
        elif isinstance(e, ast.BinOp):
            kind, typ, attr = "op", None, None
        if kind is None:
            return
        out = target if (top and target) else f"temp_{next(self.counter)}"
        if kind == "op":
            inputs = (self.value(e.left, temps), self.value(e.right, temps))
            op = {ast.Add: "+", ast.Mult: "*", ast.Sub: "-", ast.Div: "/", ast.MatMult: "@"}[type(e.op)]
            kwargs = ()
        else:
            inputs = tuple(self.value(a, temps) for a in e.args)
            kwargs = tuple((k.arg, self.value(k.value, temps)) for k in e.keywords)
            op = None
        reads = frozenset(v.text for v in inputs + tuple(v for _, v in kwargs) if v.kind == "name")
        nodes.append(Node(kind, ref, type=typ, op=op, attr=attr, inputs=inputs, kwargs=kwargs, outputs=(out,),
                          reads=reads, writes=frozenset({out}), expr_span=(e.lineno, e.col_offset, e.end_lineno, e.end_col_offset)))
        temps[id(e)] = out


def analyze(source: str) -> FileFacts:
    an = _Analyzer(source)
    classes = tuple(an.cls(c) for c in an.tree.body if isinstance(c, ast.ClassDef))
    return FileFacts("<test>", "m", classes, imports=tuple(an.imports.items()))


def pick(path, specs):
    """Nodes of `path` in order: a spec is an attr name, an operator, or `call:<qualname>`."""
    out, i = [], 0
    for spec in specs:
        while i < len(path.nodes):
            n = path.nodes[i]
            i += 1
            if (n.kind == "layer" and n.attr == spec) or (n.kind == "op" and n.op == spec) or (n.kind == "call" and spec == "call:" + (n.type or "")):
                out.append(n)
                break
        else:
            raise AssertionError(f"no node {spec}")
    return tuple(out)


def make_match(rule, facts, cls_name, specs, bindings, init, path_index=0, **extra):
    cls = next(c for c in facts.classes if c.name == cls_name)
    path = cls.paths[path_index]
    nodes = pick(path, specs)
    init_nodes = {var: next(b for b in cls.init if b.attr == attr) for var, attr in init.items()}
    b = {k: (v if isinstance(v, ir.Bound) else ir.Bound(v, "name")) for k, v in bindings.items()}
    for var, attr in init.items():
        b.setdefault(var, ir.Bound(attr, "layer"))
    return ir.Match(rule, "<test>", cls_name, "forward", nodes, init_nodes, b, (path_index,), **extra)
