"""Printing model structures: the paper's notation (text) and the JSON contract.

Text, per class (the paper's DSL, Fig. 2, with line numbers and guards):

    class BertSelfOutput (bert_self_output.BertSelfOutput, lines 12-23)
      init:
        L14  torch.nn.Linear(config.hidden_size, config.hidden_size) → dense;
      forward: 1 path
        path 1 (always):
          L19  torch.nn.Linear(hidden_states) → hidden_states;   # self.dense
          L21  hidden_states + input_tensor → temp_1;

JSON follows docs/report-format.md ("dslc structure --format json").
"""

from __future__ import annotations

from .model import ClassFacts, FileFacts, InitBinding, Node, Path, Value


def _args(inputs: tuple[Value, ...], kwargs) -> str:
    parts = [v.text for v in inputs] + [f"{k}={v.text}" if k != "**" else f"**{v.text}" for k, v in kwargs]
    return ", ".join(parts)


def node_text(node: Node) -> str:
    """One node in the paper's notation (`torch.nn.Dropout(x) → temp_1;`)."""
    outs = ", ".join(node.outputs) or "_"
    if node.kind == "op":
        if len(node.inputs) == 2:
            body = f"{node.inputs[0].text} {node.op} {node.inputs[1].text}"
        else:
            body = f"{node.op}{node.inputs[0].text if node.inputs else ''}"
        return f"{body} → {outs};"
    if node.kind == "stmt":
        reads = ", ".join(sorted(node.reads)) or "-"
        writes = ", ".join(sorted(node.writes)) or "-"
        return f"stmt reads {{{reads}}} writes {{{writes}}}"
    name = node.type or f"<unresolved {node.unresolved}>"
    return f"{name}({_args(node.inputs, node.kwargs)}) → {outs};"


def binding_text(b: InitBinding) -> str:
    name = b.type or f"<unresolved {b.unresolved}>"
    if b.kind == "subscript":
        return f"{name}[{b.args[0].text if b.args else ''}] → {b.attr};"
    if b.kind == "other":
        return f"{b.args[0].text if b.args else '?'} → {b.attr};  (not a layer)"
    return f"{name}({_args(b.args, b.kwargs)}) → {b.attr};"


def _guards(guards) -> str:
    """A conjunction for display: compound conditions in parentheses."""
    if not guards:
        return "always"
    parts = []
    for g in guards:
        text = str(g)
        if not g.negated and any(w in text for w in (" or ", " and ", " if ", "lambda")):
            text = f"({text})"
        parts.append(text)
    return " and ".join(parts)


def _path_lines(path: Path, show_stmts: bool, indent: str) -> list[str]:
    out = []
    for node in path.nodes:
        if node.kind == "stmt" and not show_stmts:
            continue
        line = f"{indent}L{node.stmt.lines[0]:<4} {node_text(node)}"
        notes = []
        if node.kind == "layer" and node.attr:
            notes.append(f"self.{node.attr}")
        if node.stmt.method not in ("forward",) or node.inlined_from:
            notes.append(f"in {node.stmt.method}")
        if node.inlined_from:
            chain = " ← ".join(f"{m}:{lines[0]}" for m, lines in node.inlined_from)
            notes.append(f"inlined from {chain}")
        if notes:
            line += "   # " + ", ".join(notes)
        out.append(line)
    return out


def class_text(c: ClassFacts, show_stmts: bool = False) -> str:
    lines = [f"class {c.name} ({c.qualname}, lines {c.lines[0]}-{c.lines[1]})"]
    if c.bases:
        lines.append(f"  bases: {', '.join(c.bases)}")
    lines.append("  init:" if c.init else "  init: (no bindings)")
    for b in c.init:
        text = f"    L{(b.stmt.lines[0] if b.stmt else 0):<4} {binding_text(b)}"
        if b.container:
            text += f"   # in {b.container}"
        if b.guards:
            text += f"   if {_guards(b.guards)}"
        lines.append(text)
    if not c.paths:
        lines.append("  forward: (none)")
    else:
        n = len(c.paths)
        lines.append(f"  forward: {n} path{'s' * (n != 1)}")
        for i, path in enumerate(c.paths, 1):
            lines.append(f"    path {i} ({_guards(path.guards)}):")
            lines.extend(_path_lines(path, show_stmts, "      "))
    return "\n".join(lines)


def file_text(facts: FileFacts, show_stmts: bool = False, only: str | None = None) -> str:
    blocks = [f"# {facts.path} ({facts.module})"]
    for c in facts.classes:
        if only is None or c.name == only:
            blocks.append(class_text(c, show_stmts))
    for p in facts.problems:
        blocks.append(f"note: line {p.line}: {p.code}: {p.message}")
    return "\n\n".join(blocks) + "\n"


# -- JSON -------------------------------------------------------------------

def _value(v: Value) -> str:
    return v.text


def node_json(node: Node) -> dict:
    out: dict = {"kind": node.kind}
    if node.kind in ("layer", "call"):
        if node.type is not None:
            out["type"] = node.type
        else:
            out["unresolved"] = node.unresolved
    if node.kind == "layer":
        out["attr"] = node.attr
    if node.kind == "op":
        out["op"] = node.op
    if node.kind != "stmt":
        out["inputs"] = [_value(v) for v in node.inputs]
        if node.kwargs:
            out["kwargs"] = {k: _value(v) for k, v in node.kwargs}
        out["outputs"] = list(node.outputs)
    else:
        out["reads"] = sorted(node.reads)
        out["writes"] = sorted(node.writes)
    out["lines"] = list(node.stmt.lines)
    if node.stmt.method != "forward":
        out["method"] = node.stmt.method
    if node.inlined_from:
        out["inlined_from"] = [[m, list(lines)] for m, lines in node.inlined_from]
    return out


def binding_json(b: InitBinding) -> dict:
    out: dict = {"attr": b.attr}
    if b.type is not None:
        out["type"] = b.type
    elif b.kind != "other":
        out["unresolved"] = b.unresolved
    out["kind"] = b.kind
    out["args"] = [_value(v) for v in b.args]
    out["kwargs"] = {k: _value(v) for k, v in b.kwargs}
    out["lines"] = list(b.stmt.lines) if b.stmt else [0, 0]
    out["guards"] = [str(g) for g in b.guards]
    if b.container:
        out["container"] = b.container
    return out


def class_json(c: ClassFacts, show_stmts: bool = True) -> dict:
    return {
        "name": c.name,
        "qualname": c.qualname,
        "lines": list(c.lines),
        "bases": list(c.bases),
        "init": [binding_json(b) for b in c.init],
        "paths": [
            {"guards": [str(g) for g in p.guards],
             "nodes": [node_json(n) for n in p.nodes if show_stmts or n.kind != "stmt"]}
            for p in c.paths
        ],
    }


def file_json(facts: FileFacts, show_stmts: bool = True, only: str | None = None) -> dict:
    return {
        "file": facts.path,
        "module": facts.module,
        "classes": [class_json(c, show_stmts) for c in facts.classes if only is None or c.name == only],
        "problems": [{"code": p.code, "message": p.message, "line": p.line} for p in facts.problems],
    }
